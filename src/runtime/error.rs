//! Runtime errors and the documented exit codes they map to.

use std::path::PathBuf;

use voidbox_spec::SpecError;

/// voidbox's own exit codes (a failing step's own code is passed through
/// instead; see docs/spec.md "Exit codes").
pub mod exit_code {
    /// Everything succeeded.
    pub const OK: u8 = 0;
    /// Bad command line (clap's usage errors).
    pub const USAGE: u8 = 2;
    /// The spec file is missing or invalid.
    pub const SPEC: u8 = 121;
    /// An image, kernel or initramfs could not be resolved (unknown image,
    /// registry down, no guest image built).
    pub const IMAGE: u8 = 122;
    /// The VM did not start or the guest agent did not come up.
    pub const BOOT: u8 = 123;
    /// A step or the whole run hit its time limit.
    pub const TIMEOUT: u8 = 124;
    /// Any other host-side failure (I/O, VMM crash, protocol error, an output
    /// path escaping its host directory).
    pub const HOST: u8 = 125;
    /// The guest refused the command (allowlist) or could not execute it.
    pub const REFUSED: u8 = 126;
    /// Interrupted by Ctrl-C / SIGTERM (after cleanup).
    pub const INTERRUPTED: u8 = 130;
}

/// Why a run failed (as opposed to a step exiting non-zero, which is an
/// outcome, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec could not be loaded.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An image or the guest kernel/initramfs could not be resolved.
    #[error("{0}")]
    Image(String),
    /// The VM did not boot or its agent never answered.
    #[error("{message}\n  console log: {}{}", log.display(), fmt_tail(tail))]
    Boot {
        /// What went wrong.
        message: String,
        /// The console log file.
        log: PathBuf,
        /// The last console lines.
        tail: Vec<String>,
    },
    /// The nested lane would be needed but is turned off, or cannot start.
    #[error("{0}")]
    Launch(String),
    /// A step or the run hit its time limit.
    #[error("{0}")]
    Timeout(String),
    /// The guest refused a command.
    #[error("{0}")]
    Refused(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; the VM was stopped and its files removed")]
    Interrupted,
    /// Past a capacity limit (sandboxes, memory, the lane's relay ports).
    #[error("{0}")]
    Capacity(String),
    /// Another host-side failure.
    #[error("{0}")]
    Host(String),
}

fn fmt_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return "\n  (the console log is empty)".to_string();
    }
    let mut s = String::from("\n  last console lines:");
    for line in tail {
        s.push_str("\n    | ");
        s.push_str(line);
    }
    s
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Spec(_) => exit_code::SPEC,
            Error::Image(_) => exit_code::IMAGE,
            Error::Boot { .. } | Error::Launch(_) => exit_code::BOOT,
            Error::Timeout(_) => exit_code::TIMEOUT,
            Error::Refused(_) => exit_code::REFUSED,
            Error::Interrupted => exit_code::INTERRUPTED,
            Error::Host(_) | Error::Capacity(_) => exit_code::HOST,
        }
    }

    /// A host error with context.
    pub fn host(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Error::Host(format!("{context}: {err}"))
    }
}

/// Runtime result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
