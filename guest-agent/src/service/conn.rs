//! One authenticated connection: a reader that demultiplexes frames to
//! streams, one worker thread per long request, and a shared frame writer.

use super::cgroup::Cgroup;
use super::{exec, files, ServiceConfig, ServiceError, Transport};
use crate::protocol::flow::{RecvQueue, SendWindow};
use crate::protocol::{Channel, ErrorCode, Frame, FrameError, FrameKind, Message, MAX_FRAME_BODY};
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a shutdown waits for the host to close the connection before the reset, so the
/// acknowledgement leaves the guest first (a reset drops what is still queued in the guest).
const SHUTDOWN_LINGER: Duration = Duration::from_secs(2);

/// Most streams open at once on one connection.
pub const MAX_STREAMS: usize = 1024;

/// Handles a worker uses to control a running exec.
pub(super) struct ExecControl {
    pub pid: i32,
    pub pidfd: Arc<OwnedFd>,
    pub cgroup: Arc<Cgroup>,
    pub pty_master: Option<Arc<OwnedFd>>,
}

/// Per-stream state shared by the reader and the stream's worker.
pub(super) struct StreamState {
    pub id: u32,
    pub stdout: SendWindow,
    pub stderr: SendWindow,
    pub file_out: SendWindow,
    /// Inbound data (stdin of an exec or the bytes of a put), if any.
    pub inbound: Option<(FrameKind, Arc<RecvQueue>)>,
    pub exec: Mutex<Option<ExecControl>>,
}

impl StreamState {
    fn new(id: u32, inbound: Option<FrameKind>) -> Self {
        Self {
            id,
            stdout: SendWindow::default(),
            stderr: SendWindow::default(),
            file_out: SendWindow::default(),
            inbound: inbound.map(|k| (k, Arc::new(RecvQueue::default()))),
            exec: Mutex::new(None),
        }
    }

    /// The outbound window of a channel.
    pub fn window(&self, ch: Channel) -> Option<&SendWindow> {
        match ch {
            Channel::Stdout => Some(&self.stdout),
            Channel::Stderr => Some(&self.stderr),
            Channel::File => Some(&self.file_out),
            Channel::Stdin => None,
        }
    }

    fn close(&self) {
        self.stdout.close();
        self.stderr.close();
        self.file_out.close();
        if let Some((_, q)) = &self.inbound {
            q.close();
        }
        if let Some(e) = self.exec.lock().expect("exec lock").as_ref() {
            e.cgroup.kill();
        }
    }
}

/// A live connection.
pub(super) struct Connection {
    pub config: Arc<ServiceConfig>,
    writer: Mutex<Box<dyn Transport>>,
    /// A separate handle so a shutdown never waits behind a blocked writer.
    killer: Mutex<Box<dyn Transport>>,
    streams: Mutex<HashMap<u32, Arc<StreamState>>>,
    streams_cv: Condvar,
    dead: AtomicBool,
}

impl Connection {
    /// Serves the connection until EOF or a protocol violation, then waits
    /// for its streams to end (they are killed if the peer is gone).
    pub fn run(
        config: Arc<ServiceConfig>,
        transport: Box<dyn Transport>,
    ) -> Result<(), ServiceError> {
        let mut reader = transport.try_clone_box()?;
        let killer = Mutex::new(transport.try_clone_box()?);
        let conn = Arc::new(Connection {
            config,
            writer: Mutex::new(transport),
            killer,
            streams: Mutex::new(HashMap::new()),
            streams_cv: Condvar::new(),
            dead: AtomicBool::new(false),
        });
        let result = loop {
            let frame = match Frame::read_from(reader.as_mut(), MAX_FRAME_BODY) {
                Ok(f) => f,
                Err(FrameError::Closed) => break Ok(()),
                Err(FrameError::Io(e)) if conn.dead.load(Ordering::SeqCst) => {
                    break Err(ServiceError::Io(e))
                }
                Err(e) => break Err(ServiceError::Protocol(e.to_string())),
            };
            if let Err(e) = conn.dispatch(frame) {
                break Err(e);
            }
        };
        match &result {
            // Half-close: no more requests or input, but running streams may finish
            // and their output still flows.
            Ok(()) => conn.end_inputs(),
            Err(e) => {
                tracing::warn!("closing connection: {e}");
                let _ = conn.send_msg(0, &Message::error(ErrorCode::Protocol, e.to_string()));
                conn.fail();
            }
        }
        conn.wait_streams();
        conn.killer.lock().expect("killer lock").shutdown();
        result
    }

