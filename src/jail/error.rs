//! What can go wrong while jailing the VMM, each error naming its fix.

use std::path::PathBuf;

/// A jail that could not be set up. The VMM is never started without the
/// isolation its spec asks for: every error stops the launch.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The spec file cannot be read.
    #[error("cannot read the jail spec {path}: {source} (pass the jail.json the runtime wrote next to vm.json)")]
    ReadSpec {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The spec file is not valid JSON for [`super::JailSpec`].
    #[error("invalid jail spec {path}: {source} (regenerate it with JailSpec::for_vm)")]
    ParseSpec {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A path in the spec that cannot be exposed as given.
    #[error("jail spec: {path}: {reason}")]
    BadPath {
        /// The path.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The VMM command line cannot run in the jail.
    #[error("jail: {0}")]
    BadCommand(String),
    /// A host operation (namespace, mount, rlimit, ...) failed.
    #[error("jail: cannot {what}: {source}{}", hint_suffix(.hint))]
    Host {
        /// The operation.
        what: String,
        /// The error.
        source: std::io::Error,
        /// How to fix it, if known.
        hint: &'static str,
    },
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

/// Hint for operations that need root (namespaces, mounts, pivot_root).
pub const NEEDS_ROOT: &str = "the jail needs root (CAP_SYS_ADMIN); run voidbox as root or set VOIDBOX_JAIL=off to start the VMM unjailed";

impl JailError {
    /// A failed host operation with `errno` from the last call.
    pub fn last_os(what: impl Into<String>, hint: &'static str) -> Self {
        JailError::Host {
            what: what.into(),
            source: std::io::Error::last_os_error(),
            hint,
        }
    }

    /// A failed host operation.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        JailError::Host {
            what: what.into(),
            source,
            hint: "",
        }
    }

    /// A path problem.
    pub fn path(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        JailError::BadPath {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Result of jail operations.
pub type Result<T> = std::result::Result<T, JailError>;
