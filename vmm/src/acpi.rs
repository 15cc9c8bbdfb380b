//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced, with a sleep control
//! register so ACPI poweroff reaches the VMM), MADT (one local APIC per
//! vCPU + the IOAPIC) and a DSDT with one `LNRO0005` node per virtio-mmio
//! slot, the pvpanic device and `\_S5_`.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::devices::acpi_pm::{ACPI_PM_PORT, RESET_VALUE, SLEEP_STATUS_OFFSET};
use crate::devices::console::{COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use crate::devices::pvpanic::PVPANIC_PORT;
use crate::layout::{ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR};
use crate::slots::{Slot, WINDOW_SIZE};

const OEM_ID: [u8; 6] = *b"VOIDBX";
const OEM_TABLE_ID: [u8; 8] = *b"VOIDBOX ";
const OEM_REVISION: u32 = 1;
/// SLP_TYP value of S5 in `\_S5_` (what the guest writes to the sleep register).
pub const S5_SLEEP_TYPE: u8 = 5;

// IA-PC boot architecture flags (FADT IAPC_BOOT_ARCH).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
// No CMOS RTC: Linux then skips its slow RTC probe (each access is an exit).
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Tables laid out at their guest addresses, ready to copy into memory.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// Where the RSDP lives (boot protocols point the kernel here).
    pub rsdp_addr: u64,
    /// (guest address, bytes) of every table, RSDP included.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit the reserved ACPI area.
    #[error("ACPI tables need {0} bytes, more than the reserved area")]
    TooLarge(u64),
    /// More vCPUs than an 8-bit APIC id covers.
    #[error("{0} vCPUs do not fit 8-bit APIC ids")]
    TooManyCpus(usize),
}

fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The DSDT body (AML) for the given slots.
pub fn dsdt_aml(slots: &[Slot]) -> Vec<u8> {
    let mut body = Vec::new();
    // One device per virtio-mmio window; Linux's virtio_mmio binds LNRO0005.
    let names: Vec<String> = slots.iter().map(|s| s.acpi_name()).collect();
    let mut dev_bytes = Vec::new();
    for (slot, name) in slots.iter().zip(&names) {
        let hid = Name::new("_HID".into(), &"LNRO0005");
        let uid = Name::new("_UID".into(), &(slot.index as u32));
        let mem = Memory32Fixed::new(true, slot.base as u32, WINDOW_SIZE as u32);
        let irq = Interrupt::new(true, true, false, false, slot.irq);
        let crs_tpl = ResourceTemplate::new(vec![&mem, &irq]);
        let crs = Name::new("_CRS".into(), &crs_tpl);
        let dev = Device::new(Path::new(name), vec![&hid, &uid, &crs]);
        dev.to_aml_bytes(&mut dev_bytes);
    }
    // COM1: hardware-reduced ACPI has no legacy PIC, so Linux maps no ISA
    // IRQs by itself; this node makes serial8250_pnp map GSI 4 for ttyS0.
    let com_hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let com_uid = Name::new("_UID".into(), &0u8);
    let com_io = IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORT_LEN as u8);
    let com_irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let com_crs_tpl = ResourceTemplate::new(vec![&com_io, &com_irq]);
    let com_crs = Name::new("_CRS".into(), &com_crs_tpl);
    Device::new("COM1".into(), vec![&com_hid, &com_uid, &com_crs]).to_aml_bytes(&mut dev_bytes);
    // pvpanic (QEMU0001) at its I/O port, for guests that load pvpanic-mmio.
    let pv_hid = Name::new("_HID".into(), &"QEMU0001");
    let pv_io = IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let pv_crs_tpl = ResourceTemplate::new(vec![&pv_io]);
    let pv_crs = Name::new("_CRS".into(), &pv_crs_tpl);
    let pv_sta = Name::new("_STA".into(), &0xfu8);
    let pvpanic = Device::new("PEVT".into(), vec![&pv_hid, &pv_crs, &pv_sta]);
    pvpanic.to_aml_bytes(&mut dev_bytes);
    // Scope::raw takes pre-serialized children, so the slot count stays unbounded by lifetimes.
    body.extend(Scope::raw("\\_SB_".into(), dev_bytes));
    // \_S5_: SLP_TYPa, SLP_TYPb, reserved, reserved.
    let s5 = Name::new(
        "_S5_".into(),
        &Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]),
    );
    s5.to_aml_bytes(&mut body);
    body
}

