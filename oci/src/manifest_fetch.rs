//! Fetching a manifest or index over HTTP with a size cap: the body is streamed and the
//! request abandoned as soon as it passes the cap, so a hostile registry cannot make us
//! buffer an unbounded document (oci-client's `pull_manifest_raw` reads bodies whole).

use oci_client::errors::{OciDistributionError, OciEnvelope};

use crate::error::OciError;

/// How much of an error response body is kept for the message.
const ERROR_BODY_CAP: usize = 64 << 10;

/// The outcome of a capped GET: the body, or why there is none.
pub(crate) enum CappedGet {
    /// 200 with a body of at most the cap.
    Body(Vec<u8>),
    /// The client failed or the registry answered with an error status.
    Failed(OciDistributionError),
    /// The body is (or announced to be) larger than the cap.
    TooLarge(u64),
}

/// An oci-client error for a non-success `status` with (the start of) its `body`, so it
/// is classified like the client's own errors.
pub(crate) fn status_error(
    status: reqwest::StatusCode,
    body: &[u8],
    url: &str,
) -> OciDistributionError {
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError {
            url: url.to_string(),
        };
    }
    match serde_json::from_slice::<OciEnvelope>(body) {
        Ok(envelope) if status.is_client_error() => OciDistributionError::RegistryError {
            envelope,
            url: url.to_string(),
        },
        _ => OciDistributionError::ServerError {
            code: status.as_u16(),
            url: url.to_string(),
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

/// GETs `request` and reads at most `cap` bytes of a successful body.
pub(crate) async fn get_capped(request: reqwest::RequestBuilder, url: &str, cap: u64) -> CappedGet {
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return CappedGet::Failed(OciDistributionError::RequestError(e)),
    };
    let status = response.status();
    let limit = if status.is_success() {
        if let Some(len) = response.content_length().filter(|len| *len > cap) {
            return CappedGet::TooLarge(len);
        }
        cap
    } else {
        ERROR_BODY_CAP as u64
    };
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > limit {
                    if status.is_success() {
                        return CappedGet::TooLarge(body.len() as u64);
                    }
                    body.truncate(ERROR_BODY_CAP);
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return CappedGet::Failed(OciDistributionError::RequestError(e)),
        }
    }
    if status == reqwest::StatusCode::OK {
        CappedGet::Body(body)
    } else if status.is_success() {
        CappedGet::Failed(OciDistributionError::SpecViolationError(format!(
            "expected HTTP 200 for a manifest, got {status}"
        )))
    } else {
        CappedGet::Failed(status_error(status, &body, url))
    }
}

/// The error for a document past its cap.
pub(crate) fn too_large(what: String, size: u64, cap: u64) -> OciError {
    OciError::DocumentTooLarge { what, size, cap }
}
