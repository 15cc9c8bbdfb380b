//! `voidbox run` end to end in real microVMs: on hosts without hardware KVM
//! through the nested lane (QEMU TCG + KVM inside), otherwise directly.
//! Needs the static guest agent built first:
//! `cargo build -p voidbox-guest-agent --profile agent --target x86_64-unknown-linux-musl`
//! (scripts/test.sh does it). All checks share one test so the guest image
//! is built once.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_voidbox");

struct Env {
    home: PathBuf,
    work: tempfile::TempDir,
}

impl Env {
    fn voidbox(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .args(args)
            .env("VOIDBOX_HOME", &self.home)
            .env("VOIDBOX_DEB_CACHE", support::deb_cache())
            .env_remove("VOIDBOX_KERNEL")
            .env_remove("VOIDBOX_INITRAMFS")
            .output()
            .unwrap();
        eprintln!(
            "--- voidbox {}: {:?}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn spec(&self, name: &str, text: &str) -> String {
        let p = self.work.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// `voidbox run --json` of `spec`, returned once its first step has started.
    fn start_until_step_started(&self, spec: &str) -> std::process::Child {
        let mut child = Command::new(BIN)
            .args(["run", "--json", "--file", spec])
            .env("VOIDBOX_HOME", &self.home)
            .env("VOIDBOX_DEB_CACHE", support::deb_cache())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let started = std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .any(|line| line.contains("\"step_started\""));
        assert!(started, "the step started");
        child
    }

    fn run_dirs_left(&self) -> usize {
        std::fs::read_dir(self.home.join("run"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Command lines of live processes that contain any of `needles`.
fn processes_naming(needles: &[&str]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| needles.iter().any(|n| c.contains(n)))
        .collect()
}

fn events(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn step_finished<'a>(ev: &'a [serde_json::Value], step: &str) -> Option<&'a serde_json::Value> {
    ev.iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == step)
}

#[test]
fn workflows_in_real_microvms() {
    support::require_qemu();
    support::require_setup();
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("voidbox-lane-home");
    let env = Env {
        home,
        work: tempfile::tempdir().unwrap(),
    };

    // The default guest image from the real parts: Debian kernel, musl agent, busybox.
    let o = env.voidbox(&["guest", "build"]);
    assert!(o.status.success(), "guest build failed: see above");

    // 1. examples/hello.yaml, human output; `-v` shows what the VMM's jail holds.
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello.yaml");
    let o = env.voidbox(&["-v", "run", "--file", hello.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("voidbox vmm-jail: namespaces mnt,pid,net,ipc,uts"),
        "the VMM runs in its jail: {e}"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("hello from a voidbox microVM"), "{stdout}");
    assert!(stdout.contains("user 65534"), "{stdout}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("==> step hello: ok"));
    assert_eq!(env.run_dirs_left(), 0, "the run directory was removed");

    // 2. Inputs, stdin_from, outputs, a timeout, a failing step and skipped dependents.
    let input = env.work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("words.txt"), "alpha\nbeta\n").unwrap();
    let spec = env.spec(
        "features.yaml",
        r#"api_version: v1
kind: workflow
name: features
sandbox:
  inputs: [{host: in, guest: /work/in}]
  outputs: [{guest: /work/out, host: out}]
  env: {GREETING: hi}
workflow:
  steps:
    - name: slow
      shell: sleep 60
      timeout_secs: 3
    - name: read
      shell: cat /work/in/words.txt; echo "$GREETING"
    - name: upper
      run: {program: tr, args: [a-z, A-Z]}
      depends_on: [read]
      stdin_from: read
    - name: save
      shell: mkdir -p /work/out && echo saved > /work/out/result.txt
    - name: fail
      shell: echo bad >&2; exit 3
    - name: never
      shell: echo unreachable
      depends_on: [fail]
"#,
    );
    let o = env.voidbox(&["run", "--json", "--file", &spec]);
    let ev = events(&o);
    assert_eq!(
        o.status.code(),
        Some(124),
        "the first failure (the timeout) decides: {ev:#?}"
    );
    let slow = step_finished(&ev, "slow").expect("slow finished");
    assert_eq!(slow["timed_out"], true);
    assert!(slow["duration_ms"].as_u64().unwrap() < 30_000);
    let upper_out: String = ev
        .iter()
        .filter(|e| e["event"] == "output" && e["step"] == "upper")
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(upper_out, "ALPHA\nBETA\nHI\n");
    assert_eq!(step_finished(&ev, "fail").unwrap()["exit_code"], 3);
    assert!(ev
        .iter()
        .any(|e| e["event"] == "step_skipped" && e["step"] == "never"));
    assert!(step_finished(&ev, "never").is_none());
    let result = env.work.path().join("out/result.txt");
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "saved\n");

    // 3. An output holding a symlink that points out of its host directory is refused.
    let spec = env.spec(
        "escape.yaml",
        "api_version: v1\nkind: workflow\nname: escape\nsandbox:\n  outputs: [{guest: /work/evil, host: evil-out}]\nworkflow:\n  steps:\n    - {name: plant, shell: 'mkdir -p /work/evil && ln -s /etc/passwd /work/evil/link && echo x > /work/evil/ok'}\n",
    );
    let o = env.voidbox(&["run", "--file", &spec]);
    assert_eq!(o.status.code(), Some(125));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("points outside its host directory"), "{e}");
    assert!(!env.work.path().join("evil-out/link").exists());

    // 4. The guest enforces the allowlist: `ls` passes the host's name
    //    check but resolves to /bin/ls, which is not the allowed path.
    let spec = env.spec(
        "allow.yaml",
        "api_version: v1\nkind: workflow\nname: allow\nsandbox:\n  allow_commands: [/bin/echo, /usr/local/bin/ls]\nworkflow:\n  steps:\n    - {name: ok, run: {program: echo, args: [allowed]}}\n    - {name: denied, run: {program: ls, args: [/]}}\n",
    );
    let o = env.voidbox(&["run", "--json", "--file", &spec]);
    let ev = events(&o);
    assert_eq!(o.status.code(), Some(126), "{ev:#?}");
    assert_eq!(step_finished(&ev, "ok").unwrap()["exit_code"], 0);
    assert_eq!(step_finished(&ev, "denied").unwrap()["exit_code"], 126);

    // 5. A kernel that does not boot: an initramfs without /init panics the
    //    kernel; the error names the console log and shows its last lines.
    let home_guest = std::fs::read_dir(env.home.join("guest"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("vmlinux").is_file())
        .expect("unpacked guest image")
        .path();
    let mut empty = voidbox_guest_image::initramfs::Initramfs::new();
    empty.add_dir("etc", 0o755).unwrap();
    let empty_path = env.work.path().join("empty.cpio");
    std::fs::write(&empty_path, empty.to_newc()).unwrap();
    let spec = env.spec(
        "panic.yaml",
        &format!(
            "api_version: v1\nkind: workflow\nname: panic\nsandbox:\n  kernel: {}\n  initramfs: {}\n  timeout_secs: 60\nworkflow:\n  steps: [{{name: a, shell: 'true'}}]\n",
            home_guest.join("vmlinux").display(),
            empty_path.display()
        ),
    );
    let o = env.voidbox(&["run", "--boot-timeout", "120", "--file", &spec]);
    assert_eq!(o.status.code(), Some(123));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("console log: "), "{e}");
    assert!(e.contains("Kernel panic"), "{e}");
    assert_eq!(
        env.run_dirs_left(),
        0,
        "no run directory is left after failures"
    );

    // 6. exec: one command, stdin attached (piped), exit code passed through.
    let mut child = Command::new(BIN)
        .args([
            "exec",
            "--",
            "sh",
            "-c",
            "read line; echo \"got $line\"; exit 7",
        ])
        .env("VOIDBOX_HOME", &env.home)
        .env("VOIDBOX_DEB_CACHE", support::deb_cache())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"data\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "got data\n");

    // 6b. shell: a real PTY on our side, a PTY shell in the guest, exit code passed through.
    shell_through_a_pty(&env.home);

    // 7. Ctrl-C during a step stops the VM and cleans up.
    let spec = env.spec(
        "sleep.yaml",
        "api_version: v1\nkind: workflow\nname: sleeper\nworkflow:\n  steps:\n    - {name: sleep, shell: 'sleep 300'}\n",
    );
    let mut child = env.start_until_step_started(&spec);
    std::thread::sleep(std::time::Duration::from_secs(1));
    // SAFETY: kill(2) on our own child; no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(env.run_dirs_left(), 0, "Ctrl-C removed the run directory");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let home = env.home.display().to_string();
    let stray = processes_naming(&[&home, "sleeper-"]);
    assert!(stray.is_empty(), "stray processes: {stray:?}");

    // 8. SIGKILL (no cleanup code runs): the VM and the lane die with voidbox, and the
    //    next start removes the run and lane directories it left (audit D3).
    let lane_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("voidbox-lane-"))
            .map(|e| e.path())
            .collect()
    };
    let lanes_before = lane_dirs();
    let spec = env.spec(
        "killed.yaml",
        "api_version: v1\nkind: workflow\nname: killed\nworkflow:\n  steps:\n    - {name: sleep, shell: 'sleep 300'}\n",
    );
    let mut child = env.start_until_step_started(&spec);
    let left_behind: Vec<PathBuf> = lane_dirs()
        .into_iter()
        .filter(|d| !lanes_before.contains(d))
        .collect();
    assert_eq!(left_behind.len(), 1, "one lane directory for the run");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stray = processes_naming(&[&home, "killed-"]);
        if stray.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes outlived the killed voidbox: {stray:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(env.run_dirs_left(), 1, "SIGKILL left its run directory");
    let o = env.voidbox(&["run", "--file", hello.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        env.run_dirs_left(),
        0,
        "the next run swept the stale run directory"
    );
    assert!(
        !left_behind[0].exists(),
        "the next run swept the stale lane directory {}",
        left_behind[0].display()
    );

    // 9. A guest that hangs (its /init sleeps, no agent ever answers) meets the boot
    //    timeout: a boot error naming the console log, and nothing left behind.
    let mut hang = voidbox_guest_image::initramfs::Initramfs::new();
    hang.add_dir("bin", 0o755).unwrap();
    hang.add_file_from("bin/busybox", 0o755, Path::new("/bin/busybox"))
        .unwrap();
    hang.add_file(
        "init",
        0o755,
        b"#!/bin/busybox sh\necho VOIDBOX-HANG-INIT\nexec /bin/busybox sleep 100000\n".to_vec(),
    )
    .unwrap();
    let hang_path = env.work.path().join("hang.cpio");
    std::fs::write(&hang_path, hang.to_newc()).unwrap();
    let spec = env.spec(
        "hang.yaml",
        &format!(
            "api_version: v1\nkind: workflow\nname: hang\nsandbox:\n  kernel: {}\n  initramfs: {}\nworkflow:\n  steps: [{{name: a, shell: 'true'}}]\n",
            home_guest.join("vmlinux").display(),
            hang_path.display()
        ),
    );
    let o = env.voidbox(&["run", "--boot-timeout", "45", "--file", &spec]);
    assert_eq!(o.status.code(), Some(123));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("did not answer"), "{e}");
    assert!(
        e.contains("VOIDBOX-HANG-INIT"),
        "the console tail is shown: {e}"
    );
    assert_eq!(
        env.run_dirs_left(),
        0,
        "no run directory after a boot timeout"
    );

    // 10. Guest hardening (audit A1/A4/A6) seen from a workload: no new privileges,
    //     link protection on, the exec's own cgroup limits; and an output that is a
    //     planted symlink to /etc is refused by the agent, not followed.
    let spec = env.spec(
        "harden.yaml",
        r#"api_version: v1
kind: workflow
name: harden
sandbox:
  outputs: [{guest: /work/etc-link, host: etc-out}]
workflow:
  steps:
    - name: checks
      shell: |
        grep NoNewPrivs /proc/self/status
        echo "hardlinks=$(cat /proc/sys/fs/protected_hardlinks) symlinks=$(cat /proc/sys/fs/protected_symlinks)"
        echo "self_oom=$(cat /proc/self/oom_score_adj)"
        echo "pids_max=$(cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/pids.max)"
        mkdir -p /work && ln -s /etc /work/etc-link
"#,
    );
    let o = env.voidbox(&["run", "--json", "--file", &spec]);
    let ev = events(&o);
    let out: String = ev
        .iter()
        .filter(|e| e["event"] == "output" && e["step"] == "checks")
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect();
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("hardlinks=1 symlinks=1"), "{out}");
    assert!(out.contains("self_oom=0"), "{out}");
    assert!(out.contains("pids_max=4096"), "{out}");
    assert_ne!(o.status.code(), Some(0));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("without following links"), "{e}");
    assert!(!env.work.path().join("etc-out/passwd").exists());

    // 11. Chained links in an output that resolve outside its host directory (H3).
    std::fs::write(env.work.path().join("secret"), "host secret\n").unwrap();
    let spec = env.spec(
        "chained.yaml",
        "api_version: v1\nkind: workflow\nname: chained\nsandbox:\n  outputs: [{guest: /work/out, host: chain-out}]\nworkflow:\n  steps:\n    - {name: plant, shell: 'mkdir -p /work/out/a && ln -s .. /work/out/a/b && ln -s a/b/a/b/../secret /work/out/x'}\n",
    );
    let o = env.voidbox(&["run", "--file", &spec]);
    assert_ne!(o.status.code(), Some(0));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("resolves outside"), "{e}");
    assert!(std::fs::symlink_metadata(env.work.path().join("chain-out/x")).is_err());

    // 12. An output far over sandbox.max_output_mb (a 20 GiB sparse file) fails early
    //     with the limit named, and leaves no staging file (H1).
    let spec = env.spec(
        "cap.yaml",
        "api_version: v1\nkind: workflow\nname: cap\nsandbox:\n  max_output_mb: 1\n  outputs: [{guest: /work/out, host: cap-out}]\nworkflow:\n  steps:\n    - {name: big, shell: 'mkdir -p /work/out && truncate -s 20G /work/out/big'}\n",
    );
    let o = env.voidbox(&["run", "--file", &spec]);
    assert_ne!(o.status.code(), Some(0));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("sandbox.max_output_mb"), "{e}");
    assert!(!env.work.path().join("cap-out/big").exists());
    let staging: Vec<_> = std::fs::read_dir(env.work.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".voidbox-output-")
        })
        .collect();
    assert!(staging.is_empty(), "staging files left: {staging:?}");
    assert_eq!(env.run_dirs_left(), 0);

    // 13. A 64 MiB output file arrives whole (streamed to disk, checked by sha256).
    let spec = env.spec(
        "big-out.yaml",
        "api_version: v1\nkind: workflow\nname: bigout\nsandbox:\n  outputs: [{guest: /work/out, host: big-out}]\nworkflow:\n  steps:\n    - {name: make, shell: 'mkdir -p /work/out && head -c 67108864 /dev/urandom > /work/out/big && sha256sum /work/out/big'}\n",
    );
    let o = env.voidbox(&["run", "--file", &spec]);
    assert_eq!(o.status.code(), Some(0));
    let guest_sha = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let big = env.work.path().join("big-out/big");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 64 << 20);
    let host_sha = Command::new("sha256sum").arg(&big).output().unwrap();
    let host_sha = String::from_utf8_lossy(&host_sha.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(host_sha, guest_sha, "the output arrived intact");
    assert_eq!(guest_sha.len(), 64);
}