    /// Waits (at most [`SHUTDOWN_LINGER`]) for the host to close the connection, discarding
    /// anything it still sends. Runs on the reader thread, so nobody else reads meanwhile.
    fn linger_until_peer_closes(&self) {
        let Ok(mut reader) = self.writer.lock().expect("writer lock").try_clone_box() else {
            return;
        };
        if reader.set_read_timeout(Some(SHUTDOWN_LINGER)).is_err() {
            return;
        }
        let deadline = Instant::now() + SHUTDOWN_LINGER;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn dispatch(self: &Arc<Self>, frame: Frame) -> Result<(), ServiceError> {
        let proto = |s: String| Err(ServiceError::Protocol(s));
        if frame.stream == 0 {
            return proto(format!(
                "unexpected {:?} frame on stream 0 after the handshake",
                frame.kind
            ));
        }
        let existing = self
            .streams
            .lock()
            .expect("streams lock")
            .get(&frame.stream)
            .cloned();
        match frame.kind {
            FrameKind::Message => {
                let msg = match Message::from_bytes(&frame.payload) {
                    Ok(m) => m,
                    Err(e) => {
                        return proto(format!(
                            "undecodable message on stream {}: {e}",
                            frame.stream
                        ))
                    }
                };
                match existing {
                    Some(s) => self.stream_message(&s, msg),
                    None => self.new_request(frame.stream, msg),
                }
            }
            FrameKind::Stdin | FrameKind::FileData => {
                let Some(s) = existing else {
                    // The stream just ended (e.g. the process exited while stdin was in flight).
                    return Ok(());
                };
                match &s.inbound {
                    Some((k, q)) if *k == frame.kind => q
                        .push(frame.payload)
                        .map_err(|e| ServiceError::Protocol(format!("stream {}: {e}", s.id))),
                    _ => proto(format!(
                        "stream {} does not accept {:?} data",
                        s.id, frame.kind
                    )),
                }
            }
            FrameKind::Stdout | FrameKind::Stderr => {
                proto(format!("the host may not send {:?} data", frame.kind))
            }
        }
    }

    fn stream_message(
        self: &Arc<Self>,
        s: &Arc<StreamState>,
        msg: Message,
    ) -> Result<(), ServiceError> {
        match msg {
            Message::Credit { channel, bytes } => match s.window(channel) {
                Some(w) => w.grant(bytes as u64),
                None => {
                    return Err(ServiceError::Protocol(format!(
                        "credit for inbound channel {channel:?}"
                    )))
                }
            },
            Message::Eof {
                channel: Channel::Stdin | Channel::File,
            } => {
                if let Some((_, q)) = &s.inbound {
                    q.eof();
                }
            }
            Message::Signal { signal } => exec::signal(s, signal),
            Message::Kill => {
                exec::kill(s);
                // On a get, the host gave up (e.g. the output passed its cap):
                // stop sending instead of waiting for credit until the end.
                s.file_out.close();
            }
            Message::Resize(size) => exec::resize(s, size),
            other => {
                let _ = self.send_msg(
                    s.id,
                    &Message::error(
                        ErrorCode::BadRequest,
                        format!("stream {} is busy; cannot handle {other:?}", s.id),
                    ),
                );
            }
        }
        Ok(())
    }

    fn new_request(self: &Arc<Self>, id: u32, msg: Message) -> Result<(), ServiceError> {
        match msg {
            Message::Ping => {
                let _ = self.send_msg(id, &Message::Pong);
            }
            Message::Stat { path } => {
                let reply = files::stat(&self.config, &path);
                let _ = self.send_msg(id, &reply);
            }
            Message::List { path } => {
                let reply = files::list(&self.config, &path);
                let _ = self.send_msg(id, &reply);
            }
            Message::Shutdown => {
                tracing::info!("shutdown requested");
                let _ = self.send_msg(id, &Message::Done);
                for s in self.streams.lock().expect("streams lock").values() {
                    s.close();
                }
                self.linger_until_peer_closes();
                (self.config.on_shutdown)();
            }
            Message::Exec(req) => {
                let inbound = req.stdin.then_some(FrameKind::Stdin);
                if let Some(s) = self.open_stream(id, inbound) {
                    let conn = self.clone();
                    self.spawn_worker(s, move |s| exec::run(&conn, &s, req));
                }
            }
            Message::Put(req) => {
                if let Some(s) = self.open_stream(id, Some(FrameKind::FileData)) {
                    let conn = self.clone();
                    self.spawn_worker(s, move |s| files::put(&conn, &s, req));
                }
            }
            Message::Get { path } => {
                if let Some(s) = self.open_stream(id, None) {
                    let conn = self.clone();
                    self.spawn_worker(s, move |s| files::get(&conn, &s, &path));
                }
            }
            // Credits, Eofs and signals for a stream that already ended race harmlessly.
            Message::Credit { .. }
            | Message::Eof { .. }
            | Message::Signal { .. }
            | Message::Kill
            | Message::Resize(_) => {}
            other => {
                return Err(ServiceError::Protocol(format!(
                    "unexpected message {other:?} on stream {id}"
                )));
            }
        }
        Ok(())
    }

    fn open_stream(&self, id: u32, inbound: Option<FrameKind>) -> Option<Arc<StreamState>> {
        let mut streams = self.streams.lock().expect("streams lock");
        if streams.len() >= MAX_STREAMS {
            drop(streams);
            let _ = self.send_msg(
                id,
                &Message::error(
                    ErrorCode::BadRequest,
                    format!("too many open streams (limit {MAX_STREAMS})"),
                ),
            );
            return None;
        }
        let s = Arc::new(StreamState::new(id, inbound));
        streams.insert(id, s.clone());
        Some(s)
    }

    fn spawn_worker(
        self: &Arc<Self>,
        s: Arc<StreamState>,
        f: impl FnOnce(Arc<StreamState>) + Send + 'static,
    ) {
        let conn = self.clone();
        let id = s.id;
        let spawned = std::thread::Builder::new()
            .name(format!("stream-{id}"))
            .spawn(move || {
                f(s.clone());
                s.close_inbound();
                conn.finish(id);
            });
        if let Err(e) = spawned {
            self.finish(id);
            let _ = self.send_msg(
                id,
                &Message::error(ErrorCode::Failed, format!("cannot start a thread: {e}")),
            );
        }
    }

    fn finish(&self, id: u32) {
        self.streams.lock().expect("streams lock").remove(&id);
        self.streams_cv.notify_all();
    }

    fn wait_streams(&self) {
        let mut streams = self.streams.lock().expect("streams lock");
        while !streams.is_empty() {
            streams = self.streams_cv.wait(streams).expect("streams lock");
        }
    }

    fn end_inputs(&self) {
        for s in self.streams.lock().expect("streams lock").values() {
            if let Some((_, q)) = &s.inbound {
                q.eof();
            }
        }
    }

    /// Marks the connection dead and unblocks and kills everything on it.
    pub fn fail(&self) {
        if self.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        for s in self.streams.lock().expect("streams lock").values() {
            s.close();
        }
        self.killer.lock().expect("killer lock").shutdown();
    }

    /// Sends a control message.
    pub fn send_msg(&self, stream: u32, msg: &Message) -> io::Result<()> {
        self.send(Frame::data(stream, FrameKind::Message, msg.to_bytes()))
    }

    /// Sends a frame; a failed write kills the connection.
    pub fn send(&self, frame: Frame) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection is closed",
            ));
        }
        let r = frame.write_to(&mut **self.writer.lock().expect("writer lock"));
        if r.is_err() {
            self.fail();
        }
        r
    }
}

impl StreamState {
    fn close_inbound(&self) {
        if let Some((_, q)) = &self.inbound {
            q.close();
        }
    }
}
