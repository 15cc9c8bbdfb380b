//! The private per-run directory (mode 0700): VMM config, boot data, the
//! vsock socket. Removed when dropped, whatever happened.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use crate::ownerlock::{sweep_stale, OwnerLock};

/// Where voidbox keeps its state: `$VOIDBOX_HOME`, default `~/.cache/voidbox`
/// (one definition, shared with the kernel store).
pub fn voidbox_home() -> PathBuf {
    voidbox_guest_image::kernel::voidbox_home()
}

/// A run directory; deleted on drop. While it exists its owner lock is held,
/// so a later voidbox removes it if this process dies without cleaning up.
#[derive(Debug)]
pub struct RunDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    _lock: OwnerLock,
}

impl RunDir {
    /// Creates `<home>/run/<name>-XXXXXX` with mode 0700, first removing the
    /// run directories of voidbox processes that died.
    pub fn create(home: &Path, name: &str) -> Result<Self> {
        let parent = home.join("run");
        fs::create_dir_all(&parent)
            .map_err(|e| Error::host(format!("cannot create {}", parent.display()), e))?;
        sweep_stale(&parent, "");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&parent)
            .map_err(|e| {
                Error::host(
                    format!("cannot create a run directory in {}", parent.display()),
                    e,
                )
            })?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::host("cannot make the run directory private", e))?;
        let lock = OwnerLock::take(dir.path())
            .map_err(|e| Error::host("cannot lock the run directory", e))?;
        let path = dir.path().to_path_buf();
        Ok(RunDir {
            dir: Some(dir),
            path,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes it now, reporting failures (drop ignores them).
    pub fn remove(mut self) -> Result<()> {
        if let Some(dir) = self.dir.take() {
            dir.close()
                .map_err(|e| Error::host(format!("cannot remove {}", self.path.display()), e))?;
        }
        Ok(())
    }
}

/// Console logs live outside the run directory so that a boot error can
/// point at one after the run directory is gone: `<home>/logs/NAME-TIME.console.log`.
/// Only the newest [`KEEP_LOGS`] are kept.
pub fn console_log_path(home: &Path, name: &str) -> Result<PathBuf> {
    let dir = home.join("logs");
    fs::create_dir_all(&dir)
        .map_err(|e| Error::host(format!("cannot create {}", dir.display()), e))?;
    prune_logs(&dir);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(dir.join(format!(
        "{name}-{}-{:09}-{}.console.log",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )))
}

/// How many console logs to keep.
pub const KEEP_LOGS: usize = 20;

fn prune_logs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".console.log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if logs.len() < KEEP_LOGS {
        return;
    }
    logs.sort();
    for (_, path) in &logs[..logs.len() + 1 - KEEP_LOGS] {
        let _ = fs::remove_file(path);
    }
}

/// The last `n` lines of a console log (for boot errors), read from its end only.
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    crate::logtail::tail_lines(path, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_is_private_and_removed() {
        let home = tempfile::tempdir().unwrap();
        let rd = RunDir::create(home.path(), "t").unwrap();
        let mode = fs::metadata(rd.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let p = rd.path().to_path_buf();
        fs::write(p.join("x"), b"1").unwrap();
        drop(rd);
        assert!(!p.exists());
        let rd = RunDir::create(home.path(), "t").unwrap();
        let p = rd.path().to_path_buf();
        rd.remove().unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn logs_are_pruned_and_tailed() {
        let home = tempfile::tempdir().unwrap();
        for i in 0..KEEP_LOGS + 5 {
            let p = console_log_path(home.path(), "n").unwrap();
            fs::write(&p, format!("line a\n\nline {i}\n")).unwrap();
        }
        let count = fs::read_dir(home.path().join("logs")).unwrap().count();
        assert!(count <= KEEP_LOGS, "{count}");
        let p = console_log_path(home.path(), "n").unwrap();
        fs::write(&p, "1\n2\n3\n").unwrap();
        assert_eq!(log_tail(&p, 2), ["2", "3"]);
    }
}
