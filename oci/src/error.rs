//! Typed errors of the OCI crate.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, fetching, storing or unpacking an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// An image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest string is not `sha256:<64 hex>`.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// Content did not hash to the digest it was announced with.
    #[error("digest mismatch for {what}: expected {expected}, got {actual} (the source is corrupt or was tampered with)")]
    DigestMismatch {
        /// Which blob or manifest.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// A blob had another size than its descriptor says.
    #[error("size mismatch for {digest}: descriptor says {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// Size in the descriptor.
        expected: u64,
        /// Size received.
        actual: u64,
    },
    /// The registry client failed.
    #[error("registry {registry}: {message}")]
    Registry {
        /// host[:port] of the registry.
        registry: String,
        /// What the client said.
        message: String,
    },
    /// Nothing answers at the registry's address (refused, DNS failure, timeout).
    #[error("cannot reach the registry at {registry}: {cause}; check the address, start the registry, or use --offline (or a local `oci:<dir>` layout) if the image is already in the store")]
    RegistryUnreachable {
        /// host[:port] of the registry.
        registry: String,
        /// The underlying network error.
        cause: String,
    },
    /// The TLS handshake failed (often: a plain-HTTP registry reached over HTTPS).
    #[error("TLS connection to the registry at {registry} failed: {cause}; if it serves plain HTTP pass --insecure-registry {registry}, otherwise check its certificate")]
    RegistryTls {
        /// host[:port] of the registry.
        registry: String,
        /// The underlying TLS error.
        cause: String,
    },
    /// The registry answered that the repository, tag or digest does not exist.
    #[error("image not found: {reference} does not exist at the registry {registry} ({detail}); check the repository name and tag")]
    ImageNotFound {
        /// The reference asked for.
        reference: String,
        /// host[:port] of the registry.
        registry: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry refused the request for lack of (valid) credentials.
    #[error("authentication failed at the registry {registry}: {detail}; set VOIDBOX_REGISTRY_USERNAME and VOIDBOX_REGISTRY_PASSWORD or log in with `docker login {registry}`")]
    AuthenticationFailed {
        /// host[:port] of the registry.
        registry: String,
        /// What the registry said.
        detail: String,
    },
    /// A manifest, index or config is larger than its cap.
    #[error("{what} is {size} bytes, more than the cap of {cap} bytes for this kind of document (the source is broken or hostile)")]
    DocumentTooLarge {
        /// Which document.
        what: String,
        /// Its (announced or received) size; a lower bound if it was cut off.
        size: u64,
        /// The cap in bytes.
        cap: u64,
    },
    /// A manifest or config could not be understood.
    #[error("bad manifest {what}: {reason}")]
    BadManifest {
        /// Which document.
        what: String,
        /// Why it is rejected.
        reason: String,
    },
    /// An index has no entry for the wanted platform.
    #[error("{reference} has no image for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// The reference.
        reference: String,
        /// Wanted platform.
        platform: String,
        /// Platforms listed in the index.
        available: String,
    },
    /// The image is not in the store and the network may not be used.
    #[error("{reference} is not in the local store and --offline forbids fetching it; run `voidbox image pull {reference}` first")]
    NotInStore {
        /// The reference.
        reference: String,
    },
    /// A layer entry is unsafe or malformed.
    #[error("layer {layer} entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// Layer digest.
        layer: String,
        /// Path of the entry as written in the tar.
        entry: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A layer could not be read.
    #[error("layer {layer}: {reason}")]
    BadLayer {
        /// Layer digest.
        layer: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The unpacked content exceeds the configured cap.
    #[error("layer {layer} entry {entry:?}: image content exceeds the size cap of {cap} bytes (raise it with VOIDBOX_MAX_IMAGE_BYTES if the image is legitimate)")]
    SizeCapExceeded {
        /// Layer digest.
        layer: String,
        /// Entry that crossed the cap.
        entry: String,
        /// The cap in bytes.
        cap: u64,
    },
    /// An external tool (mkfs.ext4, debugfs) failed or is missing.
    #[error("{tool} failed: {message}")]
    Tool {
        /// Tool name.
        tool: String,
        /// stderr or cause.
        message: String,
    },
    /// A local source (OCI layout, docker archive) is malformed.
    #[error("{source_name}: {reason}")]
    BadSource {
        /// The source.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// I/O on a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        OciError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = OciError> = std::result::Result<T, E>;

/// Adds the path to an I/O result.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| OciError::io(path, e))
    }
}
