//! The jail's root: a private tmpfs holding only what the spec exposes, each
//! host path bound at its own absolute path, then `pivot_root` into it with
//! the old root detached. Sources are cloned (`open_tree`) before the tmpfs
//! is mounted, so a source may live under the tmpfs's mount point (`/tmp`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::{JailError, Result, NEEDS_ROOT};
use super::spec::{Access, Create, JailUser, Mount};

/// Where the new root's tmpfs is mounted while it is built (any directory
/// that exists everywhere; it is only covered in the jail's mount namespace).
const BUILD_DIR: &str = "/tmp";
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::path(p, "contains a NUL byte"))
}

/// What kind of node a mount is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    CharDev(u64),
}

/// One path to expose, resolved on the host.
#[derive(Debug)]
pub struct Exposed {
    path: PathBuf,
    access: Access,
    /// The VMM binary and its libraries: read-only but executable.
    exec: bool,
    kind: Kind,
}

/// Creates what the spec says to create, checks every source exists with the
/// right type, and (for a jail user) hands the VM's own files to that user.
pub fn prepare(
    mounts: &[Mount],
    exec_files: &[PathBuf],
    user: Option<JailUser>,
) -> Result<Vec<Exposed>> {
    let mut out = Vec::new();
    for m in mounts {
        if let Some(create) = m.create {
            if std::fs::symlink_metadata(&m.path).is_err() {
                let made = match create {
                    Create::Dir => {
                        use std::os::unix::fs::DirBuilderExt;
                        std::fs::DirBuilder::new()
                            .recursive(true)
                            .mode(0o700)
                            .create(&m.path)
                    }
                    Create::File => std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .mode(0o600)
                        .open(&m.path)
                        .map(drop),
                };
                made.map_err(|e| JailError::io(format!("create {}", m.path.display()), e))?;
            }
        }
        let meta = std::fs::metadata(&m.path).map_err(|e| {
            JailError::path(&m.path, format!("cannot be exposed: {e} (create it before starting the jail, or fix the VM config)"))
        })?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_char_device() {
            Kind::CharDev(meta.rdev())
        } else {
            return Err(JailError::path(
                &m.path,
                "is neither a file, a directory nor a character device",
            ));
        };
        if (m.access == Access::Device) != matches!(kind, Kind::CharDev(_)) {
            return Err(JailError::path(
                &m.path,
                "access `device` is for character devices (and only them): fix its access",
            ));
        }
        out.push(Exposed {
            path: m.path.clone(),
            access: m.access,
            exec: false,
            kind,
        });
    }
    if let Some(u) = user {
        // The VM's own files (writable paths, and what lies inside writable
        // directories) go to the jail user; shared files (kernel, image
        // disks) must already be readable by it.
        let rw_dirs: Vec<&Path> = out
            .iter()
            .filter(|e| e.access == Access::ReadWrite && e.kind == Kind::Dir)
            .map(|e| e.path.as_path())
            .collect();
        for e in &out {
            let own =
                e.access == Access::ReadWrite || rw_dirs.iter().any(|d| e.path.starts_with(d));
            if own && e.access != Access::Device {
                std::os::unix::fs::chown(&e.path, Some(u.uid), Some(u.gid)).map_err(|err| {
                    JailError::io(format!("hand {} to uid {}", e.path.display(), u.uid), err)
                })?;
            }
        }
    }
    for f in exec_files {
        if !out.iter().any(|e| &e.path == f) {
            out.push(Exposed {
                path: f.clone(),
                access: Access::ReadOnly,
                exec: true,
                kind: Kind::File,
            });
        }
    }
    out.sort_by_key(|e| (e.path.components().count(), e.path.clone()));
    Ok(out)
}

/// How the old root was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pivot {
    /// `pivot_root` and the old root unmounted (detached).
    PivotRoot,
    /// `pivot_root` was refused (a root the kernel cannot pivot, e.g. the
    /// initramfs): the new root was moved onto `/` and `chroot`ed into. The
    /// old root stays mounted beneath; without capabilities the VMM cannot
    /// reach it.
    MoveChroot,
}

