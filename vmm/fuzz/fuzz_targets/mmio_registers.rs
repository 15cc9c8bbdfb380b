//! Arbitrary register access sequences against the virtio-mmio transport.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use voidbox_vmm::virtio::{Block, MmioTransport};

fn image() -> &'static tempfile::NamedTempFile {
    static IMAGE: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0; 4096]).unwrap();
        f
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let blk = Block::new(image().path(), true, None).unwrap();
    let mut t = MmioTransport::new(mem, Box::new(blk)).unwrap();
    // Each op: kind (bit 0 = write, bits 1-2 = width 1/2/4/8), offset (le16), value (le32).
    for op in data.chunks_exact(7) {
        let width = [1usize, 2, 4, 8][usize::from((op[0] >> 1) & 3)];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1fff);
        let value = u64::from(u32::from_le_bytes([op[3], op[4], op[5], op[6]]));
        if op[0] & 1 == 1 {
            t.write(offset, &value.to_le_bytes()[..width]);
        } else {
            let mut buf = vec![0u8; width];
            t.read(offset, &mut buf);
        }
    }
});
