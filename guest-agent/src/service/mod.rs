//! The agent's service: one authenticated connection at a time, many
//! concurrent streams on it. The loop works on any [`Transport`] (vsock in the
//! guest, a Unix socket in host tests), so nothing here assumes vsock.

mod cgroup;
mod conn;
mod exec;
mod files;
mod handshake;
mod resolve;
mod sys;
mod transport;

pub use cgroup::{
    builtin_limits, find_cgroup2_mount, CgroupError, DEFAULT_MEMORY_PERCENT, DEFAULT_PIDS_MAX,
};
pub use transport::{Transport, VsockListener};

use crate::boot_data::BootData;
use crate::policy::CommandPolicy;
use crate::protocol::auth::Secret;
use crate::protocol::{ExecLimits, UserSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything the service needs; built from [`BootData`] in the guest.
#[derive(Clone)]
pub struct ServiceConfig {
    /// Per-VM secret.
    pub secret: Secret,
    /// Command allowlist.
    pub policy: CommandPolicy,
    /// Default exec user and owner of put files.
    pub default_user: UserSpec,
    /// Default cgroup limits of every exec (from the boot data).
    pub default_limits: ExecLimits,
    /// Limits applied where neither the request nor `default_limits` set one
    /// (see [`cgroup::builtin_limits`]); a missing controller only warns.
    pub builtin_limits: ExecLimits,
    /// Roots file transfers may touch.
    pub file_roots: Vec<PathBuf>,
    /// Directory (on a cgroup2 mount) under which each exec gets its own cgroup.
    pub cgroup_root: PathBuf,
    /// How long the peer has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Called after a `Shutdown` request was acknowledged (the guest resets here).
    pub on_shutdown: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("policy", &self.policy)
            .field("default_user", &self.default_user)
            .field("file_roots", &self.file_roots)
            .field("cgroup_root", &self.cgroup_root)
            .finish_non_exhaustive()
    }
}

impl ServiceConfig {
    /// Builds the config from boot data.
    pub fn from_boot_data(
        data: &BootData,
        cgroup_root: PathBuf,
        on_shutdown: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Self, crate::boot_data::BootDataError> {
        data.validate()?;
        Ok(Self {
            secret: data.secret()?,
            policy: CommandPolicy::new(data.allow_commands.as_deref()),
            default_user: data.user,
            default_limits: data.limits.clone(),
            builtin_limits: builtin_limits(
                &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            ),
            file_roots: data.file_roots.iter().map(PathBuf::from).collect(),
            cgroup_root,
            handshake_timeout: Duration::from_secs(10),
            on_shutdown,
        })
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The handshake failed (wrong secret, wrong first frame, timeout...).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer broke the protocol after the handshake.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Transport failure.
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The service.
#[derive(Debug, Clone)]
pub struct Service {
    config: Arc<ServiceConfig>,
}

impl Service {
    /// A service with this config.
    pub fn new(config: ServiceConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// Serves one connection until the peer closes it or breaks the protocol.
    /// Every exec of the connection is killed before this returns.
    pub fn serve(&self, transport: Box<dyn Transport>) -> Result<(), ServiceError> {
        let mut transport = transport;
        handshake::accept(&self.config, transport.as_mut())?;
        conn::Connection::run(self.config.clone(), transport)
    }
}
