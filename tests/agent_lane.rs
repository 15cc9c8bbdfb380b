//! Issue 3 end to end: the static guest agent as PID 1 of a stock Debian guest booted by
//! voidbox-vmm (in the nested lane on hosts without hardware KVM, directly otherwise), driven
//! by `voidbox::client` over vsock (through the lane's virtio-serial relay). One boot runs
//! the guest-only hostile cases: a fork bomb held by the exec's cgroup, a workload that
//! `kill -9`s everything it can see, a `setsid` child that must die at the timeout; plus the
//! boot data being gone, file transfer, and shutdown ending the VMM with 0.
//!
//! `bench_agent_lane` (ignored; scripts/bench-agent.sh --lane) measures the same paths.

mod support;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use voidbox::client::{Client, ErrorCode, ExecLimits, ExecRequest, Secret, UserSpec};
use voidbox::lane::{CommandSpec, Launcher};
use voidbox_guest_agent::BootData;
use voidbox_guest_image::initramfs::{Compression, Initramfs};
use voidbox_guest_image::kernel::GUEST_MODULES;

/// Busybox applets the workloads of this test use.
const APPLETS: &[&str] = &[
    "sh", "true", "echo", "cat", "sleep", "kill", "setsid", "ps", "head", "id", "grep", "nproc",
    "wc", "tr", "ls",
];

/// The static agent (musl, `agent` profile), built into a separate target dir.
fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VOIDBOX_AGENT_MUSL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.ancestors().nth(3).unwrap().join("e2e-helpers");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--profile",
            "agent",
            "--target",
            "x86_64-unknown-linux-musl",
            "-p",
            "voidbox-guest-agent",
        ])
        .arg("--target-dir")
        .arg(&dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(
        st.success(),
        "building the static agent failed (`rustup target add x86_64-unknown-linux-musl`)"
    );
    dir.join("x86_64-unknown-linux-musl/agent/voidbox-guest-agent")
}

