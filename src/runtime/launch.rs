//! Where and how a VM's VMM is started: the launch options, the choice between a
//! local child (hardware KVM) and the nested lane, the lane's sizing, finding the
//! binaries, and the VMM's command line (jailed or not). One [`Launcher`] serves a whole
//! process: a standalone `voidbox run` or a daemon with many sandboxes.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use voidbox_vmm::VmConfig;

use super::error::{Error, Result};
use crate::lane::{detect_host_kvm, HostKvm, Lane, LaneConfig, Launcher};

/// How to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Refuse the nested lane (fail with the reason instead).
    pub no_nested: bool,
    /// Limit for launch → authenticated agent (lane start included).
    pub boot_timeout: Duration,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        let secs = std::env::var("VOIDBOX_BOOT_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(180);
        LaunchOptions {
            no_nested: false,
            boot_timeout: Duration::from_secs(secs),
        }
    }
}

/// Where the VM runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchMode {
    /// Local child on hardware KVM.
    Local,
    /// Inside the nested lane, for this reason.
    NestedLane(String),
}

impl LaunchMode {
    /// `local` or `nested-lane`.
    pub fn name(&self) -> &'static str {
        match self {
            LaunchMode::Local => "local",
            LaunchMode::NestedLane(_) => "nested-lane",
        }
    }
}

/// Decides how to launch; with `no_nested` on a host that needs the lane,
/// fails with the explanation.
pub fn choose_launch(opts: &LaunchOptions) -> Result<LaunchMode> {
    let forced = std::env::var_os("VOIDBOX_FORCE_LANE").is_some_and(|v| v == "1");
    match detect_host_kvm() {
        HostKvm::Hardware if !forced => Ok(LaunchMode::Local),
        HostKvm::Hardware => Ok(LaunchMode::NestedLane("VOIDBOX_FORCE_LANE=1".into())),
        HostKvm::Unusable(reason) if opts.no_nested => Err(Error::Launch(format!(
            "{reason}, and --no-nested turned the nested lane off; {}",
            lane_advice()
        ))),
        HostKvm::Unusable(reason) => Ok(LaunchMode::NestedLane(reason)),
    }
}

fn lane_advice() -> &'static str {
    "to boot VMs directly use a host with hardware KVM (vmx/svm), or point `sandbox.kernel` and `sandbox.initramfs` at a PVM-enabled guest kernel and a matching initramfs (untested)"
}

/// The once-per-run notice about the nested lane.
pub fn lane_notice(reason: &str) -> String {
    format!(
        "voidbox: {reason}; running the VM inside the nested lane (QEMU TCG + KVM, slower to start). {}; --no-nested turns the lane off.",
        capitalize(lane_advice())
    )
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// How big a nested lane to start: enough L2 memory for every guest it will
/// carry plus L2's own, and one relay port per VM it carries at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneSizing {
    /// L2 memory in MiB.
    pub mem_mib: u32,
    /// L2 vCPUs.
    pub smp: u32,
    /// VMs at once (one relay port each).
    pub vms: u32,
}

/// Largest number of VMs one lane carries: QEMU's virtio-serial bus has 32
/// ports and the lane's control channel takes one.
pub const MAX_LANE_VMS: u32 = 31;

/// L2's own memory besides its guests (kernel, init, the VMMs, the lane server).
const LANE_OVERHEAD_MIB: u32 = 768;

impl LaneSizing {
    /// A lane for one VM of `memory_mb` and `vcpus`.
    pub fn for_one(memory_mb: u32, vcpus: u32) -> Self {
        LaneSizing {
            mem_mib: (memory_mb + LANE_OVERHEAD_MIB).max(1536),
            smp: vcpus.clamp(1, 2),
            vms: 1,
        }
    }

