//! The top level of a spec: version, kind, name, and which sections a kind
//! needs.

use std::path::Path;

use super::sandbox::{decode_sandbox, decode_skills, SANDBOX_FIELDS};
use super::steps::{decode_agent, decode_llm, decode_workflow};
use super::{did_you_mean, is_simple_name, Ctx};
use crate::model::{ApiVersion, Kind, Sandbox, Spec};
use crate::node::{Node, Value};

const TOP_FIELDS: &[&str] = &[
    "api_version",
    "kind",
    "name",
    "sandbox",
    "skills",
    "workflow",
    "agent",
    "llm",
];

/// A top-level key that belongs to a section.
fn misplaced_top(name: &str) -> Option<String> {
    if SANDBOX_FIELDS.contains(&name) {
        return Some(format!("`{name}` belongs under `sandbox:`"));
    }
    if name == "steps" {
        return Some("`steps` belongs under `workflow:`".into());
    }
    if ["command", "prompt", "args"].contains(&name) {
        return Some(format!("`{name}` belongs under `agent:`"));
    }
    if ["provider", "model", "base_url", "api_key_env"].contains(&name) {
        return Some(format!("`{name}` belongs under `llm:`"));
    }
    None
}

/// Decodes and validates a whole spec. `base_dir` anchors relative host paths.
pub(crate) fn decode_spec(ctx: &mut Ctx, root: &Node, base_dir: &Path) -> Option<Spec> {
    let fields = ctx.fields(root, "", TOP_FIELDS, &misplaced_top)?;

    let api_version = ctx
        .required(&fields, "api_version", "api_version", "v1")
        .and_then(|n| decode_api_version(ctx, n));
    let kind = ctx
        .required(&fields, "kind", "kind", "workflow")
        .and_then(|n| decode_kind(ctx, n));
    let name = ctx
        .required(&fields, "name", "name", "my-run")
        .and_then(|n| {
            let name = ctx.nonempty_string(n, "name")?;
            if !is_simple_name(&name) {
                ctx.error_hint(
                    n.pos,
                    "name",
                    format!("name `{name}` has characters other than letters, digits, `-`, `_`, `.` (or is over 63 long)"),
                    "use something like `build-and-test`",
                );
                return None;
            }
            Some(name)
        });

    let sandbox = match fields.get("sandbox") {
        Some(n) => decode_sandbox(ctx, n, base_dir),
        None => Some(Sandbox::default()),
    };
    let skills = fields
        .get("skills")
        .map(|n| decode_skills(ctx, n, base_dir))
        .unwrap_or_default();
    let allow = sandbox.as_ref().and_then(|s| s.allow_commands.clone());
    let workflow = fields
        .get("workflow")
        .and_then(|n| decode_workflow(ctx, n, allow.as_deref()));
    let agent = fields
        .get("agent")
        .and_then(|n| decode_agent(ctx, n, allow.as_deref()));
    let llm = fields.get("llm").and_then(|n| decode_llm(ctx, n));

    if let Some(kind) = kind {
        check_sections(ctx, kind, &fields);
    }

    if !ctx.errors.is_empty() {
        return None;
    }
    Some(Spec {
        api_version: api_version?,
        kind: kind?,
        name: name?,
        sandbox: sandbox?,
        skills,
        workflow,
        agent,
        llm,
    })
}

fn decode_api_version(ctx: &mut Ctx, node: &Node) -> Option<ApiVersion> {
    match &node.value {
        Value::Str(s) if s == "v1" => Some(ApiVersion::V1),
        Value::Str(s) => {
            ctx.error_hint(
                node.pos,
                "api_version",
                format!("unsupported api_version `{s}`"),
                "this voidbox reads `api_version: v1`",
            );
            None
        }
        _ => {
            let raw = node.raw.clone().unwrap_or_else(|| node.type_name().into());
            ctx.error_hint(
                node.pos,
                "api_version",
                format!("unsupported api_version `{raw}`"),
                "write `api_version: v1`",
            );
            None
        }
    }
}

fn decode_kind(ctx: &mut Ctx, node: &Node) -> Option<Kind> {
    let s = ctx.string(node, "kind")?;
    let kinds = [Kind::Workflow, Kind::Sandbox, Kind::Agent];
    if let Some(kind) = kinds.iter().find(|k| k.as_str() == s) {
        return Some(*kind);
    }
    let hint = did_you_mean(&s, kinds.iter().map(|k| k.as_str()))
        .unwrap_or_else(|| "use `workflow`, `sandbox` or `agent`".into());
    ctx.error_hint(node.pos, "kind", format!("unknown kind `{s}`"), hint);
    None
}

/// Which top-level sections each kind needs or refuses.
fn check_sections(ctx: &mut Ctx, kind: Kind, fields: &super::Fields<'_>) {
    let required = match kind {
        Kind::Workflow => Some(("workflow", "add `workflow: {steps: [...]}`")),
        Kind::Agent => Some(("agent", "add `agent: {command: ...}`")),
        Kind::Sandbox => None,
    };
    if let Some((section, hint)) = required {
        if fields.get(section).is_none() {
            ctx.error_hint(
                fields.pos,
                section,
                format!("`kind: {}` needs a `{section}` section", kind.as_str()),
                hint,
            );
        }
    }
    let refused: &[&str] = match kind {
        Kind::Workflow => &["agent", "llm"],
        Kind::Agent => &["workflow"],
        Kind::Sandbox => &["workflow", "agent", "llm"],
    };
    for section in refused {
        if let Some(node) = fields.get(section) {
            let owner = if *section == "workflow" {
                "workflow"
            } else {
                "agent"
            };
            ctx.error_hint(
                node.pos,
                section,
                format!("`{section}` is not used with `kind: {}`", kind.as_str()),
                format!("remove it, or set `kind: {owner}`"),
            );
        }
    }
}
