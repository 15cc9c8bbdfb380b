//! voidbox-guest-agent: guest PID 1 (no arguments, or init options when pid is 1)
//! or `serve` mode for host tests and benchmarks.
//!
//! ```text
//! voidbox-guest-agent                                   # as PID 1 in the guest
//! voidbox-guest-agent [--listen unix:@NAME] [--disk SERIAL=DEV]...   # PID 1 test hooks
//! voidbox-guest-agent serve --unix PATH --boot-data FILE [--cgroup-root DIR]
//! ```

mod init;
mod log;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use voidbox_guest_agent::service::{find_cgroup2_mount, Service, ServiceConfig};
use voidbox_guest_agent::BootData;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        log::LineLogger::install(
            Box::new(std::io::stderr()),
            tracing::Level::INFO,
            "voidbox-agent",
        );
        if let Err(e) = serve(&args[1..]) {
            eprintln!("voidbox-guest-agent serve: {e}");
            std::process::exit(2);
        }
        return;
    }
    if std::process::id() != 1 {
        eprintln!(
            "voidbox-guest-agent: runs as PID 1 in the guest; for host use run `voidbox-guest-agent serve --unix PATH --boot-data FILE [--cgroup-root DIR]`"
        );
        std::process::exit(2);
    }
    init::run(&args);
}

/// Serve mode: the same service on a Unix socket, one connection at a time,
/// until a `Shutdown` request.
fn serve(args: &[String]) -> Result<(), String> {
    let mut unix = None;
    let mut boot = None;
    let mut cgroup_root = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--unix" => unix = Some(PathBuf::from(val()?)),
            "--boot-data" => boot = Some(PathBuf::from(val()?)),
            "--cgroup-root" => cgroup_root = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let unix = unix.ok_or("--unix PATH is required")?;
    let boot = boot.ok_or("--boot-data FILE is required")?;
    let data = std::fs::read(&boot).map_err(|e| format!("reading {}: {e}", boot.display()))?;
    let data = BootData::from_json(&data).map_err(|e| e.to_string())?;
    let cgroup_root = match cgroup_root {
        Some(c) => c,
        None => find_cgroup2_mount().ok_or("no cgroup2 mount found; pass --cgroup-root DIR")?,
    };
    let sock = unix.clone();
    // Shutdown ends the process, as a reset ends the VM.
    let on_shutdown = Arc::new(move || {
        let _ = std::fs::remove_file(&sock);
        std::process::exit(0);
    });
    let config = ServiceConfig::from_boot_data(&data, cgroup_root, on_shutdown)
        .map_err(|e| e.to_string())?;
    let service = Service::new(config);
    let listener =
        UnixListener::bind(&unix).map_err(|e| format!("binding {}: {e}", unix.display()))?;
    for conn in listener.incoming() {
        let conn = conn.map_err(|e| format!("accept: {e}"))?;
        let svc = service.clone();
        std::thread::spawn(move || {
            if let Err(e) = svc.serve(Box::new(conn)) {
                tracing::warn!("connection ended: {e}");
            }
        });
    }
    Ok(())
}
