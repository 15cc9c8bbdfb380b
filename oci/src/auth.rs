//! Registry credentials: `VOIDBOX_REGISTRY_USERNAME`/`VOIDBOX_REGISTRY_PASSWORD`, else the
//! docker `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), else
//! anonymous. Bearer tokens are obtained by oci-client from these credentials.

use std::path::PathBuf;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

/// Keys under which docker stores credentials for `registry`.
fn config_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
        keys.push("docker.io".into());
    }
    keys
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials found in a docker config document for `registry`.
pub fn from_docker_config(config: &serde_json::Value, registry: &str) -> Option<RegistryAuth> {
    let auths = config.get("auths")?.as_object()?;
    for key in config_keys(registry) {
        let Some(entry) = auths.get(&key) else {
            continue;
        };
        if let (Some(user), Some(pass)) = (
            entry.get("username").and_then(|v| v.as_str()),
            entry.get("password").and_then(|v| v.as_str()),
        ) {
            return Some(RegistryAuth::Basic(user.into(), pass.into()));
        }
        if let Some(auth) = entry.get("auth").and_then(|v| v.as_str()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, pass) = text.split_once(':')?;
            return Some(RegistryAuth::Basic(user.into(), pass.into()));
        }
    }
    None
}

/// The credentials to use for `registry` (host[:port]).
pub fn credentials_for(registry: &str) -> RegistryAuth {
    if let (Ok(user), Ok(pass)) = (
        std::env::var("VOIDBOX_REGISTRY_USERNAME"),
        std::env::var("VOIDBOX_REGISTRY_PASSWORD"),
    ) {
        return RegistryAuth::Basic(user, pass);
    }
    if let Some(path) = docker_config_path() {
        if let Ok(data) = std::fs::read(&path) {
            match serde_json::from_slice::<serde_json::Value>(&data) {
                Ok(config) => {
                    if let Some(auth) = from_docker_config(&config, registry) {
                        tracing::debug!(registry, config = %path.display(), "using docker config credentials");
                        return auth;
                    }
                    if config.get("credsStore").is_some() || config.get("credHelpers").is_some() {
                        tracing::warn!(config = %path.display(), "docker credential helpers are not supported; set VOIDBOX_REGISTRY_USERNAME/VOIDBOX_REGISTRY_PASSWORD");
                    }
                }
                Err(e) => {
                    tracing::warn!(config = %path.display(), error = %e, "ignoring unreadable docker config")
                }
            }
        }
    }
    RegistryAuth::Anonymous
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_plain_fields() {
        let cfg = serde_json::json!({"auths": {
            "127.0.0.1:5000": {"auth": base64::engine::general_purpose::STANDARD.encode("u:p:x")},
            "https://index.docker.io/v1/": {"username": "d", "password": "q"}
        }});
        assert!(matches!(from_docker_config(&cfg, "127.0.0.1:5000"),
            Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p:x"));
        assert!(matches!(from_docker_config(&cfg, "docker.io"),
            Some(RegistryAuth::Basic(u, _)) if u == "d"));
        assert!(from_docker_config(&cfg, "other").is_none());
    }
}
