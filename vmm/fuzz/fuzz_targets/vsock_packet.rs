//! The vsock header codec, payload checks and the host CONNECT line parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voidbox_vmm::virtio::vsock::packet::{check_payload, PacketHeader, HEADER_SIZE};
use voidbox_vmm::virtio::vsock::unix::parse_connect_line;

fuzz_target!(|data: &[u8]| {
    if let Some(raw) = data.get(..HEADER_SIZE) {
        let raw: &[u8; HEADER_SIZE] = raw.try_into().unwrap();
        let h = PacketHeader::from_bytes(raw);
        assert_eq!(&h.to_bytes(), raw);
        if check_payload(&h, data.len() - HEADER_SIZE).is_ok() && h.op == 5 {
            assert!(h.len as usize <= data.len() - HEADER_SIZE);
        }
    }
    let _ = parse_connect_line(data);
});
