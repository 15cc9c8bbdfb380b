//! Host checks with actionable errors: /dev/kvm access, memory size, and
//! PVM hosts (where stock guest kernels cannot boot).

use std::fs;
use std::path::Path;

/// Problems with the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No /dev/kvm.
    #[error("/dev/kvm does not exist: load KVM (modprobe kvm_intel or kvm_amd) or run on a host with hardware virtualization")]
    KvmMissing,
    /// No permission on /dev/kvm.
    #[error("permission denied opening /dev/kvm: run as root or add this user to the kvm group (usermod -aG kvm USER) and log in again")]
    KvmDenied,
    /// Other open error.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(std::io::Error),
    /// More guest memory than the host has.
    #[error(
        "--mem-mib {requested} is more than this host's {host_mib} MiB of RAM: lower --mem-mib"
    )]
    MemoryTooLarge {
        /// Requested MiB.
        requested: u32,
        /// Host MemTotal in MiB.
        host_mib: u64,
    },
}

/// Maps an error from opening /dev/kvm to a [`HostError`].
pub fn kvm_open_error(err: std::io::Error) -> HostError {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => HostError::KvmMissing,
        Some(libc::EACCES) | Some(libc::EPERM) => HostError::KvmDenied,
        _ => HostError::KvmOpen(err),
    }
}

/// Host RAM in MiB from /proc/meminfo, if readable.
pub fn host_mem_mib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total_mib(&text)
}

fn parse_mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Fails when `mem_mib` exceeds the host's RAM.
pub fn check_memory(mem_mib: u32) -> Result<(), HostError> {
    match host_mem_mib() {
        Some(host_mib) if u64::from(mem_mib) > host_mib => Err(HostError::MemoryTooLarge {
            requested: mem_mib,
            host_mib,
        }),
        _ => Ok(()),
    }
}

/// True on a PVM host: the kvm_pvm module is loaded and the CPU has
/// neither vmx nor svm.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists() && !cpu_has_hw_virt()
}

/// True when the CPU flags in /proc/cpuinfo show vmx or svm.
pub fn cpu_has_hw_virt() -> bool {
    has_hw_virt(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

fn has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The warning printed on PVM hosts.
pub const PVM_WARNING: &str = "this host's KVM is PVM (kvm_pvm loaded, no vmx/svm): stock guest kernels cannot boot here, a PVM-enabled guest kernel is required (or run the VMM in the nested lane)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cpu_flags() {
        assert_eq!(
            parse_mem_total_mib("MemTotal:       24684544 kB\nMemFree: 1 kB\n"),
            Some(24106)
        );
        assert_eq!(parse_mem_total_mib("nothing"), None);
        assert!(has_hw_virt("flags\t\t: fpu vme svm lm\n"));
        assert!(!has_hw_virt("flags\t\t: fpu vme lm\nmodel name: svm\n"));
    }

    #[test]
    fn open_errors_are_specific() {
        let e = kvm_open_error(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, HostError::KvmMissing));
        let e = kvm_open_error(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(e.to_string().contains("kvm group"));
        assert!(check_memory(u32::MAX).is_err());
        assert!(check_memory(64).is_ok());
    }
}
