//! The `voidbox-vmm` binary: flags, exit statuses and error messages, and a
//! whole boot path (ELF load, zero page, cmdline, ACPI, virtio slot, serial
//! file, reset/panic exits) on this host's KVM with a tiny ELF payload.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use voidbox_vmm::exit_code;

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voidbox-vmm"))
        .args(args)
        .output()
        .expect("run voidbox-vmm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A minimal static ELF64 "kernel" whose entry (64-bit, zero page in RSI)
/// runs `code` loaded at 1 MiB.
fn elf_payload(dir: &Path, name: &str, code: &[u8]) -> PathBuf {
    const LOAD: u64 = 0x10_0000;
    let mut f = Vec::new();
    f.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(0x3eu16.to_le_bytes()); // x86_64
    f.extend(1u32.to_le_bytes());
    f.extend(LOAD.to_le_bytes()); // e_entry
    f.extend(64u64.to_le_bytes()); // e_phoff
    f.extend(0u64.to_le_bytes()); // e_shoff
    f.extend(0u32.to_le_bytes());
    f.extend(64u16.to_le_bytes());
    f.extend(56u16.to_le_bytes());
    f.extend(1u16.to_le_bytes()); // one program header
    f.extend([0u8; 6]);
    f.extend(1u32.to_le_bytes()); // PT_LOAD
    f.extend(5u32.to_le_bytes()); // R+X
    f.extend(0x1000u64.to_le_bytes()); // p_offset
    f.extend(LOAD.to_le_bytes());
    f.extend(LOAD.to_le_bytes());
    f.extend((code.len() as u64).to_le_bytes());
    f.extend((code.len() as u64).to_le_bytes());
    f.extend(0x1000u64.to_le_bytes());
    f.resize(0x1000, 0);
    f.extend(code);
    let path = dir.join(name);
    std::fs::write(&path, f).unwrap();
    path
}

const SERIAL_DX: [u8; 4] = [0x66, 0xba, 0xf8, 0x03];
const NEWLINE_AND_RESET: [u8; 8] = [0xb0, b'\n', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4];

/// Prints the NUL-terminated cmdline found through the zero page, then resets.
fn echo_cmdline_code() -> Vec<u8> {
    let mut c = SERIAL_DX.to_vec();
    c.extend([0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00]); // mov ebx,[rsi+0x228] (cmd_line_ptr)
    c.extend([
        0x8a, 0x03, 0x84, 0xc0, 0x74, 0x06, 0xee, 0x48, 0xff, 0xc3, 0xeb, 0xf4,
    ]);
    c.extend(NEWLINE_AND_RESET);
    c
}

#[test]
fn help_explains_every_flag() {
    let o = vmm(&["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--mem-mib",
        "--vcpus",
        "--disk",
        "--vsock-uds",
        "--cid",
        "--serial",
        "--config",
        "--exit-with-parent",
        "--seccomp",
        "Exit status",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["--kernel"],
        &["--kernel", "k", "--vcpus", "x"],
        &["--kernel", "k", "--disk", "a,bogus"],
        &["--kernel", "k", "--cid", "5"],
        &["--config", "c.json", "--kernel", "k"],
    ] {
        let o = vmm(args);
        assert_eq!(
            o.status.code(),
            Some(exit_code::USAGE),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn vmm_errors_exit_1_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let junk = d.join("junk");
    std::fs::write(&junk, [0x55u8; 1024]).unwrap();
    let k = elf_payload(d, "k.elf", &[0xf4]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--kernel".into(), d.join("nope").display().to_string()],
            "cannot read kernel",
        ),
        (
            vec!["--kernel".into(), junk.display().to_string()],
            "is not a Linux kernel",
        ),
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--mem-mib".into(),
                "16".into(),
            ],
            "too small",
        ),
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--mem-mib".into(),
                "100000000".into(),
            ],
            "lower --mem-mib",
        ),
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--disk".into(),
                d.join("no.img").display().to_string(),
            ],
            "does not exist",
        ),
        (
            vec![
                "--kernel".into(),
                k.display().to_string(),
                "--initrd".into(),
                d.join("no.cpio").display().to_string(),
            ],
            "cannot read initrd",
        ),
        (
            vec!["--config".into(), junk.display().to_string()],
            "not a valid VM configuration",
        ),
    ];
    for (args, needle) in cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = vmm(&argv);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(exit_code::VMM_ERROR),
            "{args:?}: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.contains("error")).count(),
            1,
            "{err}"
        );
    }
}

