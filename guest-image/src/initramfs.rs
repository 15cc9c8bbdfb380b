//! A deterministic cpio `newc` writer for Linux initramfs archives.
//!
//! Entries are kept sorted by path, so parents come before children and the same input
//! always gives the same bytes (inode numbers are assigned in order, owners are root,
//! mtimes are zero). The output is either plain `newc` (the runtime appends its boot data
//! as a second, uncompressed archive; the kernel unpacks concatenated archives) or gzip.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest file accepted in an archive (the newc size field is 32 bits).
const MAX_FILE_SIZE: usize = u32::MAX as usize;

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Output encoding of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain `newc` (what the kernel needs for an appended boot-data archive).
    None,
    /// gzip (Debian kernels have CONFIG_RD_GZIP built in).
    Gzip,
}

#[derive(Debug, Clone)]
enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    /// Permission bits only (file type comes from the node).
    perm: u32,
    node: Node,
}

/// An initramfs under construction.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

/// Turns `/a/./b/` into `a/b`; rejects empty paths and `..`.
fn normalize(path: &str) -> Result<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::BadEntry {
                    path: path.to_string(),
                    reason: "`..` is not allowed",
                })
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(Error::BadEntry {
            path: path.to_string(),
            reason: "empty path (the archive root exists implicitly)",
        });
    }
    Ok(parts.join("/"))
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (including implicit parent directories).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, path: &str, perm: u32, node: Node) -> Result<()> {
        let path = normalize(path)?;
        // Parent directories are created on demand (mode 0755) unless added explicitly.
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.entries.get(parent) {
                Some(Entry {
                    node: Node::Dir, ..
                }) => {}
                Some(_) => {
                    return Err(Error::BadEntry {
                        path,
                        reason: "a parent path is not a directory",
                    })
                }
                None => {
                    self.entries.insert(
                        parent.to_string(),
                        Entry {
                            perm: 0o755,
                            node: Node::Dir,
                        },
                    );
                }
            }
            end += pos + 1;
        }
        if let Some(existing) = self.entries.get(&path) {
            // Re-adding a directory only updates its mode; anything else is a mistake.
            if matches!((&existing.node, &node), (Node::Dir, Node::Dir)) {
                self.entries.insert(path, Entry { perm, node });
                return Ok(());
            }
            return Err(Error::BadEntry {
                path,
                reason: "added twice",
            });
        }
        self.entries.insert(path, Entry { perm, node });
        Ok(())
    }

    /// Adds a directory with permission bits `mode` (e.g. 0o755).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(path, mode & 0o7777, Node::Dir)
    }

    /// Adds a regular file with the given contents and permission bits.
    pub fn add_file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<()> {
        if data.len() > MAX_FILE_SIZE {
            return Err(Error::BadEntry {
                path: path.to_string(),
                reason: "file larger than 4 GiB",
            });
        }
        self.insert(path, mode & 0o7777, Node::File(data))
    }

    /// Adds a regular file read from `host`, keeping the given permission bits.
    pub fn add_file_from(&mut self, path: &str, mode: u32, host: &Path) -> Result<()> {
        let data = std::fs::read(host).map_err(|e| Error::io("read", host, e))?;
        self.add_file(path, mode, data)
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        if target.is_empty() {
            return Err(Error::BadEntry {
                path: path.to_string(),
                reason: "empty symlink target",
            });
        }
        self.insert(path, 0o777, Node::Symlink(target.to_string()))
    }

    /// Adds a character device node (only recorded in the archive; nothing is created on
    /// the host). `/dev/console` (5, 1) lets the kernel give PID 1 a console.
    pub fn add_char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(path, mode & 0o7777, Node::CharDev { major, minor })
    }

    /// Writes the archive as plain `newc` (with its trailer).
    pub fn write_newc<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (kind, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &entry.node {
                Node::Dir => (S_IFDIR, 2, &[], (0, 0)),
                Node::File(d) => (S_IFREG, 1, d, (0, 0)),
                Node::Symlink(t) => (S_IFLNK, 1, t.as_bytes(), (0, 0)),
                Node::CharDev { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
            };
            write_header(
                out,
                ino,
                kind | entry.perm,
                nlink,
                data.len() as u32,
                rdev,
                path,
            )?;
            out.write_all(data)?;
            pad4(out, data.len())?;
        }
        write_header(out, 0, 0, 1, 0, (0, 0), "TRAILER!!!")
    }

    /// The archive as plain `newc` bytes.
    pub fn to_newc(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_newc(&mut v)
            .expect("writing to a Vec cannot fail");
        v
    }

    /// The archive encoded as requested.
    pub fn encode(&self, compression: Compression) -> Vec<u8> {
        match compression {
            Compression::None => self.to_newc(),
            Compression::Gzip => {
                // Fixed header fields (no mtime, no name) keep gzip output deterministic.
                let mut enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::new(6));
                self.write_newc(&mut enc)
                    .expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
        }
    }

    /// Writes the archive to `dest` atomically (temp file in the same directory, then rename).
    pub fn write_to(&self, dest: &Path, compression: Compression) -> Result<()> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| Error::io("create temp file in", dir, e))?;
        tmp.write_all(&self.encode(compression))
            .map_err(|e| Error::io("write", tmp.path().to_path_buf(), e))?;
        tmp.persist(dest)
            .map_err(|e| Error::io("rename into place", dest, e.error))?;
        Ok(())
    }
}

