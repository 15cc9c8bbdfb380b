//! Boot GDT: flat code and data segments plus a TSS, and the KVM segment
//! descriptors that match them.

use kvm_bindings::kvm_segment;

/// Selector of the code segment (GDT index 1).
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment (GDT index 2).
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS (GDT index 3).
pub const TSS_SELECTOR: u16 = 0x18;

// Access/flags words (the 0xf0ff bits of a descriptor's upper half).
const CODE64: u16 = 0xa09b; // present, DPL 0, exec/read accessed, L=1, G=1
const CODE32: u16 = 0xc09b; // same with D=1 instead of L
const DATA: u16 = 0xc093; // present, read/write accessed, D/B=1, G=1
const TSS: u16 = 0x808b; // present, 32/64-bit busy TSS

/// Packs one GDT descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0xffff)
}

/// The boot GDT: null, code (64-bit or 32-bit), data, TSS.
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    [
        0,
        gdt_entry(if long_mode { CODE64 } else { CODE32 }, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(TSS, 0, 0xfffff),
    ]
}

/// The KVM view of descriptor `entry` loaded through `selector`.
pub fn kvm_segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let gdt = boot_gdt(true);
        let cs = kvm_segment_from_gdt(gdt[1], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
        let ds = kvm_segment_from_gdt(gdt[2], DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.type_, ds.s), (0, 1, 3, 1));
        let tr = kvm_segment_from_gdt(gdt[3], TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn protected_mode_code_segment_and_packing() {
        let cs = kvm_segment_from_gdt(boot_gdt(false)[1], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db), (0, 1));
        let e = gdt_entry(0x4092, 0x1234_5678, 0xabcde);
        let s = kvm_segment_from_gdt(e, 0);
        assert_eq!((s.base, s.limit, s.g, s.db), (0x1234_5678, 0xabcde, 0, 1));
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }
}
