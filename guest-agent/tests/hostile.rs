//! Hostile peers against the agent binary in `serve` mode over a Unix socket.
//! Runs as root (CI does) with a cgroup2 mount.

mod common;

use common::{argv, Raw};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use voidbox_guest_agent::protocol::auth::{fresh_nonce, host_proof, Secret};
use voidbox_guest_agent::protocol::{
    Channel, Frame, FrameKind, Message, INITIAL_WINDOW, PROTOCOL_VERSION,
};
use voidbox_guest_agent::service::find_cgroup2_mount;
use voidbox_guest_agent::BootData;

struct Served {
    child: Child,
    sock: PathBuf,
    secret: Secret,
    dir: tempfile::TempDir,
    cgroup: PathBuf,
}

impl Served {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::generate();
        let boot = dir.path().join("boot.json");
        std::fs::write(&boot, BootData::new(&secret).to_json()).unwrap();
        let cgroup = find_cgroup2_mount()
            .expect("needs a cgroup2 mount")
            .join(format!(
                "voidbox-hostile-{}-{}",
                std::process::id(),
                fresh_nonce()[..8].to_owned()
            ));
        std::fs::create_dir(&cgroup).expect("create test cgroup (run as root)");
        let sock = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_voidbox-guest-agent"))
            .args(["serve", "--unix"])
            .arg(&sock)
            .arg("--boot-data")
            .arg(&boot)
            .arg("--cgroup-root")
            .arg(&cgroup)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !sock.exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "agent did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            sock,
            secret,
            dir,
            cgroup,
        }
    }

    fn raw(&self) -> Raw {
        Raw::new(UnixStream::connect(&self.sock).unwrap())
    }

    fn authed(&self) -> Raw {
        let mut r = self.raw();
        r.auth(&self.secret);
        r
    }

    /// The service still answers a fresh, well-behaved connection.
    fn still_serves(&self) {
        let mut r = self.authed();
        r.send(1, &Message::Ping);
        assert_eq!(r.recv_msg(), Message::Pong);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_cgroup_tree(&self.cgroup);
    }
}

