//! Integration tests against a real `docker-registry` on 127.0.0.1, with images built by
//! our writer, pushed with our client, pulled into a fresh store and checked with
//! e2fsck/debugfs.

mod common;

use std::collections::BTreeMap;

use common::*;
use voidbox_oci::writer::{write_image, write_index, ImageSettings, LayerBlob};
use voidbox_oci::{
    Digest, ImageSource, OciError, Platform, PullOptions, PullPolicy, RegistryOptions, Store,
};

#[test]
fn pull_repull_offline_and_moved_tag() {
    let mut registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let v1 = rich_image(&src, "v1");
    let reference = format!("{}/test/rich:t", registry.addr);
    push(&src, &v1, &reference, &RegistryOptions::default());

    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let image = pull(&store, &reference, &PullOptions::default()).unwrap();
    assert_eq!(image.manifest, v1);
    assert!(image.moved_from.is_none());
    assert_eq!(
        image
            .config
            .config()
            .as_ref()
            .unwrap()
            .cmd()
            .as_ref()
            .unwrap()[0],
        "/bin/sh"
    );
    check_rich_disk(&image.disk, "v1");
    assert_store_consistent(&store);

    // Registry gone: the store alone serves the image; a forced pull really tries the network.
    registry.stop();
    for policy in [PullPolicy::IfMissing, PullPolicy::Never] {
        let again = pull(
            &store,
            &reference,
            &PullOptions {
                policy,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (again.manifest, again.disk),
            (v1.clone(), image.disk.clone())
        );
    }
    let err = pull(&store, &reference, &PullOptions::default()).unwrap_err();
    assert!(matches!(err, OciError::RegistryUnreachable { .. }), "{err}");
    let missing = pull(
        &store,
        "127.0.0.1:1/never/pulled:x",
        &PullOptions {
            policy: PullPolicy::Never,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        missing.to_string().contains("voidbox image pull"),
        "{missing}"
    );
    let warm = std::time::Instant::now();
    assert!(voidbox_oci::resolve_cached(
        &store,
        &ImageSource::parse(&reference).unwrap(),
        &Platform::default(),
    )
    .unwrap()
    .is_some());
    eprintln!("warm resolution: {:?}", warm.elapsed());

    // The tag moves in a new registry: noticed and reported.
    let registry = Registry::start();
    let reference = format!("{}/test/rich:t", registry.addr);
    push(&src, &v1, &reference, &RegistryOptions::default());
    assert!(pull(&store, &reference, &PullOptions::default())
        .unwrap()
        .moved_from
        .is_none());
    let v2 = rich_image(&src, "v2");
    push(&src, &v2, &reference, &RegistryOptions::default());
    let moved = pull(&store, &reference, &PullOptions::default()).unwrap();
    assert_eq!(moved.manifest, v2);
    assert_eq!(moved.moved_from, Some(v1.clone()));
    check_rich_disk(&moved.disk, "v2");
    assert_eq!(
        store.read_ref(&moved.reference).unwrap().unwrap().manifest,
        v2
    );

    // rm and prune leave a consistent, smaller store.
    let by_digest = format!("{}/test/rich@{v1}", registry.addr);
    let pinned = pull(&store, &by_digest, &PullOptions::default()).unwrap();
    assert_eq!(pinned.manifest, v1);
    assert!(store.remove_image(&moved.reference).unwrap());
    assert!(!moved.disk.exists());
    assert!(pinned.disk.exists());
    // Fresh unreferenced blobs survive the default grace period, not a zero one.
    let dangling = store.put_blob_bytes(b"not referenced", None).unwrap();
    store.prune().unwrap();
    assert!(store.has_blob(&dangling));
    store.prune_older_than(std::time::Duration::ZERO).unwrap();
    assert!(!store.has_blob(&dangling));
    assert_store_consistent(&store);
    assert!(store.has_blob(&v1) && !store.has_blob(&v2));
}

#[test]
fn tampered_blob_is_rejected() {
    let registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let manifest = rich_image(&src, "t");
    let reference = format!("{}/test/tampered:1", registry.addr);
    push(&src, &manifest, &reference, &RegistryOptions::default());
    let doc: serde_json::Value =
        serde_json::from_slice(&src.read_blob(&manifest).unwrap()).unwrap();
    let layer = Digest::parse(doc["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let data_file = registry.blob_data(layer.hex());
    let mut data = std::fs::read(&data_file).unwrap();
    let last = data.len() - 1100;
    data[last] ^= 0xff; // same size, different content
    std::fs::write(&data_file, &data).unwrap();

    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let err = pull(&store, &reference, &PullOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("digest") || text.contains("Digest"), "{text}");
    assert!(!store.has_blob(&layer), "tampered blob entered the store");
    assert!(store.list_refs().unwrap().is_empty());
    assert!(!store.disk_path(&manifest).exists());
    assert_store_consistent(&store);
}

#[test]
fn basic_auth() {
    let registry = Registry::start_with(Some(("alice", "s3cret")));
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let manifest = rich_image(&src, "auth");
    let reference = format!("{}/private/img:1", registry.addr);
    let with_auth = RegistryOptions {
        auth: Some(oci_client::secrets::RegistryAuth::Basic(
            "alice".into(),
            "s3cret".into(),
        )),
        ..Default::default()
    };
    push(&src, &manifest, &reference, &with_auth);

    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let anonymous = PullOptions {
        registry: RegistryOptions {
            auth: Some(oci_client::secrets::RegistryAuth::Anonymous),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        pull(&store, &reference, &anonymous).is_err(),
        "anonymous pull must be refused"
    );
    let wrong = PullOptions {
        registry: RegistryOptions {
            auth: Some(oci_client::secrets::RegistryAuth::Basic(
                "alice".into(),
                "nope".into(),
            )),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        pull(&store, &reference, &wrong).is_err(),
        "wrong password must be refused"
    );
    let image = pull(
        &store,
        &reference,
        &PullOptions {
            registry: with_auth,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(image.manifest, manifest);
    check_rich_disk(&image.disk, "auth");

    // Credentials found without being passed: docker config.json, then the environment
    // (in child processes, so the environment of this test binary stays untouched).
    let docker = tempfile::tempdir().unwrap();
    let token = base64_encode(b"alice:s3cret");
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{token}"}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    let empty_docker = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<(&str, String)>); 3] = [
        (
            "docker config.json",
            vec![("DOCKER_CONFIG", docker.path().display().to_string())],
        ),
        (
            "VOIDBOX_REGISTRY_USERNAME/PASSWORD",
            vec![
                ("DOCKER_CONFIG", empty_docker.path().display().to_string()),
                ("VOIDBOX_REGISTRY_USERNAME", "alice".into()),
                ("VOIDBOX_REGISTRY_PASSWORD", "s3cret".into()),
            ],
        ),
        (
            "no credentials",
            vec![("DOCKER_CONFIG", empty_docker.path().display().to_string())],
        ),
    ];
    for (i, (what, env)) in cases.iter().enumerate() {
        let home = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "credentials_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CREDENTIALS_ENV,
                format!("{}|{reference}", home.path().display()),
            )
            .env_remove("VOIDBOX_REGISTRY_USERNAME")
            .env_remove("VOIDBOX_REGISTRY_PASSWORD")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.success(), i < 2, "pull with {what}: {status}");
    }
}

const CREDENTIALS_ENV: &str = "VOIDBOX_TEST_CREDENTIALS";

/// Pulls with credentials looked up from the environment (run by [`basic_auth`]).
#[test]
fn credentials_child() {
    let Ok(spec) = std::env::var(CREDENTIALS_ENV) else {
        return;
    };
    let (home, reference) = spec.split_once('|').unwrap();
    let store = Store::open(home).unwrap();
    pull(&store, reference, &PullOptions::default()).unwrap();
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn multi_arch_index_selects_platform() {
    let registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let make = |arch: &str| {
        let mut t = RawTar::default();
        t.file("arch", 0o644, 0, arch.as_bytes());
        let layer = LayerBlob::from_tar_bytes(&src, &t.finish()).unwrap();
        let platform = Platform {
            architecture: arch.into(),
            ..Default::default()
        };
        let settings = ImageSettings {
            platform: platform.clone(),
            ..Default::default()
        };
        (
            write_image(&src, &settings, &[layer], &BTreeMap::new()).unwrap(),
            platform,
        )
    };
    let amd64 = make("amd64");
    let arm64 = make("arm64");
    let index = write_index(&src, &[arm64.clone(), amd64.clone()]).unwrap();
    let reference = format!("{}/multi/arch:1", registry.addr);
    push(&src, &index, &reference, &RegistryOptions::default());

    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let image = pull(&store, &reference, &PullOptions::default()).unwrap();
    assert_eq!(image.manifest, amd64.0);
    assert_eq!(image.index, Some(index.clone()));
    assert_eq!(ext4_cat(&image.disk, "/arch"), b"amd64");
    let arm = pull(
        &store,
        &reference,
        &PullOptions {
            platform: Platform::parse("linux/arm64").unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(arm.manifest, arm64.0);
    assert!(
        arm.moved_from.is_none(),
        "another platform is not a moved tag"
    );
    // Each platform has its own record: offline resolution gives the right one.
    for (platform, expected) in [("linux/amd64", &amd64.0), ("linux/arm64", &arm64.0)] {
        let offline = PullOptions {
            platform: Platform::parse(platform).unwrap(),
            policy: PullPolicy::Never,
            ..Default::default()
        };
        assert_eq!(
            &pull(&store, &reference, &offline).unwrap().manifest,
            expected
        );
    }
    assert_eq!(store.list_refs().unwrap().len(), 2);
    assert_eq!(ext4_cat(&arm.disk, "/arch"), b"arm64");
    let err = pull(
        &store,
        &reference,
        &PullOptions {
            platform: Platform::parse("linux/riscv64").unwrap(),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, OciError::NoMatchingPlatform { .. }), "{err}");
    assert!(
        err.to_string().contains("linux/amd64") && err.to_string().contains("linux/arm64"),
        "{err}"
    );
    assert_store_consistent(&store);
}

#[test]
fn eight_concurrent_pulls_make_one_entry() {
    let registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let manifest = rich_image(&src, "concurrent");
    let reference = format!("{}/test/concurrent:1", registry.addr);
    push(&src, &manifest, &reference, &RegistryOptions::default());

    let home = tempfile::tempdir().unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let root = home.path().to_path_buf();
                let reference = reference.clone();
                s.spawn(move || {
                    // One handle per thread: separate lock file descriptions, like processes.
                    let store = Store::open(&root).unwrap();
                    pull(&store, &reference, &PullOptions::default()).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!((&r.manifest, &r.disk), (&manifest, &results[0].disk));
        assert!(r.moved_from.is_none());
    }
    let store = Store::open(home.path()).unwrap();
    assert_eq!(store.list_refs().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(home.path().join("disks"))
            .unwrap()
            .count(),
        1
    );
    check_rich_disk(&results[0].disk, "concurrent");
    assert_store_consistent(&store);
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn skopeo_oci_layout_and_docker_archive_sources() {
    let registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let manifest = rich_image(&src, "local");
    let reference = format!("{}/test/local:1", registry.addr);
    push(&src, &manifest, &reference, &RegistryOptions::default());
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let archive = work.path().join("image.tar");
    for dest in [
        format!("oci:{}:v1", layout.display()),
        format!("docker-archive:{}", archive.display()),
    ] {
        let out = std::process::Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{reference}"),
                &dest,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy to {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let from_layout = pull(
        &store,
        &format!("oci:{}:v1", layout.display()),
        &PullOptions::default(),
    )
    .unwrap();
    // skopeo rewrites the manifest (so the digest differs); the content must not change.
    check_rich_disk(&from_layout.disk, "local");
    let err = pull(
        &store,
        &format!("oci:{}:nope", layout.display()),
        &PullOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("v1"),
        "error should list the tags: {err}"
    );
    let from_archive = pull(
        &store,
        &format!("docker-archive:{}", archive.display()),
        &PullOptions::default(),
    )
    .unwrap();
    check_rich_disk(&from_archive.disk, "local");
    assert_store_consistent(&store);
}

#[test]
fn bad_layer_fails_at_pull_time() {
    let registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let mut t = RawTar::default();
    t.symlink("lnk", "/etc")
        .file("lnk/passwd", 0o644, 0, b"root::0:0::/:/bin/sh\n");
    let layer = LayerBlob::from_tar_bytes(&src, &t.finish()).unwrap();
    let manifest = write_image(
        &src,
        &ImageSettings::default(),
        std::slice::from_ref(&layer),
        &BTreeMap::new(),
    )
    .unwrap();
    let reference = format!("{}/test/evil:1", registry.addr);
    push(&src, &manifest, &reference, &RegistryOptions::default());
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let err = pull(&store, &reference, &PullOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&layer.digest.to_string()) && text.contains("lnk/passwd"),
        "{text}"
    );
    assert!(
        store.list_refs().unwrap().is_empty(),
        "a rejected image was recorded"
    );
    assert!(!store.disk_path(&manifest).exists());
    assert_store_consistent(&store);
}

const KILLED_PULL_ENV: &str = "VOIDBOX_TEST_KILLED_PULL";

/// The victim of [`killed_pull_leaves_store_consistent`] (does nothing in a normal run).
#[test]
fn killed_pull_child() {
    let Ok(spec) = std::env::var(KILLED_PULL_ENV) else {
        return;
    };
    let (home, reference) = spec.split_once('|').unwrap();
    let store = Store::open(home).unwrap();
    let _ = pull(&store, reference, &PullOptions::default());
}

/// Incompressible pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn killed_pull_leaves_store_consistent() {
    let registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let mut layers = Vec::new();
    for i in 0..3 {
        let mut t = RawTar::default();
        t.file(&format!("big{i}"), 0o644, 0, &noise(12 << 20, i + 1));
        layers.push(gz_layer(&src, &t));
    }
    let manifest = write_image(&src, &ImageSettings::default(), &layers, &BTreeMap::new()).unwrap();
    let reference = format!("{}/test/big:1", registry.addr);
    push(&src, &manifest, &reference, &RegistryOptions::default());

    let home = tempfile::tempdir().unwrap();
    let mut killed_with_temp_files = 0;
    for delay_ms in [0u64, 100, 300] {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "killed_pull_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                KILLED_PULL_ENV,
                format!("{}|{reference}", home.path().display()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the child has temp files in its session, then a little longer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let has_temp = || {
            std::fs::read_dir(home.path().join("tmp"))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .any(|e| {
                            std::fs::read_dir(e.path())
                                .map(|mut x| x.next().is_some())
                                .unwrap_or(false)
                        })
                })
                .unwrap_or(false)
        };
        while !has_temp()
            && std::time::Instant::now() < deadline
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if has_temp() {
            killed_with_temp_files += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever the child got to: nothing half-written is visible.
        let store = Store::open(home.path()).unwrap();
        assert_store_consistent(&store);
        assert!(
            store.list_refs().unwrap().is_empty() || store.disk_path(&manifest).is_file(),
            "a ref was recorded without its disk"
        );
        drop(store);
        assert_eq!(
            std::fs::read_dir(home.path().join("tmp")).unwrap().count(),
            0,
            "the dead pull's temp files were not cleaned when the store was reopened"
        );
    }
    assert!(killed_with_temp_files > 0, "never caught the pull mid-way");
    let store = Store::open(home.path()).unwrap();
    let image = pull(&store, &reference, &PullOptions::default()).unwrap();
    assert_fsck_clean(&image.disk);
    assert_eq!(ext4_cat(&image.disk, "/big1").len(), 12 << 20);
    assert_store_consistent(&store);
}