/// Builds the new root and enters it. Runs in the jail's own mount namespace.
pub fn enter(exposed: &[Exposed], user: Option<JailUser>) -> Result<Pivot> {
    // SAFETY: plain mount(2) call with valid C strings / nulls.
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
    // Clone every source first: the tmpfs below may cover them.
    let mut clones = Vec::new();
    for e in exposed {
        if let (Kind::CharDev(_), Some(_)) = (e.kind, user) {
            clones.push(None); // made with mknod, owned by the jail user
            continue;
        }
        let p = cstr(&e.path)?;
        // SAFETY: open_tree(2) with a valid path; returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                p.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(JailError::last_os(
                format!("clone a bind mount of {}", e.path.display()),
                NEEDS_ROOT,
            ));
        }
        // SAFETY: fd was just returned by open_tree and is owned by nobody else.
        clones.push(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }));
    }
    let build = Path::new(BUILD_DIR);
    // SAFETY: mount(2) with valid C strings. No `nodev`: a jail user's
    // /dev/kvm is a node made here; nothing else can be created (read-only
    // below, no CAP_MKNOD in the VMM).
    if unsafe {
        libc::mount(
            c"voidbox-jail".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"size=1m,mode=0755".as_ptr().cast(),
        )
    } != 0
    {
        return Err(JailError::last_os(
            "mount the jail's tmpfs root",
            NEEDS_ROOT,
        ));
    }
    let mut mounted_dirs: Vec<&Path> = Vec::new();
    for (e, clone) in exposed.iter().zip(clones) {
        let rel = e.path.strip_prefix("/").expect("validated absolute");
        let target = build.join(rel);
        let inside_bind = mounted_dirs.iter().any(|d| e.path.starts_with(d));
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(JailError::path(&e.path, "reaches the jail through a symlink inside an exposed directory: expose the link's target instead"));
            }
            Ok(_) => {}
            Err(_) if inside_bind => {
                return Err(JailError::path(
                    &e.path,
                    "vanished from its exposed directory while the jail was built",
                ));
            }
            Err(_) => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|err| {
                        JailError::io(format!("create {}", parent.display()), err)
                    })?;
                }
                let made = match (e.kind, user) {
                    (Kind::Dir, _) => std::fs::create_dir(&target),
                    (Kind::CharDev(rdev), Some(u)) => mknod_owned(&target, rdev, u),
                    _ => std::fs::File::create(&target).map(drop),
                };
                made.map_err(|err| {
                    JailError::io(format!("create the mount point {}", target.display()), err)
                })?;
            }
        }
        let t = cstr(&target)?;
        if let Some(fd) = clone {
            // SAFETY: move_mount(2) of a detached clone onto a path of ours.
            if unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    t.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                )
            } != 0
            {
                return Err(JailError::last_os(
                    format!("bind {}", e.path.display()),
                    NEEDS_ROOT,
                ));
            }
            let flags = libc::MS_NOSUID
                | match (e.access, e.exec) {
                    (Access::Device, _) => libc::MS_RDONLY | libc::MS_NOEXEC,
                    (Access::ReadOnly, true) => libc::MS_RDONLY | libc::MS_NODEV,
                    (Access::ReadOnly, false) => libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC,
                    (Access::ReadWrite, _) => libc::MS_NODEV | libc::MS_NOEXEC,
                };
            remount(&t, flags)
                .map_err(|err| JailError::io(format!("restrict {}", e.path.display()), err))?;
        }
        if e.kind == Kind::Dir {
            mounted_dirs.push(&e.path);
        }
    }
    let pivot = pivot_into(build)?;
    remount(c"/", libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC)
        .map_err(|err| JailError::io("make the jail root read-only", err))?;
    Ok(pivot)
}

fn remount(target: &std::ffi::CStr, flags: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: mount(2) remount of an existing mount point; valid C string.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn mknod_owned(target: &Path, rdev: u64, u: JailUser) -> std::io::Result<()> {
    let t = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: mknod(2) with a valid path; creates a node in our own tmpfs.
    if unsafe { libc::mknod(t.as_ptr(), libc::S_IFCHR | 0o600, rdev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::os::unix::fs::chown(target, Some(u.uid), Some(u.gid))
}

fn pivot_into(new_root: &Path) -> Result<Pivot> {
    std::env::set_current_dir(new_root).map_err(|e| JailError::io("enter the jail root", e))?;
    // SAFETY: pivot_root(2) with "." for both: the old root ends up stacked
    // under the new one and is detached right after.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if rc == 0 {
        // SAFETY: umount2(2) of the old root, now stacked on ".".
        if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(JailError::last_os("detach the old root", ""));
        }
        std::env::set_current_dir("/").map_err(|e| JailError::io("enter the jail root", e))?;
        return Ok(Pivot::PivotRoot);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(JailError::Host {
            what: "pivot_root into the jail".into(),
            source: err,
            hint: NEEDS_ROOT,
        });
    }
    // SAFETY: mount(2) MS_MOVE of the new root (cwd) onto "/", then chroot(2) into it.
    let moved = unsafe {
        libc::mount(
            c".".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ) == 0
            && libc::chroot(c".".as_ptr()) == 0
    };
    if !moved {
        return Err(JailError::last_os(
            "move into the jail root (pivot_root was refused)",
            NEEDS_ROOT,
        ));
    }
    std::env::set_current_dir("/").map_err(|e| JailError::io("enter the jail root", e))?;
    Ok(Pivot::MoveChroot)
}
