//! One interface for running the VMM (and helper commands): directly on a host whose KVM
//! boots stock kernels, or through the nested lane otherwise.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::command::{Captured, LaneProcess};
use super::config::LaneConfig;
use super::error::LaneError;
use super::host::Lane;
use super::process::Output;
use super::protocol::{CommandSpec, ExitInfo};

/// What this host's `/dev/kvm` can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKvm {
    /// Hardware KVM (vmx/svm): stock guest kernels boot directly.
    Hardware,
    /// KVM that cannot boot stock kernels, or none; the reason says which.
    Unusable(String),
}

/// Detects hardware KVM: `/dev/kvm` opens read-write, the CPU has vmx or svm, and the
/// `kvm_pvm` module is not what provides it.
pub fn detect_host_kvm() -> HostKvm {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return HostKvm::Unusable(
            "/dev/kvm is kvm_pvm (PVM), which cannot boot stock guest kernels".into(),
        );
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return HostKvm::Unusable(format!("/dev/kvm is not usable: {e}"));
    }
    if voidbox_vmm::host::cpu_has_hw_virt() {
        HostKvm::Hardware
    } else {
        HostKvm::Unusable("the CPU shows neither vmx nor svm".into())
    }
}

/// Runs commands either locally or inside a nested lane.
pub enum Launcher {
    /// Commands run as local child processes.
    Local,
    /// Commands run inside L2 of this lane.
    Lane(Box<Lane>),
}

impl Launcher {
    /// Local on hardware KVM, else a freshly started lane. `VOIDBOX_FORCE_LANE=1` forces the
    /// lane (to test it on hardware-KVM hosts).
    pub fn for_host(lane_config: impl FnOnce() -> LaneConfig) -> Result<Launcher, LaneError> {
        let forced = std::env::var_os("VOIDBOX_FORCE_LANE").is_some_and(|v| v == "1");
        match detect_host_kvm() {
            HostKvm::Hardware if !forced => Ok(Launcher::Local),
            why => {
                if let HostKvm::Unusable(reason) = why {
                    tracing::info!(%reason, "using the nested lane");
                }
                Ok(Launcher::Lane(Box::new(Lane::start(lane_config())?)))
            }
        }
    }

    /// `local` or `nested-lane`.
    pub fn name(&self) -> &'static str {
        match self {
            Launcher::Local => "local",
            Launcher::Lane(_) => "nested-lane",
        }
    }

    /// Why this launcher can launch nothing more (its lane stopped); `None`
    /// while it works. A local launcher never stops.
    pub fn stopped(&self) -> Option<String> {
        self.lane().and_then(Lane::stopped)
    }

    /// The lane, when commands go through one.
    pub fn lane(&self) -> Option<&Lane> {
        match self {
            Launcher::Local => None,
            Launcher::Lane(l) => Some(l),
        }
    }

    /// A directory where launched commands may create Unix sockets (a tmpfs inside L2: 9p
    /// shares cannot carry sockets). Not visible to the host process in the lane case.
    pub fn socket_dir(&self) -> PathBuf {
        match self {
            Launcher::Local => std::env::temp_dir(),
            Launcher::Lane(_) => PathBuf::from("/run"),
        }
    }

    /// Starts a command.
    pub fn spawn(&self, spec: &CommandSpec) -> Result<Process, LaneError> {
        match self {
            Launcher::Lane(l) => Ok(Process::Lane(l.spawn(spec)?)),
            Launcher::Local => Ok(Process::Local(LocalProcess::spawn(spec)?)),
        }
    }

    /// Runs a command to completion (killed after `timeout`).
    pub fn run(&self, spec: &CommandSpec, timeout: Duration) -> Result<Output, LaneError> {
        self.spawn(spec)?.wait(timeout)
    }
}

/// A command started by a [`Launcher`].
pub enum Process {
    /// Local child process.
    Local(LocalProcess),
    /// Command inside the lane.
    Lane(LaneProcess),
}

