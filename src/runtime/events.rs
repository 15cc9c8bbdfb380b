//! Run events: what `--json` prints one per line, and what the human
//! printer turns into step progress.

use serde::Serialize;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One thing that happened during a run. `t_ms` (added by the sink) is the
/// time since the run started.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run was planned and the VM is starting.
    RunStarted {
        /// Spec name.
        name: String,
        /// `local` or `nested-lane`.
        launcher: String,
    },
    /// The guest agent answered.
    VmReady {
        /// Milliseconds from launch to the authenticated agent connection.
        boot_ms: u64,
    },
    /// An input was copied into the guest.
    InputCopied {
        /// Guest path.
        guest: String,
        /// Bytes sent.
        bytes: u64,
    },
    /// A step started.
    StepStarted {
        /// Step name.
        step: String,
        /// argv.
        argv: Vec<String>,
    },
    /// Output of a step.
    Output {
        /// Step name.
        step: String,
        /// Which stream.
        stream: Stream,
        /// The bytes, as UTF-8 (invalid sequences replaced).
        data: String,
    },
    /// A step finished.
    StepFinished {
        /// Step name.
        step: String,
        /// Exit code (128 + signal when killed by a signal).
        exit_code: i32,
        /// Signal number, when killed by one.
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Whether its time limit killed it.
        timed_out: bool,
        /// Wall time.
        duration_ms: u64,
    },
    /// A step did not run because a dependency failed.
    StepSkipped {
        /// Step name.
        step: String,
        /// Why.
        reason: String,
    },
    /// An output was copied to the host.
    OutputCopied {
        /// Guest path.
        guest: String,
        /// Host directory.
        host: String,
        /// Bytes received.
        bytes: u64,
    },
    /// The run ended.
    RunFinished {
        /// The process exit code voidbox uses.
        exit_code: i32,
        /// Wall time of the whole run.
        duration_ms: u64,
    },
    /// The run failed with a voidbox error.
    Error {
        /// The voidbox exit code.
        code: i32,
        /// The message.
        message: String,
    },
}

/// Receives events.
pub trait EventSink: Send {
    /// Handles one event.
    fn emit(&mut self, event: Event);
}
