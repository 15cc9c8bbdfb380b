//! The host side of the nested lane: start QEMU (TCG, SVM-capable CPU) with the L2 kernel and
//! initramfs, connect the control port, run and spawn commands inside L2.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use voidbox_guest_image::kernel::{FetchOptions, KernelStore};

use super::command::{Event, LaneProcess, Route, Stream};
use super::config::LaneConfig;
use super::error::LaneError;
use super::process::Output;
use super::protocol::{self, CommandSpec, ReadyInfo};
use super::relay::RELAY_PORT_PREFIX;
use super::server::CONTROL_PORT;
use crate::ownerlock::{sweep_stale, OwnerLock};

/// Lane directories are `<tmp>/voidbox-lane-XXXXXX`.
pub const LANE_DIR_PREFIX: &str = "voidbox-lane-";

/// State shared by the lane, its reader thread and every [`LaneProcess`].
pub(super) struct Shared {
    writer: Mutex<UnixStream>,
    pub(super) routes: Mutex<HashMap<u32, Route>>,
    pub(super) closed: AtomicBool,
    next_id: AtomicU32,
    console: PathBuf,
}

impl Shared {
    pub(super) fn send(&self, kind: u8, id: u32, payload: &[u8]) -> Result<(), LaneError> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        protocol::write_frame(&mut *w, kind, id, payload).map_err(|_| self.closed_error())
    }

    /// A lane-less `Shared` over `writer`, for unit tests of [`LaneProcess`].
    #[cfg(test)]
    pub(super) fn for_test(writer: UnixStream) -> Shared {
        Shared {
            writer: Mutex::new(writer),
            routes: Mutex::default(),
            closed: AtomicBool::new(false),
            next_id: AtomicU32::new(1),
            console: PathBuf::from("/nonexistent/console.log"),
        }
    }

    pub(super) fn closed_error(&self) -> LaneError {
        LaneError::Closed {
            log: self.console.clone(),
            tail: tail_lines(&self.console, 30),
        }
    }
}

/// The last `n` lines of a log file (empty if unreadable).
pub fn tail_lines(path: &Path, n: usize) -> String {
    crate::logtail::tail_lines(path, n).join("\n")
}

fn find_program(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(p))
                .find(|c| c.is_file())
        })
        .unwrap_or(None)
}

/// A running nested lane. Dropping it kills QEMU and removes its private directory.
pub struct Lane {
    shared: Arc<Shared>,
    qemu: Mutex<Child>,
    work: Option<tempfile::TempDir>,
    _work_lock: OwnerLock,
    info: ReadyInfo,
    l2_program: Vec<String>,
    relay_ports: u32,
    /// Relay ports no VM holds, least recently released first: a port is
    /// reused as late as possible.
    free_relays: Mutex<std::collections::VecDeque<u32>>,
}

