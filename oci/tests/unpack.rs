//! Layer safety and the ext4 writer without a registry: malicious layers, device nodes,
//! and an unprivileged build.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use tar::EntryType;
use voidbox_oci::unpack::{Tree, UnpackLimits};
use voidbox_oci::writer::{write_image, ImageSettings, LayerBlob};
use voidbox_oci::{ensure_disk, OciError, Store};

/// Builds a one-layer image from `tar` and tries to make its disk.
fn disk_of(
    store: &Store,
    tar: Vec<u8>,
    limits: UnpackLimits,
) -> (voidbox_oci::Result<std::path::PathBuf>, String) {
    let layer = LayerBlob::from_tar_bytes(store, &tar).unwrap();
    let manifest = write_image(
        store,
        &ImageSettings::default(),
        std::slice::from_ref(&layer),
        &BTreeMap::new(),
    )
    .unwrap();
    let result = ensure_disk(store, &manifest, limits);
    if result.is_err() {
        assert!(
            !store.disk_path(&manifest).exists(),
            "a disk was left for a rejected image"
        );
    }
    (result, layer.digest.to_string())
}

fn assert_unsafe(
    result: voidbox_oci::Result<std::path::PathBuf>,
    layer: &str,
    entry: &str,
    why: &str,
) {
    match result {
        Err(OciError::UnsafeEntry {
            layer: l,
            entry: e,
            reason,
        }) => {
            assert_eq!(l, layer);
            assert_eq!(e, entry);
            assert!(
                reason.contains(why),
                "reason {reason:?} should mention {why:?}"
            );
            let text = OciError::UnsafeEntry {
                layer: l,
                entry: e,
                reason,
            }
            .to_string();
            assert!(text.contains(layer) && text.contains(entry), "{text}");
        }
        other => panic!("expected UnsafeEntry for {entry}, got {other:?}"),
    }
}

