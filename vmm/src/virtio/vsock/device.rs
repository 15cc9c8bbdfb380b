//! The device half of vsock: the rx/tx/event queues and the interrupt. It
//! parses TX packets and hands them to the backend, and lets the backend fill
//! RX buffers; connections live behind [`VsockBackend`].

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::VsockBackend;
use super::packet::{self, HEADER_SIZE};
use crate::virtio::interrupt::Interrupt;
use crate::virtio::queue::{self, pop_chain, Pop};
use crate::virtio::worker::DeviceWorker;

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_EVENT: u64 = 2;
const TOKEN_BACKEND: u64 = 3;

/// The vsock worker state: queues on one side, a backend on the other.
pub struct VsockWorker<B: VsockBackend> {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    queue_events: Vec<EventFd>,
    interrupt: Interrupt,
    backend: B,
    rx_broken: bool,
    tx_broken: bool,
    signal: bool,
}

impl<B: VsockBackend> VsockWorker<B> {
    /// Set up the worker; `queues` and `queue_events` are rx, tx, event.
    pub fn new(
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
        interrupt: Interrupt,
        backend: B,
    ) -> io::Result<Self> {
        if queues.len() != 3 || queue_events.len() != 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "vsock needs 3 queues",
            ));
        }
        // We never post to the event queue (no transport reset without snapshots).
        queues.truncate(2);
        let txq = queues.pop().unwrap_or_default();
        let rxq = queues.pop().unwrap_or_default();
        Ok(VsockWorker {
            mem,
            rxq,
            txq,
            queue_events,
            interrupt,
            backend,
            rx_broken: false,
            tx_broken: false,
            signal: false,
        })
    }

    /// The backend (tests and diagnostics).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// One synchronous pass without waiting: handle the guest's TX packets,
    /// fill its RX buffers, raise the interrupt if needed. Returns true when the
    /// TX budget ran out with packets left. The fuzz targets call this directly.
    pub fn process_queues(&mut self) -> bool {
        let more = self.process_tx();
        self.process_rx();
        self.backend.settle();
        if self.signal {
            self.signal = false;
            self.interrupt.signal_used_queue();
        }
        more
    }

    fn process_tx(&mut self) -> bool {
        if self.tx_broken {
            return false;
        }
        let (mem, backend) = (&self.mem, &mut self.backend);
        let budget = queue::budget(&self.txq);
        let drained = queue::drain(&mut self.txq, mem, budget, |chain| {
            match chain.reader(mem) {
                Ok(mut reader) => match packet::read_tx_header(&mut reader) {
                    Ok(h) => backend.send_pkt(&h, &mut reader),
                    Err(e) => tracing::debug!("vsock: dropping malformed packet: {e}"),
                },
                Err(e) => tracing::debug!("vsock: bad tx chain: {e}"),
            }
            0
        });
        self.tx_broken = drained.broken;
        self.signal |= drained.handled > 0;
        drained.more
    }

    /// Fill RX buffers until the ring is empty or the backend has nothing to send.
    fn process_rx(&mut self) {
        if self.rx_broken {
            return;
        }
        let mem = self.mem.clone();
        loop {
            let chain = match pop_chain(&mut self.rxq, &mem) {
                Pop::Chain(c) => c,
                Pop::Empty => return,
                Pop::Broken => {
                    // A corrupted ring stops RX until the device is reset.
                    self.rx_broken = true;
                    return;
                }
            };
            let head = chain.head_index();
            let used = match chain.writer(&mem) {
                Ok(mut w) if w.available_bytes() >= HEADER_SIZE => {
                    match self.backend.recv_pkt(&mut w) {
                        Some(n) => n,
                        None => {
                            self.rxq.go_to_previous_position();
                            return;
                        }
                    }
                }
                _ => {
                    // Unusable buffer: hand it back empty rather than stall the queue.
                    tracing::debug!("vsock: rx buffer too small or invalid");
                    0
                }
            };
            if let Err(e) = self.rxq.add_used(&mem, head, used) {
                tracing::debug!("vsock: cannot return rx descriptor {head}: {e}");
            }
            self.signal = true;
        }
    }
}

impl<B: VsockBackend> DeviceWorker for VsockWorker<B> {
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![
            (self.queue_events[0].as_raw_fd(), TOKEN_RX),
            (self.queue_events[1].as_raw_fd(), TOKEN_TX),
            (self.queue_events[2].as_raw_fd(), TOKEN_EVENT),
            (self.backend.as_raw_fd(), TOKEN_BACKEND),
        ]
    }

    fn process(&mut self) -> bool {
        self.process_queues()
    }

    fn ready(&mut self, token: u64, _events: u32) {
        match token {
            TOKEN_RX | TOKEN_TX | TOKEN_EVENT => {
                let _ = self.queue_events[token as usize].read();
            }
            _ => self.backend.notify(),
        }
    }
}
