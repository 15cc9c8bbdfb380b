//! Shared helpers for the OCI integration tests: a real local registry, hand-made tar
//! layers, and ext4 inspection with debugfs/e2fsck.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tar::EntryType;
use voidbox_oci::writer::{write_image, ImageSettings, LayerBlob, LayerWriter};
use voidbox_oci::{Digest, Store};

/// A `docker-registry` bound to 127.0.0.1 on a free port with a temp storage dir,
/// killed and reaped on drop (also when the test panics).
pub struct Registry {
    child: Option<Child>,
    pub addr: String,
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With `htpasswd = Some((user, password))` the registry requires basic auth.
    pub fn start_with(htpasswd: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = htpasswd {
            let hash = bcrypt::hash(password, 5).unwrap();
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: voidbox-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (apt-get install docker-registry)");
        let registry = Registry {
            child: Some(child),
            addr,
            storage,
            _dir: dir,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start on {}", self.addr);
    }

    /// Stops the registry now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The stored data file of a blob.
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A hand-made tar stream (any names, link names and types, no sanitising).
#[derive(Default)]
pub struct RawTar {
    pub data: Vec<u8>,
}

pub struct RawEntry<'a> {
    pub name: &'a [u8],
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link: &'a [u8],
    pub content: &'a [u8],
    pub xattrs: &'a [(&'a str, &'a [u8])],
    pub dev: (u32, u32),
}

impl Default for RawEntry<'_> {
    fn default() -> Self {
        RawEntry {
            name: b"",
            kind: tar::EntryType::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            link: b"",
            content: b"",
            xattrs: &[],
            dev: (0, 0),
        }
    }
}

fn pad(data: &mut Vec<u8>) {
    let rem = data.len() % 512;
    if rem != 0 {
        data.extend(std::iter::repeat_n(0u8, 512 - rem));
    }
}

impl RawTar {
    pub fn entry(&mut self, e: RawEntry<'_>) -> &mut Self {
        if !e.xattrs.is_empty() {
            let mut pax = Vec::new();
            for (k, v) in e.xattrs {
                let body_len = format!(" SCHILY.xattr.{k}=").len() + v.len() + 1;
                let mut len = body_len + 1;
                while format!("{len}").len() + body_len != len {
                    len = format!("{len}").len() + body_len;
                }
                pax.extend_from_slice(format!("{len} SCHILY.xattr.{k}=").as_bytes());
                pax.extend_from_slice(v);
                pax.push(b'\n');
            }
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(pax.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            self.data.extend_from_slice(h.as_bytes());
            self.data.extend_from_slice(&pax);
            pad(&mut self.data);
        }
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(1_700_000_000);
        h.set_size(e.content.len() as u64);
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        self.data.extend_from_slice(h.as_bytes());
        self.data.extend_from_slice(e.content);
        pad(&mut self.data);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, uid: u64, content: &[u8]) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            mode,
            uid,
            gid: uid,
            content,
            ..Default::default()
        })
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: tar::EntryType::Directory,
            mode,
            ..Default::default()
        })
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: tar::EntryType::Symlink,
            mode: 0o777,
            link: target.as_bytes(),
            ..Default::default()
        })
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: tar::EntryType::Link,
            link: target.as_bytes(),
            ..Default::default()
        })
    }

    /// A GNU sparse file claiming `real_size` bytes with one 512-byte data chunk at the end.
    pub fn sparse(&mut self, name: &str, real_size: u64) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(512);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(real_size - 512);
        gnu.sparse[0].set_length(512);
        h.set_cksum();
        self.data.extend_from_slice(h.as_bytes());
        self.data.extend_from_slice(&[7u8; 512]);
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.data.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// One inode as debugfs sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub ino: u64,
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path in the image (except lost+found) with its inode data, via `ls -p`.
pub fn ext4_listing(image: &Path) -> BTreeMap<String, Ext4Entry> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![String::from("/")];
    while let Some(dir) = dirs.pop() {
        let listing = debugfs(image, &format!("ls -p \"{dir}\""));
        for line in listing.lines() {
            // /ino/mode/uid/gid/name/size/
            let fields: Vec<&str> = line.trim().split('/').collect();
            if fields.len() < 7 {
                continue;
            }
            let name = fields[5];
            if name == "." || name == ".." || (dir == "/" && name == "lost+found") {
                continue;
            }
            let path = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            let entry = Ext4Entry {
                ino: fields[1].parse().unwrap(),
                mode: u32::from_str_radix(fields[2], 8).unwrap(),
                uid: fields[3].parse().unwrap(),
                gid: fields[4].parse().unwrap(),
                size: fields[6].parse().unwrap_or(0),
            };
            if entry.mode & 0o170000 == 0o040000 {
                dirs.push(path.clone());
            }
            out.insert(path, entry);
        }
    }
    out
}

