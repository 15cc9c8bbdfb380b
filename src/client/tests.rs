//! The client against the real service over a Unix socket pair, in-process.
//! Needs root and a writable cgroup2 mount (as CI runs).

use super::*;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use voidbox_guest_agent::service::{find_cgroup2_mount, Service, ServiceConfig};
use voidbox_guest_agent::BootData;

/// A cgroup directory for one test's execs, removed on drop.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let mount =
            find_cgroup2_mount().expect("these tests need a cgroup2 mount (run as root on Linux)");
        let p = mount.join(format!(
            "voidbox-client-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir(&p).expect("create a test cgroup (run as root)");
        Self(p)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.0);
    }
}

/// Kills what is left and removes the cgroup with its children (exec threads
/// of a dropped connection may still be cleaning up).
fn remove_cgroup_tree(p: &Path) {
    let _ = std::fs::write(p.join("cgroup.kill"), "1");
    let t = Instant::now();
    while std::fs::read_to_string(p.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..100 {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        if std::fs::remove_dir(p).is_ok() || !p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary directory the workload (uid 65534) can enter: mode 0755
/// whatever the umask, under a base whose every ancestor others may search
/// (`$TMPDIR` or the checkout may be private, as on a CI machine with umask 077).
pub(crate) fn workload_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let searchable = |p: &Path| {
        p.ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    let bases = [std::env::temp_dir(), "/tmp".into(), "/dev/shm".into()];
    let base = bases.iter().find(|b| searchable(b)).expect(
        "no temporary directory uid 65534 can enter: $TMPDIR, /tmp and /dev/shm each have an \
         ancestor without o+x; set TMPDIR to one that has",
    );
    let dir = tempfile::tempdir_in(base).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Whether this process is the child that runs one test alone.
pub(crate) fn in_child(test: &str) -> bool {
    if std::env::var_os("VOIDBOX_TEST_CHILD").is_some() {
        return true;
    }
    // Memory readings (VmRSS, VmHWM) cover the whole process: measure in a
    // child that runs only this test, so other tests do not count.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("VOIDBOX_TEST_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    false
}

/// An in-process agent service on a Unix socket pair, with a connected client
/// (also used by the runtime's tests).
pub(crate) struct Agent {
    pub(crate) client: Client,
    secret: Secret,
    service: Service,
    _cg: TestCgroup,
}

pub(crate) fn agent_with(f: impl FnOnce(&mut BootData)) -> Agent {
    let secret = Secret::generate();
    let mut data = BootData::new(&secret);
    f(&mut data);
    let cg = TestCgroup::new();
    let config = ServiceConfig::from_boot_data(&data, cg.0.clone(), Arc::new(|| {})).unwrap();
    let service = Service::new(config);
    let client = connect(&service, &secret).unwrap();
    Agent {
        client,
        secret,
        service,
        _cg: cg,
    }
}

fn connect(service: &Service, secret: &Secret) -> Result<Client, ClientError> {
    let (a, b) = UnixStream::pair().unwrap();
    let svc = service.clone();
    std::thread::spawn(move || svc.serve(Box::new(a)));
    Client::over(Box::new(b), secret, Duration::from_secs(5))
}

pub(crate) fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sh(script: &str) -> ExecRequest {
    req(&["sh", "-c", script])
}

#[test]
fn exec_streams_stdio_exit_codes_env_cwd_and_pty() {
    let a = agent_with(|_| {});
    let c = &a.client;
    c.ping(Duration::from_secs(5)).unwrap();

    let out = c.exec_collect(req(&["echo", "hello"]), b"", None).unwrap();
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(
        out.status,
        ExitStatus {
            code: Some(0),
            signal: None,
            timed_out: false
        }
    );

    let out = c
        .exec_collect(sh("echo out; echo err >&2; exit 7"), b"", None)
        .unwrap();
    assert_eq!(
        (
            out.stdout.as_slice(),
            out.stderr.as_slice(),
            out.status.code
        ),
        (&b"out\n"[..], &b"err\n"[..], Some(7))
    );

    // 1 MiB through stdin and back: credit flows both ways.
    let input: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let out = c.exec_collect(req(&["cat"]), &input, None).unwrap();
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input);
    // A process that exits without reading its stdin does not hang the writer.
    let out = c
        .exec_collect(req(&["true"]), &vec![0u8; 4 << 20], None)
        .unwrap();
    assert_eq!(out.status.code, Some(0));

    let mut r = sh("echo $FOO; pwd; id -u");
    r.env.insert("FOO".into(), "bar".into());
    r.cwd = Some("/tmp".into());
    let out = c.exec_collect(r, b"", None).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bar\n/tmp\n65534\n",
        "default user is unprivileged"
    );

    let mut r = sh("kill -9 $$");
    r.user = Some(UserSpec { uid: 0, gid: 0 });
    assert_eq!(c.exec_collect(r, b"", None).unwrap().status.signal, Some(9));

    let mut r = sh("tty; stty size");
    r.pty = Some(PtySize {
        rows: 30,
        cols: 100,
    });
    let out = c.exec_collect(r, b"", None).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("30 100"), "{text}");

    let e = c
        .exec_collect(req(&["no-such-command-xyz"]), b"", None)
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::NotFound), "{e}");
    let e = c.exec_collect(req(&[]), b"", None).unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::BadRequest), "{e}");
}

