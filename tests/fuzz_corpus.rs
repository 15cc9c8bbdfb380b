//! Replays the committed corpora of `fuzz/` through the entry functions the fuzz targets
//! call (`voidbox::fuzzing`), so a crash found once stays fixed without a nightly
//! toolchain. Starts no VM. `generate_corpus` (ignored) rewrites the seeds:
//! `cargo test -p voidbox --test fuzz_corpus -- --ignored`.

use std::path::PathBuf;

use voidbox::fuzzing;
use voidbox::lane::protocol::{self, CommandSpec, ExitInfo, ReadyInfo};
use voidbox_guest_agent::protocol::{
    Channel, ErrorCode, ExitStatus, FileKind, FileStat, Frame, FrameKind, Message,
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
fn lane_frame_corpus() {
    replay("lane_frame", fuzzing::lane_frame);
}

#[test]
fn output_unpack_corpus() {
    replay("output_unpack", fuzzing::output_unpack);
}

#[test]
fn client_frames_corpus() {
    replay("client_frames", fuzzing::agent_stream);
}

fn msg(stream: u32, m: Message) -> Vec<u8> {
    Frame::data(stream, FrameKind::Message, m.to_bytes()).encode()
}

fn data(kind: FrameKind, d: &[u8]) -> Vec<u8> {
    Frame::data(1, kind, d.to_vec()).encode()
}

fn lane(kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    protocol::write_frame(&mut v, kind, id, payload).unwrap();
    v
}

fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, d) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(d.len() as u64);
        h.set_entry_type(if name.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        b.append_data(&mut h, name, *d).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
#[ignore = "rewrites fuzz/corpus; run explicitly with --ignored"]
fn generate_corpus() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let exited = Message::Exited(ExitStatus {
        code: Some(0),
        signal: None,
        timed_out: false,
    });
    // The first byte picks the host's request: 0 ping, 1 stat, 2 exec, 3 get, 4 raw stream.
    let seeds: Vec<(&str, u8, Vec<Vec<u8>>)> = vec![
        ("ping", 0, vec![msg(1, Message::Pong)]),
        (
            "stat",
            1,
            vec![msg(
                1,
                Message::StatResult(FileStat {
                    kind: FileKind::Dir,
                    size: 4096,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 1_700_000_000,
                }),
            )],
        ),
        (
            "exec",
            2,
            vec![
                msg(1, Message::Started { pid: 7 }),
                data(FrameKind::Stdout, b"hello\n"),
                data(FrameKind::Stderr, b"warning\n"),
                msg(
                    1,
                    Message::Credit {
                        channel: Channel::Stdin,
                        bytes: 4096,
                    },
                ),
                msg(
                    1,
                    Message::Eof {
                        channel: Channel::Stdout,
                    },
                ),
                msg(1, exited.clone()),
            ],
        ),
        (
            "exec_hostile",
            2,
            vec![
                msg(1, Message::Started { pid: 7 }),
                data(FrameKind::Stdin, b"not yours"),
                msg(7, Message::Pong),
                msg(1, exited),
            ],
        ),
        (
            "exec_refused",
            2,
            vec![msg(1, Message::error(ErrorCode::CommandDenied, "no"))],
        ),
        (
            "get",
            3,
            vec![
                msg(
                    1,
                    Message::GetHeader {
                        kind: FileKind::File,
                        size: 5,
                        mode: 0o644,
                    },
                ),
                data(FrameKind::FileData, b"hello"),
                msg(
                    1,
                    Message::Eof {
                        channel: Channel::File,
                    },
                ),
                msg(1, Message::Done),
            ],
        ),
        (
            "connection_error",
            0,
            vec![msg(0, Message::error(ErrorCode::Protocol, "bye"))],
        ),
        (
            "raw_hello_bad_version",
            4,
            vec![msg(
                0,
                Message::Hello {
                    version: 999,
                    nonce: "00".repeat(32),
                },
            )],
        ),
    ];
    for (name, op, frames) in seeds {
        write("client_frames", name, &[vec![op], frames.concat()].concat());
    }

    let ready = serde_json::to_vec(&ReadyInfo {
        kvm: true,
        kernel: "6.1.0-28-amd64".into(),
    })
    .unwrap();
    let spawn = serde_json::to_vec(&CommandSpec {
        argv: vec![
            "voidbox-vmm".into(),
            "--config".into(),
            "/run/c.json".into(),
        ],
        env: vec![("RUST_LOG".into(), "info".into())],
        cwd: Some("/".into()),
    })
    .unwrap();
    let exit = serde_json::to_vec(&ExitInfo {
        code: Some(0),
        signal: None,
    })
    .unwrap();
    let session = [
        lane(protocol::READY, 0, &ready),
        lane(protocol::SPAWN, 1, &spawn),
        lane(protocol::STDOUT, 1, b"booted\n"),
        lane(protocol::STDERR, 1, b"log line\n"),
        lane(protocol::SIGNAL, 1, &15i32.to_le_bytes()),
        lane(protocol::EXIT, 1, &exit),
        lane(protocol::SPAWN_FAILED, 2, b"no such file"),
    ]
    .concat();
    write("lane_frame", "session", &[&[3u8][..], &session].concat());
    write(
        "lane_frame",
        "ready_only",
        &[&[0u8][..], &session[..ready.len() + 9]].concat(),
    );

    write(
        "output_unpack",
        "files",
        &tar(&[("out/", b""), ("out/result.txt", b"42\n"), ("log", b"ok")]),
    );
    let mut escape = tar::Header::new_gnu();
    escape.as_old_mut().name[..12].copy_from_slice(b"../../escape");
    escape.set_size(1);
    escape.set_cksum();
    let mut evil = escape.as_bytes().to_vec();
    evil.extend_from_slice(&[b'x'; 512]);
    evil.extend_from_slice(&[0; 1024]);
    write("output_unpack", "dotdot", &evil);
}
