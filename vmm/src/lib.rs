//! voidbox-vmm: the virtual machine monitor (KVM, direct Linux boot, ACPI,
//! serial console, virtio-mmio block and vsock devices). One VM per process.
//!
//! [`VmConfig`] describes a VM (it is also the JSON schema of
//! `voidbox-vmm --config`); [`run`] boots it and returns how the guest
//! ended it; [`exit_code`] holds the binary's exit statuses.

pub mod acpi;
pub mod boot;
pub mod config;
pub mod cpu;
pub mod devices;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod launch;
pub mod layout;
pub mod logcap;
pub mod parent;
pub mod seccomp;
pub mod slots;
mod vcpu;
pub mod virtio;
pub mod vm;

pub use config::{DiskConfig, SerialOutput, VmConfig, VsockConfig};
pub use launch::{run, Error};
pub use vm::VmOutcome;

/// Exit statuses of the `voidbox-vmm` binary.
pub mod exit_code {
    /// The guest reset (i8042 0xFE with `reboot=k`, ACPI reset, triple
    /// fault) or powered off through ACPI.
    pub const GUEST_STOPPED: i32 = 0;
    /// The VMM failed (bad kernel, no /dev/kvm, missing disk...); one
    /// message on stderr says what to fix.
    pub const VMM_ERROR: i32 = 1;
    /// The command line could not be parsed.
    pub const USAGE: i32 = 2;
    /// The guest kernel panicked (pvpanic or a "Kernel panic" console
    /// line); the last console lines are printed on stderr.
    pub const GUEST_PANIC: i32 = 3;
}
