//! Where the MCP server's sandboxes live. A [`Backend`] answers the tools'
//! requests with the service's bodies and errors; every method blocks (the
//! tools call them on blocking threads). [`Standalone`] keeps the sandboxes
//! in this process, in a [`Manager`] started on the first create.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::FileKind;
use crate::service::api::{ExecBody, ExecResult, SandboxInfo};
use crate::service::{Manager, Result, ServiceConfig, ServiceError};

/// The sandbox operations behind the tools.
pub trait Backend: Send + Sync + 'static {
    /// Creates a sandbox from a create body (docs/api.md).
    fn create(&self, body: &serde_json::Value) -> Result<SandboxInfo>;
    /// Every sandbox, oldest first.
    fn list(&self) -> Result<Vec<SandboxInfo>>;
    /// Destroys a sandbox.
    fn destroy(&self, id: &str) -> Result<()>;
    /// Runs a command to its end.
    fn exec(&self, id: &str, body: ExecBody) -> Result<ExecResult>;
    /// Writes a guest file (parents are created).
    fn write_file(&self, id: &str, path: &str, mode: u32, data: &[u8]) -> Result<()>;
    /// Copies a regular guest file into `out`; a directory is an error.
    fn read_file(&self, id: &str, path: &str, out: &mut dyn Write) -> Result<()>;
    /// Whether the sandboxes live in this process (and end with it).
    fn standalone(&self) -> bool;
    /// The server is exiting: sandboxes of this process are destroyed.
    fn shutdown(&self);
}

/// How long the exit waits for tool calls still under way to let go of the
/// manager, so that its lane is stopped here rather than left running.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Sandboxes of this process.
pub struct Standalone {
    cfg: ServiceConfig,
    /// The manager once started (held briefly: a start does not hold it).
    manager: Mutex<Option<Arc<Manager>>>,
    /// Creates wait here while the first one starts the manager.
    starting: Mutex<()>,
    closed: AtomicBool,
}

impl Standalone {
    /// A backend that starts its manager with `cfg` when first needed.
    pub fn new(cfg: ServiceConfig) -> Self {
        Standalone {
            cfg,
            manager: Mutex::new(None),
            starting: Mutex::new(()),
            closed: AtomicBool::new(false),
        }
    }

    fn current(&self) -> Option<Arc<Manager>> {
        self.manager
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The manager, or the error of a request naming sandbox `id` when none
    /// was started (so no sandbox exists).
    fn for_sandbox(&self, id: &str) -> Result<Arc<Manager>> {
        self.current().ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no sandbox `{id}`; call sandbox_list to see the sandboxes, or sandbox_create for a new one"
            ))
        })
    }

    fn closed_error() -> ServiceError {
        ServiceError::Unavailable(
            "the server is shutting down (its client disconnected); no new sandboxes".into(),
        )
    }

    /// Starts the manager on the first call (a nested lane takes seconds).
    fn started(&self) -> Result<Arc<Manager>> {
        let _one = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = self.current() {
            return Ok(m);
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(Self::closed_error());
        }
        tracing::info!(
            max_sandboxes = self.cfg.max_sandboxes,
            max_memory_mb = self.cfg.max_memory_mb,
            "starting the sandbox manager"
        );
        let m = Manager::start(self.cfg.clone()).map_err(|e| {
            ServiceError::Internal(format!(
                "cannot start sandboxes on this host: {e}; the server's log (stderr) has the details"
            ))
        })?;
        let m = Arc::new(m);
        let mut slot = self.manager.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return Err(Self::closed_error());
        }
        *slot = Some(m.clone());
        Ok(m)
    }
}

impl Backend for Standalone {
    fn create(&self, body: &serde_json::Value) -> Result<SandboxInfo> {
        self.started()?.create(body.to_string().as_bytes())
    }

    fn list(&self) -> Result<Vec<SandboxInfo>> {
        Ok(self.current().map(|m| m.list()).unwrap_or_default())
    }

    fn destroy(&self, id: &str) -> Result<()> {
        self.for_sandbox(id)?.destroy(id)
    }

