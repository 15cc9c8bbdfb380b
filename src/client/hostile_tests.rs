//! The client against a hostile fake agent that speaks the real frame
//! protocol (handshake included) and then misbehaves: never answers, stalls
//! mid-stream, lies about sizes, floods control messages. Memory stays
//! bounded, errors are clear, deadlines hold. No root needed.

use super::*;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use voidbox_guest_agent::protocol::auth::{fresh_nonce, guest_proof};
use voidbox_guest_agent::protocol::{
    ErrorCode, Frame, FrameKind, Message, MAX_FRAME_BODY, PROTOCOL_VERSION,
};

/// What the fake agent did after the handshake.
struct Fake {
    client: Client,
    /// Bytes the fake agent managed to write after the handshake.
    written: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

fn send(s: &mut UnixStream, stream: u32, m: &Message) -> std::io::Result<()> {
    Frame::data(stream, FrameKind::Message, m.to_bytes()).write_to(s)
}

/// Reads frames until a request (a message on a new stream) arrives.
fn next_request(s: &mut UnixStream) -> (u32, Message) {
    loop {
        let f = Frame::read_from(s, MAX_FRAME_BODY).unwrap();
        if f.kind == FrameKind::Message {
            let m = Message::from_bytes(&f.payload).unwrap();
            if matches!(m, Message::Get { .. } | Message::Put(_) | Message::Ping) {
                return (f.stream, m);
            }
        }
    }
}

/// Starts a fake agent that authenticates honestly, then runs `script`.
fn fake(script: impl FnOnce(&mut UnixStream, &AtomicU64) + Send + 'static) -> Fake {
    let (mut g, h) = UnixStream::pair().unwrap();
    let secret = Secret::generate();
    let guest_secret = Secret::from_hex(&secret.to_hex()).unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let thread = std::thread::spawn(move || {
        let nonce = fresh_nonce();
        send(
            &mut g,
            0,
            &Message::Hello {
                version: PROTOCOL_VERSION,
                nonce: nonce.clone(),
            },
        )
        .unwrap();
        let f = Frame::read_from(&mut g, MAX_FRAME_BODY).unwrap();
        let Message::Auth { client_nonce, .. } = Message::from_bytes(&f.payload).unwrap() else {
            panic!("expected auth");
        };
        let mac = guest_proof(&guest_secret, PROTOCOL_VERSION, &nonce, &client_nonce).unwrap();
        send(&mut g, 0, &Message::AuthOk { mac }).unwrap();
        script(&mut g, &w);
    });
    let client = Client::over(Box::new(h), &secret, Duration::from_secs(5)).unwrap();
    Fake {
        client,
        written,
        thread,
    }
}

fn quick(timeout_ms: u64, stall_ms: u64) -> TransferLimits {
    TransferLimits {
        timeout: Duration::from_millis(timeout_ms),
        stall: Duration::from_millis(stall_ms),
        max_bytes: 1 << 20,
    }
}

/// Audit H2: while the host is blocked in a put (no credit), the guest floods
/// the stream with 32 KiB error messages. The count cap alone would queue
/// 4096 × 32 KiB = 128 MiB; the byte cap fails the connection after 1 MiB.
#[test]
fn message_flood_during_a_put_is_cut_off_by_bytes() {
    let f = fake(|g, written| {
        let (id, _) = next_request(g);
        let msg = Message::error(ErrorCode::Failed, "x".repeat(32 << 10));
        for _ in 0..5000 {
            if send(g, id, &msg).is_err() {
                return;
            }
            written.fetch_add(msg.to_bytes().len() as u64, Ordering::SeqCst);
        }
    });
    let data = vec![0u8; 4 << 20];
    let limits = TransferLimits {
        timeout: Duration::from_secs(120),
        stall: Duration::from_secs(120),
        max_bytes: 0,
    };
    let e = f
        .client
        .put_file_with("/x", &mut &data[..], 0o644, None, limits)
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ClientError::Closed(_)) && msg.contains("flooded"),
        "{msg}"
    );
    f.thread.join().unwrap();
    // Queued (1 MiB) + in flight in the socket buffers; far below 128 MiB.
    let written = f.written.load(Ordering::SeqCst);
    assert!(written < 16 << 20, "the guest got {written} bytes in");
}

/// One control message larger than the host accepts is a violation.
#[test]
fn oversized_control_message_is_refused() {
    let f = fake(|g, _| {
        let (id, _) = next_request(g);
        let _ = send(
            g,
            id,
            &Message::error(ErrorCode::Failed, "y".repeat(200 << 10)),
        );
        let _ = Frame::read_from(g, MAX_FRAME_BODY);
    });
    let e = f.client.ping(Duration::from_secs(30)).unwrap_err();
    assert!(e.to_string().contains("control message"), "{e}");
    f.thread.join().unwrap();
}

/// Audit D2: a guest that accepts a get and never answers.
#[test]
fn get_that_is_never_answered_times_out() {
    let f = fake(|g, _| {
        let _ = next_request(g);
        let _ = Frame::read_from(g, MAX_FRAME_BODY); // until the host gives up
    });
    let e = f
        .client
        .get_with("/out", &mut Vec::new(), quick(60_000, 300))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ClientError::Timeout { .. }) && msg.contains("stalled") && msg.contains("/out"),
        "{msg}"
    );
    f.client.close();
    f.thread.join().unwrap();
}

