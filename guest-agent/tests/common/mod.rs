//! A minimal raw-frame client for the agent's own tests (the real client is
//! `voidbox::client` in the root package).

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;
use voidbox_guest_agent::protocol::auth::{fresh_nonce, host_proof, Secret};
use voidbox_guest_agent::protocol::{
    ExecRequest, ExitStatus, Frame, FrameKind, Message, MAX_FRAME_BODY, PROTOCOL_VERSION,
};

pub struct Raw {
    pub s: UnixStream,
}

impl Raw {
    pub fn new(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self { s }
    }

    pub fn send(&mut self, stream: u32, m: &Message) {
        Frame::data(stream, FrameKind::Message, m.to_bytes())
            .write_to(&mut self.s)
            .unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    pub fn recv(&mut self) -> Result<Frame, voidbox_guest_agent::protocol::FrameError> {
        Frame::read_from(&mut self.s, MAX_FRAME_BODY)
    }

    pub fn recv_msg(&mut self) -> Message {
        let f = self.recv().expect("a frame");
        assert_eq!(f.kind, FrameKind::Message, "expected a message frame");
        Message::from_bytes(&f.payload).unwrap()
    }

    pub fn hello(&mut self) -> String {
        match self.recv_msg() {
            Message::Hello { version, nonce } => {
                assert_eq!(version, PROTOCOL_VERSION);
                nonce
            }
            m => panic!("expected hello, got {m:?}"),
        }
    }

    /// Full handshake; panics unless it succeeds.
    pub fn auth(&mut self, secret: &Secret) {
        let nonce = self.hello();
        let cn = fresh_nonce();
        let mac = host_proof(secret, PROTOCOL_VERSION, &nonce, &cn).unwrap();
        self.send(
            0,
            &Message::Auth {
                version: PROTOCOL_VERSION,
                client_nonce: cn,
                mac,
            },
        );
        assert!(matches!(self.recv_msg(), Message::AuthOk { .. }));
    }

    /// Reads until the connection closes; returns the stream-0 error text if any.
    pub fn expect_closed(&mut self) -> Option<String> {
        let mut err = None;
        loop {
            match self.recv() {
                Ok(f) if f.stream == 0 => {
                    if let Ok(Message::Error(e)) = Message::from_bytes(&f.payload) {
                        err = Some(e.message);
                    }
                }
                Ok(_) => {}
                Err(_) => return err,
            }
        }
    }

    /// Runs a small exec on `stream` (output must fit the initial window).
    pub fn exec(
        &mut self,
        stream: u32,
        req: ExecRequest,
        stdin: Option<&[u8]>,
    ) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        self.send(
            stream,
            &Message::Exec(ExecRequest {
                stdin: stdin.is_some(),
                ..req
            }),
        );
        if let Some(d) = stdin {
            Frame::data(stream, FrameKind::Stdin, d.to_vec())
                .write_to(&mut self.s)
                .unwrap();
            self.send(
                stream,
                &Message::Eof {
                    channel: voidbox_guest_agent::protocol::Channel::Stdin,
                },
            );
        }
        self.collect(stream)
    }

    pub fn collect(&mut self, stream: u32) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let f = self.recv().expect("exec frames");
            assert_eq!(f.stream, stream);
            match f.kind {
                FrameKind::Stdout => out.extend(f.payload),
                FrameKind::Stderr => err.extend(f.payload),
                FrameKind::Message => match Message::from_bytes(&f.payload).unwrap() {
                    Message::Exited(st) => return (out, err, st),
                    Message::Error(e) => panic!("exec failed: {}", e.message),
                    _ => {}
                },
                k => panic!("unexpected {k:?}"),
            }
        }
    }
}

pub fn argv(a: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: a.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

impl Raw {
    /// Gets `path` on `stream` (small results only: no credit is returned).
    /// Ok(data) after `Done`, Err(code, message) on an error reply.
    pub fn get(
        &mut self,
        stream: u32,
        path: &str,
    ) -> Result<Vec<u8>, (voidbox_guest_agent::protocol::ErrorCode, String)> {
        self.send(stream, &Message::Get { path: path.into() });
        let mut data = Vec::new();
        loop {
            let f = self.recv().expect("get frames");
            assert_eq!(f.stream, stream);
            match f.kind {
                FrameKind::FileData => data.extend(f.payload),
                FrameKind::Message => match Message::from_bytes(&f.payload).unwrap() {
                    Message::Done => return Ok(data),
                    Message::Error(e) => return Err((e.code, e.message)),
                    _ => {}
                },
                k => panic!("unexpected {k:?}"),
            }
        }
    }
}

/// An authenticated connection to a fresh in-process service built from
/// `data` (its cgroup root is the temp dir: only requests refused before an
/// exec starts, and file transfers, work).
pub fn connect_in_process(data: &voidbox_guest_agent::BootData, secret: &Secret) -> Raw {
    use voidbox_guest_agent::service::{Service, ServiceConfig};
    let config =
        ServiceConfig::from_boot_data(data, std::env::temp_dir(), std::sync::Arc::new(|| {}))
            .unwrap();
    let service = Service::new(config);
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::spawn(move || service.serve(Box::new(a)));
    let mut r = Raw::new(b);
    r.auth(secret);
    r
}

impl Raw {
    /// Sends a request on `stream` and returns the first message reply.
    pub fn request(&mut self, stream: u32, m: &Message) -> Message {
        self.send(stream, m);
        loop {
            let f = self.recv().expect("a reply");
            if f.stream == stream && f.kind == FrameKind::Message {
                return Message::from_bytes(&f.payload).unwrap();
            }
        }
    }
}
