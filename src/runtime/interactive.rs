//! `voidbox exec` and `voidbox shell`: one command (or an interactive shell
//! on a PTY) in a throwaway sandbox, stdio attached, exit code passed through.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;

use nix::sys::termios::{self, SetArg, Termios};
use voidbox_spec::Spec;

use super::error::{Error, Result};
use super::events::{Event, EventSink};
use super::session::RunContext;
use super::workflow::{copy_inputs, copy_outputs};
use crate::client::{ClientError, ErrorCode, ExecRequest, PtySize};

/// Discards events: exec and shell print the command's own output only.
struct Quiet;

impl EventSink for Quiet {
    fn emit(&mut self, _: Event) {}
}

fn exec_error(e: ClientError, what: &str) -> Error {
    match e {
        ClientError::Remote {
            code: ErrorCode::CommandDenied,
            message,
        } => Error::Refused(format!("{what}: {message}")),
        ClientError::Remote { message, .. } => Error::Refused(format!("{what}: {message}")),
        other => Error::Host(format!("{what}: {other}")),
    }
}

/// Runs `argv` in the spec's sandbox. With `stdin` the host's stdin is read
/// to its end and fed to the command (its output then arrives when it ends);
/// otherwise output streams as it is produced.
pub fn exec(ctx: &RunContext, spec: &Spec, argv: Vec<String>, stdin: bool) -> Result<i32> {
    if let Some(allow) = &spec.sandbox.allow_commands {
        if let Some(program) = argv.first() {
            if !voidbox_spec::is_allowed(program, allow) {
                return Err(Error::Refused(format!(
                    "`{program}` is not in sandbox.allow_commands; add its absolute guest path to the list"
                )));
            }
        }
    }
    let plan = ctx.plan(spec)?;
    let mode = ctx.launch_mode()?;
    let vm = ctx.boot(&plan, &mode)?;
    copy_inputs(&vm, &plan, &mut Quiet, &ctx.cancel)?;
    let mut env = spec.sandbox.env.clone();
    if let Some(rootfs) = &plan.rootfs {
        for (k, v) in rootfs.image_env.iter().filter_map(|kv| kv.split_once('=')) {
            env.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    let req = ExecRequest {
        argv: argv.clone(),
        env,
        timeout_ms: Some(plan.timeout_secs * 1000),
        stdin,
        ..Default::default()
    };
    let what = format!("`{}`", argv.join(" "));
    let status = if stdin {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| Error::host("cannot read stdin", e))?;
        let out = vm
            .client()
            .exec_collect(req, &data, None)
            .map_err(|e| exec_error(e, &what))?;
        let _ = std::io::stdout().write_all(&out.stdout);
        let _ = std::io::stderr().write_all(&out.stderr);
        out.status
    } else {
        let handle = vm.client().exec(req).map_err(|e| exec_error(e, &what))?;
        handle
            .wait_with(
                |d| {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(d);
                    let _ = out.flush();
                },
                |d| {
                    let _ = std::io::stderr().write_all(d);
                },
                None,
            )
            .map_err(|e| {
                if ctx.cancel.is_cancelled() {
                    Error::Interrupted
                } else {
                    exec_error(e, &what)
                }
            })?
    };
    copy_outputs(
        &vm,
        &plan,
        &mut Quiet,
        &ctx.cancel,
        status.shell_code() != 0,
    )?;
    vm.shutdown()?;
    if status.timed_out {
        return Err(Error::Timeout(format!(
            "{what} passed its limit of {} s (sandbox.timeout_secs)",
            plan.timeout_secs
        )));
    }
    Ok(status.shell_code())
}

/// Puts the terminal in raw mode until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)
            .map_err(|e| Error::host("cannot read terminal settings", e))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| Error::host("cannot set the terminal to raw mode", e))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

fn terminal_size() -> PtySize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
        PtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        }
    } else {
        PtySize { rows: 24, cols: 80 }
    }
}

/// An interactive shell on a PTY in the spec's sandbox.
pub fn shell(ctx: &RunContext, spec: &Spec) -> Result<i32> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Host(
            "voidbox shell needs a terminal on stdin; use `voidbox exec -- sh -c '...'` for scripts".into(),
        ));
    }
    let plan = ctx.plan(spec)?;
    let mode = ctx.launch_mode()?;
    let vm = ctx.boot(&plan, &mode)?;
    copy_inputs(&vm, &plan, &mut Quiet, &ctx.cancel)?;
    let mut env = spec.sandbox.env.clone();
    env.insert(
        "TERM".into(),
        std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
    );
    let req = ExecRequest {
        argv: vec!["/bin/sh".into()],
        env,
        pty: Some(terminal_size()),
        stdin: true,
        ..Default::default()
    };
    let handle = Arc::new(
        vm.client()
            .exec(req)
            .map_err(|e| exec_error(e, "the shell"))?,
    );
    let status = {
        let _raw = RawMode::enter()?;
        let writer = handle.clone();
        // Keystrokes go to the guest until the shell exits; the thread then
        // stays blocked on read and ends with the process.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || writer.write_stdin(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        handle.wait_keep_stdin(
            |d| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(d);
                let _ = out.flush();
            },
            |d| {
                let _ = std::io::stderr().write_all(d);
            },
            None,
        )
    };
    let status = status.map_err(|e| exec_error(e, "the shell"))?;
    copy_outputs(&vm, &plan, &mut Quiet, &ctx.cancel, true)?;
    vm.shutdown()?;
    Ok(status.shell_code())
}
