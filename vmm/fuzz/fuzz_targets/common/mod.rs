//! Shared setup: guest memory whose split rings and buffers come from the
//! fuzz input, the way a hostile guest driver would lay them out.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM_SIZE: usize = 1 << 20;
pub const QUEUE_SIZE: u16 = 16;
const DESC_BASE: u64 = 0x1000;
const AVAIL_BASE: u64 = 0x10000;
const USED_BASE: u64 = 0x20000;
/// Buffers live here; fuzzed descriptor addresses are folded into this area
/// unless the input asks for a raw (probably out-of-range) address.
const DATA_BASE: u64 = 0x40000;
const DATA_SIZE: u64 = 0x40000;

/// Guest memory plus `n` ready queues whose descriptor tables, avail rings
/// and buffer contents are taken from `data`.
pub fn guest_with_queues(data: &[u8], n: usize) -> (GuestMemoryMmap, Vec<Queue>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
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
            let mut addr = u64::from_le_bytes(raw[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes(raw[12..14].try_into().unwrap());
            let next = u16::from_le_bytes(raw[14..16].try_into().unwrap());
            // Bit 15 of flags (unused by virtio) keeps the raw address.
            if flags & 0x8000 == 0 {
                addr = DATA_BASE + addr % DATA_SIZE;
            }
            let at = desc + d * 16;
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags & 0x7fff, GuestAddress(at + 12))
                .unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let ring = take(4 + 2 * usize::from(QUEUE_SIZE));
        mem.write_slice(&ring, GuestAddress(avail)).unwrap();
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        queues.push(q);
    }
    let rest = take(DATA_SIZE as usize);
    mem.write_slice(&rest, GuestAddress(DATA_BASE)).unwrap();
    (mem, queues)
}
