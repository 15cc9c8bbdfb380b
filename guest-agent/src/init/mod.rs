//! PID 1: mount the basics, take the boot data, load modules, enter the base
//! image, mount skills, then run the service in a child process and reap
//! orphans. Any fatal error resets the VM (a bare halt would hang the VMM).

mod disks;
mod modules;
mod mounts;
mod sysctl;

use std::os::unix::net::{SocketAddr, UnixListener};
use std::sync::Arc;
use std::time::Duration;
use voidbox_guest_agent::boot_data::{BootData, BOOT_DATA_PATH, MAX_BOOT_DATA_LEN};
use voidbox_guest_agent::service::{Service, ServiceConfig, VsockListener};
use voidbox_guest_agent::VSOCK_PORT;

/// Options the test harness may pass as init arguments.
#[derive(Debug, Default)]
pub struct InitOptions {
    /// Listen on this abstract Unix socket instead of vsock (PID 1 test).
    pub listen_abstract: Option<String>,
    /// Explicit serial → device paths (PID 1 test: loop devices have no serial).
    pub disks: Vec<(String, String)>,
}

fn parse(args: &[String]) -> InitOptions {
    let mut o = InitOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                if let Some(v) = it.next().and_then(|v| v.strip_prefix("unix:@")) {
                    o.listen_abstract = Some(v.to_string());
                }
            }
            "--disk" => {
                if let Some((s, d)) = it.next().and_then(|v| v.split_once('=')) {
                    o.disks.push((s.to_string(), d.to_string()));
                }
            }
            // The kernel passes unknown cmdline words to init; ignore them.
            _ => {}
        }
    }
    o
}

/// Ends the VM: sync, then reset (never a halt).
pub fn reset() -> ! {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on error (e.g. no CAP_SYS_BOOT); exiting PID 1 panics the kernel,
    // which the VMM also reports, so the VM still ends.
    std::process::exit(1);
}

fn fatal(what: &str) -> ! {
    tracing::error!("fatal: {what}; resetting");
    reset();
}

/// PID 1 entry point.
pub fn run(args: &[String]) -> ! {
    let opts = parse(args);
    if let Err(e) = mounts::early() {
        // No /dev/kmsg yet maybe: say it on the console too.
        eprintln!("voidbox-agent: early mounts: {e}");
        fatal(&format!("early mounts: {e}"));
    }
    let kmsg = std::fs::OpenOptions::new().write(true).open("/dev/kmsg");
    match kmsg {
        Ok(f) => {
            crate::log::LineLogger::install(Box::new(f), tracing::Level::INFO, "voidbox-agent")
        }
        Err(_) => crate::log::LineLogger::install(
            Box::new(std::io::sink()),
            tracing::Level::INFO,
            "voidbox-agent",
        ),
    }
    let mut data = match take_boot_data() {
        Ok(d) => d,
        Err(e) => fatal(&e),
    };
    if let Err(e) = modules::load_all(&data.module_params) {
        tracing::warn!("module loading: {e}");
    }
    if let Some(c) = data.clock {
        let ts = libc::timespec {
            tv_sec: c.unix_secs as _,
            tv_nsec: c.nanos as _,
        };
        // SAFETY: a valid timespec pointer.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
            tracing::warn!("clock_settime: {}", std::io::Error::last_os_error());
        }
    }
    let host = data.hostname.clone().unwrap_or_else(|| "voidbox".into());
    // SAFETY: pointer and length of a live byte slice.
    unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    if let Some(serial) = &data.disks.base_serial {
        let dev =
            disks::find(serial, &opts.disks, Duration::from_secs(10)).unwrap_or_else(|e| fatal(&e));
        if let Err(e) = mounts::switch_root(&dev) {
            fatal(&format!("entering the base image on {dev}: {e}"));
        }
    }
    for skill in &data.disks.skills {
        let dev = disks::find(&skill.serial, &opts.disks, Duration::from_secs(10))
            .unwrap_or_else(|e| fatal(&e));
        if let Err(e) = mounts::mount_skill(&dev, &skill.path, &skill.fstype) {
            fatal(&format!(
                "mounting skill {} at {}: {e}",
                skill.serial, skill.path
            ));
        }
    }
    for (name, e) in sysctl::harden() {
        tracing::error!(
            "cannot set sysctl {} to 1: {e}; links the workload plants in shared directories \
             are NOT neutralized (is /proc mounted read-write and is the agent root?)",
            name.replace('/', ".")
        );
    }
    // The OOM killer must pick a workload, never PID 1 or the service (a
    // dead service resets the VM); every exec resets this to 0 before it runs.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!("cannot protect the agent from the OOM killer: {e}");
    }
    let cgroup_root = mounts::cgroups().unwrap_or_else(|e| fatal(&format!("cgroup2: {e}")));
    let config = ServiceConfig::from_boot_data(&data, cgroup_root, Arc::new(|| reset()))
        .unwrap_or_else(|e| fatal(&e.to_string()));
    // Wipe the hex copy of the secret; the service keeps only its own copy.
    voidbox_guest_agent::protocol::auth::wipe(&mut std::mem::take(&mut data.secret).into_bytes());
    drop(data);
    // SAFETY: fork in a single-threaded process; the child only continues in Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => fatal("fork of the service failed"),
        0 => service_main(config, &opts),
        _ => {
            drop(config);
            reap(pid)
        }
    }
}

