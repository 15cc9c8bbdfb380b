//! Owner locks for the directories voidbox leaves while it runs (run
//! directories, lane directories): the owning process holds a `flock` on a
//! file inside for as long as it lives, so after a crash or a SIGKILL the next
//! voidbox can tell a stale directory (lock free) from a live one and remove it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The lock file inside an owned directory.
pub const LOCK_FILE: &str = ".owner.lock";
/// A directory without a lock file younger than this may still be being
/// set up by its owner; older ones are stale.
pub const UNLOCKED_GRACE: Duration = Duration::from_secs(60);

/// Held while the directory is in use; the lock ends with the process.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
}

impl OwnerLock {
    /// Create and lock `dir/.owner.lock` (the directory must be new and ours).
    pub fn take(dir: &Path) -> io::Result<OwnerLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        if !try_lock(&file)? {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", dir.display()),
            ));
        }
        Ok(OwnerLock { _file: file })
    }
}

/// Exclusive, non-blocking `flock`: Ok(false) when another process holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on an fd we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        return Ok(false);
    }
    Err(e)
}

/// Remove the directories in `parent` whose names start with `prefix` and whose
/// owner is gone. Returns how many were removed; failures are logged, not fatal.
pub fn sweep_stale(parent: &Path, prefix: &str) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(prefix) {
            continue;
        }
        let dir = entry.path();
        // Never follow a link planted in a shared parent such as /tmp.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // Holding the lock while removing keeps a racing sweeper out.
        let held = match File::open(dir.join(LOCK_FILE)) {
            Ok(f) => match try_lock(&f) {
                Ok(true) => Some(f),
                _ => continue,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                if age.is_none_or(|a| a < UNLOCKED_GRACE) {
                    continue;
                }
                None
            }
            Err(_) => continue,
        };
        match fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed a stale directory left by a voidbox that died");
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a stale directory")
            }
        }
        drop(held);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn live_directories_stay_and_dead_owners_are_swept() {
        let parent = tempfile::tempdir().unwrap();
        let live = parent.path().join("vb-live");
        fs::create_dir(&live).unwrap();
        let _lock = OwnerLock::take(&live).unwrap();
        // Locked by another process that then dies (SIGKILL: no cleanup). `exec sleep`
        // keeps one process: a forked sleep would inherit the fd and keep the lock.
        let dead = parent.path().join("vb-dead");
        fs::create_dir(&dead).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 9>{}/{LOCK_FILE}; flock -x 9; echo locked; exec sleep 60",
                dead.display()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "locked\n");
        assert_eq!(sweep_stale(parent.path(), "vb-"), 0, "owner alive");
        assert!(dead.exists());
        child.kill().unwrap();
        child.wait().unwrap();
        // A fresh directory without a lock may still be being set up.
        let fresh = parent.path().join("vb-fresh");
        fs::create_dir(&fresh).unwrap();
        let other = parent.path().join("other");
        fs::create_dir(&other).unwrap();
        assert_eq!(sweep_stale(parent.path(), "vb-"), 1);
        assert!(!dead.exists());
        assert!(live.exists() && fresh.exists() && other.exists());
    }
}