#[test]
fn timeout_kills_the_whole_cgroup_including_setsid_children() {
    let a = agent_with(|_| {});
    let marker = format!("voidbox-setsid-{}", std::process::id());
    let mut r = sh(&format!(
        "setsid sh -c 'exec -a {marker} sleep 1000' & sleep 1000"
    ));
    r.timeout_ms = Some(300);
    let t = Instant::now();
    let out = a.client.exec_collect(r, b"", None).unwrap();
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(9));
    assert!(t.elapsed() < Duration::from_secs(10));
    // The setsid child died with the cgroup.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "setsid child survived: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // Leftovers of a normal exit are killed too, so the exec ends.
    let out = a
        .client
        .exec_collect(
            sh("sleep 1000 & echo bg"),
            b"",
            Some(Duration::from_secs(20)),
        )
        .unwrap();
    assert_eq!(out.stdout, b"bg\n");
}

#[test]
fn allowlist_compares_paths_without_following_the_last_symlink() {
    let dir = workload_dir();
    let bin = std::fs::canonicalize(dir.path()).unwrap();
    // A symlink, not a copy: a copy written now could be ETXTBSY in a parallel fork.
    symlink("/bin/busybox", bin.join("busybox")).unwrap();
    symlink("busybox", bin.join("echo")).unwrap();
    symlink("busybox", bin.join("cat")).unwrap();
    let echo = bin.join("echo").display().to_string();
    let a = agent_with(|d| d.allow_commands = Some(vec![echo.clone()]));
    let path = bin.display().to_string();
    let mut r = req(&["echo", "allowed"]);
    r.env.insert("PATH".into(), path.clone());
    assert_eq!(
        a.client.exec_collect(r, b"", None).unwrap().stdout,
        b"allowed\n"
    );
    let mut r = req(&["cat", "/etc/hostname"]);
    r.env.insert("PATH".into(), path);
    let e = a.client.exec_collect(r, b"", None).unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::CommandDenied));
    let msg = e.to_string();
    assert!(msg.contains("`cat`") && msg.contains(&echo), "{msg}");
}

