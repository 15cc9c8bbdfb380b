//! virtio-blk driven through the MMIO registers and real split rings.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress};

use super::request::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use super::*;
use crate::virtio::status;
use crate::virtio::test_driver::{TestDriver, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

fn image(sectors: u64) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).unwrap();
    f.flush().unwrap();
    f
}

fn driver(path: &std::path::Path, ro: bool, serial: Option<&str>) -> TestDriver {
    crate::seccomp::enable_for_tests_if_requested();
    let blk = Block::new(path, ro, serial.map(str::to_string)).unwrap();
    let mut drv = TestDriver::new(Box::new(blk));
    let features = drv.device_features();
    assert!(drv.negotiate(features));
    drv.setup_queue(0, 16);
    drv.driver_ok();
    assert_eq!(drv.status() & status::DEVICE_NEEDS_RESET, 0);
    drv
}

struct Done {
    status: u8,
    used_len: u32,
    data: Vec<u8>,
}

/// Send one request: header, then `data_len` bytes (device-readable holding
/// `out` for writes, device-writable otherwise), then the status byte.
fn request(
    drv: &mut TestDriver,
    type_: u32,
    sector: u64,
    data_len: u32,
    out: Option<&[u8]>,
) -> Done {
    let hdr = drv.alloc(16);
    drv.mem.write_obj(type_, GuestAddress(hdr)).unwrap();
    drv.mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
    drv.mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    let data = drv.alloc(data_len as usize);
    if let Some(out) = out {
        drv.mem.write_slice(out, GuestAddress(data)).unwrap();
    }
    let st = drv.alloc(1);
    drv.mem.write_obj(0xffu8, GuestAddress(st)).unwrap();
    let mut bufs = vec![(hdr, 16, false)];
    if data_len > 0 {
        bufs.push((data, data_len, out.is_none()));
    }
    bufs.push((st, 1, true));
    let head = drv.add_chain(0, &bufs);
    let (id, used_len) = drv.wait_used(0);
    assert_eq!(id, u32::from(head));
    let mut buf = vec![0u8; data_len as usize];
    drv.mem.read_slice(&mut buf, GuestAddress(data)).unwrap();
    Done {
        status: drv.mem.read_obj(GuestAddress(st)).unwrap(),
        used_len,
        data: buf,
    }
}

#[test]
fn config_and_features() {
    let img = image(64);
    let blk = Block::new(img.path(), true, None).unwrap();
    let mut drv = TestDriver::new(Box::new(blk));
    assert_eq!(drv.read_reg(0x08), 2);
    let f = drv.device_features();
    assert_ne!(f & (1 << 32), 0, "VERSION_1 offered");
    assert_ne!(f & (1 << 5), 0, "RO offered for a read-only disk");
    assert_eq!(f & (1 << 29), 0, "EVENT_IDX not offered");
    let mut cap = [0u8; 8];
    drv.transport.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 64);
    assert_eq!(drv.read_reg(0x108), SIZE_MAX);
    assert_eq!(drv.read_reg(0x10c), SEG_MAX);
    // Reads past the config space return zeros, never panic.
    let mut far = [0xaau8; 8];
    drv.transport.read(0xff8, &mut far);
    assert_eq!(far, [0; 8]);

    let rw = Block::new(img.path(), false, None);
    assert!(
        matches!(rw, Err(crate::virtio::Error::DiskLocked { .. })),
        "a read-write open must not share an image with a reader"
    );
}

