//! Typed errors of the host client.

use voidbox_guest_agent::protocol::ErrorCode;

/// Everything that can go wrong talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The VMM's vsock socket could not be reached.
    #[error("cannot connect to the VMM vsock socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The VMM did not accept `CONNECT <port>`.
    #[error("the VMM refused CONNECT {port}: got {reply:?} (is the guest agent listening yet?)")]
    VsockRefused {
        /// Port asked for.
        port: u32,
        /// What the VMM answered.
        reply: String,
    },
    /// An operation did not finish in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// Time limit.
        after: std::time::Duration,
    },
    /// The handshake failed (wrong secret, version mismatch, or not the guest we booted).
    #[error("authentication with the guest agent failed: {0}")]
    Auth(String),
    /// The guest broke the protocol; the connection was closed.
    #[error("guest protocol violation: {0}")]
    Protocol(String),
    /// The connection is gone.
    #[error("connection to the guest agent closed: {0}")]
    Closed(String),
    /// The guest refused or failed the request.
    #[error("guest agent: {message}")]
    Remote {
        /// Error class.
        code: ErrorCode,
        /// Explanation from the guest.
        message: String,
    },
    /// The guest sent (or announced) more than the transfer's byte cap.
    #[error("{what} is larger than the cap of {limit} bytes{}; the copy was stopped", announced.map(|n| format!(" (the guest announced {n} bytes)")).unwrap_or_default())]
    TooLarge {
        /// What was being copied.
        what: String,
        /// The cap in bytes.
        limit: u64,
        /// The size the guest announced, if it announced one.
        announced: Option<u64>,
    },
    /// Local I/O (reading an input file, writing an output file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl ClientError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The guest's error class, if the guest refused the request.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}
