//! The local content-addressed store at `$VOIDBOX_HOME` (default `~/.cache/voidbox`).
//!
//! Layout:
//! - `blobs/sha256/<hex>`: verified blobs (manifests, configs, layers);
//! - `refs/<escaped name>.json`: ref → manifest digest records ([`RefRecord`]);
//! - `disks/<manifest hex>-b<builder version>.ext4`: derived rootfs/skill disks;
//! - `tmp/<session>/`: one process's temp files; the process holds a lock on the directory;
//! - `store.lock`: shared by pulls, exclusive for `prune`/`rm`; `locks/<hex>.lock`: one disk build at a time.
//!
//! Everything is written to a temp file in the session directory, verified, fsynced and
//! renamed into place, so a killed process leaves only its session directory behind; the
//! next process that opens the store removes sessions whose lock nobody holds.

mod blob;
mod gc;
mod lock;
mod refs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

pub use blob::{BlobWriter, PendingBlob};
pub use gc::{PruneReport, StoreProblem, PRUNE_GRACE};
pub use lock::FileLock;
pub use refs::RefRecord;

use crate::digest::Digest;
use crate::error::{IoContext, OciError, Result};
use crate::manifest::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};

/// A handle on the store directory. Cheap to open; several handles (threads or processes)
/// may use one directory at once.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    session: OnceLock<Session>,
    session_init: Mutex<()>,
}

