//! Starting and stopping the VM of a plan (where: [`super::launch`]): boot data and VMM config in the
//! run directory, `voidbox-vmm` as a local child (hardware KVM) or inside the
//! nested lane (otherwise), and the authenticated agent connection (direct
//! vsock socket, or relayed over the lane's virtio-serial port).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use voidbox_guest_agent::boot_data::{BootData, Clock, DiskMount};
use voidbox_guest_agent::protocol::UserSpec;
use voidbox_vmm::{DiskConfig, SerialOutput, VmConfig, VsockConfig};

use super::cancel::{Cancel, HookGuard};
use super::error::{Error, Result};
use super::launch::{find_vmm, jailer, vmm_argv, write_private, LaunchOptions};
use super::plan::Plan;
use super::rundir::{console_log_path, log_tail, RunDir};
use crate::client::{Client, ClientError, Secret, VSOCK_PORT};
use crate::lane::{CommandSpec, LaneProcess, Launcher};

/// Kernel command line of every guest. `initcall_blacklist=cmos_init` and
/// `pci=off` skip probes that are slow under nesting and useless here.
pub const CMDLINE: &str = "console=ttyS0 reboot=k quiet initcall_blacklist=cmos_init pci=off";

/// Console lines shown with a boot error.
const TAIL_LINES: usize = 20;
fn user_spec(plan: &Plan) -> UserSpec {
    let (uid, gid) = plan.user_ids();
    UserSpec { uid, gid }
}

/// The boot data of a plan.
pub fn boot_data(plan: &Plan, secret: &Secret) -> BootData {
    let mut data = BootData::new(secret);
    data.allow_commands = plan.allow_commands.clone();
    data.disks.base_serial = plan.rootfs.as_ref().map(|r| r.serial.clone());
    data.disks.skills = plan
        .skills
        .iter()
        .map(|s| DiskMount {
            serial: s.image.serial.clone(),
            path: s.mount.clone(),
            fstype: "ext4".into(),
        })
        .collect();
    data.user = user_spec(plan);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    data.clock = Some(Clock {
        unix_secs: now.as_secs() as i64,
        nanos: now.subsec_nanos(),
    });
    data.hostname = Some(plan.name.clone());
    data
}

/// The VMM configuration of a plan.
pub fn vm_config(plan: &Plan, boot_archive: &Path, vsock_uds: &Path, console: &Path) -> VmConfig {
    let mut cfg = VmConfig::new(&plan.guest.kernel);
    cfg.initrds = vec![plan.guest.initramfs.clone(), boot_archive.to_path_buf()];
    cfg.cmdline = CMDLINE.to_string();
    cfg.mem_mib = plan.memory_mb;
    cfg.vcpus = plan.vcpus.min(u32::from(u8::MAX)) as u8;
    let disks = plan
        .rootfs
        .iter()
        .chain(plan.skills.iter().map(|s| &s.image));
    cfg.disks = disks
        .map(|d| DiskConfig {
            path: d.disk.clone(),
            read_only: true,
            serial: Some(d.serial.clone()),
        })
        .collect();
    cfg.vsock = Some(VsockConfig {
        uds_path: vsock_uds.to_path_buf(),
        guest_cid: voidbox_vmm::config::DEFAULT_GUEST_CID,
    });
    cfg.serial = SerialOutput::File(console.to_path_buf());
    cfg
}
/// L2 has a private `/run` (the host's `/tmp` is shared): a boot file there
/// (outside the shared home) is linked or copied into the run directory, which L2 sees.
fn visible_in_lane(path: &Path, home: &Path, run_dir: &Path, name: &str) -> Result<PathBuf> {
    let private = path.starts_with("/run");
    if path.starts_with(home) || !private {
        return Ok(path.to_path_buf());
    }
    let dest = run_dir.join(format!("lane-{name}"));
    if fs::hard_link(path, &dest).is_err() {
        fs::copy(path, &dest).map_err(|e| {
            Error::host(
                format!("cannot copy {} into the run directory", path.display()),
                e,
            )
        })?;
    }
    Ok(dest)
}
// One value per VM: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Vmm {
    Local(Child),
    Lane {
        relay: LaneProcess,
        vmm: LaneProcess,
        /// The relay port this VM holds (given back when it is dropped).
        port: u32,
    },
}