#[test]
fn slow_reader_gets_every_byte_of_1gib_with_bounded_buffers() {
    // RSS covers the whole process: other tests' allocations must not count.
    if !in_child("client::tests::slow_reader_gets_every_byte_of_1gib_with_bounded_buffers") {
        return;
    }
    let a = agent_with(|_| {});
    let h = a
        .client
        .exec(req(&["head", "-c", "1073741824", "/dev/zero"]))
        .unwrap();
    let mut total = 0u64;
    let mut chunks = 0u64;
    let base_rss = rss_kib();
    let mut max_rss = base_rss;
    let st = h
        .wait_with(
            |d| {
                total += d.len() as u64;
                chunks += 1;
                if chunks.is_multiple_of(256) {
                    max_rss = max_rss.max(rss_kib());
                }
                // Slow at first: the guest must wait, not drop or buffer without bound.
                if chunks < 100 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            },
            |_| {},
            None,
        )
        .unwrap();
    assert_eq!(st.code, Some(0));
    assert_eq!(total, 1 << 30);
    // Service and client share this process: both sides stay within their windows.
    assert!(
        max_rss - base_rss < 64 * 1024,
        "RSS grew from {base_rss} to {max_rss} KiB"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn hundred_concurrent_execs_and_a_long_exec_does_not_block_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let a = agent_with(|d| d.file_roots = vec![root.clone()]);
    let c = &a.client;
    let long = c.exec(req(&["sleep", "30"])).unwrap();
    let t = Instant::now();
    c.put_file(&format!("{root}/x"), &mut &b"data"[..], 0o600, None)
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                s.spawn(move || {
                    c.exec_collect(req(&["echo", &i.to_string()]), b"", None)
                        .unwrap()
                })
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            assert_eq!(h.join().unwrap().stdout, format!("{i}\n").as_bytes());
        }
    });
    long.kill().unwrap();
    assert_eq!(
        long.wait_with(|_| {}, |_| {}, None).unwrap().signal,
        Some(9)
    );
}

#[test]
fn files_put_get_stat_and_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(dir.path().join("outside"), b"secret").unwrap();
    let r = root.display().to_string();
    let a = agent_with(|d| d.file_roots = vec![r.clone()]);
    let c = &a.client;

    c.put_file(&format!("{r}/a/b/f.txt"), &mut &b"hello"[..], 0o640, None)
        .unwrap();
    let st = c.stat(&format!("{r}/a/b/f.txt")).unwrap();
    assert_eq!(
        (st.kind, st.size, st.mode, st.uid),
        (FileKind::File, 5, 0o640, 65534)
    );
    let mut got = Vec::new();
    assert_eq!(
        c.get(&format!("{r}/a/b/f.txt"), &mut got).unwrap(),
        FileKind::File
    );
    assert_eq!(got, b"hello");

    // Directory round trip through tar.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/one"), b"1").unwrap();
    std::fs::write(src.join("two"), vec![7u8; 300_000]).unwrap();
    symlink("two", src.join("link")).unwrap();
    c.put_dir(&src, &format!("{r}/tree"), None).unwrap();
    assert_eq!(std::fs::read(root.join("tree/sub/one")).unwrap(), b"1");
    assert_eq!(
        std::fs::read_link(root.join("tree/link")).unwrap(),
        Path::new("two")
    );
    let back = dir.path().join("back");
    assert_eq!(
        c.get_to_path(&format!("{r}/tree"), &back).unwrap(),
        FileKind::Dir
    );
    assert_eq!(std::fs::read(back.join("two")).unwrap(), vec![7u8; 300_000]);
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        Path::new("two")
    );

    // Escapes: `..`, outside the roots, symlinks pointing out.
    let e = c
        .get(&format!("{r}/../outside"), &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::PathDenied), "{e}");
    let e = c
        .get(
            &dir.path().join("outside").display().to_string(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::PathDenied), "{e}");
    symlink(dir.path().join("outside"), root.join("abs-link")).unwrap();
    symlink("../outside", root.join("rel-link")).unwrap();
    symlink("/", root.join("dir-link")).unwrap();
    // `get` follows no link at all (audit A4), so these are refused, not resolved.
    for p in ["abs-link", "rel-link"] {
        let mut out = Vec::new();
        let e = c.get(&format!("{r}/{p}"), &mut out).unwrap_err();
        assert_eq!(e.remote_code(), Some(ErrorCode::PathDenied), "{p}: {e}");
        assert!(out.is_empty());
    }
    // Writing through a symlinked directory stays inside the root.
    c.put_file(
        &format!("{r}/dir-link/escaped"),
        &mut &b"x"[..],
        0o644,
        None,
    )
    .unwrap();
    assert!(root.join("escaped").exists());
    assert!(!Path::new("/escaped").exists());
    // A tar with `..` is refused.
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.as_gnu_mut().unwrap().name[..11].copy_from_slice(b"../escape-x");
    h.set_cksum();
    evil.append(&h, &b"x"[..]).unwrap();
    let tarball = evil.into_inner().unwrap();
    let e = c
        .put(
            voidbox_guest_agent::protocol::PutRequest {
                path: format!("{r}/t2"),
                kind: FileKind::Dir,
                mode: None,
                owner: None,
            },
            TransferLimits::default(),
            &mut |w| w.write_all(&tarball),
        )
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::PathDenied), "{e}");
    assert!(!root.join("escape-x").exists() && !dir.path().join("escape-x").exists());
}