#[derive(Debug)]
struct Session {
    dir: PathBuf,
    /// flock on the directory itself: held while the process lives.
    _lock: FileLock,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prefix of session directories still being set up (not yet locked and published).
const SESSION_INIT_PREFIX: &str = ".init-";
/// Unpublished session directories older than this are debris of a crash during setup.
const SESSION_INIT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

static SESSION_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes temp files left by dead
    /// processes.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["blobs/sha256", "refs", "disks", "tmp", "locks"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).at(&dir)?;
        }
        let store = Store {
            root,
            session: OnceLock::new(),
            session_init: Mutex::new(()),
        };
        store.remove_dead_sessions()?;
        Ok(store)
    }

    /// Opens the store at `$VOIDBOX_HOME`, or `~/.cache/voidbox`.
    pub fn open_default() -> Result<Self> {
        Self::open(Self::default_root()?)
    }

    /// `$VOIDBOX_HOME`, else `$XDG_CACHE_HOME/voidbox`, else `$HOME/.cache/voidbox`.
    pub fn default_root() -> Result<PathBuf> {
        if let Some(home) = std::env::var_os("VOIDBOX_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(home));
        }
        if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(cache).join("voidbox"));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Ok(PathBuf::from(home).join(".cache/voidbox")),
            None => Err(OciError::io(
                "$HOME",
                std::io::Error::other("neither VOIDBOX_HOME nor HOME is set; set VOIDBOX_HOME"),
            )),
        }
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a whole small blob (a manifest, index or config) and checks its digest.
    /// Blobs past [`MAX_CONFIG_BYTES`] are refused; see [`Store::read_blob_capped`].
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.read_blob_capped(digest, MAX_CONFIG_BYTES)
    }

    /// Reads a manifest or index blob (at most [`MAX_MANIFEST_BYTES`]) and checks its digest.
    pub fn read_manifest(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.read_blob_capped(digest, MAX_MANIFEST_BYTES)
    }

    /// Reads a whole blob of at most `cap` bytes and checks its digest; a larger blob is
    /// refused without reading it into memory.
    pub fn read_blob_capped(&self, digest: &Digest, cap: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let file = std::fs::File::open(&path).at(&path)?;
        let mut data = Vec::new();
        // Reading one byte past the cap tells "exactly cap" from "more".
        std::io::Read::read_to_end(&mut std::io::Read::take(file, cap + 1), &mut data).at(&path)?;
        if data.len() as u64 > cap {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(cap + 1);
            return Err(OciError::DocumentTooLarge {
                what: format!("blob {digest}"),
                size,
                cap,
            });
        }
        digest.verify(&path.display().to_string(), &data)?;
        Ok(data)
    }

    /// Stores `data`, checking it against `expected` when given; returns its digest.
    pub fn put_blob_bytes(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let digest = Digest::of(data);
        if let Some(expected) = expected {
            expected.verify("blob", data)?;
        }
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut writer = self.blob_writer()?;
        std::io::Write::write_all(&mut writer, data).at(writer.temp_path())?;
        writer.commit(Some(&digest), Some(data.len() as u64))?;
        Ok(digest)
    }

    /// Copies the file at `path` into the store; returns its digest and size.
    pub fn put_blob_file(&self, path: &Path) -> Result<(Digest, u64)> {
        let mut src = std::fs::File::open(path).at(path)?;
        let mut writer = self.blob_writer()?;
        std::io::copy(&mut src, &mut writer).at(path)?;
        writer.commit(None, None)
    }

    /// A writer whose content becomes a blob on [`BlobWriter::commit`].
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>> {
        BlobWriter::new(self)
    }

    /// A fresh temp file in this process's session directory (deleted when dropped).
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        let dir = self.session_dir()?;
        tempfile::NamedTempFile::new_in(dir).at(dir)
    }

    /// A fresh temp directory in this process's session directory (deleted when dropped).
    pub fn temp_dir(&self) -> Result<tempfile::TempDir> {
        let dir = self.session_dir()?;
        tempfile::TempDir::new_in(dir).at(dir)
    }

    /// Shared lock held while an image is being pulled or used; `prune`/`rm` take it exclusive.
    pub fn lock_shared(&self) -> Result<FileLock> {
        FileLock::shared(&self.root.join("store.lock"))
    }

    /// Exclusive store lock for garbage collection.
    pub fn lock_exclusive(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.root.join("store.lock"))
    }

    /// Exclusive lock on one named derived artifact (e.g. a disk build).
    pub fn lock_artifact(&self, name: &str) -> Result<FileLock> {
        FileLock::exclusive(&self.root.join("locks").join(format!("{name}.lock")))
    }

    /// Renames `from` to `to` and makes the rename durable.
    pub(crate) fn durable_rename(from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to).at(to)?;
        if let Some(parent) = to.parent() {
            if let Ok(dir) = std::fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    fn session_dir(&self) -> Result<&Path> {
        if let Some(s) = self.session.get() {
            return Ok(&s.dir);
        }
        let _guard = self.session_init.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = self.session.get() {
            return Ok(&s.dir);
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}-{}-{}",
            std::process::id(),
            nanos,
            SESSION_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = self.root.join("tmp");
        // Create and lock under a hidden name, then publish by rename: a cleaner never
        // sees a published directory that is not locked by its live owner.
        let init = tmp.join(format!("{SESSION_INIT_PREFIX}{name}"));
        std::fs::create_dir(&init).at(&init)?;
        let lock = match FileLock::try_exclusive_dir(&init)? {
            Some(lock) => lock,
            None => {
                return Err(OciError::io(
                    &init,
                    std::io::Error::other("fresh session directory is locked by someone else"),
                ))
            }
        };
        let dir = tmp.join(&name);
        std::fs::rename(&init, &dir).at(&dir)?;
        let session = Session { dir, _lock: lock };
        let _ = self.session.set(session);
        Ok(&self.session.get().expect("session just set").dir)
    }

    /// Removes session directories of processes that are gone (their lock is free).
    fn remove_dead_sessions(&self) -> Result<()> {
        let tmp = self.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).at(&tmp)? {
            let entry = entry.at(&tmp)?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(SESSION_INIT_PREFIX) {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > SESSION_INIT_MAX_AGE);
                if stale {
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            if !path.is_dir() {
                // Not ours (older layouts kept lock files here).
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match FileLock::try_exclusive_dir(&path) {
                Ok(Some(_held)) => {
                    tracing::info!(dir = %path.display(), "removing temp files of a dead voidbox process");
                    std::fs::remove_dir_all(&path).at(&path)?;
                }
                Ok(None) => {}
                // Removed by its owner or another cleaner meanwhile.
                Err(OciError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn sessions_survive_other_openers_and_vanish_when_dropped() {
        let root = tempfile::tempdir().unwrap();
        let a = Store::open(root.path()).unwrap();
        let _temp = a.temp_file().unwrap();
        let tmp = root.path().join("tmp");
        assert_eq!(entries(&tmp), 1);
        // Another opener (cleaner) must leave a live session alone.
        let b = Store::open(root.path()).unwrap();
        assert_eq!(entries(&tmp), 1);
        assert!(a.temp_file().is_ok());
        drop(_temp);
        drop(a);
        assert_eq!(entries(&tmp), 0);
        // A dead session (directory nobody locks) is removed by the next opener.
        std::fs::create_dir(tmp.join("123-dead")).unwrap();
        std::fs::write(tmp.join("123-dead/partial"), b"half").unwrap();
        drop(b);
        let _c = Store::open(root.path()).unwrap();
        assert_eq!(entries(&tmp), 0);
    }

    #[test]
    fn blobs_are_verified_on_the_way_in_and_out() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let wrong = Digest::of(b"other");
        assert!(store.put_blob_bytes(b"data", Some(&wrong)).is_err());
        assert!(!store.has_blob(&wrong));
        let d = store.put_blob_bytes(b"data", None).unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), b"data");
        std::fs::write(store.blob_path(&d), b"evil").unwrap();
        assert!(store.read_blob(&d).is_err());
        assert_eq!(store.check().unwrap().len(), 1);
    }

    #[test]
    fn small_blob_reads_are_capped() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let exact = store.put_blob_bytes(b"12345678", None).unwrap();
        assert_eq!(store.read_blob_capped(&exact, 8).unwrap(), b"12345678");
        match store.read_blob_capped(&exact, 7) {
            Err(OciError::DocumentTooLarge {
                size: 8, cap: 7, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let big = store
            .put_blob_bytes(&vec![b' '; MAX_MANIFEST_BYTES as usize + 1], None)
            .unwrap();
        assert!(matches!(
            store.read_manifest(&big),
            Err(OciError::DocumentTooLarge { .. })
        ));
        assert!(store.read_blob(&big).is_ok(), "configs may be larger");
    }
}
