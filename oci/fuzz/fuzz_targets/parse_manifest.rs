//! Registry documents (manifests, indexes, configs) from arbitrary bytes: typed errors only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voidbox_oci::manifest::{parse_config, parse_manifest, select_platform, Manifest};
use voidbox_oci::Platform;

fuzz_target!(|data: &[u8]| {
    if let Ok(Manifest::Index(index)) = parse_manifest(data, "fuzz") {
        let _ = select_platform(&index, &Platform::default(), "fuzz");
    }
    let _ = parse_config(data, "fuzz");
});
