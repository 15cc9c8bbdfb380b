//! `JailSpec`: what the jailed VMM may see and use, derived in one place
//! ([`JailSpec::for_vm`]) from its `VmConfig`. The runtime writes it as
//! `jail.json` next to `vm.json`; `voidbox vmm-jail --spec` reads it.
//!
//! Every path is exposed at the *same absolute path* inside the jail, so
//! `vm.json` stays valid unchanged.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use voidbox_vmm::{SerialOutput, VmConfig};

use super::error::{JailError, Result};

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Memory the VMM process needs beyond guest RAM (its binary, thread stacks,
/// virtio and vsock buffers, page cache of the disks it reads), in MiB.
pub const VMM_OVERHEAD_MIB: u64 = 128;
/// Tasks the VMM may have beyond one thread per vCPU (main, device workers,
/// vsock, the serial and parent watchers), with headroom.
pub const VMM_BASE_TASKS: u64 = 32;
/// File descriptors the VMM may hold beyond its per-vCPU and per-disk ones:
/// KVM and VM fds, event fds, 64 vsock connections plus listeners, logs.
pub const VMM_BASE_FDS: u64 = 256;
/// Largest file the VMM may write besides writable disks: the console log
/// (cut at 16 MiB by the VMM) and its own stderr (cut at 4 MiB), with headroom.
pub const LOG_FSIZE_BYTES: u64 = 64 << 20;

/// How a path is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read-only bind (`ro,nosuid,nodev,noexec`).
    ReadOnly,
    /// Read-write bind (`nosuid,nodev,noexec`).
    ReadWrite,
    /// A character device (bind of the node, `nosuid,noexec`).
    Device,
}

/// What the jailer creates on the host before exposing a missing path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Create {
    /// An empty file (mode 0600), e.g. the console log.
    File,
    /// A directory (mode 0700), e.g. the vsock socket's directory.
    Dir,
}

/// One host path visible inside the jail at the same absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Absolute host path (file, directory or device).
    pub path: PathBuf,
    /// How it is exposed.
    pub access: Access,
    /// Create it first when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<Create>,
}

/// Resource limits of the jailed VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// cgroup v2 `memory.max` in MiB (guest RAM + [`VMM_OVERHEAD_MIB`]).
    pub memory_max_mib: Option<u64>,
    /// cgroup v2 `pids.max` (vCPUs + [`VMM_BASE_TASKS`]); also RLIMIT_NPROC
    /// when the jail runs as its own uid.
    pub pids_max: Option<u64>,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE in bytes: the largest writable disk or
    /// [`LOG_FSIZE_BYTES`], whichever is larger.
    pub fsize_bytes: u64,
}

/// An unprivileged identity for the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailUser {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
}

/// Everything the jailer needs besides the VMM command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSpec {
    /// What the VMM sees (plus its own binary and shared libraries, which
    /// the jailer adds read-only from the command it runs).
    pub mounts: Vec<Mount>,
    /// Resource limits.
    pub limits: Limits,
    /// Run the VMM as this uid/gid instead of root without capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<JailUser>,
}

