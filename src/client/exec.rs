//! Streaming exec.

use super::mux::{Event, StreamHandle};
use super::{Client, ClientError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use voidbox_guest_agent::protocol::{
    Channel, ExecRequest, ExitStatus, FrameKind, Message, PtySize, MAX_DATA_CHUNK,
};

/// A running exec. Drive it with [`ExecHandle::wait_with`]; feed its stdin
/// from other threads through [`ExecHandle::take_stdin`].
pub struct ExecHandle {
    h: Arc<StreamHandle>,
    /// Guest pid of the process.
    pub pid: u32,
    stdin: Arc<StdinState>,
    /// Whether a [`ExecStdin`] was handed out (its owner then closes stdin).
    stdin_taken: bool,
}

/// Whether stdin is still open; held while a chunk or the EOF goes out so no
/// data can follow the EOF.
struct StdinState {
    open: Mutex<bool>,
}

/// The write half of an exec's stdin, usable from any thread while another
/// thread streams the output with [`ExecHandle::wait_with`]. Clones share
/// one stdin; it is closed by [`ExecStdin::close`] or when the last clone is
/// dropped. Writes fail once the process has ended.
#[derive(Clone)]
pub struct ExecStdin {
    inner: Arc<StdinWriter>,
}

struct StdinWriter {
    h: Arc<StreamHandle>,
    stdin: Arc<StdinState>,
}

impl Drop for StdinWriter {
    fn drop(&mut self) {
        let _ = close_stdin(&self.h, &self.stdin);
    }
}

impl std::fmt::Debug for ExecStdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecStdin")
    }
}

impl ExecStdin {
    /// Sends bytes to the process's stdin (blocks while the guest has no room).
    pub fn write(&self, data: &[u8]) -> Result<(), ClientError> {
        write_stdin(&self.inner.h, &self.inner.stdin, data)
    }

    /// Closes the process's stdin (the process sees EOF). Idempotent.
    pub fn close(&self) -> Result<(), ClientError> {
        close_stdin(&self.inner.h, &self.inner.stdin)
    }
}

/// Collected result of [`Client::exec_collect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything written to stdout (or the PTY).
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

fn remote(e: voidbox_guest_agent::protocol::ErrorReply) -> ClientError {
    ClientError::Remote {
        code: e.code,
        message: e.message,
    }
}

impl Client {
    /// Starts a process; returns once the guest reports it started (or refused).
    pub fn exec(&self, req: ExecRequest) -> Result<ExecHandle, ClientError> {
        let stdin_open = req.stdin;
        let h = self.mux.open(&Message::Exec(req))?;
        let deadline = Instant::now() + super::DEFAULT_REQUEST_TIMEOUT;
        match h.next(Some(deadline))? {
            Event::Msg(Message::Started { pid }) => Ok(ExecHandle {
                h: Arc::new(h),
                pid,
                stdin: Arc::new(StdinState {
                    open: Mutex::new(stdin_open),
                }),
                stdin_taken: false,
            }),
            Event::Msg(Message::Error(e)) => Err(remote(e)),
            other => Err(ClientError::Protocol(format!(
                "expected started, got {other:?}"
            ))),
        }
    }

