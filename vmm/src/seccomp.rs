//! Seccomp filters, one per kind of VMM thread, kept here as data: each
//! thread kind lists the system calls it makes and, where it is cheap, the
//! arguments it makes them with (the vCPU may only `ioctl(KVM_RUN)`, the vsock
//! worker may only open `AF_UNIX` stream sockets, no thread may map
//! executable memory). Anything else kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`, seen as SIGSYS), and `NO_NEW_PRIVS` is set.
//!
//! Each thread installs its own filter as its first step, before it touches
//! guest data ([`apply`]); the filters are compiled once by [`enable`], which
//! the `voidbox-vmm` binary calls at start unless `--seccomp off` (or
//! `VOIDBOX_VMM_SECCOMP=off`) asks it not to. The library alone installs
//! nothing, so in-process users such as unit tests run unfiltered.
//!
//! A filter is inherited by the threads its thread creates and stacks with
//! their own, so a filtered thread never creates threads here: device threads
//! are started by the main thread when the machine is built, not by the vCPU
//! that sets DRIVER_OK, and the main thread installs its filter only after it
//! started the vCPUs. `docs/security.md` lists every allowed call with the
//! reason for it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Environment variable that turns the filters off like `--seccomp off`.
pub const ENV: &str = "VOIDBOX_VMM_SECCOMP";

/// The kinds of VMM threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Thread {
    /// The main thread once the machine is built and the vCPUs run: waits
    /// for the guest to end the VM, stops the vCPUs, tears devices down.
    Main,
    /// A vCPU thread: KVM_RUN and the port and MMIO exits it dispatches.
    Vcpu,
    /// The virtio-blk device thread: its queue against the image file.
    VirtioBlock,
    /// The virtio-vsock device thread: its queues against host Unix sockets.
    VirtioVsock,
    /// The `--exit-with-parent` watcher: polls a pidfd, exits the process.
    ParentWatch,
}

impl Thread {
    /// Every thread kind.
    pub const ALL: [Thread; 5] = [
        Thread::Main,
        Thread::Vcpu,
        Thread::VirtioBlock,
        Thread::VirtioVsock,
        Thread::ParentWatch,
    ];

    /// The name used in messages and in `docs/security.md`.
    pub fn name(self) -> &'static str {
        match self {
            Thread::Main => "main",
            Thread::Vcpu => "vcpu",
            Thread::VirtioBlock => "virtio-blk",
            Thread::VirtioVsock => "virtio-vsock",
            Thread::ParentWatch => "parent-watch",
        }
    }

    /// The system calls this kind of thread may make, with their argument
    /// conditions (an empty rule list allows every argument).
    pub fn rules(self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
        let build = |source| SeccompError::Build {
            thread: self.name(),
            source,
        };
        let common = common_rules().map_err(build)?;
        let own = match self {
            Thread::Main => main_rules(),
            Thread::Vcpu => vcpu_rules(),
            Thread::VirtioBlock => block_rules(),
            Thread::VirtioVsock => vsock_rules(),
            Thread::ParentWatch => parent_watch_rules(),
        }
        .map_err(build)?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (nr, more) in common.into_iter().chain(own) {
            match rules.entry(nr) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(more);
                }
                // Listed twice: either rule may match (no rule = any arguments).
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    if e.get().is_empty() || more.is_empty() {
                        e.get_mut().clear();
                    } else {
                        e.get_mut().extend(more);
                    }
                }
            }
        }
        Ok(rules)
    }

    /// This thread kind's filter as a BPF program: allow what [`Thread::rules`]
    /// lists, kill the process on anything else.
    pub fn program(self) -> Result<BpfProgram, SeccompError> {
        let build = |source| SeccompError::Build {
            thread: self.name(),
            source,
        };
        let filter = SeccompFilter::new(
            self.rules()?,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(build)?;
        filter.try_into().map_err(build)
    }
}

/// Why filters could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule list does not compile (a bug in this module).
    #[error("cannot build the seccomp filter of the {thread} thread: {source} (a voidbox-vmm bug; report it, and use --seccomp off only to debug)")]
    Build {
        /// The thread kind.
        thread: &'static str,
        /// The compiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of the {thread} thread: {source} (the host kernel needs seccomp filters, CONFIG_SECCOMP_FILTER; --seccomp off runs without them, for debugging only)")]
    Install {
        /// The thread kind.
        thread: &'static str,
        /// The error from prctl or seccomp.
        #[source]
        source: seccompiler::Error,
    },
}