    /// A lane for up to `vms` VMs whose memory adds up to `total_memory_mb`.
    pub fn for_many(vms: u32, total_memory_mb: u32) -> Result<Self> {
        if vms == 0 || vms > MAX_LANE_VMS {
            return Err(Error::Launch(format!(
                "a nested lane carries 1 to {MAX_LANE_VMS} VMs at once (one virtio-serial relay port each), not {vms}; lower the sandbox limit"
            )));
        }
        Ok(LaneSizing {
            // Each VMM also takes some memory of its own in L2.
            mem_mib: (total_memory_mb + LANE_OVERHEAD_MIB + 64 * vms).max(1536),
            // One L1 vCPU: with two (multi-threaded TCG), L2's kernel overflowed
            // a vcpu thread's stack and panicked under 8 busy VMs in 3 of 3
            // runs; with one, 4 rounds of the same 100 execs passed.
            smp: 1,
            vms,
        })
    }
}

impl LaunchMode {
    /// Starts what this mode needs: nothing locally, a lane sized by `sizing`
    /// (sharing `home` read-write with L2) otherwise.
    pub fn open(
        &self,
        home: &Path,
        sizing: LaneSizing,
        opts: &LaunchOptions,
    ) -> Result<Arc<Launcher>> {
        match self {
            LaunchMode::Local => Ok(Arc::new(Launcher::Local)),
            LaunchMode::NestedLane(_) => {
                let mut cfg =
                    LaneConfig::new(vec![self_exe()?.display().to_string(), "lane-l2".into()]);
                // The whole home (run dirs, logs, disks, guest files) at the same
                // path: L2's own /tmp and /run are private, so a home there
                // would otherwise be invisible to the VMM.
                cfg.shared_dirs = vec![home.to_path_buf()];
                cfg.mem_mib = sizing.mem_mib;
                cfg.smp = sizing.smp;
                cfg.relay_ports = sizing.vms;
                cfg.start_timeout = opts.boot_timeout;
                let lane = Lane::start(cfg)
                    .map_err(|e| Error::Launch(format!("the nested lane did not start: {e}")))?;
                Ok(Arc::new(Launcher::Lane(Box::new(lane))))
            }
        }
    }
}

/// The `voidbox-vmm` binary: `$VOIDBOX_VMM`, next to this executable, or on PATH.
pub fn find_vmm() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VOIDBOX_VMM").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("voidbox-vmm"));
            // Test binaries live in target/<profile>/deps/.
            if let Some(up) = dir.parent() {
                candidates.push(up.join("voidbox-vmm"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("voidbox-vmm")));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::Launch(
            "voidbox-vmm was not found next to voidbox or on PATH; build it with `cargo build -p voidbox-vmm` (or set VOIDBOX_VMM)".into(),
        )
    })
}

/// This executable, for the lane's L2 side (`voidbox lane-l2 ...`) and the
/// VMM jail (`voidbox vmm-jail ...`).
pub(super) fn self_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VOIDBOX_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe =
        std::env::current_exe().map_err(|e| Error::host("cannot find the voidbox binary", e))?;
    // Under `cargo test` the current exe is a test harness: use the built CLI.
    if exe.file_name().is_some_and(|n| n == "voidbox") {
        return Ok(exe);
    }
    let candidates = [
        exe.parent().map(|d| d.join("voidbox")),
        exe.parent()
            .and_then(Path::parent)
            .map(|d| d.join("voidbox")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Launch("the voidbox binary was not found for the nested lane; build it (`cargo build`) or set VOIDBOX_BIN".into()))
}

pub(super) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::host(format!("cannot write {}", path.display()), e))?;
    f.write_all(data)
        .map_err(|e| Error::host(format!("cannot write {}", path.display()), e))
}

