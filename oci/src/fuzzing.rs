//! Entry points of the fuzz targets in `oci/fuzz/`, shared with the ordinary test that
//! replays their committed corpora (`tests/fuzz_corpus.rs`). Each takes untrusted bytes,
//! must never panic, and asserts what its target promises (typed errors only, nothing
//! written outside a temporary root, no command injected into the debugfs script).

use std::io::Cursor;
use std::path::{Component, Path};

use crate::local::{import_docker_archive, import_oci_layout};
use crate::manifest::{image_blobs, parse_config, parse_manifest, select_platform, Manifest};
use crate::unpack::{Tree, UnpackLimits};
use crate::{Digest, ImageSource, OciError, Platform, Store};

/// Separates the documents of an [`oci_layout_import`] input.
pub const LAYOUT_SEPARATOR: &[u8] = b"\n\0--blob--\0\n";

fn limits() -> UnpackLimits {
    UnpackLimits {
        max_total_bytes: 1 << 20,
        max_entries: 1000,
    }
}

/// Names of what `dir` holds, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| {
            e.expect("dirent")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Registry documents (manifests, indexes, configs) from arbitrary bytes: typed errors only.
pub fn parse_manifest_bytes(data: &[u8]) {
    if let Ok(Manifest::Index(index)) = parse_manifest(data, "fuzz") {
        let _ = select_platform(&index, &Platform::default(), "fuzz");
    }
    let _ = parse_config(data, "fuzz");
}

/// Image references and platforms from arbitrary text: parse or fail cleanly, and a parsed
/// registry reference round-trips through its canonical name.
pub fn parse_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Platform::parse(text);
    if let Ok(source) = ImageSource::parse(text) {
        let name = source.canonical_name();
        if let ImageSource::Registry(_) = source {
            let again = ImageSource::parse(&name).expect("canonical name parses");
            assert_eq!(again.canonical_name(), name);
        }
    }
}

/// Arbitrary bytes as a layer (plain or gzip tar), applied twice (whiteouts and opaque
/// directories against an existing tree): Ok or a typed error, nothing outside the root.
pub fn unpack_layer(data: &[u8]) {
    let outer = tempfile::tempdir().expect("tempdir");
    let root = outer.path().join("tree");
    std::fs::create_dir(&root).expect("mkdir");
    let mut tree = Tree::new(&root, limits());
    let _ = tree.apply_layer("fuzz-1", Cursor::new(data), None);
    let _ = tree.apply_layer("fuzz-2", Cursor::new(data), None);
    assert_eq!(
        names_in(outer.path()),
        ["tree"],
        "unpacker wrote outside its root"
    );
    for path in tree.entries().keys() {
        assert!(path.is_relative());
        assert!(!path.components().any(|c| matches!(c, Component::ParentDir)));
    }
}

/// Splits a debugfs command line the way debugfs's parser (libss) does: words separated
/// by blanks; inside `"…"` everything is literal and `""` is one `"`.
pub fn debugfs_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            w.push('"');
                        }
                        Some('"') | None => break,
                        Some(c) => w.push(c),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// One tar entry per NUL-separated record of `data`: the first byte modulo 6 picks the kind
