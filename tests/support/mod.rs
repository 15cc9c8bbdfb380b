//! Shared by the end-to-end VMM tests and the boot benchmark: the guest kernel, the test
//! initramfs (busybox + guest modules + the static probe), helper builds, VMM command lines.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use voidbox::lane::{CommandSpec, LaneConfig, Launcher};
use voidbox_guest_image::initramfs::{Compression, Initramfs};
use voidbox_guest_image::kernel::{FetchOptions, GuestKernel, KernelStore, GUEST_MODULES};

/// Guest cmdline options that keep a stock kernel fast under nesting (DESIGN.md §8).
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet pci=off initcall_blacklist=cmos_init panic=-1";

/// The test guest's `/init`: loads the modules, then does what `vbt.mode` says and prints
/// `VBT key value` lines that the host checks.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
P() { echo "VBT $*"; }
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }
MODE=$(arg vbt.mode)
if [ "$MODE" = marker ]; then
  echo "VBT-MARKER-UP"
  sleep "$(arg vbt.idle)"
  reboot -f
fi
while read -r m; do insmod "/lib/modules/$m" || P "insmod-failed $m"; done < /modules.load
P "cmdline $(cat /proc/cmdline)"
P "nproc $(nproc)"
P "memtotal_kb $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
sleep 0.2
for d in /sys/block/vd*; do
  [ -e "$d" ] || continue
  s=$(cat "$d/serial" 2>/dev/null)
  P "disk $(basename "$d") serial=$s ro=$(cat "$d/ro") sectors=$(cat "$d/size")"
  [ "$s" = vbt-ro ] && RO=/dev/$(basename "$d")
  [ "$s" = vbt-rw ] && RW=/dev/$(basename "$d")
done
if [ -n "$RO" ]; then
  P "ro-head $(head -c 18 "$RO")"
  P "ro-sha256 $(sha256sum < "$RO" | cut -d' ' -f1)"
  echo GUEST-WRITE | dd of="$RO" bs=512 count=1 conv=notrunc,fsync 2>/dev/null && P "ro-write-accepted" || P "ro-write-refused-by-kernel"
  # Bypass the guest kernel's read-only flag: the VMM itself must refuse the write.
  blockdev --setrw "$RO" 2>/dev/null
  dd if=/dev/zero of="$RO" bs=4096 count=1 oflag=direct conv=notrunc,fsync 2>/dev/null && P "ro-direct-write-accepted" || P "ro-direct-write-refused"
fi
if [ -n "$RW" ]; then
  printf 'VOIDBOX-RW-WRITTEN-BY-GUEST\n' | dd of="$RW" bs=512 seek=1 conv=notrunc,fsync 2>/dev/null && P "rw-write-done" || P "rw-write-failed"
fi
LEN=$(arg vbt.len)
if [ -n "$LEN" ]; then
  # Both directions at once on two busy connections (the host side retries CONNECT
  # until the guest listens): this is what exposed the lost credit update (audit S1).
  /bin/probe vsock-serve 1024 "$LEN" 11 22 > /tmp/serve.out 2>&1 &
  SERVE=$!
  [ "$(arg vbt.send)" = 0 ] || /bin/probe vsock-send 2 5000 "$LEN" 33 | sed 's/^/VBT /'
  wait $SERVE
  sed 's/^/VBT /' /tmp/serve.out
fi
if [ "$MODE" = panic ]; then
  P "panicking"
  echo c > /proc/sysrq-trigger
  sleep 30; P "still-alive-after-panic"
fi
P "done"
reboot -f
"#;

