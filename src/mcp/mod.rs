//! `voidbox mcp`: a Model Context Protocol server on stdio (docs/mcp.md). An
//! MCP client starts it and calls six tools that create sandboxes, run
//! commands and move files in them. Standalone, the sandboxes live in this
//! process and are all destroyed when the client disconnects (stdin closes)
//! or on SIGTERM/SIGINT. Stdout carries the protocol: logs go to stderr.
//!
//! - [`backend`]: where the sandboxes live;
//! - [`tools`]: the tools and what they do;
//! - [`schema`]: their arguments and answers, with JSON Schemas;
//! - [`text`]: output truncation and error wording for the model.

pub mod backend;
pub mod schema;
pub mod text;
pub mod tools;

use std::sync::Arc;

use anyhow::Context as _;
use rmcp::ServiceExt as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::runtime::launch::MAX_LANE_VMS;
use crate::service::ServiceConfig;
use backend::{Backend, Standalone};
use tools::SandboxTools;

/// `voidbox mcp` options.
#[derive(Debug, Clone, clap::Args)]
pub struct McpArgs {
    /// Use the sandboxes of a running `voidbox serve` (found through VOIDBOX_HOST,
    /// else the default socket) instead of sandboxes of this process.
    #[arg(long)]
    pub daemon: bool,
    /// Sandboxes at once (standalone).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_sandboxes: u32,
    /// Guest memory of all sandboxes together, in MiB (standalone).
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    pub max_memory_mb: u32,
}

/// Smallest `--max-memory-mb`: one sandbox of the smallest size.
const MIN_TOTAL_MEMORY_MB: u32 = 64;

/// The service limits of a standalone server, checked before serving so that a
/// bad flag fails at start rather than on the model's first create.
pub fn standalone_config(args: &McpArgs) -> anyhow::Result<ServiceConfig> {
    if args.max_sandboxes == 0 || args.max_sandboxes > MAX_LANE_VMS {
        anyhow::bail!(
            "--max-sandboxes {} is out of range: give 1 to {MAX_LANE_VMS}",
            args.max_sandboxes
        );
    }
    if args.max_memory_mb < MIN_TOTAL_MEMORY_MB {
        anyhow::bail!(
            "--max-memory-mb {} is too small: give at least {MIN_TOTAL_MEMORY_MB}",
            args.max_memory_mb
        );
    }
    Ok(ServiceConfig {
        max_sandboxes: args.max_sandboxes,
        max_memory_mb: args.max_memory_mb,
        ..ServiceConfig::default()
    })
}

/// Serves MCP on stdin/stdout until the client disconnects or a signal
/// comes, then destroys the sandboxes. Exits 0 on a normal end.
pub fn main(args: McpArgs) -> anyhow::Result<u8> {
    let backend: Arc<dyn Backend> = if args.daemon {
        Arc::new(backend::Daemon::connect().context("voidbox mcp --daemon")?)
    } else {
        Arc::new(Standalone::new(standalone_config(&args)?))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("voidbox-mcp")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = rt.block_on(serve(backend.clone()));
    // Tool calls still under way run on the runtime's blocking threads: they
    // end once their sandboxes are gone.
    backend.shutdown();
    // A blocking stdin read cannot be cancelled: do not wait for it.
    rt.shutdown_background();
    served.map(|()| 0)
}

async fn serve(backend: Arc<dyn Backend>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let session = async {
        let running = SandboxTools::new(backend)
            .serve(rmcp::transport::stdio_pipes())
            .await
            .context("the MCP session did not start")?;
        tracing::info!("MCP session started");
        let why = running.waiting().await.context("the MCP session failed")?;
        tracing::info!(?why, "MCP session ended");
        anyhow::Ok(())
    };
    tokio::select! {
        r = session => r,
        _ = term.recv() => {
            tracing::info!("SIGTERM: stopping");
            Ok(())
        }
        _ = int.recv() => {
            tracing::info!("SIGINT: stopping");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        mcp: McpArgs,
    }

    fn args(argv: &[&str]) -> McpArgs {
        Cli::try_parse_from(std::iter::once("mcp").chain(argv.iter().copied()))
            .unwrap()
            .mcp
    }

    #[test]
    fn standalone_defaults_and_limits() {
        let cfg = standalone_config(&args(&[])).unwrap();
        assert_eq!((cfg.max_sandboxes, cfg.max_memory_mb), (4, 4096));
        let cfg =
            standalone_config(&args(&["--max-sandboxes", "2", "--max-memory-mb", "1024"])).unwrap();
        assert_eq!((cfg.max_sandboxes, cfg.max_memory_mb), (2, 1024));
        for bad in [
            &["--max-sandboxes", "0"][..],
            &["--max-sandboxes", "32"],
            &["--max-memory-mb", "10"],
        ] {
            let e = standalone_config(&args(bad)).unwrap_err().to_string();
            assert!(e.contains(bad[0]), "{e}");
        }
    }

    #[test]
    fn daemon_mode_needs_a_daemon() {
        std::env::set_var("VOIDBOX_HOST", "unix:///nonexistent/voidbox-test/api.sock");
        let e = format!("{:#}", main(args(&["--daemon"])).unwrap_err());
        assert!(e.contains("voidbox serve"), "{e}");
    }
}
