//! The real Debian kernel package: fetched (or reused) into a store, vmlinux extracted,
//! modules resolved in dependency order. Needs apt (or `VOIDBOX_DEB_CACHE` with the .deb).

use std::process::Command;

use voidbox_guest_image::kernel::{FetchOptions, KernelStore, GUEST_MODULES, LANE_MODULES};
use voidbox_guest_image::Error;

#[test]
fn kernel_is_fetched_unpacked_and_modules_resolve_in_order() {
    let store = KernelStore::default_store();
    let k = store
        .ensure(&FetchOptions::from_env())
        .expect("fetch the guest kernel");
    // Recorded facts match the package.
    assert!(
        k.manifest.package.starts_with("linux-image-"),
        "{:?}",
        k.manifest
    );
    assert_eq!(k.manifest.deb_sha256.len(), 64);
    assert!(k.bzimage().is_file());
    let elf = std::fs::read(k.vmlinux()).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    // A second ensure reuses the entry.
    assert_eq!(store.ensure(&FetchOptions::from_env()).unwrap().dir, k.dir);

    let mods = k.modules(GUEST_MODULES).unwrap();
    let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
    for want in [
        "virtio_mmio",
        "virtio_blk",
        "vsock",
        "vmw_vsock_virtio_transport_common",
        "ext4",
        "jbd2",
        "overlay",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let tree = k.module_tree().unwrap();
    // Dependencies first, each module once: the order finit_module needs.
    for (i, m) in mods.iter().enumerate() {
        for dep in tree.depends(&m.name).unwrap() {
            let j = names
                .iter()
                .position(|n| *n == dep)
                .unwrap_or_else(|| panic!("{dep} missing"));
            assert!(j < i, "{dep} must load before {}", m.name);
        }
        assert_eq!(names.iter().filter(|n| **n == m.name).count(), 1);
    }
    // Cross-check with modinfo(8) when installed.
    if let Ok(out) = Command::new("modinfo")
        .args(["-F", "depends"])
        .arg(&mods.last().unwrap().path)
        .output()
    {
        let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        assert_eq!(tree.depends(&mods.last().unwrap().name).unwrap(), theirs);
    }
    let lane = k.modules(LANE_MODULES).unwrap();
    assert!(lane.iter().any(|m| m.name == "kvm_amd"));
    assert!(
        lane.iter().position(|m| m.name == "kvm").unwrap()
            < lane.iter().position(|m| m.name == "kvm_amd").unwrap()
    );

    let err = k.modules(&["no_such_module"]).unwrap_err();
    assert!(matches!(err, Error::ModuleNotFound { .. }), "{err}");
}

#[test]
fn empty_store_says_how_to_get_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let err = KernelStore::new(dir.path().join("kernels"))
        .latest()
        .unwrap_err();
    assert!(err.to_string().contains("setup-kernel.sh"), "{err}");
}

#[test]
fn a_non_deb_is_rejected_without_leaving_files() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.deb");
    std::fs::write(&bogus, b"not a deb").unwrap();
    let store = KernelStore::new(dir.path().join("kernels"));
    assert!(store.add_deb(&bogus).is_err());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("kernels"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The pin setup records (scripts/setup.sh), read from the default deb cache.
fn setup_pin() -> (std::path::PathBuf, voidbox_guest_image::kernel::KernelPin) {
    let cache = voidbox_guest_image::kernel::default_deb_cache();
    let pin = voidbox_guest_image::kernel::KernelPin::read(&cache)
        .unwrap()
        .unwrap_or_else(|| panic!("no kernel pin in {}: run scripts/setup.sh", cache.display()));
    (cache, pin)
}

fn pinned_deb(
    cache: &std::path::Path,
    pin: &voidbox_guest_image::kernel::KernelPin,
) -> std::path::PathBuf {
    std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&format!("{}_", pin.package)) && n.ends_with(".deb")
        })
        .expect("the pinned .deb is kept beside its pin")
}

#[test]
fn a_pinned_kernel_is_used_exactly() {
    use voidbox_guest_image::kernel::{KernelPin, PIN_FILE};
    let (cache, pin) = setup_pin();
    let deb = pinned_deb(&cache, &pin);
    // A private cache holding the same .deb and pin, unpacked into an empty store.
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("debs");
    std::fs::create_dir(&mine).unwrap();
    std::os::unix::fs::symlink(&deb, mine.join(deb.file_name().unwrap())).unwrap();
    pin.write(&mine).unwrap();
    let store = KernelStore::new(dir.path().join("kernels"));
    let opts = FetchOptions {
        package: None,
        deb_dirs: vec![mine.clone()],
    };
    let k = store.ensure(&opts).unwrap();
    assert_eq!(
        (
            &k.manifest.package,
            &k.manifest.version,
            &k.manifest.deb_sha256
        ),
        (&pin.package, &pin.version, &pin.deb_sha256)
    );
    // A pin whose .deb does not match its checksum is refused, naming the fix.
    let other = tempfile::tempdir().unwrap();
    KernelPin {
        deb_sha256: "0".repeat(64),
        ..pin.clone()
    }
    .write(&mine)
    .unwrap();
    let e = KernelStore::new(other.path()).ensure(&opts).unwrap_err();
    assert!(e.to_string().contains("differs from the pinned"), "{e}");
    // A pin whose .deb is gone says to run setup.
    std::fs::remove_file(mine.join(deb.file_name().unwrap())).unwrap();
    let e = KernelStore::new(other.path()).ensure(&opts).unwrap_err();
    assert!(e.to_string().contains("scripts/setup.sh"), "{e}");
    assert!(mine.join(PIN_FILE).is_file());
}

#[test]
fn setup_replaces_a_recorded_kernel_debian_no_longer_has() {
    use voidbox_guest_image::kernel::{KernelPin, PinChange};
    let (cache, pin) = setup_pin();
    let deb = pinned_deb(&cache, &pin);
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("debs");
    std::fs::create_dir(&mine).unwrap();
    // The current kernel's .deb is at hand (no download); the recorded one is a version
    // Debian never had, as after a security update removed it.
    std::os::unix::fs::symlink(&deb, mine.join(deb.file_name().unwrap())).unwrap();
    let gone = KernelPin {
        version: "0.0.0-voidbox-gone".into(),
        ..pin.clone()
    };
    gone.write(&mine).unwrap();
    let store = KernelStore::new(dir.path().join("kernels"));
    let (k, change) = store.refresh_pin(&mine, Some(&pin.package)).unwrap();
    match change {
        PinChange::Replaced { old, .. } => assert_eq!(old, gone),
        other => panic!("expected the pin to be replaced, got {other:?}"),
    }
    assert_eq!(k.manifest.version, pin.version);
    assert_eq!(
        KernelPin::read(&mine).unwrap().unwrap().version,
        pin.version
    );
    // Run again: the pin is kept and nothing is fetched.
    let (_, change) = store.refresh_pin(&mine, Some(&pin.package)).unwrap();
    assert_eq!(change, PinChange::Kept);
}
