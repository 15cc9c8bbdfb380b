//! `voidbox serve`: the local daemon that keeps sandboxes alive and serves
//! them over the HTTP API of docs/api.md, on a private Unix socket or on a
//! loopback TCP port with a bearer token.
//!
//! - [`routes`]: the endpoints over a [`crate::service::Manager`];
//! - [`client`]: a blocking Rust client of the API;
//! - [`endpoint`]: where it listens and where clients find it;
//! - [`openapi`]: the OpenAPI document.

pub mod client;
pub mod endpoint;
pub mod openapi;
pub mod routes;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;

use crate::runtime::launch::LaunchOptions;
use crate::service::{Lifetimes, Manager, ServiceConfig, ServiceError};
use endpoint::{default_socket, load_or_create_token};

/// `voidbox serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to listen on (default: $XDG_RUNTIME_DIR/voidbox/api.sock, or /run/voidbox/api.sock for root).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Listen on this loopback TCP address instead (e.g. 127.0.0.1:7878); needs --token-file.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    pub listen: Option<String>,
    /// Bearer token for --listen (created with a random token, mode 0600, if missing).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Sandboxes at once (1 to 31 when the nested lane is used).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_sandboxes: u32,
    /// Guest memory of all sandboxes together, in MiB.
    #[arg(long, default_value_t = 8192, value_name = "MIB")]
    pub max_memory_mb: u32,
    /// Default lifetime of a sandbox, in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub default_timeout: u64,
    /// Default idle limit of a sandbox, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub default_idle_timeout: u64,
    /// Seconds allowed from launch to a ready guest agent (default 180, or VOIDBOX_BOOT_TIMEOUT).
    #[arg(long, value_name = "SECS")]
    pub boot_timeout: Option<u64>,
}

fn check_loopback(addr: &str) -> Result<std::net::SocketAddr> {
    let sa: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("--listen `{addr}` is not IP:PORT (e.g. 127.0.0.1:7878)"))?;
    if !sa.ip().is_loopback() {
        bail!("--listen {addr}: the API serves loopback only (127.0.0.1 or ::1); reach it from elsewhere through an SSH tunnel");
    }
    Ok(sa)
}

/// Makes the socket's directory (0700) and removes a stale socket; fails
/// when another daemon answers on it.
fn prepare_socket(path: &std::path::Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another voidbox daemon listens on {}; stop it first, or give this one --socket PATH",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    Ok(())
}

async fn require_token(token: std::sync::Arc<String>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        // Constant time in the token's length.
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        next.run(req).await
    } else {
        let e = routes::ApiError(ServiceError::Unauthorized(
            "send `Authorization: Bearer TOKEN` with the token from the daemon's --token-file (clients read VOIDBOX_TOKEN or VOIDBOX_TOKEN_FILE)".into(),
        ));
        let mut r = e.into_response();
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handling the daemon runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs the daemon until SIGTERM or SIGINT, then destroys every sandbox.
pub fn main(args: ServeArgs) -> Result<u8> {
    let mut launch = LaunchOptions::default();
    if let Some(secs) = args.boot_timeout {
        launch.boot_timeout = Duration::from_secs(secs);
    }
    let cfg = ServiceConfig {
        max_sandboxes: args.max_sandboxes,
        max_memory_mb: args.max_memory_mb,
        lifetimes: Lifetimes {
            timeout: Duration::from_secs(args.default_timeout),
            idle_timeout: Duration::from_secs(args.default_idle_timeout),
        },
        launch,
        pull: voidbox_oci::PullOptions::default(),
    };
    if cfg.max_sandboxes == 0 || cfg.max_memory_mb < 64 {
        bail!("--max-sandboxes must be at least 1 and --max-memory-mb at least 64");
    }
    // Check the address before starting anything slow.
    let listen = args.listen.as_deref().map(check_loopback).transpose()?;
    let token = match (&listen, &args.token_file) {
        (Some(_), Some(f)) => {
            Some(load_or_create_token(f).with_context(|| format!("token file {}", f.display()))?)
        }
        _ => None,
    };
    let socket = args.socket.clone().unwrap_or_else(default_socket);
    if listen.is_none() {
        prepare_socket(&socket)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .max_blocking_threads(256)
        .build()
        .context("cannot start the async runtime")?;
    // Signals arrive as a stream from here on, not as a default kill.
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        stop_signal().await;
        let _ = stop_tx.send(());
    });
    let manager = Manager::start(cfg).context("cannot start the sandbox service")?;
    let mut app = routes::router(manager.clone());
    let served = rt.block_on(async {
        let shutdown = async {
            let _ = stop.await;
            tracing::info!("stopping: destroying every sandbox");
        };
        match listen {
            Some(addr) => {
                let token = std::sync::Arc::new(token.expect("checked with --listen"));
                app = app.layer(axum::middleware::from_fn(move |req, next| {
                    require_token(token.clone(), req, next)
                }));
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                eprintln!(
                    "voidbox serve: listening on http://{addr} ({} launcher)",
                    manager.launcher_name()
                );
                axum::serve(l, app).with_graceful_shutdown(shutdown).await?;
            }
            None => {
                let l = tokio::net::UnixListener::bind(&socket)
                    .with_context(|| format!("cannot listen on {}", socket.display()))?;
                std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
                eprintln!(
                    "voidbox serve: listening on unix://{} ({} launcher)",
                    socket.display(),
                    manager.launcher_name()
                );
                axum::serve(l, app).with_graceful_shutdown(shutdown).await?;
            }
        }
        anyhow::Ok(())
    });
    manager.shutdown();
    drop(manager);
    if listen.is_none() {
        let _ = std::fs::remove_file(&socket);
    }
    // Blocking request threads may still hold a stream; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(5));
    served?;
    eprintln!("voidbox serve: stopped");
    Ok(0)
}
