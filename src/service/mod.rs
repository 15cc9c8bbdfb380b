//! Live sandboxes: the table behind `voidbox serve` and `voidbox mcp`. It
//! creates sandboxes through one launcher (one nested lane for all of them
//! where the host needs it), enforces capacity, lifetime and idle limits,
//! runs commands (foreground and background) and moves files. Every method
//! blocks; async callers run them on blocking threads.
//!
//! - [`api`]: the JSON bodies of the HTTP API;
//! - [`create`]: the create body, checked by the spec's validation;
//! - [`exec`]: foreground and background execs;
//! - [`output`]: bounded output buffers;
//! - [`error`]: one error type with the API's codes and statuses.

pub mod api;
pub mod create;
pub mod error;
pub mod exec;
pub mod output;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use voidbox_oci::{PullOptions, Store};

use crate::client::{FileKind, TransferLimits, UserSpec};
use crate::lane::Launcher;
use crate::runtime::cancel::Cancel;
use crate::runtime::launch::{choose_launch, LaneSizing, LaunchMode, LaunchOptions};
use crate::runtime::plan::{Plan, PlanContext};
use crate::runtime::rundir::voidbox_home;
use crate::runtime::sandbox::Sandbox;
use api::{ExecEvent, ExecResult, ExecStatus, FileList, SandboxInfo};
pub use create::Lifetimes;
pub use error::{Result, ServiceError};
use exec::{Background, ExecTable};

/// Limits and defaults of a service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Sandboxes at once.
    pub max_sandboxes: u32,
    /// Guest memory of all sandboxes together, in MiB.
    pub max_memory_mb: u32,
    /// Default lifetime and idle limit.
    pub lifetimes: Lifetimes,
    /// Launch settings.
    pub launch: LaunchOptions,
    /// How images are pulled.
    pub pull: PullOptions,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            max_sandboxes: 8,
            max_memory_mb: 8192,
            lifetimes: Lifetimes::default(),
            launch: LaunchOptions::default(),
            pull: PullOptions::default(),
        }
    }
}

/// Dead sandboxes kept for `GET` until deleted (the oldest go first).
const MAX_DEAD_KEPT: usize = 64;

/// Largest file upload: 16 GiB.
pub const MAX_UPLOAD_BYTES: u64 = 16 << 30;

/// The live sandboxes. Cheap to clone; the last clone's drop destroys them all.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ServiceConfig,
    home: PathBuf,
    store: Store,
    /// Replaced by a new one (same mode and sizing) when its lane stops.
    launcher: Mutex<Arc<Launcher>>,
    launch_mode: LaunchMode,
    lane_sizing: LaneSizing,
    table: Mutex<Table>,
    /// One VM boots at a time: creates queue here.
    boot: Mutex<()>,
    closing: AtomicBool,
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<String, Arc<Entry>>,
    /// Creates under way: their count and memory are reserved.
    pending: u32,
    pending_memory_mb: u32,
}

impl Table {
    fn live(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values().filter(|e| e.sandbox().is_some())
    }
}

/// One sandbox of the table.
struct Entry {
    info: Mutex<SandboxInfo>,
    /// None once dead or destroyed.
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    memory_mb: u32,
    idle_timeout: Duration,
    last_used: Mutex<Instant>,
    /// Foreground requests under way.
    busy: AtomicUsize,
    execs: Mutex<ExecTable>,
}

impl Entry {
    fn sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn info(&self) -> SandboxInfo {
        self.info.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, ExecTable> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills the VM; the entry stays (dead) when `why` is given.
    fn kill(&self, why: Option<String>) {
        // Marked first: a request that finds the sandbox gone meanwhile
        // reports it dead, and so does `get`.
        if let Some(why) = why {
            let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
            if info.state != "dead" {
                info.state = "dead".into();
                info.error = Some(why);
            }
        }
        let sb = self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sb) = sb {
            sb.kill();
            // The last user's drop removes the run directory.
        }
    }
}

