//! pvpanic at I/O port 0x505: the guest writes PANICKED there when it panics.

use super::bus::BusDevice;
use super::{ExitEvent, ExitSender, PanicSource};

/// The pvpanic port (QEMU's default, described in the DSDT as QEMU0001).
pub const PVPANIC_PORT: u16 = 0x505;
const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic device.
pub struct PvPanic {
    exit: ExitSender,
}

impl PvPanic {
    /// A device that reports panics to `exit`.
    pub fn new(exit: ExitSender) -> Self {
        PvPanic { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Capabilities: the events we understand.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first().is_some_and(|b| b & PVPANIC_PANICKED != 0) {
            let _ = self.exit.send(ExitEvent::Panic(PanicSource::Pvpanic));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panicked_bit_reports_panic() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut d = PvPanic::new(tx);
        let mut caps = [0u8];
        d.read(0, &mut caps);
        assert_eq!(caps[0], 3);
        d.write(0, &[PVPANIC_CRASH_LOADED]);
        assert!(rx.try_recv().is_err());
        d.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(rx.try_recv(), Ok(ExitEvent::Panic(PanicSource::Pvpanic)));
    }
}
