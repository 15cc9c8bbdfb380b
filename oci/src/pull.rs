//! `pull`: resolve a source to an image manifest in the store, fetch and verify what is
//! missing, build its ext4 disk, and record the reference. Also the fast cached lookup.

use std::path::PathBuf;

use oci_client::Reference;
use oci_spec::image::ImageConfiguration;

use crate::digest::Digest;
use crate::disk::ensure_disk;
use crate::error::{OciError, Result};
use crate::local::{import_docker_archive, import_oci_layout, Resolved};
use crate::manifest::{
    image_blobs, parse_config, parse_manifest, select_platform, Manifest, MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
};
use crate::progress::Progress;
use crate::registry::{RegistryClient, RegistryOptions};
use crate::source::{ImageSource, Platform};
use crate::store::{RefRecord, Store};
use crate::unpack::UnpackLimits;

/// When to contact the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Always resolve the reference at the source (`voidbox image pull`).
    #[default]
    Always,
    /// Use the store if the reference is recorded there, else pull (`voidbox run`).
    IfMissing,
    /// Never touch the network or the source (`--offline`).
    Never,
}

/// Options of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Platform chosen from an index.
    pub platform: Platform,
    /// Registry connection settings.
    pub registry: RegistryOptions,
    /// When to contact the source.
    pub policy: PullPolicy,
    /// Progress bars on stderr (only when it is a tty).
    pub progress: bool,
    /// Unpacking limits.
    pub limits: UnpackLimits,
    /// Build the image's ext4 rootfs disk (true for rootfs and skill images). Guest
    /// images (kernel + initramfs) set it false: their blobs are fetched and verified
    /// the same way, but no disk is built.
    pub build_disk: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::default(),
            registry: RegistryOptions::default(),
            policy: PullPolicy::default(),
            progress: false,
            limits: UnpackLimits::default(),
            build_disk: true,
        }
    }
}

/// A pulled (or cached) image ready to boot from.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// Canonical reference.
    pub reference: String,
    /// The image manifest digest (the disk's key).
    pub manifest: Digest,
    /// The index it was selected from, if any.
    pub index: Option<Digest>,
    /// The image config (Env, Cmd, User, WorkingDir, ...).
    pub config: ImageConfiguration,
    /// The read-only ext4 disk in the store. Only built when the pull asked for it
    /// ([`PullOptions::build_disk`]); otherwise this is where it would be and may not exist.
    pub disk: PathBuf,
    /// If the reference pointed to another manifest before this pull: that manifest.
    pub moved_from: Option<Digest>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn load_config(store: &Store, manifest: &Digest) -> Result<ImageConfiguration> {
    let what = format!("manifest {manifest}");
    let Manifest::Image(image) = parse_manifest(&store.read_manifest(manifest)?, &what)? else {
        return Err(OciError::BadManifest {
            what,
            reason: "is an index, not an image manifest".into(),
        });
    };
    let config = Digest::parse(image.config().digest().as_ref())?;
    parse_config(&store.read_blob(&config)?, &format!("config {config}"))
}

/// Looks `source` up in the store only: its ref record for `platform`, manifest, config
/// and disk must all be there. `Ok(None)` if anything is missing.
pub fn resolve_cached(
    store: &Store,
    source: &ImageSource,
    platform: &Platform,
) -> Result<Option<PulledImage>> {
    resolve_cached_with(store, source, platform, true)
}

/// Whether the manifest and every blob it lists (config, layers) are in the store.
fn has_all_blobs(store: &Store, manifest: &Digest) -> Result<bool> {
    if !store.has_blob(manifest) {
        return Ok(false);
    }
    let what = format!("manifest {manifest}");
    let Manifest::Image(image) = parse_manifest(&store.read_manifest(manifest)?, &what)? else {
        return Ok(false);
    };
    Ok(image_blobs(&image)?.iter().all(|d| store.has_blob(d)))
}

/// [`resolve_cached`]; without `need_disk` the disk may be missing but every blob must
/// be in the store.
fn resolve_cached_with(
    store: &Store,
    source: &ImageSource,
    platform: &Platform,
    need_disk: bool,
) -> Result<Option<PulledImage>> {
    let name = source.canonical_name();
    let (manifest, index) = match store.read_ref_for(&name, &platform.to_string())? {
        Some(record) => (record.manifest, record.index),
        None => return Ok(None),
    };
    let disk = store.disk_path(&manifest);
    let complete = if need_disk {
        disk.is_file() && store.has_blob(&manifest)
    } else {
        has_all_blobs(store, &manifest)?
    };
    if !complete {
        return Ok(None);
    }
    let config = load_config(store, &manifest)?;
    Ok(Some(PulledImage {
        reference: name,
        manifest,
        index,
        config,
        disk,
        moved_from: None,
    }))
}

