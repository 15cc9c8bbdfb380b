//! Errors of the nested lane.

use std::path::PathBuf;

/// Everything that can go wrong starting or using a lane.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// A required program or file is missing.
    #[error("{what} is missing: {fix}")]
    Missing {
        /// What is missing.
        what: String,
        /// How to install it.
        fix: &'static str,
    },
    /// The guest kernel could not be found or fetched.
    #[error("lane kernel: {0}")]
    Kernel(#[from] voidbox_guest_image::Error),
    /// An I/O error.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("bad lane configuration: {0}")]
    BadConfig(String),
    /// QEMU (L1) ended or never got the lane ready.
    #[error("nested lane failed to start: {reason}\nlast console lines ({log}):\n{tail}")]
    Start {
        /// What happened.
        reason: String,
        /// The console log file.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The control channel broke (QEMU died or the L2 server exited).
    #[error("nested lane control channel closed\nlast console lines ({log}):\n{tail}")]
    Closed {
        /// The console log file.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// A command could not be started inside L2.
    #[error("lane command {argv0:?} could not start: {msg}")]
    SpawnFailed {
        /// The program.
        argv0: String,
        /// The server's message.
        msg: String,
    },
    /// A command did not finish in time (it was killed).
    #[error("lane command {argv0:?} timed out after {secs} s (killed); stderr so far:\n{stderr}")]
    Timeout {
        /// The program.
        argv0: String,
        /// The limit.
        secs: u64,
        /// Its stderr until then.
        stderr: String,
    },
}

impl LaneError {
    /// Wraps an I/O error with what was being done.
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        LaneError::Io {
            op: op.into(),
            source,
        }
    }
}
