//! exec: policy check, a fresh cgroup, the process (pipes or a PTY), output
//! pumps bound by the host's credit, stdin from the host, timeout, exit.
//!
//! An exec ends when its first process exits; whatever it left behind in its
//! cgroup (background or `setsid` children) is then killed with
//! `cgroup.kill`, so output streams always reach EOF and nothing outlives it.

use super::cgroup::Cgroup;
use super::conn::{Connection, ExecControl, StreamState};
use super::sys;
use crate::policy::{PolicyError, DEFAULT_PATH};
use crate::protocol::flow::{Pop, SendWindow};
use crate::protocol::{
    Channel, ErrorCode, ExecLimits, ExecRequest, ExitStatus, Frame, FrameKind, Message, PtySize,
    MAX_DATA_CHUNK,
};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

static EXEC_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How long leftovers of a finished exec get to die after `cgroup.kill`.
const KILL_GRACE: Duration = Duration::from_secs(5);

struct Io {
    stdout: File,
    stderr: Option<File>,
    stdin: Option<File>,
}

/// Runs the exec request of stream `s` to completion.
pub(super) fn run(conn: &Arc<Connection>, s: &Arc<StreamState>, req: ExecRequest) {
    let (child, cgroup, io, pidfd) = match start(conn, s, &req) {
        Ok(v) => v,
        Err((code, msg)) => {
            tracing::info!("exec {:?} refused: {msg}", req.argv.first());
            let _ = conn.send_msg(s.id, &Message::error(code, msg));
            return;
        }
    };
    let status = supervise(conn, s, &req, child, &cgroup, io, &pidfd);
    *s.exec.lock().expect("exec lock") = None;
    drop(cgroup);
    let _ = conn.send_msg(s.id, &Message::Exited(status));
}

type StartError = (ErrorCode, String);

fn start(
    conn: &Connection,
    s: &StreamState,
    req: &ExecRequest,
) -> Result<(Child, Arc<Cgroup>, Io, Arc<OwnedFd>), StartError> {
    let cfg = &conn.config;
    let argv0 = req.argv.first().ok_or((
        ErrorCode::BadRequest,
        "exec needs a non-empty argv".to_string(),
    ))?;
    let cwd = req.cwd.as_deref().unwrap_or("/");
    let path_env = req
        .env
        .get("PATH")
        .map(String::as_str)
        .unwrap_or(DEFAULT_PATH);
    let user = req.user.unwrap_or(cfg.default_user);
    let refused = |e: PolicyError| {
        let code = match e {
            PolicyError::Denied { .. }
            | PolicyError::EnvDenied { .. }
            | PolicyError::Writable { .. } => ErrorCode::CommandDenied,
            PolicyError::NotFound { .. } => ErrorCode::NotFound,
            PolicyError::EmptyArgv => ErrorCode::BadRequest,
        };
        (code, e.to_string())
    };
    let program = cfg
        .policy
        .check(argv0, path_env, Path::new(cwd))
        .map_err(refused)?;
    cfg.policy
        .check_env(req.env.keys().map(String::as_str))
        .map_err(refused)?;
    // Checked just before the exec, and again by nobody: what keeps the file
    // from changing in between is exactly that the workload cannot write it.
    cfg.policy
        .check_not_writable(&program, &[user, cfg.default_user])
        .map_err(refused)?;
    let limits = ExecLimits {
        memory_bytes: req.limits.memory_bytes.or(cfg.default_limits.memory_bytes),
        pids: req.limits.pids.or(cfg.default_limits.pids),
        cpu_millis: req.limits.cpu_millis.or(cfg.default_limits.cpu_millis),
    };
    let name = format!(
        "voidbox-exec-{}-{}",
        std::process::id(),
        EXEC_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let cgroup = Arc::new(
        Cgroup::create(&cfg.cgroup_root, &name, &limits, &cfg.builtin_limits)
            .map_err(|e| (ErrorCode::Failed, e.to_string()))?,
    );

    let mut cmd = Command::new(&program);
    cmd.arg0(argv0)
        .args(&req.argv[1..])
        .env_clear()
        .current_dir(cwd);
    cmd.env("PATH", path_env).env("HOME", "/");
    cmd.envs(&req.env);
    let failed = |what: &str, e: io::Error| (ErrorCode::Failed, format!("{what}: {e}"));
    let pty = match req.pty {
        Some(PtySize { rows, cols }) => {
            let (master, slave) = sys::openpty(rows, cols).map_err(|e| failed("openpty", e))?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| failed("dup pty", e));
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            Some(master)
        }
        None => {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
    };
    let procs_fd = cgroup.procs_fd();
    let (uid, gid, want_ctty) = (user.uid, user.gid, pty.is_some());
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe raw syscalls on integers and fds it captured by value.
    unsafe {
        cmd.pre_exec(move || {
            // Join the exec's cgroup first so everything after counts against it.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if want_ctty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent protects itself from the OOM killer; the workload must not inherit that.
            let adj = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
            if adj >= 0 {
                libc::write(adj, b"0".as_ptr().cast(), 1);
                libc::close(adj);
            }
            let groups = [gid];
            if libc::setgroups(1, groups.as_ptr()) < 0
                || libc::setgid(gid) < 0
                || libc::setuid(uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // No setuid/setgid bit or file capability raises the workload's
            // privileges again (the image root is also nosuid).
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        let code = if e.kind() == io::ErrorKind::NotFound {
            ErrorCode::NotFound
        } else {
            ErrorCode::Failed
        };
        (
            code,
            format!("cannot start {}: {e} (cwd {cwd})", program.display()),
        )
    })?;
    // Drop our copies of the PTY slave so EOF is seen when the process ends.
    drop(cmd);
    let pid = child.id() as i32;
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            cgroup.kill();
            let _ = child.wait();
            return Err(failed("pidfd_open", e));
        }
    };
    let io = match &pty {
        Some(master) => {
            let clone = |fd: &OwnedFd| fd.try_clone().map(File::from);
            Io {
                stdout: clone(master).map_err(|e| failed("dup pty", e))?,
                stderr: None,
                stdin: if req.stdin {
                    Some(clone(master).map_err(|e| failed("dup pty", e))?)
                } else {
                    None
                },
            }
        }
        None => Io {
            stdout: File::from(OwnedFd::from(child.stdout.take().expect("piped stdout"))),
            stderr: Some(File::from(OwnedFd::from(
                child.stderr.take().expect("piped stderr"),
            ))),
            stdin: child.stdin.take().map(|w| File::from(OwnedFd::from(w))),
        },
    };
    *s.exec.lock().expect("exec lock") = Some(ExecControl {
        pid,
        pidfd: pidfd.clone(),
        cgroup: cgroup.clone(),
        pty_master: pty.map(Arc::new),
    });
    tracing::debug!("exec stream {} pid {pid}: {}", s.id, program.display());
    let _ = conn.send_msg(s.id, &Message::Started { pid: pid as u32 });
    Ok((child, cgroup, io, pidfd))
}

fn supervise(
    conn: &Connection,
    s: &StreamState,
    req: &ExecRequest,
    mut child: Child,
    cgroup: &Cgroup,
    io: Io,
    pidfd: &OwnedFd,
) -> ExitStatus {
    let Io {
        stdout,
        stderr,
        stdin,
    } = io;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            pump(
                conn,
                s.id,
                stdout,
                &s.stdout,
                FrameKind::Stdout,
                Channel::Stdout,
            )
        });
        if let Some(err) = stderr {
            scope.spawn(|| {
                pump(
                    conn,
                    s.id,
                    err,
                    &s.stderr,
                    FrameKind::Stderr,
                    Channel::Stderr,
                )
            });
        } else {
            let _ = conn.send_msg(
                s.id,
                &Message::Eof {
                    channel: Channel::Stderr,
                },
            );
        }
        if let (Some(w), Some((_, q))) = (stdin, &s.inbound) {
            let q = q.clone();
            scope.spawn(move || feed_stdin(conn, s.id, w, &q));
        }
        let timeout = req.timeout_ms.map(Duration::from_millis);
        let exited = sys::wait_readable(pidfd, timeout).unwrap_or(true);
        if !exited {
            tracing::info!("exec stream {} timed out; killing its cgroup", s.id);
            cgroup.kill();
        }
        let st = child.wait();
        // The first process is gone: end everything it left behind so pipes reach EOF.
        cgroup.kill_and_wait(KILL_GRACE);
        if let Some((_, q)) = &s.inbound {
            q.close();
        }
        match st {
            Ok(st) => ExitStatus {
                code: st.code(),
                signal: st.signal(),
                timed_out: !exited,
            },
            Err(e) => {
                tracing::warn!("wait for exec stream {}: {e}", s.id);
                ExitStatus {
                    code: None,
                    signal: None,
                    timed_out: !exited,
                }
            }
        }
    })
}

