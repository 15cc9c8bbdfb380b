//! Registry failures and hostile registry data, against a real `docker-registry` on
//! 127.0.0.1: each failure class gets its own error naming the problem and the fix;
//! oversize documents are refused; guest-image pulls skip the disk but verify blobs.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::*;
use oci_client::secrets::RegistryAuth;
use voidbox_oci::manifest::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use voidbox_oci::{Digest, OciError, PullOptions, PullPolicy, RegistryOptions, Store};

fn fresh_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn registry_down_is_unreachable_not_authentication() {
    let (_home, store) = fresh_store();
    let addr = format!("127.0.0.1:{}", free_port());
    let err = pull(
        &store,
        &format!("{addr}/test/img:1"),
        &PullOptions::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, OciError::RegistryUnreachable { .. }),
        "{err:?}"
    );
    assert!(
        text.contains(&format!("cannot reach the registry at {addr}")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
    assert!(text.contains("--offline"), "{text}");
    assert!(!text.contains("authentication"), "{text}");
    assert!(store.list_refs().unwrap().is_empty());
    assert_store_consistent(&store);
}

#[test]
fn dns_failure_is_unreachable() {
    let (_home, store) = fresh_store();
    let err = pull(
        &store,
        "no-such-host.invalid/test/img:1",
        &PullOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OciError::RegistryUnreachable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
}

#[test]
fn tls_to_a_plain_http_registry_names_insecure_registry() {
    // A real docker-registry speaks plain HTTP; reached as a non-loopback name it is
    // contacted over HTTPS. 127.0.0.2 is loopback to the kernel but not to our check,
    // so a plain-HTTP responder there stands in for a remote plain-HTTP registry.
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        // Answer the one TLS ClientHello with plain HTTP, as such a registry would.
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let (_home, store) = fresh_store();
    let err = pull(
        &store,
        &format!("{addr}/test/img:1"),
        &PullOptions::default(),
    )
    .unwrap_err();
    server.join().unwrap();
    let text = err.to_string();
    assert!(matches!(err, OciError::RegistryTls { .. }), "{err:?}");
    assert!(
        text.contains(&format!("--insecure-registry {addr}")),
        "{text}"
    );
}

#[test]
fn unknown_repository_or_tag_is_image_not_found() {
    let registry = Registry::start();
    let (_src_dir, src) = fresh_store();
    let manifest = rich_image(&src, "nf");
    push(
        &src,
        &manifest,
        &format!("{}/test/known:1", registry.addr),
        &RegistryOptions::default(),
    );
    let (_home, store) = fresh_store();
    for missing in ["test/unknown:1", "test/known:2"] {
        let reference = format!("{}/{missing}", registry.addr);
        let err = pull(&store, &reference, &PullOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, OciError::ImageNotFound { .. }), "{err:?}");
        assert!(text.contains("image not found"), "{text}");
        assert!(text.contains(&reference), "{text}");
    }
    assert!(store.list_refs().unwrap().is_empty());
}

#[test]
fn refused_credentials_are_authentication_errors() {
    let registry = Registry::start_with(Some(("bob", "pw")));
    let (_src_dir, src) = fresh_store();
    let manifest = rich_image(&src, "a");
    let reference = format!("{}/private/img:1", registry.addr);
    let good = RegistryOptions {
        auth: Some(RegistryAuth::Basic("bob".into(), "pw".into())),
        ..Default::default()
    };
    push(&src, &manifest, &reference, &good);
    let (_home, store) = fresh_store();
    for auth in [
        RegistryAuth::Anonymous,
        RegistryAuth::Basic("bob".into(), "wrong".into()),
    ] {
        let options = PullOptions {
            registry: RegistryOptions {
                auth: Some(auth),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = pull(&store, &reference, &options).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, OciError::AuthenticationFailed { .. }),
            "{err:?}"
        );
        assert!(text.contains("VOIDBOX_REGISTRY_USERNAME"), "{text}");
    }
}

/// Re-writes the image manifest `manifest` in `store` with `edit` applied; returns the new digest.
fn edit_manifest(
    store: &Store,
    manifest: &Digest,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Digest {
    let mut doc: serde_json::Value =
        serde_json::from_slice(&store.read_blob(manifest).unwrap()).unwrap();
    edit(&mut doc);
    store
        .put_blob_bytes(&serde_json::to_vec(&doc).unwrap(), None)
        .unwrap()
}

#[test]
fn oversize_config_and_manifest_claims_are_refused() {
    let registry = Registry::start();
    let (_src_dir, src) = fresh_store();
    let manifest = rich_image(&src, "big");
    // A config descriptor claiming more than the config cap: refused before download.
    let huge_config = edit_manifest(&src, &manifest, |doc| {
        doc["config"]["size"] = serde_json::json!(MAX_CONFIG_BYTES + 1);
    });
    let reference = format!("{}/test/bigconfig:1", registry.addr);
    push(&src, &huge_config, &reference, &RegistryOptions::default());
    let (_home, store) = fresh_store();
    let err = pull(&store, &reference, &PullOptions::default()).unwrap_err();
    assert!(
        matches!(err, OciError::DocumentTooLarge { cap, .. } if cap == MAX_CONFIG_BYTES),
        "{err:?}"
    );
    assert!(err.to_string().contains("cap"), "{err}");
    assert!(store.list_refs().unwrap().is_empty());

    // An index whose platform entry claims a manifest past the manifest cap.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.to_string(),
            "size": MAX_MANIFEST_BYTES + 1,
            "platform": {"os": "linux", "architecture": "amd64"},
        }],
    });
    let index = src
        .put_blob_bytes(&serde_json::to_vec(&index).unwrap(), None)
        .unwrap();
    let reference = format!("{}/test/bigindex:1", registry.addr);
    push(&src, &index, &reference, &RegistryOptions::default());
    let err = pull(&store, &reference, &PullOptions::default()).unwrap_err();
    assert!(
        matches!(err, OciError::DocumentTooLarge { cap, .. } if cap == MAX_MANIFEST_BYTES),
        "{err:?}"
    );
    assert!(store.list_refs().unwrap().is_empty());
    assert_store_consistent(&store);
}

