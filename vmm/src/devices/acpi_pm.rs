//! The hardware-reduced ACPI sleep control / status and reset registers.
//! Linux writes `SLP_TYP << 2 | SLP_EN` to the sleep control register for
//! poweroff (S5) and the FADT reset value to the reset register.

use super::bus::BusDevice;
use super::{ExitEvent, ExitSender};
use crate::acpi::S5_SLEEP_TYPE;

/// Sleep control register (also the reset register), one byte.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Offset of the sleep status register from [`ACPI_PM_PORT`].
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// Ports covered.
pub const ACPI_PM_PORT_LEN: u64 = 2;
/// FADT RESET_VALUE.
pub const RESET_VALUE: u8 = 1;
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// The ACPI power-management registers.
pub struct AcpiPm {
    exit: ExitSender,
}

impl AcpiPm {
    /// Registers that report poweroff/reset to `exit`.
    pub fn new(exit: ExitSender) -> Self {
        AcpiPm { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&v), 0) = (data.first(), offset) else {
            return;
        };
        if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE {
            let _ = self.exit.send(ExitEvent::Poweroff);
        } else if v == RESET_VALUE {
            let _ = self.exit.send(ExitEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut d = AcpiPm::new(tx);
        d.write(0, &[(3 << 2) | SLP_EN]); // S3: ignored
        d.write(1, &[(5 << 2) | SLP_EN]); // status register: ignored
        assert!(rx.try_recv().is_err());
        d.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(rx.try_recv(), Ok(ExitEvent::Poweroff));
        d.write(0, &[RESET_VALUE]);
        assert_eq!(rx.try_recv(), Ok(ExitEvent::Reset));
    }
}
