//! `voidbox serve` end to end with real microVMs (through one nested lane on
//! hosts without hardware KVM): the API, `voidbox sandbox ...`, capacity,
//! lifetimes, faults (a VM that dies, a client that goes away, path escapes,
//! a large upload in bounded memory, SIGKILL and SIGTERM of the daemon) and 8
//! sandboxes with 100 concurrent execs, every byte of output accounted for.
//! One daemon (one lane) serves the whole test.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use voidbox::daemon::client::DaemonClient;
use voidbox::daemon::endpoint::Endpoint;
use voidbox::service::api::{ExecBody, ExecEvent};
use voidbox::service::ServiceError;

const BIN: &str = env!("CARGO_BIN_EXE_voidbox");

struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(home: &Path, dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.join("api.sock");
        let log = dir.join(format!("serve-{}.log", Instant::now().elapsed().as_nanos()));
        let mut child = Command::new(BIN)
            .args(["-v", "serve", "--socket"])
            .arg(&socket)
            .args(extra)
            .env("VOIDBOX_HOME", home)
            .env("VOIDBOX_DEB_CACHE", support::deb_cache())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        let client = DaemonClient::new(Endpoint::Unix(socket.clone()), None).unwrap();
        while !client.reachable() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "the daemon exited ({st}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer in 300 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Daemon { child, socket, log }
    }

    fn client(&self) -> DaemonClient {
        DaemonClient::new(Endpoint::Unix(self.socket.clone()), None).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .env("VOIDBOX_HOST", format!("unix://{}", self.socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(data).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        eprintln!(
            "--- voidbox {}: {:?}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- the daemon's log, last lines:");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shell(cmd: &str) -> ExecBody {
    ExecBody {
        shell: Some(cmd.into()),
        ..Default::default()
    }
}

fn body(json: serde_json::Value) -> serde_json::Value {
    json
}

/// Live processes whose command line contains `needle`.
fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(needle).then_some((pid, c))
        })
        .collect()
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_daemon_serves_live_sandboxes() {
    support::require_qemu();
    support::require_setup();
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("voidbox-daemon-home");
    std::fs::create_dir_all(&home).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["guest", "build"])
        .env("VOIDBOX_HOME", &home)
        .env("VOIDBOX_DEB_CACHE", support::deb_cache())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "guest build: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let daemon = Daemon::start(
        &home,
        dir.path(),
        &["--max-sandboxes", "8", "--max-memory-mb", "2304"],
    );
    let c = daemon.client();

    // 1. Bad input: unknown ids, bodies with the field named, host paths refused.
    assert!(matches!(
        c.get("sb-0000000000000000"),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        c.exec("sb-0000000000000000", &shell("true")),
        Err(ServiceError::NotFound(_))
    ));
    match c.create(&body(serde_json::json!({"memroy_mb": 256}))) {
        Err(ServiceError::BadRequest(m)) => assert!(m.contains("memroy_mb"), "{m}"),
        other => panic!("a misspelt field: {other:?}"),
    }
    match c.create(&body(
        serde_json::json!({"inputs": [{"host": "/etc", "guest": "/x"}]}),
    )) {
        Err(ServiceError::BadRequest(m)) => assert!(m.contains("no host paths"), "{m}"),
        other => panic!("inputs: {other:?}"),
    }

    // 2. Eight sandboxes created at once (they queue for the one lane); a ninth is refused.
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let c = daemon.client();
                s.spawn(move || {
                    c.create(&serde_json::json!({"memory_mb": 256}))
                        .map(|i| i.id)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().expect("create within capacity"))
            .collect()
    });
    assert_eq!(c.list().unwrap().len(), 8);
    match c.create(&serde_json::json!({"memory_mb": 256})) {
        Err(ServiceError::TooManySandboxes(m)) => assert!(m.contains("--max-sandboxes"), "{m}"),
        other => panic!("a ninth sandbox: {other:?}"),
    }

    // 3. 100 execs spread over them at once: every byte of output accounted for.
    std::thread::scope(|s| {
        for t in 0..10 {
            let c = daemon.client();
            let ids = &ids;
            s.spawn(move || {
                for k in 0..10 {
                    let n = t * 10 + k;
                    let len = 1000 + n * 1999;
                    let ch = (b'a' + (n % 26) as u8) as char;
                    let id = &ids[n % ids.len()];
                    let r = c
                        .exec(
                            id,
                            &shell(&format!(
                                "head -c {len} /dev/zero | tr '\\0' {ch}; echo e{n} >&2; exit {}",
                                n % 7
                            )),
                        )
                        .unwrap_or_else(|e| panic!("exec {n} in {id}: {e}"));
                    assert_eq!(r.exit_code, Some((n % 7) as i32), "exec {n}");
                    assert_eq!(r.stdout.len(), len, "exec {n} stdout length");
                    assert!(
                        r.stdout.bytes().all(|b| b == ch as u8),
                        "exec {n} stdout bytes"
                    );
                    assert_eq!(r.stderr, format!("e{n}\n"), "exec {n} stderr");
                }
            });
        }
    });
    for id in &ids[2..] {
        c.destroy(id).unwrap();
    }
    let (a, b) = (&ids[0], &ids[1]);

    // 4. The CLI over the daemon: ls, exec with the exit code passed through, cp both ways, rm.
    let o = daemon.cli(&["sandbox", "ls"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains(a.as_str()));
    let o = daemon.cli(
        &[
            "sandbox",
            "exec",
            "-i",
            a,
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; exit 5",
        ],
        Some(b"shout\n"),
    );
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "SHOUT\n");
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/f.txt"), b"in a tree\n").unwrap();
    let o = daemon.cli(
        &[
            "sandbox",
            "cp",
            src.to_str().unwrap(),
            &format!("{a}:/tmp/tree"),
        ],
        None,
    );
    assert!(o.status.success());
    let r = c.exec(a, &shell("cat /tmp/tree/sub/f.txt")).unwrap();
    assert_eq!(r.stdout, "in a tree\n");
    let back = dir.path().join("back");
    let o = daemon.cli(
        &[
            "sandbox",
            "cp",
            &format!("{a}:/tmp/tree"),
            back.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(back.join("sub/f.txt")).unwrap(),
        b"in a tree\n"
    );
    let o = daemon.cli(
        &["sandbox", "exec", "sb-0000000000000000", "--", "true"],
        None,
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no sandbox"));

    // 5. Path escapes and links are refused by the agent, named in the error.
    let planted = c.exec(a, &shell("ln -s /etc/shadow /tmp/link")).unwrap();
    assert_eq!(planted.exit_code, Some(0));
    let mut sink = Vec::new();
    assert!(
        c.read_file(a, "/tmp/link", &mut sink).is_err(),
        "a link is not followed out of the guest"
    );
    let escape = c.write_file(a, "/tmp/../etc/passwd", 0o644, false, Box::new(&b"x"[..]));
    assert!(escape.is_err(), "a path with .. is refused");

    // 6. A client that goes away mid-stream: its process is killed.
    {
        let mut s = UnixStream::connect(&daemon.socket).unwrap();
        let req =
            serde_json::to_vec(&shell("echo $$ > /tmp/streamed.pid; echo up; sleep 300")).unwrap();
        write!(
            s,
            "POST /v1/sandboxes/{a}/exec HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            req.len()
        )
        .unwrap();
        s.write_all(&req).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut seen = String::new();
        while !seen.contains("up\\n") {
            let mut line = String::new();
            assert!(
                r.read_line(&mut line).unwrap() > 0,
                "the stream ended early: {seen}"
            );
            seen.push_str(&line);
        }
        drop(r);
        drop(s);
    }
    wait_until(
        "the abandoned process is killed",
        Duration::from_secs(60),
        || {
            c.exec(a, &shell("kill -0 $(cat /tmp/streamed.pid)"))
                .unwrap()
                .exit_code
                != Some(0)
        },
    );

    // 7. Streaming: output arrives before the process ends.
    let mut events = Vec::new();
    c.exec_stream(b, &shell("echo one; sleep 2; echo two"), |e| {
        events.push((Instant::now(), e))
    })
    .unwrap();
    let at = |want: &str| {
        events
            .iter()
            .find(|(_, e)| matches!(e, ExecEvent::Stdout { data } if data.contains(want)))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no `{want}` in {events:?}"))
    };
    assert!(
        at("two").duration_since(at("one")) >= Duration::from_secs(1),
        "streamed as it came"
    );
    assert!(matches!(
        events.last(),
        Some((
            _,
            ExecEvent::Exit {
                exit_code: Some(0),
                ..
            }
        ))
    ));

    // 8. A large upload streams through in bounded daemon memory. The guest's
    //    /tmp is in its RAM (256 MiB here), which bounds the size a test can use.
    let mb: usize = std::env::var("VOIDBOX_DAEMON_UPLOAD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    struct Pattern(usize, usize);
    impl Read for Pattern {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1 - self.0);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((self.0 + i) % 251) as u8;
            }
            self.0 += n;
            Ok(n)
        }
    }
    let hwm_before = vm_hwm_kib(daemon.child.id());
    let started = Instant::now();
    c.write_file(b, "/tmp/big", 0o644, false, Box::new(Pattern(0, mb << 20)))
        .unwrap();
    eprintln!("upload of {mb} MiB: {:?}", started.elapsed());
    let hwm = vm_hwm_kib(daemon.child.id());
    assert!(
        hwm < hwm_before + 64 * 1024,
        "the daemon's peak memory grew from {hwm_before} KiB to {hwm} KiB for a {mb} MiB upload"
    );
    let r = c
        .exec(
            b,
            &shell("wc -c < /tmp/big; sha256sum < /tmp/big | cut -c1-64"),
        )
        .unwrap();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    std::io::copy(&mut Pattern(0, mb << 20), &mut hasher).unwrap();
    let digest = hex::encode(sha2::Digest::finalize(hasher));
    assert_eq!(r.stdout, format!("{}\n{digest}\n", mb << 20));
    c.exec(b, &shell("rm /tmp/big")).unwrap();

    // 9. A sandbox whose VM dies: a clear error, marked dead, its capacity freed.
    let _ = c.exec(
        b,
        &ExecBody {
            argv: Some(vec!["/bin/busybox".into(), "poweroff".into(), "-f".into()]),
            user: Some("root".into()),
            ..Default::default()
        },
    );
    wait_until("the dead VM is noticed", Duration::from_secs(60), || {
        matches!(c.exec(b, &shell("true")), Err(ServiceError::SandboxDead(_)))
    });
    assert_eq!(c.get(b).unwrap().state, "dead");
    c.destroy(b).unwrap();

    // 10. Lifetime and idle limits are enforced by the daemon.
    let short = c
        .create(&serde_json::json!({"memory_mb": 128, "timeout_secs": 5}))
        .unwrap()
        .id;
    let idle = c
        .create(&serde_json::json!({"memory_mb": 128, "idle_timeout_secs": 4}))
        .unwrap()
        .id;
    wait_until("both limits are enforced", Duration::from_secs(60), || {
        c.get(&short).is_err() && c.get(&idle).is_err()
    });

    // 10b. The lane itself stops (as when L2's kernel panics): its sandboxes
    //      are reported dead with the reason, and the next create starts a new lane.
    if c.get(a).unwrap().launcher == "nested-lane" {
        let (qemu, _) = processes_naming("voidbox_lane.work=")
            .into_iter()
            .find(|(_, cmd)| cmd.contains("qemu-system"))
            .expect("the daemon's lane is running");
        // SAFETY: kill(2) on the lane's QEMU, a child of our child.
        unsafe { libc::kill(qemu, libc::SIGKILL) };
        wait_until(
            "the stopped lane is noticed",
            Duration::from_secs(60),
            || match c.exec(a, &shell("true")) {
                Err(ServiceError::SandboxDead(m)) => {
                    assert!(m.contains("nested lane it ran in stopped"), "{m}");
                    true
                }
                _ => false,
            },
        );
        c.destroy(a).unwrap();
        let fresh = c.create(&serde_json::json!({"memory_mb": 128})).unwrap().id;
        assert_eq!(
            c.exec(&fresh, &shell("echo again")).unwrap().stdout,
            "again\n"
        );
        assert!(
            daemon.log().contains("starting a new one"),
            "{}",
            daemon.log()
        );
    }

    // 11. SIGKILL: the VMs and the lane die with the daemon; the next daemon
    //     removes the run directories it left.
    let lane_dir = processes_naming("qemu-system")
        .into_iter()
        .find_map(|(_, c)| {
            c.split("voidbox_lane.work=")
                .nth(1)
                .map(|r| r.split_whitespace().next().unwrap().to_string())
        })
        .expect("the daemon's lane is running");
    let pid = daemon.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    drop(daemon);
    wait_until("the old lane's QEMU exits", Duration::from_secs(60), || {
        processes_naming(&lane_dir).is_empty()
    });
    assert!(
        std::fs::read_dir(home.join("run")).unwrap().count() > 0,
        "the killed daemon left its run directory"
    );
    let daemon = Daemon::start(
        &home,
        dir.path(),
        &["--max-sandboxes", "2", "--max-memory-mb", "1024"],
    );
    assert_eq!(
        std::fs::read_dir(home.join("run")).unwrap().count(),
        0,
        "the new daemon swept what the old one left: {}",
        daemon.log()
    );

    // 12. SIGTERM: every sandbox destroyed, nothing left, exit 0.
    let c = daemon.client();
    let id = c.create(&serde_json::json!({"memory_mb": 128})).unwrap().id;
    assert_eq!(c.exec(&id, &shell("echo alive")).unwrap().stdout, "alive\n");
    let mut daemon = daemon;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let status = daemon.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(!daemon.socket.exists(), "the socket is removed");
    assert_eq!(
        std::fs::read_dir(home.join("run")).unwrap().count(),
        0,
        "no run directory left"
    );
    wait_until("no VMM or lane is left", Duration::from_secs(30), || {
        processes_naming("voidbox-vmm").is_empty()
            && processes_naming(&home.display().to_string()).is_empty()
    });
}
