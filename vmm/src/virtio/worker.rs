//! A device worker thread that can be told to stop and is joined on stop/drop.

use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Error;

/// Handle to a running device worker. Dropping it stops and joins the thread.
pub(crate) struct WorkerHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Spawn `body` on a named thread; it receives the EventFd that becomes
    /// readable when the worker must stop (it should poll it with its other fds).
    pub(crate) fn spawn<F>(name: &str, body: F) -> Result<Self, Error>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let worker_stop = stop.try_clone().map_err(Error::EventFd)?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || body(worker_stop))
            .map_err(Error::SpawnWorker)?;
        Ok(WorkerHandle {
            stop,
            thread: Some(thread),
        })
    }

    /// Ask the worker to stop and wait for it.
    pub(crate) fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                tracing::error!("virtio: cannot signal worker stop: {e}");
                return;
            }
            if thread.join().is_err() {
                tracing::error!("virtio: device worker panicked");
            }
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// Outcome of taking the next available chain from a queue.
pub(crate) enum Pop<'m> {
    /// A chain to process.
    Chain(DescriptorChain<&'m GuestMemoryMmap>),
    /// Nothing available right now.
    Empty,
    /// The driver corrupted the ring (e.g. an avail index more than the queue
    /// size ahead); the queue is unusable until the device is reset.
    Broken,
}

/// Take the next available descriptor chain, telling an empty ring apart from a
/// corrupted one (virtio-queue's `pop_descriptor_chain` returns `None` for both).
pub(crate) fn pop_chain<'m>(queue: &mut Queue, mem: &'m GuestMemoryMmap) -> Pop<'m> {
    if !queue.ready() {
        return Pop::Empty;
    }
    match queue.iter(mem) {
        Ok(mut iter) => match iter.next() {
            Some(chain) => Pop::Chain(chain),
            None => Pop::Empty,
        },
        Err(e) => {
            tracing::warn!("virtio: queue unusable: {e}");
            Pop::Broken
        }
    }
}
