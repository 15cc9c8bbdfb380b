//! `VmConfig`: everything needed to start one VM. It is also the JSON schema
//! of `voidbox-vmm --config FILE.json`.
//!
//! Example (every field but `kernel` may be left out):
//! ```json
//! {
//!   "kernel": "/path/vmlinux",
//!   "initrds": ["/path/base.cpio.gz", "/run/x/boot.cpio"],
//!   "cmdline": "console=ttyS0 quiet",
//!   "mem_mib": 256,
//!   "vcpus": 2,
//!   "disks": [{"path": "/path/root.ext4", "read_only": true, "serial": "root"}],
//!   "vsock": {"uds_path": "/run/x/vsock.sock", "guest_cid": 3},
//!   "serial": "stdout"
//! }
//! ```
//! `serial` is `"stdout"`, `"off"`, or `{"file": "/path/console.log"}`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Default guest memory in MiB.
pub const DEFAULT_MEM_MIB: u32 = 256;
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest context id for vsock (2 is the host, 3 is the first guest id).
pub const DEFAULT_GUEST_CID: u64 = 3;
/// Smallest guest memory accepted: a stock kernel plus a small initramfs.
pub const MIN_MEM_MIB: u32 = 64;
/// Most vCPUs: one APIC id byte, and IOAPIC/MADT limits we use.
pub const MAX_VCPUS: u8 = 32;

/// One VM's complete configuration (the `--config` JSON schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF vmlinux (PVH entry preferred) or a bzImage.
    pub kernel: PathBuf,
    /// Initramfs archives, concatenated in this order into one initrd.
    #[serde(default)]
    pub initrds: Vec<PathBuf>,
    /// Kernel command line. The VMM appends `virtio_mmio.device=` entries.
    #[serde(default)]
    pub cmdline: String,
    /// Guest RAM in MiB.
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u32,
    /// Number of vCPUs (all online at boot, described in the ACPI MADT).
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// virtio-blk disks, in slot order.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Optional virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Where the 16550 console (ttyS0) goes.
    #[serde(default)]
    pub serial: SerialOutput,
}

fn default_mem_mib() -> u32 {
    DEFAULT_MEM_MIB
}

fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

/// One virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Expose the disk read-only (writes fail in the guest).
    #[serde(default)]
    pub read_only: bool,
    /// virtio-blk serial (device id), at most 20 bytes; the guest finds
    /// the disk by it (`/sys/block/vdX/serial`).
    #[serde(default)]
    pub serial: Option<String>,
}

/// The virtio-vsock device and its host Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Host Unix socket: host-initiated connections connect here and send
    /// `CONNECT <port>\n`; guest connections to port P go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
    /// Guest context id (>= 3).
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
}

fn default_cid() -> u64 {
    DEFAULT_GUEST_CID
}

/// Destination of the guest serial console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Discarded (panic detection still sees the console lines).
    Off,
    /// Appended to this file (created if missing).
    File(PathBuf),
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--disk` text that does not parse.
    #[error("invalid disk `{spec}`: {reason} (expected PATH[,ro][,serial=ID])")]
    Disk {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Memory below the minimum.
    #[error("--mem-mib {0} is too small: a Linux guest needs at least {MIN_MEM_MIB} MiB (use --mem-mib {MIN_MEM_MIB} or more)")]
    MemoryTooSmall(u32),
    /// vCPU count out of range.
    #[error("--vcpus {0} is out of range: use 1 to {MAX_VCPUS}")]
    Vcpus(u8),
    /// Reserved or invalid context id.
    #[error(
        "--cid {0} is invalid: guest context ids start at 3 (0-2 are reserved) and fit in 32 bits"
    )]
    GuestCid(u64),
    /// Disk serial too long.
    #[error("disk serial `{0}` is longer than 20 bytes (the virtio-blk id limit): shorten it")]
    SerialTooLong(String),
}

/// Longest virtio-blk serial (VIRTIO_BLK_ID_BYTES).
pub const MAX_DISK_SERIAL: usize = 20;

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrds: Vec::new(),
            cmdline: String::new(),
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: DEFAULT_VCPUS,
            disks: Vec::new(),
            vsock: None,
            serial: SerialOutput::Stdout,
        }
    }

    /// Checks the values that need no file system or host access.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemoryTooSmall(self.mem_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX) {
                return Err(ConfigError::GuestCid(v.guest_cid));
            }
        }
        for d in &self.disks {
            if let Some(s) = &d.serial {
                if s.len() > MAX_DISK_SERIAL {
                    return Err(ConfigError::SerialTooLong(s.clone()));
                }
            }
        }
        Ok(())
    }
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    /// Parses `PATH[,ro][,serial=ID]` (the `--disk` syntax).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ConfigError::Disk {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = spec.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(err("the path is empty"));
        }
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            read_only: false,
            serial: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => disk.read_only = true,
                None if opt == "rw" => disk.read_only = false,
                Some(("serial", id)) if !id.is_empty() => {
                    if id.len() > MAX_DISK_SERIAL {
                        return Err(ConfigError::SerialTooLong(id.to_string()));
                    }
                    disk.serial = Some(id.to_string());
                }
                _ => return Err(err(&format!("unknown option `{opt}`"))),
            }
        }
        Ok(disk)
    }
}

impl FromStr for SerialOutput {
    type Err = std::convert::Infallible;

    /// `stdout`, `off`, or any other text as a file path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" => SerialOutput::Stdout,
            "off" => SerialOutput::Off,
            path => SerialOutput::File(Path::new(path).to_path_buf()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_spec_parses_options() {
        let d: DiskConfig = "/a/b.img,ro,serial=root".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/a/b.img"));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("root"));
        let d: DiskConfig = "x.img".parse().unwrap();
        assert!(!d.read_only && d.serial.is_none());
    }

    #[test]
    fn disk_spec_rejects_bad_options() {
        assert!(matches!(
            "x.img,rox".parse::<DiskConfig>(),
            Err(ConfigError::Disk { .. })
        ));
        assert!(matches!(
            ",ro".parse::<DiskConfig>(),
            Err(ConfigError::Disk { .. })
        ));
        assert!(matches!(
            "x,serial=".parse::<DiskConfig>(),
            Err(ConfigError::Disk { .. })
        ));
        assert!(matches!(
            "x,serial=123456789012345678901".parse::<DiskConfig>(),
            Err(ConfigError::SerialTooLong(_))
        ));
    }

    #[test]
    fn json_defaults_and_serial_forms() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k"));
        let c: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","serial":{"file":"/tmp/c.log"}}"#).unwrap();
        assert_eq!(c.serial, SerialOutput::File("/tmp/c.log".into()));
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k","serial":"off"}"#).unwrap();
        assert_eq!(c.serial, SerialOutput::Off);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","bogus":1}"#).is_err());
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn validate_limits() {
        let mut c = VmConfig::new("/k");
        assert!(c.validate().is_ok());
        c.mem_mib = 16;
        assert_eq!(c.validate(), Err(ConfigError::MemoryTooSmall(16)));
        c.mem_mib = 128;
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(0)));
        c.vcpus = 2;
        c.vsock = Some(VsockConfig {
            uds_path: "/tmp/v".into(),
            guest_cid: 2,
        });
        assert_eq!(c.validate(), Err(ConfigError::GuestCid(2)));
    }
}
