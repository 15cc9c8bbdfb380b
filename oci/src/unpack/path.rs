//! Normalising tar entry paths into safe relative paths.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Turns a tar path into a relative path without `.`/empty components.
/// Rejects absolute paths, `..` anywhere, and characters our ext4 writer cannot carry.
/// The root itself is the empty path.
pub fn normalize(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    if raw.contains(&0) {
        return Err("NUL byte in path".into());
    }
    if raw.contains(&b'\n') || raw.contains(&b'\r') {
        return Err("newline in path (not representable by the ext4 writer)".into());
    }
    let mut out = PathBuf::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err("path contains '..'".into()),
            c => {
                if c.len() > 255 {
                    return Err("path component longer than 255 bytes".into());
                }
                out.push(OsStr::from_bytes(c));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_rejects() {
        assert_eq!(normalize(b"./a//b/./c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(normalize(b"./").unwrap(), PathBuf::new());
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"..").is_err());
        assert!(normalize(b"a\nb").is_err());
        assert!(normalize(&[b'a'; 300]).is_err());
    }
}
