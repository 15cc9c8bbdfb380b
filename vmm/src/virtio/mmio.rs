//! The virtio-mmio transport, version 2 (virtio 1.x register layout).
//!
//! Every value the driver writes is validated: queue sizes must be powers of
//! two no larger than the device maximum, ring addresses must be aligned and
//! inside guest memory, FEATURES_OK is only accepted for offered features
//! (including VIRTIO_F_VERSION_1), and the status bits must be set in the
//! handshake order. A driver that breaks the rules gets DEVICE_NEEDS_RESET,
//! never a panic.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::Interrupt;
use super::{status, ActivateContext, Error, VirtioDevice, VIRTIO_F_VERSION_1};

/// "virt" in little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// virtio-mmio version 2 = virtio 1.x (no legacy interface).
const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("VBOX" would be confusing; "vdbx").
const VENDOR_ID: u32 = 0x7862_6476;

/// Register offsets in the window.
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Size of the MMIO window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// What the driver wrote for one queue, validated when it sets QueueReady.
#[derive(Clone, Copy, Debug, Default)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueConfig {
    /// Build a virtio-queue `Queue` from the driver's values, checking size,
    /// alignment and that all three rings lie in guest memory.
    fn to_queue(self, mem: &GuestMemoryMmap) -> Result<Queue, &'static str> {
        let mut q = Queue::new(self.max_size).map_err(|_| "invalid maximum size")?;
        q.try_set_size(self.size)
            .map_err(|_| "queue size is zero, not a power of two, or above the maximum")?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| "descriptor table not 16-byte aligned")?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(|_| "available ring not 2-byte aligned")?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(|_| "used ring not 4-byte aligned")?;
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err("rings are not inside guest memory");
        }
        Ok(q)
    }
}

/// A virtio-mmio register window in front of one [`VirtioDevice`].
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    queues: Vec<QueueConfig>,
    queue_events: Vec<EventFd>,
    interrupt: Interrupt,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
    config_generation: u32,
}

