//! Entry points of the fuzz targets in `vmm/fuzz/`, shared with the ordinary test that
//! replays their committed corpora (`tests/fuzz_corpus.rs`). Each takes what a hostile
//! guest (or a hostile kernel file) controls, must never panic, and asserts the bounds its
//! target promises. Files and sockets are fixtures the caller owns (this crate has no
//! temp-file dependency), created once per process by the fuzz targets.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::acpi_pm::AcpiPm;
use crate::devices::bus::{Bus, SharedDevice};
use crate::devices::console::{ConsoleLog, ConsoleSink, ConsoleWriter, SerialConsole, KEPT_LINES};
use crate::devices::i8042::I8042;
use crate::devices::pvpanic::PvPanic;
use crate::virtio::block::{BlockWorker, Disk};
use crate::virtio::vsock::backend::VsockBackend;
use crate::virtio::vsock::device::VsockWorker;
use crate::virtio::vsock::muxer::{Muxer, MAX_CONNECTIONS};
use crate::virtio::vsock::packet::{check_payload, PacketHeader, HEADER_SIZE};
use crate::virtio::vsock::unix::parse_connect_line;
use crate::virtio::{Block, Interrupt, MmioTransport};

/// Guest memory of the queue targets.
pub const MEM_SIZE: usize = 1 << 20;
/// Size of every fuzzed queue.
pub const QUEUE_SIZE: u16 = 16;
/// Descriptor table of queue `i` at `DESC_BASE + i * 0x1000`.
pub const DESC_BASE: u64 = 0x1000;
/// Available ring of queue `i` at `AVAIL_BASE + i * 0x1000`.
pub const AVAIL_BASE: u64 = 0x10000;
/// Used ring of queue `i` at `USED_BASE + i * 0x1000`.
pub const USED_BASE: u64 = 0x20000;
/// Buffers live here; fuzzed descriptor addresses are folded into this area unless bit 15
/// of the descriptor's flags (unused by virtio) asks for the raw, probably bad, address.
pub const DATA_BASE: u64 = 0x40000;
/// Size of the buffer area.
pub const DATA_SIZE: u64 = 0x40000;
/// Guest memory the kernel loader target loads into.
pub const KERNEL_MEM: u64 = 64 << 20;

/// Guest memory plus `n` ready queues whose descriptor tables, avail rings and buffer
/// contents come from `data`, the way a hostile guest driver would lay them out: per queue
/// 16 descriptors (16 bytes each: addr, len, flags, next) then the avail ring (flags, idx,
/// 16 entries); after the last queue, the buffer area from [`DATA_BASE`].
pub fn guest_with_queues(data: &[u8], n: usize) -> (GuestMemoryMmap, Vec<Queue>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let mut input = data;
    let mut take = |len: usize| -> Vec<u8> {
        let k = len.min(input.len());
        let (a, b) = input.split_at(k);
        input = b;
        let mut v = a.to_vec();
        v.resize(len, 0);
        v
    };
    let mut queues = Vec::new();
    for i in 0..n as u64 {
        let desc = DESC_BASE + i * 0x1000;
        let avail = AVAIL_BASE + i * 0x1000;
        let used = USED_BASE + i * 0x1000;
        for d in 0..u64::from(QUEUE_SIZE) {
            let raw = take(16);
            let word = |o: usize, n: usize| {
                raw[o..o + n]
                    .iter()
                    .rev()
                    .fold(0u64, |a, &b| a << 8 | u64::from(b))
            };
            let mut addr = word(0, 8);
            let len = word(8, 4) as u32;
            let flags = word(12, 2) as u16;
            let next = word(14, 2) as u16;
            if flags & 0x8000 == 0 {
                addr = DATA_BASE + addr % DATA_SIZE;
            }
            let at = desc + d * 16;
            mem.write_obj(addr, GuestAddress(at)).expect("in memory");
            mem.write_obj(len, GuestAddress(at + 8)).expect("in memory");
            mem.write_obj(flags & 0x7fff, GuestAddress(at + 12))
                .expect("in memory");
            mem.write_obj(next, GuestAddress(at + 14))
                .expect("in memory");
        }
        let ring = take(4 + 2 * usize::from(QUEUE_SIZE));
        mem.write_slice(&ring, GuestAddress(avail))
            .expect("in memory");
        let mut q = Queue::new(QUEUE_SIZE).expect("queue size");
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        queues.push(q);
    }
    let rest = take(DATA_SIZE as usize);
    mem.write_slice(&rest, GuestAddress(DATA_BASE))
        .expect("in memory");
    (mem, queues)
}

