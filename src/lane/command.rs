//! A command running inside L2 ([`LaneProcess`]) and the route the lane's reader thread
//! delivers its events through.
//!
//! Host memory per command is bounded whatever L2 sends: output queued by the reader thread
//! but not yet pumped by the owner is limited to [`MAX_QUEUED`] bytes (beyond that it is
//! dropped and counted rather than blocking the channel every other command shares), and the
//! output kept is limited to [`MAX_CAPTURE`] bytes per stream. Either loss leaves a note in
//! the stream it hit.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::LaneError;
use super::host::Shared;
use super::process::Output;
use super::protocol::{self, ExitInfo};

/// Output kept per stream of one command; more is dropped, with a note in the stream.
pub const MAX_CAPTURE: usize = 32 << 20;
/// Output (plus a per-event overhead) queued for one command and not yet pumped by its owner.
pub const MAX_QUEUED: usize = 32 << 20;
/// What one queued event is charged beyond its payload, so empty frames are not free.
const EVENT_COST: usize = 64;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

/// What the reader thread tells one command's owner.
pub(super) enum Event {
    Output(Stream, Vec<u8>),
    Exit(ExitInfo),
    Failed(String),
    Closed,
}

/// Bytes queued for one command and bytes dropped because the queue was full.
#[derive(Debug, Default)]
pub(super) struct Budget {
    queued: AtomicUsize,
    dropped: [AtomicU64; 2],
}

impl Budget {
    fn release(&self, data: &[u8]) {
        self.queued
            .fetch_sub(data.len() + EVENT_COST, Ordering::SeqCst);
    }

    fn take_dropped(&self, stream: Stream) -> u64 {
        self.dropped[stream as usize].swap(0, Ordering::SeqCst)
    }
}

/// The reader thread's end of one command's event queue.
pub(super) struct Route {
    tx: Sender<Event>,
    budget: Arc<Budget>,
}

impl Route {
    /// A route and the receiving end for the command's [`LaneProcess`].
    pub(super) fn new() -> (Route, Receiver<Event>, Arc<Budget>) {
        let (tx, rx) = mpsc::channel();
        let budget = Arc::new(Budget::default());
        (
            Route {
                tx,
                budget: budget.clone(),
            },
            rx,
            budget,
        )
    }

    /// Queues an event without ever blocking; output past [`MAX_QUEUED`] is counted as
    /// dropped instead (the owner notes it in the stream).
    pub(super) fn deliver(&self, event: Event) {
        if let Event::Output(stream, data) = &event {
            if data.is_empty() {
                return;
            }
            let cost = data.len() + EVENT_COST;
            let before = self.budget.queued.fetch_add(cost, Ordering::SeqCst);
            if before + cost > MAX_QUEUED {
                self.budget.queued.fetch_sub(cost, Ordering::SeqCst);
                self.budget.dropped[*stream as usize]
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
                return;
            }
        }
        let _ = self.tx.send(event);
    }
}

/// One stream's kept output (at most [`MAX_CAPTURE`] bytes plus a note). Also used by the
/// local launcher.
#[derive(Debug, Default)]
pub(super) struct Captured {
    pub(super) data: Vec<u8>,
    full: bool,
}

impl Captured {
    /// Keeps `chunk` if it fits, else notes once that output was dropped.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        if self.full {
            return;
        }
        if self.data.len() + chunk.len() <= MAX_CAPTURE {
            self.data.extend_from_slice(chunk);
        } else {
            self.full = true;
            self.data.extend_from_slice(
                format!("\n[voidbox lane: output past {MAX_CAPTURE} bytes dropped]\n").as_bytes(),
            );
        }
    }

    fn note_dropped(&mut self, bytes: u64) {
        if bytes > 0 && !self.full {
            self.data.extend_from_slice(
                format!(
                    "\n[voidbox lane: {bytes} bytes dropped: the reader fell {MAX_QUEUED} bytes behind]\n"
                )
                .as_bytes(),
            );
        }
    }
}

/// A command running inside L2. Dropping it before it ends kills its process group.
pub struct LaneProcess {
    id: u32,
    argv0: String,
    rx: Receiver<Event>,
    budget: Arc<Budget>,
    shared: Arc<Shared>,
    stdout: Captured,
    stderr: Captured,
    status: Option<ExitInfo>,
}