impl MmioTransport {
    /// Put `device` behind a register window; `mem` is the guest memory.
    pub fn new(mem: GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> Result<Self, Error> {
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for &max in device.queue_max_sizes() {
            if max == 0 || !max.is_power_of_two() || max > 32768 {
                return Err(Error::InvalidQueueMax(max));
            }
            queues.push(QueueConfig {
                max_size: max,
                size: max,
                ..Default::default()
            });
            queue_events.push(EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?);
        }
        Ok(MmioTransport {
            mem,
            device,
            queues,
            queue_events,
            interrupt: Interrupt::new().map_err(Error::EventFd)?,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            config_generation: 0,
        })
    }

    /// One EventFd per queue, in queue-index order (register each as an
    /// ioeventfd at window base + 0x050, datamatch = queue index).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The interrupt EventFd (register it with KVM_IRQFD for the slot's GSI).
    pub fn interrupt_event(&self) -> &EventFd {
        self.interrupt.event()
    }

    /// The device status as the driver reads it.
    pub fn device_status(&self) -> u32 {
        if self.interrupt.failed() {
            return self.status | status::DEVICE_NEEDS_RESET;
        }
        self.status
    }

    /// Virtio device type of the device behind this window.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// An MMIO read at `offset` from the window base.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.read_config(offset - reg::CONFIG, data);
            return;
        }
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            crate::guest_warn!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored (registers are 32-bit)",
                data.len()
            );
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    /// An MMIO write at `offset` from the window base.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // None of our devices has writable configuration fields.
            tracing::debug!("virtio-mmio: config write at {offset:#x} ignored");
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            crate::guest_warn!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored (registers are 32-bit)",
                data.len()
            );
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset, value);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.device.config_space();
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= config.len() {
            return;
        }
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.device_status(),
            // No shared memory regions: length all-ones means "absent".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of write-only/unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => self.write_queue(|q| q.size = u16::try_from(value).unwrap_or(0)),
            reg::QUEUE_DESC_LOW => self.write_queue(|q| set_low(&mut q.desc, value)),
            reg::QUEUE_DESC_HIGH => self.write_queue(|q| set_high(&mut q.desc, value)),
            reg::QUEUE_DRIVER_LOW => self.write_queue(|q| set_low(&mut q.avail, value)),
            reg::QUEUE_DRIVER_HIGH => self.write_queue(|q| set_high(&mut q.avail, value)),
            reg::QUEUE_DEVICE_LOW => self.write_queue(|q| set_low(&mut q.used, value)),
            reg::QUEUE_DEVICE_HIGH => self.write_queue(|q| set_high(&mut q.used, value)),
            reg::QUEUE_READY => self.write_queue_ready(value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::SHM_SEL => {}
            _ => tracing::debug!("virtio-mmio: write to read-only/unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            crate::guest_warn!("virtio-mmio: driver features written outside feature negotiation");
            self.set_needs_reset();
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            // Feature words beyond 64 bits: we offer none there, accept only zero.
            _ if value == 0 => {}
            _ => {
                crate::guest_warn!("virtio-mmio: driver acked unoffered features beyond bit 63");
                self.set_needs_reset();
            }
        }
    }

    /// Apply a queue configuration write if the queue exists and the driver may
    /// still change it (before QueueReady and before DRIVER_OK).
    fn write_queue(&mut self, apply: impl FnOnce(&mut QueueConfig)) {
        if self.status & status::DRIVER_OK != 0 {
            crate::guest_warn!("virtio-mmio: queue configuration written after DRIVER_OK");
            self.set_needs_reset();
            return;
        }
        let sel = self.queue_sel;
        match self.queues.get_mut(sel as usize) {
            Some(q) if !q.ready => apply(q),
            Some(_) => {
                crate::guest_warn!("virtio-mmio: queue {sel} configuration written while ready");
                self.set_needs_reset();
            }
            None => crate::guest_warn!("virtio-mmio: configuration of absent queue {sel} ignored"),
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        if self.status & status::DRIVER_OK != 0 {
            crate::guest_warn!("virtio-mmio: QueueReady written after DRIVER_OK");
            self.set_needs_reset();
            return;
        }
        let sel = self.queue_sel as usize;
        let Some(q) = self.queues.get(sel).copied() else {
            crate::guest_warn!("virtio-mmio: QueueReady of absent queue {sel} ignored");
            return;
        };
        if value == 0 {
            self.queues[sel].ready = false;
            return;
        }
        match q.to_queue(&self.mem) {
            Ok(_) => self.queues[sel].ready = true,
            Err(why) => {
                crate::guest_warn!("virtio-mmio: queue {sel} rejected: {why}");
                self.set_needs_reset();
            }
        }
    }

    fn notify(&mut self, index: u32) {
        // Normally KVM consumes these writes through the ioeventfds; this path
        // serves VMMs without ioeventfd and the tests.
        match self.queue_events.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    crate::guest_warn!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => crate::guest_warn!("virtio-mmio: notify of absent queue {index} ignored"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's bit; the driver cannot set or clear it.
        let needs_reset = self.status & status::DEVICE_NEEDS_RESET;
        let value = (value & !status::DEVICE_NEEDS_RESET) | needs_reset;
        let old = self.status;
        if value & old != old {
            crate::guest_warn!(
                "virtio-mmio: status {old:#x} -> {value:#x} clears bits without reset"
            );
            self.set_needs_reset();
            return;
        }
        let added = value & !old;
        if added & status::FAILED != 0 {
            crate::guest_warn!(
                "virtio-mmio: driver reported FAILED for device type {}",
                self.device.device_type()
            );
        }
        let requires = [
            (status::DRIVER, status::ACKNOWLEDGE),
            (status::FEATURES_OK, status::DRIVER),
            (status::DRIVER_OK, status::FEATURES_OK),
        ];
        for (bit, prerequisite) in requires {
            if added & bit != 0 && value & prerequisite == 0 {
                crate::guest_warn!("virtio-mmio: status bit {bit:#x} set before {prerequisite:#x}");
                self.set_needs_reset();
                return;
            }
        }
        let mut value = value;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // Leaving FEATURES_OK clear tells the driver we refuse (virtio 1.x §3.1.1).
            crate::guest_warn!(
                "virtio-mmio: refusing features {:#x} (offered {:#x}, VERSION_1 required)",
                self.acked_features,
                self.device.avail_features()
            );
            value &= !status::FEATURES_OK;
            if value & status::DRIVER_OK != 0 {
                self.set_needs_reset();
                return;
            }
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && value & status::FAILED == 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.avail_features();
        self.acked_features & !offered == 0 && self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        if self.activated {
            return;
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, cfg) in self.queues.iter().enumerate() {
            let q = if cfg.ready {
                match cfg.to_queue(&self.mem) {
                    Ok(q) => q,
                    Err(why) => {
                        crate::guest_warn!("virtio-mmio: queue {i} invalid at DRIVER_OK: {why}");
                        self.set_needs_reset();
                        return;
                    }
                }
            } else {
                // An unused queue stays not ready; the device ignores it.
                match Queue::new(cfg.max_size) {
                    Ok(q) => q,
                    Err(_) => {
                        self.set_needs_reset();
                        return;
                    }
                }
            };
            queues.push(q);
        }
        let mut queue_events = Vec::with_capacity(self.queue_events.len());
        for evt in &self.queue_events {
            match evt.try_clone() {
                Ok(e) => queue_events.push(e),
                Err(e) => {
                    tracing::error!("virtio-mmio: cannot clone queue eventfd: {e}");
                    self.set_needs_reset();
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::error!(
                    "virtio-mmio: activating device type {} failed: {e}",
                    self.device.device_type()
                );
                self.set_needs_reset();
            }
        }
    }

    fn set_needs_reset(&mut self) {
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            *q = QueueConfig {
                max_size: q.max_size,
                size: q.max_size,
                ..Default::default()
            };
        }
        // Drop notifications that arrived for the old queues.
        for evt in &self.queue_events {
            let _ = evt.read();
        }
        self.interrupt.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.status = 0;
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}

fn set_low(addr: &mut u64, value: u32) {
    *addr = (*addr & !0xffff_ffff) | u64::from(value);
}

fn set_high(addr: &mut u64, value: u32) {
    *addr = (*addr & 0xffff_ffff) | (u64::from(value) << 32);
}

#[cfg(test)]
mod tests;
