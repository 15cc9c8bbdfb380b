//! File transfers: put/get a file or a directory (tar), confined in the guest
//! to its allowed roots.

use super::mux::{Event, StreamHandle};
use super::{Client, ClientError};
use std::io::{Read, Write};
use std::path::Path;
use voidbox_guest_agent::protocol::{
    Channel, FileKind, FrameKind, Message, PutRequest, UserSpec, MAX_DATA_CHUNK,
};

/// Sends bytes on the file channel within the guest's credit.
pub(super) struct PutWriter<'a>(&'a StreamHandle);

impl Write for PutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self
            .0
            .inbox
            .file
            .take(buf.len().min(MAX_DATA_CHUNK))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the guest ended the transfer",
                )
            })?;
        self.0
            .send_data(FrameKind::FileData, buf[..n].to_vec())
            .map_err(std::io::Error::other)?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn finish(h: &StreamHandle) -> Result<(), ClientError> {
    loop {
        match h.next(None)? {
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

impl Client {
    pub(super) fn put(
        &self,
        req: PutRequest,
        body: &mut dyn FnMut(&mut PutWriter) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let path = req.path.clone();
        let h = self.mux.open(&Message::Put(req))?;
        let sent = body(&mut PutWriter(&h));
        // On a local error, still end the stream so the guest replies (with its own error if any).
        let _ = h.send_msg(&Message::Eof {
            channel: Channel::File,
        });
        let reply = finish(&h);
        sent.map_err(|e| ClientError::io(format!("sending {path}"), e))?;
        reply
    }

    /// Writes `data` to the guest file `path` (parents are created).
    pub fn put_file(
        &self,
        path: &str,
        data: &mut dyn Read,
        mode: u32,
        owner: Option<UserSpec>,
    ) -> Result<(), ClientError> {
        let req = PutRequest {
            path: path.into(),
            kind: FileKind::File,
            mode: Some(mode),
            owner,
        };
        self.put(req, &mut |w| std::io::copy(data, w).map(|_| ()))
    }

    /// Copies the host directory `src` into the guest directory `path`.
    pub fn put_dir(
        &self,
        src: &Path,
        path: &str,
        owner: Option<UserSpec>,
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
        self.put(req, &mut |w| {
            let mut b = tar::Builder::new(w);
            b.follow_symlinks(false);
            b.append_dir_all(".", src)?;
            b.finish()
        })
    }

    /// Streams the guest file or directory at `path` into `out` (a directory
    /// arrives as a tar stream); returns what it was.
    pub fn get(&self, path: &str, out: &mut dyn Write) -> Result<FileKind, ClientError> {
        let h = self.mux.open(&Message::Get { path: path.into() })?;
        let kind = match h.next(None)? {
            Event::Msg(Message::GetHeader { kind, .. }) => kind,
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
        loop {
            match h.next(None)? {
                Event::Data(Channel::File, d) => out
                    .write_all(&d)
                    .map_err(|e| ClientError::io(format!("writing {path}"), e))?,
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
        finish(&h)?;
        Ok(kind)
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
