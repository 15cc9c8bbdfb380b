//! The 16550 serial console on 0x3f8 (vm-superio) and what the VMM learns
//! from it: the last lines (shown when the guest panics) and the kernel's
//! "Kernel panic" line.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use super::{ExitEvent, ExitSender, PanicSource};
use crate::logcap::CappedWriter;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Ports covered by the UART.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's IRQ (GSI).
pub const COM1_IRQ: u32 = 4;
/// How many console lines are kept for error reports.
pub const KEPT_LINES: usize = 40;
/// Longest line kept (longer lines are cut, output is not).
const MAX_LINE: usize = 512;
const PANIC_LINE: &str = "Kernel panic - not syncing";
const PANIC_END: &str = "---[ end Kernel panic";

/// Raises the serial interrupt through an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go.
pub enum ConsoleSink {
    /// The VMM's stdout.
    Stdout,
    /// A file (flushed per line).
    /// A file, cut at [`crate::logcap::CONSOLE_LOG_CAP`] bytes.
    File(CappedWriter<LineWriter<File>>),
    /// Nowhere.
    Off,
}

/// The last console lines, shared with the VMM's exit path.
#[derive(Debug, Default)]
pub struct ConsoleLog {
    lines: VecDeque<String>,
    /// Lines seen so far (to tell whether the panic line scrolled out).
    count: u64,
    /// The first "Kernel panic" line and its number.
    panic_line: Option<(u64, String)>,
}

impl ConsoleLog {
    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }

    /// The lines to show for a panic: the kept lines, preceded by the
    /// panic line (and a `...` marker) when its stack dump pushed it out.
    pub fn panic_report(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(KEPT_LINES + 2);
        if let Some((n, line)) = &self.panic_line {
            let oldest_kept = self.count - self.lines.len() as u64;
            if *n < oldest_kept {
                out.push(line.clone());
                out.push("...".to_string());
            }
        }
        out.extend(self.lines.iter().cloned());
        out
    }

    fn push(&mut self, line: String) {
        if self.panic_line.is_none() && line.contains(PANIC_LINE) && !line.contains(PANIC_END) {
            self.panic_line = Some((self.count, line.clone()));
        }
        self.count += 1;
        if self.lines.len() == KEPT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// The UART's output: forwards bytes to the sink and splits lines for the log.
pub struct ConsoleWriter {
    sink: ConsoleSink,
    line: Vec<u8>,
    log: Arc<Mutex<ConsoleLog>>,
    exit: ExitSender,
}

impl ConsoleWriter {
    /// A writer into `sink` that records lines in `log` and reports panics to `exit`.
    pub fn new(sink: ConsoleSink, log: Arc<Mutex<ConsoleLog>>, exit: ExitSender) -> Self {
        ConsoleWriter {
            sink,
            line: Vec::with_capacity(128),
            log,
            exit,
        }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line).trim_end().to_string();
        self.line.clear();
        // The end line repeats the panic text, so test it first.
        if text.contains(PANIC_END) {
            let _ = self.exit.send(ExitEvent::PanicReportEnd);
        } else if text.contains(PANIC_LINE) {
            let _ = self.exit.send(ExitEvent::Panic(PanicSource::Console));
        }
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text);
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A console that cannot be written must not stop the guest.
        let _ = match &mut self.sink {
            ConsoleSink::Stdout => io::stdout().lock().write_all(buf),
            ConsoleSink::File(f) => f.write_all(buf),
            ConsoleSink::Off => Ok(()),
        };
        for &b in buf {
            match b {
                b'\n' => self.end_line(),
                b'\r' => {}
                _ if self.line.len() < MAX_LINE => self.line.push(b),
                _ => {}
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            ConsoleSink::Stdout => io::stdout().flush(),
            ConsoleSink::File(f) => f.flush(),
            ConsoleSink::Off => Ok(()),
        }
    }
}

/// The serial port as a bus device.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, ConsoleWriter>,
}

impl SerialConsole {
    /// A UART that raises `irq` and writes into `out`.
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        SerialConsole {
            uart: Serial::new(EventFdTrigger(irq), out),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, b) {
                crate::guest_warn!("serial write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_last_lines_and_spots_panics() {
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(ConsoleLog::default()));
        let mut w = ConsoleWriter::new(ConsoleSink::Off, log.clone(), tx);
        for i in 0..KEPT_LINES + 5 {
            write!(w, "line {i}\r\n").unwrap();
        }
        let lines = log.lock().unwrap().lines();
        assert_eq!(lines.len(), KEPT_LINES);
        assert_eq!(lines[0], "line 5");
        assert!(rx.try_recv().is_err());
        w.write_all(b"[    1.0] Kernel panic - not syncing: VFS: Unable to mount root\n")
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(ExitEvent::Panic(PanicSource::Console)));
        w.write_all(b"---[ end Kernel panic - not syncing: x ]---\n")
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(ExitEvent::PanicReportEnd));
        // The panic line survives a long stack dump in the report.
        for i in 0..KEPT_LINES {
            writeln!(w, "trace {i}").unwrap();
        }
        let report = log.lock().unwrap().panic_report();
        assert!(report[0].contains("Kernel panic - not syncing: VFS"));
        assert_eq!(report[1], "...");
        assert_eq!(report.len(), KEPT_LINES + 2);
        // A partial line is not reported until it ends; long lines are cut.
        w.write_all(&[b'x'; 2000]).unwrap();
        w.write_all(b"\n").unwrap();
        assert_eq!(log.lock().unwrap().lines().last().unwrap().len(), MAX_LINE);
    }

    #[test]
    fn uart_forwards_transmitted_bytes() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(ConsoleLog::default()));
        let w = ConsoleWriter::new(ConsoleSink::Off, log.clone(), tx);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialConsole::new(irq, w);
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(log.lock().unwrap().lines(), vec!["hi".to_string()]);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }
}
