//! File transfers: put/get a file or a directory (tar), and stat, all
//! confined to the allowed roots (see [`super::resolve`]).

use super::conn::{Connection, StreamState};
use super::resolve::{self, confine, io_error, FileError};
use super::ServiceConfig;
use crate::protocol::flow::{Pop, RecvQueue, SendWindow};
use crate::protocol::{
    Channel, DirEntry, ErrorCode, FileKind, FileStat, Frame, FrameKind, Message, PutRequest,
    UserSpec, MAX_DATA_CHUNK, MAX_LIST_ENTRIES,
};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

fn kind_of(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// Stats `path` without following its last symlink.
pub(super) fn stat(cfg: &ServiceConfig, path: &str) -> Message {
    let r = (|| -> Result<FileStat, FileError> {
        let c = confine(&cfg.file_roots, path)?;
        let fd = resolve::open_in_root(&c.root, &c.rel, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map_err(|e| io_error(path, "stat", e))?;
        let st = resolve::fstat(&fd).map_err(|e| io_error(path, "stat", e))?;
        Ok(FileStat {
            kind: kind_of(st.st_mode),
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
        })
    })();
    match r {
        Ok(s) => Message::StatResult(s),
        Err((code, msg)) => Message::error(code, msg),
    }
}

/// Lists one level of the directory `path`, sorted by name, without
/// following links (the directory itself must not be reached through one).
pub(super) fn list(cfg: &ServiceConfig, path: &str) -> Message {
    let r = (|| -> Result<(Vec<DirEntry>, bool), FileError> {
        let c = confine(&cfg.file_roots, path)?;
        let dir = resolve::open_no_links(&c.root, &c.rel, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| io_error(path, "list", e))?;
        let mut names: Vec<std::ffi::OsString> =
            std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .and_then(|it| it.map(|e| e.map(|e| e.file_name())).collect())
                .map_err(|e| io_error(path, "list", e))?;
        names.sort();
        let truncated = names.len() > MAX_LIST_ENTRIES;
        names.truncate(MAX_LIST_ENTRIES);
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            // An entry removed meanwhile is just not listed.
            let Ok(st) = resolve::stat_at(&dir, &name) else {
                continue;
            };
            entries.push(DirEntry {
                name: name.to_string_lossy().into_owned(),
                stat: FileStat {
                    kind: kind_of(st.st_mode),
                    size: st.st_size as u64,
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                    mtime: st.st_mtime,
                },
            });
        }
        Ok((entries, truncated))
    })();
    match r {
        Ok((entries, truncated)) => Message::ListResult { entries, truncated },
        Err((code, msg)) => Message::error(code, msg),
    }
}

/// Reads the put's data channel, returning credit as bytes are consumed.
struct InboundReader<'a> {
    conn: &'a Connection,
    id: u32,
    q: &'a RecvQueue,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for InboundReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.q.pop() {
                Pop::Data { chunk, credit } => {
                    if let Some(bytes) = credit {
                        let _ = self.conn.send_msg(
                            self.id,
                            &Message::Credit {
                                channel: Channel::File,
                                bytes,
                            },
                        );
                    }
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Pop::Eof => return Ok(0),
                Pop::Closed | Pop::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "connection closed during put",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Handles a put on stream `s`.
pub(super) fn put(conn: &Connection, s: &StreamState, req: PutRequest) {
    let (_, q) = s
        .inbound
        .as_ref()
        .expect("put streams have an inbound queue");
    let mut reader = InboundReader {
        conn,
        id: s.id,
        q,
        chunk: Vec::new(),
        pos: 0,
    };
    let owner = req.owner.unwrap_or(conn.config.default_user);
    let result = match req.kind {
        _ if conn.config.policy.protects(Path::new(&req.path)) => Err((
            ErrorCode::PathDenied,
            format!(
                "put `{}` would replace an allowed command or a directory above one while a \
                 command allowlist is in force; put files elsewhere (e.g. under /work)",
                req.path
            ),
        )),
        FileKind::File => put_file(&conn.config, &req, owner, &mut reader),
        FileKind::Dir => put_dir(&conn.config, &req, owner, &mut reader),
        k => Err((
            ErrorCode::BadRequest,
            format!("cannot put a {k:?}; use file or dir"),
        )),
    };
    let reply = match result {
        // Drain to Eof so the host's stream ends cleanly (tar leaves padding behind).
        Ok(()) => match io::copy(&mut reader, &mut io::sink()) {
            Ok(_) => Message::Done,
            Err(e) => Message::error(ErrorCode::Failed, format!("put `{}`: {e}", req.path)),
        },
        Err((code, msg)) => Message::error(code, msg),
    };
    let _ = conn.send_msg(s.id, &reply);
}

fn split_parent(rel: &Path, path: &str) -> Result<(PathBuf, std::ffi::OsString), FileError> {
    match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => Ok((p.to_path_buf(), n.to_os_string())),
        _ => Err((
            ErrorCode::BadRequest,
            format!("put `{path}` needs a file name below an allowed root"),
        )),
    }
}

fn create_file(dir: &OwnedFd, name: &OsStr, mode: u32, path: &str) -> Result<File, FileError> {
    let fd = resolve::open_in_root(
        dir,
        Path::new(name),
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
        mode,
    )
    .map_err(|e| io_error(path, "create", e))?;
    Ok(File::from(fd))
}

fn finish_file(f: &File, mode: u32, owner: UserSpec, path: &str) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: fchown on a valid fd.
    if unsafe { libc::fchown(f.as_raw_fd(), owner.uid, owner.gid) } < 0 {
        return Err(io_error(path, "chown", io::Error::last_os_error()));
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(path, "chmod", e))
}

