//! The jailer's two processes. The parent (outside the new PID namespace)
//! prepares the host side, forks, then only waits: for the VMM's exit, for
//! SIGTERM/SIGINT (forwarded), and for its own parent's death (a pidfd; the
//! VMM is killed). The child becomes PID 1 of the new namespace, builds the
//! jail and execs the VMM. The jailer starts no thread, so `fork` is safe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{JailError, Result, NEEDS_ROOT};
use super::{cgroup, elf, limits, root, JailArgs, JailSpec, JAIL_ERROR};

/// Environment variables passed to the VMM (all others are dropped).
pub const KEPT_ENV: &[&str] = &["VOIDBOX_VMM_LOG"];
/// How long a VMM gets after a forwarded SIGTERM/SIGINT before SIGKILL (as
/// PID 1 it ignores signals it has no handler for).
const TERM_GRACE: Duration = Duration::from_secs(2);

fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(JailError::last_os(
            format!("watch process {pid} (pidfd_open)"),
            "Linux 5.3 or later is needed",
        ));
    }
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn close_fds_above_2() {
    // SAFETY: close_range(2) on fds this process does not use past this point.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } == 0 {
        return;
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: closing an fd we inherited and do not use.
        unsafe { libc::close(fd) };
    }
}

/// Checks the VMM command line; returns the binary.
fn check_command(argv: &[String]) -> Result<PathBuf> {
    let bin = PathBuf::from(&argv[0]);
    if !bin.is_absolute() || !bin.is_file() {
        return Err(JailError::BadCommand(format!(
            "the VMM `{}` is not an existing absolute path: pass the full path of voidbox-vmm after `--`",
            bin.display()
        )));
    }
    if argv.iter().any(|a| a == "--exit-with-parent") {
        return Err(JailError::BadCommand(
            "drop --exit-with-parent from the VMM's arguments: in the jail the VMM is PID 1 and cannot see its parent; the jailer itself watches its parent and kills the VMM when it exits".into(),
        ));
    }
    Ok(bin)
}

fn cstrings<I: IntoIterator<Item = String>>(items: I) -> Result<Vec<CString>> {
    items
        .into_iter()
        .map(|s| {
            CString::new(s)
                .map_err(|_| JailError::BadCommand("an argument contains a NUL byte".into()))
        })
        .collect()
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

pub fn run(args: &JailArgs) -> Result<u8> {
    close_fds_above_2();
    let spec = JailSpec::load(&args.spec)?;
    let bin = check_command(&args.vmm)?;
    let mut exec_files = vec![bin.clone()];
    exec_files.extend(elf::runtime_files(&bin)?);
    // SAFETY: prctl(2) with integer arguments: no core dumps or ptrace by
    // other users of the jailer (execve resets it for the VMM).
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };

    // SAFETY: getppid(2) has no preconditions.
    let ppid = unsafe { libc::getppid() };
    let parent = pidfd_open(ppid)?;
    // SAFETY: as above.
    if unsafe { libc::getppid() } != ppid {
        return Err(JailError::BadCommand(
            "the process that started the jail already exited".into(),
        ));
    }
    // A mount namespace of our own for the cgroup2 mount (when we make one).
    // SAFETY: unshare(2) with namespace flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(JailError::last_os("create a mount namespace", NEEDS_ROOT));
    }
    // SAFETY: mount(2) making every mount of our new namespace private.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(JailError::last_os(
            "make the mount namespace private",
            NEEDS_ROOT,
        ));
    }
    let exposed = root::prepare(&spec.mounts, &exec_files, spec.user)?;
    let cg = cgroup::setup(&spec.limits);

    let argv = cstrings(args.vmm.iter().cloned())?;
    let env = cstrings(
        KEPT_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}"))),
    )?;
    let bin_c = CString::new(bin.as_os_str().as_encoded_bytes())
        .map_err(|_| JailError::BadCommand("NUL in the VMM path".into()))?;

    let watched = [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD];
    let mask = sigset(&watched);
    // SAFETY: sigprocmask(2) with a valid set; signals then arrive on the signalfd.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
    // SAFETY: signalfd(2) with a valid set; returns a new fd or -1.
    let sfd = unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC) };
    if sfd < 0 {
        return Err(JailError::last_os("create a signalfd", ""));
    }
    // SAFETY: the fd was just created and is owned by nobody else.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
    // The child checks this pipe's read end: HUP means the jailer is gone.
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2(2) fills two fds.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::last_os("create a pipe", ""));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (alive_r, alive_w) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };

    // SAFETY: unshare(2) with namespace flags only; the next fork's child is PID 1 there.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(JailError::last_os("create a PID namespace", NEEDS_ROOT));
    }
    // SAFETY: the process is single-threaded (the jailer starts no thread), so the
    // child may run ordinary code until it execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(JailError::last_os("fork the jailed process", ""));
    }
    if pid == 0 {
        drop(alive_w);
        drop(sfd);
        drop(parent);
        let err = child(
            &spec,
            &exposed,
            cg.cgroup.as_ref(),
            &cg.summary,
            &alive_r,
            &mask,
            &bin_c,
            &argv,
            &env,
        );
        eprintln!("voidbox vmm-jail: error: {err}");
        // SAFETY: _exit(2) ends the child without running the parent's atexit state.
        unsafe { libc::_exit(i32::from(JAIL_ERROR)) };
    }
    drop(alive_r);
    let code = wait_child(pid, &parent, &sfd);
    drop(alive_w);
    if let Some(c) = &cg.cgroup {
        c.remove();
    }
    Ok(exit_like(code))
}