    /// Runs a process to completion, feeding `stdin` (if the request asks for
    /// stdin) and collecting its output in memory.
    pub fn exec_collect(
        &self,
        mut req: ExecRequest,
        stdin: &[u8],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, ClientError> {
        req.stdin = req.stdin || !stdin.is_empty();
        let mut h = self.exec(req)?;
        let writer = h.take_stdin();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = std::thread::scope(|s| {
            if let Some(w) = writer {
                // Stdin goes on its own thread so a process that writes before it reads cannot deadlock.
                s.spawn(move || w.write(stdin).and_then(|_| w.close()));
            }
            h.wait_with(
                |d| out.extend_from_slice(d),
                |d| err.extend_from_slice(d),
                timeout,
            )
        })?;
        Ok(ExecOutput {
            stdout: out,
            stderr: err,
            status,
        })
    }
}

fn write_stdin(h: &StreamHandle, state: &StdinState, mut data: &[u8]) -> Result<(), ClientError> {
    let closed = || ClientError::Closed("stdin is closed".into());
    if !*state.open.lock().expect("stdin lock") {
        return Err(ClientError::Protocol(
            "this exec has no open stdin (set ExecRequest::stdin, do not write after close)".into(),
        ));
    }
    while !data.is_empty() {
        // Wait for credit without the lock, so a close never waits on the guest.
        let n = h
            .inbox
            .stdin
            .take(data.len().min(MAX_DATA_CHUNK))
            .ok_or_else(closed)?;
        let open = state.open.lock().expect("stdin lock");
        if !*open {
            return Err(closed());
        }
        h.send_data(FrameKind::Stdin, data[..n].to_vec())?;
        drop(open);
        data = &data[n..];
    }
    Ok(())
}

fn close_stdin(h: &StreamHandle, state: &StdinState) -> Result<(), ClientError> {
    let mut open = state.open.lock().expect("stdin lock");
    if std::mem::take(&mut *open) {
        h.send_msg(&Message::Eof {
            channel: Channel::Stdin,
        })?;
    }
    Ok(())
}

fn wait_events(
    h: &StreamHandle,
    on_stdout: &mut dyn FnMut(&[u8]),
    on_stderr: &mut dyn FnMut(&[u8]),
    timeout: Option<Duration>,
) -> Result<ExitStatus, ClientError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        match h.next(deadline) {
            Ok(Event::Data(Channel::Stdout, d)) => on_stdout(&d),
            Ok(Event::Data(Channel::Stderr, d)) => on_stderr(&d),
            Ok(Event::Data(ch, _)) => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {ch:?} data on an exec"
                )))
            }
            Ok(Event::Msg(Message::Exited(st))) => return Ok(st),
            Ok(Event::Msg(Message::Eof { .. })) => {}
            Ok(Event::Msg(Message::Error(e))) => return Err(remote(e)),
            Ok(Event::Msg(m)) => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {m:?} on an exec"
                )))
            }
            Err(ClientError::Timeout { .. }) => {
                // Our limit passed: end the process's whole cgroup, then report.
                let _ = h.send_msg(&Message::Kill);
                return Err(ClientError::Timeout {
                    what: "the exec to finish".into(),
                    after: timeout.unwrap_or_default(),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

impl ExecHandle {
    /// A handle to write and close stdin from other threads while
    /// [`ExecHandle::wait_with`] streams the output; `None` if the request
    /// had no stdin or the handle was already taken. Once taken, `wait_with`
    /// leaves stdin open: the handle's owner closes it (or drops every clone).
    pub fn take_stdin(&mut self) -> Option<ExecStdin> {
        if self.stdin_taken || !*self.stdin.open.lock().expect("stdin lock") {
            return None;
        }
        self.stdin_taken = true;
        Some(ExecStdin {
            inner: Arc::new(StdinWriter {
                h: self.h.clone(),
                stdin: self.stdin.clone(),
            }),
        })
    }

    /// Sends bytes to the process's stdin (blocks while the guest has no room).
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        write_stdin(&self.h, &self.stdin, data)
    }

    /// Closes the process's stdin. Idempotent; callable while another thread
    /// waits (see also [`ExecHandle::take_stdin`]).
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        close_stdin(&self.h, &self.stdin)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.h.send_msg(&Message::Signal { signal })
    }

    /// Kills every process of the exec (its cgroup).
    pub fn kill(&self) -> Result<(), ClientError> {
        self.h.send_msg(&Message::Kill)
    }

    /// Resizes the PTY.
    pub fn resize(&self, size: PtySize) -> Result<(), ClientError> {
        self.h.send_msg(&Message::Resize(size))
    }

    /// Streams output to the callbacks until the process ends. The guest only
    /// sends as much as the callbacks have consumed plus a fixed window, so a
    /// slow callback slows the process instead of growing memory. With a
    /// `timeout`, the exec is killed when it passes. Stdin is closed first
    /// unless it was taken with [`ExecHandle::take_stdin`].
    pub fn wait_with(
        self,
        mut on_stdout: impl FnMut(&[u8]),
        mut on_stderr: impl FnMut(&[u8]),
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, ClientError> {
        if !self.stdin_taken {
            self.close_stdin()?;
        }
        self.wait_keep_stdin(&mut on_stdout, &mut on_stderr, timeout)
    }

    /// Like [`ExecHandle::wait_with`] but keeps stdin open (write it from another thread
    /// through a shared reference or an [`ExecStdin`]).
    pub fn wait_keep_stdin(
        &self,
        mut on_stdout: impl FnMut(&[u8]),
        mut on_stderr: impl FnMut(&[u8]),
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, ClientError> {
        let r = wait_events(&self.h, &mut on_stdout, &mut on_stderr, timeout);
        // The process is gone (or we gave up on it): fail writers waiting for credit.
        self.h.inbox.stdin.close();
        r
    }
}
