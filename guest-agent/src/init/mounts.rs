//! Mounts of PID 1: the basics, the base image under an overlay, skills, cgroup2.

use nix::mount::{mount, MsFlags};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(io::Error::other(format!("mount {fstype} on {target}: {e}"))),
    }
}

/// proc, sys, dev, devpts, tmp, run.
pub fn early() -> io::Result<()> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid, None)?;
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666,newinstance"),
    )?;
    mnt(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mnt(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// Enters the base image: ext4 read-only lower, tmpfs upper, overlay as the
/// new root (all nosuid, nodev), with the switch_root sequence (pivot_root fails from an initramfs).
pub fn switch_root(dev: &str) -> io::Result<()> {
    let layers = "/.voidbox-layers";
    mnt(
        "tmpfs",
        layers,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )?;
    let lower = format!("{layers}/lower");
    mnt(
        dev,
        &lower,
        "ext4",
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;
    for d in ["upper", "work", "root"] {
        std::fs::create_dir_all(format!("{layers}/{d}"))?;
    }
    let root = format!("{layers}/root");
    let opts = format!("lowerdir={lower},upperdir={layers}/upper,workdir={layers}/work");
    // nosuid: a setuid-root binary in the (untrusted) image must not give the
    // workload root; nodev: nor may a device node it carries.
    mnt(
        "overlay",
        &root,
        "overlay",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&opts),
    )?;
    for m in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        let target = format!("{root}{m}");
        std::fs::create_dir_all(&target)?;
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("move {m}: {e}")))?;
    }
    std::env::set_current_dir(&root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| io::Error::other(format!("move new root onto /: {e}")))?;
    nix::unistd::chroot(".").map_err(|e| io::Error::other(format!("chroot: {e}")))?;
    std::env::set_current_dir("/")?;
    tracing::info!("switched into the base image on {dev}");
    Ok(())
}

/// Opens the directory `path` (absolute) of the current root, creating missing
/// components, one component at a time and never following a symlink: the
/// image is untrusted, and a link such as `/skills -> /proc` must not move a
/// skill mount somewhere else.
fn open_mount_dir(path: &str) -> io::Result<OwnedFd> {
    use std::ffi::CString;
    use std::path::Component;
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    if !path.starts_with('/') {
        return Err(invalid(format!("`{path}` is not an absolute path")));
    }
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated literal path; the fd is checked below.
    let fd = unsafe { libc::open(c"/".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut walked = String::new();
    for comp in Path::new(path).components() {
        let name = match comp {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => n,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(format!("`{path}` contains `..`")))
            }
        };
        walked.push('/');
        walked.push_str(&name.to_string_lossy());
        let c = CString::new(name.as_bytes())
            .map_err(|_| invalid(format!("`{path}` contains a NUL byte")))?;
        // SAFETY: a valid directory fd and a NUL-terminated name.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(e.kind(), format!("creating {walked}: {e}")));
            }
        }
        // SAFETY: a valid directory fd and a NUL-terminated name; the fd is checked below.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOTDIR) | Some(libc::ELOOP) => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{walked} is a symlink or not a directory in the image; \
                         skills mount only under real directories (pick another `mount` path)"
                    ),
                ),
                _ => io::Error::new(e.kind(), format!("opening {walked}: {e}")),
            });
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(dir)
}

/// Mounts a skill disk read-only, nosuid, nodev at `path`, creating the
/// directory if the image lacks it (see [`open_mount_dir`]).
pub fn mount_skill(dev: &str, path: &str, fstype: &str) -> io::Result<()> {
    let dir = open_mount_dir(path)?;
    // Mount on the directory we opened, not on a path the image could swap.
    let target = format!("/proc/self/fd/{}", dir.as_raw_fd());
    mount(
        Some(dev),
        target.as_str(),
        Some(fstype),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("mount {fstype} {dev} on {path}: {e}")))?;
    tracing::info!("mounted skill {dev} at {path}");
    Ok(())
}

/// Mounts cgroup2 at /sys/fs/cgroup and enables the controllers execs use.
pub fn cgroups() -> io::Result<PathBuf> {
    let root = "/sys/fs/cgroup";
    mnt(
        "cgroup2",
        root,
        "cgroup2",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    for c in ["+cpu", "+memory", "+pids"] {
        if let Err(e) = std::fs::write(Path::new(root).join("cgroup.subtree_control"), c) {
            tracing::warn!("cannot enable cgroup controller {c}: {e}");
        }
    }
    Ok(PathBuf::from(root))
}
