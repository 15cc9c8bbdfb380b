//! A minimal `tracing` subscriber for the agent binary: one line per event to
//! a sink (`/dev/kmsg` as PID 1, stderr in serve mode). No spans, no deps.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Writes formatted events to `sink`.
pub struct LineLogger {
    sink: Mutex<Box<dyn Write + Send>>,
    max: Level,
    prefix: &'static str,
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl LineLogger {
    /// Installs the logger globally.
    pub fn install(sink: Box<dyn Write + Send>, max: Level, prefix: &'static str) {
        let _ = tracing::subscriber::set_global_default(LineLogger {
            sink: Mutex::new(sink),
            max,
            prefix,
        });
    }
}

impl Subscriber for LineLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.max
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        // kmsg priority prefix: <3> err, <4> warning, <6> info, <7> debug.
        let pri = match *e.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        let mut line = Line(format!("<{pri}>{}:", self.prefix));
        e.record(&mut line);
        line.0.push('\n');
        if let Ok(mut s) = self.sink.lock() {
            // One write per line: /dev/kmsg takes one record per write.
            let _ = s.write_all(line.0.as_bytes());
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
