//! Mounts of PID 1: the basics, the base image under an overlay, skills, cgroup2.

use nix::mount::{mount, MsFlags};
use std::io;
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
/// new root, with the switch_root sequence (pivot_root fails from an initramfs).
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
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )?;
    for d in ["upper", "work", "root"] {
        std::fs::create_dir_all(format!("{layers}/{d}"))?;
    }
    let root = format!("{layers}/root");
    let opts = format!("lowerdir={lower},upperdir={layers}/upper,workdir={layers}/work");
    mnt("overlay", &root, "overlay", MsFlags::empty(), Some(&opts))?;
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

/// Mounts a skill disk read-only, nosuid, nodev at `path`.
pub fn mount_skill(dev: &str, path: &str, fstype: &str) -> io::Result<()> {
    mnt(
        dev,
        path,
        fstype,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;
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