impl JailSpec {
    /// The jail of one VM: `/dev/kvm`, the kernel and initrds read-only,
    /// the disks (read-write only where the disk is), the run directory
    /// (read-write: the vsock socket and its `_PORT` siblings live there) with
    /// `config` read-only on top, the vsock socket's directory when it is
    /// elsewhere (created if missing) and the serial file (created if missing).
    pub fn for_vm(cfg: &VmConfig, run_dir: &Path, config: &Path) -> JailSpec {
        // One entry per path; on a duplicate the later, more specific, role wins.
        let mut mounts: BTreeMap<PathBuf, Mount> = BTreeMap::new();
        let mut add = |path: &Path, access: Access, create: Option<Create>| {
            mounts.insert(
                path.to_path_buf(),
                Mount {
                    path: path.to_path_buf(),
                    access,
                    create,
                },
            );
        };
        add(Path::new(KVM_DEVICE), Access::Device, None);
        add(run_dir, Access::ReadWrite, None);
        if let Some(vsock) = &cfg.vsock {
            if let Some(dir) = vsock.uds_path.parent().filter(|d| *d != run_dir) {
                add(dir, Access::ReadWrite, Some(Create::Dir));
            }
        }
        if let SerialOutput::File(f) = &cfg.serial {
            add(f, Access::ReadWrite, Some(Create::File));
        }
        add(config, Access::ReadOnly, None);
        add(&cfg.kernel, Access::ReadOnly, None);
        for initrd in &cfg.initrds {
            add(initrd, Access::ReadOnly, None);
        }
        let mut largest_rw_disk = 0;
        for disk in &cfg.disks {
            if disk.read_only {
                add(&disk.path, Access::ReadOnly, None);
            } else {
                add(&disk.path, Access::ReadWrite, None);
                let len = std::fs::metadata(&disk.path).map_or(0, |m| m.len());
                largest_rw_disk = largest_rw_disk.max(len);
            }
        }
        let mut mounts: Vec<Mount> = mounts.into_values().collect();
        sort_parents_first(&mut mounts);
        let vcpus = u64::from(cfg.vcpus);
        JailSpec {
            mounts,
            limits: Limits {
                memory_max_mib: Some(u64::from(cfg.mem_mib) + VMM_OVERHEAD_MIB),
                pids_max: Some(vcpus + VMM_BASE_TASKS),
                nofile: VMM_BASE_FDS + 4 * vcpus + 8 * cfg.disks.len() as u64,
                fsize_bytes: largest_rw_disk.max(LOG_FSIZE_BYTES),
            },
            user: None,
        }
    }

    /// Reads and checks a spec file.
    pub fn load(path: &Path) -> Result<JailSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| JailError::ReadSpec {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec: JailSpec =
            serde_json::from_str(&text).map_err(|source| JailError::ParseSpec {
                path: path.to_path_buf(),
                source,
            })?;
        spec.validate()?;
        sort_parents_first(&mut spec.mounts);
        Ok(spec)
    }