impl Process {
    /// Waits for the end, killing after `timeout`.
    pub fn wait(self, timeout: Duration) -> Result<Output, LaneError> {
        match self {
            Process::Local(p) => p.wait(timeout),
            Process::Lane(p) => p.wait(timeout),
        }
    }

    /// Collects output until stdout contains `needle`.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> Result<bool, LaneError> {
        match self {
            Process::Local(p) => Ok(p.wait_for_stdout(needle, timeout)),
            Process::Lane(p) => p.wait_for_stdout(needle, timeout),
        }
    }

    /// Stdout collected so far.
    pub fn stdout_so_far(&self) -> Vec<u8> {
        match self {
            Process::Local(p) => p
                .stdout
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .data
                .clone(),
            Process::Lane(p) => p.stdout_so_far().to_vec(),
        }
    }

    /// Kills the command's process group.
    pub fn kill(&self) {
        match self {
            Process::Local(p) => p.signal(libc::SIGKILL),
            Process::Lane(p) => p.kill(),
        }
    }
}

/// A local child in its own session, its output captured by two threads (bounded like a
/// [`LaneProcess`]'s).
pub struct LocalProcess {
    argv0: String,
    child: Child,
    stdout: Arc<Mutex<Captured>>,
    stderr: Arc<Mutex<Captured>>,
    pumps: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitInfo>,
}

impl LocalProcess {
    fn spawn(spec: &CommandSpec) -> Result<Self, LaneError> {
        let Some((prog, args)) = spec.argv.split_first() else {
            return Err(LaneError::BadConfig("empty argv".into()));
        };
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        // SAFETY: setsid is async-signal-safe and touches no parent memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| LaneError::SpawnFailed {
            argv0: prog.clone(),
            msg: e.to_string(),
        })?;
        let stdout: Arc<Mutex<Captured>> = Arc::default();
        let stderr: Arc<Mutex<Captured>> = Arc::default();
        let pump = |mut r: Box<dyn std::io::Read + Send>, buf: Arc<Mutex<Captured>>| {
            std::thread::spawn(move || {
                let mut chunk = vec![0u8; 64 * 1024];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(&chunk[..n]);
                }
            })
        };
        let pumps = vec![
            pump(
                Box::new(child.stdout.take().expect("piped")),
                stdout.clone(),
            ),
            pump(
                Box::new(child.stderr.take().expect("piped")),
                stderr.clone(),
            ),
        ];
        Ok(LocalProcess {
            argv0: prog.clone(),
            child,
            stdout,
            stderr,
            pumps,
            status: None,
        })
    }

    fn poll(&mut self) -> Option<ExitInfo> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(ExitInfo {
                    code: s.code(),
                    signal: s.signal(),
                });
            }
        }
        self.status
    }

    fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: kill(2) has no memory effects; the child is unreaped (status None).
            unsafe { libc::kill(-(self.child.id() as i32), sig) };
        }
    }

    fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|e| e.into_inner()).data)
                .contains(needle)
            {
                return true;
            }
            if self.poll().is_some() || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait(mut self, timeout: Duration) -> Result<Output, LaneError> {
        let deadline = Instant::now() + timeout;
        while self.poll().is_none() {
            if Instant::now() >= deadline {
                self.signal(libc::SIGKILL);
                let _ = self.child.wait();
                return Err(LaneError::Timeout {
                    argv0: self.argv0.clone(),
                    secs: timeout.as_secs(),
                    stderr: String::from_utf8_lossy(
                        &self.stderr.lock().unwrap_or_else(|e| e.into_inner()).data,
                    )
                    .into_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
        let take = |b: &Arc<Mutex<Captured>>| {
            std::mem::take(&mut b.lock().unwrap_or_else(|e| e.into_inner()).data)
        };
        Ok(Output {
            status: self.status.expect("checked"),
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
        })
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        if self.poll().is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
