//! Wire format of the lane's control channel (one virtio-serial port, one byte stream).
//!
//! Frame: `u32 len` (little endian, counts `kind` + `id` + payload) | `u8 kind` | `u32 id` |
//! payload. Commands are multiplexed by `id`, so a long-running VMM and short commands share
//! the channel. Frames are bounded by [`MAX_FRAME`]; a larger length is a protocol error.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Largest accepted frame body (kind + id + payload).
pub const MAX_FRAME: usize = 1 << 20;
/// Output chunk size the server reads from a child's pipes.
pub const CHUNK: usize = 64 * 1024;

/// Host → L2: start a command (payload: JSON [`CommandSpec`]).
pub const SPAWN: u8 = 1;
/// Host → L2: send a signal to the command's process group (payload: i32 LE).
pub const SIGNAL: u8 = 2;
/// L2 → host: the server is up (payload: JSON [`ReadyInfo`]), id 0.
pub const READY: u8 = 10;
/// L2 → host: stdout bytes.
pub const STDOUT: u8 = 11;
/// L2 → host: stderr bytes.
pub const STDERR: u8 = 12;
/// L2 → host: the command ended (payload: JSON [`ExitInfo`]); sent after all its output.
pub const EXIT: u8 = 13;
/// L2 → host: the command could not be started (payload: UTF-8 message).
pub const SPAWN_FAILED: u8 = 14;

/// A command to run inside L2 (in the chroot of the host's `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program and arguments; `argv[0]` is looked up on PATH.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
}

/// What the L2 server reports when it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// `/dev/kvm` exists inside L2.
    pub kvm: bool,
    /// L2 kernel release.
    pub kernel: String,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "unknown status"),
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame kind (the constants above).
    pub kind: u8,
    /// Command id (0 for channel-level frames).
    pub id: u32,
    /// Kind-specific payload.
    pub payload: Vec<u8>,
}

/// Writes one frame (the caller serialises writers).
pub fn write_frame<W: Write>(w: &mut W, kind: u8, id: u32, payload: &[u8]) -> std::io::Result<()> {
    let len = 5 + payload.len();
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<R: Read>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(5..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let id = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes"));
    Ok(Some(Frame {
        kind: body[0],
        id,
        payload: body[5..].to_vec(),
    }))
}

impl CommandSpec {
    /// A command with the given argv, no extra environment, cwd `/`.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut buf = Vec::new();
        write_frame(&mut buf, STDOUT, 7, b"hello").unwrap();
        write_frame(&mut buf, EXIT, 7, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap().payload, b"hello");
        assert_eq!(read_frame(&mut r).unwrap().unwrap().kind, EXIT);
        assert!(read_frame(&mut r).unwrap().is_none());
        let huge = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(read_frame(&mut &huge[..]).is_err());
        assert!(read_frame(&mut &[3u8, 0, 0, 0, 1][..]).is_err());
        assert!(write_frame(&mut Vec::new(), STDOUT, 1, &vec![0; MAX_FRAME]).is_err());
    }

    /// Hands out its bytes a few at a time, as a socket may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 5 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn split_reads_truncation_and_garbage() {
        let mut buf = Vec::new();
        write_frame(&mut buf, SPAWN, 9, br#"{"argv":["true"]}"#).unwrap();
        write_frame(&mut buf, SIGNAL, 9, &9i32.to_le_bytes()).unwrap();
        let mut r = Trickle(&buf, 0);
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((f.kind, f.id), (SPAWN, 9));
        let spec: CommandSpec = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(spec, CommandSpec::new(["true"]));
        assert_eq!(
            read_frame(&mut r).unwrap().unwrap().payload,
            9i32.to_le_bytes()
        );
        assert!(read_frame(&mut r).unwrap().is_none());
        // A frame cut anywhere after its first byte is an error, never a short frame.
        for cut in 1..buf.len() / 2 {
            let mut r = &buf[..cut];
            assert!(read_frame(&mut r).is_err(), "cut at {cut}");
        }
        // Pseudo-random streams: frames within bounds, or an error; never a panic.
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let mut junk = Vec::new();
            for _ in 0..(x % 64) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                junk.push((x >> 16) as u8);
            }
            if junk.len() >= 4 && x.is_multiple_of(3) {
                // A plausible length now and then, so bodies get parsed too.
                let len = (junk.len() as u32 - 4).max(5);
                junk[..4].copy_from_slice(&len.to_le_bytes());
            }
            let mut r = Trickle(&junk, x as usize);
            while let Ok(Some(f)) = read_frame(&mut r) {
                assert!(5 + f.payload.len() <= MAX_FRAME);
                let _ = serde_json::from_slice::<ExitInfo>(&f.payload);
            }
        }
    }
}