    /// Checks the paths (absolute, normal, not `/`, no duplicates) and limits.
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for m in &self.mounts {
            check_path(&m.path)?;
            if !seen.insert(&m.path) {
                return Err(JailError::path(&m.path, "listed twice: keep one entry"));
            }
            if m.access == Access::Device && m.create.is_some() {
                return Err(JailError::path(
                    &m.path,
                    "a device cannot be created by the jail: drop `create`",
                ));
            }
        }
        if self.limits.nofile < 16 {
            return Err(JailError::BadCommand(format!(
                "limits.nofile {} is too small for the VMM: use at least 16",
                self.limits.nofile
            )));
        }
        if let Some(u) = self.user {
            if u.uid == 0 || u.gid == 0 {
                return Err(JailError::BadCommand(
                    "`user` must be unprivileged (uid and gid not 0): leave it out to run as root without capabilities".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Mount order: a directory before what is mounted inside it.
fn sort_parents_first(mounts: &mut [Mount]) {
    mounts.sort_by(|a, b| {
        let depth = |p: &Path| p.components().count();
        depth(&a.path)
            .cmp(&depth(&b.path))
            .then_with(|| a.path.cmp(&b.path))
    });
}

fn check_path(p: &Path) -> Result<()> {
    if !p.is_absolute() {
        return Err(JailError::path(p, "not absolute: give the full path"));
    }
    if p.components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(JailError::path(
            p,
            "contains `.` or `..`: give the normalized path",
        ));
    }
    if p.parent().is_none() {
        return Err(JailError::path(p, "the whole host root cannot be exposed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use voidbox_vmm::{DiskConfig, VsockConfig};

    fn cfg() -> VmConfig {
        let mut c = VmConfig::new("/g/vmlinux");
        c.initrds = vec!["/g/base.cpio.gz".into(), "/h/run/x/boot.cpio".into()];
        c.mem_mib = 512;
        c.vcpus = 2;
        c.disks = vec![
            DiskConfig {
                path: "/store/root.ext4".into(),
                read_only: true,
                serial: None,
            },
            DiskConfig {
                path: "/nonexistent/scratch.img".into(),
                read_only: false,
                serial: None,
            },
        ];
        c.vsock = Some(VsockConfig {
            uds_path: "/h/run/x/vsock.sock".into(),
            guest_cid: 3,
        });
        c.serial = SerialOutput::File("/h/logs/x.console.log".into());
        c
    }

    fn find<'a>(s: &'a JailSpec, p: &str) -> &'a Mount {
        s.mounts
            .iter()
            .find(|m| m.path == Path::new(p))
            .unwrap_or_else(|| panic!("{p} not exposed: {:?}", s.mounts))
    }

    #[test]
    fn derives_every_path_the_vmm_needs_and_nothing_else() {
        let s = JailSpec::for_vm(&cfg(), Path::new("/h/run/x"), Path::new("/h/run/x/vm.json"));
        s.validate().unwrap();
        assert_eq!(find(&s, "/dev/kvm").access, Access::Device);
        assert_eq!(find(&s, "/h/run/x").access, Access::ReadWrite);
        assert_eq!(find(&s, "/h/run/x/vm.json").access, Access::ReadOnly);
        assert_eq!(find(&s, "/g/vmlinux").access, Access::ReadOnly);
        assert_eq!(find(&s, "/g/base.cpio.gz").access, Access::ReadOnly);
        assert_eq!(find(&s, "/h/run/x/boot.cpio").access, Access::ReadOnly);
        assert_eq!(find(&s, "/store/root.ext4").access, Access::ReadOnly);
        assert_eq!(
            find(&s, "/nonexistent/scratch.img").access,
            Access::ReadWrite
        );
        let log = find(&s, "/h/logs/x.console.log");
        assert_eq!(
            (log.access, log.create),
            (Access::ReadWrite, Some(Create::File))
        );
        // The socket's directory is the run dir: not listed twice.
        assert_eq!(s.mounts.len(), 9, "{:?}", s.mounts);
        // Parents before children.
        let pos = |p: &str| {
            s.mounts
                .iter()
                .position(|m| m.path == Path::new(p))
                .unwrap()
        };
        assert!(pos("/h/run/x") < pos("/h/run/x/boot.cpio"));
        assert_eq!(s.limits.memory_max_mib, Some(512 + VMM_OVERHEAD_MIB));
        assert_eq!(s.limits.pids_max, Some(2 + VMM_BASE_TASKS));
        assert_eq!(s.limits.fsize_bytes, LOG_FSIZE_BYTES);
        assert_eq!(s.limits.nofile, VMM_BASE_FDS + 8 + 16);
        assert_eq!(s.user, None);
    }

    #[test]
    fn socket_elsewhere_gets_its_own_created_directory() {
        let mut c = cfg();
        c.vsock.as_mut().unwrap().uds_path = "/run/x/vsock.sock".into();
        let s = JailSpec::for_vm(&c, Path::new("/h/run/x"), Path::new("/h/run/x/vm.json"));
        let d = find(&s, "/run/x");
        assert_eq!((d.access, d.create), (Access::ReadWrite, Some(Create::Dir)));
    }

    #[test]
    fn fsize_covers_the_largest_writable_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("rw.img");
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(LOG_FSIZE_BYTES * 3).unwrap();
        let mut c = cfg();
        c.disks[1].path = disk;
        let s = JailSpec::for_vm(&c, Path::new("/h/run/x"), Path::new("/h/run/x/vm.json"));
        assert_eq!(s.limits.fsize_bytes, LOG_FSIZE_BYTES * 3);
    }

    #[test]
    fn round_trips_and_rejects_bad_paths() {
        let s = JailSpec::for_vm(&cfg(), Path::new("/h/run/x"), Path::new("/h/run/x/vm.json"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<JailSpec>(&json).unwrap(), s);
        for bad in ["relative/x", "/a/../b", "/"] {
            let mut t = s.clone();
            t.mounts[0].path = bad.into();
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        let mut t = s.clone();
        t.mounts.push(t.mounts[1].clone());
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let mut t = s.clone();
        t.user = Some(JailUser { uid: 0, gid: 5 });
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unprivileged"));
    }
}
