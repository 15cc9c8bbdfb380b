//! A minimal virtio driver for tests: it drives a device only through the
//! MmioTransport registers and split rings laid out in guest memory, the way
//! the Linux virtio_mmio driver does.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::MmioTransport;
use super::{status, VirtioDevice};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// Guest memory size used by the tests.
pub const MEM_SIZE: usize = 16 << 20;
/// Where the rings live; buffers are allocated above `HEAP_START`.
const RING_AREA: u64 = 0x10_0000;
const HEAP_START: u64 = 0x40_0000;

pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    /// Continue allocating descriptors from index `i`.
    pub fn next_desc_reset(&mut self, i: u16) {
        self.next_desc = i;
    }
}

pub struct TestDriver {
    pub mem: GuestMemoryMmap,
    pub transport: MmioTransport,
    pub queues: Vec<DriverQueue>,
    heap: u64,
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

impl TestDriver {
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = guest_memory();
        let transport = MmioTransport::new(mem.clone(), device).unwrap();
        TestDriver {
            mem,
            transport,
            queues: Vec::new(),
            heap: HEAP_START,
        }
    }

    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read_reg(0x70)
    }

    pub fn device_features(&mut self) -> u64 {
        self.write_reg(0x14, 0);
        let lo = self.read_reg(0x10);
        self.write_reg(0x14, 1);
        let hi = self.read_reg(0x10);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; returns whether the
    /// device accepted the features.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write_reg(0x70, 0);
        self.write_reg(0x70, status::ACKNOWLEDGE);
        self.write_reg(0x70, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(0x24, 0);
        self.write_reg(0x20, features as u32);
        self.write_reg(0x24, 1);
        self.write_reg(0x20, (features >> 32) as u32);
        self.write_reg(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.status() & status::FEATURES_OK != 0
    }

    /// Lay out queue `index` with `size` entries and mark it ready.
    pub fn setup_queue(&mut self, index: u32, size: u16) {
        let base = RING_AREA + u64::from(index) * 0x10_0000 / 4;
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 0xfff) & !0xfff;
        // Fresh rings start zeroed, as a driver allocates them.
        let ring_bytes = (used + 6 + 8 * u64::from(size) - desc) as usize;
        self.mem
            .write_slice(&vec![0u8; ring_bytes], GuestAddress(desc))
            .unwrap();
        self.write_reg(0x30, index);
        self.write_reg(0x38, u32::from(size));
        self.write_addr(0x80, desc);
        self.write_addr(0x90, avail);
        self.write_addr(0xa0, used);
        self.write_reg(0x44, 1);
        let q = DriverQueue {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        let i = index as usize;
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, || DriverQueue {
                size: 0,
                desc: 0,
                avail: 0,
                used: 0,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            });
        }
        self.queues[i] = q;
    }

    pub fn write_addr(&mut self, reg: u64, addr: u64) {
        self.write_reg(reg, addr as u32);
        self.write_reg(reg + 4, (addr >> 32) as u32);
    }

    pub fn driver_ok(&mut self) {
        let s = self.status();
        self.write_reg(0x70, s | status::DRIVER_OK);
    }

    /// Allocate `len` bytes of guest memory for buffers (16-byte aligned).
    pub fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.heap;
        self.heap = (self.heap + len as u64 + 15) & !15;
        assert!(self.heap < MEM_SIZE as u64, "test heap exhausted");
        addr
    }

    /// Write raw descriptor `i` of queue `q`.
    pub fn write_desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.queues[q].desc + 16 * u64::from(i);
        self.mem.write_obj(addr, GuestAddress(d)).unwrap();
        self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
    }

    /// Publish `head` in the avail ring (without notifying).
    pub fn publish(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        let slot = dq.avail + 4 + 2 * u64::from(dq.avail_idx % dq.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        let idx = dq.avail_idx;
        let avail = dq.avail;
        self.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Set the avail index to an arbitrary value (hostile tests).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let avail = self.queues[q].avail;
        self.queues[q].avail_idx = idx;
        self.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    }

    pub fn notify(&mut self, q: u32) {
        self.write_reg(0x50, q);
    }

    /// Add a chain of (addr, len, device_writable) buffers, publish and notify.
    /// Returns the head index.
    pub fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        for (n, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = (head + n as u16) % size;
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            let next = (i + 1) % size;
            if n + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(q, i, addr, len, flags, next);
        }
        self.queues[q].next_desc = (head + bufs.len() as u16) % size;
        self.publish(q, head);
        self.notify(q as u32);
        head
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.queues[q].used + 2))
            .unwrap()
    }

    /// The next used element (id, len), if the device returned one.
    pub fn try_used(&mut self, q: usize) -> Option<(u32, u32)> {
        let dq = &self.queues[q];
        if self.used_idx(q) == dq.used_seen {
            return None;
        }
        let elem = dq.used + 4 + 8 * u64::from(dq.used_seen % dq.size);
        let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        self.queues[q].used_seen = self.queues[q].used_seen.wrapping_add(1);
        Some((id, len))
    }

    /// Wait for the next used element; panics after 10 s.
    pub fn wait_used(&mut self, q: usize) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(u) = self.try_used(q) {
                return u;
            }
            assert!(
                Instant::now() < deadline,
                "device did not return a buffer on queue {q}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ack interrupts as the guest's handler would; returns the status read.
    pub fn ack_interrupt(&mut self) -> u32 {
        let s = self.read_reg(0x60);
        self.write_reg(0x64, s);
        s
    }
}
