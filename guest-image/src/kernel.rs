//! The guest kernel: Debian's amd64 kernel package, fetched and unpacked into the kernel store.
//!
//! `apt-get download` fetches the package (never installed on the host), its exact version and
//! sha256 are recorded in `manifest.json`, `dpkg-deb -x` unpacks it, and the ELF `vmlinux` is
//! extracted from the bzImage. Store layout (`$VOIDBOX_HOME`, default `~/.cache/voidbox`):
//!
//! ```text
//! kernels/<package>_<version>/manifest.json
//!                             boot/vmlinuz-<release>     bzImage
//!                             vmlinux                    ELF, PVH entry
//!                             lib/modules/<release>/     modules (no modules.dep: see `modules`)
//! ```
//! Entries are built in a temp directory and renamed into place, so a crash leaves no
//! half-written entry.
//!
//! # The pinned kernel
//! `scripts/setup.sh` records the kernel it fetched in a *pin* (`kernel.pin.json`: package,
//! version, sha256) next to the kept `.deb` in a deb cache directory (`$VOIDBOX_HOME/debs`).
//! [`KernelStore::ensure`] with that directory in [`FetchOptions::deb_dirs`] uses exactly the
//! pinned kernel and never asks apt, so tests and runs after setup need no network and see
//! the kernel setup recorded. [`KernelStore::refresh_pin`] (setup) keeps the pin when its
//! `.deb` is still cached, downloads that exact version when not, and when Debian has
//! replaced it (security updates remove old kernel packages) takes the current version,
//! says so loudly and records it.
//!
//! # Kernel configuration that matters (Debian 6.1 generic, checked in `boot/config-*`)
//! - `CONFIG_PVH=y`: the ELF vmlinux has a PVH entry note (direct boot, no decompressor).
//! - `CONFIG_KERNEL_XZ=y`: the bzImage payload is xz (see `bzimage`).
//! - `CONFIG_ACPI=y` and `CONFIG_VIRTIO_MMIO=m` without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`:
//!   virtio-mmio devices must be described in the DSDT (`LNRO0005`); `virtio_mmio.device=`
//!   on the cmdline is ignored.
//! - `CONFIG_VIRTIO_BLK=m`, `CONFIG_VSOCKETS=m`, `CONFIG_VIRTIO_VSOCKETS=m`, `CONFIG_EXT4_FS=m`,
//!   `CONFIG_OVERLAY_FS=m`: loaded from the initramfs in dependency order.
//! - `CONFIG_MODULE_COMPRESS_NONE=y`: modules are plain `.ko` files (finit_module needs no
//!   decompression support).
//! - `CONFIG_SERIAL_8250=y`, `CONFIG_DEVTMPFS=y`, `CONFIG_RD_GZIP=y`, `CONFIG_BLK_DEV_INITRD=y`:
//!   console, /dev and gzip initramfs without modules.
//! - Nested lane (L2) needs: `CONFIG_KVM_AMD=m`, `CONFIG_VIRTIO_PCI=m`, `CONFIG_NET_9P_VIRTIO=m`,
//!   `CONFIG_9P_FS=m`, `CONFIG_VIRTIO_CONSOLE=m`, `CONFIG_VHOST_VSOCK=m` (QEMU microvm checks).
//! - `CONFIG_RTC_DRV_CMOS=y` probes slowly under nesting: boot with
//!   `initcall_blacklist=cmos_init`; `pci=off` skips the PCI/AGP scans on virtio-mmio guests.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::modules::{KernelModule, ModuleTree};

/// The metapackage that names Debian's current amd64 kernel.
pub const DEFAULT_PACKAGE: &str = "linux-image-amd64";

/// Modules a voidbox guest loads (with their dependencies): block, vsock, filesystems.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "vmw_vsock_virtio_transport",
    "ext4",
    "overlay",
];

/// Modules the nested lane's L2 loads: PCI virtio, 9p, virtio-serial, KVM, vhost-vsock.
pub const LANE_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "virtio_console",
    "kvm_amd",
    "vhost_vsock",
];