impl Lane {
    /// Boots L2 and waits for its command server. Errors say what to install or run.
    pub fn start(cfg: LaneConfig) -> Result<Lane, LaneError> {
        let qemu = find_program(&cfg.qemu).ok_or_else(|| LaneError::Missing {
            what: format!("QEMU ({})", cfg.qemu.display()),
            fix: "install it with `apt-get install -y qemu-system-x86`",
        })?;
        let Some(prog) = cfg.l2_program.first() else {
            return Err(LaneError::BadConfig("l2_program is empty".into()));
        };
        if !Path::new(prog).is_absolute() || !Path::new(prog).is_file() {
            return Err(LaneError::BadConfig(format!(
                "l2_program {prog:?} must be an absolute path to an existing host binary"
            )));
        }
        for d in &cfg.shared_dirs {
            let s = d.to_string_lossy();
            if !d.is_absolute() || !d.is_dir() || s.contains(char::is_whitespace) || s.contains(',')
            {
                return Err(LaneError::BadConfig(format!(
                    "shared dir {s:?} must be an existing absolute directory without spaces or commas"
                )));
            }
        }
        let kernel = match cfg.kernel.clone() {
            Some(k) => k,
            None => {
                let store = KernelStore::default_store();
                match store.ensure(&FetchOptions::from_env()) {
                    Ok(k) => k,
                    // Offline (no apt lists, no network): a kernel already in the store is
                    // the same real kernel, only perhaps not the newest.
                    Err(e) => match store.latest() {
                        Ok(k) => {
                            tracing::warn!(error = %e, kernel = %k.dir.display(), "cannot check for a newer guest kernel; using the stored one");
                            k
                        }
                        Err(_) => return Err(e.into()),
                    },
                }
            }
        };
        let parent = cfg.work_parent.clone().unwrap_or_else(std::env::temp_dir);
        // Lane directories of voidbox processes that died (SIGKILL, OOM) go first.
        sweep_stale(&parent, LANE_DIR_PREFIX);
        let work = tempfile::Builder::new()
            .prefix(LANE_DIR_PREFIX)
            .tempdir_in(&parent)
            .map_err(|e| LaneError::io(format!("create lane dir in {}", parent.display()), e))?;
        let work_lock =
            OwnerLock::take(work.path()).map_err(|e| LaneError::io("lock the lane dir", e))?;
        let wdir = work.path().to_path_buf();
        let initrd = wdir.join("l2.cpio");
        super::l2image::build(&kernel, &cfg.busybox, &initrd)?;

        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let shares: Vec<String> = cfg
            .shared_dirs
            .iter()
            .enumerate()
            .map(|(i, d)| format!("rw{i}:{}", d.display()))
            .collect();
        let mut server: Vec<String> = cfg.l2_program.iter().map(|a| quote(a)).collect();
        server.push("serve".into());
        let env = format!(
            "SHARES={}\nSERVER={}\n",
            quote(&shares.join(" ")),
            quote(&server.join(" "))
        );
        std::fs::write(wdir.join("l2.env"), env).map_err(|e| LaneError::io("write l2.env", e))?;

        let console = wdir.join("console.log");
        let ctl = wdir.join("ctl.sock");
        let mut cmd = Command::new(&qemu);
        cmd.args(["-accel", "tcg,thread=multi,tb-size=512", "-M", "q35"])
            .args([
                "-cpu",
                &cfg.cpu,
                "-smp",
                &cfg.smp.to_string(),
                "-m",
                &cfg.mem_mib.to_string(),
            ])
            .args([
                "-display",
                "none",
                "-nodefaults",
                "-no-reboot",
                "-monitor",
                "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(kernel.vmlinux())
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 loglevel=4 mitigations=off voidbox_lane.work={}",
                wdir.display()
            ))
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg("local,path=/tmp,mount_tag=hosttmp,security_model=none,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=lanework,security_model=none,multidevs=remap",
                wdir.display()
            ));
        for (i, d) in cfg.shared_dirs.iter().enumerate() {
            cmd.arg("-virtfs").arg(format!(
                "local,path={},mount_tag=rw{i},security_model=none,multidevs=remap",
                d.display()
            ));
        }
        cmd.args(["-device", "virtio-serial-pci,max_ports=32"]);
        let mut chardev = |id: &str, path: &Path, name: &str| {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,id={id},path={},server=on,wait=off",
                    path.display()
                ))
                .arg("-device")
                .arg(format!("virtserialport,chardev={id},name={name}"));
        };
        chardev("ctl", &ctl, CONTROL_PORT);
        for n in 0..cfg.relay_ports {
            chardev(
                &format!("relay{n}"),
                &relay_path(&wdir, n),
                &format!("{RELAY_PORT_PREFIX}{n}"),
            );
        }
        let qlog = std::fs::File::create(wdir.join("qemu.log"))
            .map_err(|e| LaneError::io("create qemu.log", e))?;
        let qlog2 = qlog
            .try_clone()
            .map_err(|e| LaneError::io("dup qemu.log", e))?;
        cmd.stdin(Stdio::null()).stdout(qlog).stderr(qlog2);
        tracing::info!(cpu = %cfg.cpu, dir = %wdir.display(), "starting the nested lane");
        let child = cmd
            .spawn()
            .map_err(|e| LaneError::io(format!("start {}", qemu.display()), e))?;
        let mut lane_qemu = Some(child);
        let fail = |reason: String, qemu: &mut Option<Child>| {
            if let Some(mut c) = qemu.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let mut tail = tail_lines(&console, 30);
            let q = tail_lines(&wdir.join("qemu.log"), 10);
            let q: Vec<&str> = q
                .lines()
                .filter(|l| !l.contains("doesn't support requested feature"))
                .collect();
            if !q.is_empty() {
                tail.push_str("\nQEMU said:\n");
                tail.push_str(&q.join("\n"));
            }
            LaneError::Start {
                reason,
                log: console.clone(),
                tail,
            }
        };
        let deadline = Instant::now() + cfg.start_timeout;
        let stream = loop {
            if let Ok(Some(st)) = lane_qemu.as_mut().expect("child").try_wait() {
                return Err(fail(format!("QEMU exited early ({st})"), &mut lane_qemu));
            }
            match UnixStream::connect(&ctl) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    return Err(fail(
                        format!("control socket never appeared: {e}"),
                        &mut lane_qemu,
                    ))
                }
            }
        };
        let reader = stream
            .try_clone()
            .map_err(|e| LaneError::io("dup control socket", e))?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            routes: Mutex::default(),
            closed: AtomicBool::new(false),
            next_id: AtomicU32::new(1),
            console: console.clone(),
        });
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        {
            let shared = shared.clone();
            std::thread::spawn(move || read_loop(reader, shared, ready_tx));
        }
        let info = loop {
            match ready_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(info) => break info,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(fail(
                        "the L2 command server never answered".into(),
                        &mut lane_qemu,
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Ok(Some(st)) = lane_qemu.as_mut().expect("child").try_wait() {
                return Err(fail(
                    format!("QEMU exited before L2 was ready ({st})"),
                    &mut lane_qemu,
                ));
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    format!("L2 not ready after {} s", cfg.start_timeout.as_secs()),
                    &mut lane_qemu,
                ));
            }
        };
        if !info.kvm {
            return Err(fail(
                format!(
                    "kvm_amd did not give L2 a /dev/kvm (does -cpu {} have svm and npt?)",
                    cfg.cpu
                ),
                &mut lane_qemu,
            ));
        }
        tracing::info!(kernel = %info.kernel, "nested lane ready");
        Ok(Lane {
            shared,
            qemu: Mutex::new(lane_qemu.take().expect("child")),
            work: Some(work),
            _work_lock: work_lock,
            info,
            l2_program: cfg.l2_program.clone(),
            relay_ports: cfg.relay_ports,
            free_relays: Mutex::new((0..cfg.relay_ports).collect()),
        })
    }

    /// Why the lane is gone, once QEMU has exited (reaped here): its exit
    /// status and the L2 console's last kernel complaint, if any. `None`
    /// while it runs.
    pub fn stopped(&self) -> Option<String> {
        let status = {
            let mut q = self.qemu.lock().unwrap_or_else(|e| e.into_inner());
            match q.try_wait() {
                Ok(Some(st)) => st,
                Ok(None) => return None,
                Err(e) => return Some(format!("its QEMU cannot be waited for: {e}")),
            }
        };
        let tail = tail_lines(&self.shared.console, 60);
        let why = tail
            .lines()
            .rev()
            .find(|l| l.contains("Kernel panic") || l.contains("BUG:") || l.contains("Oops"))
            .map(|l| format!("; L2's kernel said: {}", l.trim()))
            .unwrap_or_default();
        Some(format!("its QEMU exited ({status}){why}"))
    }

    /// What the L2 server reported at start.
    pub fn info(&self) -> &ReadyInfo {
        &self.info
    }

    /// The lane's private directory on the host (shared read-write with L2, same path).
    pub fn work_dir(&self) -> &Path {
        self.work.as_ref().expect("present until drop").path()
    }

    /// L1's console log (L2 kernel and init messages).
    pub fn console_log(&self) -> PathBuf {
        self.shared.console.clone()
    }

    /// Host Unix socket of relay port `n` (connect to it after [`Lane::start_relay`]).
    pub fn relay_socket(&self, n: u32) -> PathBuf {
        relay_path(self.work_dir(), n)
    }

    /// Takes a free relay port for one VM's connection, or None when every port
    /// is held. Give it back with [`Lane::release_relay`] once its relay ended.
    pub fn claim_relay(&self) -> Option<u32> {
        self.free_relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Returns a port taken by [`Lane::claim_relay`].
    pub fn release_relay(&self, n: u32) {
        let mut free = self.free_relays.lock().unwrap_or_else(|e| e.into_inner());
        if n < self.relay_ports && !free.contains(&n) {
            free.push_back(n);
        }
    }

    /// Starts a command inside L2 (chrooted into the host's `/`).
    pub fn spawn(&self, spec: &CommandSpec) -> Result<LaneProcess, LaneError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(self.shared.closed_error());
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst);
        let (route, rx, budget) = Route::new();
        self.shared
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, route);
        let payload = serde_json::to_vec(spec).expect("spec serializes");
        if let Err(e) = self.shared.send(protocol::SPAWN, id, &payload) {
            self.shared
                .routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(e);
        }
        Ok(LaneProcess::new(
            id,
            spec.argv.first().cloned().unwrap_or_default(),
            rx,
            budget,
            self.shared.clone(),
        ))
    }

    /// Runs a command inside L2 to completion (killed after `timeout`).
    pub fn run(&self, spec: &CommandSpec, timeout: Duration) -> Result<Output, LaneError> {
        self.spawn(spec)?.wait(timeout)
    }

    /// Starts the relay for port `n`: once a host client connects to
    /// [`Lane::relay_socket`]`(n)`, it connects to guest vsock `vsock_port` through the VMM's
    /// Unix socket `l2_uds` (a path inside L2) and bridges the two.
    pub fn start_relay(
        &self,
        n: u32,
        l2_uds: &Path,
        vsock_port: u32,
        timeout: Duration,
    ) -> Result<LaneProcess, LaneError> {
        if n >= self.relay_ports {
            return Err(LaneError::BadConfig(format!(
                "relay port {n} does not exist (the lane has {} relay ports)",
                self.relay_ports
            )));
        }
        let mut argv = self.l2_program.clone();
        argv.extend([
            "relay".to_string(),
            format!("{RELAY_PORT_PREFIX}{n}"),
            l2_uds.display().to_string(),
            vsock_port.to_string(),
            timeout.as_secs().max(1).to_string(),
        ]);
        self.spawn(&CommandSpec::new(argv))
    }
}

