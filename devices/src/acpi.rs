//! The two ACPI devices of a hardware-reduced ACPI machine:
//!
//! - [`AcpiPmDevice`]: the FADT's sleep control, sleep status and reset registers (one byte
//!   each, in that order, on the port bus). A guest powers off by writing SLP_TYP 5 with
//!   SLP_EN to the sleep control register ([`S5_SLEEP_CONTROL`]), and resets by writing
//!   [`RESET_VALUE`] to the reset register; each raises its own [`EventFdTrigger`], which the
//!   VMM watches to end the VM.
//! - [`Ged`]: a Generic Event Device's event register (`ACPI0013` in the DSDT). The host sets a
//!   bit ([`Ged::press_power_button`]) and raises the GED's interrupt; the guest's `_EVT`
//!   method reads the register, which clears it, and notifies the power button device.
//!
//! The register values are the ones the loader's ACPI tables declare (`vmm_loader::acpi`).

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;

use crate::{BusDevice, EventFdTrigger};

/// The sleep type of S5 (soft off), as the DSDT's `_S5_` package says.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN, bit 5 of the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// SLP_TYP, bits 2..4 of the sleep control register.
const SLEEP_TYPE_MASK: u8 = 0b111 << 2;
/// The sleep control value that powers off: SLP_TYP 5 and SLP_EN.
pub const S5_SLEEP_CONTROL: u8 = (S5_SLEEP_TYPE << 2) | SLEEP_ENABLE;
/// The reset register's value that resets the machine.
pub const RESET_VALUE: u8 = 1;
/// Ports the registers take: sleep control, sleep status, reset.
pub const ACPI_PM_LEN: u64 = 3;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;

/// The sleep and reset registers. Reads return 0 (the sleep status never shows WAK_STS: no
/// sleep state but S5 is declared, and S5 does not come back).
#[derive(Debug)]
pub struct AcpiPmDevice {
    power_off: EventFdTrigger,
    reset: EventFdTrigger,
}

impl AcpiPmDevice {
    /// Registers that raise `power_off` when the guest enters S5 and `reset` when it writes the
    /// reset register.
    pub fn new(power_off: EventFdTrigger, reset: EventFdTrigger) -> AcpiPmDevice {
        AcpiPmDevice { power_off, reset }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = *data else {
            return;
        };
        let raised = match offset {
            SLEEP_CONTROL_OFFSET
                if value & SLEEP_ENABLE != 0 && (value & SLEEP_TYPE_MASK) >> 2 == S5_SLEEP_TYPE =>
            {
                self.power_off.trigger()
            }
            SLEEP_CONTROL_OFFSET if value & SLEEP_ENABLE != 0 => {
                log::warn!(
                    "guest asked for sleep state {}: not supported",
                    value >> 2 & 7
                );
                Ok(())
            }
            RESET_OFFSET if value == RESET_VALUE => self.reset.trigger(),
            // Clearing WAK_STS in the sleep status register, other values: nothing to do.
            _ => Ok(()),
        };
        if let Err(e) = raised {
            log::error!("ACPI power-management register: cannot signal the VMM: {e}");
        }
    }
}

/// Bit of the GED's event register: the power button was pressed.
pub const GED_POWER_BUTTON: u8 = 1;
/// Bytes of MMIO space the GED's register block takes (one byte is used).
pub const GED_LEN: u64 = 0x1000;

/// The GED's saved state: events raised but not yet read by the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GedState {
    /// The event register.
    pub pending: u8,
}

/// A Generic Event Device: an event register at offset 0 and an interrupt.
#[derive(Debug)]
pub struct Ged {
    pending: u8,
    irq: EventFdTrigger,
}

impl Ged {
    /// A GED with no event pending that raises `irq` for each event.
    pub fn new(irq: EventFdTrigger) -> Ged {
        Ged { pending: 0, irq }
    }

    /// Sets the power button bit and raises the interrupt.
    pub fn press_power_button(&mut self) -> std::io::Result<()> {
        self.pending |= GED_POWER_BUTTON;
        self.irq.trigger()
    }

