//! Writing one blob: temp file → hash while writing → verify → fsync → rename.

use std::io::{self, Write};
use std::path::Path;

use crate::digest::{Digest, HashingWriter};
use crate::error::{IoContext, OciError, Result};

use super::Store;

/// Streams content into a temp file in the store, hashing as it goes. Nothing appears under
/// `blobs/` unless [`BlobWriter::commit`] verifies the content; dropping it discards the temp.
pub struct BlobWriter<'s> {
    store: &'s Store,
    inner: HashingWriter<io::BufWriter<tempfile::NamedTempFile>>,
}

impl<'s> BlobWriter<'s> {
    pub(super) fn new(store: &'s Store) -> Result<Self> {
        let temp = store.temp_file()?;
        Ok(BlobWriter {
            store,
            inner: HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, temp)),
        })
    }

    /// The temp file being written (for error messages).
    pub fn temp_path(&self) -> &Path {
        self.inner.get_ref().get_ref().path()
    }

    /// Finishes writing without committing: the content stays in a temp file until
    /// [`PendingBlob::commit`] (used when which blobs are wanted is known only later).
    pub fn finish(self) -> Result<PendingBlob<'s>> {
        let (buf, digest, size) = self.inner.finish();
        let temp = buf
            .into_inner()
            .map_err(|e| OciError::io("blob temp file", e.into_error()))?;
        Ok(PendingBlob {
            store: self.store,
            temp,
            digest,
            size,
        })
    }

    /// Verifies digest and size (when given), then moves the blob into place.
    /// Returns the content's digest and size.
    pub fn commit(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        self.finish()?.commit(expected, expected_size)
    }
}

/// Content written and hashed, waiting in a temp file; dropped = discarded.
pub struct PendingBlob<'s> {
    store: &'s Store,
    temp: tempfile::NamedTempFile,
    digest: Digest,
    size: u64,
}

impl PendingBlob<'_> {
    /// The content's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The content's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies digest and size (when given), then moves the blob into place.
    pub fn commit(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        let PendingBlob {
            store,
            temp,
            digest,
            size,
        } = self;
        if let Some(expected) = expected {
            if &digest != expected {
                return Err(OciError::DigestMismatch {
                    what: format!("blob {expected}"),
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        if let Some(expected_size) = expected_size {
            if size != expected_size {
                return Err(OciError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: expected_size,
                    actual: size,
                });
            }
        }
        let dest = store.blob_path(&digest);
        if dest.is_file() {
            // Same content by construction; another writer won the race.
            return Ok((digest, size));
        }
        temp.as_file().sync_all().at(temp.path())?;
        let temp_path = temp.into_temp_path();
        Store::durable_rename(&temp_path, &dest)?;
        // The rename moved the file; keep TempPath from deleting the new name's old path.
        let _ = temp_path.keep();
        Ok((digest, size))
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
