//! File transfers: put/get a file or a directory (tar), confined in the guest
//! to its allowed roots. Every transfer has a deadline, a stall limit and (for
//! gets) a byte cap ([`TransferLimits`]), so a guest that stops answering,
//! stalls mid-stream or sends too much ends in a clear error, not a hang.

use super::mux::{Event, StreamHandle};
use super::{Client, ClientError};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use voidbox_guest_agent::protocol::flow::TakeError;
use voidbox_guest_agent::protocol::{
    Channel, FileKind, FrameKind, Message, PutRequest, UserSpec, MAX_DATA_CHUNK,
};

/// Extra time past a transfer's deadline before the connection itself is
/// closed (only needed when a write to a guest that stopped reading blocks).
const WATCHDOG_GRACE: Duration = Duration::from_secs(2);

/// Limits of one put or get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLimits {
    /// The whole transfer must end within this time.
    pub timeout: Duration,
    /// The transfer fails when the guest makes no progress (no data, no
    /// credit, no reply) for this long.
    pub stall: Duration,
    /// Largest size accepted from the guest (gets only).
    pub max_bytes: u64,
}

impl Default for TransferLimits {
    /// One hour in all, 60 s without progress, 4 GiB.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3600),
            stall: Duration::from_secs(60),
            max_bytes: 4 << 30,
        }
    }
}

/// The clock of one transfer.
struct Clock {
    what: String,
    end: Instant,
    limits: TransferLimits,
}

impl Clock {
    fn new(what: String, limits: TransferLimits) -> Self {
        Self {
            what,
            end: Instant::now() + limits.timeout,
            limits,
        }
    }

    /// When the next sign of progress must have arrived.
    fn next_deadline(&self) -> Instant {
        (Instant::now() + self.limits.stall).min(self.end)
    }

    /// The error for a wait that passed `deadline`.
    fn timeout(&self, deadline: Instant) -> ClientError {
        if deadline >= self.end {
            ClientError::Timeout {
                what: format!("{} to finish", self.what),
                after: self.limits.timeout,
            }
        } else {
            ClientError::Timeout {
                what: format!("the guest: it made no progress on {} (stalled)", self.what),
                after: self.limits.stall,
            }
        }
    }

    /// The next event, within the stall limit and the deadline.
    fn next(&self, h: &StreamHandle) -> Result<Event, ClientError> {
        let deadline = self.next_deadline();
        match h.next(Some(deadline)) {
            Err(ClientError::Timeout { .. }) => Err(self.timeout(deadline)),
            other => other,
        }
    }
}

/// Sends bytes on the file channel within the guest's credit and the clock.
pub(super) struct PutWriter<'a> {
    h: &'a StreamHandle,
    clock: &'a Clock,
    /// Why the last write failed, if the guest's side made it fail.
    failure: Option<ClientError>,
}

impl Write for PutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.clock.next_deadline();
        let n = match self
            .h
            .inbox
            .file
            .take_until(buf.len().min(MAX_DATA_CHUNK), deadline)
        {
            Ok(n) => n,
            Err(TakeError::TimedOut) => {
                let e = self.clock.timeout(deadline);
                let io = std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string());
                self.failure = Some(e);
                return Err(io);
            }
            Err(TakeError::Closed) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the guest ended the transfer",
                ))
            }
        };
        self.h
            .send_data(FrameKind::FileData, buf[..n].to_vec())
            .map_err(std::io::Error::other)?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn finish(h: &StreamHandle, clock: &Clock) -> Result<(), ClientError> {
    loop {
        match clock.next(h)? {
            Event::Msg(Message::Done) => return Ok(()),
            Event::Msg(Message::Error(e)) => {
                return Err(ClientError::Remote {
                    code: e.code,
                    message: e.message,
                })
            }
            Event::Msg(Message::Eof { .. }) => {}
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {other:?} during a transfer"
                )))
            }
        }
    }
}

/// Maps an error of a transfer whose watchdog may have closed the connection.
fn after_watchdog(e: ClientError, clock: &Clock) -> ClientError {
    match e {
        ClientError::Closed(_) if Instant::now() >= clock.end => clock.timeout(clock.end),
        e => e,
    }
}