impl std::fmt::Debug for LaneProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneProcess")
            .field("id", &self.id)
            .field("argv0", &self.argv0)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl LaneProcess {
    /// The owner's side of a command started with id `id`.
    pub(super) fn new(
        id: u32,
        argv0: String,
        rx: Receiver<Event>,
        budget: Arc<Budget>,
        shared: Arc<Shared>,
    ) -> Self {
        LaneProcess {
            id,
            argv0,
            rx,
            budget,
            shared,
            stdout: Captured::default(),
            stderr: Captured::default(),
            status: None,
        }
    }

    /// Handles one event; `Ok(false)` when none arrived within `timeout`.
    fn pump(&mut self, timeout: Duration) -> Result<bool, LaneError> {
        let ev = match self.rx.recv_timeout(timeout) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => return Ok(false),
            Err(RecvTimeoutError::Disconnected) => Event::Closed,
        };
        match ev {
            Event::Output(stream, d) => {
                self.budget.release(&d);
                let dropped = self.budget.take_dropped(stream);
                let buf = match stream {
                    Stream::Stdout => &mut self.stdout,
                    Stream::Stderr => &mut self.stderr,
                };
                buf.note_dropped(dropped);
                buf.push(&d);
            }
            Event::Exit(st) => {
                self.stdout
                    .note_dropped(self.budget.take_dropped(Stream::Stdout));
                self.stderr
                    .note_dropped(self.budget.take_dropped(Stream::Stderr));
                self.status = Some(st);
            }
            Event::Failed(msg) => {
                return Err(LaneError::SpawnFailed {
                    argv0: self.argv0.clone(),
                    msg,
                })
            }
            Event::Closed => return Err(self.shared.closed_error()),
        }
        Ok(true)
    }

    /// Waits for the end (killing the command after `timeout`) and returns its output.
    pub fn wait(mut self, timeout: Duration) -> Result<Output, LaneError> {
        let deadline = Instant::now() + timeout;
        while self.status.is_none() {
            let now = Instant::now();
            if now >= deadline {
                self.kill();
                // Give the kill a moment to land so stderr is complete.
                let grace = Instant::now() + Duration::from_secs(5);
                while self.status.is_none() && Instant::now() < grace {
                    let _ = self.pump(Duration::from_millis(200));
                }
                return Err(LaneError::Timeout {
                    argv0: self.argv0.clone(),
                    secs: timeout.as_secs(),
                    stderr: String::from_utf8_lossy(&self.stderr.data).into_owned(),
                });
            }
            self.pump(deadline - now)?;
        }
        Ok(Output {
            status: self.status.expect("checked"),
            stdout: std::mem::take(&mut self.stdout.data),
            stderr: std::mem::take(&mut self.stderr.data),
        })
    }

    /// Collects output until stdout contains `needle` (true), the command ends (false), or
    /// `timeout` passes (false).
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> Result<bool, LaneError> {
        let deadline = Instant::now() + timeout;
        loop {
            if String::from_utf8_lossy(&self.stdout.data).contains(needle) {
                return Ok(true);
            }
            let now = Instant::now();
            if self.status.is_some() || now >= deadline {
                return Ok(false);
            }
            self.pump(deadline - now)?;
        }
    }

    /// Non-blocking: the exit status if the command has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitInfo>, LaneError> {
        while self.status.is_none() && self.pump(Duration::ZERO)? {}
        Ok(self.status)
    }

    /// Output collected so far.
    pub fn stdout_so_far(&self) -> &[u8] {
        &self.stdout.data
    }

    /// Stderr collected so far.
    pub fn stderr_so_far(&self) -> &[u8] {
        &self.stderr.data
    }

    /// Sends `sig` to the command's process group.
    pub fn signal(&self, sig: i32) {
        let _ = self
            .shared
            .send(protocol::SIGNAL, self.id, &sig.to_le_bytes());
    }

    /// Kills the command's process group (SIGKILL).
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }
}

impl Drop for LaneProcess {
    fn drop(&mut self) {
        if self.status.is_none() && !self.shared.closed.load(Ordering::SeqCst) {
            self.kill();
        }
        self.shared
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn process() -> (Route, LaneProcess, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let shared = Arc::new(Shared::for_test(ours));
        let (route, rx, budget) = Route::new();
        (
            route,
            LaneProcess::new(1, "flood".into(), rx, budget, shared),
            theirs,
        )
    }

    #[test]
    fn a_flood_nobody_reads_stays_bounded_and_is_noted() {
        let (route, p, _peer) = process();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..48 {
            route.deliver(Event::Output(Stream::Stdout, chunk.clone()));
            route.deliver(Event::Output(Stream::Stderr, Vec::new()));
        }
        let queued = route.budget.queued.load(Ordering::SeqCst);
        assert!(queued <= MAX_QUEUED, "{queued} bytes queued");
        route.deliver(Event::Output(Stream::Stderr, b"err".to_vec()));
        route.deliver(Event::Exit(ExitInfo {
            code: Some(0),
            signal: None,
        }));
        let out = p.wait(Duration::from_secs(5)).unwrap();
        assert!(out.status.success());
        assert!(out.stdout.len() <= MAX_QUEUED + 200, "{}", out.stdout.len());
        let notes = out
            .stdout
            .windows(b"bytes dropped".len())
            .filter(|w| w == b"bytes dropped")
            .count();
        assert_eq!(notes, 1);
        assert_eq!(out.stderr, b"err");
    }

    #[test]
    fn output_past_the_capture_limit_is_noted_once() {
        let mut c = Captured::default();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..(MAX_CAPTURE >> 20) + 3 {
            c.push(&chunk);
        }
        assert!(c.full);
        assert!(c.data.len() < MAX_CAPTURE + 100);
        let text = String::from_utf8_lossy(&c.data[MAX_CAPTURE..]).into_owned();
        assert_eq!(text.matches("dropped").count(), 1, "{text}");
    }
}
