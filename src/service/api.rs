//! The API's JSON bodies (docs/api.md): what the daemon reads and answers,
//! and what its Rust clients (`voidbox sandbox`, `voidbox mcp --daemon`) send.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// `sb-` and 16 hex digits.
    pub id: String,
    /// `running` or `dead`.
    pub state: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// When its lifetime ends (RFC 3339, UTC).
    pub expires_at: String,
    /// Lifetime in seconds.
    pub timeout_secs: u64,
    /// Idle limit in seconds.
    pub idle_timeout_secs: u64,
    /// The base image, if any.
    pub image: Option<String>,
    /// Guest memory.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Launch to ready agent, in ms.
    pub boot_ms: u64,
    /// `local` or `nested-lane`.
    pub launcher: String,
    /// Why it is dead.
    pub error: Option<String>,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxList {
    /// Every sandbox, oldest first.
    pub sandboxes: Vec<SandboxInfo>,
}

/// How bytes travel in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// UTF-8 text, invalid bytes replaced by U+FFFD.
    #[default]
    Utf8,
    /// Standard base64 with padding.
    Base64,
}

impl Encoding {
    /// Bytes as a JSON string.
    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// A JSON string as bytes; `field` names it in the error.
    pub fn decode(self, text: &str, field: &str) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Utf8 => Ok(text.as_bytes().to_vec()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("{field} is not valid base64 ({e}); send standard base64 with padding, or drop \"encoding\"")),
        }
    }
}

/// `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The program and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A shell command line instead (`/bin/sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `uid[:gid]` or `root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Time limit of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Stdin, then EOF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// How stdin and the output are carried.
    #[serde(default)]
    pub encoding: Encoding,
    /// Answer at once with an exec id.
    #[serde(default)]
    pub background: bool,
}

/// The answer of a finished exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code, or null when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Standard output (the first 8 MiB).
    pub stdout: String,
    /// Standard error (the first 8 MiB).
    pub stderr: String,
    /// Start to exit.
    pub duration_ms: u64,
    /// Whether output was dropped past the cap.
    pub truncated: bool,
    /// Whether its time limit ended it.
    pub timed_out: bool,
    /// How `stdout` and `stderr` are carried.
    pub encoding: Encoding,
}

/// One line of an NDJSON exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The process started (always the first event).
    Started {
        /// Its guest pid.
        pid: u32,
    },
    /// Output on stdout.
    Stdout {
        /// The bytes, encoded.
        data: String,
    },
    /// Output on stderr.
    Stderr {
        /// The bytes, encoded.
        data: String,
    },
    /// The end.
    Exit {
        /// Exit code.
        exit_code: Option<i32>,
        /// Signal.
        signal: Option<i32>,
        /// Start to exit.
        duration_ms: u64,
        /// Whether its time limit ended it.
        timed_out: bool,
    },
    /// The stream failed.
    Error {
        /// What went wrong.
        error: ErrorBody,
    },
}

/// `{"code", "message"}` of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable.
    pub code: String,
    /// For people (and models).
    pub message: String,
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// The error.
    pub error: ErrorBody,
}

/// `202` answer of a background exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    /// `ex-` and 16 hex digits.
    pub exec_id: String,
}

/// A background exec's state and output from the offsets asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStatus {
    /// Its id.
    pub exec_id: String,
    /// The command.
    pub argv: Vec<String>,
    /// `running` or `exited`.
    pub state: String,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Signal once killed.
    pub signal: Option<i32>,
    /// Whether its time limit ended it.
    pub timed_out: bool,
    /// Stdout from `stdout_offset`.
    pub stdout: String,
    /// Stderr from `stderr_offset`.
    pub stderr: String,
    /// The stdout offset to ask for next.
    pub stdout_next: u64,
    /// The stderr offset to ask for next.
    pub stderr_next: u64,
    /// Whether output before what is returned was dropped.
    pub truncated: bool,
    /// How the output is carried.
    pub encoding: Encoding,
}

/// `GET .../execs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecList {
    /// Background execs, oldest first (output left out).
    pub execs: Vec<ExecStatus>,
}

/// `POST .../stdin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinBody {
    /// Bytes for stdin.
    #[serde(default)]
    pub data: String,
    /// How `data` is carried.
    #[serde(default)]
    pub encoding: Encoding,
    /// Close stdin afterwards.
    #[serde(default)]
    pub eof: bool,
}

/// `POST .../signal`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    /// `TERM`, `SIGKILL`, `9`, ...
    pub signal: serde_json::Value,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// `GET .../files?list=true`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileList {
    /// The entries, by name.
    pub entries: Vec<FileEntry>,
    /// Whether the directory had more entries than are listed.
    #[serde(default)]
    pub truncated: bool,
}

/// A signal given by name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(v: &serde_json::Value) -> Result<i32, String> {
    let bad = || {
        format!("signal {v} is not a signal; use a name like \"TERM\" or \"KILL\", or a number from 1 to 64")
    };
    if let Some(n) = v.as_i64() {
        return if (1..=64).contains(&n) {
            Ok(n as i32)
        } else {
            Err(bad())
        };
    }
    let name = v.as_str().ok_or_else(bad)?.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PIPE" => libc::SIGPIPE,
        other => other
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(bad)?,
    };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        use serde_json::json;
        assert_eq!(parse_signal(&json!("TERM")), Ok(libc::SIGTERM));
        assert_eq!(parse_signal(&json!("sigkill")), Ok(libc::SIGKILL));
        assert_eq!(parse_signal(&json!(9)), Ok(9));
        assert_eq!(parse_signal(&json!("15")), Ok(15));
        assert!(parse_signal(&json!("NOPE")).unwrap_err().contains("TERM"));
        assert!(parse_signal(&json!(0)).is_err());
        assert!(parse_signal(&json!(null)).is_err());
    }

    #[test]
    fn exec_body_refuses_unknown_fields_by_name() {
        let e = serde_json::from_str::<ExecBody>(r#"{"argv":["x"],"comand":"y"}"#).unwrap_err();
        assert!(e.to_string().contains("comand"), "{e}");
    }

    #[test]
    fn base64_round_trip_and_bad_input_named() {
        let b = Encoding::Base64;
        assert_eq!(
            b.decode(&b.encode(b"\xff\x00ab"), "stdin").unwrap(),
            b"\xff\x00ab"
        );
        assert!(b.decode("%%%", "stdin").unwrap_err().contains("stdin"));
        assert_eq!(Encoding::Utf8.encode(b"a\xffb"), "a\u{fffd}b");
    }
}
