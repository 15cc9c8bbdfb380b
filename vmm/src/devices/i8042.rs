//! Minimal i8042 controller: enough for Linux's keyboard-controller reset
//! (`reboot=k` writes 0xFE to the command port). No keyboard is attached.

use super::bus::BusDevice;
use super::{ExitEvent, ExitSender};

/// First port (data port 0x60); the device spans 0x60..=0x64.
pub const I8042_PORT_BASE: u16 = 0x60;
/// Ports covered (0x60 data .. 0x64 command/status).
pub const I8042_PORT_LEN: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 controller.
pub struct I8042 {
    exit: ExitSender,
}

impl I8042 {
    /// A controller that reports resets to `exit`.
    pub fn new(exit: ExitSender) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: input buffer empty, so the reset loop never waits.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            let _ = self.exit.send(ExitEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fe_on_command_port_resets() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut d = I8042::new(tx);
        d.write(0, &[0xfe]);
        d.write(4, &[0xd1]);
        assert!(rx.try_recv().is_err());
        let mut s = [0xaau8];
        d.read(4, &mut s);
        assert_eq!(s, [0]);
        d.write(4, &[0xfe]);
        assert_eq!(rx.try_recv(), Ok(ExitEvent::Reset));
    }
}