#[test]
fn elf_payload_sees_cmdline_with_slot_entries_and_reset_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = elf_payload(d, "echo.elf", &echo_cmdline_code());
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let initrd = d.join("extra.cpio");
    std::fs::write(&initrd, b"070701").unwrap();
    let console = d.join("console.log");
    let o = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "hello-from-cmdline",
        "--vcpus",
        "2",
        "--mem-mib",
        "128",
        "--disk",
        &format!("{},ro,serial=id1", disk.display()),
        "--serial",
        console.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(exit_code::GUEST_STOPPED),
        "{}",
        stderr(&o)
    );
    let out = std::fs::read_to_string(&console).unwrap();
    assert_eq!(
        out,
        "hello-from-cmdline virtio_mmio.device=4K@0xd0000000:5\n"
    );
}

/// A minimal bzImage (boot protocol 2.15, one setup sector) whose 64-bit entry, 0x200 bytes
/// into the protected-mode part loaded at 1 MiB, runs `code`.
fn bzimage_payload(dir: &Path, name: &str, code: &[u8]) -> PathBuf {
    let mut f = vec![0u8; 2 * 512];
    f[0x1f1] = 1; // setup_sects
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 0x01; // LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x236..0x238].copy_from_slice(&0x0001u16.to_le_bytes()); // XLF_KERNEL_64
    let mut pm = vec![0xf4u8; 0x200]; // the 32-bit entry: never used
    pm.extend(code);
    f.extend(pm);
    let path = dir.join(name);
    std::fs::write(&path, f).unwrap();
    path
}

#[test]
fn bzimage_payload_boots_through_the_zero_page() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = bzimage_payload(d, "echo.bzImage", &echo_cmdline_code());
    let initrd = d.join("extra.cpio");
    std::fs::write(&initrd, b"070701").unwrap();
    let console = d.join("console.log");
    let o = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "from-bzimage",
        "--serial",
        console.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(exit_code::GUEST_STOPPED),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "from-bzimage\n");
}

#[test]
fn memory_above_the_hole_is_in_the_e820_map() {
    // 3.25 GiB: RAM below the 32-bit hole plus 256 MiB from 4 GiB, so the
    // zero page's e820 map has 4 entries (low, ACPI area, below hole, high).
    let dir = tempfile::tempdir().unwrap();
    let mut code = SERIAL_DX.to_vec();
    code.extend([0x8a, 0x86, 0xe8, 0x01, 0x00, 0x00]); // mov al,[rsi+0x1e8] (e820_entries)
    code.extend([0x04, b'0', 0xee]); // add al,'0'; out dx,al
    code.extend(NEWLINE_AND_RESET);
    let k = elf_payload(dir.path(), "e820.elf", &code);
    let console = dir.path().join("console.log");
    let o = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--mem-mib",
        "3328",
        "--serial",
        console.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(exit_code::GUEST_STOPPED),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "4\n");
}