/// Marks a foreground request under way (the sandbox is not idle meanwhile).
struct Busy(Arc<Entry>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A capacity reservation of a create under way.
struct Reservation<'a> {
    table: &'a Mutex<Table>,
    memory_mb: u32,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.pending -= 1;
        t.pending_memory_mb -= self.memory_mb;
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn new_id(prefix: &str) -> String {
    use rand::Rng;
    format!("{prefix}-{:016x}", rand::thread_rng().gen::<u64>())
}

impl Manager {
    /// Opens the store and starts the launcher (a lane sized for the limits,
    /// where the host needs one) and the thread that enforces lifetimes.
    pub fn start(cfg: ServiceConfig) -> crate::runtime::Result<Manager> {
        let home = voidbox_home();
        let store = Store::open(&home).map_err(|e| {
            crate::runtime::Error::Image(format!(
                "cannot open the image store at {}: {e}",
                home.display()
            ))
        })?;
        // What a daemon killed with SIGKILL left: its run directories (the
        // lane's are swept when a lane starts; its VMMs and QEMU died with it).
        let swept = crate::ownerlock::sweep_stale(&home.join("run"), "");
        if swept > 0 {
            tracing::info!("removed {swept} run directories left by a voidbox that died");
        }
        let mode = choose_launch(&cfg.launch)?;
        if let LaunchMode::NestedLane(reason) = &mode {
            tracing::warn!("{reason}: every sandbox boots inside one nested lane");
        }
        let sizing = LaneSizing::for_many(cfg.max_sandboxes, cfg.max_memory_mb)?;
        let launcher = mode.open(&home, sizing, &cfg.launch)?;
        let inner = Arc::new(Inner {
            cfg,
            home,
            store,
            launcher: Mutex::new(launcher),
            launch_mode: mode,
            lane_sizing: sizing,
            table: Mutex::default(),
            boot: Mutex::new(()),
            closing: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("voidbox-reaper".into())
            .spawn(move || reap(weak))
            .map_err(|e| crate::runtime::Error::host("cannot start the reaper thread", e))?;
        Ok(Manager { inner })
    }

    /// `local` or `nested-lane`.
    pub fn launcher_name(&self) -> &'static str {
        self.inner.launch_mode.name()
    }

    /// The limits.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.cfg
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reserve(&self, memory_mb: u32) -> Result<Reservation<'_>> {
        let cfg = &self.inner.cfg;
        let mut t = self.table();
        let live: Vec<_> = t.live().map(|e| e.memory_mb).collect();
        let count = live.len() as u32 + t.pending;
        if count >= cfg.max_sandboxes {
            return Err(ServiceError::TooManySandboxes(format!(
                "{count} sandboxes are running or starting, the limit of this daemon (--max-sandboxes {}); delete one or start the daemon with a higher limit",
                cfg.max_sandboxes
            )));
        }
        let used = live.iter().sum::<u32>() + t.pending_memory_mb;
        if used + memory_mb > cfg.max_memory_mb {
            return Err(ServiceError::OutOfCapacity(format!(
                "{memory_mb} MiB more guest memory would pass this daemon's limit of {} MiB ({used} MiB in use; --max-memory-mb); delete a sandbox or ask for less memory_mb",
                cfg.max_memory_mb
            )));
        }
        t.pending += 1;
        t.pending_memory_mb += memory_mb;
        Ok(Reservation {
            table: &self.inner.table,
            memory_mb,
        })
    }

    /// Creates a sandbox from a create body (docs/api.md); answers once its
    /// agent is ready.
    pub fn create(&self, body: &[u8]) -> Result<SandboxInfo> {
        let closing =
            || ServiceError::Unavailable("the daemon is shutting down; start it again".into());
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(closing());
        }
        let id = new_id("sb");
        let req = create::parse(body, &id, self.inner.cfg.lifetimes)?;
        let sandbox_spec = &req.spec.sandbox;
        let _reserved = self.reserve(sandbox_spec.memory_mb)?;
        let plan = Plan::build(
            &req.spec,
            &PlanContext {
                store: &self.inner.store,
                home: &self.inner.home,
                pull: self.inner.cfg.pull.clone(),
            },
        )
        .map_err(ServiceError::from_runtime)?;
        let sandbox = {
            let _one_boot = self.inner.boot.lock().unwrap_or_else(|e| e.into_inner());
            if self.inner.closing.load(Ordering::SeqCst) {
                return Err(closing());
            }
            let launcher = self.inner.working_launcher()?;
            Sandbox::create(
                plan,
                &self.inner.home,
                &launcher,
                &self.inner.cfg.launch,
                &Cancel::default(),
            )
            .map_err(ServiceError::from_runtime)?
        };
        let now = SystemTime::now();
        let lifetime = Duration::from_secs(sandbox.plan().timeout_secs);
        let info = SandboxInfo {
            id: id.clone(),
            state: "running".into(),
            created_at: rfc3339(now),
            expires_at: rfc3339(now + lifetime),
            timeout_secs: lifetime.as_secs(),
            idle_timeout_secs: req.idle_timeout.as_secs(),
            image: sandbox_spec.image.clone(),
            memory_mb: sandbox_spec.memory_mb,
            vcpus: sandbox_spec.vcpus,
            boot_ms: sandbox.boot_time().as_millis() as u64,
            launcher: self.launcher_name().into(),
            error: None,
        };
        let entry = Arc::new(Entry {
            info: Mutex::new(info.clone()),
            sandbox: Mutex::new(Some(Arc::new(sandbox))),
            memory_mb: sandbox_spec.memory_mb,
            idle_timeout: req.idle_timeout,
            last_used: Mutex::new(Instant::now()),
            busy: AtomicUsize::new(0),
            execs: Mutex::default(),
        });
        let mut t = self.table();
        if self.inner.closing.load(Ordering::SeqCst) {
            entry.kill(None);
            return Err(closing());
        }
        t.entries.insert(id.clone(), entry);
        tracing::info!(%id, boot_ms = info.boot_ms, "sandbox created");
        Ok(info)
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>> {
        self.table().entries.get(id).cloned().ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no sandbox `{id}`; list them with GET /v1/sandboxes (it may have passed its lifetime or idle limit)"
            ))
        })
    }

    /// The sandbox `id` for a request, marked busy until the guard drops.
    fn use_sandbox(&self, id: &str) -> Result<(Arc<Sandbox>, Busy)> {
        let entry = self.entry(id)?;
        entry.busy.fetch_add(1, Ordering::SeqCst);
        let busy = Busy(entry.clone());
        entry.touch();
        match entry.sandbox() {
            Some(sb) if sb.is_running() => Ok((sb, busy)),
            Some(sb) => {
                let why = sb.why_stopped();
                entry.kill(Some(why.clone()));
                Err(dead(id, &why))
            }
            None => Err(dead(
                id,
                entry.info().error.as_deref().unwrap_or("it was stopped"),
            )),
        }
    }

    /// Maps a failure of a request to a dead sandbox's error when the VM is gone.
    fn check_dead(&self, id: &str, e: ServiceError) -> ServiceError {
        let Ok(entry) = self.entry(id) else {
            return e;
        };
        match entry.sandbox() {
            Some(sb) if !sb.is_running() => {
                let why = sb.why_stopped();
                entry.kill(Some(why.clone()));
                dead(id, &why)
            }
            None => dead(
                id,
                entry.info().error.as_deref().unwrap_or("it was stopped"),
            ),
            Some(_) => e,
        }
    }

    /// One sandbox.
    pub fn get(&self, id: &str) -> Result<SandboxInfo> {
        // Reading a sandbox's state is not using it: a client polling
        // status does not hold off the idle limit.
        Ok(self.entry(id)?.info())
    }

    /// Every sandbox, oldest first.
    pub fn list(&self) -> Vec<SandboxInfo> {
        let mut all: Vec<SandboxInfo> = self.table().entries.values().map(|e| e.info()).collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    /// Destroys a sandbox (its VM is killed, its files removed).
    pub fn destroy(&self, id: &str) -> Result<()> {
        let entry = self.table().entries.remove(id).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no sandbox `{id}`; list them with GET /v1/sandboxes"
            ))
        })?;
        entry.kill(None);
        tracing::info!(%id, "sandbox destroyed");
        Ok(())
    }

    /// Destroys every sandbox and refuses new ones (the daemon is stopping).
    pub fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        // A boot under way finishes first, then sees `closing`.
        let _one_boot = self.inner.boot.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<_> = std::mem::take(&mut self.table().entries)
            .into_values()
            .collect();
        for e in all {
            e.kill(None);
        }
    }

    /// Runs a command to its end.
    pub fn exec(&self, id: &str, body: api::ExecBody) -> Result<ExecResult> {
        let p = exec::prepare(body, false)?;
        let (sb, _busy) = self.use_sandbox(id)?;
        exec::collect(&sb, p).map_err(|e| self.check_dead(id, e))
    }

    /// Runs a command to its end, handing events to `emit` as they come; the
    /// process is killed when `emit` returns false or `wanted` says the
    /// reader went away.
    pub fn exec_stream(
        &self,
        id: &str,
        body: api::ExecBody,
        emit: impl FnMut(ExecEvent) -> bool,
        wanted: &(dyn Fn() -> bool + Sync),
    ) -> Result<()> {
        let p = exec::prepare(body, false)?;
        let (sb, _busy) = self.use_sandbox(id)?;
        exec::stream(&sb, p, emit, wanted).map_err(|e| self.check_dead(id, e))
    }

    /// Starts a background command; answers its exec id.
    pub fn exec_background(&self, id: &str, body: api::ExecBody) -> Result<String> {
        let p = exec::prepare(body, true)?;
        let (sb, _busy) = self.use_sandbox(id)?;
        let entry = self.entry(id)?;
        let mut execs = entry.execs();
        execs.make_room()?;
        let bg = Background::start(&sb, new_id("ex"), p).map_err(|e| self.check_dead(id, e))?;
        let exec_id = bg.id.clone();
        execs.insert(bg);
        Ok(exec_id)
    }

    fn background(&self, id: &str, exec_id: &str) -> Result<Arc<Background>> {
        let entry = self.entry(id)?;
        entry.touch();
        let found = entry.execs().get(exec_id);
        found.ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no background process `{exec_id}` in sandbox `{id}`; list them with GET /v1/sandboxes/{id}/execs"
            ))
        })
    }

    /// Background commands, oldest first (without output).
    pub fn execs(&self, id: &str) -> Result<Vec<ExecStatus>> {
        let entry = self.entry(id)?;
        entry.touch();
        let all = entry.execs().all();
        Ok(all.iter().map(|b| b.status(0, 0, false)).collect())
    }

    /// A background command's state and output from the offsets.
    pub fn exec_status(&self, id: &str, exec_id: &str, out: u64, err: u64) -> Result<ExecStatus> {
        Ok(self.background(id, exec_id)?.status(out, err, true))
    }

    /// Streams a background command's output from the offsets until it ends.
    pub fn exec_follow(
        &self,
        id: &str,
        exec_id: &str,
        out: u64,
        err: u64,
        emit: impl FnMut(ExecEvent) -> bool,
        wanted: impl Fn() -> bool,
    ) -> Result<()> {
        let bg = self.background(id, exec_id)?;
        bg.follow(out, err, emit, wanted);
        Ok(())
    }

    /// Writes to a background command's stdin.
    pub fn exec_stdin(&self, id: &str, exec_id: &str, data: &[u8], eof: bool) -> Result<()> {
        self.background(id, exec_id)?.write_stdin(data, eof)
    }

    /// Signals a background command.
    pub fn exec_signal(&self, id: &str, exec_id: &str, signal: i32) -> Result<()> {
        self.background(id, exec_id)?.signal(signal)
    }

    fn owner(sb: &Sandbox) -> UserSpec {
        let (uid, gid) = sb.plan().user_ids();
        UserSpec { uid, gid }
    }

    /// Writes a guest file from `data` (or unpacks a tar into a directory).
    pub fn write_file(
        &self,
        id: &str,
        path: &str,
        mode: u32,
        tar: bool,
        data: &mut dyn Read,
    ) -> Result<()> {
        let (sb, _busy) = self.use_sandbox(id)?;
        let limits = TransferLimits::default();
        let owner = Some(Self::owner(&sb));
        let r = if tar {
            sb.client().put_tar_with(path, data, owner, limits)
        } else {
            sb.client().put_file_with(path, data, mode, owner, limits)
        };
        r.map_err(|e| self.check_dead(id, ServiceError::from_client(e, path)))
    }

    /// What a guest path is (without following its last link).
    pub fn stat(&self, id: &str, path: &str) -> Result<FileKind> {
        let (sb, _busy) = self.use_sandbox(id)?;
        sb.client()
            .stat(path)
            .map(|s| s.kind)
            .map_err(|e| self.check_dead(id, ServiceError::from_client(e, path)))
    }

    /// Streams a guest file (or a directory as a tar) into `out`, within the
    /// sandbox's `max_output_mb`.
    pub fn read_file(&self, id: &str, path: &str, out: &mut dyn Write) -> Result<FileKind> {
        let (sb, _busy) = self.use_sandbox(id)?;
        let limits = TransferLimits {
            max_bytes: sb.plan().max_output_mb.saturating_mul(1 << 20),
            ..TransferLimits::default()
        };
        sb.client()
            .get_with(path, out, limits)
            .map_err(|e| self.check_dead(id, ServiceError::from_client(e, path)))
    }

    /// One level of a guest directory.
    pub fn list_dir(&self, id: &str, path: &str) -> Result<FileList> {
        let (sb, _busy) = self.use_sandbox(id)?;
        let listing = sb
            .client()
            .list(path)
            .map_err(|e| self.check_dead(id, ServiceError::from_client(e, path)))?;
        Ok(FileList {
            entries: listing
                .entries
                .into_iter()
                .map(|e| api::FileEntry {
                    name: e.name,
                    kind: match e.stat.kind {
                        FileKind::File => "file",
                        FileKind::Dir => "dir",
                        FileKind::Symlink => "symlink",
                        FileKind::Other => "other",
                    }
                    .into(),
                    size: e.stat.size,
                    mode: e.stat.mode,
                    mtime: e.stat.mtime,
                })
                .collect(),
            truncated: listing.truncated,
        })
    }
}