/// What `manifest.json` records about a stored kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelManifest {
    /// Versioned package name, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// Exact Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    /// sha256 (hex) of the `.deb` the entry was unpacked from.
    pub deb_sha256: String,
    /// Kernel release (`uname -r`), e.g. `6.1.0-56-amd64`.
    pub release: String,
}

/// A kernel unpacked in the store.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The entry directory.
    pub dir: PathBuf,
    /// Package, version, checksum, release.
    pub manifest: KernelManifest,
}

impl GuestKernel {
    /// Opens a store entry (checks that its files exist).
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(|e| Error::io("read", &mpath, e))?;
        let manifest: KernelManifest =
            serde_json::from_str(&text).map_err(|e| Error::BadStoreEntry {
                path: mpath.clone(),
                reason: format!("bad manifest: {e}"),
            })?;
        let k = GuestKernel {
            dir: dir.to_path_buf(),
            manifest,
        };
        for p in [k.bzimage(), k.vmlinux(), k.modules_dir()] {
            if !p.exists() {
                return Err(Error::BadStoreEntry {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "{} is missing; delete the entry and fetch again",
                        p.display()
                    ),
                });
            }
        }
        Ok(k)
    }

    /// The bzImage (`boot/vmlinuz-<release>`).
    pub fn bzimage(&self) -> PathBuf {
        self.dir
            .join(format!("boot/vmlinuz-{}", self.manifest.release))
    }

    /// The ELF vmlinux extracted from the bzImage (PVH entry).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// `lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.manifest.release)
    }

    /// Index of this kernel's modules.
    pub fn module_tree(&self) -> Result<ModuleTree> {
        ModuleTree::scan(&self.modules_dir())
    }

    /// `names` plus dependencies, in load order.
    pub fn modules(&self, names: &[&str]) -> Result<Vec<KernelModule>> {
        self.module_tree()?.resolve(names)
    }
}

/// The file, in a deb cache directory, that names the kernel setup recorded.
pub const PIN_FILE: &str = "kernel.pin.json";

/// What a pin records: exactly which kernel package to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Versioned package name.
    pub package: String,
    /// Exact Debian package version.
    pub version: String,
    /// sha256 (hex) of the `.deb`.
    pub deb_sha256: String,
}

impl KernelPin {
    /// The pin in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<KernelPin>> {
        let path = dir.join(PIN_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::BadStoreEntry {
                path: path.clone(),
                reason: format!("bad kernel pin ({e}); delete it and run scripts/setup.sh"),
            })
    }

    /// Write the pin into `dir` (atomically: a temp file renamed into place).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(PIN_FILE);
        let tmp = dir.join(format!(".{PIN_FILE}.{}", std::process::id()));
        let json = serde_json::to_string_pretty(self).expect("pin serializes");
        std::fs::write(&tmp, json).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("rename into place", &path, e)
        })
    }
}

/// What [`KernelStore::refresh_pin`] did to the pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinChange {
    /// The recorded kernel was kept.
    Kept,
    /// There was no pin; the current kernel was recorded.
    New,
    /// The recorded kernel could not be had any more (Debian replaced it); the current one
    /// was taken and recorded instead.
    Replaced {
        /// The pin that was replaced.
        old: KernelPin,
        /// Why its package could not be had.
        why: String,
    },
}

/// Where `.deb` files may already be (checked before downloading).
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Package to resolve: a metapackage such as [`DEFAULT_PACKAGE`] or a versioned one.
    pub package: Option<String>,
    /// Directories searched for a matching `<package>_<version>_amd64.deb` first.
    pub deb_dirs: Vec<PathBuf>,
}

impl FetchOptions {
    /// `VOIDBOX_DEB_CACHE` (colon-separated directories) if set, then the default deb cache
    /// ([`default_deb_cache`]), where setup keeps the kernel pin.
    pub fn from_env() -> Self {
        let mut deb_dirs: Vec<PathBuf> = std::env::var_os("VOIDBOX_DEB_CACHE")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        let default = default_deb_cache();
        if !deb_dirs.contains(&default) {
            deb_dirs.push(default);
        }
        FetchOptions {
            package: None,
            deb_dirs,
        }
    }
}

/// The kernel store directory.
#[derive(Debug, Clone)]
pub struct KernelStore {
    root: PathBuf,
}