/// The content of a file in the image.
pub fn ext4_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat \"{path}\""))
        .arg(image)
        .output()
        .unwrap();
    out.stdout
}

/// A symlink's target.
pub fn ext4_readlink(image: &Path, path: &str) -> String {
    let stat = debugfs(image, &format!("stat \"{path}\""));
    match stat.lines().find(|l| l.contains("link dest:")) {
        Some(line) => line
            .split_once("link dest: ")
            .map(|x| x.1.trim().trim_matches('"').to_string())
            .unwrap_or_default(),
        // A slow symlink keeps its target in a data block.
        None => String::from_utf8_lossy(&ext4_cat(image, path)).into_owned(),
    }
}

/// An xattr's value.
pub fn ext4_xattr(image: &Path, path: &str, name: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v");
    Command::new("debugfs")
        .arg("-R")
        .arg(format!("ea_get -f {} \"{path}\" {name}", file.display()))
        .arg(image)
        .output()
        .unwrap();
    std::fs::read(&file).ok()
}

/// `e2fsck -fn` must find nothing.
pub fn assert_fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {} failed:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails if the store has any inconsistency or leftover temp files from live sessions.
pub fn assert_store_consistent(store: &voidbox_oci::Store) {
    let problems = store.check().unwrap();
    assert!(problems.is_empty(), "store problems: {problems:?}");
}

/// Stores an (unterminated) raw tar as a gzip layer through [`LayerWriter`].
pub fn gz_layer(store: &Store, raw: &RawTar) -> LayerBlob {
    let mut w = LayerWriter::new(store).unwrap();
    voidbox_oci::writer::write_raw(w.tar().get_mut(), &raw.data).unwrap();
    w.finish().unwrap()
}

/// The rich two-layer test image: owners, modes, setuid, xattrs, hardlink, symlink, device,
/// fifo, whiteout, opaque dir, replaced file.
pub fn rich_image(store: &Store, marker: &str) -> Digest {
    let mut l1 = RawTar::default();
    l1.dir("etc/", 0o755)
        .file("etc/hello", 0o644, 0, b"hello\n")
        .file("usr/bin/tool", 0o4755, 0, b"#!/bin/sh\necho tool\n")
        .entry(RawEntry {
            name: b"home/u/data",
            mode: 0o600,
            uid: 1000,
            gid: 1000,
            content: b"secret data",
            xattrs: &[("user.note", b"n1"), ("trusted.t", b"\x00\x01bin")],
            ..Default::default()
        })
        .hardlink("home/u/data2", "home/u/data")
        .symlink("etc/link", "/etc/hello")
        .entry(RawEntry {
            name: b"dev/null2",
            kind: EntryType::Char,
            mode: 0o666,
            dev: (1, 3),
            ..Default::default()
        })
        .entry(RawEntry {
            name: b"run/fifo",
            kind: EntryType::Fifo,
            mode: 0o600,
            ..Default::default()
        })
        .dir("opaque/", 0o750)
        .file("opaque/old", 0o644, 0, b"old")
        .file("gone", 0o644, 0, b"bye")
        .file("marker", 0o644, 0, marker.as_bytes());
    let mut l2 = RawTar::default();
    l2.file(".wh.gone", 0o644, 0, b"")
        .file("opaque/.wh..wh..opq", 0o644, 0, b"")
        .file("opaque/new", 0o644, 0, b"new")
        .entry(RawEntry {
            name: b"etc/hello",
            mode: 0o640,
            uid: 5,
            gid: 6,
            content: b"hello v2\n",
            ..Default::default()
        });
    let layers = vec![
        LayerBlob::from_tar_bytes(store, &l1.finish()).unwrap(),
        gz_layer(store, &l2),
    ];
    write_image(
        store,
        &ImageSettings {
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        },
        &layers,
        &BTreeMap::new(),
    )
    .unwrap()
}