impl Client {
    pub(super) fn put(
        &self,
        req: PutRequest,
        limits: TransferLimits,
        body: &mut dyn FnMut(&mut PutWriter) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let path = req.path.clone();
        let clock = Clock::new(format!("copying {path} into the guest"), limits);
        let _dog = self.mux.watchdog(
            clock.end + WATCHDOG_GRACE,
            format!(
                "{} passed its limit of {:?}; closing the connection",
                clock.what, limits.timeout
            ),
        );
        let h = self.mux.open(&Message::Put(req))?;
        let mut w = PutWriter {
            h: &h,
            clock: &clock,
            failure: None,
        };
        let sent = body(&mut w);
        if let Some(e) = w.failure.take() {
            return Err(e);
        }
        // On a local error, still end the stream so the guest replies (with its own error if any).
        let _ = h.send_msg(&Message::Eof {
            channel: Channel::File,
        });
        let reply = finish(&h, &clock).map_err(|e| after_watchdog(e, &clock));
        if sent.is_err() {
            if let Some(why) = self.mux.dead_reason() {
                // The connection broke (a guest violation, the watchdog): that is the cause.
                return Err(after_watchdog(ClientError::Closed(why), &clock));
            }
        }
        match (sent, reply) {
            (Ok(()), reply) => reply,
            // The connection broke or the guest went silent: that is the cause.
            (
                Err(_),
                Err(
                    e @ (ClientError::Closed(_)
                    | ClientError::Protocol(_)
                    | ClientError::Timeout { .. }),
                ),
            ) => Err(e),
            (Err(e), _) => Err(ClientError::io(format!("sending {path}"), e)),
        }
    }

    /// Writes `data` to the guest file `path` (parents are created), within
    /// the default [`TransferLimits`].
    pub fn put_file(
        &self,
        path: &str,
        data: &mut dyn Read,
        mode: u32,
        owner: Option<UserSpec>,
    ) -> Result<(), ClientError> {
        self.put_file_with(path, data, mode, owner, TransferLimits::default())
    }

    /// [`Client::put_file`] within `limits`.
    pub fn put_file_with(
        &self,
        path: &str,
        data: &mut dyn Read,
        mode: u32,
        owner: Option<UserSpec>,
        limits: TransferLimits,
    ) -> Result<(), ClientError> {
        let req = PutRequest {
            path: path.into(),
            kind: FileKind::File,
            mode: Some(mode),
            owner,
        };
        self.put(req, limits, &mut |w| std::io::copy(data, w).map(|_| ()))
    }

    /// Copies the host directory `src` into the guest directory `path`,
    /// within the default [`TransferLimits`].
    pub fn put_dir(
        &self,
        src: &Path,
        path: &str,
        owner: Option<UserSpec>,
    ) -> Result<(), ClientError> {
        self.put_dir_with(src, path, owner, TransferLimits::default())
    }

    /// [`Client::put_dir`] within `limits`.
    pub fn put_dir_with(
        &self,
        src: &Path,
        path: &str,
        owner: Option<UserSpec>,
        limits: TransferLimits,
    ) -> Result<(), ClientError> {
        if !src.is_dir() {
            return Err(ClientError::io(
                format!("put_dir source {}", src.display()),
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            ));
        }
        let req = PutRequest {
            path: path.into(),
            kind: FileKind::Dir,
            mode: None,
            owner,
        };
        self.put(req, limits, &mut |w| {
            let mut b = tar::Builder::new(w);
            b.follow_symlinks(false);
            b.append_dir_all(".", src)?;
            b.finish()
        })
    }

    /// Unpacks the tar stream `tar` into the guest directory `path` (created
    /// if missing), within `limits`. The agent applies the same rules as to
    /// [`Client::put_dir`] (no escapes, no device nodes, owner set).
    pub fn put_tar_with(
        &self,
        path: &str,
        tar: &mut dyn Read,
        owner: Option<UserSpec>,
        limits: TransferLimits,
    ) -> Result<(), ClientError> {
        let req = PutRequest {
            path: path.into(),
            kind: FileKind::Dir,
            mode: None,
            owner,
        };
        self.put(req, limits, &mut |w| std::io::copy(tar, w).map(|_| ()))
    }

