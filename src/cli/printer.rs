//! Turning run events into output: human step progress on stderr with the
//! steps' own output on stdout/stderr, or one JSON object per line.

use std::io::Write;
use std::time::Instant;

use crate::runtime::{Event, EventSink, Stream};

/// Human output: progress lines on stderr, step output passed through.
pub struct HumanSink {
    /// Print progress lines (off for `--quiet`-like uses).
    pub progress: bool,
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl EventSink for HumanSink {
    fn emit(&mut self, event: Event) {
        let mut err = std::io::stderr().lock();
        match event {
            Event::Output { stream, data, .. } => match stream {
                Stream::Stdout => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(data.as_bytes());
                    let _ = out.flush();
                }
                Stream::Stderr => {
                    let _ = err.write_all(data.as_bytes());
                }
            },
            _ if !self.progress => {}
            Event::RunStarted { name, launcher } => {
                let _ = writeln!(err, "==> {name}: starting microVM ({launcher})");
            }
            Event::VmReady { boot_ms } => {
                let _ = writeln!(err, "==> guest ready in {}", secs(boot_ms));
            }
            Event::InputCopied { guest, bytes } => {
                let _ = writeln!(err, "==> input {guest} ({bytes} bytes)");
            }
            Event::StepStarted { step, .. } => {
                let _ = writeln!(err, "==> step {step}");
            }
            Event::StepFinished {
                step,
                exit_code,
                timed_out,
                duration_ms,
                ..
            } => {
                let how = if timed_out {
                    "timed out".to_string()
                } else if exit_code == 0 {
                    "ok".to_string()
                } else {
                    format!("failed with exit code {exit_code}")
                };
                let _ = writeln!(err, "==> step {step}: {how} ({})", secs(duration_ms));
            }
            Event::StepSkipped { step, reason } => {
                let _ = writeln!(err, "==> step {step}: skipped ({reason})");
            }
            Event::OutputCopied { guest, host, bytes } => {
                let _ = writeln!(err, "==> output {guest} -> {host} ({bytes} bytes)");
            }
            Event::RunFinished {
                exit_code,
                duration_ms,
            } => {
                let _ = writeln!(
                    err,
                    "==> done: exit code {exit_code} ({})",
                    secs(duration_ms)
                );
            }
            Event::Error { message, .. } => {
                let _ = writeln!(err, "voidbox: error: {message}");
            }
        }
    }
}

/// `--json`: one event per line on stdout, with `t_ms` since the start.
pub struct JsonSink {
    start: Instant,
}

impl JsonSink {
    /// Starts the clock.
    pub fn new() -> Self {
        JsonSink {
            start: Instant::now(),
        }
    }
}

impl EventSink for JsonSink {
    fn emit(&mut self, event: Event) {
        let mut value = serde_json::to_value(&event).expect("events serialize");
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "t_ms".into(),
                (self.start.elapsed().as_millis() as u64).into(),
            );
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }
}

/// The message of an error for the terminal: the whole cause chain.
pub fn format_error(err: &anyhow::Error) -> String {
    format!("{err:#}").trim_end().to_string()
}
