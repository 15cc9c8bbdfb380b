//! Host-side Unix sockets of the vsock device: binding the main socket,
//! non-blocking connects to `<uds>_<port>`, and the `CONNECT <port>\n` line.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::virtio::Error;

/// Longest accepted `CONNECT <port>\n` line.
pub const MAX_CONNECT_LINE: usize = 32;
/// Longest uds path: sockaddr_un holds 107 bytes, and `_<port>` needs up to 11.
pub const MAX_UDS_PATH: usize = 96;

/// Bind the host-side socket at `path`. A stale socket file (nobody
/// listening) is replaced; a live one or a non-socket file is an error.
pub fn bind_listener(path: &Path) -> Result<UnixListener, Error> {
    if path.as_os_str().len() > MAX_UDS_PATH {
        return Err(Error::UdsPathTooLong(path.to_path_buf()));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::UdsNotSocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::UdsInUse(path.to_path_buf()));
        }
        tracing::info!("vsock: replacing stale socket {}", path.display());
        std::fs::remove_file(path).map_err(|source| Error::UdsBind {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| Error::UdsBind {
        path: path.to_path_buf(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::UdsBind {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(listener)
}

/// `<uds>_<port>`: where a guest connection to host port `port` goes.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connect without blocking: a Unix connect either completes at once or
/// fails (EAGAIN when the listener's backlog is full), so a slow or hostile
/// listener can never stall the device worker.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own; OwnedFd closes it on every path.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Result of scanning the bytes a host client sent before the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectLine {
    /// No newline yet; keep reading.
    Incomplete,
    /// `CONNECT <port>\n`.
    Port(u32),
    /// Anything else.
    Invalid,
}

/// Parse `CONNECT <port>\n` from the start of `buf`.
pub fn parse_connect_line(buf: &[u8]) -> ConnectLine {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CONNECT_LINE {
            ConnectLine::Invalid
        } else {
            ConnectLine::Incomplete
        };
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(port) = line.strip_prefix(b"CONNECT ") else {
        return ConnectLine::Invalid;
    };
    match std::str::from_utf8(port)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        Some(p) => ConnectLine::Port(p),
        None => ConnectLine::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52\n"), ConnectLine::Port(52));
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967295\r\n"),
            ConnectLine::Port(u32::MAX)
        );
        assert_eq!(parse_connect_line(b"CONNECT 5"), ConnectLine::Incomplete);
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967296\n"),
            ConnectLine::Invalid
        );
        assert_eq!(parse_connect_line(b"HELLO 1\n"), ConnectLine::Invalid);
        assert_eq!(
            parse_connect_line(&[b'C'; MAX_CONNECT_LINE]),
            ConnectLine::Invalid
        );
    }

    #[test]
    fn port_path_appends_suffix() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }
}