/// A booted VM with an authenticated agent connection. Dropping it stops
/// the VM and removes the run directory.
pub struct Vm {
    client: Option<Client>,
    /// Behind a lock so that `&Vm` can check and kill it (a daemon's execs
    /// share a sandbox while another request destroys it).
    vmm: Mutex<Option<Vmm>>,
    /// Where the VMM runs; outlives it (a lane is shared by every VM of a daemon).
    launcher: Arc<Launcher>,
    run_dir: Option<RunDir>,
    console: PathBuf,
    vmm_stderr: PathBuf,
    _cancel_hook: Option<HookGuard>,
    /// Time from launch to the authenticated connection.
    pub boot_time: Duration,
}

impl Vm {
    /// Boots the plan's VM through `launcher` and connects to its agent.
    pub fn start(
        plan: &Plan,
        home: &Path,
        launcher: &Arc<Launcher>,
        opts: &LaunchOptions,
        cancel: &Cancel,
    ) -> Result<Vm> {
        let started = Instant::now();
        let run_dir = RunDir::create(home, &plan.name)?;
        let console = console_log_path(home, &plan.name)?;
        let secret = Secret::generate();
        let boot_archive = run_dir.path().join("boot.cpio");
        write_private(&boot_archive, &boot_data(plan, &secret).to_newc_archive())?;
        let vmm_bin = find_vmm()?;
        let vmm_stderr = run_dir.path().join("vmm.stderr");
        let mut vm = Vm {
            client: None,
            vmm: Mutex::new(None),
            launcher: launcher.clone(),
            run_dir: Some(run_dir),
            console: console.clone(),
            vmm_stderr: vmm_stderr.clone(),
            _cancel_hook: None,
            boot_time: Duration::ZERO,
        };
        let run_path = vm.run_path().to_path_buf();
        let deadline = started + opts.boot_timeout;
        match launcher.lane() {
            None => {
                let uds = run_path.join("vsock.sock");
                let cfg = vm_config(plan, &boot_archive, &uds, &console);
                let cfg_path = run_path.join("vm.json");
                write_private(
                    &cfg_path,
                    &serde_json::to_vec_pretty(&cfg).expect("config serializes"),
                )?;
                let stderr = fs::File::create(&vmm_stderr)
                    .map_err(|e| Error::host("cannot create the VMM log", e))?;
                let argv = vmm_argv(
                    &vmm_bin,
                    &cfg,
                    &cfg_path,
                    &run_path,
                    jailer(false)?.as_deref(),
                )?;
                let mut cmd = Command::new(&argv[0]);
                // The VMM gets no secrets from our environment (API keys, agent sockets).
                cmd.env_clear();
                // Debugging switches only: the VMM's log level, and seccomp off.
                for key in ["VOIDBOX_VMM_LOG", "VOIDBOX_VMM_SECCOMP"] {
                    if let Some(v) = std::env::var_os(key) {
                        cmd.env(key, v);
                    }
                }
                cmd.args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .process_group(0);
                let child = cmd
                    .spawn()
                    .map_err(|e| Error::Launch(format!("cannot start {}: {e}", argv[0])))?;
                let pid = child.id() as i32;
                vm._cancel_hook = Some(cancel.on_cancel(move || {
                    // SAFETY: kill(2) on our own child's process group; no memory effects.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }));
                *vm.vmm.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(Vmm::Local(child));
                vm.connect_local(&uds, &secret, deadline, cancel)?;
                // The jail's report is the log's first line: read only its head.
                let mut head = Vec::new();
                if let Ok(f) = fs::File::open(&vmm_stderr) {
                    let _ =
                        std::io::Read::read_to_end(&mut std::io::Read::take(f, 4096), &mut head);
                }
                vm.report_jail(&String::from_utf8_lossy(&head));
            }
            Some(lane) => {
                if cancel.is_cancelled() {
                    return Err(Error::Interrupted);
                }
                let Some(port) = lane.claim_relay() else {
                    return Err(Error::Capacity(
                        "every relay port of the nested lane is taken (one per running VM); stop a sandbox first".into(),
                    ));
                };
                // Unix sockets cannot live on the 9p share: the VMM's goes in L2's /run.
                let name = run_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Jailed, the socket gets a directory of its own to expose.
                let lane_jailer = jailer(true)?;
                let l2_uds = if lane_jailer.is_some() {
                    PathBuf::from(format!("/run/{name}/vsock.sock"))
                } else {
                    PathBuf::from(format!("/run/{name}.vsock"))
                };
                let mut lane_plan = plan.clone();
                let visible = |p: &Path, n: &str| visible_in_lane(p, home, &run_path, n);
                let spawned = (|| {
                    lane_plan.guest.kernel = visible(&plan.guest.kernel, "kernel")?;
                    lane_plan.guest.initramfs = visible(&plan.guest.initramfs, "initramfs")?;
                    let cfg = vm_config(&lane_plan, &boot_archive, &l2_uds, &console);
                    let cfg_path = run_path.join("vm.json");
                    write_private(
                        &cfg_path,
                        &serde_json::to_vec_pretty(&cfg).expect("config serializes"),
                    )?;
                    let vmm = lane
                        .spawn(&CommandSpec::new(vmm_argv(
                            &vmm_bin,
                            &cfg,
                            &cfg_path,
                            &run_path,
                            lane_jailer.as_deref(),
                        )?))
                        .map_err(|e| {
                            Error::Launch(format!("cannot start the VMM in the nested lane: {e}"))
                        })?;
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(5));
                    let relay = lane
                        .start_relay(port, &l2_uds, VSOCK_PORT, left)
                        .map_err(|e| Error::Launch(format!("cannot start the vsock relay: {e}")))?;
                    Ok((vmm, relay))
                })();
                let (vmm, relay) = match spawned {
                    Ok(v) => v,
                    Err(e) => {
                        lane.release_relay(port);
                        return Err(e);
                    }
                };
                let relay_sock = lane.relay_socket(port);
                *vm.vmm.get_mut().unwrap_or_else(|e| e.into_inner()) =
                    Some(Vmm::Lane { relay, vmm, port });
                vm.connect_lane(&relay_sock, &secret, deadline, cancel)?;
                let said = match &*vm.vmm() {
                    Some(Vmm::Lane { vmm, .. }) => {
                        String::from_utf8_lossy(vmm.stderr_so_far()).into_owned()
                    }
                    _ => String::new(),
                };
                vm.report_jail(&said);
            }
        }
        vm.boot_time = started.elapsed();
        Ok(vm)
    }

    /// Log (at info, `voidbox -v`) what the VMM's jail says holds, or that there is none.
    fn report_jail(&self, vmm_stderr: &str) {
        match vmm_stderr
            .lines()
            .find(|l| l.starts_with("voidbox vmm-jail: ") && !l.contains("error"))
        {
            Some(line) => tracing::info!("{line}"),
            None => tracing::info!("the VMM runs without its jail"),
        }
    }

    fn run_path(&self) -> &Path {
        self.run_dir.as_ref().expect("present until drop").path()
    }

    /// The authenticated agent connection.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("connected in start")
    }

    /// The console log.
    pub fn console_log(&self) -> &Path {
        &self.console
    }

    /// A boot error naming the console log and showing its last lines.
    pub fn boot_error(&self, message: impl Into<String>) -> Error {
        let mut message = message.into();
        for line in log_tail(&self.vmm_stderr, 5) {
            message.push_str(&format!("\n  voidbox-vmm: {line}"));
        }
        Error::Boot {
            message,
            log: self.console.clone(),
            tail: log_tail(&self.console, TAIL_LINES),
        }
    }

    /// Whether the VMM has exited, and how.
    fn vmm(&self) -> std::sync::MutexGuard<'_, Option<Vmm>> {
        self.vmm.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn vmm_exited(&self) -> Option<String> {
        match self.vmm().as_mut()? {
            Vmm::Local(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                _ => None,
            },
            Vmm::Lane { vmm, .. } => match vmm.try_wait() {
                Ok(Some(info)) => {
                    // In the lane the VMM's stderr arrives over the control channel.
                    let _ = fs::write(&self.vmm_stderr, vmm.stderr_so_far());
                    Some(info.to_string())
                }
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
        }
    }

    fn connect_local(
        &mut self,
        uds: &Path,
        secret: &Secret,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<()> {
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            if let Some(status) = self.vmm_exited() {
                return Err(self.boot_error(format!(
                    "the VM stopped before its agent answered ({status})"
                )));
            }
            match Client::connect_vsock(uds, secret, Duration::from_millis(500)) {
                Ok(client) => {
                    self.client = Some(client);
                    return Ok(());
                }
                Err(e @ ClientError::Auth(_)) => {
                    return Err(
                        self.boot_error(format!("the guest agent did not authenticate: {e}"))
                    )
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(self
                            .boot_error(format!("the guest agent did not answer in time ({e})")));
                    }
                }
            }
        }
    }

    fn connect_lane(
        &mut self,
        sock: &Path,
        secret: &Secret,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<()> {
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(self.boot_error(format!(
                        "cannot reach the lane relay {}: {e}",
                        sock.display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        // Ctrl-C ends the connection from our side: the relay may never
        // report the VM going away.
        if let Ok(handle) = stream.try_clone() {
            self._cancel_hook = Some(cancel.on_cancel(move || {
                let _ = handle.shutdown(std::net::Shutdown::Both);
            }));
        }
        let secret = secret.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Client::over(Box::new(stream), &secret, left));
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(client)) => {
                    self.client = Some(client);
                    return Ok(());
                }
                Ok(Err(e)) => {
                    return Err(self.boot_error(format!("the guest agent did not answer ({e})")))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.boot_error("the agent connection thread ended"))
                }
            }
            if cancel.is_cancelled() {
                self.kill();
                return Err(Error::Interrupted);
            }
            if let Some(status) = self.vmm_exited() {
                self.kill();
                return Err(self.boot_error(format!(
                    "the VM stopped before its agent answered ({status})"
                )));
            }
        }
    }

