//! Guest physical memory layout: fixed addresses of the boot structures,
//! the RAM ranges around the 32-bit MMIO hole, and the e820 map.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// GDT (4 entries of 8 bytes).
pub const GDT_ADDR: u64 = 0x500;
/// Empty IDT (limit 0) loaded before the kernel sets its own.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Level-4 page table; PDPT and the PDs follow at +0x1000, +0x2000...
pub const PML4_ADDR: u64 = 0x9000;
/// Kernel command line (COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line including the terminating NUL.
pub const CMDLINE_MAX: usize = 2048;
/// End of conventional memory below the EBDA (first e820 RAM range).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first, where the legacy BIOS-area scan finds it too).
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area (the reset vector stub follows).
pub const ACPI_END: u64 = RESET_VECTOR_ADDR;
/// The x86 reset vector (F000:FFF0). Linux jumps here for a "BIOS" reboot
/// (its default on hardware-reduced ACPI without EFI); a stub resets the VM.
pub const RESET_VECTOR_ADDR: u64 = 0xffff0;
/// First address above the legacy area; RAM for the kernel starts here.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO hole: RAM below, devices above (up to 4 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First virtio-mmio window; see [`crate::slots`].
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// IOAPIC registers (in-kernel irqchip).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers (in-kernel irqchip).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS (three pages, Intel only) just below the identity-map page.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM's identity-map page (Intel only).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// RAM beyond the hole continues at 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// e820 entry type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The RAM ranges backing `mem_bytes` of guest memory: everything below the
/// hole first, the rest from 4 GiB. Every byte here is host-backed.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if mem_bytes > low {
        ranges.push((GuestAddress(HIGH_RAM_START), (mem_bytes - low) as usize));
    }
    ranges
}

/// End of RAM below the hole.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_HOLE_START)
}

/// The e820 map handed to the guest. The legacy area 0x9fc00..1 MiB is
/// backed but not RAM (the ACPI tables live there); the hole is absent.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let low_end = low_ram_end(mem_bytes);
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: ACPI_START,
            size: HIMEM_START - ACPI_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    if mem_bytes > low_end {
        map.push(E820Entry {
            addr: HIGH_RAM_START,
            size: mem_bytes - low_end,
            kind: E820_RAM,
        });
    }
    map
}

// The fixed boot structures must not overlap: checked at compile time.
const _: () = {
    assert!(GDT_ADDR + 32 <= IDT_ADDR);
    assert!(PVH_MEMMAP_ADDR + 8 * 24 <= ZERO_PAGE_ADDR);
    assert!(ZERO_PAGE_ADDR + 4096 <= BOOT_STACK_ADDR);
    assert!(BOOT_STACK_ADDR < PML4_ADDR);
    assert!(PML4_ADDR + crate::cpu::paging::TABLES_SIZE <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= EBDA_START);
    assert!(VIRTIO_MMIO_START >= MMIO_HOLE_START && VIRTIO_MMIO_START < IOAPIC_ADDR);
};

/// Allocates the guest memory for `mem_bytes` (anonymous, private mappings).
pub fn create_guest_memory(
    mem_bytes: u64,
) -> Result<GuestMemoryMmap, vm_memory::mmap::FromRangesError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(mem_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_memory_is_one_low_range() {
        let r = ram_ranges(256 * MIB);
        assert_eq!(r, vec![(GuestAddress(0), (256 * MIB) as usize)]);
        let e = e820_map(256 * MIB);
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].addr + e[2].size, 256 * MIB);
        let total_ram: u64 = e
            .iter()
            .filter(|x| x.kind == E820_RAM)
            .map(|x| x.size)
            .sum();
        assert_eq!(total_ram, 256 * MIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_memory_skips_the_hole_and_is_backed() {
        let mem = 4096 * MIB;
        let e = e820_map(mem);
        assert_eq!(e.len(), 4);
        assert_eq!(e[2].addr + e[2].size, MMIO_HOLE_START);
        assert_eq!(e[3].addr, HIGH_RAM_START);
        assert_eq!(e[3].size, mem - MMIO_HOLE_START);
        // Every RAM range of the e820 map lies in backed memory.
        let gm = create_guest_memory(mem).unwrap();
        for entry in e.iter().filter(|x| x.kind == E820_RAM) {
            assert!(gm.address_in_range(GuestAddress(entry.addr)));
            assert!(gm.address_in_range(GuestAddress(entry.addr + entry.size - 1)));
        }
        assert!(!gm.address_in_range(GuestAddress(VIRTIO_MMIO_START)));
        assert!(!gm.address_in_range(GuestAddress(LAPIC_ADDR)));
    }
}