/// Whether `voidbox-vmm` installs its filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every thread runs under its filter (the default).
    #[default]
    On,
    /// No filters: for debugging only.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            other => Err(format!("seccomp mode must be on or off, not {other:?}")),
        }
    }
}

/// The compiled filters, once [`enable`] ran.
static FILTERS: OnceLock<BTreeMap<Thread, BpfProgram>> = OnceLock::new();

/// Compile every thread kind's filter so [`apply`] installs them from now on,
/// and replace the panic hook with one the filters allow. Call it once,
/// early, from the thread that builds the machine.
pub fn enable() -> Result<(), SeccompError> {
    let mut programs = BTreeMap::new();
    for thread in Thread::ALL {
        programs.insert(thread, thread.program()?);
    }
    if FILTERS.set(programs).is_ok() {
        std::panic::set_hook(Box::new(report_panic));
    }
    Ok(())
}

/// The panic hook under the filters: one line on stderr. std's default hook
/// may capture a backtrace (RUST_BACKTRACE), which opens files and would
/// turn a device worker's panic, which the worker loop survives, into SIGSYS.
fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    use std::io::Write;
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "voidbox-vmm: thread '{name}' panicked{at}: {message}"
    );
}

/// Whether [`enable`] ran.
pub fn enabled() -> bool {
    FILTERS.get().is_some()
}

/// Install `thread`'s filter on the calling thread if [`enable`] ran (it
/// stays for the thread's life and passes to threads it creates).
pub fn apply(thread: Thread) -> Result<(), SeccompError> {
    match FILTERS.get().and_then(|p| p.get(&thread)) {
        Some(program) => install(thread, program),
        None => Ok(()),
    }
}

/// Install `program` (built by [`Thread::program`] for `thread`) on the
/// calling thread, whether or not [`enable`] ran. Sets `NO_NEW_PRIVS` first.
pub fn install(thread: Thread, program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        thread: thread.name(),
        source,
    })?;
    tracing::debug!("seccomp filter of the {} thread installed", thread.name());
    Ok(())
}

/// Tests of the device code run their device threads under the filters
/// when this variable is `on` (set by the seccomp tests, which re-run them).
#[cfg(test)]
pub(crate) const TEST_ENV: &str = "VOIDBOX_VMM_TEST_SECCOMP";

/// Called by device tests before they create a device: enables the filters
/// when [`TEST_ENV`] asks for it.
#[cfg(test)]
pub(crate) fn enable_for_tests_if_requested() {
    if std::env::var_os(TEST_ENV).is_some_and(|v| v == "on") {
        enable().expect("seccomp filters compile");
    }
}

type Rules = Result<Vec<(i64, Vec<SeccompRule>)>, seccompiler::BackendError>;

/// Allow `nr` with any arguments.
fn any(nr: libc::c_long) -> (i64, Vec<SeccompRule>) {
    (nr, Vec::new())
}

/// Allow `nr` when one of `rules` matches.
fn when(nr: libc::c_long, rules: Vec<SeccompRule>) -> (i64, Vec<SeccompRule>) {
    (nr, rules)
}

/// 32-bit argument `arg` equals `value`.
fn eq(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// The bits `mask` of 32-bit argument `arg` equal `value`.
fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
}

/// One rule: all of `conditions`.
fn rule(
    conditions: Vec<Result<SeccompCondition, seccompiler::BackendError>>,
) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conditions.into_iter().collect::<Result<_, _>>()?)
}

/// Mapping memory without PROT_EXEC (argument 2 of mmap and mprotect).
fn no_exec() -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    Ok(vec![rule(vec![masked(2, libc::PROT_EXEC as u64, 0)])?])
}

