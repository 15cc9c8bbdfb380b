//! sha256 digests: parsing, computing, and a hashing writer.

use std::fmt;
use std::io::{self, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{OciError, Result};

/// A validated `sha256:<64 lowercase hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`; other algorithms are rejected.
    pub fn parse(text: &str) -> Result<Self> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| OciError::InvalidDigest(text.to_string()))?;
        Self::from_hex(hex).map_err(|_| OciError::InvalidDigest(text.to_string()))
    }

    /// Builds a digest from its 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Self> {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(OciError::InvalidDigest(format!("sha256:{hex}")));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest {
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Fails with [`OciError::DigestMismatch`] unless `data` hashes to this digest.
    pub fn verify(&self, what: &str, data: &[u8]) -> Result<()> {
        let actual = Digest::of(data);
        if &actual != self {
            return Err(OciError::DigestMismatch {
                what: what.to_string(),
                expected: self.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts everything passed through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        let digest = Digest {
            hex: hex::encode(self.hasher.finalize()),
        };
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: io::Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
        }
    }

    /// Reads the rest to EOF, then returns the digest and byte count.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            Digest {
                hex: hex::encode(self.hasher.finalize()),
            },
            self.read,
        ))
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let d = Digest::of(b"hello");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:ABCD").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "G".repeat(64))).is_err());
    }

    #[test]
    fn verify_detects_mismatch() {
        let d = Digest::of(b"a");
        assert!(d.verify("x", b"a").is_ok());
        assert!(matches!(
            d.verify("x", b"b"),
            Err(OciError::DigestMismatch { .. })
        ));
    }
}
