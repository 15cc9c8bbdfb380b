//! Streaming exec.

use super::mux::{Event, StreamHandle};
use super::{Client, ClientError};
use std::time::{Duration, Instant};
use voidbox_guest_agent::protocol::{
    Channel, ExecRequest, ExitStatus, FrameKind, Message, PtySize, MAX_DATA_CHUNK,
};

/// A running exec. Drive it with [`ExecHandle::wait_with`].
pub struct ExecHandle {
    h: StreamHandle,
    /// Guest pid of the process.
    pub pid: u32,
    stdin_open: bool,
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
            Event::Msg(Message::Started { pid }) => Ok(ExecHandle { h, pid, stdin_open }),
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
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = std::thread::scope(|s| -> Result<ExitStatus, ClientError> {
            if h.stdin_open {
                let (w, data) = (&h.h, stdin);
                // Stdin goes on its own thread so a process that writes before it reads cannot deadlock.
                s.spawn(move || {
                    write_stdin(w, data).and_then(|_| {
                        w.send_msg(&Message::Eof {
                            channel: Channel::Stdin,
                        })
                    })
                });
            }
            let ExecHandle { h: ref hh, .. } = h;
            let r = wait_events(
                hh,
                &mut |d| out.extend_from_slice(d),
                &mut |d| err.extend_from_slice(d),
                timeout,
            );
            // The process may exit without reading all of stdin: unblock the writer.
            hh.inbox.stdin.close();
            r
        })?;
        h.stdin_open = false;
        Ok(ExecOutput {
            stdout: out,
            stderr: err,
            status,
        })
    }
}

fn write_stdin(h: &StreamHandle, mut data: &[u8]) -> Result<(), ClientError> {
    while !data.is_empty() {
        let n = h
            .inbox
            .stdin
            .take(data.len().min(MAX_DATA_CHUNK))
            .ok_or(ClientError::Closed("stdin closed".into()))?;
        h.send_data(FrameKind::Stdin, data[..n].to_vec())?;
        data = &data[n..];
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
    /// Sends bytes to the process's stdin (blocks while the guest has no room).
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        if !self.stdin_open {
            return Err(ClientError::Protocol(
                "this exec has no open stdin (set ExecRequest::stdin)".into(),
            ));
        }
        write_stdin(&self.h, data)
    }

    /// Closes the process's stdin.
    pub fn close_stdin(&mut self) -> Result<(), ClientError> {
        if std::mem::take(&mut self.stdin_open) {
            self.h.send_msg(&Message::Eof {
                channel: Channel::Stdin,
            })?;
        }
        Ok(())
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
    /// `timeout`, the exec is killed when it passes.
    pub fn wait_with(
        mut self,
        mut on_stdout: impl FnMut(&[u8]),
        mut on_stderr: impl FnMut(&[u8]),
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, ClientError> {
        self.close_stdin()?;
        wait_events(&self.h, &mut on_stdout, &mut on_stderr, timeout)
    }

    /// Like [`ExecHandle::wait_with`] but keeps stdin open (write it from another thread
    /// through a shared reference before calling this).
    pub fn wait_keep_stdin(
        &self,
        mut on_stdout: impl FnMut(&[u8]),
        mut on_stderr: impl FnMut(&[u8]),
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, ClientError> {
        wait_events(&self.h, &mut on_stdout, &mut on_stderr, timeout)
    }
}
