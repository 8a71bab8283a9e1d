//! The vCPU exit handler: port and MMIO exits go to the two buses.

use vmm_devices::Bus;
use vmm_vcpu::ExitHandler;

/// Dispatches vCPU exits to the port bus and the MMIO bus. Unclaimed reads see all ones and
/// unclaimed writes are dropped (the bus counts both), as on real hardware.
pub struct BusExitHandler {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
}

impl ExitHandler for BusExitHandler {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.write(u64::from(port), data);
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data);
    }
}