#[test]
fn malicious_layers_are_rejected() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let outside_dir = outside.path().display().to_string();
    let limits = UnpackLimits::default();

    // Path traversal and absolute paths.
    let mut t = RawTar::default();
    t.file("ok", 0o644, 0, b"x")
        .file("a/../../../../escape", 0o644, 0, b"pwned");
    let (r, layer) = disk_of(&store, t.finish(), limits);
    assert_unsafe(r, &layer, "a/../../../../escape", "..");
    let mut t = RawTar::default();
    t.file(&format!("{outside_dir}/abs"), 0o644, 0, b"pwned");
    let (r, layer) = disk_of(&store, t.finish(), limits);
    assert_unsafe(r, &layer, &format!("{outside_dir}/abs"), "absolute");

    // A symlink to outside, then a file through it (absolute and relative targets).
    for (target, name) in [
        (outside_dir.as_str(), "abs-link"),
        ("../../../../../../", "rel-link"),
    ] {
        let mut t = RawTar::default();
        t.symlink(name, target)
            .file(&format!("{name}/pwned"), 0o644, 0, b"pwned");
        let (r, layer) = disk_of(&store, t.finish(), limits);
        assert_unsafe(r, &layer, &format!("{name}/pwned"), "symlink");
    }
    // The same with the symlink in an earlier layer.
    let mut t1 = RawTar::default();
    t1.symlink("etc", outside_dir.as_str());
    let mut t2 = RawTar::default();
    t2.file("etc/pwned", 0o644, 0, b"pwned");
    let l1 = LayerBlob::from_tar_bytes(&store, &t1.finish()).unwrap();
    let l2 = LayerBlob::from_tar_bytes(&store, &t2.finish()).unwrap();
    let m = write_image(
        &store,
        &ImageSettings::default(),
        &[l1, l2.clone()],
        &BTreeMap::new(),
    )
    .unwrap();
    assert_unsafe(
        ensure_disk(&store, &m, limits),
        &l2.digest.to_string(),
        "etc/pwned",
        "symlink",
    );

    // Hardlinks to outside the image.
    for (target, why) in [
        ("../../../../etc/passwd", ".."),
        ("/etc/passwd", "absolute"),
        ("missing", "does not exist"),
    ] {
        let mut t = RawTar::default();
        t.hardlink("h", target);
        let (r, layer) = disk_of(&store, t.finish(), limits);
        assert_unsafe(r, &layer, "h", why);
    }
    let mut t = RawTar::default();
    t.symlink("lnk", "/etc").hardlink("h", "lnk/passwd");
    let (r, layer) = disk_of(&store, t.finish(), limits);
    assert_unsafe(r, &layer, "h", "symlink");

    // Huge claims: a sparse file of 1 TiB and a plain header claiming 1 TiB.
    let mut t = RawTar::default();
    t.sparse("sparse", 1 << 40);
    let (r, layer) = disk_of(&store, t.finish(), limits);
    match r {
        Err(OciError::SizeCapExceeded {
            layer: l, entry, ..
        }) => assert_eq!((l, entry.as_str()), (layer, "sparse")),
        other => panic!("sparse claim not rejected: {other:?}"),
    }
    // The cap counts tar headers and padding too: "a" takes 512 + 600 + 424.
    let small = UnpackLimits {
        max_total_bytes: 2000,
        max_entries: 100,
    };
    let mut t = RawTar::default();
    t.file("a", 0o644, 0, &[1u8; 600])
        .file("b", 0o644, 0, &[2u8; 600]);
    let (r, _) = disk_of(&store, t.finish(), small);
    assert!(
        matches!(r, Err(OciError::SizeCapExceeded { ref entry, .. }) if entry == "b"),
        "{r:?}"
    );

    // An xattr name that could be read as an option by the ext4 writer's tools.
    let mut t = RawTar::default();
    t.entry(RawEntry {
        name: b"x",
        xattrs: &[("-f", b"v")],
        ..Default::default()
    });
    let (r, layer) = disk_of(&store, t.finish(), limits);
    assert_unsafe(r, &layer, "x", "xattr");

    // Malformed whiteout.
    let mut t = RawTar::default();
    t.file(".wh..", 0o644, 0, b"");
    let (r, layer) = disk_of(&store, t.finish(), limits);
    assert_unsafe(r, &layer, ".wh..", "whiteout");

    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something escaped"
    );
    assert!(!Path::new("/escape").exists());
    assert_store_consistent(&store);
    drop(store);
    assert_eq!(
        std::fs::read_dir(home.path().join("tmp")).unwrap().count(),
        0,
        "temp files left behind"
    );
    assert_eq!(
        std::fs::read_dir(home.path().join("disks"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn device_nodes_are_recorded_not_created_on_host() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    let mut t = RawTar::default();
    t.entry(RawEntry {
        name: b"dev/sda",
        kind: EntryType::Block,
        mode: 0o660,
        gid: 6,
        dev: (8, 0),
        ..Default::default()
    })
    .entry(RawEntry {
        name: b"dev/null",
        kind: EntryType::Char,
        mode: 0o666,
        dev: (1, 3),
        ..Default::default()
    })
    .entry(RawEntry {
        name: b"fifo",
        kind: EntryType::Fifo,
        mode: 0o644,
        ..Default::default()
    });
    let mut tree = Tree::new(&root, UnpackLimits::default());
    tree.apply_layer("test-layer", std::io::Cursor::new(t.finish()), None)
        .unwrap();
    for name in ["dev/sda", "dev/null", "fifo"] {
        assert!(
            std::fs::symlink_metadata(root.join(name)).is_err(),
            "{name} was created on the host"
        );
    }
    let image = work.path().join("disk.ext4");
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    voidbox_oci::ext4::build_ext4(&tree, &image, &scratch).unwrap();
    assert_fsck_clean(&image);
    let listing = ext4_listing(&image);
    assert_eq!(listing["/dev/sda"].mode, 0o060660);
    assert_eq!(listing["/dev/sda"].gid, 6);
    assert_eq!(listing["/dev/null"].mode, 0o020666);
    assert_eq!(listing["/fifo"].mode, 0o010644);
}

/// A temporary directory uid 65534 can write to: mode 0777 whatever the
/// umask, under a base whose every ancestor others may search (`$TMPDIR` may
/// be private, as on a CI machine with umask 077).
fn dir_for_nobody() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let searchable = |p: &std::path::Path| {
        p.ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    let bases = [std::env::temp_dir(), "/tmp".into(), "/dev/shm".into()];
    let base = bases.iter().find(|b| searchable(b)).expect(
        "no temporary directory uid 65534 can enter: $TMPDIR, /tmp and /dev/shm each have an \
         ancestor without o+x; set TMPDIR to one that has",
    );
    let dir = tempfile::tempdir_in(base).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

const UNPRIV_ENV: &str = "VOIDBOX_TEST_UNPRIVILEGED_HOME";

/// Runs as `nobody` when re-executed by [`unprivileged_build_is_identical`].
#[test]
fn unprivileged_child() {
    let Ok(home) = std::env::var(UNPRIV_ENV) else {
        return;
    };
    assert_ne!(unsafe { libc::geteuid() }, 0, "child must not be root");
    let store = Store::open(&home).unwrap();
    let manifest = rich_image(&store, "unprivileged");
    ensure_disk(&store, &manifest, UnpackLimits::default()).unwrap();
}

#[test]
fn unprivileged_build_is_identical() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to switch to nobody (this run is already unprivileged)");
        return;
    }
    let work = dir_for_nobody();
    let exe = work.path().join("test-bin");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    // The copy keeps the build's mode, which a umask of 077 made 0700.
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let home = work.path().join("home");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "unprivileged_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(UNPRIV_ENV, &home)
        .env("TMPDIR", work.path())
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unprivileged build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let disks: Vec<_> = std::fs::read_dir(home.join("disks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(disks.len(), 1);
    let meta = std::fs::metadata(&disks[0]).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        65534,
        "the disk was not built by nobody"
    );
    check_rich_disk(&disks[0], "unprivileged");
}

#[test]
fn ext4_size_follows_content() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    let mut t = RawTar::default();
    let long_target = "x".repeat(90);
    for d in 0..120 {
        t.dir(&format!("d{d}/"), 0o755);
        for f in 0..10 {
            t.file(&format!("d{d}/e{f}"), 0o644, d, b"");
        }
        t.file(&format!("d{d}/page"), 0o600, 0, &[d as u8; 4097]);
        t.symlink(&format!("d{d}/long"), &long_target);
        t.entry(RawEntry {
            name: format!("d{d}/attr").as_bytes(),
            xattrs: &[("user.a", &[7u8; 100]), ("security.b", b"v")],
            ..Default::default()
        });
    }
    t.file("big", 0o644, 0, &vec![9u8; 20 << 20]);
    let mut tree = Tree::new(&root, UnpackLimits::default());
    tree.apply_layer("sizing", std::io::Cursor::new(t.finish()), None)
        .unwrap();
    let image = work.path().join("disk.ext4");
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    voidbox_oci::ext4::build_ext4(&tree, &image, &scratch).unwrap();
    assert_fsck_clean(&image);
    let listing = ext4_listing(&image);
    assert_eq!(listing.len(), 120 * 14 + 1);
    assert_eq!(listing["/d119/e9"].uid, 119);
    assert_eq!(ext4_readlink(&image, "/d7/long"), long_target);
    assert_eq!(
        ext4_xattr(&image, "/d7/attr", "user.a").unwrap(),
        vec![7u8; 100]
    );
    let size = std::fs::metadata(&image).unwrap().len();
    let content = (20 << 20) + 120 * 8192;
    assert!(
        size < content * 3 / 2 + (16 << 20),
        "image of {size} bytes for {content} bytes of content"
    );
}

/// A cheap deterministic stand-in for the fuzz target: mutated valid layers must give
/// `Ok` or a typed error, never a panic or a write outside the staging root.
#[test]
fn mutated_layers_never_panic_or_escape() {
    let mut base = RawTar::default();
    base.dir("etc/", 0o755)
        .file("etc/a", 0o644, 0, b"aaaa")
        .symlink("etc/l", "/etc/a")
        .hardlink("etc/h", "etc/a")
        .file(".wh.x", 0o644, 0, b"")
        .file("d/.wh..wh..opq", 0o644, 0, b"")
        .entry(RawEntry {
            name: b"x",
            xattrs: &[("user.k", b"v")],
            ..Default::default()
        });
    let base = base.finish();
    let mut rng: u64 = 0x243f6a8885a308d3;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..300 {
        let mut data = base.clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() as usize) % data.len();
            data[at] = match next() % 4 {
                0 => b'.',
                1 => b'/',
                2 => 0,
                _ => next() as u8,
            };
        }
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("tree");
        std::fs::create_dir(&root).unwrap();
        let limits = UnpackLimits {
            max_total_bytes: 1 << 20,
            max_entries: 100,
        };
        let mut tree = Tree::new(&root, limits);
        let _ = tree.apply_layer(&format!("round-{round}"), std::io::Cursor::new(&data), None);
        let _ = tree.apply_layer(
            &format!("round-{round}b"),
            std::io::Cursor::new(&data),
            None,
        );
        assert_eq!(
            std::fs::read_dir(outer.path()).unwrap().count(),
            1,
            "round {round} wrote outside the root"
        );
    }
}