fn relay_path(work: &Path, n: u32) -> PathBuf {
    work.join(format!("relay{n}.sock"))
}

fn read_loop(mut reader: UnixStream, shared: Arc<Shared>, ready: SyncSender<ReadyInfo>) {
    while let Ok(Some(frame)) = protocol::read_frame(&mut reader) {
        if frame.kind == protocol::READY {
            let info = serde_json::from_slice(&frame.payload).unwrap_or_default();
            // Only the first one matters; never queue more.
            let _ = ready.try_send(info);
            continue;
        }
        let event = match frame.kind {
            protocol::STDOUT => Event::Output(Stream::Stdout, frame.payload),
            protocol::STDERR => Event::Output(Stream::Stderr, frame.payload),
            protocol::EXIT => {
                Event::Exit(serde_json::from_slice(&frame.payload).unwrap_or_default())
            }
            protocol::SPAWN_FAILED => {
                Event::Failed(String::from_utf8_lossy(&frame.payload).into_owned())
            }
            other => {
                tracing::warn!(kind = other, "unknown frame from the lane server");
                continue;
            }
        };
        let last = matches!(event, Event::Exit(_) | Event::Failed(_));
        let mut routes = shared.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(route) = routes.get(&frame.id) {
            route.deliver(event);
        }
        if last {
            routes.remove(&frame.id);
        }
    }
    shared.closed.store(true, Ordering::SeqCst);
    for (_, route) in shared
        .routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
    {
        route.deliver(Event::Closed);
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let mut q = self.qemu.lock().unwrap_or_else(|e| e.into_inner());
        let _ = q.kill();
        let _ = q.wait();
        let _ = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown(std::net::Shutdown::Both);
        if let Some(w) = self.work.take() {
            if std::env::var_os("VOIDBOX_LANE_KEEP").is_some() {
                let kept = w.keep();
                tracing::info!(dir = %kept.display(), "keeping the lane directory (VOIDBOX_LANE_KEEP)");
            }
        }
    }
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field(
                "work_dir",
                &self.work.as_ref().map(|w| w.path().to_path_buf()),
            )
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}