/// (file, directory, symlink, FIFO, character device, file with an xattr; `'0'`..`'5'`), the rest is the
/// raw name (for the xattr kind `path=xattr-name`). Headers are valid, so the names reach
/// the unpacker whatever bytes they hold.
fn names_tar(data: &[u8]) -> Vec<u8> {
    fn pad(out: &mut Vec<u8>) {
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    let mut out = Vec::new();
    for record in data.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let (kind, rest) = (record[0] % 6, &record[1..]);
        let (name, xattr) = match (kind, rest.iter().position(|&b| b == b'=')) {
            (5, Some(i)) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(xattr) = xattr {
            let body = [b" SCHILY.xattr.".as_slice(), xattr, b"=value\n".as_slice()].concat();
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len = format!("{len}").len() + body.len();
            }
            let pax = [format!("{len}").into_bytes(), body].concat();
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(pax.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&pax);
            pad(&mut out);
        }
        let mut h = tar::Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        let (ty, content): (_, &[u8]) = match kind {
            1 => (tar::EntryType::Directory, b""),
            2 => (tar::EntryType::Symlink, b""),
            3 => (tar::EntryType::Fifo, b""),
            4 => (tar::EntryType::Char, b""),
            _ => (tar::EntryType::Regular, b"x"),
        };
        h.set_entry_type(ty);
        h.set_mode(if kind == 1 { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(content.len() as u64);
        if kind == 2 {
            h.as_old_mut().linkname[..6].copy_from_slice(b"target");
        }
        if kind == 4 {
            h.set_device_major(1).expect("gnu header");
            h.set_device_minor(3).expect("gnu header");
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(content);
        pad(&mut out);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// File names from an untrusted layer end up in the ext4 writer's debugfs script: whatever
/// the names, every entry the unpacker accepted yields exactly its commands (4 `sif`, plus
/// `cd`/`mknod`/`cd` for a device or FIFO, plus one `ea_set` per xattr), each line splits
/// into exactly the words of its command, and the path words are the entry's path.
pub fn debugfs_script(data: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let outer = tempfile::tempdir().expect("tempdir");
    let root = outer.path().join("tree");
    let scratch = outer.path().join("scratch");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::create_dir(&scratch).expect("mkdir");
    let mut tree = Tree::new(&root, limits());
    let _ = tree.apply_layer("fuzz", Cursor::new(names_tar(data)), None);
    let script = crate::ext4::metadata_script(&tree, &scratch).expect("script");
    let mut lines = script.lines();
    let mut next = |what: &str| -> Vec<String> {
        debugfs_words(
            lines
                .next()
                .unwrap_or_else(|| panic!("missing {what} line")),
        )
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (rel, meta) in tree.entries() {
        let path = text(&[b"/", rel.as_os_str().as_bytes()].concat());
        if meta.kind.is_recorded_only() {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let parent = text(&[b"/", parent.as_os_str().as_bytes()].concat());
            assert_eq!(next("cd"), ["cd", parent.as_str()]);
            let mknod = next("mknod");
            let name = text(rel.file_name().expect("a name").as_bytes());
            assert_eq!(mknod[..2], ["mknod", name.as_str()]);
            assert!(matches!(mknod.len(), 3 | 5), "{mknod:?}");
            assert_eq!(next("cd"), ["cd", "/"]);
        }
        for field in ["uid", "gid", "mode", "mtime"] {
            let w = next("sif");
            assert_eq!(w.len(), 4, "{w:?}");
            assert_eq!(w[..3], ["sif", path.as_str(), field]);
        }
        for (name, _) in &meta.xattrs {
            let w = next("ea_set");
            assert_eq!(w.len(), 5, "{w:?}");
            assert_eq!(w[..2], ["ea_set", "-f"]);
            assert_eq!(w[3..], [path.as_str(), name.as_str()]);
        }
    }
    assert_eq!(
        lines.next(),
        None,
        "the script has commands no entry asked for"
    );
}

/// After a successful import, the manifest and every blob it names are in the store.
fn check_imported(store: &Store, manifest: &Digest) {
    let data = store.read_manifest(manifest).expect("imported manifest");
    let Ok(Manifest::Image(image)) = parse_manifest(&data, "imported") else {
        panic!("the imported manifest is not an image manifest");
    };
    for blob in image_blobs(&image).expect("imported blobs") {
        assert!(store.has_blob(&blob), "{blob} missing after import");
    }
}

/// A `docker save` archive from arbitrary bytes imported into a fresh store: Ok with every
/// blob present, or a typed error; nothing written outside the store.
pub fn docker_archive_import(data: &[u8]) {
    let outer = tempfile::tempdir().expect("tempdir");
    let file = outer.path().join("archive.tar");
    std::fs::write(&file, data).expect("write");
    let store = Store::open(outer.path().join("store")).expect("store");
    if let Ok(r) = import_docker_archive(&store, &file) {
        check_imported(&store, &r.manifest);
    }
    assert_eq!(names_in(outer.path()), ["archive.tar", "store"]);
}

/// An OCI layout from arbitrary bytes imported into a fresh store. The input is documents
/// separated by [`LAYOUT_SEPARATOR`]: the first is `index.json`, every other one a blob
/// stored under its own digest (so a seed's digests stay valid while the documents mutate).
/// Imported untagged, then as tag `v1`: Ok with every blob present, or a typed error.
pub fn oci_layout_import(data: &[u8]) {
    let outer = tempfile::tempdir().expect("tempdir");
    let layout = outer.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write");
    let mut docs = split(data, LAYOUT_SEPARATOR);
    std::fs::write(layout.join("index.json"), docs.remove(0)).expect("write");
    for blob in docs {
        std::fs::write(blobs.join(Digest::of(blob).hex()), blob).expect("write");
    }
    let store = Store::open(outer.path().join("store")).expect("store");
    for tag in [None, Some("v1")] {
        if let Ok(r) = import_oci_layout(&store, &layout, tag, &Platform::default()) {
            check_imported(&store, &r.manifest);
        }
    }
    assert_eq!(names_in(outer.path()), ["layout", "store"]);
}

fn split<'a>(mut data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(i) = data.windows(sep.len()).position(|w| w == sep) {
        out.push(&data[..i]);
        data = &data[i + sep.len()..];
    }
    out.push(data);
    out
}

/// An error response of a registry (status: first two bytes, little endian; body: the
/// rest), classified the way a real failed request is: the error always names the
/// registry and the action, and a 401 is always an authentication failure.
pub fn registry_error_body(data: &[u8]) {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let code = 400 + u16::from_le_bytes(*status) % 200;
    let status = reqwest::StatusCode::from_u16(code).expect("400..600 is a status");
    let url = "https://registry.fuzz:5000/v2/a/b/manifests/c";
    let e = crate::manifest_fetch::status_error(status, body, url);
    let err = crate::registry_error::registry_failure(
        "registry.fuzz:5000",
        "registry.fuzz:5000/a/b:c",
        "fetching manifest",
        &e,
    );
    let text = err.to_string();
    assert!(text.contains("registry.fuzz:5000"), "{text}");
    if code == 401 {
        assert!(
            matches!(err, OciError::AuthenticationFailed { .. }),
            "{err:?}"
        );
    }
    if !matches!(
        err,
        OciError::RegistryUnreachable { .. } | OciError::RegistryTls { .. }
    ) {
        assert!(text.contains("fetching manifest"), "{text}");
    }
}