/// Pulls `source` into `store` according to `options` and returns the ready image.
/// Also used for skills: a skill image becomes a read-only disk the same way.
pub async fn pull(
    store: &Store,
    source: &ImageSource,
    options: &PullOptions,
) -> Result<PulledImage> {
    let _shared = store.lock_shared()?;
    let name = source.canonical_name();
    if options.policy != PullPolicy::Always {
        if let Some(image) =
            resolve_cached_with(store, source, &options.platform, options.build_disk)?
        {
            return Ok(image);
        }
    }
    let resolved = if options.policy == PullPolicy::Never {
        resolve_offline(store, source, &name, &options.platform)?
    } else {
        match source {
            ImageSource::Registry(reference) => {
                fetch_from_registry(store, reference, options).await?
            }
            ImageSource::OciLayout { dir, tag } => {
                import_oci_layout(store, dir, tag.as_deref(), &options.platform)?
            }
            ImageSource::DockerArchive { file } => import_docker_archive(store, file)?,
        }
    };
    let disk = if options.build_disk {
        ensure_disk(store, &resolved.manifest, options.limits)?
    } else {
        // Every blob was verified on its way into the store; offline, make sure none is
        // missing before recording the reference.
        if !has_all_blobs(store, &resolved.manifest)? {
            return Err(OciError::NotInStore {
                reference: name.clone(),
            });
        }
        store.disk_path(&resolved.manifest)
    };
    let config = load_config(store, &resolved.manifest)?;
    let previous = store.write_ref(&RefRecord {
        reference: name.clone(),
        manifest: resolved.manifest.clone(),
        index: resolved.index.clone(),
        platform: options.platform.to_string(),
        updated_unix: now_unix(),
    })?;
    let moved_from = previous
        .map(|p| p.manifest)
        .filter(|m| m != &resolved.manifest);
    Ok(PulledImage {
        reference: name,
        manifest: resolved.manifest,
        index: resolved.index,
        config,
        disk,
        moved_from,
    })
}

/// Blocking [`pull`] on a private current-thread runtime (for callers without one; must
/// not be called from inside a tokio runtime).
pub fn pull_blocking(
    store: &Store,
    source: &ImageSource,
    options: &PullOptions,
) -> Result<PulledImage> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OciError::io("tokio runtime", e))?
        .block_on(pull(store, source, options))
}

/// Offline: the ref record, or a pinned digest whose blobs are all in the store.
fn resolve_offline(
    store: &Store,
    source: &ImageSource,
    name: &str,
    platform: &Platform,
) -> Result<Resolved> {
    if let Some(record) = store.read_ref_for(name, &platform.to_string())? {
        return Ok(Resolved {
            manifest: record.manifest,
            index: record.index,
        });
    }
    if let Some(digest) = source.pinned_digest() {
        if store.has_blob(&digest) {
            return Ok(Resolved {
                manifest: digest,
                index: None,
            });
        }
    }
    Err(OciError::NotInStore {
        reference: name.to_string(),
    })
}

async fn fetch_from_registry(
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
) -> Result<Resolved> {
    let client = RegistryClient::new(reference, &options.registry);
    let (top, data) = client.fetch_manifest(store, reference).await?;
    let (manifest_digest, manifest_data, index) =
        match parse_manifest(&data, &format!("manifest of {}", reference.whole()))? {
            Manifest::Image(_) => (top, data, None),
            Manifest::Index(idx) => {
                let child = select_platform(&idx, &options.platform, &reference.whole())?;
                if let Some(size) = idx
                    .manifests()
                    .iter()
                    .find(|e| e.digest().as_ref() == child.to_string())
                    .map(|e| e.size())
                    .filter(|s| *s > MAX_MANIFEST_BYTES)
                {
                    return Err(OciError::DocumentTooLarge {
                        what: format!("manifest {child} of {}", reference.whole()),
                        size,
                        cap: MAX_MANIFEST_BYTES,
                    });
                }
                let child_ref = Reference::with_digest(
                    reference.registry().to_string(),
                    reference.repository().to_string(),
                    child.to_string(),
                );
                let (digest, data) = client.fetch_manifest(store, &child_ref).await?;
                (digest, data, Some(top))
            }
        };
    let what = format!("manifest {manifest_digest}");
    let Manifest::Image(image) = parse_manifest(&manifest_data, &what)? else {
        return Err(OciError::BadManifest {
            what,
            reason: "an index inside an index".into(),
        });
    };
    if image.config().size() > MAX_CONFIG_BYTES {
        return Err(OciError::DocumentTooLarge {
            what: format!(
                "config {} of {}",
                image.config().digest(),
                reference.whole()
            ),
            size: image.config().size(),
            cap: MAX_CONFIG_BYTES,
        });
    }
    let blobs: Vec<(Digest, u64)> = std::iter::once(image.config())
        .chain(image.layers())
        .map(|d| Ok((Digest::parse(d.digest().as_ref())?, d.size())))
        .collect::<Result<_>>()?;
    let progress = Progress::new(options.progress);
    client
        .fetch_blobs(store, reference, &blobs, &progress)
        .await?;
    Ok(Resolved {
        manifest: manifest_digest,
        index,
    })
}
