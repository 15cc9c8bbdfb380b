//! A reader between the decompressed layer and the `tar` crate that follows
//! the archive's 512-byte blocks the way `tar` does and stops extension
//! entries before `tar` sees them.
//!
//! `tar` reads a GNU long name (`L`), long link (`K`) or PAX header (`x`)
//! entry whole into memory, whatever size its header claims: a layer of a
//! few MB of gzip can claim gigabytes. This guard refuses any extension entry
//! (`L`, `K`, `x`, `g`) over [`MAX_EXTENSION_BYTES`] as soon as its header
//! arrives, and counts every byte that is not file content (headers, sparse
//! maps, extension data, padding) so the caller can hold them to the same cap
//! as content.
//!
//! It mirrors `tar::Archive::entries` (0.4): a zero block ends the archive; a
//! PAX `size` overrides the size of the next non-extension header; a GNU
//! sparse header may be followed by extension sparse blocks. When the guard
//! cannot parse a header, `tar` cannot either and fails on it, so the guard
//! then just passes bytes through.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tar::{EntryType, Header};

/// Largest extension entry (`L`, `K`, `x`, `g`) accepted.
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;

const BLOCK: usize = 512;

/// Why the guard stopped the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An extension entry larger than [`MAX_EXTENSION_BYTES`].
    Extension {
        /// The header's name field (e.g. `././@LongLink`).
        entry: String,
        /// Its type, as a letter.
        kind: char,
        /// Its claimed size.
        size: u64,
    },
    /// Non-content bytes pushed the layer over the size cap.
    Overhead {
        /// Name field of the header being read.
        entry: String,
    },
}

enum State {
    /// Collecting a header block.
    Header,
    /// Collecting GNU sparse extension blocks (`tar` reads them before the
    /// data); the data that follows them.
    SparseExt { content: u64, other: u64 },
    /// Inside an entry's data: `content` bytes of file content, then `other`
    /// bytes that are not content (extension data or padding).
    Data { content: u64, other: u64 },
    /// After the end-of-archive block, or once `tar` cannot parse a header.
    Passthrough,
}

/// See the module documentation.
pub struct HeaderGuard<R> {
    inner: R,
    state: State,
    block: [u8; BLOCK],
    have: usize,
    /// Data of the current `x` entry (without padding), kept to find its
    /// `size` record, and how much of it is still to come.
    capture: Option<(Vec<u8>, u64)>,
    /// The pending PAX header's `size`, for the next non-extension header.
    pax_size: Option<u64>,
    /// Non-content bytes seen, shared with the caller.
    overhead: Arc<AtomicU64>,
    /// Most non-content bytes allowed (counting `overhead`'s start value).
    overhead_cap: u64,
    last_name: String,
    violation: Option<Violation>,
}

impl<R: Read> HeaderGuard<R> {
    /// Guards `inner`; `overhead` accumulates non-content bytes and must stay
    /// at or below `overhead_cap`.
    pub fn new(inner: R, overhead: Arc<AtomicU64>, overhead_cap: u64) -> Self {
        Self {
            inner,
            state: State::Header,
            block: [0; BLOCK],
            have: 0,
            capture: None,
            pax_size: None,
            overhead,
            overhead_cap,
            last_name: String::new(),
            violation: None,
        }
    }

