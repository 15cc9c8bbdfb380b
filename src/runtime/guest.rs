//! The guest image (kernel + initramfs) as an OCI image in the local store:
//! building the default one, finding its files, and the resolution order of
//! a run's kernel and initramfs:
//!
//! 1. `sandbox.kernel` + `sandbox.initramfs` in the spec;
//! 2. `VOIDBOX_KERNEL` + `VOIDBOX_INITRAMFS`;
//! 3. `sandbox.guest_image` (pulled into the store if missing);
//! 4. the default guest image in the store (`voidbox guest build`).
//!
//! A guest image has one layer holding `boot/vmlinux` and
//! `boot/initramfs.cpio.gz`; its files are unpacked once per manifest into
//! `<home>/guest/<manifest hex>/`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use voidbox_guest_image::guest as compose;
use voidbox_guest_image::initramfs::Compression;
use voidbox_guest_image::kernel::{FetchOptions, KernelStore};
use voidbox_oci::manifest::{parse_manifest, Manifest, OCI_LAYER_GZIP};
use voidbox_oci::writer::{write_image, ImageSettings, LayerWriter};
use voidbox_oci::{Digest, ImageSource, PullOptions, PullPolicy, RefRecord, Store};

use super::error::{Error, Result};

/// The store name of the default guest image.
pub const DEFAULT_GUEST_REF: &str = "voidbox.local/guest:default";
/// Path of the kernel inside a guest image layer.
pub const KERNEL_PATH: &str = "boot/vmlinux";
/// Path of the initramfs inside a guest image layer.
pub const INITRAMFS_PATH: &str = "boot/initramfs.cpio.gz";
/// Config label marking a guest image.
pub const GUEST_LABEL: &str = "org.voidbox.guest";

const BUILD_HINT: &str = "run `voidbox guest build` (after `cargo build -p voidbox-guest-agent --profile agent --target x86_64-unknown-linux-musl`), or set `sandbox.kernel` and `sandbox.initramfs`";

/// The kernel and initramfs a VM boots, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestBoot {
    /// Kernel (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Initramfs with the agent as /init.
    pub initramfs: PathBuf,
    /// Which rule chose them (`sandbox.kernel/initramfs`, `VOIDBOX_KERNEL/VOIDBOX_INITRAMFS`,
    /// `guest_image REF@DIGEST`, `default guest image @DIGEST`).
    pub source: String,
}

fn check_file(path: &Path, what: &str, hint: &str) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::Image(format!(
            "{what} {} is not a regular file; {hint}",
            path.display()
        ))),
        Err(e) => Err(Error::Image(format!(
            "{what} {} cannot be read ({e}); {hint}",
            path.display()
        ))),
    }
}

