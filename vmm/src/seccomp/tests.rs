//! Each filter kills the process on a call it does not list and lets listed
//! calls through, checked in forked children (the filters are compiled before
//! the fork; the child makes raw system calls only, so the fork is safe in
//! the multi-threaded test process).

use std::collections::BTreeSet;

use super::*;

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Signal(i32),
}

/// Fork; the child installs `program` and runs `call`, then exits 0.
fn in_child(program: &BpfProgram, call: fn()) -> End {
    // SAFETY: the child only makes async-signal-safe system calls (prctl,
    // seccomp, the raw calls in `call`) on memory allocated before the fork,
    // then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match seccompiler::apply_filter(program) {
            Ok(()) => {
                call();
                0
            }
            Err(_) => 100,
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    if libc::WIFSIGNALED(status) {
        End::Signal(libc::WTERMSIG(status))
    } else {
        End::Exited(libc::WEXITSTATUS(status))
    }
}

fn openat() {
    // SAFETY: a NUL-terminated path; the fd, if any, is never used.
    unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/proc/self/status".as_ptr(),
            libc::O_RDONLY,
        )
    };
}

#[test]
fn every_thread_kind_kills_the_process_on_openat() {
    for thread in Thread::ALL {
        let program = thread.program().unwrap();
        assert_eq!(
            in_child(&program, openat),
            End::Signal(libc::SIGSYS),
            "{thread:?}"
        );
        // The same child without the forbidden call runs to its end.
        assert_eq!(in_child(&program, || {}), End::Exited(0), "{thread:?}");
    }
}

#[test]
fn vcpu_ioctls_are_filtered_by_request() {
    let program = Thread::Vcpu.program().unwrap();
    // KVM_RUN on a bad fd fails with EBADF: allowed, the child lives on.
    assert_eq!(
        in_child(&program, || {
            // SAFETY: an ioctl on fd -1 touches no memory.
            unsafe { libc::ioctl(-1, KVM_RUN as _) };
        }),
        End::Exited(0)
    );
    // Any other request kills, e.g. KVM_CREATE_VCPU (_IO(KVMIO, 0x41)).
    assert_eq!(
        in_child(&program, || {
            // SAFETY: as above.
            unsafe { libc::ioctl(-1, 0xae41 as _) };
        }),
        End::Signal(libc::SIGSYS)
    );
    // Device threads may not run the vCPU's ioctl.
    let block = Thread::VirtioBlock.program().unwrap();
    assert_eq!(
        in_child(&block, || {
            // SAFETY: as above.
            unsafe { libc::ioctl(-1, KVM_RUN as _) };
        }),
        End::Signal(libc::SIGSYS)
    );
}

#[test]
fn vsock_sockets_are_unix_streams_only() {
    let program = Thread::VirtioVsock.program().unwrap();
    assert_eq!(
        in_child(&program, || {
            // SAFETY: plain socket(2); the fd is left to _exit.
            unsafe {
                libc::socket(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
        }),
        End::Exited(0)
    );
    assert_eq!(
        in_child(&program, || {
            // SAFETY: as above.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }),
        End::Signal(libc::SIGSYS)
    );
    assert_eq!(
        in_child(&program, || {
            // SAFETY: as above.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) };
        }),
        End::Signal(libc::SIGSYS)
    );
}

#[test]
fn no_thread_maps_executable_memory() {
    for thread in Thread::ALL {
        let program = thread.program().unwrap();
        assert_eq!(
            in_child(&program, || {
                // SAFETY: a fresh anonymous mapping, never used.
                unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
            }),
            End::Signal(libc::SIGSYS),
            "{thread:?}"
        );
    }
}

#[test]
fn at_most_fifty_system_calls_in_all() {
    let mut union = BTreeSet::new();
    for thread in Thread::ALL {
        union.extend(thread.rules().unwrap().into_keys());
    }
    assert!(union.len() <= 50, "{} system calls allowed", union.len());
    // docs/security.md lists each of them with its reason.
    assert_eq!(union.len(), 43, "update the lists in docs/security.md");
}

#[test]
fn mode_parses_on_and_off() {
    assert_eq!("on".parse::<Mode>(), Ok(Mode::On));
    assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
    assert!("no".parse::<Mode>().is_err());
}

/// The device tests (real workers driven through MMIO and real rings, real
/// image files and Unix sockets) re-run in a child process whose device
/// threads install their filters: a call missing from a filter kills the
/// child with SIGSYS.
#[test]
fn device_tests_pass_with_device_threads_filtered() {
    if std::env::var_os(TEST_ENV).is_some() {
        return; // this is the child: do not recurse
    }
    let exe = std::env::current_exe().unwrap();
    for module in [
        "virtio::block::tests::",
        "virtio::vsock::tests::",
        // A worker that panics under its filter still reports DEVICE_NEEDS_RESET.
        "virtio::worker::tests::",
    ] {
        let out = std::process::Command::new(&exe)
            .arg(module)
            .env(TEST_ENV, "on")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{module} with filters: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let ran = stdout
            .lines()
            .find_map(|l| l.strip_prefix("test result: ok. "))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok());
        assert!(ran.is_some_and(|n| n >= 1), "{module}: {stdout}");
    }
}
