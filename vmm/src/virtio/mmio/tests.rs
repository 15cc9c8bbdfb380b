//! Register-level tests of the transport: identity, feature negotiation,
//! handshake order, queue validation. Hostile sequences must end in
//! DEVICE_NEEDS_RESET (or a refused FEATURES_OK), never a panic.

use std::io::Write;

use super::*;
use crate::virtio::test_driver::TestDriver;
use crate::virtio::Block;

fn block_driver() -> (TestDriver, tempfile::NamedTempFile) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    let blk = Block::new(f.path(), false, None).unwrap();
    (TestDriver::new(Box::new(blk)), f)
}

const ACK_DRIVER: u32 = status::ACKNOWLEDGE | status::DRIVER;

#[test]
fn identity_registers() {
    let (mut d, _f) = block_driver();
    assert_eq!(d.read_reg(0x000), 0x7472_6976);
    assert_eq!(d.read_reg(0x004), 2);
    assert_eq!(d.read_reg(0x008), 2);
    assert_eq!(d.read_reg(0x00c), VENDOR_ID);
    d.write_reg(0x30, 0);
    assert_eq!(d.read_reg(0x34), 256);
    d.write_reg(0x30, 7);
    assert_eq!(d.read_reg(0x34), 0, "absent queue has max size 0");
    assert_eq!(d.read_reg(0xb0), u32::MAX, "no shared memory regions");
    // Odd-sized and unaligned register accesses are ignored.
    let mut b = [0xffu8; 2];
    d.transport.read(0x000, &mut b);
    assert_eq!(b, [0, 0]);
    d.transport.write(0x070, &[1]);
    assert_eq!(d.status(), 0);
    let mut big = [0xffu8; 8];
    d.transport.read(0x001, &mut big);
    assert_eq!(big, [0; 8]);
}

