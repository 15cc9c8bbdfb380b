//! Real KVM on this host: VM, vCPU, memory, bus and exit handling driven by
//! small hand-assembled payloads (not Linux). Needs /dev/kvm.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use voidbox_vmm::cpu::paging::write_identity_tables;
use voidbox_vmm::cpu::regs::EntryMode;
use voidbox_vmm::devices::bus::BusDevice;
use voidbox_vmm::devices::console::ConsoleSink;
use voidbox_vmm::devices::PanicSource;
use voidbox_vmm::slots::Slot;
use voidbox_vmm::vm::{Machine, VmOutcome};

const CODE: u64 = 0x10_0000;
const MIB: u64 = 1 << 20;

/// (offset, bytes) of each write a test device saw.
type WriteLog = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Answers reads with 'Z' and records writes.
struct TestWindow(WriteLog);
impl BusDevice for TestWindow {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(b'Z');
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().push((offset, data.to_vec()));
    }
}

fn long_mode_machine(vcpus: u8, code: &[u8]) -> Machine {
    let mut m = Machine::new(128 * MIB, vcpus, ConsoleSink::Off).expect("KVM machine");
    m.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let cr3 = write_identity_tables(m.memory()).unwrap();
    m.configure_boot(EntryMode::Linux64 { cr3 }, CODE).unwrap();
    m
}

fn console(m: &Machine) -> Arc<Mutex<voidbox_vmm::devices::console::ConsoleLog>> {
    m.console_log()
}

// mov dx,0x3f8
const SERIAL_DX: [u8; 4] = [0x66, 0xba, 0xf8, 0x03];
// mov al,0xfe; out 0x64,al; hlt
const I8042_RESET: [u8; 5] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4];

#[test]
fn long_mode_payload_uses_serial_mmio_ioeventfd_and_resets() {
    let mut code = SERIAL_DX.to_vec();
    code.extend([0xb0, b'O', 0xee, 0xb0, b'K', 0xee]); // "OK"
    code.extend([0xb8, 0x00, 0x10, 0x00, 0xd0]); // mov eax,0xd0001000 (slot 1)
    code.extend([0x8a, 0x00, 0xee]); // mov al,[rax]; out dx,al  -> 'Z'
    code.extend([0xb8, 0x00, 0x10, 0x00, 0xd0]); // mov eax,0xd0001000 again (al was overwritten)
    code.extend([0xc6, 0x00, 0x21]); // mov byte [rax],'!'
    code.extend([0xb8, 0x50, 0x00, 0x00, 0xd0]); // mov eax,0xd0000050 (slot 0 QueueNotify)
    code.extend([0xc7, 0x00, 0x01, 0x00, 0x00, 0x00]); // mov dword [rax],1
    code.extend([0xb0, b'\n', 0xee]);
    code.extend(I8042_RESET);
    let mut m = long_mode_machine(1, &code);

    let writes = Arc::new(Mutex::new(Vec::new()));
    let window = Arc::new(Mutex::new(TestWindow(writes.clone())));
    let notify: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let slot0 = Slot::new(0).unwrap();
    let slot1 = Slot::new(1).unwrap();
    let other = Arc::new(Mutex::new(TestWindow(Arc::default())));
    m.add_mmio_device(&slot0, other, &notify, &irq).unwrap();
    let irq1 = EventFd::new(EFD_NONBLOCK).unwrap();
    m.add_mmio_device(&slot1, window, &[], &irq1).unwrap();

    let log = console(&m);
    assert_eq!(m.run().unwrap(), VmOutcome::Reset);
    assert_eq!(log.lock().unwrap().lines(), vec!["OKZ".to_string()]);
    assert_eq!(*writes.lock().unwrap(), vec![(0, vec![b'!'])]);
    // The notify write for queue 1 went to queue 1's eventfd, in-kernel.
    assert_eq!(notify[1].read().unwrap(), 1);
    assert!(notify[0].read().is_err(), "queue 0 was not notified");
}

