//! The virtio-blk worker thread: waits for queue notifications, runs requests.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::request;
use crate::virtio::interrupt::Interrupt;
use crate::virtio::worker::{pop_chain, Pop};

const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;

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

    /// Process notifications until `stop` becomes readable.
    pub fn run(mut self, stop: EventFd) {
        let epoll = match Self::epoll(&self.queue_event, &stop) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("virtio-blk: cannot set up epoll: {e}");
                return;
            }
        };
        // The driver may have queued requests before DRIVER_OK took effect.
        let mut more = self.process_queue();
        let mut events = [EpollEvent::default(); 4];
        loop {
            let timeout = if more { 0 } else { -1 };
            let n = match epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-blk: epoll wait failed: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                if event.data() == TOKEN_STOP {
                    return;
                }
                let _ = self.queue_event.read();
            }
            more = self.process_queue();
        }
    }

    fn epoll(queue_event: &EventFd, stop: &EventFd) -> std::io::Result<Epoll> {
        use std::os::unix::io::AsRawFd;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            queue_event.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_QUEUE),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )?;
        Ok(epoll)
    }

    /// Run the available requests. Returns true when the per-round budget ran
    /// out with work left, so a guest that keeps the ring full cannot keep the
    /// worker from noticing a stop request.
    pub fn process_queue(&mut self) -> bool {
        if self.broken || !self.queue.ready() {
            return false;
        }
        let budget = usize::from(self.queue.size()) * 2;
        let mut handled = 0;
        let mut more = false;
        let mut idle_rounds = 0;
        loop {
            if self.queue.disable_notification(&self.mem).is_err() {
                self.broken = true;
                break;
            }
            let mut progressed = false;
            loop {
                if handled >= budget {
                    more = true;
                    break;
                }
                let chain = match pop_chain(&mut self.queue, &self.mem) {
                    Pop::Chain(chain) => chain,
                    Pop::Empty => break,
                    Pop::Broken => {
                        self.broken = true;
                        break;
                    }
                };
                let head = chain.head_index();
                let len = request::process(&mut self.bounce, &self.disk, &self.mem, chain);
                if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                    tracing::warn!("virtio-blk: cannot return descriptor {head}: {e}");
                }
                handled += 1;
                progressed = true;
            }
            if more || self.broken {
                break;
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) if progressed => idle_rounds = 0,
                // The driver may have added a chain between our pop and the re-check.
                Ok(true) if idle_rounds == 0 => idle_rounds += 1,
                Ok(true) => {
                    // Avail index moved but nothing could be popped twice: corrupted ring.
                    tracing::warn!("virtio-blk: avail ring makes no progress; queue stopped");
                    self.broken = true;
                    break;
                }
                Ok(false) => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
        if handled > 0 && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        more
    }
}