/// virtio-blk request handling over fuzzed descriptor chains, against `disk`.
pub fn block_queue(data: &[u8], disk: Arc<Disk>) {
    let (mem, mut queues) = guest_with_queues(data, 1);
    let queue = queues.remove(0);
    let events = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut worker = BlockWorker::new(mem, queue, events, Interrupt::new().expect("irq"), disk);
    worker.process_queue();
    worker.process_queue();
}

/// Arbitrary register access sequences against the virtio-mmio transport of a block device
/// on `image`. Each op is 7 bytes: kind (bit 0 = write, bits 1-2 = width 1/2/4/8), offset
/// (le16, masked to the window), value (le32).
pub fn mmio_registers(data: &[u8], image: &Path) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let blk = Block::new(image, true, None).expect("block device");
    let mut t = MmioTransport::new(mem, Box::new(blk)).expect("transport");
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
}

/// Arbitrary guest port I/O against the platform devices (16550 console with its
/// line/panic parser, i8042, pvpanic, ACPI PM) through the port bus. Each op is 4 bytes:
/// kind (bit 0 = write, bits 1-2 = width 1/2/4/8), port (le16), value byte. Whatever the
/// guest wrote, the kept console lines stay bounded.
pub fn platform_ports(data: &[u8]) {
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(ConsoleLog::default()));
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let writer = ConsoleWriter::new(ConsoleSink::Off, log.clone(), tx.clone());
    let mut bus = Bus::new();
    let serial: SharedDevice = Arc::new(Mutex::new(SerialConsole::new(irq, writer)));
    bus.insert(0x3f8, 8, serial).expect("free range");
    bus.insert(0x60, 5, Arc::new(Mutex::new(I8042::new(tx.clone()))))
        .expect("free range");
    bus.insert(0x505, 1, Arc::new(Mutex::new(PvPanic::new(tx.clone()))))
        .expect("free range");
    bus.insert(0x600, 2, Arc::new(Mutex::new(AcpiPm::new(tx))))
        .expect("free range");
    for op in data.chunks_exact(4) {
        let width = [1usize, 2, 4, 8][usize::from((op[0] >> 1) & 3)];
        let port = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let mut buf = [op[3]; 8];
        if op[0] & 1 == 1 {
            bus.write(port, &buf[..width]);
        } else {
            bus.read(port, &mut buf[..width]);
        }
    }
    let report = log.lock().expect("log").panic_report();
    assert!(report.len() <= KEPT_LINES + 2);
    assert!(report.iter().all(|l| l.len() <= 512));
    while rx.try_recv().is_ok() {}
}

/// The vsock header codec, payload checks and the host CONNECT line parser.
pub fn vsock_packet(data: &[u8]) {
    if let Some(raw) = data.first_chunk::<HEADER_SIZE>() {
        let h = PacketHeader::from_bytes(raw);
        assert_eq!(&h.to_bytes(), raw);
        if check_payload(&h, data.len() - HEADER_SIZE).is_ok() && h.op == 5 {
            assert!(h.len as usize <= data.len() - HEADER_SIZE);
        }
    }
    let _ = parse_connect_line(data);
}

/// The host side of the vsock device: the VMM's listening socket at `path` (non-blocking),
/// with something listening on `path_1024` so guest connects to port 1024 succeed.
#[derive(Debug)]
pub struct VsockHost {
    /// The listener the muxer accepts host connections on.
    pub listener: Arc<UnixListener>,
    /// Its path.
    pub path: PathBuf,
}

/// The vsock device's queue handling: fuzzed RX, TX and event queues (guest CID 3) processed
/// synchronously by the real device and Unix backend, three passes.
pub fn vsock_queue(data: &[u8], host: &VsockHost) {
    let (mem, queues) = guest_with_queues(data, 3);
    let events = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let backend = Muxer::new(3, host.listener.clone(), host.path.clone()).expect("muxer");
    let mut device = VsockWorker::new(mem, queues, events, Interrupt::new().expect("irq"), backend)
        .expect("device");
    for _ in 0..3 {
        device.process_queues();
    }
    assert!(device.backend().connection_count() <= MAX_CONNECTIONS);
}

/// A kernel file with arbitrary contents (written to `scratch`, a path the caller owns)
/// loaded into 64 MiB of guest memory: ELF and bzImage parsing return Ok or a typed error,
/// and a loaded bzImage (with the area it decompresses into) ends inside guest memory.
pub fn load_kernel(data: &[u8], scratch: &Path) {
    std::fs::write(scratch, data).expect("write the kernel file");
    let mem = crate::layout::create_guest_memory(KERNEL_MEM).expect("guest memory");
    let Ok(k) = crate::boot::load_kernel(&mem, scratch) else {
        return;
    };
    if k.setup_header.is_some() {
        assert!(k.kernel_end <= KERNEL_MEM, "{k:?}");
    }
    let _ = crate::boot::initrd_addr_max(KERNEL_MEM, &k);
}
