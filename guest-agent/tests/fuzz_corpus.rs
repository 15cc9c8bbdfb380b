//! Replays the committed corpora of `guest-agent/fuzz/` through the same entry functions
//! the fuzz targets call (`voidbox_guest_agent::fuzzing`), so a crash found once stays
//! fixed without a nightly toolchain. `generate_corpus` (ignored) rewrites the seeds:
//! `cargo test -p voidbox-guest-agent --test fuzz_corpus -- --ignored`.

use std::path::PathBuf;

use voidbox_guest_agent::boot_data::{BootData, Clock, DiskMount};
use voidbox_guest_agent::fuzzing;
use voidbox_guest_agent::protocol::auth::Secret;
use voidbox_guest_agent::protocol::{
    Channel, ErrorCode, ExecRequest, ExitStatus, Frame, FrameKind, Message, PtySize,
};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Calls `f` on every file of the target's corpus; fails on a missing or empty corpus.
fn replay(target: &str, f: fn(&[u8])) {
    let dir = corpus(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        n += 1;
    }
    assert!(n > 0, "{} holds no seeds", dir.display());
}

#[test]
fn boot_data_corpus() {
    replay("boot_data", fuzzing::boot_data);
}

#[test]
fn frame_decode_corpus() {
    replay("frame_decode", fuzzing::frame_decode);
}

#[test]
fn message_decode_corpus() {
    replay("message_decode", fuzzing::message_decode);
}

fn messages() -> Vec<(&'static str, Message)> {
    vec![
        (
            "hello",
            Message::Hello {
                version: 1,
                nonce: "00".repeat(32),
            },
        ),
        (
            "auth_ok",
            Message::AuthOk {
                mac: "ab".repeat(32),
            },
        ),
        (
            "exec",
            Message::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: [("PATH".to_string(), "/bin".to_string())].into(),
                cwd: Some("/work".into()),
                timeout_ms: Some(5000),
                pty: Some(PtySize { rows: 24, cols: 80 }),
                stdin: true,
                ..Default::default()
            }),
        ),
        ("started", Message::Started { pid: 42 }),
        (
            "credit",
            Message::Credit {
                channel: Channel::Stdout,
                bytes: 65536,
            },
        ),
        (
            "exited",
            Message::Exited(ExitStatus {
                code: Some(0),
                signal: None,
                timed_out: false,
            }),
        ),
        ("error", Message::error(ErrorCode::PathDenied, "no")),
        (
            "get",
            Message::Get {
                path: "/out".into(),
            },
        ),
    ]
}

#[test]
#[ignore = "rewrites fuzz/corpus; run explicitly with --ignored"]
fn generate_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let secret = Secret::new(vec![7; 32]).unwrap();
    let minimal = BootData::new(&secret);
    write("boot_data", "minimal", &minimal.to_json());
    let mut full = BootData::new(&secret);
    full.allow_commands = Some(vec!["/bin/sh".into(), "/usr/bin/make".into()]);
    full.disks.base_serial = Some("voidbox-root".into());
    full.disks.skills.push(DiskMount {
        serial: "skill0".into(),
        path: "/skills/a".into(),
        fstype: "ext4".into(),
    });
    full.clock = Some(Clock {
        unix_secs: 1_700_000_000,
        nanos: 5,
    });
    full.hostname = Some("sandbox".into());
    full.module_params
        .insert("loop.max_loop".into(), "8".into());
    write("boot_data", "full", &full.to_json());
    let mut bad = BootData::new(&secret);
    bad.file_roots = vec!["relative/root".into()];
    write("boot_data", "relative_root", &bad.to_json());

    let mut stream = Vec::new();
    for (name, m) in messages() {
        write("message_decode", name, &m.to_bytes());
        let f = Frame::data(3, FrameKind::Message, m.to_bytes());
        write("frame_decode", &format!("message_{name}"), &f.encode());
        stream.extend(f.encode());
    }
    stream.extend(Frame::data(3, FrameKind::Stdout, b"hello\n".to_vec()).encode());
    stream.extend(Frame::data(3, FrameKind::Stderr, b"oops\n".to_vec()).encode());
    write("frame_decode", "stream", &stream);
    // A header announcing a body over the handshake limit.
    let mut big = Frame::data(0, FrameKind::FileData, vec![0; 5000]).encode();
    big.truncate(64);
    write("frame_decode", "over_limit", &big);
}
