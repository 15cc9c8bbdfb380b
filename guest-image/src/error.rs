//! Errors of the guest-image crate.

use std::path::PathBuf;

/// Everything that can go wrong while fetching a kernel or writing an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external tool (apt-get, dpkg-deb) is missing or failed.
    #[error("{tool} failed: {detail}. {fix}")]
    Tool {
        /// The command that failed.
        tool: String,
        /// Its exit status and stderr.
        detail: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// A file is not a bzImage or its payload cannot be decompressed.
    #[error("{path}: not a usable bzImage: {reason}")]
    BadBzImage {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A kernel module (or one of its dependencies) is not in the module tree.
    #[error("kernel module {name} not found under {dir} (built in, or a different kernel?)")]
    ModuleNotFound {
        /// Module name as requested (dashes and underscores are equivalent).
        name: String,
        /// The module tree searched.
        dir: PathBuf,
    },
    /// Module dependencies form a cycle.
    #[error("kernel module dependency cycle through {0}")]
    ModuleCycle(String),
    /// No kernel is in the store and none may be fetched.
    #[error("no guest kernel in {store}: run `scripts/setup-kernel.sh` (or `cargo run -p voidbox-guest-image --example fetch-kernel`) to download Debian's linux-image-amd64")]
    NoKernel {
        /// The kernel store directory.
        store: PathBuf,
    },
    /// The kernel store holds something unexpected.
    #[error("kernel store entry {path}: {reason}")]
    BadStoreEntry {
        /// The entry.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An initramfs entry is invalid (bad path, duplicate, too large).
    #[error("initramfs entry {path:?}: {reason}")]
    BadEntry {
        /// The archive path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl Error {
    /// Wraps an I/O error with the operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
