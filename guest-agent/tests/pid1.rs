//! The agent as PID 1 inside a fresh mount + pid namespace on the host (as
//! root: ext4 cannot be mounted in a user namespace), with loop-mounted ext4
//! images standing in for the base image disk and a skill disk. It listens on
//! an abstract Unix socket (`--listen unix:@NAME`) instead of vsock, and is
//! told which loop device stands for which serial (`--disk SERIAL=DEV`):
//! everything else is the real boot path.

mod common;

use common::{argv, Raw};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use voidbox_guest_agent::boot_data::DiskMount;
use voidbox_guest_agent::protocol::auth::{fresh_nonce, Secret};
use voidbox_guest_agent::protocol::{ExecRequest, UserSpec};
use voidbox_guest_agent::BootData;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An ext4 image built from `dir` and attached read-only to a loop device.
struct Loop {
    dev: String,
    img: PathBuf,
}

impl Loop {
    fn new(dir: &Path, img: PathBuf, size: &str) -> Self {
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(dir)
            .arg(&img)
            .arg(size));
        let dev = run(Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(&img))
        .trim()
        .to_string();
        Self { dev, img }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// The test build of the agent is dynamically linked (the guest gets the
/// static musl build): copy its loader and libraries into the fake initramfs.
fn copy_shared_libs(bin: &str, root: &Path) {
    let ldd = run(Command::new("ldd").arg(bin));
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
}

/// Saves the host's link-protection sysctls and writes them back on drop.
struct SysctlRestore(Vec<(&'static str, String)>);

impl SysctlRestore {
    fn save() -> Self {
        Self(
            ["fs/protected_hardlinks", "fs/protected_symlinks"]
                .into_iter()
                .filter_map(|n| {
                    let v = std::fs::read_to_string(format!("/proc/sys/{n}")).ok()?;
                    Some((n, v))
                })
                .collect(),
        )
    }
}

impl Drop for SysctlRestore {
    fn drop(&mut self) {
        for (n, v) in &self.0 {
            let _ = std::fs::write(format!("/proc/sys/{n}"), v);
        }
    }
}

struct Pid1(Child);

impl Drop for Pid1 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn as_root(mut r: ExecRequest) -> ExecRequest {
    r.user = Some(UserSpec { uid: 0, gid: 0 });
    r
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).to_string()
}

/// The "initramfs": just the agent (boot data is added by the caller).
fn make_initramfs(tmp: &Path) -> PathBuf {
    let initramfs = tmp.join("initramfs");
    std::fs::create_dir_all(initramfs.join(".voidbox")).unwrap();
    let agent = env!("CARGO_BIN_EXE_voidbox-guest-agent");
    std::fs::copy(agent, initramfs.join("init")).unwrap();
    copy_shared_libs(agent, &initramfs);
    initramfs
}

/// Starts the agent as PID 1 of a new mount + pid namespace rooted at `initramfs`.
fn start_pid1(initramfs: &Path, name: &str, disks: &[(&str, &str)]) -> Pid1 {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--pid",
        "--fork",
        // A failing test kills unshare; its PID 1 must not outlive it.
        "--kill-child",
        "--propagation",
        "private",
        "--root",
    ])
    .arg(initramfs)
    .args(["/init", "--listen", &format!("unix:@{name}")]);
    for (serial, dev) in disks {
        cmd.args(["--disk", &format!("{serial}={dev}")]);
    }
    Pid1(cmd.spawn().expect("unshare (util-linux) is installed"))
}