#[test]
fn features_must_be_offered_and_include_version_1() {
    let (mut d, _f) = block_driver();
    let offered = d.device_features();
    assert!(!d.negotiate(offered | (1 << 40)), "unoffered bit refused");
    assert!(!d.negotiate(offered & !(1 << 32)), "VERSION_1 required");
    assert!(d.negotiate(offered));
    // Features written after FEATURES_OK: needs reset.
    d.write_reg(0x20, 0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    // Reset clears everything, including NEEDS_RESET.
    d.write_reg(0x70, 0);
    assert_eq!(d.status(), 0);
    assert!(d.negotiate(offered));
}

#[test]
fn status_order_is_enforced() {
    let bad_sequences: &[&[u32]] = &[
        &[status::DRIVER],
        &[
            status::ACKNOWLEDGE,
            status::ACKNOWLEDGE | status::FEATURES_OK,
        ],
        &[
            status::ACKNOWLEDGE,
            ACK_DRIVER,
            ACK_DRIVER | status::DRIVER_OK,
        ],
        &[status::ACKNOWLEDGE, ACK_DRIVER, status::ACKNOWLEDGE],
        &[status::DRIVER_OK | status::FEATURES_OK | ACK_DRIVER],
    ];
    for seq in bad_sequences {
        let (mut d, _f) = block_driver();
        let features = d.device_features();
        d.write_reg(0x24, 1);
        for &s in *seq {
            if s & status::DRIVER != 0 && d.status() & status::DRIVER != 0 {
                d.write_reg(0x20, (features >> 32) as u32);
            }
            d.write_reg(0x70, s);
        }
        let st = d.status();
        assert!(
            st & status::DEVICE_NEEDS_RESET != 0 || st & status::FEATURES_OK == 0,
            "sequence {seq:x?} ended in status {st:#x}"
        );
        assert_eq!(
            st & status::DRIVER_OK,
            0,
            "sequence {seq:x?} must not activate"
        );
    }
}

#[test]
fn driver_cannot_set_needs_reset() {
    let (mut d, _f) = block_driver();
    d.write_reg(0x70, status::ACKNOWLEDGE | status::DEVICE_NEEDS_RESET);
    assert_eq!(d.status(), status::ACKNOWLEDGE);
}

fn configure(d: &mut TestDriver, size: u32, desc: u64, avail: u64, used: u64) -> u32 {
    let f = d.device_features();
    assert!(d.negotiate(f));
    d.write_reg(0x30, 0);
    d.write_reg(0x38, size);
    d.write_addr(0x80, desc);
    d.write_addr(0x90, avail);
    d.write_addr(0xa0, used);
    d.write_reg(0x44, 1);
    d.status()
}

#[test]
fn bad_queues_are_rejected() {
    let mem = crate::virtio::test_driver::MEM_SIZE as u64;
    let cases: &[(u32, u64, u64, u64)] = &[
        (0, 0x1000, 0x2000, 0x3000),     // zero size
        (3, 0x1000, 0x2000, 0x3000),     // not a power of two
        (512, 0x1000, 0x4000, 0x6000),   // above max
        (70000, 0x1000, 0x4000, 0x6000), // above u16
        (16, 0x1008, 0x2000, 0x3000),    // misaligned desc
        (16, 0x1000, 0x2001, 0x3000),    // misaligned avail
        (16, 0x1000, 0x2000, 0x3002),    // misaligned used
        (16, mem - 16, 0x2000, 0x3000),  // desc table runs off memory
        (16, 0x1000, 1 << 40, 0x3000),   // avail outside memory
        (16, 0x1000, 0x2000, !3u64),     // used at the top of the address space
    ];
    for &(size, desc, avail, used) in cases {
        let (mut d, _f) = block_driver();
        let st = configure(&mut d, size, desc, avail, used);
        assert_ne!(
            st & status::DEVICE_NEEDS_RESET,
            0,
            "queue {size} {desc:#x} {avail:#x} {used:#x}"
        );
        d.write_reg(0x30, 0);
        assert_eq!(d.read_reg(0x44), 0, "rejected queue is not ready");
    }
    // A good queue is accepted, and changing it while ready is refused.
    let (mut d, _f) = block_driver();
    let st = configure(&mut d, 16, 0x1000, 0x2000, 0x3000);
    assert_eq!(st & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(d.read_reg(0x44), 1);
    d.write_reg(0x38, 8);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn activation_and_reset_cycles() {
    let (mut d, _f) = block_driver();
    for _ in 0..3 {
        let f = d.device_features();
        assert!(d.negotiate(f));
        d.setup_queue(0, 16);
        d.driver_ok();
        assert_eq!(d.status() & status::DRIVER_OK, status::DRIVER_OK);
        // Queue configuration after DRIVER_OK is a driver bug.
        d.write_reg(0x44, 0);
        assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
        // NEEDS_RESET after DRIVER_OK raises a configuration interrupt.
        assert_ne!(d.ack_interrupt() & 2, 0);
        d.write_reg(0x70, 0);
        assert_eq!(d.status(), 0);
        assert_eq!(d.read_reg(0x60), 0);
    }
    // Notifying absent queues and writing read-only registers is harmless.
    d.write_reg(0x50, 99);
    d.write_reg(0x000, 1);
    d.write_reg(0x100, 1);
}

#[test]
fn driver_ok_without_ready_queues_is_harmless() {
    let (mut d, _f) = block_driver();
    let f = d.device_features();
    assert!(d.negotiate(f));
    d.driver_ok();
    assert_eq!(d.status() & status::DRIVER_OK, status::DRIVER_OK);
    d.write_reg(0x50, 0);
    d.write_reg(0x70, 0);
    assert_eq!(d.status(), 0);
}

/// Audit D1: a guest looping on a bad-size register read must not fill the
/// host's disk through the VMM's log.
#[test]
fn guest_triggered_warnings_are_rate_limited() {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Lines::default();
    let sink = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::WARN)
        .finish();
    let (mut d, _f) = block_driver();
    let reads = 200_000;
    tracing::subscriber::with_default(subscriber, || {
        let mut b = [0u8; 1];
        for _ in 0..reads {
            d.transport.read(0x070, &mut b);
        }
    });
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines = text.lines().count();
    assert!(lines >= 1, "the first bad read is reported");
    // A burst per one-second window; the loop takes a few seconds at most.
    assert!(
        lines <= 20 * crate::logcap::WARN_BURST as usize,
        "{lines} log lines for {reads} bad reads"
    );
}