/// A guest that sends part of a file, then stops: the stall limit ends it,
/// and the whole-transfer deadline holds even when the guest trickles.
#[test]
fn get_that_stalls_or_trickles_mid_stream_times_out() {
    let trickle = |g: &mut UnixStream, pause: Duration| {
        let (id, _) = next_request(g);
        send(
            g,
            id,
            &Message::GetHeader {
                kind: FileKind::File,
                size: 1000,
                mode: 0o644,
            },
        )
        .unwrap();
        for _ in 0..1000 {
            if Frame::data(id, FrameKind::FileData, vec![0])
                .write_to(g)
                .is_err()
            {
                return;
            }
            std::thread::sleep(pause);
        }
    };
    // Stalls: one byte, then nothing for longer than the stall limit.
    let f = fake(move |g, _| trickle(g, Duration::from_secs(30)));
    let e = f
        .client
        .get_with("/out", &mut Vec::new(), quick(60_000, 300))
        .unwrap_err();
    assert!(e.to_string().contains("stalled"), "{e}");
    f.client.close();
    drop(f.thread); // sleeps on; the process exits without it
                    // Trickles: a byte every 50 ms never trips the stall limit, the deadline does.
    let f = fake(move |g, _| trickle(g, Duration::from_millis(50)));
    let e = f
        .client
        .get_with("/out", &mut Vec::new(), quick(500, 5_000))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ClientError::Timeout { .. }) && msg.contains("to finish"),
        "{msg}"
    );
    f.client.close();
    let _ = f.thread.join();
}

/// Lies about sizes: more data than announced, or an announced size over the cap.
#[test]
fn get_with_lying_sizes_fails_clearly() {
    let f = fake(|g, _| {
        let (id, _) = next_request(g);
        let header = Message::GetHeader {
            kind: FileKind::File,
            size: 10,
            mode: 0o644,
        };
        send(g, id, &header).unwrap();
        let _ = Frame::data(id, FrameKind::FileData, vec![0; 4096]).write_to(g);
        let _ = Frame::read_from(g, MAX_FRAME_BODY);
    });
    let mut out = Vec::new();
    let e = f
        .client
        .get_with("/out", &mut out, quick(60_000, 10_000))
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Protocol(_)) && e.to_string().contains("announced 10 bytes"),
        "{e}"
    );
    assert!(out.len() <= 10);
    f.client.close();
    let _ = f.thread.join();

    let f = fake(|g, _| {
        let (id, _) = next_request(g);
        let header = Message::GetHeader {
            kind: FileKind::File,
            size: 1 << 40,
            mode: 0o644,
        };
        send(g, id, &header).unwrap();
        // The host must not wait for the data: it tells us to stop.
        loop {
            let f = Frame::read_from(g, MAX_FRAME_BODY).unwrap();
            if f.stream == id && Message::from_bytes(&f.payload).ok() == Some(Message::Kill) {
                return;
            }
        }
    });
    let e = f
        .client
        .get_with("/out", &mut Vec::new(), quick(60_000, 10_000))
        .unwrap_err();
    assert!(
        matches!(e, ClientError::TooLarge { announced: Some(n), limit, .. } if n == 1 << 40 && limit == 1 << 20),
        "{e}"
    );
    f.thread.join().unwrap();
}

/// Audit D2: a guest that never grants more file credit during a put.
#[test]
fn put_without_credit_times_out() {
    let f = fake(|g, _| {
        let _ = next_request(g);
        // Read (so host writes never block) but never grant credit or reply.
        while Frame::read_from(g, MAX_FRAME_BODY).is_ok() {}
    });
    let data = vec![0u8; 1 << 20];
    let e = f
        .client
        .put_file_with("/in", &mut &data[..], 0o644, None, quick(60_000, 300))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ClientError::Timeout { .. }) && msg.contains("stalled") && msg.contains("/in"),
        "{msg}"
    );
    f.client.close();
    f.thread.join().unwrap();
}

/// A guest that stops reading entirely: the host's write blocks once the
/// socket buffer is full; the watchdog closes the connection at the deadline.
#[test]
fn put_to_a_guest_that_stops_reading_ends_at_the_deadline() {
    let f = fake(|g, _| {
        let (id, _) = next_request(g);
        // Endless credit, but nothing is ever read again.
        for _ in 0..64 {
            let _ = send(
                g,
                id,
                &Message::Credit {
                    channel: voidbox_guest_agent::protocol::Channel::File,
                    bytes: 16 << 20,
                },
            );
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let data = vec![0u8; 256 << 20];
    let mut limits = quick(1_000, 1_000);
    limits.max_bytes = 0;
    let e = f
        .client
        .put_file_with("/in", &mut &data[..], 0o644, None, limits)
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ClientError::Timeout { .. }) && msg.contains("/in"),
        "{msg}"
    );
    drop(f.thread); // sleeps on; the process exits without it
}