fn dead(id: &str, why: &str) -> ServiceError {
    ServiceError::SandboxDead(format!(
        "sandbox `{id}` is dead: {why}; delete it (DELETE /v1/sandboxes/{id}) and create a new one"
    ))
}

impl Inner {
    /// The launcher for the next boot: when its lane has stopped (an L2
    /// kernel panic, QEMU killed), a new lane of the same size replaces it;
    /// the old one's sandboxes are reported dead by the reaper. The old
    /// lane's console is kept in `$VOIDBOX_HOME/logs`.
    fn working_launcher(&self) -> Result<Arc<Launcher>> {
        let mut current = self.launcher.lock().unwrap_or_else(|e| e.into_inner());
        let Some(why) = current.stopped() else {
            return Ok(current.clone());
        };
        let kept = self.home.join("logs").join(format!(
            "lane-{}.console.log",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        ));
        if let Some(lane) = current.lane() {
            let _ = std::fs::create_dir_all(self.home.join("logs"));
            let _ = std::fs::copy(lane.console_log(), &kept);
        }
        tracing::error!(
            console = %kept.display(),
            "the nested lane stopped: {why}; starting a new one"
        );
        let fresh = self
            .launch_mode
            .open(&self.home, self.lane_sizing, &self.cfg.launch)
            .map_err(ServiceError::from_runtime)?;
        *current = fresh.clone();
        Ok(fresh)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let all: Vec<_> =
            std::mem::take(&mut self.table.lock().unwrap_or_else(|e| e.into_inner()).entries)
                .into_values()
                .collect();
        for e in all {
            e.kill(None);
        }
    }
}