/// Runs a command on the host and returns stdout, panicking with its stderr on failure.
pub fn host(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn target_dir() -> PathBuf {
    // Integration tests live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds (if needed) and returns a binary of a workspace package. A separate target dir
/// avoids waiting on the lock of the `cargo test` that runs us.
fn build_bin(package: &str, bin: &str, musl: bool) -> PathBuf {
    let dir = target_dir().join("e2e-helpers");
    let mut cmd = Command::new(cargo());
    cmd.args(["build", "--release", "-q", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(&dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if musl {
        cmd.args(["--target", "x86_64-unknown-linux-musl"]);
    }
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        st.success(),
        "building {bin} failed (musl target: `rustup target add x86_64-unknown-linux-musl`)"
    );
    let sub = if musl {
        "x86_64-unknown-linux-musl/release"
    } else {
        "release"
    };
    dir.join(sub).join(bin)
}

/// The voidbox-vmm binary: `VOIDBOX_VMM_BIN` if set, else built here.
pub fn vmm_bin() -> PathBuf {
    match std::env::var_os("VOIDBOX_VMM_BIN") {
        Some(p) => PathBuf::from(p),
        None => build_bin("voidbox-vmm", "voidbox-vmm", false),
    }
}

/// The static test probe: `VOIDBOX_PROBE_BIN` if set, else built here for musl.
pub fn probe_bin() -> PathBuf {
    match std::env::var_os("VOIDBOX_PROBE_BIN") {
        Some(p) => PathBuf::from(p),
        None => build_bin("voidbox-guest-probe", "voidbox-guest-probe", true),
    }
}

/// The guest kernel from the store (fetched on first use).
pub fn kernel() -> GuestKernel {
    require_setup();
    KernelStore::default_store()
        .ensure(&FetchOptions::from_env())
        .unwrap_or_else(|e| panic!("guest kernel: {e}"))
}

/// The deb cache scripts/setup.sh filled (the pinned kernel, busybox-static). Pass it to
/// `voidbox` children as `VOIDBOX_DEB_CACHE` when they get their own `VOIDBOX_HOME`.
pub fn deb_cache() -> PathBuf {
    voidbox_guest_image::kernel::default_deb_cache()
}

/// Nothing is downloaded inside `cargo test`: what the tests need was fetched by
/// scripts/setup.sh, and a test fails (never skips) without it.
pub fn require_setup() {
    let cache = deb_cache();
    let pin =
        voidbox_guest_image::kernel::KernelPin::read(&cache).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        pin.is_some(),
        "no pinned guest kernel in {}: run scripts/setup.sh first",
        cache.display()
    );
}

/// Writes the test initramfs (gzip) to `dest`.
pub fn build_test_initramfs(kernel: &GuestKernel, probe: &Path, dest: &Path) {
    let mut img = Initramfs::new();
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "the test guest needs a static busybox: apt-get install -y busybox-static"
    );
    img.add_file_from("bin/busybox", 0o755, busybox).unwrap();
    img.add_file_from("bin/probe", 0o755, probe).unwrap();
    for d in ["proc", "sys", "dev", "tmp"] {
        img.add_dir(d, 0o755).unwrap();
    }
    img.add_char_device("dev/console", 0o600, 5, 1).unwrap();
    let mut load = String::new();
    for m in kernel.modules(GUEST_MODULES).unwrap() {
        let rel = m.rel_path.to_string_lossy().into_owned();
        img.add_file_from(&format!("lib/modules/{rel}"), 0o644, &m.path)
            .unwrap();
        load.push_str(&rel);
        load.push('\n');
    }
    img.add_file("modules.load", 0o644, load.into_bytes())
        .unwrap();
    img.add_file("init", 0o755, INIT.as_bytes().to_vec())
        .unwrap();
    img.write_to(dest, Compression::Gzip).unwrap();
}

/// Lane settings for the tests: the lane binary of this package, `shared` writable.
pub fn lane_config(shared: &Path) -> LaneConfig {
    let mut cfg = LaneConfig::new(vec![
        env!("CARGO_BIN_EXE_voidbox").to_string(),
        "lane-l2".to_string(),
    ]);
    cfg.shared_dirs.push(shared.to_path_buf());
    cfg
}

/// Tries to install QEMU (`apt-get install -y qemu-system-x86`); the error says why not.
pub fn install_qemu() -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(["install", "-y", "-q", "qemu-system-x86"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "apt-get install qemu-system-x86 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// QEMU for the nested lane, installed when missing. A test that needs it fails (never
/// skips) when it cannot be had: a missing prerequisite is a broken setup, not a pass.
pub fn require_qemu() {
    let runs = || {
        Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs() {
        return;
    }
    match install_qemu() {
        Ok(()) if runs() => {}
        Ok(()) => panic!("qemu-system-x86_64 was installed but does not run"),
        Err(why) => panic!(
            "qemu-system-x86_64 is missing and cannot be installed ({why}): run scripts/setup.sh"
        ),
    }
}

/// The launcher for this host. When QEMU is missing it is installed first; the test fails
/// when that is impossible.
pub fn launcher(shared: &Path) -> Launcher {
    match Launcher::for_host(|| lane_config(shared)) {
        Ok(l) => l,
        Err(voidbox::lane::LaneError::Missing { what, .. }) if what.starts_with("QEMU") => {
            require_qemu();
            Launcher::for_host(|| lane_config(shared))
                .unwrap_or_else(|e| panic!("cannot start the launcher: {e}"))
        }
        Err(e) => panic!("cannot start the launcher: {e}"),
    }
}

/// One guest boot.
#[derive(Debug, Clone)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub mem_mib: u32,
    pub vcpus: u32,
    /// (path, read_only, serial)
    pub disks: Vec<(PathBuf, bool, String)>,
    pub vsock_uds: Option<PathBuf>,
    pub serial: PathBuf,
}

/// voidbox-vmm command line for a boot (`reboot=k`: i8042 reset ends the VMM).
pub fn voidbox_vmm_command(vmm: &Path, b: &Boot) -> CommandSpec {
    let mut argv = vec![
        vmm.display().to_string(),
        "--kernel".into(),
        b.kernel.display().to_string(),
        "--initrd".into(),
        b.initrd.display().to_string(),
        "--cmdline".into(),
        format!("{} reboot=k", b.cmdline),
        "--mem-mib".into(),
        b.mem_mib.to_string(),
        "--vcpus".into(),
        b.vcpus.to_string(),
        "--serial".into(),
        b.serial.display().to_string(),
    ];
    for (p, ro, serial) in &b.disks {
        argv.push("--disk".into());
        argv.push(format!(
            "{}{},serial={serial}",
            p.display(),
            if *ro { ",ro" } else { "" }
        ));
    }
    if let Some(u) = &b.vsock_uds {
        argv.extend([
            "--vsock-uds".into(),
            u.display().to_string(),
            "--cid".into(),
            "3".into(),
        ]);
    }
    CommandSpec::new(argv)
}

/// QEMU microvm command line for the same boot (`reboot=t`: microvm has no i8042; vsock
/// through vhost-vsock with guest CID 3).
pub fn qemu_microvm_command(b: &Boot) -> CommandSpec {
    let mut argv: Vec<String> = [
        "qemu-system-x86_64",
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-monitor",
        "none",
    ]
    .map(String::from)
    .to_vec();
    argv.extend([
        "-m".into(),
        b.mem_mib.to_string(),
        "-smp".into(),
        b.vcpus.to_string(),
        "-kernel".into(),
        b.kernel.display().to_string(),
        "-initrd".into(),
        b.initrd.display().to_string(),
        "-append".into(),
        format!("{} reboot=t", b.cmdline),
        "-serial".into(),
        format!("file:{}", b.serial.display()),
    ]);
    for (i, (p, ro, serial)) in b.disks.iter().enumerate() {
        argv.push("-drive".into());
        argv.push(format!(
            "id=d{i},file={},format=raw,if=none{}",
            p.display(),
            if *ro { ",readonly=on" } else { "" }
        ));
        argv.push("-device".into());
        argv.push(format!("virtio-blk-device,drive=d{i},serial={serial}"));
    }
    if b.vsock_uds.is_some() {
        argv.extend(["-device".into(), "vhost-vsock-device,guest-cid=3".into()]);
    }
    CommandSpec::new(argv)
}

/// `VBT key value` lines of a console log, in order.
pub fn vbt_lines(console: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once("VBT "))
        .map(|(_, rest)| match rest.split_once(' ') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (rest.to_string(), String::new()),
        })
        .collect()
}

/// The value of the first `VBT key` line.
pub fn vbt<'a>(lines: &'a [(String, String)], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A real `docker-registry` bound to 127.0.0.1 on a free port (storage in a temp dir),
/// killed and reaped on drop.
pub struct LocalRegistry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    pub fn start() -> LocalRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry is missing: run scripts/setup.sh");
        let reg = LocalRegistry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not start on {}",
                reg.addr
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        reg
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