fn put_file(
    cfg: &ServiceConfig,
    req: &PutRequest,
    owner: UserSpec,
    data: &mut impl Read,
) -> Result<(), FileError> {
    let c = confine(&cfg.file_roots, &req.path)?;
    let (parent, name) = split_parent(&c.rel, &req.path)?;
    let dir = resolve::mkdir_all(&c.root, &parent, 0o755, owner)
        .map_err(|e| io_error(&req.path, "create parent of", e))?;
    let mode = req.mode.unwrap_or(0o644) & 0o1777;
    let mut f = create_file(&dir, &name, mode, &req.path)?;
    io::copy(data, &mut f).map_err(|e| io_error(&req.path, "write", e))?;
    finish_file(&f, mode, owner, &req.path)
}

fn put_dir(
    cfg: &ServiceConfig,
    req: &PutRequest,
    owner: UserSpec,
    data: &mut impl Read,
) -> Result<(), FileError> {
    let c = confine(&cfg.file_roots, &req.path)?;
    let dest = resolve::mkdir_all(&c.root, &c.rel, req.mode.unwrap_or(0o755), owner)
        .map_err(|e| io_error(&req.path, "create", e))?;
    let mut archive = tar::Archive::new(data);
    let entries = archive.entries().map_err(|e| {
        (
            ErrorCode::BadRequest,
            format!("put `{}`: bad tar: {e}", req.path),
        )
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            (
                ErrorCode::BadRequest,
                format!("put `{}`: bad tar: {e}", req.path),
            )
        })?;
        let raw = entry
            .path()
            .map_err(|e| (ErrorCode::BadRequest, format!("bad tar path: {e}")))?
            .into_owned();
        let shown = format!("{}/{}", req.path, raw.display());
        if raw
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err((
                ErrorCode::PathDenied,
                format!("tar entry `{}` is absolute or contains `..`", raw.display()),
            ));
        }
        let rel: PathBuf = raw.components().collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o1777;
        let ty = entry.header().entry_type();
        if ty.is_dir() {
            resolve::mkdir_all(&dest, &rel, mode, owner)
                .map_err(|e| io_error(&shown, "mkdir", e))?;
            continue;
        }
        let (parent, name) = split_parent(&rel, &shown)?;
        let dir = resolve::mkdir_all(&dest, &parent, 0o755, owner)
            .map_err(|e| io_error(&shown, "mkdir", e))?;
        if ty.is_file() {
            let mut f = create_file(&dir, &name, mode, &shown)?;
            io::copy(&mut entry, &mut f).map_err(|e| io_error(&shown, "write", e))?;
            finish_file(&f, mode, owner, &shown)?;
        } else if ty.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| (ErrorCode::BadRequest, format!("tar entry `{shown}`: {e}")))?
                .ok_or_else(|| {
                    (
                        ErrorCode::BadRequest,
                        format!("tar symlink `{shown}` has no target"),
                    )
                })?;
            resolve::symlink_at(&target, &dir, &name)
                .map_err(|e| io_error(&shown, "symlink", e))?;
            resolve::lchown_at(&dir, &name, owner).map_err(|e| io_error(&shown, "chown", e))?;
        } else {
            return Err((
                ErrorCode::BadRequest,
                format!("tar entry `{shown}` has unsupported type {ty:?}; only files, directories and symlinks"),
            ));
        }
    }
    Ok(())
}

/// Sends data on the file channel in credit-sized frames.
struct OutboundWriter<'a> {
    conn: &'a Connection,
    id: u32,
    window: &'a SendWindow,
}

impl Write for OutboundWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self
            .window
            .take(buf.len().min(MAX_DATA_CHUNK))
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))?;
        self.conn
            .send(Frame::data(self.id, FrameKind::FileData, buf[..n].to_vec()))?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Handles a get on stream `s`.
