//! Manifests and indexes: parsing (OCI and Docker v2 forms), platform selection.

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::error::{OciError, Result};
use crate::source::Platform;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Largest manifest or index accepted from any source (real ones are a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted (history and labels can make them larger than manifests).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Media types accepted when fetching a manifest by reference.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// A single-platform image.
    Image(Box<ImageManifest>),
    /// A multi-platform index (or Docker manifest list).
    Index(Box<ImageIndex>),
}

/// Parses a manifest or index; `what` names it in errors.
pub fn parse_manifest(data: &[u8], what: &str) -> Result<Manifest> {
    let bad = |reason: String| OciError::BadManifest {
        what: what.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| bad(format!("not JSON: {e}")))?;
    if value.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
        return Err(bad(
            "only schemaVersion 2 manifests are supported (Docker schema 1 is obsolete)".into(),
        ));
    }
    if value.get("manifests").is_some() {
        let index: ImageIndex =
            serde_json::from_value(value).map_err(|e| bad(format!("invalid index: {e}")))?;
        Ok(Manifest::Index(Box::new(index)))
    } else if value.get("layers").is_some() {
        let manifest: ImageManifest =
            serde_json::from_value(value).map_err(|e| bad(format!("invalid manifest: {e}")))?;
        for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
            Digest::parse(d.digest().as_ref()).map_err(|e| bad(e.to_string()))?;
        }
        Ok(Manifest::Image(Box::new(manifest)))
    } else {
        Err(bad(
            "neither an image manifest (layers) nor an index (manifests)".into(),
        ))
    }
}

/// Parses an image config blob.
pub fn parse_config(data: &[u8], what: &str) -> Result<ImageConfiguration> {
    serde_json::from_slice(data).map_err(|e| OciError::BadManifest {
        what: what.to_string(),
        reason: format!("invalid image config: {e}"),
    })
}

/// The digest and media type of the index entry matching `platform`.
pub fn select_platform(index: &ImageIndex, platform: &Platform, reference: &str) -> Result<Digest> {
    let mut available = Vec::new();
    for entry in index.manifests() {
        let Some(p) = entry.platform() else { continue };
        let os = p.os().to_string();
        let arch = p.architecture().to_string();
        let variant = p.variant().clone();
        available.push(match &variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
        let variant_ok = match &platform.variant {
            Some(v) => variant.as_deref() == Some(v.as_str()),
            None => true,
        };
        if os == platform.os && arch == platform.architecture && variant_ok {
            return Digest::parse(entry.digest().as_ref());
        }
    }
    Err(OciError::NoMatchingPlatform {
        reference: reference.to_string(),
        platform: platform.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

/// Digests of an image manifest's config and layers, in order (config first).
pub fn image_blobs(manifest: &ImageManifest) -> Result<Vec<Digest>> {
    std::iter::once(manifest.config())
        .chain(manifest.layers())
        .map(|d| Digest::parse(d.digest().as_ref()))
        .collect()
}
