//! The L2 command server: runs commands for the host over the control port.
//!
//! Started by the L2 init, chrooted into the host's `/`. Each command runs in its own
//! session (so a signal reaches its whole process group); its stdout and stderr are sent as
//! frames while it runs, then its exit status.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::protocol::{self, CommandSpec, ExitInfo, ReadyInfo};
use super::vport;

/// Name of the control port.
pub const CONTROL_PORT: &str = "voidbox.ctl";

type Writer = Arc<Mutex<File>>;

fn send(w: &Writer, kind: u8, id: u32, payload: &[u8]) {
    let mut f = w.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = protocol::write_frame(&mut *f, kind, id, payload) {
        tracing::warn!("lane server: write to control port: {e}");
    }
}

/// Serves the control port until the host disconnects. Returns the process exit code.
pub fn serve() -> i32 {
    match serve_inner() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("lane server: {e}");
            1
        }
    }
}

fn serve_inner() -> std::io::Result<()> {
    let dev = vport::find_port(CONTROL_PORT, Duration::from_secs(20))?;
    let port = vport::open_port(&dev)?;
    vport::wait_host_connected(&port, Duration::from_secs(600))?;
    let writer: Writer = Arc::new(Mutex::new(port.try_clone()?));
    let mut reader = port;
    let ready = ReadyInfo {
        kvm: std::path::Path::new("/dev/kvm").exists(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    send(
        &writer,
        protocol::READY,
        0,
        &serde_json::to_vec(&ready).expect("serializes"),
    );
    let pids: Arc<Mutex<HashMap<u32, i32>>> = Arc::default();
    while let Some(frame) = protocol::read_frame(&mut reader)? {
        match frame.kind {
            protocol::SPAWN => match serde_json::from_slice::<CommandSpec>(&frame.payload) {
                Ok(spec) => spawn(frame.id, spec, &writer, &pids),
                Err(e) => send(
                    &writer,
                    protocol::SPAWN_FAILED,
                    frame.id,
                    format!("bad spec: {e}").as_bytes(),
                ),
            },
            protocol::SIGNAL => {
                let sig = frame
                    .payload
                    .get(..4)
                    .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(libc::SIGKILL);
                let map = pids.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(&pid) = map.get(&frame.id) {
                    // SAFETY: kill(2) has no memory effects; the pid is still unreaped
                    // (the waiter removes it from the map before reaping), so the group
                    // id cannot have been reused.
                    unsafe { libc::kill(-pid, sig) };
                }
            }
            other => tracing::warn!("lane server: unknown frame kind {other}"),
        }
    }
    Ok(())
}

fn spawn(id: u32, spec: CommandSpec, writer: &Writer, pids: &Arc<Mutex<HashMap<u32, i32>>>) {
    let Some((prog, args)) = spec.argv.split_first() else {
        send(writer, protocol::SPAWN_FAILED, id, b"empty argv");
        return;
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd.as_deref().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            send(
                writer,
                protocol::SPAWN_FAILED,
                id,
                format!("cannot run {prog}: {e}").as_bytes(),
            );
            return;
        }
    };
    let pid = child.id() as i32;
    pids.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, pid);
    let pump = |mut r: Box<dyn Read + Send>, kind: u8, w: Writer| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; protocol::CHUNK];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => send(&w, kind, id, &buf[..n]),
                }
            }
        })
    };
    let out = pump(
        Box::new(child.stdout.take().expect("piped")),
        protocol::STDOUT,
        writer.clone(),
    );
    let err = pump(
        Box::new(child.stderr.take().expect("piped")),
        protocol::STDERR,
        writer.clone(),
    );
    let writer = writer.clone();
    let pids = pids.clone();
    std::thread::spawn(move || {
        // Wait for the exit without reaping, forget the pid, then reap: a SIGNAL frame can
        // never hit a reused pid.
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer; WNOWAIT leaves the child reapable.
        unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        let status = child.wait();
        let _ = out.join();
        let _ = err.join();
        let exit = match status {
            Ok(s) => ExitInfo {
                code: s.code(),
                signal: s.signal(),
            },
            Err(_) => ExitInfo::default(),
        };
        send(
            &writer,
            protocol::EXIT,
            id,
            &serde_json::to_vec(&exit).expect("serializes"),
        );
    });
}
