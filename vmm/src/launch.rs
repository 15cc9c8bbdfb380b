//! Builds and runs a VM from a [`VmConfig`]: host checks, machine, kernel,
//! initrds, ACPI tables, command line, virtio devices.

use std::fs::OpenOptions;
use std::io::LineWriter;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiError};
use crate::boot::{self, BootError};
use crate::config::{ConfigError, SerialOutput, VmConfig};
use crate::devices::console::ConsoleSink;
use crate::host::{self, HostError};
use crate::logcap::{CappedWriter, CONSOLE_LOG_CAP};
use crate::slots::{self, Slot, MAX_SLOTS};
use crate::virtio::{Block, MmioTransport, VirtioDevice, Vsock};
use crate::vm::{Machine, VmError, VmOutcome};

/// Why a VM could not be started or run. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The host cannot run the VM.
    #[error(transparent)]
    Host(#[from] HostError),
    /// Kernel, initrd or cmdline problem.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// KVM or machine problem.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// A disk image does not exist.
    #[error("disk image {0} does not exist: create it (e.g. truncate -s 64M FILE) or fix the --disk path")]
    DiskMissing(PathBuf),
    /// The vsock socket path is served by another process.
    #[error(
        "vsock socket {0} is in use by another process: stop it or choose another --vsock-uds path"
    )]
    VsockInUse(PathBuf),
    /// The vsock socket path exists and is not a socket.
    #[error(
        "vsock path {0} exists and is not a socket: remove it or choose another --vsock-uds path"
    )]
    VsockNotSocket(PathBuf),
    /// More devices than slots.
    #[error("{0} virtio devices requested, at most {MAX_SLOTS} fit: use fewer --disk")]
    TooManyDevices(usize),
    /// The console file cannot be opened.
    #[error("cannot open serial output file {path}: {source} (check --serial)")]
    SerialFile {
        /// Path given.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A virtio device could not be created.
    #[error("{what}: {detail}")]
    Device {
        /// Which device.
        what: String,
        /// The device error.
        detail: String,
    },
}

fn console_sink(serial: &SerialOutput) -> Result<ConsoleSink, Error> {
    Ok(match serial {
        SerialOutput::Stdout => ConsoleSink::Stdout,
        SerialOutput::Off => ConsoleSink::Off,
        SerialOutput::File(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::SerialFile {
                    path: path.clone(),
                    source,
                })?;
            ConsoleSink::File(CappedWriter::new(
                LineWriter::new(f),
                CONSOLE_LOG_CAP,
                "\n[voidbox-vmm: console log capped; later output is not kept]\n",
            ))
        }
    })
}

/// Checks the vsock path: a live socket there is an error, a stale one
/// (nobody listening) is removed so the device can bind it.
fn check_vsock_path(path: &Path) -> Result<(), Error> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::VsockNotSocket(path.to_path_buf()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::VsockInUse(path.to_path_buf()));
    }
    tracing::info!("removing stale vsock socket {}", path.display());
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Checks everything that needs no KVM: values, host memory, files.
pub fn preflight(config: &VmConfig) -> Result<(), Error> {
    config.validate()?;
    host::check_memory(config.mem_mib)?;
    // Fail on an unreadable kernel before touching KVM: that error is the one to fix first.
    std::fs::File::open(&config.kernel).map_err(|source| BootError::KernelRead {
        path: config.kernel.clone(),
        source,
    })?;
    for d in &config.disks {
        if !d.path.exists() {
            return Err(Error::DiskMissing(d.path.clone()));
        }
    }
    let devices = config.disks.len() + usize::from(config.vsock.is_some());
    if devices > MAX_SLOTS {
        return Err(Error::TooManyDevices(devices));
    }
    if let Some(v) = &config.vsock {
        check_vsock_path(&v.uds_path)?;
    }
    Ok(())
}

/// The kernel command line: the user's, then one entry per virtio slot.
pub fn full_cmdline(user: &str, slots: &[Slot]) -> String {
    let mut c = user.trim().to_string();
    for s in slots {
        if !c.is_empty() {
            c.push(' ');
        }
        c.push_str(&s.cmdline_entry());
    }
    c
}

/// Builds the VM described by `config` and runs it until the guest ends it.
pub fn run(config: &VmConfig) -> Result<VmOutcome, Error> {
    let machine = build(config)?;
    Ok(machine.run()?)
}