    fn exec(&self, id: &str, body: ExecBody) -> Result<ExecResult> {
        self.for_sandbox(id)?.exec(id, body)
    }

    fn write_file(&self, id: &str, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut data = data;
        self.for_sandbox(id)?
            .write_file(id, path, mode, false, &mut data)
    }

    fn read_file(&self, id: &str, path: &str, out: &mut dyn Write) -> Result<()> {
        let m = self.for_sandbox(id)?;
        // Ask first: the service would send a directory as a tar.
        if m.stat(id, path)? == FileKind::Dir {
            return Err(ServiceError::BadRequest(format!(
                "{path} is a directory; list it with sandbox_exec (`ls -la {path}`)"
            )));
        }
        m.read_file(id, path, out).map(|_| ())
    }

    fn standalone(&self) -> bool {
        true
    }

    fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // A start under way finishes first, then sees `closed` and stops its lane.
        let _one = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut m) = self
            .manager
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        tracing::info!("destroying every sandbox");
        m.shutdown();
        // Calls under way end once their sandbox is gone; the last reference
        // dropped here stops the lane before the process exits.
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            match Arc::try_unwrap(m) {
                Ok(last) => {
                    drop(last);
                    return;
                }
                Err(shared) if Instant::now() < deadline => {
                    m = shared;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => {
                    tracing::warn!(
                        "tool calls still hold the sandbox manager; exiting without stopping it (the next voidbox run cleans up)"
                    );
                    return;
                }
            }
        }
    }
}

/// Sandboxes of a running `voidbox serve` (`voidbox mcp --daemon`): they
/// outlive this server.
pub struct Daemon {
    client: crate::daemon::client::DaemonClient,
}

impl Daemon {
    /// The daemon of `VOIDBOX_HOST` (or the default socket); fails when none answers.
    pub fn connect() -> Result<Self> {
        let client = crate::daemon::client::DaemonClient::from_env()?;
        client.list()?;
        Ok(Daemon { client })
    }
}

impl Backend for Daemon {
    fn create(&self, body: &serde_json::Value) -> Result<SandboxInfo> {
        self.client.create(body)
    }
    fn list(&self) -> Result<Vec<SandboxInfo>> {
        self.client.list()
    }
    fn destroy(&self, id: &str) -> Result<()> {
        self.client.destroy(id)
    }
    fn exec(&self, id: &str, body: ExecBody) -> Result<ExecResult> {
        self.client.exec(id, &body)
    }
    fn write_file(&self, id: &str, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let data = data.to_vec();
        self.client
            .write_file(id, path, mode, false, Box::new(std::io::Cursor::new(data)))
    }
    fn read_file(&self, id: &str, path: &str, out: &mut dyn Write) -> Result<()> {
        let mut buf = Vec::new();
        if self.client.read_file(id, path, &mut buf)? {
            return Err(ServiceError::BadRequest(format!(
                "{path} is a directory; list it with sandbox_exec (`ls -la {path}`)"
            )));
        }
        out.write_all(&buf)
            .map_err(|e| ServiceError::Internal(format!("writing {path}: {e}")))
    }
    fn standalone(&self) -> bool {
        false
    }
    fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_starts_before_a_create() {
        let b = Standalone::new(ServiceConfig::default());
        assert_eq!(b.list().unwrap(), Vec::new());
        for e in [
            b.exec("sb-nope", ExecBody::default()).unwrap_err(),
            b.destroy("sb-nope").unwrap_err(),
            b.read_file("sb-nope", "/tmp/x", &mut Vec::new())
                .unwrap_err(),
            b.write_file("sb-nope", "/tmp/x", 0o644, b"x").unwrap_err(),
        ] {
            assert_eq!(e.code(), "not_found");
            assert!(e.to_string().contains("sandbox_list"), "{e}");
        }
        assert!(b.current().is_none(), "no manager was started");
        b.shutdown();
    }

    #[test]
    fn no_create_after_shutdown() {
        let b = Standalone::new(ServiceConfig::default());
        b.shutdown();
        let e = b.create(&serde_json::json!({})).unwrap_err();
        assert_eq!(e.code(), "unavailable");
        assert!(b.current().is_none());
    }
}