/// The jailed child: returns only on failure.
#[allow(clippy::too_many_arguments)]
fn child(
    spec: &JailSpec,
    exposed: &[root::Exposed],
    cg: Option<&cgroup::Cgroup>,
    cg_summary: &str,
    alive: &OwnedFd,
    mask: &libc::sigset_t,
    bin: &CString,
    argv: &[CString],
    env: &[CString],
) -> JailError {
    // SAFETY: prctl(2) with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut pfd = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd, no wait.
    if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 {
        return JailError::BadCommand("the jailer exited before the VMM started".into());
    }
    if let Some(cg) = cg {
        if let Err(e) = cg.join() {
            return JailError::io(format!("join the VMM cgroup {}", cg.path.display()), e);
        }
    }
    // SAFETY: unshare(2) with namespace flags only.
    if unsafe {
        libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET,
        )
    } != 0
    {
        return JailError::last_os("create mount, IPC, UTS and network namespaces", NEEDS_ROOT);
    }
    let host = b"voidbox-vmm";
    // SAFETY: sethostname(2) with a valid buffer, in our own UTS namespace.
    unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    let pivot = match root::enter(exposed, spec.user) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let rl = match limits::apply_rlimits(&spec.limits, spec.user) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let who = match limits::drop_privileges(spec.user) {
        Ok(s) => s,
        Err(e) => return e,
    };
    eprintln!(
        "voidbox vmm-jail: namespaces mnt,pid,net,ipc,uts; root read-only tmpfs with {} paths ({}); {who}; rlimits {rl}; {cg_summary}",
        exposed.len(),
        match pivot {
            root::Pivot::PivotRoot => "pivot_root, old root detached",
            root::Pivot::MoveChroot => "pivot_root refused: moved onto / and chrooted",
        }
    );
    // SAFETY: signal(2)/sigprocmask(2): the VMM starts with default SIGPIPE and no blocked signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::sigprocmask(libc::SIG_UNBLOCK, mask, std::ptr::null_mut());
    }
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: execve(2) with NUL-terminated arrays of valid C strings.
    unsafe { libc::execve(bin.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    JailError::last_os(
        format!(
            "start {}",
            Path::new(bin.to_str().unwrap_or("the VMM")).display()
        ),
        "",
    )
}

/// How the child ended.
enum Ended {
    Code(i32),
    Signal(i32),
}

fn wait_child(pid: libc::pid_t, parent: &OwnedFd, sfd: &OwnedFd) -> Ended {
    let child = pidfd_open(pid).ok();
    let mut kill_at: Option<Instant> = None;
    let mut forwarded = None;
    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: parent.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(c) = &child {
            fds.push(libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = match kill_at {
            Some(t) => t.saturating_duration_since(Instant::now()).as_millis() as i32,
            None if child.is_none() => 100,
            None => -1,
        };
        // SAFETY: poll(2) on valid pollfds for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if fds[0].revents != 0 {
            eprintln!(
                "voidbox vmm-jail: the process that started the jail exited; stopping the VM"
            );
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if fds[1].revents != 0 {
            // SAFETY: reading one signalfd_siginfo into a buffer of its size.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let n = unsafe {
                libc::read(
                    sfd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            let sig = info.ssi_signo as i32;
            if n > 0 && (sig == libc::SIGTERM || sig == libc::SIGINT) {
                // SAFETY: kill(2) of our own child.
                unsafe { libc::kill(pid, sig) };
                kill_at.get_or_insert(Instant::now() + TERM_GRACE);
                forwarded.get_or_insert(sig);
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ended::Code(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                // Killed after a forwarded SIGTERM/SIGINT: end as that signal asked.
                return Ended::Signal(forwarded.unwrap_or(libc::WTERMSIG(status)));
            }
        } else if r < 0 {
            return Ended::Code(i32::from(JAIL_ERROR));
        }
    }
}

/// The jailer's exit status: the child's code, or death by the child's signal.
fn exit_like(ended: Ended) -> u8 {
    match ended {
        Ended::Code(c) => u8::try_from(c).unwrap_or(JAIL_ERROR),
        Ended::Signal(sig) => {
            let set = sigset(&[sig]);
            // SAFETY: restore the default action, unblock and raise: the jailer
            // dies of the same signal as the VMM.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(sig);
            }
            128u8.saturating_add(sig as u8)
        }
    }
}