pub(super) fn get(conn: &Connection, s: &StreamState, path: &str) {
    let mut out = OutboundWriter {
        conn,
        id: s.id,
        window: &s.file_out,
    };
    let result = (|| -> Result<(), FileError> {
        let c = confine(&conn.config.file_roots, path)?;
        let workload = conn.config.default_user.uid;
        // The agent reads as root from places the workload writes: follow no
        // link it may have planted. O_NONBLOCK: a planted FIFO must not hang us.
        let fd = resolve::open_no_links(&c.root, &c.rel, libc::O_RDONLY | libc::O_NONBLOCK)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => (
                    ErrorCode::PathDenied,
                    format!(
                        "get `{path}`: the path goes through a symlink; outputs are read \
                         without following links (the workload could plant one to a file \
                         it cannot read); name the real path"
                    ),
                ),
                _ => io_error(path, "open", e),
            })?;
        let st = resolve::fstat(&fd).map_err(|e| io_error(path, "stat", e))?;
        if planted_hard_link(&st, workload) {
            return Err((
                ErrorCode::PathDenied,
                format!(
                    "get `{path}`: a hard link ({} links) to a file owned by uid {}, not by \
                     the workload (uid {workload}); refused because the workload could have \
                     linked a file it cannot read; copy the file instead of linking it",
                    st.st_nlink, st.st_uid
                ),
            ));
        }
        let kind = kind_of(st.st_mode);
        let size = if kind == FileKind::File {
            st.st_size as u64
        } else {
            0
        };
        if !matches!(kind, FileKind::File | FileKind::Dir) {
            return Err((
                ErrorCode::BadRequest,
                format!("get `{path}`: not a regular file or directory"),
            ));
        }
        let _ = conn.send_msg(
            s.id,
            &Message::GetHeader {
                kind,
                size,
                mode: st.st_mode & 0o7777,
            },
        );
        let sent = if kind == FileKind::File {
            io::copy(&mut File::from(fd).take(size), &mut out).map(|_| ())
        } else {
            let mut b = tar::Builder::new(&mut out);
            b.follow_symlinks(false);
            walk(&mut b, &fd, Path::new(""), workload).and_then(|_| b.finish())
        };
        sent.map_err(|e| io_error(path, "read", e))?;
        let _ = conn.send_msg(
            s.id,
            &Message::Eof {
                channel: Channel::File,
            },
        );
        Ok(())
    })();
    let reply = match result {
        Ok(()) => Message::Done,
        Err((code, msg)) => Message::error(code, msg),
    };
    let _ = conn.send_msg(s.id, &reply);
}

fn header_from(st: &libc::stat, ty: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h
}

/// True for a regular file with more than one link that the workload (uid
/// `workload`) does not own: with `fs.protected_hardlinks` off (or on a
/// kernel without it) the workload can hard-link any file into an output
/// directory, and the root agent must not copy it out. A root workload
/// (`workload == 0`) can read everything anyway.
fn planted_hard_link(st: &libc::stat, workload: u32) -> bool {
    workload != 0
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_nlink > 1
        && st.st_uid != workload
}

/// Adds the contents of `dir` to the archive without following any symlink,
/// skipping hard links the workload may have planted ([`planted_hard_link`]).
fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    prefix: &Path,
    workload: u32,
) -> io::Result<()> {
    let mut names: Vec<std::ffi::OsString> =
        std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let st = resolve::stat_at(dir, &name)?;
        let path = prefix.join(&name);
        match kind_of(st.st_mode) {
            FileKind::Dir => {
                let mut h = header_from(&st, tar::EntryType::Directory, 0);
                b.append_data(&mut h, &path, io::empty())?;
                let child = resolve::open_child(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY)?;
                walk(b, &child, &path, workload)?;
            }
            FileKind::File => {
                let fd = resolve::open_child(dir, &name, libc::O_RDONLY | libc::O_NONBLOCK)?;
                // Check the file we opened, not the name we listed.
                let st = resolve::fstat(&fd)?;
                if kind_of(st.st_mode) != FileKind::File {
                    tracing::warn!("get: {} changed type while read; skipped", path.display());
                    continue;
                }
                if planted_hard_link(&st, workload) {
                    tracing::warn!(
                        "get: skipping {}: a hard link ({} links) to a file of uid {}, \
                         not the workload's (uid {workload})",
                        path.display(),
                        st.st_nlink,
                        st.st_uid
                    );
                    continue;
                }
                let mut h = header_from(&st, tar::EntryType::Regular, st.st_size as u64);
                b.append_data(&mut h, &path, File::from(fd).take(st.st_size as u64))?;
            }
            FileKind::Symlink => {
                let target = resolve::read_link_at(dir, &name)?;
                let mut h = header_from(&st, tar::EntryType::Symlink, 0);
                b.append_link(&mut h, &path, &target)?;
            }
            FileKind::Other => tracing::warn!("get: skipping special file {}", path.display()),
        }
    }
    Ok(())
}