/// What every thread needs: locks and channels, memory for the allocator,
/// eventfd and log writes, signal return, and ending the thread or process.
fn common_rules() -> Rules {
    Ok(vec![
        any(libc::SYS_futex),
        any(libc::SYS_read),
        any(libc::SYS_write),
        any(libc::SYS_close),
        // F_GETFD: debug builds of std check an fd is open before closing it.
        when(
            libc::SYS_fcntl,
            vec![rule(vec![eq(1, libc::F_GETFD as u64)])?],
        ),
        when(libc::SYS_mmap, no_exec()?),
        when(libc::SYS_mprotect, no_exec()?),
        any(libc::SYS_munmap),
        any(libc::SYS_madvise),
        any(libc::SYS_brk),
        any(libc::SYS_rt_sigreturn),
        // A wait interrupted by SIGSTOP/SIGCONT or a ptrace attach resumes.
        any(libc::SYS_restart_syscall),
        // Panic messages name the thread's id (a worker panic must reach
        // catch_unwind and DEVICE_NEEDS_RESET, not kill the VMM).
        any(libc::SYS_gettid),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_sigaltstack),
        any(libc::SYS_sched_yield),
        any(libc::SYS_clock_gettime),
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
    ])
}

/// The main thread after the vCPUs started.
fn main_rules() -> Rules {
    // SAFETY: getpid(2) has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let kick = crate::vcpu::kick_signal() as u64;
    Ok(vec![
        // pthread_kill of a vCPU with the kick signal, in this process only.
        when(libc::SYS_tgkill, vec![rule(vec![eq(0, pid), eq(2, kick)])?]),
        // musl's pthread_kill: tkill(tid, sig), the kick signal only.
        when(libc::SYS_tkill, vec![rule(vec![eq(1, kick)])?]),
        any(libc::SYS_getpid),
        any(libc::SYS_nanosleep),
        any(libc::SYS_clock_nanosleep),
        any(libc::SYS_unlink),
        any(libc::SYS_unlinkat),
    ])
}

/// A vCPU thread.
fn vcpu_rules() -> Rules {
    Ok(vec![
        when(libc::SYS_ioctl, vec![rule(vec![eq(1, KVM_RUN)])?]),
        // EventFd::try_clone of queue events at DRIVER_OK; musl follows
        // F_DUPFD_CLOEXEC with F_SETFD(FD_CLOEXEC).
        when(
            libc::SYS_fcntl,
            vec![
                rule(vec![eq(1, libc::F_DUPFD_CLOEXEC as u64)])?,
                rule(vec![
                    eq(1, libc::F_SETFD as u64),
                    eq(2, libc::FD_CLOEXEC as u64),
                ])?,
            ],
        ),
    ])
}

/// Waiting on a device's fds.
fn epoll_rules() -> Vec<(i64, Vec<SeccompRule>)> {
    vec![
        any(libc::SYS_epoll_create1),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_epoll_wait),
        any(libc::SYS_epoll_pwait),
    ]
}

/// The virtio-blk device thread.
fn block_rules() -> Rules {
    let mut rules = epoll_rules();
    rules.extend([
        any(libc::SYS_pread64),
        any(libc::SYS_pwrite64),
        any(libc::SYS_fdatasync),
    ]);
    Ok(rules)
}

/// The virtio-vsock device thread.
fn vsock_rules() -> Rules {
    let mut rules = epoll_rules();
    rules.extend([
        any(libc::SYS_accept4),
        // Connections to <uds>_<port>: Unix stream sockets only.
        when(
            libc::SYS_socket,
            vec![rule(vec![
                eq(0, libc::AF_UNIX as u64),
                masked(1, 0xf, libc::SOCK_STREAM as u64),
            ])?],
        ),
        any(libc::SYS_connect),
        any(libc::SYS_recvfrom),
        any(libc::SYS_sendto),
        any(libc::SYS_shutdown),
        // std's per-thread hash keys (first HashMap the worker builds).
        any(libc::SYS_getrandom),
        // set_nonblocking on accepted sockets.
        when(libc::SYS_ioctl, vec![rule(vec![eq(1, FIONBIO)])?]),
    ]);
    Ok(rules)
}

/// The `--exit-with-parent` watcher.
fn parent_watch_rules() -> Rules {
    Ok(vec![any(libc::SYS_poll), any(libc::SYS_ppoll)])
}

/// `FIONBIO` (an unsigned long with glibc, an int with musl).
#[allow(clippy::unnecessary_cast)]
const FIONBIO: u64 = libc::FIONBIO as u64;

/// `KVM_RUN` = `_IO(KVMIO, 0x80)` (kvm-ioctls does not export its numbers).
const KVM_RUN: u64 = ((kvm_bindings::KVMIO as u64) << 8) | 0x80;

#[cfg(test)]
mod tests;
