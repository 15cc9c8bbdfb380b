//! The interrupt line of one virtio-mmio device: the InterruptStatus bits the
//! driver reads and acknowledges, the EventFd the VMM wires to KVM_IRQFD, and
//! the device's "needs reset" flag, which a failed worker raises.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit: the device added buffers to a used ring.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the device configuration (or status) changed.
pub const INT_CONFIG: u32 = 2;

/// Shared between the transport (register reads/acks) and the device worker
/// (which raises interrupts). Cloning shares the same line.
#[derive(Clone, Debug)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    event: Arc<EventFd>,
    failed: Arc<AtomicBool>,
}

impl Interrupt {
    /// A fresh line with no pending interrupt.
    pub fn new() -> io::Result<Self> {
        Ok(Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            failed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Tell the driver that used buffers are ready: set bit 0, then kick the irqfd.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tell the driver that the configuration or device status changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    /// The device's worker stopped on an error: the transport reports
    /// DEVICE_NEEDS_RESET, and the driver hears of it through a config interrupt.
    pub fn device_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.signal_config_change();
    }

    /// Whether the device's worker failed since the last reset.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn raise(&self, bit: u32) {
        // The status bit must be visible before the guest's handler runs.
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.event.write(1) {
            tracing::warn!("virtio: cannot signal interrupt eventfd: {e}");
        }
    }

    /// The pending InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clear the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clear everything (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.failed.store(false, Ordering::SeqCst);
    }

    /// The EventFd to register with KVM_IRQFD.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}
