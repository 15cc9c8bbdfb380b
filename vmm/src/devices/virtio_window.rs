//! virtio-mmio transports as MMIO bus devices.

use super::bus::BusDevice;
use crate::virtio::MmioTransport;

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}
