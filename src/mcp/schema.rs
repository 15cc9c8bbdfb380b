//! The tools' arguments and answers: typed, with the JSON Schemas (and their
//! descriptions, from these doc comments) that the tool list shows a model.

use rmcp::schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `sandbox_create` arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct CreateArgs {
    /// OCI image to boot, by registry reference (e.g. "python:3.12-slim", "alpine:3.20"),
    /// pulled on first use. Omit for the default guest: a minimal busybox userland.
    pub image: Option<String>,
    /// Guest memory in MiB (default 512, at least 64).
    pub memory_mb: Option<u32>,
    /// Virtual CPUs (default 1).
    pub vcpus: Option<u32>,
    /// The sandbox's lifetime in seconds, after which it is destroyed (default 3600).
    pub timeout_secs: Option<u64>,
}

/// `sandbox_exec` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct ExecArgs {
    /// The sandbox, as returned by sandbox_create.
    pub sandbox_id: String,
    /// A shell command line, run with `/bin/sh -c` (pipes, redirections, `&&` and `;` work).
    pub command: String,
    /// Seconds before the command and its children are killed (default 300).
    pub timeout_secs: Option<u64>,
    /// Working directory: an absolute guest path (default: the sandbox's working directory).
    pub cwd: Option<String>,
}

/// `sandbox_write_file` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct WriteFileArgs {
    /// The sandbox, as returned by sandbox_create.
    pub sandbox_id: String,
    /// Absolute guest path of the file, under a writable directory such as /tmp.
    pub path: String,
    /// The whole file as UTF-8 text (it replaces any existing file).
    pub content: String,
}

/// `sandbox_read_file` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct ReadFileArgs {
    /// The sandbox, as returned by sandbox_create.
    pub sandbox_id: String,
    /// Absolute guest path of a regular file.
    pub path: String,
}

/// `sandbox_destroy` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct DestroyArgs {
    /// The sandbox to destroy.
    pub sandbox_id: String,
}

/// `sandbox_create` answer.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Created {
    /// Names the sandbox in the other tools.
    pub sandbox_id: String,
    /// The image it booted (null: the default guest).
    pub image: Option<String>,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// When its lifetime ends (RFC 3339, UTC).
    pub expires_at: String,
    /// It is destroyed after this many seconds unused.
    pub idle_timeout_secs: u64,
}

/// `sandbox_exec` answer.
#[derive(Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Executed {
    /// The exit code; null when a signal ended the command.
    pub exit_code: Option<i32>,
    /// Standard output (long output keeps its head and tail around a marker).
    pub stdout: String,
    /// Standard error (same truncation).
    pub stderr: String,
    /// The signal that ended the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether timeout_secs passed and the command was killed.
    #[serde(skip_serializing_if = "is_false")]
    pub timed_out: bool,
    /// Whether output was left out.
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Run time in milliseconds.
    pub duration_ms: u64,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// `sandbox_write_file` answer.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Written {
    /// The file written.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// `sandbox_read_file` answer.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct FileRead {
    /// The file read.
    pub path: String,
    /// Its content as text (invalid UTF-8 bytes replaced by U+FFFD).
    pub content: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// One sandbox of `sandbox_list`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Listed {
    /// Names the sandbox in the other tools.
    pub sandbox_id: String,
    /// `running`, or `dead` (then `error` says why; destroy it).
    pub state: String,
    /// The image (null: the default guest).
    pub image: Option<String>,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// When its lifetime ends (RFC 3339, UTC).
    pub expires_at: String,
    /// Why it is dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `sandbox_list` answer.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SandboxList {
    /// Every sandbox, oldest first.
    pub sandboxes: Vec<Listed>,
}

/// `sandbox_destroy` answer.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Destroyed {
    /// The sandbox destroyed.
    pub sandbox_id: String,
}