#[test]
fn read_write_flush_get_id() {
    let img = image(64);
    let mut drv = driver(img.path(), false, Some("disk-serial-1"));

    let r = request(&mut drv, T_IN, 2, 1024, None);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert_eq!(r.used_len, 1025);
    let expect: Vec<u8> = (1024..2048u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(r.data, expect);

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    let w = request(&mut drv, T_OUT, 10, 4096, Some(&pattern));
    assert_eq!(w.status, VIRTIO_BLK_S_OK);
    assert_eq!(w.used_len, 1);
    let f = request(&mut drv, T_FLUSH, 0, 0, None);
    assert_eq!(f.status, VIRTIO_BLK_S_OK);
    let on_disk = std::fs::read(img.path()).unwrap();
    assert_eq!(&on_disk[10 * 512..10 * 512 + 4096], &pattern[..]);

    let r = request(&mut drv, T_IN, 10, 4096, None);
    assert_eq!(r.data, pattern);

    let id = request(&mut drv, T_GET_ID, 0, 20, None);
    assert_eq!(id.status, VIRTIO_BLK_S_OK);
    assert_eq!(&id.data[..13], b"disk-serial-1");
    assert!(id.data[13..].iter().all(|&b| b == 0));

    // Used-buffer interrupts were raised.
    assert_ne!(drv.ack_interrupt() & 1, 0);
}

#[test]
fn read_only_refuses_writes() {
    let img = image(8);
    let before = std::fs::read(img.path()).unwrap();
    let mut drv = driver(img.path(), true, None);
    let w = request(&mut drv, T_OUT, 0, 512, Some(&[0x55; 512]));
    assert_eq!(w.status, VIRTIO_BLK_S_IOERR);
    assert_eq!(std::fs::read(img.path()).unwrap(), before);
    let r = request(&mut drv, T_IN, 0, 512, None);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert_eq!(r.data[..], before[..512]);
    // No serial configured: GET_ID is unsupported.
    assert_eq!(
        request(&mut drv, T_GET_ID, 0, 20, None).status,
        VIRTIO_BLK_S_UNSUPP
    );
    assert_eq!(
        request(&mut drv, 0x1234, 0, 0, None).status,
        VIRTIO_BLK_S_UNSUPP
    );
}

#[test]
fn out_of_range_requests_fail_cleanly() {
    let img = image(8);
    let mut drv = driver(img.path(), false, None);
    assert_eq!(
        request(&mut drv, T_IN, 8, 512, None).status,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(&mut drv, T_IN, 7, 1024, None).status,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(&mut drv, T_IN, u64::MAX, 512, None).status,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(&mut drv, T_OUT, u64::MAX / 512, 512, Some(&[1; 512])).status,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(&mut drv, T_IN, 0, 100, None).status,
        VIRTIO_BLK_S_IOERR
    );
    // Still healthy afterwards.
    assert_eq!(
        request(&mut drv, T_IN, 7, 512, None).status,
        VIRTIO_BLK_S_OK
    );
}

#[test]
fn indirect_descriptors() {
    let img = image(8);
    let mut drv = driver(img.path(), false, None);
    let hdr = drv.alloc(16);
    drv.mem.write_obj(T_IN, GuestAddress(hdr)).unwrap();
    drv.mem.write_obj(1u64, GuestAddress(hdr + 8)).unwrap();
    let data = drv.alloc(512);
    let st = drv.alloc(1);
    let table = drv.alloc(48);
    let entries: [(u64, u32, u16, u16); 3] = [
        (hdr, 16, DESC_F_NEXT, 1),
        (data, 512, DESC_F_NEXT | DESC_F_WRITE, 2),
        (st, 1, DESC_F_WRITE, 0),
    ];
    for (i, (a, l, f, n)) in entries.iter().enumerate() {
        let d = table + 16 * i as u64;
        drv.mem.write_obj(*a, GuestAddress(d)).unwrap();
        drv.mem.write_obj(*l, GuestAddress(d + 8)).unwrap();
        drv.mem.write_obj(*f, GuestAddress(d + 12)).unwrap();
        drv.mem.write_obj(*n, GuestAddress(d + 14)).unwrap();
    }
    drv.write_desc(0, 0, table, 48, DESC_F_INDIRECT, 0);
    drv.publish(0, 0);
    drv.notify(0);
    let (_, len) = drv.wait_used(0);
    assert_eq!(len, 513);
    assert_eq!(
        drv.mem.read_obj::<u8>(GuestAddress(st)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    let mut buf = [0u8; 512];
    drv.mem.read_slice(&mut buf, GuestAddress(data)).unwrap();
    let expect: Vec<u8> = (512..1024u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(buf[..], expect[..]);
}

#[test]
fn hostile_chains_do_not_break_the_device() {
    let img = image(8);
    let mut drv = driver(img.path(), false, None);
    let size = drv.queues[0].size;

    // A descriptor loop: 0 -> 1 -> 0 -> ... all readable, no status byte.
    drv.write_desc(0, 0, 0x5000, 16, DESC_F_NEXT, 1);
    drv.write_desc(0, 1, 0x5000, 16, DESC_F_NEXT, 0);
    drv.publish(0, 0);
    // A self loop of writable descriptors.
    drv.write_desc(0, 2, 0x6000, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
    drv.publish(0, 2);
    // Out-of-range and huge buffers.
    drv.write_desc(0, 3, 0x5000, 16, DESC_F_NEXT, 4);
    drv.write_desc(0, 4, u64::MAX - 8, 4096, DESC_F_NEXT | DESC_F_WRITE, 5);
    drv.write_desc(0, 5, 0x7000, 1, DESC_F_WRITE, 0);
    drv.publish(0, 3);
    drv.write_desc(0, 6, 0x5000, u32::MAX, DESC_F_NEXT, 7);
    drv.write_desc(0, 7, 0x7000, u32::MAX, DESC_F_WRITE, 0);
    drv.publish(0, 6);
    // A next index past the queue and a head index past the queue.
    drv.write_desc(0, 8, 0x5000, 16, DESC_F_NEXT, 999);
    drv.publish(0, 8);
    drv.publish(0, size + 3);
    // An indirect table that is not a multiple of 16 bytes / nested indirect.
    drv.write_desc(0, 9, 0x8000, 17, DESC_F_INDIRECT, 0);
    drv.publish(0, 9);
    drv.notify(0);
    // Every chain but the out-of-range head is returned to the driver.
    for _ in 0..6 {
        drv.wait_used(0);
    }
    assert_eq!(drv.try_used(0), None);
    // The device still serves a well-formed request (fresh descriptors).
    drv.queues[0].next_desc_reset(10);
    let r = request(&mut drv, T_IN, 0, 512, None);
    assert_eq!(r.status, VIRTIO_BLK_S_OK);
    assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 8 * 512);
}

#[test]
fn avail_index_jump_stops_the_queue_without_spinning() {
    let img = image(8);
    let mut drv = driver(img.path(), false, None);
    let size = drv.queues[0].size;
    drv.set_avail_idx(0, size + 5);
    drv.notify(0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(drv.try_used(0), None);
    // A reset and fresh setup brings the device back.
    let f = drv.device_features();
    assert!(drv.negotiate(f));
    drv.setup_queue(0, 16);
    drv.driver_ok();
    assert_eq!(
        request(&mut drv, T_IN, 0, 512, None).status,
        VIRTIO_BLK_S_OK
    );
}