/// Resolves a run's kernel and initramfs (see the module docs for the order).
pub fn resolve(
    store: &Store,
    home: &Path,
    sandbox: &voidbox_spec::Sandbox,
    pull: &PullOptions,
) -> Result<GuestBoot> {
    if let (Some(kernel), Some(initramfs)) = (&sandbox.kernel, &sandbox.initramfs) {
        let hint = "fix the path in the spec";
        check_file(kernel, "sandbox.kernel", hint)?;
        check_file(initramfs, "sandbox.initramfs", hint)?;
        return Ok(GuestBoot {
            kernel: kernel.clone(),
            initramfs: initramfs.clone(),
            source: "sandbox.kernel/initramfs".into(),
        });
    }
    let env = |name| std::env::var_os(name).filter(|v: &std::ffi::OsString| !v.is_empty());
    match (env("VOIDBOX_KERNEL"), env("VOIDBOX_INITRAMFS")) {
        (Some(kernel), Some(initramfs)) => {
            let (kernel, initramfs) = (PathBuf::from(kernel), PathBuf::from(initramfs));
            let hint = "fix or unset the environment variable";
            check_file(&kernel, "VOIDBOX_KERNEL", hint)?;
            check_file(&initramfs, "VOIDBOX_INITRAMFS", hint)?;
            return Ok(GuestBoot {
                kernel,
                initramfs,
                source: "VOIDBOX_KERNEL/VOIDBOX_INITRAMFS".into(),
            });
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Image(
                "only one of VOIDBOX_KERNEL and VOIDBOX_INITRAMFS is set; set both or neither"
                    .into(),
            ))
        }
        (None, None) => {}
    }
    if let Some(reference) = &sandbox.guest_image {
        let source = ImageSource::parse(reference)
            .map_err(|e| Error::Image(format!("sandbox.guest_image: {e}")))?;
        let mut options = pull.clone();
        if options.policy == PullPolicy::Always {
            options.policy = PullPolicy::IfMissing;
        }
        // Kernel + initramfs are read from the layer; an ext4 disk would go unused.
        options.build_disk = false;
        let image = voidbox_oci::pull_blocking(store, &source, &options)
            .map_err(|e| Error::Image(format!("cannot get guest image `{reference}`: {e}")))?;
        let (kernel, initramfs) = unpack_guest(store, home, &image.manifest)?;
        return Ok(GuestBoot {
            kernel,
            initramfs,
            source: format!("guest_image {}@{}", image.reference, image.manifest),
        });
    }
    let record = store
        .read_ref(DEFAULT_GUEST_REF)
        .map_err(|e| Error::Image(format!("cannot read the image store: {e}")))?
        .ok_or_else(|| {
            Error::Image(format!(
                "no guest kernel/initramfs: the store at {} has no default guest image; {BUILD_HINT}",
                store.root().display()
            ))
        })?;
    let (kernel, initramfs) = unpack_guest(store, home, &record.manifest)?;
    Ok(GuestBoot {
        kernel,
        initramfs,
        source: format!(
            "default guest image {DEFAULT_GUEST_REF}@{}",
            record.manifest
        ),
    })
}

/// The kernel and initramfs of a guest image in the store, unpacked once
/// into `<home>/guest/<manifest hex>/`.
pub fn unpack_guest(store: &Store, home: &Path, manifest: &Digest) -> Result<(PathBuf, PathBuf)> {
    let dir = home.join("guest").join(manifest.hex());
    let (kernel, initramfs) = (dir.join("vmlinux"), dir.join("initramfs.cpio.gz"));
    if kernel.is_file() && initramfs.is_file() {
        return Ok((kernel, initramfs));
    }
    let bad =
        |reason: String| Error::Image(format!("guest image {manifest}: {reason}; {BUILD_HINT}"));
    // Keeps `prune`/`rm` from removing the blobs while they are read.
    let _shared = store.lock_shared().map_err(|e| bad(e.to_string()))?;
    let data = store
        .read_manifest(manifest)
        .map_err(|e| bad(format!("manifest not in the store ({e})")))?;
    let Manifest::Image(image) =
        parse_manifest(&data, &manifest.to_string()).map_err(|e| bad(e.to_string()))?
    else {
        return Err(bad("is an index, not an image manifest".into()));
    };
    let parent = home.join("guest");
    fs::create_dir_all(&parent)
        .map_err(|e| Error::host(format!("cannot create {}", parent.display()), e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&parent)
        .map_err(|e| Error::host("cannot create a temp directory", e))?;
    let mut found = (false, false);
    for layer in image.layers() {
        let digest = Digest::parse(layer.digest().as_ref()).map_err(|e| bad(e.to_string()))?;
        let file = fs::File::open(store.blob_path(&digest))
            .map_err(|e| bad(format!("layer {digest} not in the store ({e})")))?;
        let reader: Box<dyn Read> = if layer.media_type().to_string() == OCI_LAYER_GZIP
            || layer.media_type().to_string().ends_with("gzip")
        {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("layer {digest}: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("layer {digest}: {e}")))?;
            let path = entry.path().map_err(|e| bad(e.to_string()))?;
            let name = path.to_string_lossy().trim_start_matches("./").to_string();
            let out = match name.as_str() {
                KERNEL_PATH => {
                    found.0 = true;
                    tmp.path().join("vmlinux")
                }
                INITRAMFS_PATH => {
                    found.1 = true;
                    tmp.path().join("initramfs.cpio.gz")
                }
                _ => continue,
            };
            let mut f = fs::File::create(&out).map_err(|e| Error::host("cannot write", e))?;
            std::io::copy(&mut entry, &mut f).map_err(|e| bad(format!("layer {digest}: {e}")))?;
        }
    }
    if found != (true, true) {
        return Err(bad(format!(
            "not a voidbox guest image (it needs {KERNEL_PATH} and {INITRAMFS_PATH})"
        )));
    }
    let tmp = tmp.keep();
    match fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another process unpacked it first.
        Err(_) if kernel.is_file() && initramfs.is_file() => {
            let _ = fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::host(format!("cannot create {}", dir.display()), e));
        }
    }
    Ok((kernel, initramfs))
}

