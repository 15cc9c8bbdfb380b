//! What a service request can fail with: one code per kind of failure, each
//! with its HTTP status (docs/api.md "Errors"), so the daemon, the MCP server
//! and the clients agree on them.

use crate::client::{ClientError, ErrorCode};
use crate::runtime::Error as RuntimeError;

/// A failed service request. The message names the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Bad JSON, an unknown field, a wrong type or a value out of range.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// The program is not in the sandbox's allowlist.
    #[error("{0}")]
    CommandDenied(String),
    /// A guest path the agent does not allow.
    #[error("{0}")]
    PathDenied(String),
    /// Unknown sandbox, exec id or guest path.
    #[error("{0}")]
    NotFound(String),
    /// The sandbox's VM stopped.
    #[error("{0}")]
    SandboxDead(String),
    /// A body or file past its limit.
    #[error("{0}")]
    TooLarge(String),
    /// Past the number of sandboxes.
    #[error("{0}")]
    TooManySandboxes(String),
    /// Past the number of background execs of a sandbox.
    #[error("{0}")]
    TooManyExecs(String),
    /// Past the memory limit, or no free relay port.
    #[error("{0}")]
    OutOfCapacity(String),
    /// A deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// The daemon is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// The error code of the API (`{"error": {"code": ...}}`).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::BadRequest(_) => "bad_request",
            ServiceError::Unauthorized(_) => "unauthorized",
            ServiceError::CommandDenied(_) => "command_denied",
            ServiceError::PathDenied(_) => "path_denied",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::SandboxDead(_) => "sandbox_dead",
            ServiceError::TooLarge(_) => "too_large",
            ServiceError::TooManySandboxes(_) => "too_many_sandboxes",
            ServiceError::TooManyExecs(_) => "too_many_execs",
            ServiceError::OutOfCapacity(_) => "out_of_capacity",
            ServiceError::Timeout(_) => "timeout",
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::Internal(_) => "internal",
        }
    }

    /// The HTTP status of the API.
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::BadRequest(_) => 400,
            ServiceError::Unauthorized(_) => 401,
            ServiceError::CommandDenied(_) | ServiceError::PathDenied(_) => 403,
            ServiceError::NotFound(_) => 404,
            ServiceError::SandboxDead(_) => 409,
            ServiceError::TooLarge(_) => 413,
            ServiceError::TooManySandboxes(_) | ServiceError::TooManyExecs(_) => 429,
            ServiceError::OutOfCapacity(_) | ServiceError::Unavailable(_) => 503,
            ServiceError::Timeout(_) => 504,
            ServiceError::Internal(_) => 500,
        }
    }

    /// The error of an API answer (`code`, `message`), for clients.
    pub fn from_code(code: &str, message: String) -> Self {
        match code {
            "bad_request" => ServiceError::BadRequest(message),
            "unauthorized" => ServiceError::Unauthorized(message),
            "command_denied" => ServiceError::CommandDenied(message),
            "path_denied" => ServiceError::PathDenied(message),
            "not_found" => ServiceError::NotFound(message),
            "sandbox_dead" => ServiceError::SandboxDead(message),
            "too_large" => ServiceError::TooLarge(message),
            "too_many_sandboxes" => ServiceError::TooManySandboxes(message),
            "too_many_execs" => ServiceError::TooManyExecs(message),
            "out_of_capacity" => ServiceError::OutOfCapacity(message),
            "timeout" => ServiceError::Timeout(message),
            "unavailable" => ServiceError::Unavailable(message),
            _ => ServiceError::Internal(message),
        }
    }

    /// An agent error about `what`.
    pub fn from_client(e: ClientError, what: &str) -> Self {
        match e {
            ClientError::Remote { code, message } => {
                let message = format!("{what}: {message}");
                match code {
                    ErrorCode::CommandDenied => ServiceError::CommandDenied(format!(
                        "{message}; the sandbox's allow_commands must list the program's absolute guest path"
                    )),
                    ErrorCode::NotFound => ServiceError::NotFound(message),
                    ErrorCode::PathDenied => ServiceError::PathDenied(message),
                    ErrorCode::BadRequest => ServiceError::BadRequest(message),
                    ErrorCode::Failed | ErrorCode::Protocol => ServiceError::Internal(message),
                }
            }
            e @ ClientError::TooLarge { .. } => ServiceError::TooLarge(format!("{what}: {e}")),
            e @ ClientError::Timeout { .. } => ServiceError::Timeout(format!("{what}: {e}")),
            e => ServiceError::Internal(format!("{what}: {e}")),
        }
    }

    /// A runtime error while creating a sandbox.
    pub fn from_runtime(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Spec(e) => ServiceError::BadRequest(e.to_string()),
            RuntimeError::Image(m) => ServiceError::BadRequest(m),
            RuntimeError::Capacity(m) => ServiceError::OutOfCapacity(m),
            RuntimeError::Timeout(m) => ServiceError::Timeout(m),
            RuntimeError::Refused(m) => ServiceError::CommandDenied(m),
            e => ServiceError::Internal(e.to_string()),
        }
    }
}

/// Service result.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