/// `voidbox shell` on a pseudo-terminal, typed into like a person would.
fn shell_through_a_pty(home: &Path) {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty(3) writes two fds into the given ints; the other pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let io = |fd: &OwnedFd| std::process::Stdio::from(fd.try_clone().unwrap());
    let mut child = Command::new(BIN)
        .args(["shell"])
        .env("VOIDBOX_HOME", home)
        .env("VOIDBOX_DEB_CACHE", support::deb_cache())
        .env("TERM", "dumb")
        .stdin(io(&slave))
        .stdout(io(&slave))
        .stderr(io(&slave))
        .spawn()
        .unwrap();
    drop(slave);
    let mut writer = std::fs::File::from(master.try_clone().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = seen.clone();
    let mut reader = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once every slave fd is closed (the child exited).
        while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    // The guest shell's prompt ($ for the unprivileged default user).
    while !text().contains("$ ") {
        assert!(
            std::time::Instant::now() < deadline,
            "no shell prompt: {}",
            text()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "shell ended: {}",
            text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    writer
        .write_all(b"echo \"$((6 * 7))-from-the-guest\"; exit 3\r")
        .unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the shell did not exit: {}", text());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = text();
    assert!(out.contains("42-from-the-guest"), "{out}");
    assert_eq!(status.code(), Some(3), "{out}");
}
