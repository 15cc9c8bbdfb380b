//! Boot register state: general registers, segments/control registers for
//! the PVH 32-bit entry or the Linux 64-bit entry, FPU, and LAPIC LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, kvm_segment_from_gdt, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::layout::{BOOT_STACK_ADDR, GDT_ADDR, IDT_ADDR, ZERO_PAGE_ADDR};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, RBX = start info.
    Pvh {
        /// Address of `hvm_start_info`.
        start_info: u64,
    },
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = zero page.
    Linux64 {
        /// CR3 (the identity tables).
        cr3: u64,
    },
}

impl EntryMode {
    fn long_mode(&self) -> bool {
        matches!(self, EntryMode::Linux64 { .. })
    }
}

/// General registers for the entry at `rip`.
pub fn boot_regs(mode: EntryMode, rip: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh { start_info } => regs.rbx = start_info,
        EntryMode::Linux64 { .. } => {
            regs.rsp = BOOT_STACK_ADDR;
            regs.rbp = BOOT_STACK_ADDR;
            regs.rsi = ZERO_PAGE_ADDR;
        }
    }
    regs
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_gdt(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, entry) in boot_gdt(mode.long_mode()).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
}

/// Special registers for `mode`, starting from the vCPU's current `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let gdt = boot_gdt(mode.long_mode());
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = kvm_segment_from_gdt(gdt[1], CODE_SELECTOR);
    let data = kvm_segment_from_gdt(gdt[2], DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[3], TSS_SELECTOR);
    match mode {
        EntryMode::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 { cr3 } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = cr3;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// FPU state after reset (x87 control word, MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[reg + i] = *b as _;
    }
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as firmware does.
pub fn configure_lint(lapic: &mut kvm_lapic_state) {
    set_delivery_mode(lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(lapic, APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_sregs() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Linux64 { cr3: 0x9000 });
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.gdt.limit, 31);
        let r = boot_regs(EntryMode::Linux64 { cr3: 0x9000 }, 0x1000000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x1000000, ZERO_PAGE_ADDR, 2));
    }

    #[test]
    fn pvh_sregs() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Pvh { start_info: 0x6000 });
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.cr0 & CR0_PE, 1);
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        let r = boot_regs(EntryMode::Pvh { start_info: 0x6000 }, 0x1000);
        assert_eq!(r.rbx, 0x6000);
    }

    #[test]
    fn lint_modes() {
        let mut l = kvm_lapic_state::default();
        l.regs[APIC_LVT0 + 1] = 0x7f; // other bits set: mode bits replaced only
        configure_lint(&mut l);
        assert_eq!(l.regs[APIC_LVT0 + 1] as u8, 0x7f & !0x7 | 0x7);
        assert_eq!(l.regs[APIC_LVT1 + 1] as u8, 0x4);
    }
}
