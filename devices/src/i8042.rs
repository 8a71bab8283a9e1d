//! The i8042 keyboard controller, reduced to the guest's reset request.

use std::fmt;

use vm_superio::I8042Device;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// The i8042's base on the port-I/O bus (0x60, the data port).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64: the data port at offset 0 and the status/command port at offset 4.
pub const I8042_PORT_LEN: u64 = 5;

/// Offset of the data port (0x60).
const DATA_OFFSET: u64 = 0;
/// Offset of the status (read) / command (write) port (0x64).
const COMMAND_OFFSET: u64 = 4;

/// The i8042 controller, enough for the guest's reset request.
///
/// Command 0xFE written to port 0x64 fires `reset`, an [`EventFdTrigger`] the VMM watches to
/// end the VM. Reads of the data and status ports return 0 (no data, controller idle); other
/// offsets read all ones, and writes to them are ignored, as are accesses wider than a byte.
pub struct I8042Wrapper {
    device: I8042Device<EventFdTrigger>,
    reset_errors: u64,
}

impl fmt::Debug for I8042Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I8042Wrapper")
            .field("reset_errors", &self.reset_errors)
            .finish_non_exhaustive()
    }
}

impl I8042Wrapper {
    /// A controller that fires `reset` when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        I8042Wrapper {
            device: I8042Device::new(reset),
            reset_errors: 0,
        }
    }

    /// The reset trigger.
    pub fn reset_evt(&self) -> &EventFdTrigger {
        self.device.reset_evt()
    }

    /// Times firing the reset trigger failed.
    pub fn reset_errors(&self) -> u64 {
        self.reset_errors
    }
}

impl BusDevice for I8042Wrapper {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (DATA_OFFSET | COMMAND_OFFSET, [byte]) => *byte = self.device.read(offset as u8),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (DATA_OFFSET | COMMAND_OFFSET, &[value]) = (offset, data) {
            if self.device.write(offset as u8, value).is_err() {
                self.reset_errors += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use vmm_sys_util::eventfd::EventFd;

    fn i8042() -> (I8042Wrapper, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042Wrapper::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        (dev, evt)
    }

    fn no_event(evt: &EventFd) -> bool {
        evt.read().unwrap_err().kind() == io::ErrorKind::WouldBlock
    }

    #[test]
    fn reset_command_fires_the_reset_event() {
        let (mut dev, evt) = i8042();
        assert!(no_event(&evt));
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(dev.reset_errors(), 0);
        assert!(dev.reset_evt().event_fd().try_clone().is_ok());
    }

    #[test]
    fn other_commands_and_ports_do_not_reset() {
        let (mut dev, evt) = i8042();
        for value in (0..=0xffu8).filter(|&v| v != 0xfe) {
            dev.write(COMMAND_OFFSET, &[value]);
        }
        for offset in [0, 1, 2, 3, 5, 0x64, u64::MAX] {
            dev.write(offset, &[0xfe]);
        }
        // The reset command, but not as a single byte.
        dev.write(COMMAND_OFFSET, &[0xfe, 0]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0xfe, 0xfe, 0xfe]);
        dev.write(COMMAND_OFFSET, &[]);
        assert!(no_event(&evt));
    }

    #[test]
    fn status_and_data_reads_work() {
        let (mut dev, _evt) = i8042();
        let mut data = [0xaau8];
        dev.read(COMMAND_OFFSET, &mut data);
        assert_eq!(data, [0], "idle controller: no output, input buffer empty");
        data = [0xaa];
        dev.read(DATA_OFFSET, &mut data);
        assert_eq!(data, [0]);
    }

    #[test]
    fn odd_offsets_and_sizes_do_not_panic() {
        let (mut dev, evt) = i8042();
        for offset in [1, 2, 3, 5, 8, 1 << 40, u64::MAX] {
            let mut data = [0u8];
            dev.read(offset, &mut data);
            assert_eq!(data, [0xff], "offset {offset:#x}");
        }
        for size in [0, 2, 4, 8, 9, 64] {
            let mut data = vec![0u8; size];
            dev.read(COMMAND_OFFSET, &mut data);
            assert!(data.iter().all(|&b| b == 0xff));
            dev.write(COMMAND_OFFSET, &data);
        }
        assert!(no_event(&evt));
        assert!(format!("{dev:?}").contains("I8042Wrapper"));
    }
}
