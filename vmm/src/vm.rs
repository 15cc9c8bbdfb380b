//! The KVM machine: VM fd, guest memory slots, in-kernel irqchip and PIT,
//! platform devices on the port bus, virtio windows on the MMIO bus, and
//! the vCPUs. [`Machine::run`] runs the vCPUs until the guest ends the VM.

use std::os::unix::io::FromRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::cpu::regs::{boot_fpu, boot_regs, boot_sregs, configure_lint, write_gdt, EntryMode};
use crate::cpu::{cpuid, msr};
use crate::devices::acpi_pm::{AcpiPm, ACPI_PM_PORT, ACPI_PM_PORT_LEN};
use crate::devices::bus::{Bus, SharedDevice};
use crate::devices::console::{
    ConsoleLog, ConsoleSink, ConsoleWriter, SerialConsole, COM1_IRQ, COM1_PORT, COM1_PORT_LEN,
};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::pvpanic::{PvPanic, PVPANIC_PORT};
use crate::devices::{ExitEvent, ExitSender, PanicSource};
use crate::host::{kvm_open_error, HostError};
use crate::layout::{create_guest_memory, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::seccomp;
use crate::slots::{Slot, WINDOW_SIZE};
use crate::vcpu::VcpuThreads;

/// How long to wait for the rest of a panic report after the panic line.
pub const PANIC_REPORT_WAIT: Duration = Duration::from_secs(3);

/// Errors setting up or running the machine.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Host problem (KVM access).
    #[error(transparent)]
    Host(#[from] HostError),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory: {detail} (lower --mem-mib)")]
    Memory {
        /// Requested MiB.
        mib: u64,
        /// Allocation error.
        detail: String,
    },
    /// Writing boot state into guest memory failed.
    #[error("cannot write boot state into guest memory: {0}")]
    GuestWrite(#[from] vm_memory::GuestMemoryError),
    /// Event fd creation failed.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// A device range collides with another.
    #[error("device layout error: {0}")]
    Bus(#[from] crate::devices::bus::OverlapError),
    /// A vCPU stopped with an error.
    #[error("vCPU error: {0}")]
    Vcpu(String),
    /// Every vCPU thread ended without the guest stopping the VM.
    #[error("all vCPUs stopped without a reset, poweroff or panic")]
    VcpusGone,
    /// A thread could not be started.
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The main thread could not install its seccomp filter.
    #[error("main thread: {0}")]
    Seccomp(#[source] crate::seccomp::SeccompError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// How the guest ended the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest reset (i8042, ACPI reset, triple fault).
    Reset,
    /// The guest powered off through ACPI.
    Poweroff,
    /// The guest kernel panicked.
    Panic {
        /// How it was noticed.
        source: PanicSource,
        /// The last console lines.
        last_lines: Vec<String>,
    },
}

impl VmOutcome {
    /// The `voidbox-vmm` exit status for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmOutcome::Reset | VmOutcome::Poweroff => crate::exit_code::GUEST_STOPPED,
            VmOutcome::Panic { .. } => crate::exit_code::GUEST_PANIC,
        }
    }
}

/// The machine before and while it runs.
pub struct Machine {
    _kvm: Kvm,
    vm: VmFd,
    memory: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    exit_tx: ExitSender,
    exit_rx: Receiver<ExitEvent>,
    console_log: Arc<Mutex<ConsoleLog>>,
    supported_cpuid: CpuId,
}

impl Machine {
    /// Opens KVM, creates the VM with `mem_bytes` of RAM, the irqchip, PIT,
    /// the platform devices (console to `console`, i8042, pvpanic, ACPI PM)
    /// and `vcpus` vCPUs with CPUID and MSRs set.
    pub fn new(mem_bytes: u64, vcpus: u8, console: ConsoleSink) -> Result<Self, VmError> {
        let kvm_fd = Kvm::open_with_cloexec(true).map_err(|e| {
            VmError::Host(kvm_open_error(std::io::Error::from_raw_os_error(e.errno())))
        })?;
        // SAFETY: the fd was just opened on /dev/kvm and is owned by nothing else.
        let kvm = unsafe { Kvm::from_raw_fd(kvm_fd) };
        let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
        let memory = create_guest_memory(mem_bytes).map_err(|e| VmError::Memory {
            mib: mem_bytes >> 20,
            detail: e.to_string(),
        })?;
        for (slot, region) in memory.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping owned by `memory`, which the
            // Machine keeps for as long as the VM exists.
            unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("set memory region"))?;
        }
        // Intel needs these pages; other hosts (AMD, PVM) may refuse harmlessly.
        if let Err(e) = vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR) {
            tracing::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e}");
        }
        if let Err(e) = vm.set_tss_address(KVM_TSS_ADDR as usize) {
            tracing::debug!("KVM_SET_TSS_ADDR: {e}");
        }
        vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("create PIT"))?;

        let (exit_tx, exit_rx) = channel();
        let console_log = Arc::new(Mutex::new(ConsoleLog::default()));
        let mut machine = Machine {
            supported_cpuid: kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm_err("get supported CPUID"))?,
            _kvm: kvm,
            vm,
            memory,
            vcpus: Vec::new(),
            pio: Bus::new(),
            mmio: Bus::new(),
            exit_tx,
            exit_rx,
            console_log,
        };
        machine.add_platform_devices(console)?;
        machine.create_vcpus(vcpus)?;
        Ok(machine)
    }

    fn add_platform_devices(&mut self, console: ConsoleSink) -> Result<(), VmError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.vm
            .register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm_err("register serial irqfd"))?;
        let writer = ConsoleWriter::new(console, self.console_log.clone(), self.exit_tx.clone());
        let serial: SharedDevice = Arc::new(Mutex::new(SerialConsole::new(irq, writer)));
        self.pio.insert(COM1_PORT.into(), COM1_PORT_LEN, serial)?;
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(self.exit_tx.clone())));
        self.pio
            .insert(I8042_PORT_BASE.into(), I8042_PORT_LEN, i8042)?;
        let pvpanic: SharedDevice = Arc::new(Mutex::new(PvPanic::new(self.exit_tx.clone())));
        self.pio.insert(PVPANIC_PORT.into(), 1, pvpanic)?;
        let pm: SharedDevice = Arc::new(Mutex::new(AcpiPm::new(self.exit_tx.clone())));
        self.pio.insert(ACPI_PM_PORT.into(), ACPI_PM_PORT_LEN, pm)?;
        Ok(())
    }

    fn create_vcpus(&mut self, count: u8) -> Result<(), VmError> {
        for id in 0..count {
            let vcpu = self
                .vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create vCPU"))?;
            let entries = cpuid::normalize(&self.supported_cpuid, id, count);
            let table = CpuId::from_entries(&entries)
                .map_err(|e| VmError::Vcpu(format!("CPUID table: {e:?}")))?;
            vcpu.set_cpuid2(&table).map_err(kvm_err("set CPUID"))?;
            let msrs = msr::boot_msrs().map_err(|e| VmError::Vcpu(format!("MSR list: {e:?}")))?;
            let set = vcpu.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
            if set != msrs.as_slice().len() {
                let refused = msrs.as_slice()[set].index;
                tracing::warn!(
                    "KVM accepted {set} of {} boot MSRs (refused {refused:#x})",
                    msrs.as_slice().len()
                );
            }
            let mut lapic = vcpu.get_lapic().map_err(kvm_err("get LAPIC"))?;
            configure_lint(&mut lapic);
            vcpu.set_lapic(&lapic).map_err(kvm_err("set LAPIC"))?;
            self.vcpus.push(vcpu);
        }
        Ok(())
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The VM fd (for device registration).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The console's last lines.
    pub fn console_log(&self) -> Arc<Mutex<ConsoleLog>> {
        self.console_log.clone()
    }

    /// Sets every vCPU's registers for `mode`, entering at `entry`.
    pub fn configure_boot(&mut self, mode: EntryMode, entry: u64) -> Result<(), VmError> {
        write_gdt(&self.memory, mode)?;
        for vcpu in &self.vcpus {
            let sregs = vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
            vcpu.set_sregs(&boot_sregs(sregs, mode))
                .map_err(kvm_err("set sregs"))?;
            vcpu.set_regs(&boot_regs(mode, entry))
                .map_err(kvm_err("set regs"))?;
            vcpu.set_fpu(&boot_fpu()).map_err(kvm_err("set FPU"))?;
        }
        Ok(())
    }

    /// Puts `device` in virtio-mmio `slot`: its window on the MMIO bus, one
    /// ioeventfd per queue at the slot's QueueNotify address (datamatch =
    /// queue index) and its interrupt as an irqfd on the slot's GSI.
    pub fn add_mmio_device(
        &mut self,
        slot: &Slot,
        device: SharedDevice,
        queue_events: &[EventFd],
        interrupt: &EventFd,
    ) -> Result<(), VmError> {
        self.mmio.insert(slot.base, WINDOW_SIZE, device)?;
        for (index, evt) in queue_events.iter().enumerate() {
            self.vm
                .register_ioevent(evt, &IoEventAddress::Mmio(slot.notify_addr()), index as u32)
                .map_err(kvm_err("register queue ioeventfd"))?;
        }
        self.vm
            .register_irqfd(interrupt, slot.irq)
            .map_err(kvm_err("register device irqfd"))?;
        Ok(())
    }

    /// Runs the vCPUs until the guest resets, powers off or panics. With
    /// seccomp filters enabled, the calling thread installs the main thread's
    /// filter once the vCPU threads run (so they do not inherit it).
    pub fn run(self) -> Result<VmOutcome, VmError> {
        let stop = Arc::new(AtomicBool::new(false));
        let pio = Arc::new(self.pio);
        let mmio = Arc::new(self.mmio);
        // The buses (and the devices on them) are dropped here, after the
        // vCPUs stopped, not by whichever vCPU thread ends last: tearing
        // devices down is the main thread's work (and its filter's).
        let threads = VcpuThreads::spawn(
            self.vcpus,
            pio.clone(),
            mmio.clone(),
            self.exit_tx.clone(),
            stop,
        )
        .map_err(VmError::Thread)?;
        drop(self.exit_tx);
        if let Err(e) = seccomp::apply(seccomp::Thread::Main) {
            threads.stop();
            return Err(VmError::Seccomp(e));
        }
        let outcome = wait_for_exit(&self.exit_rx, &self.console_log);
        tracing::debug!("VM ends: {outcome:?}; stopping vCPUs");
        threads.stop();
        tracing::debug!("vCPUs stopped");
        drop((pio, mmio));
        outcome
    }
}

fn last_lines(log: &Mutex<ConsoleLog>) -> Vec<String> {
    log.lock().unwrap_or_else(|e| e.into_inner()).panic_report()
}

fn wait_for_exit(rx: &Receiver<ExitEvent>, log: &Mutex<ConsoleLog>) -> Result<VmOutcome, VmError> {
    loop {
        let event = rx.recv().map_err(|_| VmError::VcpusGone)?;
        match event {
            ExitEvent::Reset => return Ok(VmOutcome::Reset),
            ExitEvent::Poweroff => return Ok(VmOutcome::Poweroff),
            ExitEvent::VcpuError(e) => return Err(VmError::Vcpu(e)),
            ExitEvent::PanicReportEnd => continue,
            ExitEvent::Panic(source) => {
                // Let the kernel finish its report (or reboot, with panic=N).
                let deadline = Instant::now() + PANIC_REPORT_WAIT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(ExitEvent::Panic(_)) => continue,
                        Ok(_)
                        | Err(RecvTimeoutError::Timeout)
                        | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                return Ok(VmOutcome::Panic {
                    source,
                    last_lines: last_lines(log),
                });
            }
        }
    }
}