/// Where voidbox keeps its state: `$VOIDBOX_HOME`, else `$XDG_CACHE_HOME/voidbox`, else
/// `~/.cache/voidbox` (empty variables count as unset). The runtime uses this too.
pub fn voidbox_home() -> PathBuf {
    if let Some(home) = std::env::var_os("VOIDBOX_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("voidbox")
}

/// The deb cache setup fills: the kernel `.deb` and its pin, busybox-static.
pub fn default_deb_cache() -> PathBuf {
    voidbox_home().join("debs")
}

fn run(cmd: &mut Command, fix: &'static str) -> Result<String> {
    let tool = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Tool {
        tool: tool.clone(),
        detail: e.to_string(),
        fix,
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            fix,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const APT_FIX: &str = "run `apt-get update` (Debian/Ubuntu host with network access needed)";
const DPKG_FIX: &str = "install dpkg (`apt-get install -y dpkg`)";

/// `apt-get download package=version` into `dir` (through a temp directory, so a failed
/// download leaves nothing); returns the `.deb`.
fn download_deb(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    let dl = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(dir)
        .map_err(|e| Error::io("create temp dir in", dir, e))?;
    tracing::info!(%package, %version, "downloading the guest kernel package");
    run(
        Command::new("apt-get")
            .args(["download", "-q"])
            .arg(format!("{package}={version}"))
            .current_dir(dl.path()),
        APT_FIX,
    )?;
    let name = std::fs::read_dir(dl.path())
        .map_err(|e| Error::io("list", dl.path(), e))?
        .flatten()
        .map(|e| e.file_name())
        .find(|n| n.to_string_lossy().ends_with(".deb"))
        .ok_or_else(|| Error::Tool {
            tool: format!("apt-get download {package}={version}"),
            detail: "no .deb appeared".into(),
            fix: APT_FIX,
        })?;
    let dest = dir.join(&name);
    std::fs::rename(dl.path().join(&name), &dest).map_err(|e| Error::io("move", &dest, e))?;
    Ok(dest)
}

/// Follows a metapackage to the versioned `linux-image-*` package it depends on.
pub fn resolve_package(package: &str) -> Result<String> {
    if package != DEFAULT_PACKAGE && !package.ends_with("-amd64") {
        return Ok(package.to_string());
    }
    if package
        .chars()
        .nth("linux-image-".len())
        .is_some_and(|c| c.is_ascii_digit())
    {
        return Ok(package.to_string());
    }
    let out = run(
        Command::new("apt-cache").args(["depends", package]),
        APT_FIX,
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| {
            d.starts_with("linux-image-") && d[12..].starts_with(|c: char| c.is_ascii_digit())
        })
        .map(str::to_string)
        .ok_or_else(|| Error::Tool {
            tool: format!("apt-cache depends {package}"),
            detail: "no versioned linux-image dependency listed".into(),
            fix: APT_FIX,
        })
}

/// The candidate version apt would download for `package`.
pub fn candidate_version(package: &str) -> Result<String> {
    let out = run(Command::new("apt-cache").args(["policy", package]), APT_FIX)?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .find(|v| *v != "(none)")
        .map(str::to_string)
        .ok_or_else(|| Error::Tool {
            tool: format!("apt-cache policy {package}"),
            detail: "no candidate version".into(),
            fix: APT_FIX,
        })
}

fn deb_field(deb: &Path, field: &str) -> Result<String> {
    Ok(run(
        Command::new("dpkg-deb").arg("-f").arg(deb).arg(field),
        DPKG_FIX,
    )?
    .trim()
    .to_string())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn entry_name(package: &str, version: &str) -> String {
    format!("{package}_{}", version.replace(':', "%3a"))
}

impl KernelStore {
    /// The store at `<voidbox_home>/kernels`.
    pub fn default_store() -> Self {
        Self::new(voidbox_home().join("kernels"))
    }

    /// A store rooted at `root` (created on first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        KernelStore { root: root.into() }
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every complete entry, newest package version last (by directory name).
    pub fn installed(&self) -> Result<Vec<GuestKernel>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list", &self.root, e)),
        };
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("manifest.json").is_file())
            .collect();
        dirs.sort();
        for d in dirs {
            out.push(GuestKernel::open(&d)?);
        }
        Ok(out)
    }

    /// The newest stored kernel, or a [`Error::NoKernel`] saying how to get one.
    pub fn latest(&self) -> Result<GuestKernel> {
        self.installed()?.pop().ok_or_else(|| Error::NoKernel {
            store: self.root.clone(),
        })
    }

    /// The kernel pinned in the first of `opts.deb_dirs` that holds a pin (unpacked from the
    /// cached `.deb`, whose sha256 must match, if the store lacks it; never downloads); else
    /// makes sure the package's current version is in the store (fetching and unpacking it
    /// if needed) and returns it.
    pub fn ensure(&self, opts: &FetchOptions) -> Result<GuestKernel> {
        if opts.package.is_none() {
            for dir in &opts.deb_dirs {
                if let Some(pin) = KernelPin::read(dir)? {
                    return self.open_pinned(&pin, dir);
                }
            }
        }
        let meta = opts.package.as_deref().unwrap_or(DEFAULT_PACKAGE);
        let package = resolve_package(meta)?;
        let version = candidate_version(&package)?;
        let dir = self.root.join(entry_name(&package, &version));
        if dir.join("manifest.json").is_file() {
            return GuestKernel::open(&dir);
        }
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io("create", &self.root, e))?;
        let dl = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&self.root)
            .map_err(|e| Error::io("create temp dir in", &self.root, e))?;
        let deb = match self.find_cached_deb(&opts.deb_dirs, &package, &version)? {
            Some(d) => d,
            None => {
                tracing::info!(%package, %version, "downloading the guest kernel package");
                run(
                    Command::new("apt-get")
                        .args(["download", "-q"])
                        .arg(format!("{package}={version}"))
                        .current_dir(dl.path()),
                    APT_FIX,
                )?;
                self.find_cached_deb(&[dl.path().to_path_buf()], &package, &version)?
                    .ok_or_else(|| Error::Tool {
                        tool: format!("apt-get download {package}={version}"),
                        detail: "no .deb appeared".into(),
                        fix: APT_FIX,
                    })?
            }
        };
        self.add_deb(&deb)
    }

    /// The store entry of `pin`, unpacked from its `.deb` in `dir` when missing.
    fn open_pinned(&self, pin: &KernelPin, dir: &Path) -> Result<GuestKernel> {
        let entry = self.root.join(entry_name(&pin.package, &pin.version));
        if entry.join("manifest.json").is_file() {
            let k = GuestKernel::open(&entry)?;
            if k.manifest.deb_sha256 == pin.deb_sha256 {
                return Ok(k);
            }
        }
        let deb = self
            .find_cached_deb(&[dir.to_path_buf()], &pin.package, &pin.version)?
            .ok_or_else(|| Error::BadStoreEntry {
                path: dir.join(PIN_FILE),
                reason: format!(
                    "the pinned kernel {} {} is not in {}; run scripts/setup.sh",
                    pin.package,
                    pin.version,
                    dir.display()
                ),
            })?;
        let sha = sha256_file(&deb)?;
        if sha != pin.deb_sha256 {
            return Err(Error::BadStoreEntry {
                path: deb,
                reason: format!(
                    "sha256 {sha} differs from the pinned {}; delete it and run scripts/setup.sh",
                    pin.deb_sha256
                ),
            });
        }
        self.add_deb(&deb)
    }

    /// For setup: make sure a pinned kernel and its `.deb` are in `deb_dir` and the store.
    /// An existing pin whose `.deb` is cached is kept as it is (no network); one whose `.deb`
    /// is missing is downloaded at exactly its version; if Debian no longer has that version,
    /// the current one is taken, a warning says so, and the pin is rewritten. Returns the
    /// kernel and what happened to the pin.
    pub fn refresh_pin(
        &self,
        deb_dir: &Path,
        package: Option<&str>,
    ) -> Result<(GuestKernel, PinChange)> {
        std::fs::create_dir_all(deb_dir).map_err(|e| Error::io("create", deb_dir, e))?;
        if let Some(pin) = KernelPin::read(deb_dir)? {
            let cached =
                self.find_cached_deb(&[deb_dir.to_path_buf()], &pin.package, &pin.version)?;
            if cached.is_none() {
                if let Err(e) = download_deb(&pin.package, &pin.version, deb_dir) {
                    tracing::warn!(
                        "the recorded guest kernel {} {} cannot be downloaded ({e}); taking the current version",
                        pin.package,
                        pin.version
                    );
                    let k = self.pin_current(deb_dir, package)?;
                    return Ok((
                        k,
                        PinChange::Replaced {
                            old: pin,
                            why: e.to_string(),
                        },
                    ));
                }
            }
            return self
                .open_pinned(&pin, deb_dir)
                .map(|k| (k, PinChange::Kept));
        }
        self.pin_current(deb_dir, package)
            .map(|k| (k, PinChange::New))
    }

    fn pin_current(&self, deb_dir: &Path, package: Option<&str>) -> Result<GuestKernel> {
        let package = resolve_package(package.unwrap_or(DEFAULT_PACKAGE))?;
        let version = candidate_version(&package)?;
        let deb = match self.find_cached_deb(&[deb_dir.to_path_buf()], &package, &version)? {
            Some(d) => d,
            None => download_deb(&package, &version, deb_dir)?,
        };
        let kernel = self.add_deb(&deb)?;
        KernelPin {
            package: kernel.manifest.package.clone(),
            version: kernel.manifest.version.clone(),
            deb_sha256: sha256_file(&deb)?,
        }
        .write(deb_dir)?;
        Ok(kernel)
    }

    fn find_cached_deb(
        &self,
        dirs: &[PathBuf],
        package: &str,
        version: &str,
    ) -> Result<Option<PathBuf>> {
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{package}_"))
                    && name.ends_with(".deb")
                    && deb_field(&p, "Version")? == version
                {
                    return Ok(Some(p));
                }
            }
        }
        Ok(None)
    }

    /// Unpacks a local kernel `.deb` into the store (no apt involved) and returns the entry.
    pub fn add_deb(&self, deb: &Path) -> Result<GuestKernel> {
        let package = deb_field(deb, "Package")?;
        let version = deb_field(deb, "Version")?;
        let dir = self.root.join(entry_name(&package, &version));
        if dir.join("manifest.json").is_file() {
            return GuestKernel::open(&dir);
        }
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io("create", &self.root, e))?;
        let deb_sha256 = sha256_file(deb)?;
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.root)
            .map_err(|e| Error::io("create temp dir in", &self.root, e))?;
        tracing::info!(deb = %deb.display(), "unpacking the guest kernel package");
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(tmp.path()),
            DPKG_FIX,
        )?;
        let mods = tmp.path().join("lib/modules");
        let release = std::fs::read_dir(&mods)
            .map_err(|e| Error::io("list", &mods, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .ok_or_else(|| Error::BadStoreEntry {
                path: deb.to_path_buf(),
                reason: "package has no lib/modules/<release>".into(),
            })?;
        let bz = tmp.path().join(format!("boot/vmlinuz-{release}"));
        let vmlinux = crate::bzimage::extract_vmlinux(&bz)?;
        let vpath = tmp.path().join("vmlinux");
        std::fs::write(&vpath, vmlinux).map_err(|e| Error::io("write", &vpath, e))?;
        let manifest = KernelManifest {
            package,
            version,
            deb_sha256,
            release,
        };
        let mpath = tmp.path().join("manifest.json");
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
        std::fs::write(&mpath, json).map_err(|e| Error::io("write", &mpath, e))?;
        let staged = tmp.keep();
        if let Err(e) = std::fs::rename(&staged, &dir) {
            let _ = std::fs::remove_dir_all(&staged);
            // Another process may have finished the same entry first.
            if dir.join("manifest.json").is_file() {
                return GuestKernel::open(&dir);
            }
            return Err(Error::io("rename into place", &dir, e));
        }
        tracing::info!(dir = %dir.display(), sha256 = %manifest.deb_sha256, "guest kernel stored");
        GuestKernel::open(&dir)
    }
}