/// Options of `voidbox guest build`.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The static agent (default: see [`compose::agent_candidates`]).
    pub agent: Option<PathBuf>,
    /// A busybox-static `.deb` (default: `VOIDBOX_DEB_CACHE`, the store's
    /// `debs/`, else `apt-get download`).
    pub busybox_deb: Option<PathBuf>,
    /// Store name to record (default [`DEFAULT_GUEST_REF`]).
    pub reference: Option<String>,
}

/// What `voidbox guest build` made.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltGuest {
    /// Store name.
    pub reference: String,
    /// Manifest digest.
    pub manifest: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Agent binary used.
    pub agent: PathBuf,
    /// Size of the gzip initramfs.
    pub initramfs_bytes: u64,
}

/// Target directories to look for the agent in: `$CARGO_TARGET_DIR`, the
/// directory two levels above this executable (`target/<profile>/voidbox`),
/// and `./target`.
fn target_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent().and_then(Path::parent) {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.push(PathBuf::from("target"));
    dirs
}

/// Builds the default guest image into the store.
pub fn build(store: &Store, home: &Path, opts: &BuildOptions) -> Result<BuiltGuest> {
    let img = |e: voidbox_guest_image::Error| Error::Image(e.to_string());
    let (agent_path, agent) = compose::load_agent(
        opts.agent.as_deref(),
        &compose::agent_candidates(&target_dirs()),
    )
    .map_err(img)?;
    let kernel = KernelStore::default_store()
        .ensure(&FetchOptions::from_env())
        .map_err(img)?;
    let mut deb_dirs: Vec<PathBuf> = std::env::var_os("VOIDBOX_DEB_CACHE")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    deb_dirs.push(home.join("debs"));
    let deb = compose::find_busybox_deb(opts.busybox_deb.as_deref(), &deb_dirs, &home.join("debs"))
        .map_err(img)?;
    let busybox = compose::busybox_from_deb(&deb).map_err(img)?;
    let applets = compose::busybox_applets(&busybox).map_err(img)?;
    let parts = compose::GuestParts {
        agent,
        busybox,
        applets,
        kernel: &kernel,
    };
    let initramfs = compose::compose(&parts)
        .map_err(img)?
        .encode(Compression::Gzip);
    let vmlinux = fs::read(kernel.vmlinux())
        .map_err(|e| Error::host(format!("cannot read {}", kernel.vmlinux().display()), e))?;

    let oci = |e: voidbox_oci::OciError| Error::Image(e.to_string());
    // Held while writing blobs and the ref so `prune`/`rm` cannot remove them midway.
    let _shared = store.lock_shared().map_err(oci)?;
    let mut layer = LayerWriter::new(store).map_err(oci)?;
    layer.add_file(KERNEL_PATH, 0o644, &vmlinux).map_err(oci)?;
    layer
        .add_file(INITRAMFS_PATH, 0o644, &initramfs)
        .map_err(oci)?;
    let layer = layer.finish().map_err(oci)?;
    let mut labels = BTreeMap::new();
    labels.insert(GUEST_LABEL.to_string(), "v1".to_string());
    labels.insert(
        format!("{GUEST_LABEL}.kernel-release"),
        kernel.manifest.release.clone(),
    );
    labels.insert(
        format!("{GUEST_LABEL}.kernel-package"),
        format!("{}={}", kernel.manifest.package, kernel.manifest.version),
    );
    let settings = ImageSettings {
        labels,
        ..Default::default()
    };
    let manifest = write_image(store, &settings, &[layer], &BTreeMap::new()).map_err(oci)?;
    let reference = opts
        .reference
        .clone()
        .unwrap_or_else(|| DEFAULT_GUEST_REF.to_string());
    let name = ImageSource::parse(&reference)
        .map_err(oci)?
        .canonical_name();
    store
        .write_ref(&RefRecord {
            reference: name.clone(),
            manifest: manifest.clone(),
            index: None,
            platform: "linux/amd64".into(),
            updated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
        .map_err(oci)?;
    unpack_guest(store, home, &manifest)?;
    Ok(BuiltGuest {
        reference: name,
        manifest: manifest.to_string(),
        kernel_release: kernel.manifest.release.clone(),
        agent: agent_path,
        initramfs_bytes: initramfs.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a guest image (fake kernel/initramfs bytes: nothing boots here) into an
    /// OCI layout at `dir` tagged `tag`; returns its manifest digest.
    fn guest_layout(dir: &Path, tag: &str) -> Digest {
        let src_dir = tempfile::tempdir().unwrap();
        let src = Store::open(src_dir.path()).unwrap();
        let mut layer = LayerWriter::new(&src).unwrap();
        layer.add_file(KERNEL_PATH, 0o644, b"kernel").unwrap();
        layer.add_file(INITRAMFS_PATH, 0o644, b"initramfs").unwrap();
        let layer = layer.finish().unwrap();
        let settings = ImageSettings::default();
        let manifest = write_image(&src, &settings, &[layer], &BTreeMap::new()).unwrap();
        let data = src.read_manifest(&manifest).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&data).unwrap();
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let mut digests = vec![manifest.clone()];
        digests.push(Digest::parse(doc["config"]["digest"].as_str().unwrap()).unwrap());
        for l in doc["layers"].as_array().unwrap() {
            digests.push(Digest::parse(l["digest"].as_str().unwrap()).unwrap());
        }
        for d in &digests {
            fs::copy(src.blob_path(d), blobs.join(d.hex())).unwrap();
        }
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest.to_string(),
                "size": data.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        fs::write(dir.join("index.json"), index.to_string()).unwrap();
        manifest
    }

    #[test]
    fn guest_image_pull_builds_no_rootfs_disk() {
        let layout = tempfile::tempdir().unwrap();
        let manifest = guest_layout(layout.path(), "g");
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path().join("store")).unwrap();
        let sandbox: voidbox_spec::Sandbox = serde_json::from_value(serde_json::json!({
            "guest_image": format!("oci:{}:g", layout.path().display()),
        }))
        .unwrap();
        let boot = resolve(&store, home.path(), &sandbox, &PullOptions::default()).unwrap();
        assert_eq!(fs::read(&boot.kernel).unwrap(), b"kernel");
        assert_eq!(fs::read(&boot.initramfs).unwrap(), b"initramfs");
        assert!(
            boot.source.contains(&manifest.to_string()),
            "{}",
            boot.source
        );
        assert!(
            !store.disk_path(&manifest).exists(),
            "an unused ext4 disk was built for the guest image"
        );
        // Cached: resolved again from the store alone, still without a disk.
        let again = resolve(&store, home.path(), &sandbox, &PullOptions::default()).unwrap();
        assert_eq!(again, boot);
        assert!(!store.disk_path(&manifest).exists());
    }
}
