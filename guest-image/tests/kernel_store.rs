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
