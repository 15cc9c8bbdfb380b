//! The body of `POST /v1/sandboxes` (and the MCP server's `sandbox_create`)
//! checked by the spec's own validation: it is a spec's `sandbox` mapping
//! plus `skills`, `timeout_secs` (the lifetime) and `idle_timeout_secs`. No
//! host paths are taken, so a caller cannot make the service read or write
//! host files.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};
use voidbox_spec::Spec;

use super::error::{Result, ServiceError};

/// Defaults of the lifetime and idle limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Lifetime when the body does not say.
    pub timeout: Duration,
    /// Idle limit when the body does not say.
    pub idle_timeout: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// A checked create request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// A `kind: sandbox` spec named after the sandbox.
    pub spec: Spec,
    /// The idle limit.
    pub idle_timeout: Duration,
}

/// Fields that name host paths, refused with the way to do without them.
const HOST_PATH_FIELDS: [(&str, &str); 4] = [
    ("inputs", "upload files with PUT /v1/sandboxes/{id}/files"),
    (
        "outputs",
        "download files with GET /v1/sandboxes/{id}/files",
    ),
    (
        "kernel",
        "use guest_image, or run a spec with `voidbox run`",
    ),
    (
        "initramfs",
        "use guest_image, or run a spec with `voidbox run`",
    ),
];

/// Longest lifetime or idle limit: one week, as in specs.
const MAX_SECS: u64 = 604_800;

fn no_host_image(field: &str, v: Option<&Value>) -> Result<()> {
    let Some(reference) = v.and_then(Value::as_str) else {
        return Ok(());
    };
    for prefix in ["oci:", "docker-archive:"] {
        if reference.starts_with(prefix) {
            return Err(ServiceError::BadRequest(format!(
                "{field}: `{reference}` is a host path, which the API does not take; import it into the store first (`voidbox image pull {reference}`) and name it by reference"
            )));
        }
    }
    Ok(())
}

fn secs(body: &mut Map<String, Value>, field: &str, default: Duration) -> Result<Duration> {
    match body.remove(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_SECS).contains(&n) => Ok(Duration::from_secs(n)),
            _ => Err(ServiceError::BadRequest(format!(
                "{field}: {v} is not a number of seconds from 1 to {MAX_SECS}"
            ))),
        },
    }
}

/// Checks a create body; `id` becomes the spec's name.
pub fn parse(body: &[u8], id: &str, defaults: Lifetimes) -> Result<CreateRequest> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ServiceError::BadRequest(format!("the body is not valid JSON: {e}")))?
    };
    let Value::Object(mut sandbox) = value else {
        return Err(ServiceError::BadRequest(
            "the body must be a JSON object (the spec's `sandbox` mapping)".into(),
        ));
    };
    for (field, instead) in HOST_PATH_FIELDS {
        if sandbox.contains_key(field) {
            return Err(ServiceError::BadRequest(format!(
                "{field}: the API takes no host paths; {instead}"
            )));
        }
    }
    no_host_image("image", sandbox.get("image"))?;
    no_host_image("guest_image", sandbox.get("guest_image"))?;
    let lifetime = secs(&mut sandbox, "timeout_secs", defaults.timeout)?;
    let idle_timeout = secs(&mut sandbox, "idle_timeout_secs", defaults.idle_timeout)?;
    let skills = sandbox.remove("skills").unwrap_or(Value::Array(Vec::new()));
    if let Value::Array(list) = &skills {
        for (i, s) in list.iter().enumerate() {
            no_host_image(&format!("skills[{i}].image"), s.get("image"))?;
        }
    }
    sandbox.insert("timeout_secs".into(), Value::from(lifetime.as_secs()));
    let doc = serde_json::json!({
        "api_version": "v1",
        "kind": "sandbox",
        "name": id,
        "sandbox": sandbox,
        "skills": skills,
    });
    // JSON is YAML: the spec's decoder checks every field as `voidbox validate` does.
    let spec = voidbox_spec::parse_str(&doc.to_string(), "request body", Path::new("/"))
        .map_err(|e| ServiceError::BadRequest(describe(&e)))?;
    Ok(CreateRequest { spec, idle_timeout })
}

/// Spec problems as one message, each naming its field.
fn describe(e: &voidbox_spec::SpecError) -> String {
    let Some(items) = e.diagnostics() else {
        return e.to_string();
    };
    let lines: Vec<String> = items
        .iter()
        .map(|d| {
            let field = d.path.strip_prefix("sandbox.").unwrap_or(&d.path);
            let mut line = if field.is_empty() {
                d.message.clone()
            } else {
                format!("{field}: {}", d.message)
            };
            if let Some(h) = &d.hint {
                line.push_str(&format!(" ({h})"));
            }
            line
        })
        .collect();
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> String {
        match parse(body.as_bytes(), "sb-1", Lifetimes::default()) {
            Err(ServiceError::BadRequest(m)) => m,
            other => panic!("expected a bad request for {body}, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_body_is_the_default_sandbox_with_the_api_lifetime() {
        let r = parse(b"", "sb-1", Lifetimes::default()).unwrap();
        assert_eq!(r.spec.sandbox.timeout_secs, 3600);
        assert_eq!(r.spec.sandbox.memory_mb, 512);
        assert_eq!(r.idle_timeout, Duration::from_secs(600));
        let r = parse(
            br#"{"memory_mb": 256, "timeout_secs": 60, "idle_timeout_secs": 5, "env": {"A": "1"}}"#,
            "sb-1",
            Lifetimes::default(),
        )
        .unwrap();
        assert_eq!(r.spec.sandbox.memory_mb, 256);
        assert_eq!(r.spec.sandbox.timeout_secs, 60);
        assert_eq!(r.spec.sandbox.env["A"], "1");
        assert_eq!(r.idle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn spec_validation_names_the_field() {
        assert!(bad(r#"{"memory_mb": 1}"#).contains("memory_mb"));
        let m = bad(r#"{"memroy_mb": 256}"#);
        assert!(m.contains("memroy_mb") && m.contains("memory_mb"), "{m}");
        assert!(bad(r#"{"vcpus": "two"}"#).contains("vcpus"));
        assert!(bad(r#"{"idle_timeout_secs": 0}"#).contains("idle_timeout_secs"));
        assert!(bad("[1]").contains("JSON object"));
        assert!(bad("{").contains("not valid JSON"));
    }

    #[test]
    fn host_paths_are_refused() {
        assert!(bad(r#"{"inputs": [{"host": "/etc", "guest": "/x"}]}"#).contains("no host paths"));
        assert!(bad(r#"{"kernel": "/boot/vmlinuz"}"#).contains("no host paths"));
        assert!(bad(r#"{"image": "oci:/tmp/x"}"#).contains("host path"));
        assert!(bad(r#"{"image": "docker-archive:/tmp/x.tar"}"#).contains("host path"));
        assert!(
            bad(r#"{"skills": [{"image": "oci:/tmp/s", "mount": "/skills/s"}]}"#)
                .contains("skills[0].image")
        );
    }
}
