//! The virtio-blk worker: on each queue notification, runs the requests.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::request;
use crate::virtio::interrupt::Interrupt;
use crate::virtio::queue;
use crate::virtio::worker::DeviceWorker;

/// Processes the request queue of one virtio-blk device (also driven
/// synchronously by the fuzz targets).
pub struct BlockWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    queue_event: EventFd,
    interrupt: Interrupt,
    disk: Arc<Disk>,
    bounce: Box<[u8; request::CHUNK]>,
    broken: bool,
}

impl BlockWorker {
    /// A worker over `queue` (as the transport configured it) and `disk`.
    pub fn new(
        mem: GuestMemoryMmap,
        queue: Queue,
        queue_event: EventFd,
        interrupt: Interrupt,
        disk: Arc<Disk>,
    ) -> Self {
        BlockWorker {
            mem,
            queue,
            queue_event,
            interrupt,
            disk,
            bounce: Box::new([0; request::CHUNK]),
            broken: false,
        }
    }

    /// Run the available requests. Returns true when the per-pass budget ran
    /// out with work left, so a guest that keeps the ring full cannot keep the
    /// worker from noticing a stop request.
    pub fn process_queue(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let (disk, mem, bounce) = (&self.disk, &self.mem, &mut self.bounce);
        let budget = queue::budget(&self.queue);
        let drained = queue::drain(&mut self.queue, mem, budget, |chain| {
            request::process(bounce, disk, mem, chain)
        });
        self.broken = drained.broken;
        if drained.handled > 0 && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        drained.more
    }
}

impl DeviceWorker for BlockWorker {
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![(self.queue_event.as_raw_fd(), 0)]
    }

    fn process(&mut self) -> bool {
        self.process_queue()
    }

    fn ready(&mut self, _token: u64, _events: u32) {
        let _ = self.queue_event.read();
    }
}
