//! Control messages carried as JSON inside [`FrameKind::Message`](super::FrameKind) frames.
//!
//! Every request opens a new stream id (chosen by the host, non-zero, unique
//! among the connection's open streams); all replies for it carry the same id.
//! Stream 0 carries only the handshake and connection-level errors.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A data channel of a stream, for credit and end-of-stream messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Exec stdin (host → guest).
    Stdin,
    /// Exec stdout or PTY output (guest → host).
    Stdout,
    /// Exec stderr (guest → host).
    Stderr,
    /// File or tar bytes of a put (host → guest) or get (guest → host).
    File,
}

/// A numeric user and group to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    /// User id.
    pub uid: u32,
    /// Group id (also the only supplementary group).
    pub gid: u32,
}

/// Cgroup v2 limits of one exec. `None` fields fall back to the boot defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecLimits {
    /// `memory.max` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// `pids.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// CPU bandwidth in thousandths of a CPU (`cpu.max`), e.g. 500 = half a CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
}

/// Terminal size of a PTY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Start a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// argv; argv[0] is looked up on the exec's PATH.
    pub argv: Vec<String>,
    /// Extra environment; PATH defaults to the standard list when absent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User to run as (default: the boot data's unprivileged user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserSpec>,
    /// Wall-clock limit in milliseconds; at expiry the whole cgroup is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run on a PTY of this size (stdout carries the terminal output; no stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
    /// Whether stdin frames will follow; otherwise stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Cgroup limits.
    #[serde(default)]
    pub limits: ExecLimits,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Terminating signal, if it was killed.
    pub signal: Option<i32>,
    /// True when the exec's timeout ended it.
    pub timed_out: bool,
}

impl ExitStatus {
    /// Shell-style code: the exit code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// Type of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Regular file; data is its bytes.
    File,
    /// Directory; data is a tar stream of its contents.
    Dir,
    /// Symbolic link (stat only).
    Symlink,
    /// Anything else (stat only).
    Other,
}

/// Write a file or unpack a directory at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Absolute guest path under an allowed root.
    pub path: String,
    /// `File`: data is the file's bytes; `Dir`: data is a tar stream unpacked into `path`.
    pub kind: FileKind,
    /// Permission bits of a file or the top directory (default 0644 / 0755).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Owner of what is created (default: the boot data's unprivileged user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserSpec>,
}

/// Result of a stat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Type.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// Most entries in one [`Message::ListResult`] (a frame holds at most 1 MiB;
/// names are at most 255 bytes).
pub const MAX_LIST_ENTRIES: usize = 2048;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// File name (lossy UTF-8).
    pub name: String,
    /// What it is, without following it.
    pub stat: FileStat,
}

/// Machine-readable error class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or not allowed in this state.
    BadRequest,
    /// argv[0] is not on the allowlist.
    CommandDenied,
    /// A path or command does not exist.
    NotFound,
    /// A path is outside the allowed roots or escapes through `..`/symlinks.
    PathDenied,
    /// The operation failed in the guest.
    Failed,
    /// Protocol violation (credit overrun, unknown stream, ...).
    Protocol,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Class.
    pub code: ErrorCode,
    /// Human-readable explanation naming the problem.
    pub message: String,
}

/// Every control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Guest → host, first frame: protocol version and a fresh nonce (hex).
    Hello {
        /// Guest protocol version.
        version: u32,
        /// 32 random bytes, hex.
        nonce: String,
    },
    /// Host → guest: proof of the secret.
    Auth {
        /// Host protocol version.
        version: u32,
        /// 32 random bytes, hex.
        client_nonce: String,
        /// HMAC-SHA256, hex (see [`crate::protocol::auth`]).
        mac: String,
    },
    /// Guest → host: handshake accepted, with the guest's own proof.
    AuthOk {
        /// HMAC-SHA256, hex.
        mac: String,
    },
    /// Readiness probe.
    Ping,
    /// Reply to [`Message::Ping`].
    Pong,
    /// Start a process.
    Exec(ExecRequest),
    /// Guest → host: the process started.
    Started {
        /// Guest pid.
        pid: u32,
    },
    /// Send a signal to the exec's process.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Kill every process of the exec's cgroup; on a get, stop sending the file.
    Kill,
    /// Resize the exec's PTY.
    Resize(PtySize),
    /// The sender will send no more data on `channel`.
    Eof {
        /// Which channel ended.
        channel: Channel,
    },
    /// The receiver consumed `bytes` of `channel`; the sender may send that many more.
    Credit {
        /// Which channel.
        channel: Channel,
        /// Bytes granted.
        bytes: u32,
    },
    /// Guest → host: the process ended (after all its output and Eofs).
    Exited(ExitStatus),
    /// Write a file or a directory; data follows on the file channel.
    Put(PutRequest),
    /// Read a file or a directory.
    Get {
        /// Absolute guest path under an allowed root.
        path: String,
    },
    /// Guest → host: what a get sends (data follows on the file channel).
    GetHeader {
        /// `File` or `Dir` (tar).
        kind: FileKind,
        /// Size of a file (0 for a directory).
        size: u64,
        /// Permission bits.
        mode: u32,
    },
    /// Stat a path (without following its last symlink).
    Stat {
        /// Absolute guest path under an allowed root.
        path: String,
    },
    /// Guest → host: stat result.
    StatResult(FileStat),
    /// List one level of a directory (entries are not followed).
    List {
        /// Absolute guest path under an allowed root.
        path: String,
    },
    /// Guest → host: the entries, sorted by name, at most [`MAX_LIST_ENTRIES`].
    ListResult {
        /// The entries.
        entries: Vec<DirEntry>,
        /// Whether the directory had more.
        truncated: bool,
    },
    /// Guest → host: the request completed.
    Done,
    /// Guest → host: the request failed.
    Error(ErrorReply),
    /// Power the VM off (the guest replies `Done`, then resets).
    Shutdown,
}

impl Message {
    /// JSON bytes of the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("messages always serialize")
    }

    /// Parses JSON bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }

    /// Builds an error message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Message::Error(ErrorReply {
            code,
            message: message.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let m = Message::Exec(ExecRequest {
            argv: vec!["echo".into(), "hi".into()],
            timeout_ms: Some(5),
            ..Default::default()
        });
        let b = m.to_bytes();
        assert_eq!(Message::from_bytes(&b).unwrap(), m);
        let c = Message::Credit {
            channel: Channel::Stdout,
            bytes: 10,
        };
        assert_eq!(
            String::from_utf8(c.to_bytes()).unwrap(),
            r#"{"type":"credit","channel":"stdout","bytes":10}"#
        );
    }

    #[test]
    fn shell_code() {
        let s = ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        };
        assert_eq!(s.shell_code(), 137);
    }
}