#[test]
fn wrong_secret_is_rejected_and_workload_cannot_read_the_agent() {
    let a = agent_with(|_| {});
    let e = connect(&a.service, &Secret::generate()).unwrap_err();
    assert!(matches!(e, ClientError::Auth(_)), "{e}");
    // The right secret still works afterwards.
    connect(&a.service, &a.secret)
        .unwrap()
        .ping(Duration::from_secs(5))
        .unwrap();
    // An unprivileged workload cannot read the agent's memory or environment.
    let me = std::process::id();
    let out = a
        .client
        .exec_collect(
            sh(&format!("cat /proc/{me}/mem /proc/{me}/environ")),
            b"",
            None,
        )
        .unwrap();
    assert_ne!(out.status.code, Some(0));
    assert!(out.stdout.is_empty());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&a.secret.to_hex()));
}

#[test]
fn stdin_streams_from_another_thread_while_output_is_read() {
    let a = agent_with(|_| {});
    let mut r = req(&["cat"]);
    r.stdin = true;
    let mut h = a.client.exec(r).unwrap();
    let stdin = h.take_stdin().expect("the request asked for stdin");
    assert!(h.take_stdin().is_none(), "stdin is handed out once");
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<()>();
    let feeder = std::thread::spawn(move || -> Result<(), String> {
        stdin.write(b"first\n").map_err(|e| e.to_string())?;
        // `cat` must echo the first chunk while stdin is still open.
        seen_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "the first chunk's echo never arrived before stdin was closed")?;
        let clone = stdin.clone();
        clone.write(b"second\n").map_err(|e| e.to_string())?;
        clone.close().map_err(|e| e.to_string())?;
        // Writing after close is an error, not a silent drop.
        match stdin.write(b"late") {
            Err(_) => Ok(()),
            Ok(()) => Err("a write after close succeeded".into()),
        }
    });
    let mut out = Vec::new();
    let mut signalled = false;
    let status = h
        .wait_with(
            |d| {
                out.extend_from_slice(d);
                if !signalled && out.starts_with(b"first\n") {
                    signalled = true;
                    let _ = seen_tx.send(());
                }
            },
            |_| {},
            Some(Duration::from_secs(30)),
        )
        .unwrap();
    feeder.join().unwrap().unwrap();
    assert_eq!(status.code, Some(0));
    assert_eq!(out, b"first\nsecond\n");

    // Dropping every clone of the stdin handle closes stdin too.
    let mut r = req(&["cat"]);
    r.stdin = true;
    let mut h = a.client.exec(r).unwrap();
    let stdin = h.take_stdin().unwrap();
    std::thread::spawn(move || {
        stdin.write(b"bye\n").unwrap();
    });
    let mut out = Vec::new();
    let st = h
        .wait_with(
            |d| out.extend_from_slice(d),
            |_| {},
            Some(Duration::from_secs(30)),
        )
        .unwrap();
    assert_eq!((out.as_slice(), st.code), (&b"bye\n"[..], Some(0)));

    // A writer blocked on a process that exited without reading is released.
    let mut r = req(&["true"]);
    r.stdin = true;
    let mut h = a.client.exec(r).unwrap();
    let stdin = h.take_stdin().unwrap();
    let writer = std::thread::spawn(move || stdin.write(&vec![0u8; 8 << 20]));
    let st = h
        .wait_with(|_| {}, |_| {}, Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(st.code, Some(0));
    let _ = writer.join().unwrap();
}
