//! Advisory file locks (flock via fs4) shared between voidbox processes.

use std::fs::{File, OpenOptions};
use std::path::Path;

use fs4::fs_std::FileExt;

use crate::error::{IoContext, Result};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .at(path)
    }

    /// Blocks until `path` is locked exclusively.
    pub fn exclusive(path: &Path) -> Result<Self> {
        let file = Self::open(path)?;
        FileExt::lock_exclusive(&file).at(path)?;
        Ok(FileLock { file })
    }

    /// Blocks until `path` is locked shared.
    pub fn shared(path: &Path) -> Result<Self> {
        let file = Self::open(path)?;
        FileExt::lock_shared(&file).at(path)?;
        Ok(FileLock { file })
    }

    /// Locks `path` exclusively if nobody holds it; `None` otherwise.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>> {
        let file = Self::open(path)?;
        match FileExt::try_lock_exclusive(&file) {
            Ok(true) => Ok(Some(FileLock { file })),
            Ok(false) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(crate::error::OciError::io(path, e)),
        }
    }
}

impl FileLock {
    /// Locks the directory `dir` exclusively if nobody holds it; `None` otherwise.
    pub fn try_exclusive_dir(dir: &Path) -> Result<Option<Self>> {
        let file = File::open(dir).at(dir)?;
        match FileExt::try_lock_exclusive(&file) {
            Ok(true) => Ok(Some(FileLock { file })),
            Ok(false) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(crate::error::OciError::io(dir, e)),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}