#[test]
fn agent_as_pid1_enters_the_base_image_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let initramfs = make_initramfs(tmp.path());

    // The base image: busybox and the usual directories.
    let base = tmp.path().join("base");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    for d in ["etc", "tmp", "proc", "sys", "dev", "run", "workspace"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
    for tool in [
        "sh", "cat", "echo", "ls", "id", "touch", "grep", "hostname", "sleep", "ps", "stat", "tr",
    ] {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(tool)).unwrap();
    }
    std::fs::write(base.join("etc/marker"), b"base image\n").unwrap();
    // A setuid-root binary in the image (coreutils `id`: busybox would drop
    // privileges by itself) must not raise the workload's privileges.
    std::fs::copy("/usr/bin/id", base.join("bin/suid-id")).unwrap();
    copy_shared_libs("/usr/bin/id", &base);
    std::fs::set_permissions(
        base.join("bin/suid-id"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let skill = tmp.path().join("skill");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(skill.join("skill.txt"), b"skill data\n").unwrap();
    let base_disk = Loop::new(&base, tmp.path().join("base.img"), "32M");
    let skill_disk = Loop::new(&skill, tmp.path().join("skill.img"), "8M");
    // A second skill at a path none of whose directories exist in the base image.
    let skill2_disk = Loop::new(&skill, tmp.path().join("skill2.img"), "8M");
    assert!(!base.join("opt").exists());

    let secret = Secret::generate();
    let mut data = BootData::new(&secret);
    data.disks.base_serial = Some("base0".into());
    data.disks.skills.push(DiskMount {
        serial: "skill0".into(),
        path: "/skills/s".into(),
        fstype: "ext4".into(),
    });
    data.disks.skills.push(DiskMount {
        serial: "skill1".into(),
        path: "/opt/tools/skill2".into(),
        fstype: "ext4".into(),
    });
    data.hostname = Some("pid1-test".into());
    let boot = initramfs.join(".voidbox/boot.json");
    std::fs::write(&boot, data.to_json()).unwrap();

    // PID 1 sets global sysctls (fs.* is not namespaced): put the host's back afterwards.
    let _sysctls = SysctlRestore::save();
    let name = format!("voidbox-pid1-test-{}", &fresh_nonce()[..12]);
    let mut pid1 = start_pid1(
        &initramfs,
        &name,
        &[
            ("base0", &base_disk.dev),
            ("skill0", &skill_disk.dev),
            ("skill1", &skill2_disk.dev),
        ],
    );

    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let t = Instant::now();
    let stream = loop {
        match UnixStream::connect_addr(&addr) {
            Ok(s) => break s,
            Err(_) if t.elapsed() < Duration::from_secs(20) => {
                if let Ok(Some(st)) = pid1.0.try_wait() {
                    panic!("PID 1 exited early: {st}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("agent never listened: {e}"),
        }
    };
    let mut c = Raw::new(stream);
    c.auth(&secret);

    // The boot data was deleted before the service listened.
    assert!(!boot.exists(), "boot.json must be deleted");

    let (out, _, st) = c.exec(1, as_root(argv(&["cat", "/proc/mounts"])), None);
    assert_eq!(st.code, Some(0));
    let mounts = text(out);
    assert!(
        mounts.lines().any(|l| l.starts_with("overlay / overlay")),
        "{mounts}"
    );
    let skill_line = mounts
        .lines()
        .find(|l| l.contains(" /skills/s "))
        .unwrap_or_else(|| panic!("{mounts}"));
    assert!(
        skill_line.contains("ext4") && skill_line.contains("ro,nosuid,nodev"),
        "{skill_line}"
    );
    let skill2_line = mounts
        .lines()
        .find(|l| l.contains(" /opt/tools/skill2 "))
        .unwrap_or_else(|| panic!("skill at a path absent from the image: {mounts}"));
    assert!(skill2_line.contains("ro,nosuid,nodev"), "{skill2_line}");
    // The image root is nosuid and nodev.
    let overlay = mounts
        .lines()
        .find(|l| l.starts_with("overlay / overlay"))
        .unwrap();
    assert!(
        overlay.contains("nosuid") && overlay.contains("nodev"),
        "{overlay}"
    );
    for m in [
        " /proc proc",
        " /sys sysfs",
        " /dev devtmpfs",
        " /dev/pts devpts",
        " /tmp tmpfs",
        " /run tmpfs",
        " /sys/fs/cgroup cgroup2",
    ] {
        assert!(mounts.contains(m), "missing {m}: {mounts}");
    }

    let (out, _, _) = c.exec(
        2,
        argv(&["cat", "/etc/marker", "/skills/s/skill.txt"]),
        None,
    );
    assert_eq!(text(out), "base image\nskill data\n");
    let (out, _, _) = c.exec(40, argv(&["cat", "/opt/tools/skill2/skill.txt"]), None);
    assert_eq!(text(out), "skill data\n");
    let (out, _, _) = c.exec(3, argv(&["hostname"]), None);
    assert_eq!(text(out), "pid1-test\n");
    let (out, _, _) = c.exec(
        4,
        argv(&["sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '"]),
        None,
    );
    assert!(text(out).contains("/init"));

    // The root is writable through the overlay; the base disk is not, and the skill is read-only.
    let (_, _, st) = c.exec(
        5,
        as_root(argv(&[
            "sh",
            "-c",
            "echo x > /workspace/new && cat /workspace/new",
        ])),
        None,
    );
    assert_eq!(st.code, Some(0));
    let (_, err, st) = c.exec(6, as_root(argv(&["touch", "/skills/s/nope"])), None);
    assert_ne!(st.code, Some(0), "skill must be read-only: {}", text(err));

    // The workload (unprivileged by default) can read neither the boot data nor the agent.
    let (out, _, st) = c.exec(7, argv(&["sh", "-c", "id -u; cat /.voidbox/boot.json; cat /proc/1/environ; cat /proc/2/environ; cat /proc/2/mem"]), None);
    assert_eq!(text(out), "65534\n");
    assert_ne!(st.code, Some(0));

    // A1: the setuid bit survived into the image, but the workload keeps its
    // uid, runs with NoNewPrivs, and the link-protection sysctls are on.
    let (out, err, st) = c.exec(
        8,
        argv(&[
            "sh",
            "-c",
            "stat -c %a /bin/suid-id; /bin/suid-id -u; grep NoNewPrivs /proc/self/status; \
             cat /proc/sys/fs/protected_hardlinks /proc/sys/fs/protected_symlinks",
        ]),
        None,
    );
    assert_eq!(st.code, Some(0), "{}", text(err));
    assert_eq!(text(out), "4755\n65534\nNoNewPrivs:\t1\n1\n1\n");

    // Orphans are reaped: after a burst of short background jobs, no zombies remain.
    for i in 0..5 {
        let (_, _, st) = c.exec(10 + i, argv(&["sh", "-c", "(sleep 0.01 &) ; true"]), None);
        assert_eq!(st.code, Some(0));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (out, _, _) = c.exec(
        20,
        argv(&[
            "sh",
            "-c",
            "grep -l '^State:.Z' /proc/[0-9]*/status || true",
        ]),
        None,
    );
    assert_eq!(text(out), "", "zombies left");

    // Shutdown resets: PID 1 (and with it the namespace) ends.
    c.send(30, &voidbox_guest_agent::protocol::Message::Shutdown);
    let t = Instant::now();
    loop {
        if let Some(st) = pid1.0.try_wait().unwrap() {
            eprintln!("PID 1 ended: {st}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "PID 1 did not end after shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The base image was never written.
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&base_disk.img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// A skill mount path through a symlink of the (untrusted) image is refused:
/// `/escape -> /etc` must not put the skill on `/etc/s`. PID 1 treats it as
/// fatal and ends before serving anything.
#[test]
fn skill_mount_through_an_image_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let initramfs = make_initramfs(tmp.path());
    let base = tmp.path().join("base");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "run"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("/etc", base.join("escape")).unwrap();
    let skill = tmp.path().join("skill");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(skill.join("skill.txt"), b"skill data\n").unwrap();
    let base_disk = Loop::new(&base, tmp.path().join("base.img"), "16M");
    let skill_disk = Loop::new(&skill, tmp.path().join("skill.img"), "8M");

    let secret = Secret::generate();
    let mut data = BootData::new(&secret);
    data.disks.base_serial = Some("base0".into());
    data.disks.skills.push(DiskMount {
        serial: "skill0".into(),
        path: "/escape/s".into(),
        fstype: "ext4".into(),
    });
    std::fs::write(initramfs.join(".voidbox/boot.json"), data.to_json()).unwrap();
    let name = format!("voidbox-pid1-symlink-{}", &fresh_nonce()[..12]);
    let mut pid1 = start_pid1(
        &initramfs,
        &name,
        &[("base0", &base_disk.dev), ("skill0", &skill_disk.dev)],
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let t = Instant::now();
    loop {
        if UnixStream::connect_addr(&addr).is_ok() {
            panic!("the agent served although the skill path went through a symlink");
        }
        if let Some(st) = pid1.0.try_wait().unwrap() {
            eprintln!("PID 1 ended as expected: {st}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "PID 1 neither served nor ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
