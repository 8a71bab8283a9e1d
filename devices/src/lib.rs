//! Device models for the VMM: the port/MMIO [`Bus`] that KVM exits are dispatched to, a 16550A
//! UART ([`SerialDevice`]) and an i8042 controller ([`I8042Wrapper`]) built on `vm-superio`, a
//! user-space IOAPIC for a split irqchip ([`IoApic`]), and the virtio devices behind the
//! virtio-mmio transport ([`virtio`]).
//!
//! This crate never talks to KVM. Interrupt lines and notifications are [`EventFdTrigger`]s;
//! `vmm-core` binds their EventFds to guest IRQs (KVM_IRQFD) or watches them in its event loop.
//! Everything here builds and tests on any Linux machine.
//!
//! Nothing a guest controls panics: out-of-range offsets, odd access sizes and accesses that
//! straddle a device's range are ignored (reads return all ones) or reported as unclaimed.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use vmm_devices::{Bus, EventFdTrigger, I8042Wrapper, SerialDevice};
//! use vmm_devices::{I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
//! use vmm_sys_util::eventfd::EventFd;
//!
//! let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap(); // bound with KVM_IRQFD by vmm-core
//! let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap(); // watched by the VMM
//! let serial = SerialDevice::new(
//!     EventFdTrigger::new(irq.try_clone().unwrap()),
//!     Box::new(std::io::sink()),
//! );
//! let i8042 = I8042Wrapper::new(EventFdTrigger::new(reset.try_clone().unwrap()));
//!
//! let mut pio = Bus::new();
//! pio.insert(Arc::new(Mutex::new(serial)), SERIAL_PORT_BASE, SERIAL_PORT_LEN).unwrap();
//! pio.insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN).unwrap();
//!
//! // A vCPU exit: `outb 0xfe, 0x64`.
//! assert!(pio.write(0x64, &[0xfe]));
//! assert_eq!(reset.read().unwrap(), 1);
//! // An unclaimed port reads as all ones (the caller fills them).
//! let mut data = [0u8];
//! if !pio.read(0x80, &mut data) {
//!     data.fill(0xff);
//! }
//! assert_eq!(pio.unclaimed_accesses(), 1);
//! ```

#![deny(missing_docs)]

pub mod acpi;
pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod ioapic;
pub mod metrics;
pub mod serial;
pub mod trigger;
pub mod unix_socket;
pub mod virtio;

/// The token-bucket rate limiter the block, net and rng devices take (re-exported).
pub use vmm_rate_limiter as rate_limiter;

pub use acpi::{AcpiPmDevice, Ged, GedState};
pub use boot_timer::BootTimer;
pub use bus::{Bus, BusDevice};
pub use i8042::{I8042Wrapper, I8042_PORT_BASE, I8042_PORT_LEN};
pub use ioapic::{IoApic, IoApicRoutes, IoApicState, MsiMessage};
pub use serial::{InputRoom, SerialDevice, SerialDeviceState, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
pub use trigger::{EventFd, EventFdTrigger, EFD_NONBLOCK};

/// Errors of the device crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device range overlaps one already on the bus.
    #[error("bus range {base:#x}..+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A device was inserted with a zero-length range.
    #[error("bus range has zero length")]
    ZeroLength,
    /// `base + len` does not fit in 64 bits.
    #[error("bus range end overflows the 64-bit address space")]
    Overflow,
    /// A saved serial state that does not fit the UART (receive FIFO too long).
    #[error("saved serial state is invalid: its receive FIFO is longer than the UART's")]
    SerialState,
    /// Raising a device's interrupt (writing its EventFd) failed.
    #[error("failed to raise the device interrupt: {0}")]
    Interrupt(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    use crate::serial::tests::SharedBuf;

    #[test]
    fn serial_and_i8042_on_the_port_bus_at_their_real_bases() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(out.clone()),
        )));
        let i8042 = I8042Wrapper::new(EventFdTrigger::new(reset.try_clone().unwrap()));
        let mut bus = Bus::new();
        bus.insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN)
            .unwrap();

        for &b in b"ok" {
            assert!(bus.write(0x3f8, &[b]));
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"ok");
        assert_eq!(serial.lock().unwrap().enqueue_input(b"q").unwrap(), 1);
        let mut data = [0u8];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data[0] & 1, 1, "LSR data ready");
        assert!(bus.read(0x3f8, &mut data));
        assert_eq!(data, [b'q']);

        assert!(bus.read(0x64, &mut data));
        assert!(bus.write(0x64, &[0xfe]));
        assert_eq!(reset.read().unwrap(), 1);
        assert!(!bus.read(0x3f7, &mut data));
        assert!(!bus.read(0x65, &mut data));
        assert!(!bus.write(0x3fe, &[0, 0, 0, 0]), "straddles the UART's end");
        assert_eq!(bus.unclaimed_accesses(), 3);
    }

    #[test]
    fn errors_name_the_range() {
        let e = Error::Overlap {
            base: 0x3f8,
            len: 8,
        };
        assert_eq!(
            e.to_string(),
            "bus range 0x3f8..+0x8 overlaps a device already on the bus"
        );
    }
}