/// Kills what is left in a test cgroup and removes it with its children
/// (the agent was killed before it could clean up its exec cgroups).
fn remove_cgroup_tree(p: &std::path::Path) {
    let _ = std::fs::write(p.join("cgroup.kill"), "1");
    let t = Instant::now();
    while std::fs::read_to_string(p.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

#[test]
fn handshake_attacks() {
    let s = Served::start();
    let marker = s.dir.path().join("ran");
    let touch = argv(&["touch", marker.to_str().unwrap()]);

    // A request before the handshake is refused and runs nothing.
    let mut r = s.raw();
    r.hello();
    r.send(1, &Message::Exec(touch.clone()));
    let err = r.expect_closed().expect("an error before closing");
    assert!(err.contains("before authentication"), "{err}");

    // Wrong secret.
    let mut r = s.raw();
    let nonce = r.hello();
    let cn = fresh_nonce();
    let mac = host_proof(&Secret::generate(), PROTOCOL_VERSION, &nonce, &cn).unwrap();
    r.send(
        0,
        &Message::Auth {
            version: PROTOCOL_VERSION,
            client_nonce: cn,
            mac,
        },
    );
    assert!(r.expect_closed().unwrap().contains("wrong secret"));

    // Replaying a proof made for another nonce fails too.
    let mut r = s.raw();
    r.hello();
    let cn = fresh_nonce();
    let mac = host_proof(&s.secret, PROTOCOL_VERSION, &fresh_nonce(), &cn).unwrap();
    r.send(
        0,
        &Message::Auth {
            version: PROTOCOL_VERSION,
            client_nonce: cn,
            mac,
        },
    );
    assert!(r.expect_closed().is_some());

    // An oversized frame before the handshake is refused without reading it.
    let mut r = s.raw();
    r.hello();
    r.send_raw(&(64u32 << 20).to_le_bytes()).unwrap();
    assert!(r.expect_closed().unwrap().contains("exceeds the limit"));

    // Garbage.
    let mut r = s.raw();
    r.hello();
    let _ = r.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.expect_closed().is_some());

    // Silence: the handshake does not wait forever (10 s limit); covered by
    // the timeout setting, not waited for here.
    assert!(!marker.exists(), "nothing may run before authentication");
    s.still_serves();
}

#[test]
fn frame_attacks_after_the_handshake() {
    let s = Served::start();
    // Oversized frame: closed before allocating it.
    let mut r = s.authed();
    r.send_raw(&u32::MAX.to_le_bytes()).unwrap();
    assert!(r.expect_closed().unwrap().contains("exceeds the limit"));
    // Unknown frame kind.
    let mut r = s.authed();
    let mut f = Frame::data(1, FrameKind::Stdin, vec![1]).encode();
    f[8] = 200;
    r.send_raw(&f).unwrap();
    assert!(r.expect_closed().unwrap().contains("unknown frame kind"));
    // Undecodable JSON.
    let mut r = s.authed();
    r.send_raw(&Frame::data(1, FrameKind::Message, b"{not json".to_vec()).encode())
        .unwrap();
    assert!(r.expect_closed().unwrap().contains("undecodable"));
    // Host sending stdout data.
    let mut r = s.authed();
    r.send_raw(&Frame::data(1, FrameKind::Stdout, b"x".to_vec()).encode())
        .unwrap();
    assert!(r.expect_closed().is_some());
    // Stdin beyond the granted credit: the agent never buffers it.
    let mut r = s.authed();
    r.send(
        5,
        &Message::Exec(common::argv(&["sleep", "30"]).clone_with_stdin()),
    );
    let _started = r.recv_msg();
    let big = vec![0u8; (INITIAL_WINDOW as usize) / 2];
    let mut closed = false;
    for _ in 0..8 {
        if r.send_raw(&Frame::data(5, FrameKind::Stdin, big.clone()).encode())
            .is_err()
        {
            closed = true;
            break;
        }
    }
    let err = r.expect_closed();
    assert!(
        closed || err.as_deref().is_some_and(|e| e.contains("credit")),
        "{err:?}"
    );
    s.still_serves();
}

trait WithStdin {
    fn clone_with_stdin(self) -> Self;
}
impl WithStdin for voidbox_guest_agent::protocol::ExecRequest {
    fn clone_with_stdin(mut self) -> Self {
        self.stdin = true;
        self
    }
}

#[test]
fn half_closed_streams_still_finish() {
    let s = Served::start();
    // Stdin ends (Eof) while the process keeps writing.
    let mut r = s.authed();
    let (out, _, st) = r.exec(1, argv(&["sh", "-c", "cat; echo after-eof"]), Some(b"in\n"));
    assert_eq!(out, b"in\nafter-eof\n");
    assert_eq!(st.code, Some(0));
    // The host half-closes the whole connection after its requests: replies still arrive.
    let mut r = s.authed();
    r.send(
        3,
        &Message::Exec(argv(&["sh", "-c", "sleep 0.2; echo late"])),
    );
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    let (out, _, st) = r.collect(3);
    assert_eq!((out.as_slice(), st.code), (&b"late\n"[..], Some(0)));
    // A stream id in use cannot be reused for a new request.
    let mut r = s.authed();
    r.send(9, &Message::Exec(argv(&["sleep", "1"])));
    assert!(matches!(r.recv_msg(), Message::Started { .. }));
    r.send(9, &Message::Ping);
    assert!(matches!(r.recv_msg(), Message::Error(_)));
    r.send(9, &Message::Kill);
    let _ = r.collect(9);
    // Shutdown is acknowledged and ends serve mode like a reset ends the VM.
    let mut r = s.authed();
    r.send(1, &Message::Shutdown);
    assert_eq!(r.recv_msg(), Message::Done);
    let _ = Channel::Stdin;
}

#[test]
fn a_silent_peer_is_dropped_at_the_handshake_timeout() {
    use std::sync::Arc;
    use voidbox_guest_agent::service::{Service, ServiceConfig};
    let secret = Secret::generate();
    let mut config = ServiceConfig::from_boot_data(
        &BootData::new(&secret),
        std::env::temp_dir(),
        Arc::new(|| {}),
    )
    .unwrap();
    config.handshake_timeout = Duration::from_millis(200);
    let service = Service::new(config);
    let (a, b) = UnixStream::pair().unwrap();
    let t = Instant::now();
    let server = std::thread::spawn(move || service.serve(Box::new(a)));
    let mut r = Raw::new(b);
    r.hello();
    // Say nothing: the service gives up and closes.
    assert!(r.expect_closed().unwrap().contains("reading auth frame"));
    assert!(server.join().unwrap().is_err());
    assert!(t.elapsed() < Duration::from_secs(5));
}
