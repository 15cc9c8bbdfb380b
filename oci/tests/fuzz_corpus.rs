//! Replays the committed corpora of `oci/fuzz/` through the entry functions the fuzz
//! targets call (`voidbox_oci::fuzzing`), so a crash found once stays fixed without a
//! nightly toolchain. `generate_corpus` (ignored) rewrites the seeds:
//! `cargo test -p voidbox-oci --test fuzz_corpus -- --ignored`.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use voidbox_oci::fuzzing::{self, LAYOUT_SEPARATOR};
use voidbox_oci::Digest;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Calls `f` on every file of the target's corpus; fails on a missing or empty corpus.
fn replay(target: &str, f: fn(&[u8])) {
    let dir = corpus(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        n += 1;
    }
    assert!(n > 0, "{} holds no seeds", dir.display());
}

#[test]
fn parse_manifest_corpus() {
    replay("parse_manifest", fuzzing::parse_manifest_bytes);
}

#[test]
fn parse_reference_corpus() {
    replay("parse_reference", fuzzing::parse_reference);
}

#[test]
fn unpack_layer_corpus() {
    replay("unpack_layer", fuzzing::unpack_layer);
}

#[test]
fn debugfs_script_corpus() {
    replay("debugfs_script", fuzzing::debugfs_script);
}

#[test]
fn docker_archive_import_corpus() {
    replay("docker_archive_import", fuzzing::docker_archive_import);
}

#[test]
fn oci_layout_import_corpus() {
    replay("oci_layout_import", fuzzing::oci_layout_import);
}

#[test]
fn registry_error_corpus() {
    replay("registry_error", fuzzing::registry_error_body);
}

#[test]
fn debugfs_words_follow_libss_quoting() {
    assert_eq!(
        fuzzing::debugfs_words(r#"sif "/a ""b"" c" uid 0"#),
        ["sif", "/a \"b\" c", "uid", "0"]
    );
    assert_eq!(fuzzing::debugfs_words("cd  \"/\"\t"), ["cd", "/"]);
}

/// A small layer: a directory, a file, a symlink, a hardlink, a whiteout and an opaque marker.
fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, ty: tar::EntryType, link: Option<&str>, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(if ty == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    };
    add("etc/", tar::EntryType::Directory, None, b"");
    add("etc/hostname", tar::EntryType::Regular, None, b"voidbox\n");
    add("etc/alias", tar::EntryType::Symlink, Some("hostname"), b"");
    add("etc/hard", tar::EntryType::Link, Some("etc/hostname"), b"");
    add("etc/.wh.gone", tar::EntryType::Regular, None, b"");
    add("var/.wh..wh..opq", tar::EntryType::Regular, None, b"");
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn config() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer()).to_string()]},
    }))
    .unwrap()
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": Digest::of(data).to_string(), "size": data.len()})
}

fn image_manifest(layer_blob: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config()),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer_blob)],
    }))
    .unwrap()
}

fn index(entries: &[(&[u8], &str, Option<&str>)]) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(doc, media_type, tag)| {
            let mut d = descriptor(media_type, doc);
            d["platform"] = json!({"architecture": "amd64", "os": "linux"});
            if let Some(tag) = tag {
                d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
            }
            d
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap()
}

fn layout(docs: &[&[u8]]) -> Vec<u8> {
    docs.join(LAYOUT_SEPARATOR)
}

/// Records of the `debugfs_script` input: kind byte (0 file, 1 dir, 2 symlink, 3 FIFO,
/// 4 char device, 5 file with xattr as `path=name`) and raw name, NUL-separated.
fn names(records: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, name) in records {
        out.push(b'0' + kind);
        out.extend_from_slice(name);
        out.push(0);
    }
    out
}