#[test]
fn later_layers_replace_merge_and_hide() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    let mut tree = Tree::new(&root, UnpackLimits::default());
    let mut l1 = RawTar::default();
    l1.dir("a/", 0o755)
        .file("a/keep", 0o644, 0, b"k")
        .file("b", 0o644, 0, b"file")
        .dir("c/", 0o700)
        .file("c/inner", 0o644, 0, b"i")
        .file("d/x", 0o644, 0, b"x")
        .file("d/y", 0o644, 0, b"y");
    let mut l2 = RawTar::default();
    l2.dir("a/", 0o711) // merges, new mode
        .dir("b/", 0o755) // file replaced by a directory
        .file("c", 0o600, 0, b"now a file") // directory replaced by a file
        .file("d/.wh..wh..opq", 0o644, 0, b"")
        .file("d/z", 0o644, 0, b"z")
        .file("a/.wh.missing", 0o644, 0, b""); // whiteout of nothing is fine
    tree.apply_layer("l1", std::io::Cursor::new(l1.finish()), None)
        .unwrap();
    tree.apply_layer("l2", std::io::Cursor::new(l2.finish()), None)
        .unwrap();
    let paths: Vec<String> = tree
        .entries()
        .keys()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(paths, ["", "a", "a/keep", "b", "c", "d", "d/z"]);
    let e = tree.entries();
    assert_eq!(e[Path::new("a")].mode, 0o711);
    assert_eq!(e[Path::new("b")].kind, voidbox_oci::unpack::NodeKind::Dir);
    assert_eq!(e[Path::new("c")].kind, voidbox_oci::unpack::NodeKind::File);
    assert_eq!(std::fs::read(root.join("c")).unwrap(), b"now a file");
    assert!(!root.join("d/x").exists() && root.join("d/z").exists());
}

