//! Host-side client of the guest agent.
//!
//! Connects through the VMM's vsock Unix socket (`CONNECT 1024\n` →
//! `OK <port>\n`, Firecracker's convention) or over any reliable byte stream
//! implementing [`Transport`] (e.g. the nested lane's virtio-serial relay),
//! authenticates with the per-VM secret, and offers exec (streaming), file
//! transfer, stat, ping and shutdown with typed errors and timeouts.
//!
//! ```no_run
//! # use voidbox::client::*;
//! # use std::time::Duration;
//! # fn f(secret: voidbox_guest_agent::protocol::auth::Secret) -> Result<(), ClientError> {
//! let c = Client::connect_vsock("/run/vm/vsock.sock", &secret, Duration::from_secs(30))?;
//! let out = c.exec_collect(ExecRequest { argv: vec!["echo".into(), "hi".into()], ..Default::default() }, b"", None)?;
//! assert_eq!(out.stdout, b"hi\n");
//! c.shutdown()?;
//! # Ok(()) }
//! ```

mod error;
mod exec;
mod files;
mod handshake;
mod mux;

pub use error::ClientError;
pub use exec::{ExecHandle, ExecOutput, ExecStdin};
pub use files::TransferLimits;
pub use voidbox_guest_agent::protocol::auth::Secret;
pub use voidbox_guest_agent::protocol::{
    DirEntry, ErrorCode, ExecLimits, ExecRequest, ExitStatus, FileKind, FileStat, PtySize,
    UserSpec, MAX_LIST_ENTRIES,
};
pub use voidbox_guest_agent::service::Transport;
pub use voidbox_guest_agent::VSOCK_PORT;

use mux::{Event, Mux};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voidbox_guest_agent::protocol::Message;

/// A directory listing from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Entries, sorted by name.
    pub entries: Vec<DirEntry>,
    /// Whether the directory had more.
    pub truncated: bool,
}

/// Default time limit of short requests (ping, stat, shutdown).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An authenticated connection to the guest agent. Cheap to share across
/// threads (`&Client` is enough); requests run concurrently.
pub struct Client {
    mux: Arc<Mux>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

/// Sends `CONNECT <port>` on a fresh connection to the VMM's vsock socket.
pub fn vsock_connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ClientError> {
    let s = UnixStream::connect(uds).map_err(|source| ClientError::Connect {
        path: uds.display().to_string(),
        source,
    })?;
    let io = |e| ClientError::io(format!("vsock handshake on {}", uds.display()), e);
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    (&s).write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match (&s).read(&mut b) {
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout {
                    what: format!("the VMM's reply to CONNECT {port}"),
                    after: timeout,
                })
            }
            Err(e) => return Err(io(e)),
        }
    }
    let reply = String::from_utf8_lossy(&line).to_string();
    if !reply.starts_with("OK ") {
        return Err(ClientError::VsockRefused { port, reply });
    }
    s.set_read_timeout(None).map_err(io)?;
    Ok(s)
}

impl Client {
    /// Authenticates over an already-connected byte stream.
    pub fn over(
        transport: Box<dyn Transport>,
        secret: &Secret,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut transport = transport;
        handshake::run(transport.as_mut(), secret, timeout)?;
        Ok(Self {
            mux: Mux::start(transport)?,
        })
    }

    /// Connects to a Unix socket the agent itself listens on (host tests, `serve` mode).
    pub fn connect_unix(
        path: impl AsRef<Path>,
        secret: &Secret,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let p = path.as_ref();
        let s = UnixStream::connect(p).map_err(|source| ClientError::Connect {
            path: p.display().to_string(),
            source,
        })?;
        Self::over(Box::new(s), secret, timeout)
    }

    /// Connects through the VMM's vsock Unix socket to port [`VSOCK_PORT`],
    /// retrying until the agent answers or `timeout` passes (wait-ready).
    pub fn connect_vsock(
        uds: impl AsRef<Path>,
        secret: &Secret,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            let attempt = vsock_connect(uds.as_ref(), VSOCK_PORT, left)
                .and_then(|s| Self::over(Box::new(s), secret, left));
            match attempt {
                Ok(c) => return Ok(c),
                // A wrong secret will not get better by retrying.
                Err(e @ ClientError::Auth(_)) => return Err(e),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                tracing::debug!("last vsock connect error: {last}");
                return Err(ClientError::Timeout {
                    what: format!("the guest agent (last error: {last})"),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn request(&self, req: &Message, timeout: Duration) -> Result<Message, ClientError> {
        let h = self.mux.open(req)?;
        let deadline = Instant::now() + timeout;
        match h.next(Some(deadline)) {
            Ok(Event::Msg(Message::Error(e))) => Err(ClientError::Remote {
                code: e.code,
                message: e.message,
            }),
            Ok(Event::Msg(m)) => Ok(m),
            Ok(Event::Data(..)) => Err(ClientError::Protocol(
                "unexpected data for a simple request".into(),
            )),
            Err(ClientError::Timeout { .. }) => Err(ClientError::Timeout {
                what: format!("the reply to {req:?}"),
                after: timeout,
            }),
            Err(e) => Err(e),
        }
    }

    /// Round trip to the agent.
    pub fn ping(&self, timeout: Duration) -> Result<(), ClientError> {
        match self.request(&Message::Ping, timeout)? {
            Message::Pong => Ok(()),
            m => Err(ClientError::Protocol(format!("expected pong, got {m:?}"))),
        }
    }

    /// Stats a guest path (not following its last symlink).
    pub fn stat(&self, path: &str) -> Result<FileStat, ClientError> {
        match self.request(
            &Message::Stat { path: path.into() },
            DEFAULT_REQUEST_TIMEOUT,
        )? {
            Message::StatResult(s) => Ok(s),
            m => Err(ClientError::Protocol(format!(
                "expected a stat result, got {m:?}"
            ))),
        }
    }

    /// Lists one level of a guest directory (entries not followed).
    pub fn list(&self, path: &str) -> Result<Listing, ClientError> {
        match self.request(
            &Message::List { path: path.into() },
            DEFAULT_REQUEST_TIMEOUT,
        )? {
            Message::ListResult { entries, truncated } => {
                if entries.len() > MAX_LIST_ENTRIES {
                    return Err(ClientError::Protocol(format!(
                        "the guest listed {} entries, more than the {MAX_LIST_ENTRIES} allowed",
                        entries.len()
                    )));
                }
                Ok(Listing { entries, truncated })
            }
            m => Err(ClientError::Protocol(format!(
                "expected a listing, got {m:?}"
            ))),
        }
    }

    /// Asks the guest to power off; it acknowledges, then resets.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        match self.request(&Message::Shutdown, DEFAULT_REQUEST_TIMEOUT) {
            // Closing tells the agent its acknowledgement arrived, so it resets at once.
            Ok(Message::Done) => {
                self.mux.close();
                Ok(())
            }
            // The reset may win the race against the acknowledgement.
            Err(ClientError::Closed(_)) => Ok(()),
            Ok(m) => Err(ClientError::Protocol(format!("expected done, got {m:?}"))),
            Err(e) => Err(e),
        }
    }

    /// Closes the connection (running execs of it are killed by the guest).
    pub fn close(&self) {
        self.mux.close();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.mux.close();
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
pub(crate) mod tests;
