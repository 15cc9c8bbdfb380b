//! Derived disks: one read-only ext4 image per image manifest (rootfs or skill), built
//! once under a lock and shared by every process using the store.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::{IoContext, OciError, Result};
use crate::ext4::build_ext4;
use crate::manifest::{parse_config, parse_manifest, Manifest};
use crate::store::Store;
use crate::unpack::{Tree, UnpackLimits};

/// Version of the layers → ext4 builder; part of every disk's key so a changed builder
/// never reuses an old disk.
pub const DISK_BUILDER_VERSION: u32 = 1;

/// Returns the disk of the image `manifest` (already in the store with all its blobs),
/// building it if needed.
pub fn ensure_disk(store: &Store, manifest: &Digest, limits: UnpackLimits) -> Result<PathBuf> {
    let path = store.disk_path(manifest);
    if path.is_file() {
        return Ok(path);
    }
    let _lock = store.lock_artifact(&format!("disk-{}", manifest.hex()))?;
    if path.is_file() {
        // Another process built it while we waited.
        return Ok(path);
    }
    let started = std::time::Instant::now();
    let what = format!("manifest {manifest}");
    let data = store.read_manifest(manifest)?;
    let Manifest::Image(image) = parse_manifest(&data, &what)? else {
        return Err(OciError::BadManifest {
            what,
            reason: "is an index; select a platform manifest first".into(),
        });
    };
    let config_digest = Digest::parse(image.config().digest().as_ref())?;
    let config = parse_config(
        &store.read_blob(&config_digest)?,
        &format!("config {config_digest}"),
    )?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != image.layers().len() {
        return Err(OciError::BadManifest {
            what,
            reason: format!(
                "{} layers but the config lists {} diff_ids",
                image.layers().len(),
                diff_ids.len()
            ),
        });
    }
    let work = store.temp_dir()?;
    let tree_dir = work.path().join("tree");
    std::fs::create_dir(&tree_dir).at(&tree_dir)?;
    let mut tree = Tree::new(&tree_dir, limits);
    for (layer, diff_id) in image.layers().iter().zip(diff_ids) {
        let digest = Digest::parse(layer.digest().as_ref())?;
        let diff_id = Digest::parse(diff_id)?;
        let blob = store.blob_path(&digest);
        tree.apply_layer_file(&digest.to_string(), &blob, Some(&diff_id))?;
    }
    let unpacked = started.elapsed();
    let image_path = work.path().join("disk.ext4");
    build_ext4(&tree, &image_path, work.path())?;
    std::fs::File::open(&image_path)
        .and_then(|f| f.sync_all())
        .at(&image_path)?;
    Store::durable_rename(&image_path, &path)?;
    tracing::info!(
        %manifest,
        bytes = tree.total_bytes(),
        unpack_ms = unpacked.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "built rootfs disk"
    );
    Ok(path)
}