/// Initramfs: the agent as /init, busybox for the workloads, the guest modules with a
/// modules.dep in load order.
fn build_agent_initramfs(dest: &Path) {
    let kernel = kernel();
    let mut img = Initramfs::new();
    img.add_file_from("init", 0o755, &agent_bin()).unwrap();
    img.add_file_from("bin/busybox", 0o755, Path::new("/bin/busybox"))
        .unwrap();
    for a in APPLETS {
        img.add_symlink(&format!("bin/{a}"), "busybox").unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp", "run", "etc", "work"] {
        img.add_dir(d, 0o755).unwrap();
    }
    img.add_char_device("dev/console", 0o600, 5, 1).unwrap();
    let release = kernel.manifest.release.clone();
    let mut dep = String::new();
    for m in kernel.modules(GUEST_MODULES).unwrap() {
        let rel = m.rel_path.to_string_lossy().into_owned();
        img.add_file_from(&format!("lib/modules/{release}/{rel}"), 0o644, &m.path)
            .unwrap();
        dep.push_str(&format!("{rel}:\n"));
    }
    img.add_file(
        &format!("lib/modules/{release}/modules.dep"),
        0o644,
        dep.into_bytes(),
    )
    .unwrap();
    img.write_to(dest, Compression::Gzip).unwrap();
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

struct Guest {
    client: Client,
    vm: voidbox::lane::Process,
    _relay: Option<voidbox::lane::LaneProcess>,
    serial: PathBuf,
    secret: Secret,
}

/// Boots the agent guest and connects the client (through the relay in the lane).
fn boot(launcher: &Launcher, w: &Path, tag: &str) -> Guest {
    let initrd = w.join("agent-initrd.cpio.gz");
    build_agent_initramfs(&initrd);
    let secret = Secret::generate();
    let mut data = BootData::new(&secret);
    data.file_roots = vec!["/work".into(), "/tmp".into()];
    data.limits = ExecLimits {
        memory_bytes: Some(128 << 20),
        pids: Some(256),
        cpu_millis: None,
    };
    let boot_data = w.join("boot-data.cpio");
    std::fs::write(&boot_data, data.to_newc_archive()).unwrap();

    let sock_dir = launcher
        .socket_dir()
        .join(format!("voidbox-agent-{tag}-{}", std::process::id()));
    let out = launcher
        .run(
            &CommandSpec::new(["mkdir", "-p", &sock_dir.display().to_string()]),
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(out.status.success());
    let uds = sock_dir.join("vsock.sock");
    let serial = w.join(format!("{tag}.log"));
    let b = Boot {
        kernel: kernel().vmlinux(),
        initrd: initrd.clone(),
        cmdline: BASE_CMDLINE.to_string(),
        mem_mib: 512,
        vcpus: 2,
        disks: vec![],
        vsock_uds: Some(uds.clone()),
        serial: serial.clone(),
    };
    let mut cmd = voidbox_vmm_command(&vmm_bin(), &b);
    // The boot data goes in as a second, uncompressed initrd.
    let pos = cmd.argv.iter().position(|a| a == "--initrd").unwrap();
    cmd.argv.insert(pos + 2, boot_data.display().to_string());
    cmd.argv.insert(pos + 2, "--initrd".into());
    let vm = launcher.spawn(&cmd).unwrap();

    let timeout = Duration::from_secs(300);
    let (client, relay) = match launcher.lane() {
        Some(lane) => {
            let relay = lane
                .start_relay(0, &uds, voidbox::client::VSOCK_PORT, timeout)
                .unwrap();
            let t = Instant::now();
            let s = loop {
                match UnixStream::connect(lane.relay_socket(0)) {
                    Ok(s) => break s,
                    Err(e) if t.elapsed() > timeout => panic!("relay socket: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            let c = Client::over(Box::new(s), &secret, timeout).unwrap_or_else(|e| {
                panic!(
                    "agent handshake over the relay: {e}\nconsole:\n{}",
                    std::fs::read_to_string(&serial).unwrap_or_default()
                )
            });
            (c, Some(relay))
        }
        None => (Client::connect_vsock(&uds, &secret, timeout).unwrap(), None),
    };
    Guest {
        client,
        vm,
        _relay: relay,
        serial,
        secret,
    }
}

#[test]
fn agent_in_a_real_guest_survives_hostile_workloads() {
    let work = tempfile::Builder::new()
        .prefix("voidbox-agent-e2e-")
        .tempdir()
        .unwrap();
    let w = work.path();
    let launcher = launcher(w);
    let g = boot(&launcher, w, "hostile");
    let c = &g.client;
    let console = || std::fs::read_to_string(&g.serial).unwrap_or_default();
    c.ping(Duration::from_secs(30)).unwrap();

    let out = c
        .exec_collect(req(&["sh", "-c", "nproc; id -u; echo hi"]), b"", None)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2\n65534\nhi\n",
        "{}",
        console()
    );

    // The boot data is gone and the secret is nowhere the workload can look.
    let hex = g.secret.to_hex();
    let root = Some(UserSpec { uid: 0, gid: 0 });
    let out = c
        .exec_collect(
            ExecRequest {
                user: root,
                ..req(&["sh", "-c", "ls -a /.voidbox; cat /proc/cmdline"])
            },
            b"",
            None,
        )
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&hex));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No such file"),
        "{:?}",
        out
    );
    let out = c
        .exec_collect(
            req(&[
                "sh",
                "-c",
                "cat /proc/1/environ /proc/2/environ /proc/2/mem",
            ]),
            b"",
            None,
        )
        .unwrap();
    assert_ne!(out.status.code, Some(0));
    assert!(out.stdout.is_empty());

    // Fork bomb: held by the exec's pids limit, ended by its timeout; the agent stays responsive.
    let mut bomb = req(&["sh", "-c", "b() { b | b & }; b; sleep 1000"]);
    bomb.limits.pids = Some(64);
    bomb.timeout_ms = Some(5000);
    let t = Instant::now();
    let pinger = std::thread::scope(|s| {
        let h = s.spawn(|| c.exec_collect(bomb, b"", None));
        std::thread::sleep(Duration::from_secs(2));
        let p = c.ping(Duration::from_secs(30));
        (h.join().unwrap(), p)
    });
    let (bomb_out, ping) = pinger;
    ping.expect("agent answers during a fork bomb");
    assert!(bomb_out.unwrap().status.timed_out);
    assert!(t.elapsed() < Duration::from_secs(120));
    let out = c
        .exec_collect(req(&["ps", "-o", "args"]), b"", None)
        .unwrap();
    let ps = String::from_utf8_lossy(&out.stdout).to_string();
    let left = ps.lines().filter(|l| l.contains("b | b")).count();
    assert_eq!(left, 0, "fork bomb leftovers:\n{ps}\n{}", console());

    // A workload that kill -9s everything it can see: its neighbours die, the agent does not.
    let victim = c.exec(req(&["sleep", "1000"])).unwrap();
    let out = c
        .exec_collect(
            req(&["sh", "-c", "kill -9 -1; sleep 1; echo survived"]),
            b"",
            None,
        )
        .unwrap();
    // kill(-1) spares the caller itself; everything else of the workload's uid dies.
    assert_eq!(out.stdout, b"survived\n", "{out:?}");
    assert_eq!(
        victim
            .wait_with(|_| {}, |_| {}, Some(Duration::from_secs(60)))
            .unwrap()
            .signal,
        Some(9)
    );
    c.ping(Duration::from_secs(30))
        .expect("agent survives kill -9 -1");

    // A setsid child dies with its exec at the timeout.
    let mut r = req(&["sh", "-c", "setsid sleep 999 & sleep 1000"]);
    r.timeout_ms = Some(1000);
    let st = c.exec_collect(r, b"", None).unwrap().status;
    assert!(st.timed_out);
    let out = c
        .exec_collect(
            ExecRequest {
                user: root,
                ..req(&["ps", "-o", "args"])
            },
            b"",
            None,
        )
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("sleep 999"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The allowlist is absent here; files work under the allowed roots only.
    c.put_file("/work/in.txt", &mut &b"input"[..], 0o644, None)
        .unwrap();
    let out = c
        .exec_collect(req(&["cat", "/work/in.txt"]), b"", None)
        .unwrap();
    assert_eq!(out.stdout, b"input");
    let e = c.get("/etc/passwd", &mut Vec::new()).unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::PathDenied));

    // Shutdown resets the guest: the VMM exits 0.
    c.shutdown().unwrap();
    let vm_out = g.vm.wait(Duration::from_secs(120)).unwrap();
    assert_eq!(
        vm_out.status.code,
        Some(0),
        "VMM exit after shutdown\nconsole:\n{}",
        console()
    );
}