/// The service process: not dumpable (its memory and /proc entries stay
/// closed to the workload), listening on vsock or the test socket.
fn service_main(config: ServiceConfig, opts: &InitOptions) -> ! {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let service = Service::new(config);
    if let Some(name) = &opts.listen_abstract {
        use std::os::linux::net::SocketAddrExt;
        let addr = SocketAddr::from_abstract_name(name.as_bytes())
            .unwrap_or_else(|e| fatal(&e.to_string()));
        let l =
            UnixListener::bind_addr(&addr).unwrap_or_else(|e| fatal(&format!("bind @{name}: {e}")));
        tracing::info!("listening on unix:@{name}");
        for c in l.incoming().flatten() {
            let svc = service.clone();
            std::thread::spawn(move || {
                if let Err(e) = svc.serve(Box::new(c)) {
                    tracing::warn!("connection ended: {e}");
                }
            });
        }
        fatal("listener failed");
    }
    let l = VsockListener::bind(VSOCK_PORT)
        .unwrap_or_else(|e| fatal(&format!("vsock port {VSOCK_PORT}: {e}")));
    tracing::info!("listening on vsock port {VSOCK_PORT}");
    loop {
        match l.accept() {
            Ok(c) => {
                let svc = service.clone();
                std::thread::spawn(move || {
                    if let Err(e) = svc.serve(Box::new(c)) {
                        tracing::warn!("connection ended: {e}");
                    }
                });
            }
            Err(e) => fatal(&format!("vsock accept: {e}")),
        }
    }
}

/// PID 1's loop: reap every orphan; the service dying is fatal.
fn reap(service: i32) -> ! {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == service {
            fatal(&format!("the service process ended (status {status:#x})"));
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads and deletes the boot data before anything else can run.
fn take_boot_data() -> Result<BootData, String> {
    use std::io::Read;
    let f = std::fs::File::open(BOOT_DATA_PATH)
        .map_err(|e| format!("boot data {BOOT_DATA_PATH}: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_BOOT_DATA_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading boot data: {e}"))?;
    std::fs::remove_file(BOOT_DATA_PATH).map_err(|e| format!("deleting boot data: {e}"))?;
    let _ = std::fs::remove_dir("/.voidbox");
    if bytes.len() as u64 > MAX_BOOT_DATA_LEN {
        return Err(format!(
            "boot data is larger than {MAX_BOOT_DATA_LEN} bytes"
        ));
    }
    let data = BootData::from_json(&bytes).map_err(|e| e.to_string());
    voidbox_guest_agent::protocol::auth::wipe(&mut bytes);
    data
}