fn write_header<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) -> std::io::Result<()> {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        maj = 0,
        min = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, header.len() + namesize)
}

fn pad4<W: Write>(out: &mut W, len: usize) -> std::io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_rejects_bad_paths() {
        assert_eq!(normalize("/a/./b/").unwrap(), "a/b");
        assert!(normalize("a/../b").is_err());
        assert!(normalize("/").is_err());
    }

    #[test]
    fn output_is_deterministic_and_sorted() {
        let mut a = Initramfs::new();
        a.add_file("bin/x", 0o755, b"hi".to_vec()).unwrap();
        a.add_symlink("bin/y", "x").unwrap();
        a.add_dir("etc", 0o700).unwrap();
        let mut b = Initramfs::new();
        b.add_dir("etc", 0o700).unwrap();
        b.add_symlink("bin/y", "x").unwrap();
        b.add_file("bin/x", 0o755, b"hi".to_vec()).unwrap();
        assert_eq!(a.to_newc(), b.to_newc());
        assert_eq!(a.encode(Compression::Gzip), b.encode(Compression::Gzip));
        assert_eq!(a.len(), 4); // bin (implicit), bin/x, bin/y, etc
    }

    #[test]
    fn duplicate_and_file_parent_rejected() {
        let mut a = Initramfs::new();
        a.add_file("f", 0o644, vec![]).unwrap();
        assert!(a.add_file("f", 0o644, vec![]).is_err());
        assert!(a.add_file("f/g", 0o644, vec![]).is_err());
        a.add_dir("d", 0o755).unwrap();
        a.add_dir("d", 0o700).unwrap();
    }

    #[test]
    fn header_layout_and_padding() {
        let mut a = Initramfs::new();
        a.add_file("abc", 0o600, b"12345".to_vec()).unwrap();
        let v = a.to_newc();
        assert_eq!(&v[..6], b"070701");
        // mode field: regular file 0600.
        assert_eq!(&v[14..22], format!("{:08x}", 0o100600).as_bytes());
        // header(110) + "abc\0" = 114 -> padded to 116; data 5 -> padded to 8.
        assert_eq!(&v[110..114], b"abc\0");
        assert_eq!(&v[116..121], b"12345");
        assert_eq!(v.len() % 4, 0);
        assert!(v.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    /// The system `cpio` tool reads our archive back (skipped with a note if cpio is absent).
    #[test]
    fn system_cpio_lists_archive() {
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("cpio not installed; skipping the cross-check");
            return;
        };
        assert!(out.status.success());
        let mut a = Initramfs::new();
        a.add_file("bin/tool", 0o755, vec![7u8; 1001]).unwrap();
        a.add_symlink("bin/link", "tool").unwrap();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let arch = dir.path().join("a.cpio");
        a.write_to(&arch, Compression::None).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&arch)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}");
        assert!(listing.contains("bin/link -> tool"), "{listing}");
        assert!(listing.contains("1001"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
    }
}