/// Enforces lifetimes and idle limits, and notices VMs that died.
fn reap(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut died = Vec::new();
        {
            let t = inner.table.lock().unwrap_or_else(|e| e.into_inner());
            for (id, e) in &t.entries {
                let Some(sb) = e.sandbox() else {
                    continue;
                };
                let idle_for = now.saturating_duration_since(
                    *e.last_used.lock().unwrap_or_else(|e| e.into_inner()),
                );
                let busy = e.busy.load(Ordering::SeqCst) > 0 || e.execs().running() > 0;
                if sb.time_left().is_zero() {
                    expired.push((id.clone(), "its lifetime (timeout_secs) passed"));
                } else if !busy && idle_for >= e.idle_timeout {
                    expired.push((id.clone(), "it was idle past idle_timeout_secs"));
                } else if !sb.is_running() {
                    died.push((id.clone(), e.clone(), sb.why_stopped()));
                }
            }
        }
        for (id, why) in expired {
            let removed = inner
                .table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entries
                .remove(&id);
            if let Some(e) = removed {
                tracing::info!(%id, "destroying the sandbox: {why}");
                e.kill(None);
            }
        }
        for (id, e, why) in died {
            tracing::warn!(%id, "sandbox dead: {why}");
            e.kill(Some(why));
        }
        // Keep only the newest dead entries.
        let mut t = inner.table.lock().unwrap_or_else(|e| e.into_inner());
        let dead: Vec<String> = t
            .entries
            .iter()
            .filter(|(_, e)| e.sandbox().is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead.iter().take(dead.len().saturating_sub(MAX_DEAD_KEPT)) {
            t.entries.remove(id);
        }
    }
}
