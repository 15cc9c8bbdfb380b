//! Settings of a nested lane.

use std::path::PathBuf;
use std::time::Duration;

use voidbox_guest_image::kernel::GuestKernel;

/// How to start a lane. [`LaneConfig::new`] gives the measured defaults (DESIGN.md §8).
#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// The L2 kernel; `None` takes the kernel store's (fetching Debian's if needed).
    pub kernel: Option<GuestKernel>,
    /// Host command that runs the L2 side: the program (absolute host path) plus leading
    /// arguments; `serve` or `relay ...` is appended. E.g. `["/usr/bin/voidbox", "lane-l2"]`.
    pub l2_program: Vec<String>,
    /// Static busybox for the L2 initramfs.
    pub busybox: PathBuf,
    /// QEMU binary (looked up on PATH when relative).
    pub qemu: PathBuf,
    /// L1 CPU model: must have SVM + NPT (and xsave for KVM_CAP_XSAVE). EPYC is fastest.
    pub cpu: String,
    /// L2 vCPUs.
    pub smp: u32,
    /// L2 memory in MiB.
    pub mem_mib: u32,
    /// Host directories shared read-write into L2 at the same path (the host `/` is shared
    /// read-only; L2's `/run` is a private tmpfs, the host's `/tmp` is shared read-write).
    pub shared_dirs: Vec<PathBuf>,
    /// Number of relay ports (`voidbox.relay.<n>`), each a host Unix socket.
    pub relay_ports: u32,
    /// Limit for L1 start → L2 server ready.
    pub start_timeout: Duration,
    /// Where the lane's private directory is created (default: the system temp dir).
    pub work_parent: Option<PathBuf>,
}

impl LaneConfig {
    /// Defaults: `-cpu EPYC`, 2 vCPUs, 4 GiB, one relay port, 180 s start limit.
    pub fn new(l2_program: Vec<String>) -> Self {
        LaneConfig {
            kernel: None,
            l2_program,
            busybox: PathBuf::from("/bin/busybox"),
            qemu: PathBuf::from("qemu-system-x86_64"),
            cpu: "EPYC".into(),
            smp: 2,
            mem_mib: 4096,
            shared_dirs: Vec::new(),
            relay_ports: 1,
            start_timeout: Duration::from_secs(180),
            work_parent: None,
        }
    }
}
