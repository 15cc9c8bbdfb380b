//! A guest's output archive (untrusted tar bytes) unpacked on the host:
//! never a panic, and never a file outside the destination directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().unwrap();
    let dest = outer.path().join("out");
    let _ = voidbox::runtime::files::unpack_into(data, &dest, "fuzz");
    for entry in std::fs::read_dir(outer.path()).unwrap().flatten() {
        assert_eq!(
            entry.file_name(),
            "out",
            "something was written outside the destination"
        );
    }
});
