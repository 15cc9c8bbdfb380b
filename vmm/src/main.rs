//! `voidbox-vmm`: boot one Linux microVM and exit with how it ended.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use voidbox_vmm::{exit_code, seccomp, DiskConfig, SerialOutput, VmConfig, VmOutcome, VsockConfig};

const AFTER_HELP: &str = "\
Exit status:
  0  the guest reset (i8042 with reboot=k, ACPI reset, triple fault) or powered off (ACPI)
  1  VMM error (the message says what to fix)
  2  usage error
  3  the guest kernel panicked (the last console lines are printed on stderr)

The VMM appends virtio_mmio.device=4K@ADDR:IRQ entries to the command line and
describes the same devices in ACPI (LNRO0005), so stock kernels with virtio_mmio
as a module find them. Device slots: disks in --disk order, then vsock.";

/// Boot a Linux kernel in a KVM microVM with virtio-blk disks and vsock.
#[derive(Debug, Parser)]
#[command(name = "voidbox-vmm", version, after_help = AFTER_HELP)]
struct Cli {
    /// JSON file with the whole VM configuration (the VmConfig schema);
    /// cannot be combined with the other VM flags.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["kernel", "initrd", "cmdline", "mem_mib", "vcpus", "disk", "vsock_uds", "cid", "serial"])]
    config: Option<PathBuf>,

    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a bzImage.
    #[arg(long, value_name = "K", required_unless_present = "config")]
    kernel: Option<PathBuf>,

    /// Initramfs archive; repeat to concatenate several, in order.
    #[arg(long, value_name = "I")]
    initrd: Vec<PathBuf>,

    /// Kernel command line (e.g. "console=ttyS0 reboot=k panic=-1").
    #[arg(long, value_name = "C", default_value = "")]
    cmdline: String,

    /// Guest RAM in MiB (at least 64, at most the host's RAM).
    #[arg(long, value_name = "M", default_value_t = voidbox_vmm::config::DEFAULT_MEM_MIB)]
    mem_mib: u32,

    /// Number of vCPUs, all online at boot (1 to 32).
    #[arg(long, value_name = "N", default_value_t = voidbox_vmm::config::DEFAULT_VCPUS)]
    vcpus: u8,

    /// virtio-blk disk backed by a raw image: PATH[,ro][,serial=ID]; repeat for more.
    /// `ro` makes it read-only; `serial` (max 20 bytes) is the id the guest sees.
    #[arg(long, value_name = "PATH[,ro][,serial=ID]")]
    disk: Vec<DiskConfig>,

    /// Enable virtio-vsock with this host Unix socket. Host-to-guest: connect
    /// and send "CONNECT <port>\n"; guest-to-host port P: listen on PATH_P.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,

    /// Guest vsock context id (with --vsock-uds).
    #[arg(long, value_name = "N", requires = "vsock_uds", default_value_t = voidbox_vmm::config::DEFAULT_GUEST_CID)]
    cid: u64,

    /// Serial console (ttyS0) destination: stdout, off, or a file path.
    #[arg(long, value_name = "stdout|off|PATH", default_value = "stdout")]
    serial: SerialOutput,

    /// Stop the VM (exit 1) as soon as the process that started voidbox-vmm
    /// exits, however it ends (crash, SIGKILL). Combines with --config.
    #[arg(long)]
    exit_with_parent: bool,

    /// Seccomp filters, one per VMM thread (main, vCPU, each device, parent
    /// watcher); a forbidden system call kills the VMM with SIGSYS. `off` is
    /// for debugging only (also VOIDBOX_VMM_SECCOMP=off) and is warned about.
    #[arg(long, value_name = "on|off", default_value = "on")]
    seccomp: voidbox_vmm::seccomp::Mode,
}

impl Cli {
    fn into_config(self) -> anyhow::Result<VmConfig> {
        if let Some(path) = self.config {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read --config {}", path.display()))?;
            return serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a valid VM configuration (see the VmConfig docs for the schema)",
                    path.display()
                )
            });
        }
        Ok(VmConfig {
            kernel: self.kernel.context("--kernel is required")?,
            initrds: self.initrd,
            cmdline: self.cmdline,
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
            disks: self.disk,
            vsock: self.vsock_uds.map(|uds_path| VsockConfig {
                uds_path,
                guest_cid: self.cid,
            }),
            serial: self.serial,
        })
    }
}

/// Compile the seccomp filters each thread installs, unless `--seccomp off`
/// or `VOIDBOX_VMM_SECCOMP=off` turns them off.
fn seccomp(flag: seccomp::Mode) -> Result<(), seccomp::SeccompError> {
    let env_off = std::env::var_os(seccomp::ENV).is_some_and(|v| v == "off");
    if flag == seccomp::Mode::Off || env_off {
        let how = if flag == seccomp::Mode::Off {
            "--seccomp off".to_string()
        } else {
            format!("{}=off", seccomp::ENV)
        };
        tracing::warn!(
            "{how}: seccomp filters are OFF; a compromised VMM thread can make any system call (use this for debugging only)"
        );
        return Ok(());
    }
    seccomp::enable()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VOIDBOX_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(voidbox_vmm::logcap::capped_stderr)
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    if let Err(e) = seccomp(cli.seccomp) {
        eprintln!("voidbox-vmm: error: {e}");
        return ExitCode::from(exit_code::VMM_ERROR as u8);
    }
    if cli.exit_with_parent {
        if let Err(e) = voidbox_vmm::parent::exit_with_parent() {
            eprintln!("voidbox-vmm: error: {e}");
            return ExitCode::from(exit_code::VMM_ERROR as u8);
        }
    }
    let result = cli.into_config().and_then(|c| Ok(voidbox_vmm::run(&c)?));
    let code = match result {
        Ok(outcome) => {
            if let VmOutcome::Panic { source, last_lines } = &outcome {
                eprintln!("voidbox-vmm: the guest kernel panicked (seen via {source:?}); last console lines:");
                for line in last_lines {
                    eprintln!("  | {line}");
                }
            }
            outcome.exit_code()
        }
        Err(e) => {
            // Library errors already name their cause; other errors carry
            // context layers worth printing in full.
            match e.downcast_ref::<voidbox_vmm::Error>() {
                Some(vmm) => eprintln!("voidbox-vmm: error: {vmm}"),
                None => eprintln!("voidbox-vmm: error: {e:#}"),
            }
            exit_code::VMM_ERROR
        }
    };
    // The vCPU and device threads need no orderly shutdown: exiting ends them.
    ExitCode::from(code as u8)
}