/// Builds every table for `vcpus` CPUs and the virtio `slots`.
pub fn build(vcpus: usize, slots: &[Slot]) -> Result<AcpiTables, AcpiError> {
    if vcpus > 255 {
        return Err(AcpiError::TooManyCpus(vcpus));
    }
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let mut next = align(rsdp_addr + Rsdp::len() as u64);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(slots));
    let dsdt_addr = next;
    next = align(next + dsdt.len() as u64);

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT
        | IAPC_MSI_NOT_SUPPORTED
        | IAPC_PCIE_ASPM_CONTROLS
        | IAPC_CMOS_RTC_NOT_PRESENT)
        .into();
    fadt.sleep_control_reg = io_gas(ACPI_PM_PORT);
    fadt.sleep_status_reg = io_gas(ACPI_PM_PORT + SLEEP_STATUS_OFFSET);
    fadt.reset_reg = io_gas(ACPI_PM_PORT);
    fadt.reset_value = RESET_VALUE;
    let fadt = aml_bytes(&fadt.finalize());
    let fadt_addr = next;
    next = align(next + fadt.len() as u64);

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for cpu in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(
            cpu as u8,
            cpu as u8,
            EnabledStatus::Enabled,
        ));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR as u32, 0));
    let madt = aml_bytes(&madt);
    let madt_addr = next;
    next = align(next + madt.len() as u64);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = aml_bytes(&xsdt);
    let xsdt_addr = next;
    next += xsdt.len() as u64;
    if next > ACPI_END {
        return Err(AcpiError::TooLarge(next - ACPI_START));
    }
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    Ok(AcpiTables {
        rsdp_addr,
        blobs: vec![
            (rsdp_addr, rsdp),
            (dsdt_addr, dsdt.as_slice().to_vec()),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (xsdt_addr, xsdt),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::slots;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn table<'a>(t: &'a AcpiTables, sig: &[u8]) -> (u64, &'a [u8]) {
        t.blobs
            .iter()
            .find(|(_, b)| &b[..sig.len()] == sig)
            .map(|(a, b)| (*a, b.as_slice()))
            .unwrap()
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn checksums_lengths_and_links() {
        let t = build(2, &slots(3).unwrap()).unwrap();
        let (rsdp_addr, rsdp) = table(&t, b"RSD PTR ");
        assert_eq!(rsdp_addr, t.rsdp_addr);
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        for sig in [&b"XSDT"[..], b"FACP", b"APIC", b"DSDT"] {
            let (_, b) = table(&t, sig);
            assert_eq!(u32_at(b, 4) as usize, b.len(), "{sig:?} length");
            assert_eq!(sum(b), 0, "{sig:?} checksum");
        }
        let (xsdt_addr, xsdt) = table(&t, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), xsdt_addr);
        let (fadt_addr, fadt) = table(&t, b"FACP");
        let (madt_addr, _) = table(&t, b"APIC");
        assert_eq!(u64_at(xsdt, 36), fadt_addr);
        assert_eq!(u64_at(xsdt, 44), madt_addr);
        let (dsdt_addr, _) = table(&t, b"DSDT");
        assert_eq!(u64_at(fadt, 140), dsdt_addr); // X_DSDT
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0); // HW_REDUCED_ACPI
                                                      // SLEEP_CONTROL_REG: system I/O at our PM port.
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(fadt, 248), u64::from(ACPI_PM_PORT));
        for (addr, b) in &t.blobs {
            assert!(*addr >= ACPI_START && addr + b.len() as u64 <= ACPI_END);
        }
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_cpu_and_the_ioapic() {
        let t = build(3, &[]).unwrap();
        let (_, madt) = table(&t, b"APIC");
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR as u32);
        let mut off = 44;
        let mut lapics = vec![];
        let mut ioapics = 0;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(u32_at(madt, off + 4), 1);
                    lapics.push(madt[off + 3]);
                }
                1 => {
                    ioapics += 1;
                    assert_eq!(u32_at(madt, off + 4), IOAPIC_ADDR as u32);
                }
                _ => panic!("unexpected MADT entry {kind}"),
            }
            off += len;
        }
        assert_eq!(lapics, vec![0, 1, 2]);
        assert_eq!(ioapics, 1);
    }

    #[test]
    fn dsdt_names_each_slot_with_its_window_and_irq() {
        let s = slots(2).unwrap();
        let aml = dsdt_aml(&s);
        let find = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"LNRO0005\0"));
        assert!(find(b"QEMU0001\0"));
        // COM1 (PNP0501 as an EISA id) with its port range and IRQ 4.
        assert!(find(b"COM1"));
        assert!(find(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(find(&[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8]));
        assert!(find(&[0x89, 6, 0, 0b11, 1, 4, 0, 0, 0]));
        assert!(find(b"_S5_"));
        for slot in &s {
            assert!(find(slot.acpi_name().as_bytes()));
            // Memory32Fixed descriptor: 0x86, len 9, RW, base, length.
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend((slot.base as u32).to_le_bytes());
            mem.extend((WINDOW_SIZE as u32).to_le_bytes());
            assert!(find(&mem), "window of slot {}", slot.index);
            // Extended interrupt descriptor: consumer + edge, one IRQ.
            let mut irq = vec![0x89, 6, 0, 0b11, 1];
            irq.extend(slot.irq.to_le_bytes());
            assert!(find(&irq), "irq of slot {}", slot.index);
        }
    }

    #[test]
    fn all_slots_fit() {
        assert!(build(32, &slots(crate::slots::MAX_SLOTS).unwrap()).is_ok());
    }
}