    /// The state to save.
    pub fn save_state(&self) -> GedState {
        GedState {
            pending: self.pending,
        }
    }

    /// Puts back a saved state. Call [`Ged::raise_pending`] once the interrupt controller is
    /// restored too.
    pub fn restore_state(&mut self, state: &GedState) {
        self.pending = state.pending;
    }

    /// Raises the interrupt again if an event is pending: an edge raised just before a
    /// snapshot may not have reached the guest. A guest that had already taken it reads an
    /// empty register in its second `_EVT` and does nothing.
    pub fn raise_pending(&self) -> std::io::Result<()> {
        if self.pending != 0 {
            self.irq.trigger()?;
        }
        Ok(())
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = std::mem::take(&mut self.pending);
            }
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventFd;

    fn event() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn fired(event: &EventFd) -> bool {
        event.read().is_ok()
    }

    #[test]
    fn s5_powers_off_and_the_reset_register_resets() {
        let (off, reset) = (event(), event());
        let mut pm = AcpiPmDevice::new(
            EventFdTrigger::new(off.try_clone().unwrap()),
            EventFdTrigger::new(reset.try_clone().unwrap()),
        );
        // What Linux does for S5: clear WAK_STS, then SLP_TYP 5 | SLP_EN.
        pm.write(SLEEP_STATUS_OFFSET, &[0x80]);
        assert!(!fired(&off) && !fired(&reset));
        pm.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_CONTROL]);
        assert_eq!(S5_SLEEP_CONTROL, 0x34);
        assert!(fired(&off) && !fired(&reset));
        // Other sleep states, SLP_TYP 5 without SLP_EN, odd widths, the reset value elsewhere:
        // nothing.
        for (offset, data) in [
            (SLEEP_CONTROL_OFFSET, &[(1 << 2) | SLEEP_ENABLE][..]),
            (SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]),
            (SLEEP_CONTROL_OFFSET, &[S5_SLEEP_CONTROL, 0]),
            (SLEEP_CONTROL_OFFSET, &[]),
            (SLEEP_STATUS_OFFSET, &[RESET_VALUE]),
            (RESET_OFFSET, &[2]),
            (RESET_OFFSET, &[RESET_VALUE, 0]),
        ] {
            pm.write(offset, data);
            assert!(!fired(&off) && !fired(&reset), "{offset} {data:?}");
        }
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert!(fired(&reset) && !fired(&off));
        let mut status = [0xff];
        pm.read(SLEEP_STATUS_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }

    #[test]
    fn the_power_button_raises_the_interrupt_and_a_read_clears_it() {
        let irq = event();
        let mut ged = Ged::new(EventFdTrigger::new(irq.try_clone().unwrap()));
        let mut data = [0xff];
        ged.read(0, &mut data);
        assert_eq!(data, [0]);
        ged.press_power_button().unwrap();
        assert!(fired(&irq));
        assert_eq!(ged.save_state(), GedState { pending: 1 });
        ged.read(0, &mut data);
        assert_eq!(data, [GED_POWER_BUTTON]);
        ged.read(0, &mut data);
        assert_eq!(data, [0], "read clears");
        // Other offsets and writes change nothing.
        ged.press_power_button().unwrap();
        let mut wide = [0xff; 4];
        ged.read(8, &mut wide);
        assert_eq!(wide, [0; 4]);
        ged.write(0, &[0]);
        assert_eq!(ged.save_state().pending, GED_POWER_BUTTON);
        // A restored pending event is raised again; none, nothing.
        let _ = irq.read();
        let mut restored = Ged::new(EventFdTrigger::new(irq.try_clone().unwrap()));
        restored.restore_state(&GedState::default());
        restored.raise_pending().unwrap();
        assert!(!fired(&irq));
        restored.restore_state(&ged.save_state());
        assert!(!fired(&irq));
        restored.raise_pending().unwrap();
        assert!(fired(&irq));
        restored.read(0, &mut data);
        assert_eq!(data, [GED_POWER_BUTTON]);
    }
}