/// Counts the bytes the unpacker pulls from `inner`.
struct Counting<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// A plain tar stream: one extension header of type `kind` claiming `size`
/// bytes, then zeros (generated, never held in memory).
fn huge_extension(kind: EntryType, size: u64) -> impl std::io::Read {
    let mut h = tar::Header::new_gnu();
    let name: &[u8] = if kind == EntryType::XHeader {
        b"PaxHeader"
    } else {
        b"././@LongLink"
    };
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    std::io::Read::chain(
        std::io::Cursor::new(h.as_bytes().to_vec()),
        std::io::Read::take(std::io::repeat(b'a'), size),
    )
}

#[test]
fn huge_tar_extension_headers_are_refused_early() {
    for kind in [
        EntryType::GNULongName,
        EntryType::GNULongLink,
        EntryType::XHeader,
        EntryType::XGlobalHeader,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir(&root).unwrap();
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let input = std::io::BufReader::new(Counting {
            inner: huge_extension(kind, 1 << 30),
            read: read.clone(),
        });
        let mut tree = Tree::new(&root, UnpackLimits::default());
        let result = tree.apply_layer("huge", input, None);
        let read = read.load(std::sync::atomic::Ordering::Relaxed);
        match result {
            Err(OciError::UnsafeEntry { layer, reason, .. }) => {
                assert_eq!(layer, "huge");
                assert!(reason.contains("extension"), "{reason}");
            }
            other => panic!("{kind:?}: expected UnsafeEntry, got {other:?}"),
        }
        assert!(
            read < 2 << 20,
            "{kind:?}: read {read} bytes before refusing"
        );
    }
}

