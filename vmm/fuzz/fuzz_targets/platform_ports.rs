//! Arbitrary guest port I/O against the platform devices (16550 console with
//! its line/panic parser, i8042, pvpanic, ACPI PM) through the port bus.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use voidbox_vmm::devices::acpi_pm::AcpiPm;
use voidbox_vmm::devices::bus::{Bus, SharedDevice};
use voidbox_vmm::devices::console::{
    ConsoleLog, ConsoleSink, ConsoleWriter, SerialConsole, KEPT_LINES,
};
use voidbox_vmm::devices::i8042::I8042;
use voidbox_vmm::devices::pvpanic::PvPanic;

fuzz_target!(|data: &[u8]| {
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(ConsoleLog::default()));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let writer = ConsoleWriter::new(ConsoleSink::Off, log.clone(), tx.clone());
    let mut bus = Bus::new();
    let serial: SharedDevice = Arc::new(Mutex::new(SerialConsole::new(irq, writer)));
    bus.insert(0x3f8, 8, serial).unwrap();
    bus.insert(0x60, 5, Arc::new(Mutex::new(I8042::new(tx.clone()))))
        .unwrap();
    bus.insert(0x505, 1, Arc::new(Mutex::new(PvPanic::new(tx.clone()))))
        .unwrap();
    bus.insert(0x600, 2, Arc::new(Mutex::new(AcpiPm::new(tx))))
        .unwrap();
    // Each op: kind (bit 0 = write, bits 1-2 = width 1/2/4/8), port (le16), value byte.
    for op in data.chunks_exact(4) {
        let width = [1usize, 2, 4, 8][usize::from((op[0] >> 1) & 3)];
        let port = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let mut buf = [op[3]; 8];
        if op[0] & 1 == 1 {
            bus.write(port, &buf[..width]);
        } else {
            bus.read(port, &mut buf[..width]);
        }
    }
    // Bounded memory whatever the guest wrote.
    let report = log.lock().unwrap().panic_report();
    assert!(report.len() <= KEPT_LINES + 2);
    assert!(report.iter().all(|l| l.len() <= 512));
    while rx.try_recv().is_ok() {}
});