#[test]
#[ignore = "rewrites fuzz/corpus; run explicitly with --ignored"]
fn generate_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let layer_tar = layer();
    let layer_gz = gzip(&layer_tar);
    let manifest = image_manifest(&layer_gz);
    let idx = index(&[(
        &manifest,
        "application/vnd.oci.image.manifest.v1+json",
        Some("v1"),
    )]);
    let nested = index(&[(&idx, "application/vnd.oci.image.index.v1+json", Some("v1"))]);

    write("parse_manifest", "image_manifest", &manifest);
    write("parse_manifest", "index", &idx);
    write("parse_manifest", "config", &config());
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": Digest::of(b"a").to_string(), "size": 1,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": Digest::of(b"b").to_string(), "size": 1,
             "platform": {"architecture": "amd64", "os": "linux"}}]
    }))
    .unwrap();
    write("parse_manifest", "docker_manifest_list", &list);

    for (name, text) in [
        ("short", "busybox".to_string()),
        ("port_tag", "127.0.0.1:5000/a/b:v1".to_string()),
        ("digest", format!("localhost:1/x@{}", Digest::of(b"x"))),
        ("oci_layout", "oci:./layout:v2".to_string()),
        ("docker_archive", "docker-archive:./image.tar".to_string()),
        ("platform", "linux/arm64/v8".to_string()),
    ] {
        write("parse_reference", name, text.as_bytes());
    }

    write("unpack_layer", "tar", &layer_tar);
    write("unpack_layer", "gzip", &layer_gz);
    let mut evil = tar::Header::new_gnu();
    evil.as_old_mut().name[..9].copy_from_slice(b"../escape");
    evil.set_size(1);
    evil.set_cksum();
    let mut escape = evil.as_bytes().to_vec();
    escape.extend_from_slice(&[b'x'; 512]);
    escape.extend_from_slice(&[0; 1024]);
    write("unpack_layer", "dotdot", &escape);

    write(
        "debugfs_script",
        "plain",
        &names(&[
            (1, b"etc"),
            (0, b"etc/passwd"),
            (2, b"bin"),
            (3, b"run/fifo"),
        ]),
    );
    write(
        "debugfs_script",
        "quotes_and_spaces",
        &names(&[
            (0, b"a \"quoted\" name"),
            (1, b"dir with spaces"),
            (4, b"dir with spaces/null \"dev\""),
            (0, b"\"\""),
        ]),
    );
    write(
        "debugfs_script",
        "injection_attempts",
        &names(&[
            (0, b"tab\there;semi"),
            (0, b"\xff\xfe latin-1 \xe9"),
            (0, b"dq\"\" sif / uid 0"),
            // The unpacker refuses the layer here: a newline cannot be quoted for debugfs.
            (0, b"x\nrm /etc/passwd"),
        ]),
    );
    write(
        "debugfs_script",
        "xattrs",
        &names(&[
            (5, b"bin/ping=security.capability"),
            (5, b"f=user.with space"),
            (5, b"g=user.\"quote"),
            (5, b"h=user.new\nline"),
        ]),
    );

    let config = config();
    let docker = tar_of(&[
        (
            "manifest.json",
            &serde_json::to_vec(&json!([{
                "Config": "config.json",
                "RepoTags": ["example:1"],
                "Layers": ["layer1/layer.tar", "layer2/layer.tar"],
            }]))
            .unwrap(),
        ),
        ("config.json", &config),
        ("layer1/layer.tar", &layer_tar),
        ("layer2/layer.tar", &layer_gz),
    ]);
    write("docker_archive_import", "two_layers", &docker);
    let missing = tar_of(&[
        (
            "manifest.json",
            br#"[{"Config":"c.json","Layers":["nope.tar"]}]"#,
        ),
        ("c.json", &config),
    ]);
    write("docker_archive_import", "missing_layer", &missing);

    write(
        "oci_layout_import",
        "image",
        &layout(&[&idx, &manifest, &config, &layer_gz]),
    );
    write(
        "oci_layout_import",
        "nested_index",
        &layout(&[&nested, &idx, &manifest, &config, &layer_gz]),
    );
    write(
        "oci_layout_import",
        "missing_blob",
        &layout(&[&idx, &manifest]),
    );

    let status = |code: u16, body: &[u8]| [&(code - 400).to_le_bytes()[..], body].concat();
    let envelope = |code: &str| {
        serde_json::to_vec(&json!({"errors": [{"code": code, "message": "m", "detail": {"x": 1}}]}))
            .unwrap()
    };
    write(
        "registry_error",
        "manifest_unknown",
        &status(404, &envelope("MANIFEST_UNKNOWN")),
    );
    write(
        "registry_error",
        "denied",
        &status(403, &envelope("DENIED")),
    );
    write("registry_error", "unauthorized", &status(401, b""));
    write(
        "registry_error",
        "toomanyrequests",
        &status(429, &envelope("TOOMANYREQUESTS")),
    );
    write(
        "registry_error",
        "html_502",
        &status(502, b"<html><body>Bad Gateway</body></html>"),
    );
}
