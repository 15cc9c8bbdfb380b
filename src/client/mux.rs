//! The client's connection: a reader thread that demultiplexes frames into
//! per-stream inboxes (credit-checked, byte-bounded), and a shared frame writer.
//!
//! Memory bound: the reader thread never waits for the host to consume
//! events, so everything a stream may queue is bounded. Data is bounded by
//! the credit the host granted (3 channels × `INITIAL_WINDOW` = 768 KiB);
//! control messages by [`MAX_QUEUED_MESSAGE_BYTES`] (1 MiB, payload bytes)
//! and [`MAX_QUEUED_MESSAGES`]; one message frame by [`MAX_MESSAGE_FRAME`].
//! A guest that exceeds any of them breaks the protocol and the connection is
//! closed. So one open stream holds at most about 1.8 MiB while the host is
//! not reading it (for example during a put), plus one frame being read.

use super::ClientError;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use voidbox_guest_agent::protocol::flow::SendWindow;
use voidbox_guest_agent::protocol::{
    Channel, Frame, FrameError, FrameKind, Message, INITIAL_WINDOW, MAX_FRAME_BODY,
};
use voidbox_guest_agent::service::Transport;

/// Most control messages queued on one stream before the guest is considered hostile.
pub(crate) const MAX_QUEUED_MESSAGES: usize = 4096;
/// Most payload bytes of control messages queued on one stream.
pub(crate) const MAX_QUEUED_MESSAGE_BYTES: usize = 1 << 20;
/// Largest control message frame accepted from the guest (replies are small).
pub(crate) const MAX_MESSAGE_FRAME: usize = 64 << 10;

/// One event of a stream, in wire order.
#[derive(Debug)]
pub(crate) enum Event {
    Data(Channel, Vec<u8>),
    Msg(Message),
}

#[derive(Default)]
struct InboxState {
    /// Events with the payload bytes a message counts for (0 for data).
    events: VecDeque<(Event, usize)>,
    /// Credit the guest may still use, per outbound channel (stdout, stderr, file).
    outstanding: [u64; 3],
    unacked: [u64; 3],
    messages: usize,
    message_bytes: usize,
    closed: Option<String>,
}

/// Events of one stream plus the windows for what the host sends on it.
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    cv: Condvar,
    pub stdin: SendWindow,
    pub file: SendWindow,
}

fn slot(ch: Channel) -> Option<usize> {
    match ch {
        Channel::Stdout => Some(0),
        Channel::Stderr => Some(1),
        Channel::File => Some(2),
        Channel::Stdin => None,
    }
}

impl Inbox {
    fn new() -> Self {
        let w = INITIAL_WINDOW as u64;
        Self {
            state: Mutex::new(InboxState {
                outstanding: [w; 3],
                ..Default::default()
            }),
            cv: Condvar::new(),
            stdin: SendWindow::default(),
            file: SendWindow::default(),
        }
    }

    /// Queues an event; `wire_len` is the frame payload size of a message.
    fn push(&self, ev: Event, wire_len: usize) -> Result<(), String> {
        let mut s = self.state.lock().expect("inbox lock");
        let mut cost = 0;
        match &ev {
            Event::Data(ch, d) => {
                let i = slot(*ch).ok_or("guest sent stdin data")?;
                if d.len() as u64 > s.outstanding[i] {
                    return Err(format!(
                        "guest sent {} bytes on {ch:?} with {} bytes of credit",
                        d.len(),
                        s.outstanding[i]
                    ));
                }
                s.outstanding[i] -= d.len() as u64;
            }
            Event::Msg(_) => {
                s.messages += 1;
                s.message_bytes += wire_len;
                cost = wire_len;
                if s.messages > MAX_QUEUED_MESSAGES || s.message_bytes > MAX_QUEUED_MESSAGE_BYTES {
                    return Err(format!(
                        "guest flooded a stream with control messages ({} queued, {} bytes; the host allows {MAX_QUEUED_MESSAGES} and {MAX_QUEUED_MESSAGE_BYTES} bytes)",
                        s.messages, s.message_bytes
                    ));
                }
            }
        }
        s.events.push_back((ev, cost));
        self.cv.notify_all();
        Ok(())
    }

    fn close(&self, why: &str) {
        let mut s = self.state.lock().expect("inbox lock");
        if s.closed.is_none() {
            s.closed = Some(why.to_string());
        }
        self.stdin.close();
        self.file.close();
        self.cv.notify_all();
    }

