//! Turning oci-client errors into errors that say what went wrong and what to do:
//! unreachable registry, TLS trouble, unknown image, refused credentials, or other.

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::error::OciError;

/// The class of a registry failure, decided from the client error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// Connection refused, DNS failure, timeout: nothing answers.
    Unreachable,
    /// The TLS handshake failed.
    Tls,
    /// 404 / MANIFEST_UNKNOWN / NAME_UNKNOWN / BLOB_UNKNOWN.
    NotFound,
    /// 401 / 403 / UNAUTHORIZED / DENIED.
    Auth,
    /// Anything else.
    Other,
}

/// The error and its sources, joined, so the root cause (e.g. "Connection refused") shows.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn looks_like_tls(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "tls",
        "certificate",
        "invalidcontenttype",
        "corrupt message",
        "handshake",
    ]
    .iter()
    .any(|k| lower.contains(k))
}

/// Classifies `e`; returns the class and a readable cause.
pub(crate) fn classify(e: &OciDistributionError) -> (FailureKind, String) {
    let text = chain_text(e);
    let kind = match e {
        OciDistributionError::RequestError(req) => {
            // TLS failures also count as connect errors in reqwest: test them first.
            if looks_like_tls(&text) {
                FailureKind::Tls
            } else if req.is_connect() || req.is_timeout() {
                FailureKind::Unreachable
            } else {
                match req.status().map(|s| s.as_u16()) {
                    Some(404) => FailureKind::NotFound,
                    Some(401 | 403) => FailureKind::Auth,
                    _ => FailureKind::Other,
                }
            }
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => FailureKind::Auth,
        OciDistributionError::ImageManifestNotFoundError(_) => FailureKind::NotFound,
        OciDistributionError::ServerError { code, .. } => match code {
            404 => FailureKind::NotFound,
            401 | 403 => FailureKind::Auth,
            _ => FailureKind::Other,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                FailureKind::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                FailureKind::Auth
            } else {
                FailureKind::Other
            }
        }
        _ => FailureKind::Other,
    };
    (kind, text)
}

/// The typed error for a failure of `action` (e.g. "fetching manifest of X") on `reference`
/// at `registry`.
pub(crate) fn registry_failure(
    registry: &str,
    reference: &str,
    action: &str,
    e: &OciDistributionError,
) -> OciError {
    let (kind, cause) = classify(e);
    let registry = registry.to_string();
    match kind {
        FailureKind::Unreachable => OciError::RegistryUnreachable { registry, cause },
        FailureKind::Tls => OciError::RegistryTls { registry, cause },
        FailureKind::NotFound => OciError::ImageNotFound {
            reference: reference.to_string(),
            registry,
            detail: format!("{action}: {cause}"),
        },
        FailureKind::Auth => OciError::AuthenticationFailed {
            registry,
            detail: format!("{action}: {cause}"),
        },
        FailureKind::Other => OciError::Registry {
            registry,
            message: format!("{action}: {cause}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "http://r/v2/x/manifests/y".into(),
            message: String::new(),
        }
    }

    #[test]
    fn status_codes_map_to_classes() {
        assert_eq!(classify(&server(404)).0, FailureKind::NotFound);
        assert_eq!(classify(&server(401)).0, FailureKind::Auth);
        assert_eq!(classify(&server(403)).0, FailureKind::Auth);
        assert_eq!(classify(&server(500)).0, FailureKind::Other);
        let unauthorized = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert_eq!(classify(&unauthorized).0, FailureKind::Auth);
    }

    #[test]
    fn envelope_codes_map_to_classes() {
        let envelope = |code: &str| -> OciDistributionError {
            let body = format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
            OciDistributionError::RegistryError {
                envelope: serde_json::from_str(&body).unwrap(),
                url: "u".into(),
            }
        };
        assert_eq!(
            classify(&envelope("MANIFEST_UNKNOWN")).0,
            FailureKind::NotFound
        );
        assert_eq!(classify(&envelope("NAME_UNKNOWN")).0, FailureKind::NotFound);
        assert_eq!(classify(&envelope("DENIED")).0, FailureKind::Auth);
        assert_eq!(classify(&envelope("UNAUTHORIZED")).0, FailureKind::Auth);
        assert_eq!(classify(&envelope("TOOMANYREQUESTS")).0, FailureKind::Other);
    }

    #[test]
    fn not_found_error_names_the_reference_and_fix() {
        let e = registry_failure("r:5000", "r:5000/a:b", "fetching manifest", &server(404));
        let text = e.to_string();
        assert!(text.contains("image not found"), "{text}");
        assert!(text.contains("r:5000/a:b"), "{text}");
    }
}
