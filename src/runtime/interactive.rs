//! `voidbox exec` and `voidbox shell`: one command (or an interactive shell
//! on a PTY) in a throwaway sandbox, stdio attached, exit code passed through.

use nix::sys::termios::{self, SetArg, Termios};
use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use voidbox_spec::Spec;

use super::error::{Error, Result};
use super::events::{Event, EventSink};
use super::sandbox::{exec_error, ExecOptions, Sandbox};
use super::session::RunContext;
use super::workflow::{copy_inputs, copy_outputs};
use crate::client::{Client, ClientError, ExecRequest, ExitStatus, PtySize};

/// Discards events: exec and shell print the command's own output only.
struct Quiet;

impl EventSink for Quiet {
    fn emit(&mut self, _: Event) {}
}

/// Boots the spec's sandbox and copies its inputs in.
fn open(ctx: &RunContext, spec: &Spec) -> Result<Sandbox> {
    let plan = ctx.plan(spec)?;
    let mode = ctx.launch_mode()?;
    let sandbox = ctx.create_sandbox(plan, &mode)?;
    copy_inputs(
        sandbox.vm(),
        sandbox.plan(),
        &mut Quiet,
        &ctx.cancel,
        sandbox.deadline(),
    )?;
    Ok(sandbox)
}

/// Copies the outputs out and powers the sandbox off.
fn close(ctx: &RunContext, sandbox: Sandbox, best_effort: bool) -> Result<()> {
    copy_outputs(
        sandbox.vm(),
        sandbox.plan(),
        &mut Quiet,
        &ctx.cancel,
        best_effort,
    )?;
    sandbox.stop()
}

/// A command the spec's allowlist cannot let through is refused before a VM
/// boots (the agent enforces the same list; this only saves the boot).
fn refuse_before_boot(spec: &Spec, argv: &[String]) -> Result<()> {
    let (Some(allow), Some(program)) = (&spec.sandbox.allow_commands, argv.first()) else {
        return Ok(());
    };
    if voidbox_spec::is_allowed(program, allow) {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "`{program}` is not in sandbox.allow_commands; add its absolute guest path to the list"
    )))
}

/// Runs `argv` in the spec's sandbox, output streamed as it is produced.
/// With `stdin` the host's stdin is streamed to the command as it is read.
pub fn exec(ctx: &RunContext, spec: &Spec, argv: Vec<String>, stdin: bool) -> Result<i32> {
    refuse_before_boot(spec, &argv)?;
    let sandbox = open(ctx, spec)?;
    let what = format!("`{}`", argv.join(" "));
    let req = sandbox.exec_request(ExecOptions {
        argv,
        stdin,
        ..Default::default()
    });
    let limit = req.timeout_ms.unwrap_or_default() / 1000;
    let host_stdin = stdin.then(std::io::stdin);
    let status = stream_exec(
        sandbox.client(),
        req,
        host_stdin,
        |d| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(d);
            let _ = out.flush();
        },
        |d| {
            let _ = std::io::stderr().write_all(d);
        },
    )
    .map_err(|e| {
        if ctx.cancel.is_cancelled() {
            Error::Interrupted
        } else {
            exec_error(e, &what)
        }
    })?;
    close(ctx, sandbox, status.shell_code() != 0)?;
    if status.timed_out {
        return Err(Error::Timeout(format!(
            "{what} passed its limit of {limit} s (sandbox.timeout_secs)"
        )));
    }
    Ok(status.shell_code())
}

/// Runs `req` with output streamed to the callbacks as it arrives; with
/// `stdin` (the request must ask for stdin), its bytes are fed from a thread
/// of their own and stdin is closed at its end. The thread is detached: it
/// may stay blocked reading a host stdin that never ends after the process
/// exited, and then ends with this process.
pub(crate) fn stream_exec<R: Read + Send + 'static>(
    client: &Client,
    req: ExecRequest,
    stdin: Option<R>,
    on_stdout: impl FnMut(&[u8]),
    on_stderr: impl FnMut(&[u8]),
) -> std::result::Result<ExitStatus, ClientError> {
    let mut handle = client.exec(req)?;
    if let (Some(mut input), Some(writer)) = (stdin, handle.take_stdin()) {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if writer.write(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!("reading stdin for the command: {e}");
                        break;
                    }
                }
            }
            let _ = writer.close();
        });
    }
    handle.wait_with(on_stdout, on_stderr, None)
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
    let sandbox = open(ctx, spec)?;
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let req = sandbox.exec_request(ExecOptions {
        argv: vec!["/bin/sh".into()],
        env: [("TERM".to_string(), term)].into(),
        pty: Some(terminal_size()),
        stdin: true,
        ..Default::default()
    });
    let handle = Arc::new(
        sandbox
            .client()
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
    close(ctx, sandbox, true)?;
    Ok(status.shell_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{agent_with, req};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    /// `voidbox exec` with piped stdin: the command's output arrives while
    /// the host's stdin is still open (`cat` echoes the first chunk before
    /// the second is written), and the end of stdin ends the command.
    #[test]
    fn exec_streams_piped_stdin_and_output_as_they_come() {
        let a = agent_with(|_| {});
        let (mut host_end, command_stdin) = UnixStream::pair().unwrap();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel::<()>();
        let feeder = std::thread::spawn(move || -> std::result::Result<(), String> {
            host_end.write_all(b"first\n").map_err(|e| e.to_string())?;
            seen_rx
                .recv_timeout(Duration::from_secs(20))
                .map_err(|_| "no output before stdin was closed")?;
            host_end.write_all(b"second\n").map_err(|e| e.to_string())?;
            // Dropping the socket is the end of stdin.
            Ok(())
        });
        let mut r = req(&["cat"]);
        r.stdin = true;
        let mut out = Vec::new();
        let mut signalled = false;
        let status = stream_exec(
            &a.client,
            r,
            Some(command_stdin),
            |d| {
                out.extend_from_slice(d);
                if !signalled && out.starts_with(b"first\n") {
                    signalled = true;
                    let _ = seen_tx.send(());
                }
            },
            |_| {},
        )
        .unwrap();
        feeder.join().unwrap().unwrap();
        assert_eq!(status.code, Some(0));
        assert_eq!(out, b"first\nsecond\n");
    }
}