#[test]
fn oversize_oci_layout_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Valid JSON start, then padding past the cap: never parsed, never read whole.
    let mut data = b"{\"schemaVersion\": 2, \"manifests\": [], \"pad\": \"".to_vec();
    data.resize(MAX_MANIFEST_BYTES as usize + 10, b'a');
    data.extend_from_slice(b"\"}");
    std::fs::write(dir.path().join("index.json"), &data).unwrap();
    let (_home, store) = fresh_store();
    let err = pull(
        &store,
        &format!("oci:{}", dir.path().display()),
        &PullOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, OciError::DocumentTooLarge { .. }), "{err:?}");
}

#[test]
fn pull_without_disk_verifies_blobs_and_builds_nothing() {
    let mut registry = Registry::start();
    let (_src_dir, src) = fresh_store();
    let manifest = rich_image(&src, "guest");
    let reference = format!("{}/test/guest:1", registry.addr);
    push(&src, &manifest, &reference, &RegistryOptions::default());
    let no_disk = PullOptions {
        build_disk: false,
        ..Default::default()
    };

    // A tampered layer is still rejected when no disk is built.
    let doc: serde_json::Value =
        serde_json::from_slice(&src.read_blob(&manifest).unwrap()).unwrap();
    let layer = Digest::parse(doc["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let data_file = registry.blob_data(layer.hex());
    let original = std::fs::read(&data_file).unwrap();
    let mut bad = original.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0xff;
    std::fs::write(&data_file, &bad).unwrap();
    let (_home, store) = fresh_store();
    assert!(pull(&store, &reference, &no_disk).is_err());
    assert!(!store.has_blob(&layer), "tampered blob entered the store");
    assert!(store.list_refs().unwrap().is_empty());
    std::fs::write(&data_file, &original).unwrap();

    let image = pull(&store, &reference, &no_disk).unwrap();
    assert_eq!(image.manifest, manifest);
    assert!(!image.disk.exists(), "a disk was built for a no-disk pull");
    let disks: Vec<_> = std::fs::read_dir(store.root().join("disks"))
        .unwrap()
        .collect();
    assert!(disks.is_empty(), "disks/ is not empty: {disks:?}");
    for d in std::iter::once(doc["config"]["digest"].as_str().unwrap()).chain(
        doc["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap()),
    ) {
        assert!(store.has_blob(&Digest::parse(d).unwrap()), "{d} missing");
    }

    // Cached without a disk: served from the store with the registry gone.
    registry.stop();
    for policy in [PullPolicy::IfMissing, PullPolicy::Never] {
        let again = pull(
            &store,
            &reference,
            &PullOptions {
                policy,
                ..no_disk.clone()
            },
        )
        .unwrap();
        assert_eq!(again.manifest, manifest);
        assert!(!again.disk.exists());
    }
    assert_store_consistent(&store);
}

/// A hostile plain-HTTP "registry" on loopback: `/v2/` answers 200; a manifest under
/// `/v2/announced/` is 5 MiB with a Content-Length, one under `/v2/streamed/` is 5 MiB
/// with none (read until the connection closes). Serves until the test process exits.
fn hostile_registry() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&request).into_owned();
            let huge = 5usize << 20;
            let _ = if line.starts_with("GET /v2/announced/") {
                conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {huge}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .and_then(|_| conn.write_all(&vec![b' '; huge]))
            } else if line.starts_with("GET /v2/streamed/") {
                conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .and_then(|_| conn.write_all(&vec![b' '; huge]))
            } else {
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                )
            };
        }
    });
    addr
}

#[test]
fn oversize_manifest_from_a_registry_is_refused_unbuffered() {
    let addr = hostile_registry();
    let (_home, store) = fresh_store();
    for repo in ["announced", "streamed"] {
        let err = pull(
            &store,
            &format!("{addr}/{repo}/img:1"),
            &PullOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, OciError::DocumentTooLarge { cap, .. } if cap == MAX_MANIFEST_BYTES),
            "{repo}: {err:?}"
        );
        assert!(err.to_string().contains("manifest of"), "{err}");
    }
    assert!(store.list_refs().unwrap().is_empty());
    assert_store_consistent(&store);
}
