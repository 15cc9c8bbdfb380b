//! Importing images from local sources into the store: OCI image layouts and
//! `docker save` archives. Every blob is verified on the way in.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::digest::Digest;
use crate::error::{IoContext, OciError, Result};
use crate::manifest::{
    image_blobs, parse_manifest, select_platform, Manifest, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
    OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST,
};
use crate::source::Platform;
use crate::store::{PendingBlob, Store};

/// What a source resolved to: the platform manifest, and the index it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Image manifest digest.
    pub manifest: Digest,
    /// Index digest, if the source pointed to one.
    pub index: Option<Digest>,
}

fn bad(source: &Path, reason: impl Into<String>) -> OciError {
    OciError::BadSource {
        source_name: source.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads at most `cap` bytes; `Ok(Err(..))` if the reader holds more.
fn read_capped(reader: impl Read, cap: u64, what: &str) -> std::io::Result<Result<Vec<u8>>> {
    let mut data = Vec::new();
    reader.take(cap + 1).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        return Ok(Err(OciError::DocumentTooLarge {
            what: what.to_string(),
            size: data.len() as u64,
            cap,
        }));
    }
    Ok(Ok(data))
}

/// Refuses a manifest descriptor whose announced size is past the manifest cap.
fn check_manifest_size(digest: &Digest, size: Option<u64>) -> Result<()> {
    match size {
        Some(size) if size > MAX_MANIFEST_BYTES => Err(OciError::DocumentTooLarge {
            what: format!("manifest {digest}"),
            size,
            cap: MAX_MANIFEST_BYTES,
        }),
        _ => Ok(()),
    }
}

/// Copies one blob of a layout into the store, verifying digest (and size if known).
fn copy_layout_blob(store: &Store, dir: &Path, digest: &Digest, size: Option<u64>) -> Result<()> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let path = dir.join("blobs/sha256").join(digest.hex());
    let mut file =
        std::fs::File::open(&path).map_err(|e| bad(dir, format!("blob {digest} missing ({e})")))?;
    let mut writer = store.blob_writer()?;
    std::io::copy(&mut file, &mut writer).at(&path)?;
    writer.commit(Some(digest), size)?;
    Ok(())
}

