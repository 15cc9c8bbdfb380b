//! Replays the committed corpora of `guest-image/fuzz/` through the public functions the
//! fuzz targets call, so a crash found once stays fixed without a nightly toolchain.
//! `generate_corpus` (ignored) rewrites the seeds:
//! `cargo test -p voidbox-guest-image --test fuzz_corpus -- --ignored`.

use std::path::{Path, PathBuf};

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

/// The body of `fuzz/fuzz_targets/bzimage_payload.rs`.
fn bzimage_payload(data: &[u8]) {
    let _ = voidbox_guest_image::bzimage::locate_payload(data, Path::new("fuzz"));
}

/// The body of `fuzz/fuzz_targets/modinfo.rs`.
fn modinfo(data: &[u8]) {
    let _ = voidbox_guest_image::modules::modinfo(data);
}

#[test]
fn bzimage_payload_corpus() {
    replay("bzimage_payload", bzimage_payload);
}

#[test]
fn modinfo_corpus() {
    replay("modinfo", modinfo);
}

/// A bzImage whose setup header (boot protocol 2.15, one setup sector) points at `payload`.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes()); // payload_offset
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes()); // payload_length
    img.extend_from_slice(&[0; 16]);
    img.extend_from_slice(payload);
    img
}

/// An ELF64 relocatable with a `.modinfo` section holding `info` and a section name table.
fn module(info: &[u8]) -> Vec<u8> {
    let shstrtab = b"\0.modinfo\0.shstrtab\0";
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1;
    elf[0x10] = 1; // ET_REL
    elf[0x12] = 62; // x86_64
    let strtab_off = elf.len();
    elf.extend_from_slice(shstrtab);
    let info_off = elf.len();
    elf.extend_from_slice(info);
    elf.resize(elf.len().div_ceil(8) * 8, 0);
    let shoff = elf.len();
    let section = |name: u32, ty: u32, off: usize, size: usize| {
        let mut s = vec![0u8; 64];
        s[0..4].copy_from_slice(&name.to_le_bytes());
        s[4..8].copy_from_slice(&ty.to_le_bytes());
        s[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
        s[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
        s
    };
    elf.extend(section(0, 0, 0, 0));
    elf.extend(section(1, 1, info_off, info.len()));
    elf.extend(section(10, 3, strtab_off, shstrtab.len()));
    elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    elf
}

#[test]
#[ignore = "rewrites fuzz/corpus; run explicitly with --ignored"]
fn generate_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let xz = bzimage(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0, 1, 2, 3, 4]);
    let p = voidbox_guest_image::bzimage::locate_payload(&xz, Path::new("seed")).unwrap();
    assert_eq!(p.len, 12);
    write("bzimage_payload", "xz", &xz);
    write(
        "bzimage_payload",
        "gzip",
        &bzimage(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]),
    );
    write(
        "bzimage_payload",
        "lz4",
        &bzimage(&[0x02, 0x21, 0x4c, 0x18]),
    );
    let mut old = bzimage(&[0x1f, 0x8b]);
    old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
    write("bzimage_payload", "protocol_2_04", &old);

    let info = b"license=GPL\0name=virtio_blk\0depends=virtio,virtio_ring\0vermagic=6.1.0 SMP\0";
    let ko = module(info);
    let found = voidbox_guest_image::modules::modinfo(&ko).expect("seed module parses");
    assert_eq!(found[1], "name=virtio_blk");
    write("modinfo", "virtio_blk", &ko);
    write("modinfo", "empty_modinfo", &module(b""));
    let mut bad_strndx = ko.clone();
    bad_strndx[0x3e] = 9;
    write("modinfo", "bad_shstrndx", &bad_strndx);
}
