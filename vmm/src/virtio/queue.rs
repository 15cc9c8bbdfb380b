//! Queue utilities shared by every device: taking a chain while telling an
//! empty ring from a corrupted one, and the one loop that drains a queue with
//! notification suppression (virtio-queue's README, "Notification
//! suppression"), a per-pass budget and a corruption check.

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
            crate::guest_warn!("virtio: queue unusable: {e}");
            Pop::Broken
        }
    }
}

/// What one [`drain`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Chains processed and returned to the used ring.
    pub handled: usize,
    /// The budget ran out with chains left: call again after other work.
    pub more: bool,
    /// The ring is corrupted; the queue must not be touched until reset.
    pub broken: bool,
}

/// The per-pass budget: twice the ring, so a guest that keeps refilling the
/// ring cannot keep a worker from its other events (such as a stop request).
pub(crate) fn budget(queue: &Queue) -> usize {
    usize::from(queue.size()) * 2
}

/// Pop and process chains until the ring is empty (with notifications
/// re-enabled, re-checking for chains added meanwhile) or `budget` chains were
/// handled. `process` returns the used length written for each chain.
pub(crate) fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    budget: usize,
    mut process: F,
) -> Drained
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut out = Drained::default();
    if !queue.ready() {
        return out;
    }
    let mut idle_rounds = 0;
    loop {
        if queue.disable_notification(mem).is_err() {
            out.broken = true;
            return out;
        }
        let mut progressed = false;
        loop {
            if out.handled >= budget {
                out.more = true;
                return out;
            }
            let chain = match pop_chain(queue, mem) {
                Pop::Chain(chain) => chain,
                Pop::Empty => break,
                Pop::Broken => {
                    out.broken = true;
                    return out;
                }
            };
            let head = chain.head_index();
            let len = process(chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                crate::guest_warn!("virtio: cannot return descriptor {head}: {e}");
            }
            out.handled += 1;
            progressed = true;
        }
        match queue.enable_notification(mem) {
            Ok(true) if progressed => idle_rounds = 0,
            // The driver may have added a chain between our pop and the re-check.
            Ok(true) if idle_rounds == 0 => idle_rounds += 1,
            Ok(true) | Err(_) => {
                // The avail index moved but nothing could be popped twice: corrupted ring.
                crate::guest_warn!("virtio: avail ring makes no progress; queue stopped");
                out.broken = true;
                return out;
            }
            Ok(false) => return out,
        }
    }
}
