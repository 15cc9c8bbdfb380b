//! Identity page tables for the 64-bit boot entry: the low 4 GiB mapped
//! with 2 MiB pages (kernel, zero page and cmdline live in the first GiB;
//! the rest lets early code reach the MMIO hole).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::PML4_ADDR;

const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_PAGE: u64 = 0x80;

/// Page-directory pages (one per GiB mapped).
pub const PD_PAGES: u64 = 4;
/// Bytes used by the tables from [`PML4_ADDR`]: PML4, PDPT, the PDs.
pub const TABLES_SIZE: u64 = (2 + PD_PAGES) * 0x1000;

/// Writes PML4, PDPT and PDs from [`PML4_ADDR`]; returns the CR3 value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    let pdpt = PML4_ADDR + 0x1000;
    let pd = PML4_ADDR + 0x2000;
    mem.write_obj(pdpt | PRESENT_WRITABLE, GuestAddress(PML4_ADDR))?;
    let mut entries = [0u8; 4096];
    for gib in 0..PD_PAGES {
        let pd_gib = pd + gib * 0x1000;
        mem.write_obj(pd_gib | PRESENT_WRITABLE, GuestAddress(pdpt + gib * 8))?;
        for (i, e) in entries.chunks_exact_mut(8).enumerate() {
            let addr = (gib << 30) | ((i as u64) << 21);
            e.copy_from_slice(&(addr | PRESENT_WRITABLE | HUGE_PAGE).to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd_gib))?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_first_gib_identity() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_ADDR);
        let r = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(r(PML4_ADDR), PML4_ADDR + 0x1000 + 3);
        assert_eq!(r(PML4_ADDR + 0x1000), PML4_ADDR + 0x2000 + 3);
        assert_eq!(r(PML4_ADDR + 0x2000), 0x83);
        assert_eq!(r(PML4_ADDR + 0x2000 + 8 * 511), (511 << 21) | 0x83);
        assert_eq!(r(PML4_ADDR + 0x1000 + 8 * 3), PML4_ADDR + 0x5000 + 3);
        // 0xd000_0000 (the virtio windows) is mapped by PD 3, entry 128.
        assert_eq!(r(PML4_ADDR + 0x5000 + 8 * 128), 0xd000_0000 | 0x83);
    }
}