/// Builds the VM described by `config`, ready to [`Machine::run`].
pub fn build(config: &VmConfig) -> Result<Machine, Error> {
    preflight(config)?;
    if host::is_pvm_host() {
        tracing::warn!("{}", host::PVM_WARNING);
    }
    let mem_bytes = u64::from(config.mem_mib) << 20;
    let mut machine = Machine::new(mem_bytes, config.vcpus, console_sink(&config.serial)?)?;

    let kernel = boot::load_kernel(machine.memory(), &config.kernel)?;
    let initrd = boot::load_initrds(
        machine.memory(),
        &config.initrds,
        kernel.kernel_end,
        boot::initrd_addr_max(mem_bytes, &kernel),
    )?;

    let device_count = config.disks.len() + usize::from(config.vsock.is_some());
    let slots = slots::slots(device_count).ok_or(Error::TooManyDevices(device_count))?;

    let tables = acpi::build(usize::from(config.vcpus), &slots)?;
    for (addr, bytes) in &tables.blobs {
        machine
            .memory()
            .write_slice(bytes, GuestAddress(*addr))
            .map_err(VmError::GuestWrite)?;
    }
    boot::write_reset_stub(machine.memory())?;
    let cmdline = full_cmdline(&config.cmdline, &slots);
    let cmdline_len = boot::write_cmdline(machine.memory(), &cmdline)?;

    let (mode, entry) = match kernel.pvh_entry {
        Some(pvh) => (
            boot::write_pvh_info(machine.memory(), mem_bytes, tables.rsdp_addr, initrd)?,
            pvh,
        ),
        None => (
            boot::write_zero_page(
                machine.memory(),
                mem_bytes,
                tables.rsdp_addr,
                cmdline_len,
                initrd,
                kernel.setup_header,
            )?,
            kernel.entry64,
        ),
    };
    tracing::debug!(?mode, entry, "boot");
    machine.configure_boot(mode, entry)?;
    // Last: the vsock device binds its socket, which a later failure would leave behind.
    attach_devices(&mut machine, config, &slots)?;
    Ok(machine)
}

/// Creates the virtio devices (disks in order, then vsock) in their slots.
fn attach_devices(machine: &mut Machine, config: &VmConfig, slots: &[Slot]) -> Result<(), Error> {
    let mut devices: Vec<(String, Box<dyn VirtioDevice>)> = Vec::with_capacity(slots.len());
    for d in &config.disks {
        let what = format!("disk {}", d.path.display());
        let block = Block::new(&d.path, d.read_only, d.serial.clone())
            .map_err(|e| device_error(&what, e))?;
        devices.push((what, Box::new(block)));
    }
    if let Some(v) = &config.vsock {
        let what = format!("vsock {}", v.uds_path.display());
        let vsock = Vsock::new(v.guest_cid, &v.uds_path).map_err(|e| device_error(&what, e))?;
        devices.push((what, Box::new(vsock)));
    }
    for ((what, device), slot) in devices.into_iter().zip(slots) {
        let transport = MmioTransport::new(machine.memory().clone(), device)
            .map_err(|e| device_error(&what, e))?;
        let queue_events = clone_events(transport.queue_events(), &what)?;
        let interrupt = transport
            .interrupt_event()
            .try_clone()
            .map_err(|e| device_error(&what, e))?;
        tracing::debug!(
            slot = slot.index,
            base = slot.base,
            irq = slot.irq,
            "{what}"
        );
        machine.add_mmio_device(
            slot,
            Arc::new(Mutex::new(transport)),
            &queue_events,
            &interrupt,
        )?;
    }
    Ok(())
}

fn clone_events(events: &[EventFd], what: &str) -> Result<Vec<EventFd>, Error> {
    events
        .iter()
        .map(|e| e.try_clone().map_err(|err| device_error(what, err)))
        .collect()
}

fn device_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_slot_entries() {
        let s = slots::slots(2).unwrap();
        assert_eq!(
            full_cmdline(" console=ttyS0 ", &s),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(full_cmdline("", &[]), "");
    }

    #[test]
    fn preflight_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = VmConfig::new(dir.path().join("k"));
        let e = preflight(&c).unwrap_err();
        assert!(
            matches!(e, Error::Boot(BootError::KernelRead { .. })),
            "{e}"
        );
        std::fs::write(dir.path().join("k"), b"not read here").unwrap();
        c.disks.push(crate::DiskConfig {
            path: dir.path().join("missing.img"),
            read_only: false,
            serial: None,
        });
        let e = preflight(&c).unwrap_err();
        assert!(matches!(e, Error::DiskMissing(_)), "{e}");
        c.disks.clear();
        c.mem_mib = 1 << 30;
        assert!(matches!(
            preflight(&c),
            Err(Error::Host(HostError::MemoryTooLarge { .. }))
        ));
        c.mem_mib = 128;
        // A live listener on the vsock path is "in use"; a stale socket is removed.
        let sock = dir.path().join("v.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        c.vsock = Some(crate::VsockConfig {
            uds_path: sock.clone(),
            guest_cid: 3,
        });
        assert!(matches!(preflight(&c), Err(Error::VsockInUse(_))));
        drop(listener);
        preflight(&c).unwrap();
        assert!(!sock.exists());
        std::fs::write(&sock, b"x").unwrap();
        assert!(matches!(preflight(&c), Err(Error::VsockNotSocket(_))));
    }
}