    /// Kills the VMM now (if it still runs); the run directory goes when the
    /// `Vm` is dropped.
    pub fn kill(&self) {
        match self.vmm().as_mut() {
            Some(Vmm::Local(child)) => {
                // SAFETY: kill(2) on our own child's process group; no memory effects.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
            }
            Some(Vmm::Lane { relay, vmm, .. }) => {
                relay.kill();
                vmm.kill();
            }
            None => {}
        }
    }

    /// Kills the VMM (if still running) and gives back what it held.
    fn release(&mut self) {
        self.kill();
        let vmm = self.vmm().take();
        if let (Some(Vmm::Lane { port, .. }), Some(lane)) = (vmm, self.launcher.lane()) {
            lane.release_relay(port);
        }
    }

    /// Why a VM that is no longer running stopped, for an error message: its
    /// lane stopped, or its VMM exited (with where to read its console).
    pub fn why_stopped(&self) -> String {
        match self.launcher.stopped() {
            Some(why) => format!("the nested lane it ran in stopped: {why}"),
            None => format!(
                "its VM stopped unexpectedly; its console log is {}",
                self.console.display()
            ),
        }
    }

    /// Whether the VM is still running (its VMM has not exited).
    pub fn is_running(&self) -> bool {
        self.vmm().is_some() && self.vmm_exited().is_none()
    }

    /// Asks the guest to power off, waits for the VMM to exit (killing it
    /// after a grace period) and removes the run directory.
    pub fn shutdown(mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        if let Some(client) = self.client.take() {
            // The guest resets right after it acknowledges; through the lane's
            // relay the connection may never report closing, so the VMM's exit
            // also ends the wait.
            std::thread::scope(|s| {
                let request = s.spawn(|| client.shutdown());
                loop {
                    if request.is_finished() {
                        if let Ok(Err(e)) = request.join() {
                            tracing::debug!("guest shutdown: {e}");
                        }
                        break;
                    }
                    if self.vmm_exited().is_some() || Instant::now() >= deadline {
                        client.close();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            client.close();
        }
        while self.vmm_exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.release();
        if let Some(dir) = self.run_dir.take() {
            dir.remove()?;
        }
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            client.close();
        }
        self.release();
        // RunDir's own drop removes the directory.
    }
}
