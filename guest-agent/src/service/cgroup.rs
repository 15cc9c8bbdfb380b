//! One cgroup v2 directory per exec: limits, membership, and `cgroup.kill`,
//! which ends every process in it (a `setsid` child cannot escape).

use crate::protocol::ExecLimits;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Cgroup setup failures.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// mkdir of the exec cgroup failed.
    #[error("cannot create cgroup {path}: {source} (is cgroup2 mounted and writable there?)")]
    Create {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A limit could not be written (typically the controller is not enabled).
    #[error("cannot set {file}={value} on cgroup {path}: {source} (is the controller enabled in the parent's cgroup.subtree_control?)")]
    Limit {
        /// Cgroup.
        path: PathBuf,
        /// Interface file.
        file: &'static str,
        /// Value written.
        value: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// `pids.max` of an exec when neither the request nor the boot data set one:
/// enough for parallel builds, low enough that a fork bomb stops there.
pub const DEFAULT_PIDS_MAX: u64 = 4096;
/// `memory.max` of an exec when neither the request nor the boot data set
/// one, in percent of the guest's `MemTotal`: the rest stays for the kernel,
/// the agent and tmpfs.
pub const DEFAULT_MEMORY_PERCENT: u64 = 80;

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// The built-in defaults ([`DEFAULT_PIDS_MAX`], [`DEFAULT_MEMORY_PERCENT`] of
/// `meminfo`'s `MemTotal`); no CPU default.
pub fn builtin_limits(meminfo: &str) -> ExecLimits {
    let total_kib = meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
    });
    ExecLimits {
        memory_bytes: total_kib.map(|k| k * 1024 / 100 * DEFAULT_MEMORY_PERCENT),
        pids: Some(DEFAULT_PIDS_MAX),
        cpu_millis: None,
    }
}

/// The first cgroup2 mount point in `/proc/self/mounts`.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// An exec's cgroup; removed (after killing what is left) on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    procs: File,
}

impl Cgroup {
    /// Creates `root/name` and applies `limits` (a failure is an error), then
    /// `fallback` where `limits` has no value (a failure is logged once: the
    /// controller may be missing, e.g. on a host with cgroup v1 controllers).
    pub fn create(
        root: &Path,
        name: &str,
        limits: &ExecLimits,
        fallback: &ExecLimits,
    ) -> Result<Self, CgroupError> {
        let path = root.join(name);
        std::fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        let procs = match OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
        {
            Ok(f) => f,
            Err(source) => {
                let _ = std::fs::remove_dir(&path);
                return Err(CgroupError::Create { path, source });
            }
        };
        let cg = Self { path, procs };
        if let Some(m) = limits.memory_bytes {
            cg.set("memory.max", m.to_string())?;
            // No swap in the guest, but be explicit where the file exists.
            let _ = std::fs::write(cg.path.join("memory.swap.max"), "0");
        }
        if let Some(p) = limits.pids {
            cg.set("pids.max", p.to_string())?;
        }
        if let Some(c) = limits.cpu_millis {
            cg.set("cpu.max", format!("{} 100000", (c * 100).max(1000)))?;
        }
        let defaults = [
            ("memory.max", limits.memory_bytes, fallback.memory_bytes),
            ("pids.max", limits.pids, fallback.pids),
        ];
        for (file, explicit, default) in defaults {
            if let (None, Some(v)) = (explicit, default) {
                if let Err(e) = cg.set(file, v.to_string()) {
                    if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!("default exec limit not applied: {e}");
                    }
                }
            }
        }
        Ok(cg)
    }

    fn set(&self, file: &'static str, value: String) -> Result<(), CgroupError> {
        std::fs::write(self.path.join(file), &value).map_err(|source| CgroupError::Limit {
            path: self.path.clone(),
            file,
            value,
            source,
        })
    }

    /// Fd of `cgroup.procs`; a child writes "0" to it to join before exec.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Kills every process in the cgroup.
    pub fn kill(&self) {
        if let Ok(mut f) = OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.kill"))
        {
            let _ = f.write_all(b"1");
        }
    }

    /// True while any process is in the cgroup.
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// Kills everything and waits up to `timeout` for the cgroup to empty.
    pub fn kill_and_wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.populated() {
                return true;
            }
            self.kill();
            if Instant::now() >= deadline {
                tracing::warn!("cgroup {} still populated after kill", self.path.display());
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_and_wait(Duration::from_secs(5));
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!("cannot remove cgroup {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_limits_cap_pids_and_memory() {
        let l = builtin_limits("MemTotal:        1024000 kB\nMemFree: 1 kB\n");
        assert_eq!(l.pids, Some(DEFAULT_PIDS_MAX));
        assert_eq!(l.memory_bytes, Some(1024000 * 1024 / 100 * 80));
        assert_eq!(l.cpu_millis, None);
        // No MemTotal: still a pids cap.
        assert_eq!(builtin_limits("").memory_bytes, None);
    }
}
