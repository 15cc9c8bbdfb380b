//! Building images locally straight into the store: gzip tar layers, image configs,
//! manifests and indexes (used by `voidbox guest build` and by the tests).

use std::collections::BTreeMap;
use std::io::Write;

use flate2::write::GzEncoder;

use crate::digest::{Digest, HashingWriter};
use crate::error::{IoContext, OciError, Result};
use crate::manifest::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST};
use crate::source::Platform;
use crate::store::{BlobWriter, Store};

/// A layer blob in the store, as referenced by a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// Digest of the stored (possibly compressed) blob.
    pub digest: Digest,
    /// Stored size.
    pub size: u64,
    /// Digest of the uncompressed tar (goes into the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Layer media type.
    pub media_type: String,
}

impl LayerBlob {
    /// Stores an uncompressed tar as a layer.
    pub fn from_tar_bytes(store: &Store, tar: &[u8]) -> Result<Self> {
        let digest = store.put_blob_bytes(tar, None)?;
        Ok(LayerBlob {
            diff_id: digest.clone(),
            digest,
            size: tar.len() as u64,
            media_type: OCI_LAYER_TAR.into(),
        })
    }
}

/// Writes a gzip-compressed tar layer into the store while it is being built.
pub struct LayerWriter<'s> {
    builder: tar::Builder<HashingWriter<GzEncoder<BlobWriter<'s>>>>,
}

impl<'s> LayerWriter<'s> {
    /// Starts a new layer.
    pub fn new(store: &'s Store) -> Result<Self> {
        let gz = GzEncoder::new(store.blob_writer()?, flate2::Compression::fast());
        let mut builder = tar::Builder::new(HashingWriter::new(gz));
        builder.mode(tar::HeaderMode::Complete);
        builder.follow_symlinks(false);
        Ok(LayerWriter { builder })
    }

    /// The tar builder, to append entries with their headers.
    pub fn tar(&mut self) -> &mut tar::Builder<HashingWriter<GzEncoder<BlobWriter<'s>>>> {
        &mut self.builder
    }

    /// Appends a regular file with the given mode, owned by root.
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .map_err(|e| OciError::io(path, e))
    }

    /// Finishes the tar and gzip streams and commits the blob.
    pub fn finish(self) -> Result<LayerBlob> {
        let hashing = self
            .builder
            .into_inner()
            .map_err(|e| OciError::io("layer", e))?;
        let (gz, diff_id, _) = hashing.finish();
        let mut blob = gz.finish().map_err(|e| OciError::io("layer", e))?;
        blob.flush().map_err(|e| OciError::io("layer", e))?;
        let (digest, size) = blob.commit(None, None)?;
        Ok(LayerBlob {
            digest,
            size,
            diff_id,
            media_type: OCI_LAYER_GZIP.into(),
        })
    }
}

/// The runtime settings recorded in an image config.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    /// Platform of the image (default linux/amd64).
    pub platform: Platform,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Default command.
    pub cmd: Vec<String>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User (`uid[:gid]` or name).
    pub user: Option<String>,
    /// Config labels.
    pub labels: BTreeMap<String, String>,
}

/// Stores a config and manifest for `layers`; returns the manifest digest.
pub fn write_image(
    store: &Store,
    settings: &ImageSettings,
    layers: &[LayerBlob],
    annotations: &BTreeMap<String, String>,
) -> Result<Digest> {
    let mut config = serde_json::json!({
        "architecture": settings.platform.architecture,
        "os": settings.platform.os,
        "config": {
            "Env": settings.env,
            "Entrypoint": settings.entrypoint,
            "Cmd": settings.cmd,
            "Labels": settings.labels,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
    });
    if let Some(v) = &settings.platform.variant {
        config["variant"] = v.clone().into();
    }
    if let Some(w) = &settings.working_dir {
        config["config"]["WorkingDir"] = w.clone().into();
    }
    if let Some(u) = &settings.user {
        config["config"]["User"] = u.clone().into();
    }
    let config_bytes = serde_json::to_vec(&config).expect("config serializes");
    let config_digest = store.put_blob_bytes(&config_bytes, None)?;
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size,
        })).collect::<Vec<_>>(),
    });
    if !annotations.is_empty() {
        manifest["annotations"] = serde_json::to_value(annotations).expect("map serializes");
    }
    for l in layers {
        if !store.has_blob(&l.digest) {
            return Err(OciError::io(
                store.blob_path(&l.digest),
                std::io::Error::new(std::io::ErrorKind::NotFound, "layer blob not in the store"),
            ));
        }
    }
    store.put_blob_bytes(
        &serde_json::to_vec(&manifest).expect("manifest serializes"),
        None,
    )
}

/// Stores an index over platform manifests already in the store; returns its digest.
pub fn write_index(store: &Store, manifests: &[(Digest, Platform)]) -> Result<Digest> {
    let mut entries = Vec::new();
    for (digest, platform) in manifests {
        let path = store.blob_path(digest);
        let size = std::fs::metadata(&path).at(&path)?.len();
        let mut p = serde_json::json!({"os": platform.os, "architecture": platform.architecture});
        if let Some(v) = &platform.variant {
            p["variant"] = v.clone().into();
        }
        entries.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": size, "platform": p,
        }));
    }
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    store.put_blob_bytes(&serde_json::to_vec(&index).expect("index serializes"), None)
}

/// Writes raw bytes through `w` (helper for appending hand-made tar headers in tests).
pub fn write_raw(w: &mut impl Write, data: &[u8]) -> Result<()> {
    w.write_all(data).map_err(|e| OciError::io("layer", e))
}
