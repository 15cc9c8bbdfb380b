//! Dying with the parent: with `--exit-with-parent` the VMM watches the
//! process that started it through a pidfd and exits as soon as it is gone,
//! so a crashed or SIGKILLed `voidbox` never leaves a VM running. A pidfd
//! watches the whole process; `PR_SET_PDEATHSIG` would fire when the
//! spawning *thread* ends, which in a daemon can be any worker thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::seccomp::{self, SeccompError};

/// Why the parent cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// pidfd_open or the thread failed.
    #[error("cannot watch the parent process (--exit-with-parent needs Linux 5.3 or later for pidfd_open): {0}")]
    Io(#[source] io::Error),
    /// The watcher thread could not install its seccomp filter.
    #[error("parent watcher: {0}")]
    Seccomp(#[source] SeccompError),
}

/// Start watching the parent process; exit the VMM when it ends. The
/// watcher thread installs its seccomp filter (when filters are enabled)
/// before it starts polling.
pub fn exit_with_parent() -> Result<(), WatchError> {
    // SAFETY: getppid(2) has no preconditions.
    let ppid = unsafe { libc::getppid() };
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, ppid, 0) };
    if fd < 0 {
        return Err(WatchError::Io(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: as above.
    if unsafe { libc::getppid() } != ppid {
        // Reparented before the pidfd existed: the parent is already gone.
        parent_gone();
    }
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            let filtered = seccomp::apply(seccomp::Thread::ParentWatch);
            let ok = filtered.is_ok();
            let _ = ready_tx.send(filtered);
            if ok {
                watch(&pidfd);
            }
        })
        .map_err(WatchError::Io)?;
    match ready.recv() {
        Ok(filtered) => filtered.map_err(WatchError::Seccomp),
        Err(_) => Err(WatchError::Io(io::Error::other(
            "the watcher thread ended before it was ready",
        ))),
    }
}

fn watch(pidfd: &OwnedFd) {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
        if rc > 0 {
            parent_gone();
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            tracing::error!(
                "cannot watch the parent process: {}",
                io::Error::last_os_error()
            );
            return;
        }
    }
}

fn parent_gone() -> ! {
    // The parent may have taken our stderr pipe with it: a failed log write
    // can panic (in the log subscriber), and must not stop the exit.
    let _ = std::panic::catch_unwind(|| {
        tracing::error!("the process that started this VM exited; stopping the VM")
    });
    std::process::exit(crate::exit_code::VMM_ERROR)
}
