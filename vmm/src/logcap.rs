//! Bounds on what a guest can make the VMM write to the host's disk: warnings
//! a guest can trigger at VM-exit rate are rate-limited per call site, and the
//! console log and the VMM's own log stop at a size cap with a marker.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Warnings a call site may log per window before it is muted.
pub const WARN_BURST: u32 = 10;
/// The rate limit's window.
pub const WARN_WINDOW: Duration = Duration::from_secs(1);
/// Most bytes of guest console kept on disk per VM.
pub const CONSOLE_LOG_CAP: u64 = 16 << 20;
/// Most bytes the VMM writes to its own stderr (its log).
pub const VMM_LOG_CAP: u64 = 4 << 20;

/// A per-call-site limiter: at most [`WARN_BURST`] events per [`WARN_WINDOW`].
pub struct RateLimit {
    state: Mutex<Option<Window>>,
}

struct Window {
    start: Instant,
    allowed: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter with nothing logged yet (usable in a `static`).
    pub const fn new() -> Self {
        RateLimit {
            state: Mutex::new(None),
        }
    }

    /// `Some(n)` if this event may be logged, where `n` events were suppressed
    /// since the last one logged; `None` if it must be dropped.
    pub fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let w = state.get_or_insert(Window {
            start: now,
            allowed: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= WARN_WINDOW {
            w.start = now;
            w.allowed = 0;
        }
        if w.allowed >= WARN_BURST {
            w.suppressed += 1;
            return None;
        }
        w.allowed += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `tracing::warn!` for conditions a guest can trigger at will: rate-limited
/// per call site, with the count of muted warnings on the next one logged.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::logcap::RateLimit = $crate::logcap::RateLimit::new();
        if let Some(muted) = LIMIT.check() {
            if muted > 0 {
                tracing::warn!("({muted} similar warnings were muted)");
            }
            tracing::warn!($($arg)*);
        }
    }};
}

/// A writer that passes at most `cap` bytes, then writes `marker` once and
/// drops the rest while still reporting success (the guest must not stall).
pub struct CappedWriter<W: Write> {
    inner: W,
    cap: u64,
    written: u64,
    marker: &'static str,
    capped: bool,
}

impl<W: Write> CappedWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W, cap: u64, marker: &'static str) -> Self {
        CappedWriter {
            inner,
            cap,
            written: 0,
            marker,
            capped: false,
        }
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.capped {
            return Ok(buf.len());
        }
        let room = self.cap.saturating_sub(self.written);
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.inner.write_all(&buf[..take])?;
        self.written += take as u64;
        if take < buf.len() {
            self.capped = true;
            self.inner.write_all(self.marker.as_bytes())?;
            self.inner.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes written to stderr by [`capped_stderr`] writers, process-wide.
static STDERR_WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Stderr with a process-wide cap of [`VMM_LOG_CAP`] bytes (for the log
/// subscriber: `with_writer(capped_stderr)`).
pub fn capped_stderr() -> CappedStderr {
    CappedStderr
}

/// See [`capped_stderr`].
pub struct CappedStderr;

impl Write for CappedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let before = STDERR_WRITTEN.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if before >= VMM_LOG_CAP {
            return Ok(buf.len());
        }
        let take = buf.len().min((VMM_LOG_CAP - before) as usize);
        let mut err = io::stderr().lock();
        err.write_all(&buf[..take])?;
        if take < buf.len() {
            err.write_all(b"\n[voidbox-vmm: log capped; further messages dropped]\n")?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_mutes() {
        let l = RateLimit::new();
        let allowed = (0..100_000).filter(|_| l.check().is_some()).count();
        // All in one window (or, on a very slow machine, a few).
        assert!(allowed >= WARN_BURST as usize, "{allowed}");
        assert!(allowed <= 10 * WARN_BURST as usize, "{allowed}");
    }

    #[test]
    fn capped_writer_stops_at_the_cap_with_a_marker() {
        let mut out = Vec::new();
        {
            let mut w = CappedWriter::new(&mut out, 1000, "[cut]");
            for _ in 0..100 {
                assert_eq!(w.write(&[b'a'; 64]).unwrap(), 64);
            }
        }
        assert_eq!(out.len(), 1000 + "[cut]".len());
        assert!(out.ends_with(b"[cut]"));
    }
}
