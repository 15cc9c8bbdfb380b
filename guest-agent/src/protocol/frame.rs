//! Length-prefixed binary frames: the only thing that crosses the wire.
//!
//! Layout (all integers little-endian):
//! ```text
//! u32 body_len | u32 stream | u8 kind | payload[body_len - 5]
//! ```
//! `body_len` counts everything after itself and is bounded by the reader's
//! limit before a single payload byte is allocated, so a peer cannot make us
//! allocate more than `max_body` bytes per frame.

use std::io::{self, Read, Write};

/// Bytes of `stream` + `kind` inside the body.
pub const FRAME_HEADER_BODY: usize = 5;
/// Largest frame body accepted after the handshake (1 MiB + header).
pub const MAX_FRAME_BODY: usize = (1 << 20) + FRAME_HEADER_BODY;
/// Largest frame body accepted before the handshake succeeded.
pub const MAX_HANDSHAKE_BODY: usize = 4096;
/// Largest data chunk a sender puts into one data frame.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON-encoded [`crate::protocol::Message`].
    Message = 0,
    /// Raw bytes for an exec's stdin (host → guest).
    Stdin = 1,
    /// Raw bytes from an exec's stdout or PTY (guest → host).
    Stdout = 2,
    /// Raw bytes from an exec's stderr (guest → host).
    Stderr = 3,
    /// Raw file or tar bytes of a put/get (either direction).
    FileData = 4,
}

impl FrameKind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Message,
            1 => Self::Stdin,
            2 => Self::Stdout,
            3 => Self::Stderr,
            4 => Self::FileData,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Stream id; 0 is the connection itself (handshake, connection errors).
    pub stream: u32,
    /// Payload type.
    pub kind: FrameKind,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The declared length exceeds what this side accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared body length.
        len: usize,
        /// Accepted maximum.
        max: usize,
    },
    /// The declared length cannot hold a header.
    #[error("frame of {len} bytes is shorter than its {FRAME_HEADER_BODY}-byte header")]
    TooShort {
        /// Declared body length.
        len: usize,
    },
    /// Unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// I/O failure (including EOF in the middle of a frame).
    #[error("frame i/o: {0}")]
    Io(#[from] io::Error),
}

impl Frame {
    /// Builds a data frame.
    pub fn data(stream: u32, kind: FrameKind, payload: Vec<u8>) -> Self {
        Self {
            stream,
            kind,
            payload,
        }
    }

    /// Encodes the frame into bytes (header + payload).
    pub fn encode(&self) -> Vec<u8> {
        let body_len = FRAME_HEADER_BODY + self.payload.len();
        let mut out = Vec::with_capacity(4 + body_len);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&self.stream.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes one frame from the start of `buf`; returns it and the bytes consumed,
    /// or `Ok(None)` if `buf` does not yet hold a whole frame.
    pub fn decode(buf: &[u8], max_body: usize) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(len_bytes) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        check_len(len, max_body)?;
        let Some(body) = buf.get(4..4 + len) else {
            return Ok(None);
        };
        let frame = parse_body(body)?;
        Ok(Some((frame, 4 + len)))
    }

    /// Reads one frame, refusing bodies larger than `max_body`.
    pub fn read_from<R: Read + ?Sized>(r: &mut R, max_body: usize) -> Result<Frame, FrameError> {
        let mut len_bytes = [0u8; 4];
        // A clean EOF before the first length byte is a close, not an error.
        let mut got = 0;
        while got < 4 {
            match r.read(&mut len_bytes[got..]) {
                Ok(0) if got == 0 => return Err(FrameError::Closed),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes(len_bytes) as usize;
        check_len(len, max_body)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        parse_body(&body)
    }

    /// Writes the whole frame with one `write_all`.
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.encode())?;
        w.flush()
    }
}

fn check_len(len: usize, max_body: usize) -> Result<(), FrameError> {
    if len > max_body {
        return Err(FrameError::TooLarge { len, max: max_body });
    }
    if len < FRAME_HEADER_BODY {
        return Err(FrameError::TooShort { len });
    }
    Ok(())
}

fn parse_body(body: &[u8]) -> Result<Frame, FrameError> {
    let (head, payload) = body.split_at(FRAME_HEADER_BODY);
    let stream = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let kind = FrameKind::from_u8(head[4]).ok_or(FrameError::UnknownKind(head[4]))?;
    Ok(Frame {
        stream,
        kind,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = Frame::data(7, FrameKind::Stdout, b"hello".to_vec());
        let bytes = f.encode();
        let (g, used) = Frame::decode(&bytes, MAX_FRAME_BODY).unwrap().unwrap();
        assert_eq!(f, g);
        assert_eq!(used, bytes.len());
        let h = Frame::read_from(&mut &bytes[..], MAX_FRAME_BODY).unwrap();
        assert_eq!(f, h);
    }

    #[test]
    fn partial_needs_more() {
        let bytes = Frame::data(1, FrameKind::Stdin, vec![1, 2, 3]).encode();
        for cut in 0..bytes.len() {
            assert!(Frame::decode(&bytes[..cut], MAX_FRAME_BODY)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn rejects_oversized_before_allocating() {
        let bytes = u32::MAX.to_le_bytes();
        match Frame::read_from(&mut &bytes[..], MAX_FRAME_BODY) {
            Err(FrameError::TooLarge { len, .. }) => assert_eq!(len, u32::MAX as usize),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_short_and_unknown_kind() {
        let short = 2u32.to_le_bytes();
        assert!(matches!(
            Frame::decode(&short, 100),
            Err(FrameError::TooShort { len: 2 })
        ));
        let mut bad = Frame::data(1, FrameKind::Stdin, vec![]).encode();
        bad[8] = 99;
        assert!(matches!(
            Frame::decode(&bad, 100),
            Err(FrameError::UnknownKind(99))
        ));
    }

    #[test]
    fn eof_between_frames_is_closed() {
        let empty: &[u8] = &[];
        assert!(matches!(
            Frame::read_from(&mut &empty[..], 100),
            Err(FrameError::Closed)
        ));
        let torn = [9u8, 0];
        assert!(matches!(
            Frame::read_from(&mut &torn[..], 100),
            Err(FrameError::Io(_))
        ));
    }
}
