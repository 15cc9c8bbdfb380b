//! `voidbox vmm-jail` around the real `voidbox-vmm` on this host's KVM, with
//! tiny hand-made ELF payloads as the kernel (no Linux guest, no lane): what
//! the running VMM can see and use, exit statuses through the jail, parent
//! death, signals, and bad specs. Needs root and /dev/kvm (fails without).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use voidbox::jail::JailSpec;
use voidbox_vmm::{DiskConfig, SerialOutput, VmConfig, VsockConfig};

const VOIDBOX: &str = env!("CARGO_BIN_EXE_voidbox");

/// The jail needs root and the VMM needs /dev/kvm: without them the tests fail
/// (a missing prerequisite is a broken setup, not a pass).
fn require_root_and_kvm() {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "the jail tests need root (the jail needs it)");
    assert!(
        Path::new("/dev/kvm").exists(),
        "the jail tests need /dev/kvm"
    );
}

/// `voidbox-vmm`: `VOIDBOX_VMM_BIN`, or next to the `voidbox` under test.
fn vmm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VOIDBOX_VMM_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(VOIDBOX).with_file_name("voidbox-vmm");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p voidbox-vmm` first (or set VOIDBOX_VMM_BIN)",
        p.display()
    );
    p
}

/// A minimal static ELF64 "kernel" whose 64-bit entry runs `code` at 1 MiB.
fn elf_payload(path: &Path, code: &[u8]) {
    const LOAD: u64 = 0x10_0000;
    let mut f = Vec::new();
    f.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend(2u16.to_le_bytes());
    f.extend(0x3eu16.to_le_bytes());
    f.extend(1u32.to_le_bytes());
    f.extend(LOAD.to_le_bytes());
    f.extend(64u64.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(0u32.to_le_bytes());
    f.extend(64u16.to_le_bytes());
    f.extend(56u16.to_le_bytes());
    f.extend(1u16.to_le_bytes());
    f.extend([0u8; 6]);
    f.extend(1u32.to_le_bytes());
    f.extend(5u32.to_le_bytes());
    f.extend(0x1000u64.to_le_bytes());
    f.extend(LOAD.to_le_bytes());
    f.extend(LOAD.to_le_bytes());
    f.extend((code.len() as u64).to_le_bytes());
    f.extend((code.len() as u64).to_le_bytes());
    f.extend(0x1000u64.to_le_bytes());
    f.resize(0x1000, 0);
    f.extend(code);
    std::fs::write(path, f).unwrap();
}

const HLT_LOOP: [u8; 3] = [0xf4, 0xeb, 0xfd];
/// Writes "JAILED\n" to COM1, then resets through the i8042 (exit 0).
fn print_and_reset() -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"JAILED\n" {
        c.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    c.extend([0xb0, 0xfe, 0xe6, 0x64, 0xf4]); // mov al, 0xfe; out 0x64, al; hlt
    c
}

/// One VM's files in a temp dir: payload kernel, a read-only and a writable
/// disk, the run dir with vm.json and jail.json, the console log path.
struct Setup {
    dir: tempfile::TempDir,
    run: PathBuf,
    cfg: VmConfig,
    spec: JailSpec,
    /// The VMM binary the jail runs.
    vmm: PathBuf,
}

impl Setup {
    fn new(code: &[u8]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = d.join("run");
        std::fs::create_dir(&run).unwrap();
        elf_payload(&d.join("kernel.elf"), code);
        for disk in ["ro.img", "rw.img"] {
            std::fs::File::create(d.join(disk))
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
        }
        let mut cfg = VmConfig::new(d.join("kernel.elf"));
        cfg.mem_mib = 64;
        cfg.disks = vec![
            DiskConfig {
                path: d.join("ro.img"),
                read_only: true,
                serial: None,
            },
            DiskConfig {
                path: d.join("rw.img"),
                read_only: false,
                serial: None,
            },
        ];
        cfg.vsock = Some(VsockConfig {
            uds_path: run.join("vsock.sock"),
            guest_cid: 3,
        });
        cfg.serial = SerialOutput::File(d.join("logs/console.log"));
        std::fs::create_dir(d.join("logs")).unwrap();
        let spec = JailSpec::for_vm(&cfg, &run, &run.join("vm.json"));
        let s = Setup {
            dir,
            run,
            cfg,
            spec,
            vmm: vmm_bin(),
        };
        s.write();
        s
    }

    fn write(&self) {
        std::fs::write(
            self.run.join("vm.json"),
            serde_json::to_vec(&self.cfg).unwrap(),
        )
        .unwrap();
        std::fs::write(
            self.run.join("jail.json"),
            serde_json::to_vec(&self.spec).unwrap(),
        )
        .unwrap();
    }

    fn console(&self) -> PathBuf {
        self.dir.path().join("logs/console.log")
    }

    fn jail_cmd(&self) -> Command {
        let mut c = Command::new(VOIDBOX);
        c.env_clear()
            .env("VOIDBOX_VMM_LOG", "warn")
            .env("SECRET_API_KEY", "must-not-reach-the-vmm")
            .arg("vmm-jail")
            .arg("--spec")
            .arg(self.run.join("jail.json"))
            .arg("--")
            .arg(&self.vmm)
            .arg("--config")
            .arg(self.run.join("vm.json"));
        c
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID: look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The jailer started by a shell that also leaks fd 7 into it; returns
/// (shell, jailer pid, VMM pid) once the VMM is running (its socket exists).
fn start_under_shell(s: &Setup) -> (Child, u32, u32) {
    let cmd = s.jail_cmd();
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("exec 7</etc/hostname; \"$@\" & wait")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let sh = sh.spawn().unwrap();
    let jailer = wait_for("the jailer", || children(sh.id()).first().copied());
    let vmm = wait_for("the VMM", || {
        let v = children(jailer).first().copied()?;
        let exe = std::fs::read_link(format!("/proc/{v}/exe")).ok()?;
        (exe.file_name()? == "voidbox-vmm" && s.run.join("vsock.sock").exists()).then_some(v)
    });
    (sh, jailer, vmm)
}

fn tree(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.insert(Path::new("/").join(p.strip_prefix(root).unwrap()));
        if e.file_type().unwrap().is_dir() {
            tree(root, &p, out);
        }
    }
}

#[test]
fn the_running_vmm_sees_only_its_jail() {
    require_root_and_kvm();
    let s = Setup::new(&HLT_LOOP);
    let (mut sh, jailer, vmm) = start_under_shell(&s);

    for ns in ["mnt", "net", "pid", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the VMM shares our {ns} namespace");
    }
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "the VMM is not PID 1 of its namespace: {nspid}"
    );
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000002"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000002"), "{status}");

    let env = std::fs::read(format!("/proc/{vmm}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    let keys: Vec<&str> = env.split('\0').filter(|e| !e.is_empty()).collect();
    assert_eq!(keys, ["VOIDBOX_VMM_LOG=warn"]);

    // Its root: exactly the spec's paths, their parents, the VMM binary and its libraries.
    let root = PathBuf::from(format!("/proc/{vmm}/root"));
    let mut seen = BTreeSet::new();
    tree(&root, &root, &mut seen);
    let mut allowed = BTreeSet::new();
    let mut expose = |p: &Path| {
        for a in p.ancestors().filter(|a| *a != Path::new("/")) {
            allowed.insert(a.to_path_buf());
        }
    };
    for m in &s.spec.mounts {
        expose(&m.path);
    }
    expose(&vmm_bin());
    for f in voidbox::jail::elf::runtime_files(&vmm_bin()).unwrap() {
        expose(&f);
    }
    // Inside the exposed run dir: what the runtime and the VMM put there.
    for f in ["vsock.sock", "jail.json"] {
        expose(&s.run.join(f));
    }
    let extra: Vec<_> = seen.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "the jail shows more than its spec: {extra:?}"
    );
    for m in &s.spec.mounts {
        assert!(
            seen.contains(&m.path),
            "{} is missing in the jail",
            m.path.display()
        );
    }
    assert!(!seen.contains(Path::new("/etc")) && !seen.contains(Path::new("/proc")));

    // File descriptors: stdio, then only KVM, the disks, the console, sockets and anon inodes.
    let console = s.console();
    let files: Vec<PathBuf> = [
        Path::new("/dev/kvm"),
        &s.cfg.disks[0].path,
        &s.cfg.disks[1].path,
        &console,
    ]
    .iter()
    .map(|p| p.to_path_buf())
    .collect();
    for e in std::fs::read_dir(format!("/proc/{vmm}/fd"))
        .unwrap()
        .flatten()
    {
        let fd: u32 = e.file_name().to_str().unwrap().parse().unwrap();
        let target = std::fs::read_link(e.path()).unwrap();
        let t = target.to_string_lossy();
        if fd <= 2 {
            continue;
        }
        assert!(
            files.contains(&target) || t.starts_with("anon_inode:") || t.starts_with("socket:"),
            "unexpected fd {fd} -> {t} (fd 7 was leaked into the jailer on purpose)"
        );
    }

    let limits = std::fs::read_to_string(format!("/proc/{vmm}/limits")).unwrap();
    let limit = |name: &str| -> String {
        let l = limits.lines().find(|l| l.starts_with(name)).unwrap();
        l[name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(limit("Max core file size"), "0");
    assert_eq!(limit("Max open files"), s.spec.limits.nofile.to_string());
    assert_eq!(
        limit("Max file size"),
        s.spec.limits.fsize_bytes.to_string()
    );

    // The jailer's parent dies: the jailer stops the VMM and exits.
    sh.kill().unwrap();
    sh.wait().unwrap();
    wait_for("the VMM to stop after its jailer's parent died", || {
        (!alive(vmm)).then_some(())
    });
    wait_for("the jailer to exit", || (!alive(jailer)).then_some(()));
}

#[test]
fn a_payload_boots_and_exits_through_the_jail_with_the_vmm_status() {
    require_root_and_kvm();
    let s = Setup::new(&print_and_reset());
    let out = s.jail_cmd().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let console = std::fs::read_to_string(s.console()).unwrap();
    assert!(console.contains("JAILED"), "console: {console:?}");
    // The one-line report of what holds.
    let report = err
        .lines()
        .find(|l| l.starts_with("voidbox vmm-jail: namespaces"))
        .unwrap_or_else(|| panic!("no jail report on stderr: {err}"));
    for part in [
        "mnt,pid,net,ipc,uts",
        "pivot_root",
        "uid=0",
        "core=0",
        "cgroup",
    ] {
        assert!(report.contains(part), "{part} not in {report}");
    }

    // A VMM error (a kernel that is not one) comes back with the VMM's code and message.
    std::fs::write(&s.cfg.kernel, b"not a kernel").unwrap();
    let out = s.jail_cmd().output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(voidbox_vmm::exit_code::VMM_ERROR),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_to_the_jailer_stops_the_vmm_and_the_jailer_ends_by_it() {
    require_root_and_kvm();
    let s = Setup::new(&HLT_LOOP);
    let mut jailer = s
        .jail_cmd()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let vmm = wait_for("the VMM", || {
        let v = children(jailer.id()).first().copied()?;
        s.run.join("vsock.sock").exists().then_some(v)
    });
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(jailer.id() as i32, libc::SIGTERM) };
    let status = jailer.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(!alive(vmm));
}

#[test]
fn runs_the_vmm_as_an_unprivileged_user_when_the_spec_names_one() {
    require_root_and_kvm();
    let mut s = Setup::new(&HLT_LOOP);
    s.spec.user = Some(voidbox::jail::JailUser {
        uid: 65534,
        gid: 65534,
    });
    s.write();
    // Shared files (kernel, disks) must be readable by the jail user.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&s.cfg.disks[1].path, std::fs::Permissions::from_mode(0o666)).unwrap();
    // So must the VMM binary, which a private umask builds 0700.
    s.vmm = s.dir.path().join("voidbox-vmm");
    std::fs::copy(vmm_bin(), &s.vmm).unwrap();
    std::fs::set_permissions(&s.vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut sh, _jailer, vmm) = start_under_shell(&s);
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{vmm}/limits")).unwrap();
    assert!(limits.lines().any(|l| l.starts_with("Max processes")
        && l.contains(&s.spec.limits.pids_max.unwrap().to_string())));
    sh.kill().unwrap();
    sh.wait().unwrap();
    wait_for("the VMM to stop", || (!alive(vmm)).then_some(()));
}

fn jail_err(s: &Setup, args: &[&str]) -> Output {
    Command::new(VOIDBOX)
        .arg("vmm-jail")
        .args(args)
        .current_dir(s.dir.path())
        .output()
        .unwrap()
}

#[test]
fn bad_specs_and_commands_fail_with_the_fix() {
    let s = Setup::new(&HLT_LOOP);
    let spec = s.run.join("jail.json").display().to_string();
    let vmm = vmm_bin().display().to_string();
    let cfg = s.run.join("vm.json").display().to_string();
    let check = |args: &[&str], code: i32, wants: &str| {
        let o = jail_err(&s, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(wants), "{args:?}: wanted {wants:?} in {err}");
    };
    check(&["--spec", &spec], 2, "VMM ARGV");
    check(
        &["--spec", "/nope/jail.json", "--", &vmm],
        1,
        "cannot read the jail spec",
    );
    std::fs::write(s.dir.path().join("bad.json"), "{\"mounts\": 5}").unwrap();
    check(&["--spec", "bad.json", "--", &vmm], 1, "invalid jail spec");
    check(
        &["--spec", &spec, "--", "voidbox-vmm"],
        1,
        "not an existing absolute path",
    );
    check(
        &[
            "--spec",
            &spec,
            "--",
            &vmm,
            "--exit-with-parent",
            "--config",
            &cfg,
        ],
        1,
        "drop --exit-with-parent",
    );
    let mut bad = s.spec.clone();
    bad.mounts[1].path = "relative/dir".into();
    std::fs::write(
        s.dir.path().join("rel.json"),
        serde_json::to_vec(&bad).unwrap(),
    )
    .unwrap();
    check(&["--spec", "rel.json", "--", &vmm], 1, "not absolute");
    require_root_and_kvm();
    {
        let mut bad = s.spec.clone();
        bad.mounts.push(voidbox::jail::Mount {
            path: s.dir.path().join("missing.img"),
            access: voidbox::jail::spec::Access::ReadOnly,
            create: None,
        });
        std::fs::write(
            s.dir.path().join("missing.json"),
            serde_json::to_vec(&bad).unwrap(),
        )
        .unwrap();
        check(
            &["--spec", "missing.json", "--", &vmm, "--config", &cfg],
            1,
            "missing.img: cannot be exposed",
        );
    }
}
