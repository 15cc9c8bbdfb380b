//! The host client against a hostile guest agent: a scripted in-memory [`Transport`] plays
//! the agent. It completes the real handshake (the fuzzer cannot forge the HMAC proof, so
//! the script computes it), then, once the host sent its request, hands the host the fuzz
//! bytes and ends the stream. Whatever those bytes hold, the request returns (an error at
//! the latest when the stream ends), nothing panics, and the host never reports more
//! output than the agent sent.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use voidbox_guest_agent::protocol::auth::{guest_proof, Secret};
use voidbox_guest_agent::protocol::{Frame, FrameKind, Message, PROTOCOL_VERSION};
use voidbox_guest_agent::service::Transport;

use crate::client::{Client, ExecRequest};

/// The per-VM secret both sides of the fuzzed connection use (hex of 32 bytes of 7).
pub const AGENT_SECRET: [u8; 32] = [7; 32];
/// How long the scripted agent waits for a quiet host before it hangs up.
const HANG_UP_AFTER: Duration = Duration::from_millis(2);
/// The nonce of the scripted agent's hello.
const GUEST_NONCE: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

#[derive(Default)]
struct Script {
    /// Bytes the host may read now.
    to_host: VecDeque<u8>,
    /// Released once the host sends its first request (stream 1).
    payload: Vec<u8>,
    /// Nothing more will come once `to_host` is drained.
    end: bool,
    /// Bytes the host wrote, not yet a whole frame.
    from_host: Vec<u8>,
    /// The host shut the connection down.
    shut: bool,
    /// Whether the script answers the handshake (false: the input is the whole stream).
    answer: bool,
}

/// One handle of the scripted connection (clones share it).
#[derive(Clone)]
struct Scripted(Arc<(Mutex<Script>, Condvar)>);

impl Scripted {
    fn on_frame(s: &mut Script, f: Frame) {
        if !s.answer {
            return;
        }
        match (f.stream, Message::from_bytes(&f.payload)) {
            (0, Ok(Message::Auth { client_nonce, .. })) => {
                let secret = Secret::new(AGENT_SECRET.to_vec()).expect("a valid secret");
                let mac = guest_proof(&secret, PROTOCOL_VERSION, GUEST_NONCE, &client_nonce)
                    .unwrap_or_default();
                let ok = Frame::data(0, FrameKind::Message, Message::AuthOk { mac }.to_bytes());
                s.to_host.extend(ok.encode());
            }
            (0, _) => s.end = true,
            _ => {
                let payload = std::mem::take(&mut s.payload);
                s.to_host.extend(payload);
                s.end = true;
            }
        }
    }
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (lock, cv) = &*self.0;
        let mut s = lock.lock().expect("script lock");
        loop {
            if !s.to_host.is_empty() {
                let n = buf.len().min(s.to_host.len());
                for (b, v) in buf.iter_mut().zip(s.to_host.drain(..n)) {
                    *b = v;
                }
                return Ok(n);
            }
            if s.shut || (s.end && !s.answer) {
                return Ok(0);
            }
            if s.end {
                // The agent has said everything: it hangs up once the host, which may
                // still be sending (EOF, credit), has been quiet for a moment.
                let (next, waited) = cv.wait_timeout(s, HANG_UP_AFTER).expect("script lock");
                s = next;
                if waited.timed_out() && s.to_host.is_empty() {
                    return Ok(0);
                }
                continue;
            }
            s = cv.wait(s).expect("script lock");
        }
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (lock, cv) = &*self.0;
        let mut s = lock.lock().expect("script lock");
        s.from_host.extend_from_slice(buf);
        while let Ok(Some((f, used))) = Frame::decode(&s.from_host, 1 << 21) {
            s.from_host.drain(..used);
            Self::on_frame(&mut s, f);
        }
        cv.notify_all();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Scripted {
    fn try_clone_box(&self) -> io::Result<Box<dyn Transport>> {
        Ok(Box::new(self.clone()))
    }
    fn shutdown(&self) {
        let (lock, cv) = &*self.0;
        let mut s = lock.lock().expect("script lock");
        s.to_host.clear();
        s.shut = true;
        cv.notify_all();
    }
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// First byte: what the host does (0 ping, 1 stat, 2 exec, 3 get, 4 nothing: the rest is
/// the agent's whole stream, handshake included); the rest: the agent's bytes after the
/// handshake (stream 1 is the host's request).
pub fn agent_stream(data: &[u8]) {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let mut script = Script::default();
    if op % 5 == 4 {
        script.to_host.extend(rest);
        script.end = true;
    } else {
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            nonce: GUEST_NONCE.into(),
        };
        script
            .to_host
            .extend(Frame::data(0, FrameKind::Message, hello.to_bytes()).encode());
        script.payload = rest.to_vec();
        script.answer = true;
    }
    let t = Scripted(Arc::new((Mutex::new(script), Condvar::new())));
    let secret = Secret::new(AGENT_SECRET.to_vec()).expect("a valid secret");
    let Ok(client) = Client::over(Box::new(t), &secret, Duration::from_secs(5)) else {
        return;
    };
    assert!(
        op % 5 != 4,
        "a scripted stream without the proof authenticated"
    );
    match op % 5 {
        0 => drop(client.ping(Duration::from_secs(30))),
        1 => drop(client.stat("/work")),
        2 => {
            let req = ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            };
            if let Ok(out) = client.exec_collect(req, b"", None) {
                assert!(out.stdout.len() + out.stderr.len() <= rest.len());
            }
        }
        _ => {
            let mut out = Vec::new();
            if client.get("/work/out", &mut out).is_ok() {
                assert!(out.len() <= rest.len());
            }
        }
    }
}