#[test]
fn cpuid_reports_vcpu_count_and_hypervisor() {
    let mut code = vec![0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0xa2]; // mov eax,1; cpuid
    code.extend([0x89, 0xd8, 0xc1, 0xe8, 0x10, 0x04, b'0']); // mov eax,ebx; shr eax,16; add al,'0'
    code.extend(SERIAL_DX);
    code.extend([0xee]);
    code.extend([0xb8, 0x00, 0x00, 0x00, 0x40, 0x0f, 0xa2]); // mov eax,0x40000000; cpuid
    code.extend(SERIAL_DX); // cpuid clobbered edx
    code.extend([0x89, 0xd8, 0xee]); // mov eax,ebx; out dx,al -> 'K'
    code.extend([0xb0, b'\n', 0xee]);
    code.extend(I8042_RESET);
    let m = long_mode_machine(2, &code);
    let log = console(&m);
    assert_eq!(m.run().unwrap(), VmOutcome::Reset);
    assert_eq!(log.lock().unwrap().lines(), vec!["2K".to_string()]);
}

#[test]
fn acpi_poweroff_pvpanic_and_triple_fault() {
    // mov dx,0x600; mov al,(5<<2)|0x20; out dx,al; hlt
    let poweroff = [0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4];
    assert_eq!(
        long_mode_machine(1, &poweroff).run().unwrap(),
        VmOutcome::Poweroff
    );

    // pvpanic: mov dx,0x505; mov al,1; out dx,al; then reset.
    let mut panic = vec![0x66, 0xba, 0x05, 0x05, 0xb0, 0x01, 0xee];
    panic.extend(I8042_RESET);
    let out = long_mode_machine(1, &panic).run().unwrap();
    assert!(
        matches!(
            out,
            VmOutcome::Panic {
                source: PanicSource::Pvpanic,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(out.exit_code(), voidbox_vmm::exit_code::GUEST_PANIC);

    // ud2 with an empty IDT: #UD -> #GP -> #DF -> triple fault = reset.
    assert_eq!(
        long_mode_machine(1, &[0x0f, 0x0b]).run().unwrap(),
        VmOutcome::Reset
    );
}

#[test]
fn console_panic_line_gives_panic_outcome() {
    let mut code = SERIAL_DX.to_vec();
    for b in b"Kernel panic - not syncing: test\n---[ end Kernel panic - not syncing: test ]---\n" {
        code.extend([0xb0, *b, 0xee]);
    }
    code.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp back to hlt
    let m = long_mode_machine(1, &code);
    match m.run().unwrap() {
        VmOutcome::Panic { source, last_lines } => {
            assert_eq!(source, PanicSource::Console);
            assert_eq!(last_lines[0], "Kernel panic - not syncing: test");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pvh_entry_runs_in_protected_mode() {
    // 32-bit: mov dx,0x3f8; mov al,'P'; out; mov al,'\n'; out; reset.
    let mut code = SERIAL_DX.to_vec();
    code.extend([0xb0, b'P', 0xee, 0xb0, b'\n', 0xee]);
    code.extend([0x89, 0xd8]); // mov eax,ebx (start info pointer) -> write its low byte
    code.extend(I8042_RESET);
    let mut m = Machine::new(128 * MIB, 1, ConsoleSink::Off).unwrap();
    m.memory().write_slice(&code, GuestAddress(CODE)).unwrap();
    m.configure_boot(EntryMode::Pvh { start_info: 0x6000 }, CODE)
        .unwrap();
    let log = console(&m);
    assert_eq!(m.run().unwrap(), VmOutcome::Reset);
    assert_eq!(log.lock().unwrap().lines(), vec!["P".to_string()]);
}

#[test]
fn reset_while_guest_keeps_running_stops_the_vcpu() {
    // ACPI reset register write, then spin without exits: the VMM must
    // still stop the vCPU (signal kick) and return.
    let code = [0x66, 0xba, 0x00, 0x06, 0xb0, 0x01, 0xee, 0xeb, 0xfe];
    let start = std::time::Instant::now();
    assert_eq!(long_mode_machine(1, &code).run().unwrap(), VmOutcome::Reset);
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn bios_reset_vector_stub_resets() {
    // What Linux's BIOS reboot ends in: a jump to the reset vector.
    let code = [0xb8, 0xf0, 0xff, 0x0f, 0x00, 0xff, 0xe0]; // mov eax,0xffff0; jmp eax
    let mut m = Machine::new(128 * MIB, 1, ConsoleSink::Off).unwrap();
    m.memory().write_slice(&code, GuestAddress(CODE)).unwrap();
    voidbox_vmm::boot::write_reset_stub(m.memory()).unwrap();
    m.configure_boot(EntryMode::Pvh { start_info: 0x6000 }, CODE)
        .unwrap();
    assert_eq!(m.run().unwrap(), VmOutcome::Reset);
}