    /// Next event; data events come with the credit to send back (batched).
    pub fn next(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Event, Option<(Channel, u32)>), ClientError> {
        let mut s = self.state.lock().expect("inbox lock");
        loop {
            if let Some((ev, cost)) = s.events.pop_front() {
                let mut credit = None;
                match &ev {
                    Event::Data(ch, d) => {
                        let i = slot(*ch).expect("checked on push");
                        s.unacked[i] += d.len() as u64;
                        let pending_same = s
                            .events
                            .iter()
                            .any(|(e, _)| matches!(e, Event::Data(c, _) if c == ch));
                        if s.unacked[i] >= INITIAL_WINDOW as u64 / 4 || !pending_same {
                            let n = s.unacked[i];
                            s.unacked[i] = 0;
                            s.outstanding[i] += n;
                            if n > 0 {
                                credit = Some((*ch, n as u32));
                            }
                        }
                    }
                    Event::Msg(_) => {
                        s.messages -= 1;
                        s.message_bytes -= cost;
                    }
                }
                return Ok((ev, credit));
            }
            if let Some(why) = &s.closed {
                return Err(ClientError::Closed(why.clone()));
            }
            match deadline {
                None => s = self.cv.wait(s).expect("inbox lock"),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(ClientError::Timeout {
                            what: "a reply from the guest".into(),
                            after: Duration::ZERO,
                        });
                    }
                    s = self.cv.wait_timeout(s, d - now).expect("inbox lock").0;
                }
            }
        }
    }
}

/// The shared connection state.
pub(crate) struct Mux {
    writer: Mutex<Box<dyn Transport>>,
    killer: Mutex<Box<dyn Transport>>,
    inboxes: Mutex<HashMap<u32, Arc<Inbox>>>,
    dead: Mutex<Option<String>>,
    next_id: Mutex<u32>,
}

impl Mux {
    /// Starts the reader thread on an authenticated transport.
    pub fn start(transport: Box<dyn Transport>) -> Result<Arc<Self>, ClientError> {
        let reader = transport
            .try_clone_box()
            .map_err(|e| ClientError::io("cloning the connection", e))?;
        let killer = transport
            .try_clone_box()
            .map_err(|e| ClientError::io("cloning the connection", e))?;
        let mux = Arc::new(Mux {
            writer: Mutex::new(transport),
            killer: Mutex::new(killer),
            inboxes: Mutex::new(HashMap::new()),
            dead: Mutex::new(None),
            next_id: Mutex::new(1),
        });
        let m = mux.clone();
        std::thread::Builder::new()
            .name("voidbox-agent-reader".into())
            .spawn(move || m.read_loop(reader))
            .map_err(|e| ClientError::io("starting the reader thread", e))?;
        Ok(mux)
    }

    fn read_loop(&self, mut r: Box<dyn Transport>) {
        let why = loop {
            let f = match Frame::read_from(r.as_mut(), MAX_FRAME_BODY) {
                Ok(f) => f,
                Err(FrameError::Closed) => break "the guest closed the connection".to_string(),
                Err(e) => break format!("reading from the guest: {e}"),
            };
            if let Err(e) = self.dispatch(f) {
                tracing::warn!("guest protocol violation: {e}");
                break format!("protocol violation: {e}");
            }
        };
        self.fail(&why);
    }

    fn dispatch(&self, f: Frame) -> Result<(), String> {
        if f.stream == 0 {
            let m = Message::from_bytes(&f.payload)
                .map_err(|e| format!("bad message on stream 0: {e}"))?;
            return Err(format!("guest closed the connection: {m:?}"));
        }
        let Some(inbox) = self
            .inboxes
            .lock()
            .expect("inboxes lock")
            .get(&f.stream)
            .cloned()
        else {
            return Ok(()); // a stream we already gave up on
        };
        let wire_len = f.payload.len();
        let ev = match f.kind {
            FrameKind::Message => {
                if wire_len > MAX_MESSAGE_FRAME {
                    return Err(format!(
                        "a {wire_len}-byte control message (the host accepts up to {MAX_MESSAGE_FRAME})"
                    ));
                }
                let m = Message::from_bytes(&f.payload)
                    .map_err(|e| format!("undecodable message: {e}"))?;
                match m {
                    Message::Credit {
                        channel: Channel::Stdin,
                        bytes,
                    } => {
                        inbox.stdin.grant(bytes as u64);
                        return Ok(());
                    }
                    Message::Credit {
                        channel: Channel::File,
                        bytes,
                    } => {
                        inbox.file.grant(bytes as u64);
                        return Ok(());
                    }
                    m => Event::Msg(m),
                }
            }
            FrameKind::Stdout => Event::Data(Channel::Stdout, f.payload),
            FrameKind::Stderr => Event::Data(Channel::Stderr, f.payload),
            FrameKind::FileData => Event::Data(Channel::File, f.payload),
            FrameKind::Stdin => return Err("guest sent stdin data".into()),
        };
        inbox.push(ev, wire_len)
    }