#[test]
fn tar_overhead_counts_against_the_size_cap() {
    // 64 empty files: 64 headers (32 KiB) and no content.
    let mut t = RawTar::default();
    for i in 0..64 {
        t.file(&format!("f{i}"), 0o644, 0, b"");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    let limits = UnpackLimits {
        max_total_bytes: 16 << 10,
        max_entries: 1000,
    };
    let mut tree = Tree::new(&root, limits);
    match tree.apply_layer("headers", std::io::Cursor::new(t.finish()), None) {
        Err(OciError::SizeCapExceeded { cap, .. }) => assert_eq!(cap, 16 << 10),
        other => panic!("expected SizeCapExceeded, got {other:?}"),
    }
}

#[test]
fn long_names_pax_records_and_sparse_files_still_unpack() {
    // tar's own writer: GNU long names and links, PAX records, a sparse file.
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    let hdr = |kind: EntryType, mode: u32, size: u64, gnu: bool| {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut h = hdr(EntryType::Directory, 0o755, 0, true);
    b.append_data(&mut h, "d".repeat(120), std::io::empty())
        .unwrap();
    let mut h = hdr(EntryType::Regular, 0o644, 5, true);
    b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
    let mut h = hdr(EntryType::Symlink, 0o777, 0, true);
    b.append_link(&mut h, "link", "t".repeat(200)).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
        .unwrap();
    let mut h = hdr(EntryType::Regular, 0o644, 3, false);
    b.append_data(&mut h, "pax", &b"abc"[..]).unwrap();
    // A PAX `size` record overrides the header's size field (0 here).
    b.append_pax_extensions([("size", &b"3"[..])]).unwrap();
    let mut h = hdr(EntryType::Regular, 0o644, 0, false);
    b.append_data(&mut h, "paxsize", &b"xyz"[..]).unwrap();
    let mut raw = RawTar {
        data: b.into_inner().unwrap(),
    };
    raw.data.truncate(raw.data.len() - 1024);
    raw.sparse("sparse", 1 << 20).file("last", 0o644, 0, b"end");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    let mut tree = Tree::new(&root, UnpackLimits::default());
    tree.apply_layer("ok", std::io::Cursor::new(raw.finish()), None)
        .unwrap();
    assert_eq!(std::fs::read(root.join(&long)).unwrap(), b"hello");
    assert_eq!(std::fs::read(root.join("pax")).unwrap(), b"abc");
    assert_eq!(std::fs::read(root.join("paxsize")).unwrap(), b"xyz");
    assert_eq!(std::fs::read(root.join("last")).unwrap(), b"end");
    assert_eq!(
        std::fs::read_link(root.join("link")).unwrap(),
        std::path::PathBuf::from("t".repeat(200))
    );
}
