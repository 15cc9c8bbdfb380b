//! Extracting the ELF `vmlinux` from a bzImage.
//!
//! Booting the ELF through its PVH entry skips the bzImage's self-decompressor, which costs
//! 3-7 s under nested TCG. The bzImage setup header (boot protocol >= 2.08) says where the
//! compressed payload is; Debian's 6.1 kernels use xz (CONFIG_KERNEL_XZ, with the x86 BCJ
//! filter, so a plain LZMA2 decoder is not enough: liblzma through `xz2` handles it).
//! The payload ends with a 4-byte little-endian uncompressed size, which is not part of the
//! xz stream.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadCompression {
    /// xz (Debian's choice).
    Xz,
    /// gzip.
    Gzip,
}

/// Where the compressed kernel sits inside a bzImage file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// File offset of the first compressed byte.
    pub offset: usize,
    /// Length of the compressed data (including the 4-byte size trailer).
    pub len: usize,
    /// Detected compression.
    pub compression: PayloadCompression,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadBzImage {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Finds the payload through the setup header. Every field is bounds-checked.
pub fn locate_payload(image: &[u8], path: &Path) -> Result<Payload> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad(path, "no `HdrS` setup header"));
    }
    let version = image
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| bad(path, "truncated setup header"))?;
    if version < 0x208 {
        return Err(bad(
            path,
            format!("boot protocol {version:#x} < 2.08 has no payload fields"),
        ));
    }
    let rd32 = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad(path, "truncated setup header"))
    };
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = (setup_sects + 1) * 512 + rd32(0x248)?;
    let len = rd32(0x24c)?;
    let data = offset
        .checked_add(len)
        .and_then(|end| image.get(offset..end))
        .ok_or_else(|| bad(path, "payload lies outside the file"))?;
    let compression = if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        PayloadCompression::Xz
    } else if data.starts_with(&[0x1f, 0x8b]) {
        PayloadCompression::Gzip
    } else {
        let magic: Vec<String> = data.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(bad(
            path,
            format!(
                "unsupported payload compression (magic {}); only xz and gzip are handled",
                magic.join(" ")
            ),
        ));
    };
    Ok(Payload {
        offset,
        len,
        compression,
    })
}

/// Decompresses the bzImage at `path` and returns the ELF vmlinux bytes.
pub fn extract_vmlinux(path: &Path) -> Result<Vec<u8>> {
    let image = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let p = locate_payload(&image, path)?;
    // Drop the 4-byte uncompressed-size trailer.
    let stream = &image[p.offset..p.offset + p.len.saturating_sub(4)];
    let mut out = Vec::new();
    let res = match p.compression {
        PayloadCompression::Xz => xz2::read::XzDecoder::new(stream).read_to_end(&mut out),
        PayloadCompression::Gzip => flate2::read::GzDecoder::new(stream).read_to_end(&mut out),
    };
    res.map_err(|e| {
        bad(
            path,
            format!("{:?} payload does not decompress: {e}", p.compression),
        )
    })?;
    if !out.starts_with(b"\x7fELF") {
        return Err(bad(path, "decompressed payload is not an ELF file"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_bzimage() {
        let p = Path::new("x");
        let mut short = vec![0u8; 0x206];
        short[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(locate_payload(&short, p).is_err());
        assert!(locate_payload(&[0u8; 100], p).is_err());
        let mut img = vec![0u8; 0x300];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206] = 0x0f;
        img[0x207] = 0x02;
        img[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&16u32.to_le_bytes());
        assert!(locate_payload(&img, p).is_err());
    }
}