    /// What stopped the stream, if the guard did.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    fn fail(&mut self, v: Violation) -> io::Error {
        let msg = match &v {
            Violation::Extension { kind, size, .. } => format!(
                "tar extension entry `{kind}` of {size} bytes (limit {MAX_EXTENSION_BYTES})"
            ),
            Violation::Overhead { .. } => "tar headers and padding exceed the size cap".into(),
        };
        self.violation = Some(v);
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }

    fn count(&mut self, n: u64) -> io::Result<()> {
        let total = self.overhead.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.overhead_cap {
            let entry = self.last_name.clone();
            return Err(self.fail(Violation::Overhead { entry }));
        }
        Ok(())
    }

    /// A full header block arrived: decide what follows it.
    fn on_header(&mut self) -> io::Result<()> {
        if self.block.iter().all(|b| *b == 0) {
            // `tar` ends the archive here; what follows is not tar's business.
            self.state = State::Passthrough;
            return Ok(());
        }
        self.count(BLOCK as u64)?;
        let h = Header::from_byte_slice(&self.block);
        let ty = h.entry_type();
        self.last_name = String::from_utf8_lossy(&h.as_old().name)
            .trim_end_matches('\0')
            .to_string();
        let Ok(mut size) = h.entry_size() else {
            self.state = State::Passthrough;
            return Ok(());
        };
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let extension = ty.is_gnu_longname()
            || ty.is_gnu_longlink()
            || ty.is_pax_local_extensions()
            || ty.is_pax_global_extensions();
        if extension && size > MAX_EXTENSION_BYTES {
            let entry = self.last_name.clone();
            return Err(self.fail(Violation::Extension {
                entry,
                kind: ty.as_byte() as char,
                size,
            }));
        }
        if !extension {
            if let Some(pax) = self.pax_size {
                size = pax;
            }
        }
        // `tar` keeps collecting extensions only for recognized L, K and x;
        // any other header consumes the pending PAX data.
        let continues = recognized
            && (ty.is_gnu_longname() || ty.is_gnu_longlink() || ty.is_pax_local_extensions());
        if !continues {
            self.pax_size = None;
        }
        self.capture = (recognized && ty.is_pax_local_extensions())
            .then(|| (Vec::with_capacity(size as usize), size));
        let Some(padded) = size.div_ceil(BLOCK as u64).checked_mul(BLOCK as u64) else {
            self.state = State::Passthrough;
            return Ok(());
        };
        let content = if extension { 0 } else { size };
        let other = padded - content;
        self.state = if ty == EntryType::GNUSparse && h.as_gnu().is_some_and(|g| g.is_extended()) {
            State::SparseExt { content, other }
        } else {
            State::Data { content, other }
        };
        self.finish_data_if_empty();
        Ok(())
    }

    /// Back to headers once an entry's data is consumed; an `x` entry's
    /// data then gives the size of the next entry.
    fn finish_data_if_empty(&mut self) {
        if let State::Data {
            content: 0,
            other: 0,
        } = self.state
        {
            self.state = State::Header;
            if let Some((data, _)) = self.capture.take() {
                self.pax_size = pax_size(&data);
            }
        }
    }

    /// Reads into `buf` at most up to the end of the current block; returns
    /// the bytes read and whether the block is now complete.
    fn read_block_part(&mut self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        let want = (BLOCK - self.have).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        self.block[self.have..self.have + n].copy_from_slice(&buf[..n]);
        self.have += n;
        let complete = n > 0 && self.have == BLOCK;
        if complete {
            self.have = 0;
        }
        Ok((n, complete))
    }
}

/// Offset of `isextended` in a GNU extension sparse block (21 records of 24 bytes).
const EXT_SPARSE_IS_EXTENDED: usize = 21 * 24;

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.violation.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the layer was refused",
            ));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        match self.state {
            State::Passthrough => self.inner.read(buf),
            State::Header => {
                let (n, complete) = self.read_block_part(buf)?;
                if complete {
                    // An error here keeps the header from `tar`: it never sees
                    // a complete block for a refused entry.
                    self.on_header()?;
                }
                Ok(n)
            }
            State::SparseExt { content, other } => {
                let (n, complete) = self.read_block_part(buf)?;
                if complete {
                    self.count(BLOCK as u64)?;
                    if self.block[EXT_SPARSE_IS_EXTENDED] != 1 {
                        self.state = State::Data { content, other };
                        self.finish_data_if_empty();
                    }
                }
                Ok(n)
            }
            State::Data { content, other } => {
                let want = content.saturating_add(other).min(buf.len() as u64) as usize;
                let n = self.inner.read(&mut buf[..want])?;
                let c = (n as u64).min(content);
                let o = n as u64 - c;
                if let Some((data, left)) = &mut self.capture {
                    let take = (n as u64).min(*left) as usize;
                    data.extend_from_slice(&buf[..take]);
                    *left -= take as u64;
                }
                self.count(o)?;
                self.state = State::Data {
                    content: content - c,
                    other: other - o,
                };
                self.finish_data_if_empty();
                Ok(n)
            }
        }
    }
}

/// The `size` record of PAX data, as `tar` reads it (None if absent or bad).
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}