#[test]
#[ignore = "benchmark: run scripts/bench-agent.sh --lane"]
fn bench_agent_lane() {
    let work = tempfile::Builder::new()
        .prefix("voidbox-agent-bench-")
        .tempdir()
        .unwrap();
    let w = work.path();
    let launcher = launcher(w);
    let g = boot(&launcher, w, "bench");
    let c = &g.client;
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let mut ping = Vec::new();
    let mut tru = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        c.ping(Duration::from_secs(30)).unwrap();
        ping.push(t.elapsed());
        let t = Instant::now();
        c.exec_collect(req(&["true"]), b"", None).unwrap();
        tru.push(t.elapsed());
    }
    let t = Instant::now();
    let mut n = 0u64;
    c.exec(req(&["head", "-c", "104857600", "/dev/zero"]))
        .unwrap()
        .wait_with(|d| n += d.len() as u64, |_| {}, None)
        .unwrap();
    let el = t.elapsed();
    assert_eq!(n, 100 << 20);
    let med = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!(
        "agent bench in the lane ({}):",
        if launcher.lane().is_some() {
            "nested lane, vsock via virtio-serial relay"
        } else {
            "host KVM, vsock"
        }
    );
    println!("  ping round trip: median {:.2} ms (n={runs})", med(ping));
    println!("  exec `true`:     median {:.2} ms (n={runs})", med(tru));
    println!(
        "  100 MiB stdout:  {:.1} MiB/s ({:.1} s)",
        100.0 / el.as_secs_f64(),
        el.as_secs_f64()
    );
    c.shutdown().unwrap();
    let _ = g.vm.wait(Duration::from_secs(120));
}
