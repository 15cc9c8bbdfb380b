//! The virtio-mmio slot table: the one place that decides each device's
//! MMIO window, IRQ, queue-notify ioeventfd address, ACPI node name and
//! `virtio_mmio.device=` cmdline entry.

use crate::layout::VIRTIO_MMIO_START;

/// Size of one virtio-mmio register window.
pub const WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify in the window (virtio 1.x MMIO).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x050;
/// First GSI handed to virtio devices (4 is the serial port's).
pub const FIRST_IRQ: u32 = 5;
/// Last usable GSI of the in-kernel IOAPIC (24 pins).
pub const LAST_IRQ: u32 = 23;
/// Number of slots.
pub const MAX_SLOTS: usize = (LAST_IRQ - FIRST_IRQ + 1) as usize;

/// The fixed resources of one virtio-mmio slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Slot index (device order: disks first, then vsock).
    pub index: usize,
    /// Guest-physical base of the register window.
    pub base: u64,
    /// GSI / IOAPIC pin, edge-triggered, active high.
    pub irq: u32,
}

impl Slot {
    /// The slot at `index`, or `None` past the table's end.
    pub fn new(index: usize) -> Option<Slot> {
        (index < MAX_SLOTS).then(|| Slot {
            index,
            base: VIRTIO_MMIO_START + index as u64 * WINDOW_SIZE,
            irq: FIRST_IRQ + index as u32,
        })
    }

    /// The QueueNotify address the VMM registers ioeventfds at.
    pub fn notify_addr(&self) -> u64 {
        self.base + QUEUE_NOTIFY_OFFSET
    }

    /// The ACPI device name (`V000`..`V018`, four characters).
    pub fn acpi_name(&self) -> String {
        format!("V{:03X}", self.index)
    }

    /// The cmdline entry for kernels with VIRTIO_MMIO_CMDLINE_DEVICES.
    pub fn cmdline_entry(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }

    /// True when `addr` falls inside this slot's window.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.base + WINDOW_SIZE
    }
}

/// The first `n` slots (`None` if there are not that many).
pub fn slots(n: usize) -> Option<Vec<Slot>> {
    (0..n).map(Slot::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{IOAPIC_ADDR, MMIO_HOLE_START};

    #[test]
    fn slots_are_distinct_and_inside_the_hole() {
        let all = slots(MAX_SLOTS).unwrap();
        for (i, s) in all.iter().enumerate() {
            assert_eq!(s.index, i);
            assert!(s.base >= MMIO_HOLE_START && s.base + WINDOW_SIZE <= IOAPIC_ADDR);
            assert!(s.irq >= FIRST_IRQ && s.irq <= LAST_IRQ);
            assert_eq!(s.acpi_name().len(), 4);
            for t in &all[i + 1..] {
                assert!(!s.contains(t.base) && s.irq != t.irq && s.acpi_name() != t.acpi_name());
            }
        }
        assert!(Slot::new(MAX_SLOTS).is_none());
        assert!(slots(MAX_SLOTS + 1).is_none());
    }

    #[test]
    fn slot_zero_values() {
        let s = Slot::new(0).unwrap();
        assert_eq!(s.base, 0xd000_0000);
        assert_eq!(s.irq, 5);
        assert_eq!(s.notify_addr(), 0xd000_0050);
        assert_eq!(s.acpi_name(), "V000");
        assert_eq!(s.cmdline_entry(), "virtio_mmio.device=4K@0xd0000000:5");
        let s = Slot::new(18).unwrap();
        assert_eq!(s.acpi_name(), "V012");
        assert_eq!(s.irq, 23);
    }
}