/// The jailer for a launch (the voidbox binary), or None to start the VMM
/// unjailed: with `VOIDBOX_JAIL=off` (debugging), or locally when voidbox is
/// not root (the jail needs root; said once on stderr, seccomp still holds).
/// The lane's L2 always runs it as root.
pub(super) fn jailer(lane: bool) -> Result<Option<PathBuf>> {
    if !crate::jail::enabled() {
        return Ok(None);
    }
    // SAFETY: geteuid(2) has no preconditions.
    if !lane && unsafe { libc::geteuid() } != 0 {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            eprintln!(
                "voidbox: not running as root, so the VMM starts without its jail (namespaces, private root, cgroup limits); its seccomp filters still apply. Run as root for the jail, or set VOIDBOX_JAIL=off to say you mean it."
            )
        });
        return Ok(None);
    }
    Ok(Some(self_exe()?))
}

/// The command line that starts the VMM with config `cfg_path`. Jailed (with
/// `jailer`, the voidbox binary): `voidbox vmm-jail --spec <run>/jail.json --
/// voidbox-vmm --config <run>/vm.json`, after writing the jail spec derived from
/// `cfg`; the jailer stops the VMM when voidbox (or, in the lane, the lane
/// server) exits. Unjailed: `voidbox-vmm --exit-with-parent --config
/// <run>/vm.json`. The same on both launch paths.
pub(super) fn vmm_argv(
    vmm_bin: &Path,
    cfg: &VmConfig,
    cfg_path: &Path,
    run_dir: &Path,
    jailer: Option<&Path>,
) -> Result<Vec<String>> {
    let config = ["--config".to_string(), cfg_path.display().to_string()];
    let Some(jailer) = jailer else {
        let mut argv = vec![vmm_bin.display().to_string(), "--exit-with-parent".into()];
        argv.extend(config);
        return Ok(argv);
    };
    let spec = crate::jail::JailSpec::for_vm(cfg, run_dir, cfg_path);
    let spec_path = run_dir.join("jail.json");
    write_private(
        &spec_path,
        &serde_json::to_vec_pretty(&spec).expect("jail spec serializes"),
    )?;
    // The jailer wants an absolute VMM path (it is bound at that path in the jail).
    let vmm_bin = fs::canonicalize(vmm_bin)
        .map_err(|e| Error::host(format!("cannot find {}", vmm_bin.display()), e))?;
    let mut argv = vec![
        jailer.display().to_string(),
        "vmm-jail".into(),
        "--spec".into(),
        spec_path.display().to_string(),
        "--".into(),
        vmm_bin.display().to_string(),
    ];
    argv.extend(config);
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use voidbox_vmm::VsockConfig;

    #[test]
    fn the_vmm_starts_through_the_jail_with_a_spec_next_to_vm_json() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let vmm = run.join("voidbox-vmm");
        fs::write(&vmm, b"").unwrap();
        let mut cfg = VmConfig::new(run.join("k"));
        cfg.vsock = Some(VsockConfig {
            uds_path: run.join("vsock.sock"),
            guest_cid: 3,
        });
        let cfg_path = run.join("vm.json");
        let jailer = run.join("voidbox");
        let argv = vmm_argv(&vmm, &cfg, &cfg_path, run, Some(&jailer)).unwrap();
        assert_eq!(argv[0], jailer.display().to_string());
        assert_eq!(
            argv[1..5],
            [
                "vmm-jail",
                "--spec",
                &run.join("jail.json").display().to_string(),
                "--"
            ]
        );
        assert_eq!(
            argv[5..],
            [
                vmm.display().to_string(),
                "--config".into(),
                cfg_path.display().to_string()
            ]
        );
        assert!(!argv.iter().any(|a| a == "--exit-with-parent"));
        let spec = crate::jail::JailSpec::load(&run.join("jail.json")).unwrap();
        assert_eq!(spec, crate::jail::JailSpec::for_vm(&cfg, run, &cfg_path));
        // Unjailed: the VMM watches its parent itself.
        let argv = vmm_argv(&vmm, &cfg, &cfg_path, run, None).unwrap();
        assert_eq!(argv[1], "--exit-with-parent");
    }
}