    /// Streams the guest file or directory at `path` into `out` (a directory
    /// arrives as a tar stream) within the default [`TransferLimits`];
    /// returns what it was.
    pub fn get(&self, path: &str, out: &mut dyn Write) -> Result<FileKind, ClientError> {
        self.get_with(path, out, TransferLimits::default())
    }

    /// [`Client::get`] within `limits`: fails with [`ClientError::TooLarge`]
    /// as soon as the guest announces or sends more than `limits.max_bytes`
    /// (the guest is told to stop), and with [`ClientError::Timeout`] when it
    /// stalls or the deadline passes. `out` may hold a partial copy then.
    pub fn get_with(
        &self,
        path: &str,
        out: &mut dyn Write,
        limits: TransferLimits,
    ) -> Result<FileKind, ClientError> {
        let clock = Clock::new(format!("copying {path} from the guest"), limits);
        let _dog = self.mux.watchdog(
            clock.end + WATCHDOG_GRACE,
            format!(
                "{} passed its limit of {:?}; closing the connection",
                clock.what, limits.timeout
            ),
        );
        let h = self.mux.open(&Message::Get { path: path.into() })?;
        let r = get_stream(&h, path, out, &clock).map_err(|e| after_watchdog(e, &clock));
        if r.is_err() {
            // Tell the guest to stop sending; the stream is dropped either way.
            let _ = h.send_msg(&Message::Kill);
        }
        r
    }

    /// Copies the guest file or directory `path` to the host path `dest`
    /// (a directory is unpacked into `dest`, which is created).
    pub fn get_to_path(&self, path: &str, dest: &Path) -> Result<FileKind, ClientError> {
        let io = |e| ClientError::io(format!("writing {}", dest.display()), e);
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Stream into a temp file next to `dest`: nothing half-written is left on failure.
        let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(io)?;
        let kind = self.get(path, tmp.as_file_mut())?;
        match kind {
            FileKind::Dir => {
                std::fs::create_dir_all(dest).map_err(io)?;
                let f = tmp.reopen().map_err(io)?;
                let mut a = tar::Archive::new(std::io::BufReader::new(f));
                a.set_preserve_permissions(false);
                // tar's unpack refuses `..` and paths escaping `dest` through symlinks.
                a.unpack(dest).map_err(io)?;
            }
            _ => {
                tmp.persist(dest).map_err(|e| io(e.error))?;
            }
        }
        Ok(kind)
    }
}

/// The body of a get: header, data within the cap, end.
fn get_stream(
    h: &StreamHandle,
    path: &str,
    out: &mut dyn Write,
    clock: &Clock,
) -> Result<FileKind, ClientError> {
    let limit = clock.limits.max_bytes;
    let too_large = |announced| ClientError::TooLarge {
        what: format!("guest path {path}"),
        limit,
        announced,
    };
    let (kind, size) = match clock.next(h)? {
        Event::Msg(Message::GetHeader { kind, size, .. }) => (kind, size),
        Event::Msg(Message::Error(e)) => {
            return Err(ClientError::Remote {
                code: e.code,
                message: e.message,
            })
        }
        other => {
            return Err(ClientError::Protocol(format!(
                "expected a get header, got {other:?}"
            )))
        }
    };
    if size > limit {
        return Err(too_large(Some(size)));
    }
    let mut received = 0u64;
    loop {
        match clock.next(h)? {
            Event::Data(Channel::File, d) => {
                received += d.len() as u64;
                if received > limit {
                    return Err(too_large((kind == FileKind::File).then_some(size)));
                }
                if kind == FileKind::File && received > size {
                    return Err(ClientError::Protocol(format!(
                        "the guest announced {size} bytes for {path} and sent more"
                    )));
                }
                out.write_all(&d)
                    .map_err(|e| ClientError::io(format!("writing {path}"), e))?
            }
            Event::Msg(Message::Eof {
                channel: Channel::File,
            }) => break,
            Event::Msg(Message::Error(e)) => {
                return Err(ClientError::Remote {
                    code: e.code,
                    message: e.message,
                })
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {other:?} during get"
                )))
            }
        }
    }
    if kind == FileKind::File && received != size {
        tracing::warn!("{path}: the guest announced {size} bytes and sent {received} (the file changed while it was copied?)");
    }
    finish(h, clock)?;
    Ok(kind)
}