    fn fail(&self, why: &str) {
        // The first reason is the cause; later ones (a write failing because
        // of it) would hide it.
        self.dead
            .lock()
            .expect("dead lock")
            .get_or_insert_with(|| why.to_string());
        for i in self.inboxes.lock().expect("inboxes lock").values() {
            i.close(why);
        }
        self.killer.lock().expect("killer lock").shutdown();
    }

    /// Why the connection ended, if it did.
    pub fn dead_reason(&self) -> Option<String> {
        self.dead.lock().expect("dead lock").clone()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.fail("closed by the host");
    }

    /// Closes the connection with `why` unless the returned guard is dropped
    /// before `deadline`. This ends waits nothing else can end, such as a
    /// write blocked because the guest stopped reading.
    pub fn watchdog(self: &Arc<Self>, deadline: Instant, why: String) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mux = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("voidbox-transfer-watchdog".into())
            .spawn(move || {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(left) {
                    if let Some(m) = mux.upgrade() {
                        tracing::warn!("{why}");
                        m.fail(&why);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a transfer watchdog: {e}");
        }
        Watchdog { _stop: tx }
    }

    /// Opens a new stream and sends its request.
    pub fn open(self: &Arc<Self>, req: &Message) -> Result<StreamHandle, ClientError> {
        if let Some(why) = self.dead.lock().expect("dead lock").clone() {
            return Err(ClientError::Closed(why));
        }
        let id = {
            let mut inboxes = self.inboxes.lock().expect("inboxes lock");
            let mut next = self.next_id.lock().expect("id lock");
            while *next == 0 || inboxes.contains_key(&*next) {
                *next = next.wrapping_add(1);
            }
            let id = *next;
            *next = next.wrapping_add(1);
            inboxes.insert(id, Arc::new(Inbox::new()));
            id
        };
        let inbox = self.inboxes.lock().expect("inboxes lock")[&id].clone();
        let h = StreamHandle {
            mux: self.clone(),
            id,
            inbox,
        };
        h.send_msg(req)?;
        Ok(h)
    }

    fn send(&self, f: Frame) -> Result<(), ClientError> {
        if let Some(why) = self.dead.lock().expect("dead lock").clone() {
            return Err(ClientError::Closed(why));
        }
        f.write_to(&mut **self.writer.lock().expect("writer lock"))
            .map_err(|e| {
                self.fail(&format!("write failed: {e}"));
                ClientError::Closed(format!("write failed: {e}"))
            })
    }
}

/// Disarms a [`Mux::watchdog`] when dropped.
pub(crate) struct Watchdog {
    _stop: std::sync::mpsc::Sender<()>,
}

/// One open stream; removed from the connection on drop.
pub(crate) struct StreamHandle {
    mux: Arc<Mux>,
    pub id: u32,
    pub inbox: Arc<Inbox>,
}

impl StreamHandle {
    pub fn send_msg(&self, m: &Message) -> Result<(), ClientError> {
        self.mux
            .send(Frame::data(self.id, FrameKind::Message, m.to_bytes()))
    }

    pub fn send_data(&self, kind: FrameKind, d: Vec<u8>) -> Result<(), ClientError> {
        self.mux.send(Frame::data(self.id, kind, d))
    }

    /// Next event, returning credit for consumed data automatically.
    pub fn next(&self, deadline: Option<Instant>) -> Result<Event, ClientError> {
        let (ev, credit) = self.inbox.next(deadline)?;
        if let Some((channel, bytes)) = credit {
            self.send_msg(&Message::Credit { channel, bytes })?;
        }
        Ok(ev)
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.mux
            .inboxes
            .lock()
            .expect("inboxes lock")
            .remove(&self.id);
    }
}
