//! Emulated platform devices and the buses that route guest port and MMIO
//! accesses to them. Devices report guest-initiated VM endings (reset,
//! poweroff, panic) as [`ExitEvent`]s.

pub mod acpi_pm;
pub mod bus;
pub mod console;
pub mod i8042;
pub mod pvpanic;
mod virtio_window;

use std::sync::mpsc::Sender;

/// Why the guest wants the VM to end (or that a vCPU failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitEvent {
    /// i8042 reset, ACPI reset, triple fault or KVM reset/shutdown event.
    Reset,
    /// ACPI S5 through the FADT sleep control register.
    Poweroff,
    /// The guest kernel panicked.
    Panic(PanicSource),
    /// The console printed the end of the panic report.
    PanicReportEnd,
    /// A vCPU could not continue.
    VcpuError(String),
}

/// How a panic was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicSource {
    /// The guest wrote to the pvpanic port.
    Pvpanic,
    /// The console printed a "Kernel panic" line.
    Console,
}

/// Where devices send [`ExitEvent`]s.
pub type ExitSender = Sender<ExitEvent>;