/// Imports `tag` (or the only image) of the OCI layout at `dir`.
pub fn import_oci_layout(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<Resolved> {
    let index_path = dir.join("index.json");
    let file = std::fs::File::open(&index_path)
        .map_err(|e| bad(dir, format!("not an OCI layout: index.json: {e}")))?;
    let data = read_capped(file, MAX_MANIFEST_BYTES, &index_path.display().to_string())
        .at(&index_path)??;
    let Manifest::Index(index) = parse_manifest(&data, &index_path.display().to_string())? else {
        return Err(bad(dir, "index.json is not an image index"));
    };
    let entries = index.manifests();
    let chosen = match tag {
        Some(tag) => entries.iter().find(|e| {
            e.annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .is_some_and(|n| n == tag)
        }),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(entry) = chosen else {
        let tags: Vec<String> = entries
            .iter()
            .filter_map(|e| {
                e.annotations()
                    .as_ref()?
                    .get("org.opencontainers.image.ref.name")
                    .cloned()
            })
            .collect();
        return Err(bad(
            dir,
            format!(
                "no image {} in the layout (tags: {}); use oci:{}:<tag>",
                tag.map(|t| format!("tagged {t:?}"))
                    .unwrap_or_else(|| "chosen: give a tag".into()),
                if tags.is_empty() {
                    "none".into()
                } else {
                    tags.join(", ")
                },
                dir.display()
            ),
        ));
    };
    let top = Digest::parse(entry.digest().as_ref())?;
    check_manifest_size(&top, Some(entry.size()))?;
    copy_layout_blob(store, dir, &top, Some(entry.size()))?;
    let top_data = store.read_manifest(&top)?;
    let (manifest, index) = match parse_manifest(&top_data, &format!("manifest {top}"))? {
        Manifest::Image(_) => (top, None),
        Manifest::Index(inner) => {
            let child = select_platform(&inner, platform, &dir.display().to_string())?;
            let size = inner
                .manifests()
                .iter()
                .find(|e| e.digest().as_ref() == child.to_string())
                .map(|e| e.size());
            check_manifest_size(&child, size)?;
            copy_layout_blob(store, dir, &child, size)?;
            (child, Some(top))
        }
    };
    let Manifest::Image(image) = parse_manifest(
        &store.read_manifest(&manifest)?,
        &format!("manifest {manifest}"),
    )?
    else {
        return Err(bad(dir, format!("{manifest} is an index inside an index")));
    };
    if image.config().size() > MAX_CONFIG_BYTES {
        return Err(OciError::DocumentTooLarge {
            what: format!("config {}", image.config().digest()),
            size: image.config().size(),
            cap: MAX_CONFIG_BYTES,
        });
    }
    for d in std::iter::once(image.config()).chain(image.layers()) {
        copy_layout_blob(
            store,
            dir,
            &Digest::parse(d.digest().as_ref())?,
            Some(d.size()),
        )?;
    }
    debug_assert!(image_blobs(&image).is_ok());
    Ok(Resolved { manifest, index })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveImage {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

/// Imports the first image of a `docker save` archive, converting it to an OCI manifest.
pub fn import_docker_archive(store: &Store, file: &Path) -> Result<Resolved> {
    let f = std::fs::File::open(file).at(file)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    let mut pending: HashMap<String, PendingBlob<'_>> = HashMap::new();
    let mut manifest_json: Option<Vec<u8>> = None;
    for entry in archive
        .entries()
        .map_err(|e| bad(file, format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(file, format!("corrupt archive: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        if name == "manifest.json" {
            let what = format!("{}: manifest.json", file.display());
            manifest_json = Some(read_capped(&mut entry, MAX_MANIFEST_BYTES, &what).at(file)??);
            continue;
        }
        let mut writer = store.blob_writer()?;
        std::io::copy(&mut entry, &mut writer)
            .map_err(|e| bad(file, format!("reading {name}: {e}")))?;
        pending.insert(name, writer.finish()?);
    }
    let manifest_json = manifest_json.ok_or_else(|| {
        bad(
            file,
            "no manifest.json: not a docker-archive (docker save) file",
        )
    })?;
    let images: Vec<DockerArchiveImage> = serde_json::from_slice(&manifest_json)
        .map_err(|e| bad(file, format!("manifest.json: {e}")))?;
    let image = images
        .into_iter()
        .next()
        .ok_or_else(|| bad(file, "manifest.json lists no image"))?;
    let missing = |name: &str| {
        bad(
            file,
            format!("manifest.json names {name:?}, which is not in the archive"),
        )
    };
    let (config, config_size) = pending
        .remove(&image.config)
        .ok_or_else(|| missing(&image.config))?
        .commit(None, None)?;
    let mut layers: Vec<(Digest, u64, &str)> = Vec::new();
    for name in &image.layers {
        let (digest, size) = if let Some(blob) = pending.remove(name) {
            blob.commit(None, None)?
        } else if let Some((d, s, _)) = layers.iter().find(|(_, _, n)| *n == name.as_str()) {
            // The same layer file listed twice: already committed.
            (d.clone(), *s)
        } else {
            return Err(missing(name));
        };
        layers.push((digest, size, name.as_str()));
    }
    let mut layer_descs = Vec::new();
    for (digest, size, _) in &layers {
        let mut magic = [0u8; 2];
        let path = store.blob_path(digest);
        let n = std::fs::File::open(&path)
            .and_then(|mut f| f.read(&mut magic))
            .at(&path)?;
        let media_type = if n == 2 && magic == [0x1f, 0x8b] {
            OCI_LAYER_GZIP
        } else {
            OCI_LAYER_TAR
        };
        layer_descs.push(serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": config_size},
        "layers": layer_descs,
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let digest = store.put_blob_bytes(&bytes, None)?;
    Ok(Resolved {
        manifest: digest,
        index: None,
    })
}