/// Copies one output of the process to the host, never exceeding its credit.
fn pump(
    conn: &Connection,
    id: u32,
    mut src: File,
    window: &SendWindow,
    kind: FrameKind,
    channel: Channel,
) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    while let Some(n) = window.take(MAX_DATA_CHUNK) {
        match src.read(&mut buf[..n]) {
            Ok(0) => {
                window.give_back(n);
                break;
            }
            Ok(k) => {
                window.give_back(n - k);
                if conn.send(Frame::data(id, kind, buf[..k].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => window.give_back(n),
            // A PTY master reports EIO once every slave fd is closed: that is EOF.
            Err(_) => {
                window.give_back(n);
                break;
            }
        }
    }
    let _ = conn.send_msg(id, &Message::Eof { channel });
}

/// Writes the host's stdin bytes to the process, returning credit as it goes.
fn feed_stdin(conn: &Connection, id: u32, mut w: File, q: &crate::protocol::flow::RecvQueue) {
    let mut broken = false;
    while let Pop::Data { chunk, credit } = q.pop() {
        if !broken && w.write_all(&chunk).is_err() {
            // The process closed stdin; keep draining so the host never stalls.
            broken = true;
        }
        if let Some(bytes) = credit {
            let _ = conn.send_msg(
                id,
                &Message::Credit {
                    channel: Channel::Stdin,
                    bytes,
                },
            );
        }
    }
    // Dropping `w` closes the process's stdin.
}

/// Sends a signal to the exec's first process.
pub(super) fn signal(s: &StreamState, sig: i32) {
    if let Some(e) = s.exec.lock().expect("exec lock").as_ref() {
        if let Err(err) = sys::pidfd_send_signal(&e.pidfd, sig) {
            tracing::debug!("signal {sig} to pid {}: {err}", e.pid);
        }
    }
}

/// Kills the exec's whole cgroup.
pub(super) fn kill(s: &StreamState) {
    if let Some(e) = s.exec.lock().expect("exec lock").as_ref() {
        e.cgroup.kill();
    }
}

/// Resizes the exec's PTY.
pub(super) fn resize(s: &StreamState, size: PtySize) {
    if let Some(m) = s
        .exec
        .lock()
        .expect("exec lock")
        .as_ref()
        .and_then(|e| e.pty_master.clone())
    {
        if let Err(e) = sys::set_winsize(&m, size.rows, size.cols) {
            tracing::debug!("resize pty: {e}");
        }
    }
}