#[test]
fn config_file_runs_the_same_vm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = elf_payload(d, "echo.elf", &echo_cmdline_code());
    let console = d.join("console.log");
    let cfg = d.join("vm.json");
    let json = serde_json::json!({
        "kernel": k, "cmdline": "from-json", "mem_mib": 96, "vcpus": 1,
        "serial": {"file": console},
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let o = vmm(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(exit_code::GUEST_STOPPED),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "from-json\n");
}

#[test]
fn console_panic_exits_3_and_shows_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut code = SERIAL_DX.to_vec();
    let text = b"before the panic\nKernel panic - not syncing: payload\n---[ end Kernel panic - not syncing: payload ]---\n";
    for b in text {
        code.extend([0xb0, *b, 0xee]);
    }
    code.extend([0xf4, 0xeb, 0xfd]); // hlt forever
    let k = elf_payload(dir.path(), "panic.elf", &code);
    let o = vmm(&["--kernel", k.to_str().unwrap(), "--serial", "off"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(exit_code::GUEST_PANIC), "{err}");
    assert!(err.contains("before the panic"), "{err}");
    assert!(err.contains("Kernel panic - not syncing: payload"), "{err}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a copy of the VMM as uid/gid 65534, without supplementary groups, from `dir` (one [`dir_for_nobody`]
/// made): the checkout's target directory may be private.
fn vmm_as_nobody(dir: &Path, args: &[&str]) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let exe = dir.join("voidbox-vmm");
    if !exe.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_voidbox-vmm"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(args)
        .output()
        .expect("run setpriv (util-linux)")
}

/// A temporary directory uid 65534 can enter: mode 0755 whatever the umask,
/// under a base whose every ancestor others may search (`$TMPDIR` may be
/// private, as on a CI machine with umask 077).
fn dir_for_nobody() -> tempfile::TempDir {
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

/// A directory uid 65534 can enter, holding a payload kernel with file mode `mode`.
fn kernel_for_nobody(mode: u32) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir_for_nobody();
    let k = elf_payload(dir.path(), "k.elf", &[0xf4]);
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, k)
}

#[test]
fn kvm_missing_or_denied_and_unreadable_kernel_say_how_to_fix() {
    if !is_root() {
        eprintln!(
            "skipped: needs root to hide /dev/kvm (mount namespace) and to drop to uid 65534"
        );
        return;
    }
    let (dir, k) = kernel_for_nobody(0o644);
    // /dev/kvm missing: a private mount namespace with an empty /dev.
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /dev && exec \"$0\" --kernel \"$1\" --serial off")
        .args([env!("CARGO_BIN_EXE_voidbox-vmm"), k.to_str().unwrap()])
        .output()
        .expect("run unshare (util-linux)");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(exit_code::VMM_ERROR), "{err}");
    assert!(err.contains("/dev/kvm does not exist"), "{err}");
    assert!(err.contains("modprobe"), "{err}");
    // /dev/kvm not permitted: an unprivileged uid outside the kvm group.
    let kvm_mode = std::fs::metadata("/dev/kvm").map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode()
    });
    if kvm_mode.is_ok_and(|m| m & 0o006 == 0) {
        let o = vmm_as_nobody(
            dir.path(),
            &["--kernel", k.to_str().unwrap(), "--serial", "off"],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(exit_code::VMM_ERROR), "{err}");
        assert!(err.contains("permission denied opening /dev/kvm"), "{err}");
        assert!(err.contains("kvm group"), "{err}");
    } else {
        eprintln!("/dev/kvm is open to everyone here: the permission case cannot be produced");
    }
    // An unreadable kernel is reported before KVM is touched.
    let (dir2, k) = kernel_for_nobody(0o600);
    let o = vmm_as_nobody(
        dir2.path(),
        &["--kernel", k.to_str().unwrap(), "--serial", "off"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(exit_code::VMM_ERROR), "{err}");
    assert!(err.contains("cannot read kernel"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("permissions"), "{err}");
}

#[test]
fn kernel_directory_and_vsock_in_use_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = vmm(&["--kernel", d.to_str().unwrap(), "--serial", "off"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(exit_code::VMM_ERROR), "{err}");
    assert!(err.contains("is not a Linux kernel"), "{err}");
    let k = elf_payload(d, "k.elf", &[0xf4]);
    let sock = d.join("v.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let o = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--vsock-uds",
        sock.to_str().unwrap(),
        "--serial",
        "off",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(exit_code::VMM_ERROR), "{err}");
    assert!(err.contains("is in use by another process"), "{err}");
}

#[test]
fn pvm_host_gets_the_guest_kernel_warning() {
    // Independent of the library's own check: read the flags here.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = Path::new("/sys/module/kvm_pvm").exists() && !hw;
    let dir = tempfile::tempdir().unwrap();
    let code = [SERIAL_DX.as_slice(), NEWLINE_AND_RESET.as_slice()].concat();
    let k = elf_payload(dir.path(), "reset.elf", &code);
    let o = vmm(&["--kernel", k.to_str().unwrap(), "--serial", "off"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(exit_code::GUEST_STOPPED), "{err}");
    assert_eq!(
        err.contains("a PVM-enabled guest kernel is required"),
        pvm,
        "PVM host: {pvm}; stderr: {err}"
    );
}

#[test]
fn serial_goes_to_stdout_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let k = elf_payload(dir.path(), "echo.elf", &echo_cmdline_code());
    let o = vmm(&["--kernel", k.to_str().unwrap(), "--cmdline", "to-stdout"]);
    assert_eq!(
        o.status.code(),
        Some(exit_code::GUEST_STOPPED),
        "{}",
        stderr(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "to-stdout\n");
}

/// Audit D3: with --exit-with-parent the VM stops when whoever started it is
/// SIGKILLed (no cleanup code runs in the parent).
#[test]
fn exit_with_parent_stops_the_vm_when_the_parent_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let k = elf_payload(dir.path(), "hlt.elf", &[0xf4, 0xeb, 0xfd]); // hlt forever
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" --exit-with-parent --kernel \"$1\" --serial off & echo $!; wait")
        .arg(env!("CARGO_BIN_EXE_voidbox-vmm"))
        .arg(&k)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let vmm_pid: u32 = line.trim().parse().unwrap();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{vmm_pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    // The VM runs (hlt loop) while its parent lives.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(alive(), "the VMM should still run");
    parent.kill().unwrap();
    parent.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "the VMM outlived its parent"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `mov eax, addr; mov dword [rax], value`.
fn mmio_write(addr: u32, value: u32) -> Vec<u8> {
    let mut c = vec![0xb8];
    c.extend(addr.to_le_bytes());
    c.extend([0xc7, 0x00]);
    c.extend(value.to_le_bytes());
    c
}

/// Drives the virtio-mmio devices in the first `devices` slots to
/// DRIVER_OK (VERSION_1 acked, no queue made ready: enough to start their
/// workers), prints "A\n", spins about `cycles` TSC cycles, then resets.
fn activate_devices_then_spin_code(devices: u32, cycles: u64) -> Vec<u8> {
    let mut c = Vec::new();
    for slot in 0..devices {
        let base = 0xd000_0000 + slot * 0x1000;
        for (reg, value) in [
            (0x70, 1),   // Status = ACKNOWLEDGE
            (0x70, 3),   // | DRIVER
            (0x24, 1),   // DriverFeaturesSel = 1
            (0x20, 1),   // DriverFeatures = VERSION_1 (bit 32)
            (0x70, 0xb), // | FEATURES_OK
            (0x70, 0xf), // | DRIVER_OK: the device's worker starts
        ] {
            c.extend(mmio_write(base + reg, value));
        }
    }
    c.extend(SERIAL_DX);
    c.extend([0xb0, b'A', 0xee, 0xb0, b'\n', 0xee]);
    let rdtsc_rax = [0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0]; // rax = tsc
    c.extend(rdtsc_rax);
    c.extend([0x48, 0x89, 0xc3]); // mov rbx,rax
    c.extend([0x48, 0xb9]); // mov rcx,imm64
    c.extend(cycles.to_le_bytes());
    c.extend([0x48, 0x01, 0xcb]); // add rbx,rcx
    let top = c.len();
    c.extend(rdtsc_rax);
    c.extend([0x48, 0x39, 0xd8]); // cmp rax,rbx
    let back = top as isize - (c.len() as isize + 2);
    c.extend([0x72, back as i8 as u8]); // jb top
    c.extend([0xb0, 0xfe, 0xe6, 0x64, 0xf4]); // i8042 reset
    c
}

/// `Name`, `Seccomp`, `Seccomp_filters` and `NoNewPrivs` of each thread of `pid`.
fn thread_security(pid: u32) -> Vec<(String, String, String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        threads.push((
            field("Name:"),
            field("Seccomp:"),
            field("Seccomp_filters:"),
            field("NoNewPrivs:"),
        ));
    }
    threads.sort();
    threads
}

/// Every VMM thread (main, each vCPU, each device worker, the parent
/// watcher) runs under exactly one seccomp filter with NO_NEW_PRIVS, while
/// the guest has both devices activated and a host client is being served;
/// the VM still ends cleanly (devices torn down, vsock socket removed).
#[test]
fn every_vmm_thread_runs_under_its_seccomp_filter() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = elf_payload(
        d,
        "spin.elf",
        &activate_devices_then_spin_code(2, 8_000_000_000),
    );
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 65536]).unwrap();
    let sock = d.join("v.sock");
    let console = d.join("console.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_voidbox-vmm"))
        .args(["--kernel", k.to_str().unwrap(), "--vcpus", "2"])
        .args(["--disk", disk.to_str().unwrap()])
        .args(["--vsock-uds", sock.to_str().unwrap()])
        .args(["--serial", console.to_str().unwrap(), "--exit-with-parent"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&console).unwrap_or_default() != "A\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the payload never activated the devices"
        );
        assert!(child.try_wait().unwrap().is_none(), "the VMM ended early");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // A host client: the vsock worker accepts it and reads its CONNECT line.
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    client.write_all(b"CONNECT 5\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let threads = thread_security(child.id());
    // KVM may attach a kernel worker to the VM's process (kvm-nx-lpage-recovery).
    let names: Vec<&str> = threads
        .iter()
        .map(|t| t.0.as_str())
        .filter(|n| !n.starts_with("kvm-"))
        .collect();
    assert_eq!(
        names,
        [
            "parent-watch",
            "vcpu0",
            "vcpu1",
            "virtio-blk",
            "virtio-vsock",
            "voidbox-vmm"
        ],
        "{threads:?}"
    );
    for (name, mode, filters, nnp) in &threads {
        assert_eq!(
            mode, "2",
            "{name} is not in seccomp filter mode: {threads:?}"
        );
        // One filter each: no thread inherited another thread's filter.
        assert!(filters.is_empty() || filters == "1", "{name}: {threads:?}");
        assert_eq!(nnp, "1", "{name} lacks NO_NEW_PRIVS: {threads:?}");
    }
    drop(client);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(exit_code::GUEST_STOPPED), "{err}");
    assert!(!err.contains("ERROR"), "{err}");
    assert!(!sock.exists(), "the vsock socket was not removed at exit");
}

/// `--seccomp off` (debugging only) runs the VM unfiltered and says so.
#[test]
fn seccomp_off_warns_and_runs_unfiltered() {
    let dir = tempfile::tempdir().unwrap();
    let k = elf_payload(dir.path(), "echo.elf", &echo_cmdline_code());
    let o = vmm(&["--kernel", k.to_str().unwrap(), "--seccomp", "off"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(exit_code::GUEST_STOPPED), "{err}");
    assert!(err.contains("seccomp filters are OFF"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_voidbox-vmm"))
        .args(["--kernel", k.to_str().unwrap()])
        .env("VOIDBOX_VMM_SECCOMP", "off")
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("VOIDBOX_VMM_SECCOMP=off"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        vmm(&["--kernel", "k", "--seccomp", "maybe"]).status.code(),
        Some(exit_code::USAGE)
    );
}
