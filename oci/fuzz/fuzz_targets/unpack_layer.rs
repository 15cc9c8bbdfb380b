//! Arbitrary bytes as a layer (plain or gzip tar): the unpacker must return Ok or a typed
//! error, never panic, and never write outside its staging directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voidbox_oci::unpack::{Tree, UnpackLimits};

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().expect("tempdir");
    let root = outer.path().join("tree");
    std::fs::create_dir(&root).expect("mkdir");
    let limits = UnpackLimits {
        max_total_bytes: 1 << 20,
        max_entries: 1000,
    };
    let mut tree = Tree::new(&root, limits);
    // Two applications exercise whiteouts/opaque dirs against an existing tree.
    let _ = tree.apply_layer("fuzz-1", std::io::Cursor::new(data), None);
    let _ = tree.apply_layer("fuzz-2", std::io::Cursor::new(data), None);
    // Nothing may appear next to the staging directory.
    let siblings = std::fs::read_dir(outer.path()).expect("readdir").count();
    assert_eq!(siblings, 1, "unpacker wrote outside its root");
    for (path, _) in tree.entries() {
        assert!(path.is_relative());
        assert!(!path.components().any(|c| matches!(c, std::path::Component::ParentDir)));
    }
});
