//! Path confinement for file transfers: a guest path is split into an allowed
//! root and a relative rest, which is opened with `openat2(RESOLVE_IN_ROOT)`:
//! `..` and symlinks (absolute or relative) resolve as if the root were `/`,
//! so nothing outside the root can be reached, even through a race.

use crate::protocol::{ErrorCode, UserSpec};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A request path mapped onto an allowed root.
pub(super) struct Confined {
    pub root: OwnedFd,
    pub rel: PathBuf,
}

/// A failure with the error class to report.
pub(super) type FileError = (ErrorCode, String);

/// Maps an io error of an operation on `path` to a reply.
pub(super) fn io_error(path: &str, what: &str, e: io::Error) -> FileError {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => ErrorCode::NotFound,
        Some(libc::EXDEV) | Some(libc::ELOOP) | Some(libc::EACCES) | Some(libc::EPERM) => {
            ErrorCode::PathDenied
        }
        _ => ErrorCode::Failed,
    };
    (code, format!("{what} `{path}`: {e}"))
}

/// Splits `path` onto the longest allowed root containing it.
pub(super) fn confine(roots: &[PathBuf], path: &str) -> Result<Confined, FileError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err((
            ErrorCode::BadRequest,
            format!("path `{path}` must be absolute"),
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err((
            ErrorCode::PathDenied,
            format!("path `{path}` contains `..`; use a path without it"),
        ));
    }
    let root = roots
        .iter()
        .filter(|r| p.starts_with(r))
        .max_by_key(|r| r.components().count())
        .ok_or_else(|| {
            let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            (
                ErrorCode::PathDenied,
                format!(
                    "path `{path}` is outside the allowed roots [{}]",
                    list.join(", ")
                ),
            )
        })?;
    let rel = p.strip_prefix(root).expect("checked prefix").to_path_buf();
    let root_fd = open_plain(root, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| io_error(&root.display().to_string(), "open allowed root", e))?;
    Ok(Confined { root: root_fd, rel })
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn open_plain(p: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(p)?;
    // SAFETY: `c` is a valid NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dir, rel, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
pub(super) fn open_in_root(
    dir: &OwnedFd,
    rel: &Path,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    openat2(dir, rel, flags, mode, 0)
}

/// Like [`open_in_root`] but fails with `ELOOP` on any symlink below `dir`
/// (`RESOLVE_NO_SYMLINKS`, and `O_NOFOLLOW` on the last component): for
/// reads by the root agent of paths the workload can plant links in.
pub(super) fn open_no_links(dir: &OwnedFd, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    openat2(
        dir,
        rel,
        flags | libc::O_NOFOLLOW,
        0,
        libc::RESOLVE_NO_SYMLINKS,
    )
}

fn openat2(dir: &OwnedFd, rel: &Path, flags: i32, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = cstr(rel)?;
    // SAFETY: open_how is plain old data; zero is a valid value for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | resolve;
    loop {
        // SAFETY: valid dirfd, NUL-terminated path, and a valid open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh fd we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sets the owner of the object `fd` refers to (works on O_PATH fds).
pub(super) fn chown_fd(fd: &OwnedFd, owner: UserSpec) -> io::Result<()> {
    // SAFETY: fchownat with AT_EMPTY_PATH on a valid fd and an empty C string.
    let r = unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            owner.uid,
            owner.gid,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates every directory of `rel` under `dir` (confined), returning the last one.
pub(super) fn mkdir_all(
    dir: &OwnedFd,
    rel: &Path,
    mode: u32,
    owner: UserSpec,
) -> io::Result<OwnedFd> {
    let mut cur = open_in_root(dir, Path::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            continue;
        };
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid dirfd and NUL-terminated single-component name.
        let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), mode) };
        let created = r == 0;
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        // `cur` acts as the root here, so a symlinked component cannot lead outside it.
        let next = open_in_root(&cur, Path::new(name), libc::O_PATH | libc::O_DIRECTORY, 0)?;
        if created {
            chown_fd(&next, owner)?;
        }
        cur = next;
    }
    Ok(cur)
}

/// The fstat of an fd.
pub(super) fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain old data; fstat fills it from a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let r = unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` on one component.
pub(super) fn stat_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<libc::stat> {
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, NUL-terminated name, valid out-pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `openat(dir, name, flags | O_NOFOLLOW)` on one component (no traversal).
pub(super) fn open_child(dir: &OwnedFd, name: &std::ffi::OsStr, flags: i32) -> io::Result<OwnedFd> {
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid dirfd and NUL-terminated single-component name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `readlinkat(dir, name)`.
pub(super) fn read_link_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<PathBuf> {
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid dirfd, name, and a buffer of the length passed.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(buf),
    ))
}

/// `symlinkat(target, dir, name)`.
pub(super) fn symlink_at(target: &Path, dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C strings and dirfd.
    if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fchownat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(super) fn lchown_at(dir: &OwnedFd, name: &std::ffi::OsStr, owner: UserSpec) -> io::Result<()> {
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid dirfd and C string.
    if unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            owner.uid,
            owner.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