/// Checks a disk built from [`rich_image`] entry by entry.
pub fn check_rich_disk(disk: &std::path::Path, marker: &str) {
    assert_fsck_clean(disk);
    let listing = ext4_listing(disk);
    let expect = |path: &str, mode: u32, uid: u32, gid: u32, size: Option<u64>| {
        let e = listing
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from disk: {listing:#?}"));
        assert_eq!(e.mode, mode, "{path} mode {:o}", e.mode);
        assert_eq!((e.uid, e.gid), (uid, gid), "{path} owner");
        if let Some(size) = size {
            assert_eq!(e.size, size, "{path} size");
        }
    };
    expect("/etc", 0o040755, 0, 0, None);
    expect("/etc/hello", 0o100640, 5, 6, Some(9));
    expect("/etc/link", 0o120777, 0, 0, Some(10));
    expect("/usr", 0o040755, 0, 0, None);
    expect("/usr/bin", 0o040755, 0, 0, None);
    expect("/usr/bin/tool", 0o104755, 0, 0, Some(20));
    expect("/home/u/data", 0o100600, 1000, 1000, Some(11));
    expect("/home/u/data2", 0o100600, 1000, 1000, Some(11));
    expect("/dev/null2", 0o020666, 0, 0, None);
    expect("/run/fifo", 0o010600, 0, 0, None);
    expect("/opaque", 0o040750, 0, 0, None);
    expect("/opaque/new", 0o100644, 0, 0, Some(3));
    expect("/marker", 0o100644, 0, 0, Some(marker.len() as u64));
    assert!(!listing.contains_key("/gone"), "whiteout not applied");
    assert!(
        !listing.contains_key("/opaque/old"),
        "opaque dir not applied"
    );
    assert!(
        !listing.keys().any(|k| k.contains(".wh.")),
        "whiteout marker leaked: {listing:?}"
    );
    let expected_paths = [
        "/etc",
        "/etc/hello",
        "/etc/link",
        "/usr",
        "/usr/bin",
        "/usr/bin/tool",
        "/home",
        "/home/u",
        "/home/u/data",
        "/home/u/data2",
        "/dev",
        "/dev/null2",
        "/run",
        "/run/fifo",
        "/opaque",
        "/opaque/new",
        "/marker",
    ];
    assert_eq!(
        listing.len(),
        expected_paths.len(),
        "unexpected entries: {:?}",
        listing.keys()
    );
    assert_eq!(
        listing["/home/u/data"].ino, listing["/home/u/data2"].ino,
        "hardlink lost"
    );
    assert_eq!(ext4_cat(disk, "/etc/hello"), b"hello v2\n");
    assert_eq!(ext4_cat(disk, "/usr/bin/tool"), b"#!/bin/sh\necho tool\n");
    assert_eq!(ext4_cat(disk, "/home/u/data2"), b"secret data");
    assert_eq!(ext4_cat(disk, "/marker"), marker.as_bytes());
    assert_eq!(ext4_readlink(disk, "/etc/link"), "/etc/hello");
    assert_eq!(
        ext4_xattr(disk, "/home/u/data", "user.note").as_deref(),
        Some(&b"n1"[..])
    );
    assert_eq!(
        ext4_xattr(disk, "/home/u/data", "trusted.t").as_deref(),
        Some(&b"\x00\x01bin"[..])
    );
    let stat = std::process::Command::new("debugfs")
        .args(["-R", "stat /dev/null2"])
        .arg(disk)
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(
        stat.contains("Device major/minor number: 01:03"),
        "device numbers: {stat}"
    );
}

/// A tokio runtime for one blocking call into the async registry client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `manifest` (and its blobs) from `source` to the registry reference `target`.
pub fn push(
    source: &Store,
    manifest: &Digest,
    target: &str,
    options: &voidbox_oci::RegistryOptions,
) {
    let reference = oci_client::Reference::from_str(target).unwrap();
    rt().block_on(
        voidbox_oci::RegistryClient::new(&reference, options).push(source, manifest, &reference),
    )
    .unwrap();
}

/// Pulls `reference` into `store`.
pub fn pull(
    store: &Store,
    reference: &str,
    options: &voidbox_oci::PullOptions,
) -> voidbox_oci::Result<voidbox_oci::PulledImage> {
    rt().block_on(voidbox_oci::pull(
        store,
        &voidbox_oci::ImageSource::parse(reference).unwrap(),
        options,
    ))
}
