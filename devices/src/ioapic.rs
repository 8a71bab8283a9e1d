//! A user-space IOAPIC (82093AA register model, version 0x11, 24 pins) for a VMM whose LAPICs
//! are in the kernel (KVM's split irqchip).
//!
//! The IOAPIC never sees the interrupts that pass through it on the fast path: each pin's
//! device raises an irqfd on GSI `pin`, and that GSI's route is an MSI computed here from the
//! pin's redirection entry. So the work of this device is to keep those routes equal to what
//! the guest programs ([`IoApicRoutes::set_routes`] after every entry change that alters one),
//! and to serve level-triggered pins: KVM reports the guest's EOI of a level-triggered vector
//! ([`IoApic::end_of_interrupt`]); the pin's remote IRR is cleared and, if its device still
//! asserts the line ([`IoApic::set_line_level`]), the interrupt is raised again
//! ([`IoApicRoutes::signal`]). A level-triggered pin being unmasked while its line is asserted
//! raises it too.
//!
//! Masked pins have no route, so an edge raised while masked is lost, as with KVM's in-kernel
//! IOAPIC. ExtINT (there is no PIC behind this IOAPIC) and reserved delivery modes route
//! nothing either.
//!
//! ```
//! use std::io;
//! use std::sync::{Arc, Mutex};
//! use vmm_devices::ioapic::{IoApic, IoApicRoutes, MsiMessage, IOAPIC_PINS};
//! use vmm_devices::BusDevice;
//!
//! #[derive(Default)]
//! struct Routes(Arc<Mutex<Vec<Option<MsiMessage>>>>);
//! impl IoApicRoutes for Routes {
//!     fn set_routes(&mut self, routes: &[Option<MsiMessage>; IOAPIC_PINS]) -> io::Result<()> {
//!         *self.0.lock().unwrap() = routes.to_vec();
//!         Ok(())
//!     }
//!     fn signal(&mut self, _msi: MsiMessage) -> io::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! let routes = Routes::default();
//! let installed = routes.0.clone();
//! let mut ioapic = IoApic::new(2, Box::new(routes));
//! // The guest programs pin 4: vector 0x24, fixed delivery, edge, unmasked, to APIC id 1.
//! ioapic.write(0x00, &0x19u32.to_le_bytes()); // IOREGSEL: entry 4, high half
//! ioapic.write(0x10, &(1u32 << 24).to_le_bytes()); // IOWIN: destination 1
//! ioapic.write(0x00, &0x18u32.to_le_bytes()); // entry 4, low half
//! ioapic.write(0x10, &0x24u32.to_le_bytes()); // vector 0x24, unmasked
//! let route = installed.lock().unwrap()[4].unwrap();
//! assert_eq!(route, MsiMessage { address: 0xfee0_1000, data: 0x24 });
//! ```

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

use crate::BusDevice;

/// Pins (redirection entries).
pub const IOAPIC_PINS: usize = 24;
/// Bytes of MMIO the IOAPIC decodes (the registers are at 0x00 and 0x10; the rest reads 0).
pub const IOAPIC_MMIO_LEN: u64 = 0x100;
/// The version register's version (what KVM's in-kernel IOAPIC reports: no EOI register, so
/// guests end level-triggered interrupts by the LAPIC's EOI broadcast).
pub const IOAPIC_VERSION: u32 = 0x11;

/// Offset of the register select register. Writing it has no effect a guest can see before
/// its next access to the window, so a VMM may buffer those writes (KVM's coalesced MMIO).
pub const IOREGSEL_OFFSET: u64 = 0x00;
/// Offset of the data window.
pub const IOWIN_OFFSET: u64 = 0x10;
const IOREGSEL: u64 = IOREGSEL_OFFSET;
const IOWIN: u64 = IOWIN_OFFSET;
/// Indirect registers.
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIRECTION: u8 = 0x10;

/// Redirection entry fields.
const VECTOR: u64 = 0xff;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DELIVERY_MODE: u64 = 0b111 << DELIVERY_MODE_SHIFT;
const DEST_MODE_LOGICAL: u64 = 1 << 11;
const REMOTE_IRR: u64 = 1 << 14;
const LEVEL_TRIGGERED: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const DESTINATION_SHIFT: u32 = 56;
/// What the guest may write: vector, delivery mode, destination mode, polarity, trigger
/// mode, mask and destination (delivery status and remote IRR are read-only).
const WRITABLE: u64 = VECTOR
    | DELIVERY_MODE
    | DEST_MODE_LOGICAL
    | (1 << 13)
    | LEVEL_TRIGGERED
    | MASKED
    | (0xff << DESTINATION_SHIFT);
/// An entry after reset: masked, everything else 0.
const RESET_ENTRY: u64 = MASKED;

/// Delivery modes an MSI can carry: fixed, lowest priority, SMI, NMI, INIT (not 3, reserved,
/// nor 7, ExtINT).
fn msi_delivery_mode(mode: u64) -> bool {
    matches!(mode, 0 | 1 | 2 | 4 | 5)
}

/// The LAPICs' MSI window.
const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;

/// A message-signalled interrupt: `data` written to `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address: the LAPIC window with the destination id (bits 12..19) and mode (bit 2).
    pub address: u64,
    /// Data: vector, delivery mode (bits 8..10), assert (14) and trigger mode (15).
    pub data: u32,
}

impl MsiMessage {
    /// The MSI that a redirection entry sends; None when it sends nothing (masked, or a
    /// delivery mode an MSI cannot carry).
    pub fn from_entry(entry: u64) -> Option<MsiMessage> {
        let mode = (entry & DELIVERY_MODE) >> DELIVERY_MODE_SHIFT;
        if entry & MASKED != 0 || !msi_delivery_mode(mode) {
            return None;
        }
        let destination = (entry >> DESTINATION_SHIFT) & 0xff;
        let logical = u64::from(entry & DEST_MODE_LOGICAL != 0);
        let level = entry & LEVEL_TRIGGERED != 0;
        let mut data = (entry & (VECTOR | DELIVERY_MODE)) as u32;
        if level {
            // Trigger mode and assert: the LAPIC then sets the vector's TMR bit, and its EOI
            // comes back to the IOAPIC.
            data |= (1 << 15) | (1 << 14);
        }
        Some(MsiMessage {
            address: MSI_ADDRESS_BASE | (destination << 12) | (logical << 2),
            data,
        })
    }
}

/// Where an [`IoApic`]'s interrupts go: the VMM's MSI routes for GSIs `0..IOAPIC_PINS`
/// (KVM_SET_GSI_ROUTING and KVM_SIGNAL_MSI for a KVM VMM).
pub trait IoApicRoutes: Send {
    /// Makes GSI `i` raise `routes[i]` (None: nothing) for every pin.
    fn set_routes(&mut self, routes: &[Option<MsiMessage>; IOAPIC_PINS]) -> io::Result<()>;
    /// Raises `msi` once, now.
    fn signal(&mut self, msi: MsiMessage) -> io::Result<()>;
}

/// Tells whether a device asserts its interrupt line now (a level-triggered pin's source).
pub type LineLevel = Box<dyn Fn() -> bool + Send>;

/// The IOAPIC's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoApicState {
    /// The id register's id.
    pub id: u8,
    /// The register select register.
    pub select: u8,
    /// The redirection entries, remote IRR included ([`IOAPIC_PINS`] of them).
    pub entries: Vec<u64>,
}

/// Why an [`IoApicState`] was refused.
#[derive(Debug, thiserror::Error)]
pub enum IoApicError {
    /// Not [`IOAPIC_PINS`] entries.
    #[error("IOAPIC state has {0} redirection entries, not {IOAPIC_PINS}")]
    EntryCount(usize),
    /// The routes could not be installed.
    #[error("cannot install the IOAPIC's MSI routes")]
    Routes(#[source] io::Error),
}

/// The IOAPIC: registers on the MMIO bus, routes out through [`IoApicRoutes`].
pub struct IoApic {
    id: u8,
    select: u8,
    entries: [u64; IOAPIC_PINS],
    routes: Box<dyn IoApicRoutes>,
    /// The routes as last installed (None: never yet).
    installed: Option<[Option<MsiMessage>; IOAPIC_PINS]>,
    lines: Vec<Option<LineLevel>>,
    /// Route installs and signals that failed (logged once each, counted).
    failures: u64,
}

impl fmt::Debug for IoApic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoApic")
            .field("id", &self.id)
            .field("select", &self.select)
            .field("entries", &self.entries)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl IoApic {
    /// An IOAPIC with id `id` (the MADT's and the MP table's) after reset: every pin masked,
    /// so no route is installed until the guest programs one.
    pub fn new(id: u8, routes: Box<dyn IoApicRoutes>) -> IoApic {
        IoApic {
            id,
            select: 0,
            entries: [RESET_ENTRY; IOAPIC_PINS],
            routes,
            installed: None,
            lines: (0..IOAPIC_PINS).map(|_| None).collect(),
            failures: 0,
        }
    }

    /// An IOAPIC in a saved state, its routes installed.
    pub fn from_state(
        state: &IoApicState,
        routes: Box<dyn IoApicRoutes>,
    ) -> Result<IoApic, IoApicError> {
        let entries: [u64; IOAPIC_PINS] = state
            .entries
            .as_slice()
            .try_into()
            .map_err(|_| IoApicError::EntryCount(state.entries.len()))?;
        let mut ioapic = IoApic::new(state.id, routes);
        ioapic.select = state.select;
        // Only what a guest could have written, plus remote IRR.
        ioapic.entries = entries.map(|e| e & (WRITABLE | REMOTE_IRR));
        let routes = ioapic.computed_routes();
        ioapic
            .routes
            .set_routes(&routes)
            .map_err(IoApicError::Routes)?;
        ioapic.installed = Some(routes);
        Ok(ioapic)
    }

    /// The state to save.
    pub fn state(&self) -> IoApicState {
        IoApicState {
            id: self.id,
            select: self.select,
            entries: self.entries.to_vec(),
        }
    }

    /// Gives pin `pin` a source of its line's level, asked when a level-triggered
    /// interrupt on it ends or the pin is unmasked. Pins without one are taken as deasserted
    /// then (edge-triggered sources need none). Out-of-range pins are ignored.
    pub fn set_line_level(&mut self, pin: usize, level: LineLevel) {
        if let Some(slot) = self.lines.get_mut(pin) {
            *slot = Some(level);
        }
    }

    /// Pin `pin`'s redirection entry.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.entries.get(pin).copied()
    }

    /// How many route installs or signals failed.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The guest ended `vector` (a LAPIC EOI broadcast): every level-triggered pin with that
    /// vector leaves remote IRR and, when its line is still asserted, raises again.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..IOAPIC_PINS {
            let entry = self.entries[pin];
            if entry & LEVEL_TRIGGERED == 0 || (entry & VECTOR) as u8 != vector {
                continue;
            }
            self.entries[pin] &= !REMOTE_IRR;
            if self.line_asserted(pin) {
                self.raise_level(pin);
            }
        }
    }

    fn line_asserted(&self, pin: usize) -> bool {
        self.lines[pin].as_ref().is_some_and(|level| level())
    }

    /// Sends a level-triggered pin's interrupt from here (not through its irqfd) and marks it
    /// in service (remote IRR) until the guest's EOI.
    fn raise_level(&mut self, pin: usize) {
        let entry = self.entries[pin];
        if entry & REMOTE_IRR != 0 {
            return;
        }
        let Some(msi) = MsiMessage::from_entry(entry) else {
            return;
        };
        self.entries[pin] |= REMOTE_IRR;
        if let Err(e) = self.routes.signal(msi) {
            self.failed("signal an MSI", &e);
        }
    }

    fn failed(&mut self, what: &str, error: &io::Error) {
        if self.failures == 0 {
            log::error!("IOAPIC: cannot {what}: {error}");
        }
        self.failures += 1;
    }

    fn computed_routes(&self) -> [Option<MsiMessage>; IOAPIC_PINS] {
        self.entries.map(MsiMessage::from_entry)
    }

    /// Installs the routes if they changed (each install costs the host a routing table swap).
    fn update_routes(&mut self) {
        let routes = self.computed_routes();
        if self.installed == Some(routes) {
            return;
        }
        match self.routes.set_routes(&routes) {
            Ok(()) => self.installed = Some(routes),
            Err(e) => self.failed("install MSI routes", &e),
        }
    }

    fn read_register(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARBITRATION => u32::from(self.id) << 24,
            REG_VERSION => ((IOAPIC_PINS as u32 - 1) << 16) | IOAPIC_VERSION,
            index if index >= REG_REDIRECTION => {
                let pin = usize::from((index - REG_REDIRECTION) / 2);
                let Some(&entry) = self.entries.get(pin) else {
                    return 0;
                };
                if index % 2 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.select {
            // Bits 24-31: the MADT gives ids up to the vCPU count, past the 4 bits of an
            // 82093AA.
            REG_ID => self.id = (value >> 24) as u8,
            index if index >= REG_REDIRECTION => {
                let pin = usize::from((index - REG_REDIRECTION) / 2);
                let Some(&old) = self.entries.get(pin) else {
                    return;
                };
                let written = if index % 2 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let mut entry = (written & WRITABLE) | (old & REMOTE_IRR);
                if entry & LEVEL_TRIGGERED == 0 {
                    // An edge-triggered pin has no interrupt in service.
                    entry &= !REMOTE_IRR;
                }
                self.entries[pin] = entry;
                self.update_routes();
                let unmasked = old & MASKED != 0 && entry & MASKED == 0;
                if unmasked && entry & LEVEL_TRIGGERED != 0 && self.line_asserted(pin) {
                    self.raise_level(pin);
                }
            }
            // Version and arbitration id are read-only.
            _ => {}
        }
    }
}

/// A 32-bit access's value; None for any other size (the registers are 32 bits wide and
/// guests access them that way; other sizes are ignored).
fn dword(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.try_into().ok()?))
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.read_register(),
            _ => 0,
        };
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(value) = dword(data) else {
            return;
        };
        match offset {
            IOREGSEL => self.select = value as u8,
            IOWIN => self.write_register(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log {
        installs: Vec<Vec<Option<MsiMessage>>>,
        signals: Vec<MsiMessage>,
        fail: bool,
    }

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Log>>);

    impl IoApicRoutes for Recorder {
        fn set_routes(&mut self, routes: &[Option<MsiMessage>; IOAPIC_PINS]) -> io::Result<()> {
            let mut log = self.0.lock().unwrap();
            if log.fail {
                return Err(io::Error::other("refused"));
            }
            log.installs.push(routes.to_vec());
            Ok(())
        }
        fn signal(&mut self, msi: MsiMessage) -> io::Result<()> {
            let mut log = self.0.lock().unwrap();
            if log.fail {
                return Err(io::Error::other("refused"));
            }
            log.signals.push(msi);
            Ok(())
        }
    }

    fn ioapic() -> (IoApic, Recorder) {
        let recorder = Recorder::default();
        (IoApic::new(3, Box::new(recorder.clone())), recorder)
    }

    fn write_reg(ioapic: &mut IoApic, index: u32, value: u32) {
        ioapic.write(IOREGSEL, &index.to_le_bytes());
        ioapic.write(IOWIN, &value.to_le_bytes());
    }

    fn read_reg(ioapic: &mut IoApic, index: u32) -> u32 {
        ioapic.write(IOREGSEL, &index.to_le_bytes());
        let mut data = [0u8; 4];
        ioapic.read(IOWIN, &mut data);
        u32::from_le_bytes(data)
    }

    fn program(ioapic: &mut IoApic, pin: u32, entry: u64) {
        write_reg(ioapic, 0x11 + 2 * pin, (entry >> 32) as u32);
        write_reg(ioapic, 0x10 + 2 * pin, entry as u32);
    }

    #[test]
    fn id_version_and_reset_entries_read_as_an_82093aa_with_24_pins() {
        let (mut ioapic, recorder) = ioapic();
        assert_eq!(read_reg(&mut ioapic, 0), 3 << 24);
        assert_eq!(read_reg(&mut ioapic, 1), 0x17_0011);
        assert_eq!(read_reg(&mut ioapic, 2), 3 << 24);
        for pin in 0..24 {
            assert_eq!(read_reg(&mut ioapic, 0x10 + 2 * pin), 1 << 16, "pin {pin}");
            assert_eq!(read_reg(&mut ioapic, 0x11 + 2 * pin), 0);
        }
        // Past the last entry, and an unknown register.
        assert_eq!(read_reg(&mut ioapic, 0x10 + 2 * 24), 0);
        assert_eq!(read_reg(&mut ioapic, 0x05), 0);
        write_reg(&mut ioapic, 0x01, 0xffff_ffff);
        assert_eq!(read_reg(&mut ioapic, 1), 0x17_0011, "version is read-only");
        write_reg(&mut ioapic, 0x00, 0x0500_0000);
        assert_eq!(read_reg(&mut ioapic, 0), 5 << 24);
        // The select register reads back; nothing was routed by any of this.
        let mut data = [0u8; 4];
        ioapic.read(IOREGSEL, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0);
        assert!(recorder.0.lock().unwrap().installs.is_empty());
    }

    #[test]
    fn programming_an_entry_installs_its_msi_route() {
        let (mut ioapic, recorder) = ioapic();
        // Vector 0x31, lowest priority, logical destination 0x0f, edge, unmasked.
        program(&mut ioapic, 5, (0x0f << 56) | (1 << 11) | (1 << 8) | 0x31);
        let log = recorder.0.lock().unwrap();
        let last = log.installs.last().unwrap();
        assert_eq!(
            last[5],
            Some(MsiMessage {
                address: 0xfee0_f004,
                data: 0x131
            })
        );
        assert!(last.iter().enumerate().all(|(p, r)| p == 5 || r.is_none()));
    }

    #[test]
    fn masking_removes_the_route_and_unchanged_routes_are_not_installed_again() {
        let (mut ioapic, recorder) = ioapic();
        program(&mut ioapic, 4, 0x24);
        let installs = recorder.0.lock().unwrap().installs.len();
        // Polarity changes the entry but not the MSI: no new install.
        program(&mut ioapic, 4, 0x24 | (1 << 13));
        assert_eq!(recorder.0.lock().unwrap().installs.len(), installs);
        program(&mut ioapic, 4, 0x24 | MASKED);
        let log = recorder.0.lock().unwrap();
        assert_eq!(log.installs.len(), installs + 1);
        assert_eq!(log.installs.last().unwrap()[4], None);
    }

    #[test]
    fn extint_and_reserved_delivery_modes_route_nothing() {
        for mode in [3u64, 7] {
            let (mut ioapic, recorder) = ioapic();
            program(&mut ioapic, 0, (mode << 8) | 0x30);
            let log = recorder.0.lock().unwrap();
            assert!(log.installs.iter().all(|r| r[0].is_none()), "mode {mode}");
        }
        assert!(MsiMessage::from_entry(4 << 8).is_some(), "NMI is an MSI");
    }

    #[test]
    fn read_only_bits_stay_and_edge_entries_have_no_remote_irr() {
        let (mut ioapic, _) = ioapic();
        // Delivery status (12) and remote IRR (14) are not writable.
        program(&mut ioapic, 2, 0x40 | (1 << 12) | (1 << 14));
        assert_eq!(ioapic.entry(2), Some(0x40));
    }

    #[test]
    fn a_level_interrupt_is_raised_again_at_eoi_while_the_line_is_asserted() {
        let (mut ioapic, recorder) = ioapic();
        let asserted = Arc::new(AtomicBool::new(false));
        let line = asserted.clone();
        ioapic.set_line_level(9, Box::new(move || line.load(Ordering::SeqCst)));
        let entry = (1 << 56) | LEVEL_TRIGGERED | 0x29;
        program(&mut ioapic, 9, entry);
        let msi = MsiMessage {
            address: 0xfee0_1000,
            data: 0xc029,
        };
        assert_eq!(
            recorder.0.lock().unwrap().installs.last().unwrap()[9],
            Some(msi)
        );
        // The device's irqfd delivered it; the guest ends it with the line still asserted.
        asserted.store(true, Ordering::SeqCst);
        ioapic.end_of_interrupt(0x29);
        assert_eq!(recorder.0.lock().unwrap().signals, vec![msi]);
        assert_eq!(ioapic.entry(9).unwrap() & REMOTE_IRR, REMOTE_IRR);
        // Another vector's EOI changes nothing.
        ioapic.end_of_interrupt(0x30);
        assert_eq!(recorder.0.lock().unwrap().signals.len(), 1);
        // Deasserted: the EOI clears remote IRR and raises nothing.
        asserted.store(false, Ordering::SeqCst);
        ioapic.end_of_interrupt(0x29);
        assert_eq!(ioapic.entry(9).unwrap() & REMOTE_IRR, 0);
        assert_eq!(recorder.0.lock().unwrap().signals.len(), 1);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_raises_it_and_edge_pins_never_replay() {
        let (mut ioapic, recorder) = ioapic();
        ioapic.set_line_level(7, Box::new(|| true));
        ioapic.set_line_level(8, Box::new(|| true));
        program(&mut ioapic, 7, MASKED | LEVEL_TRIGGERED | 0x27);
        program(&mut ioapic, 8, MASKED | 0x28);
        assert!(recorder.0.lock().unwrap().signals.is_empty());
        program(&mut ioapic, 7, LEVEL_TRIGGERED | 0x27);
        program(&mut ioapic, 8, 0x28);
        let signals = recorder.0.lock().unwrap().signals.clone();
        assert_eq!(signals.len(), 1);
        assert_eq!(signals[0].data & 0xff, 0x27);
        // Programming it again while in service does not raise it twice.
        program(&mut ioapic, 7, LEVEL_TRIGGERED | 0x27);
        assert_eq!(recorder.0.lock().unwrap().signals.len(), 1);
        // An edge-triggered EOI (which KVM never reports, but a guest can't harm us) does
        // nothing either.
        ioapic.end_of_interrupt(0x28);
        assert_eq!(recorder.0.lock().unwrap().signals.len(), 1);
    }

    #[test]
    fn odd_sizes_and_offsets_are_ignored() {
        let (mut ioapic, recorder) = ioapic();
        ioapic.write(IOREGSEL, &[0x10]);
        ioapic.write(IOWIN, &[0x20, 0, 0, 0, 0, 0, 0, 0]);
        ioapic.write(0x20, &0u32.to_le_bytes());
        assert_eq!(ioapic.entry(0), Some(MASKED));
        let mut data = [0xaau8; 2];
        ioapic.read(IOWIN, &mut data);
        assert_eq!(data, [0, 0]);
        let mut data = [0xaau8; 4];
        ioapic.read(0x40, &mut data);
        assert_eq!(data, [0; 4]);
        assert!(recorder.0.lock().unwrap().installs.is_empty());
    }

    #[test]
    fn state_round_trips_installs_routes_and_refuses_a_wrong_entry_count() {
        let (mut ioapic, _) = ioapic();
        program(&mut ioapic, 3, (2 << 56) | 0x33);
        program(&mut ioapic, 11, LEVEL_TRIGGERED | 0x3b);
        ioapic.write(IOREGSEL, &0x13u32.to_le_bytes());
        let state = ioapic.state();
        let recorder = Recorder::default();
        let back = IoApic::from_state(&state, Box::new(recorder.clone())).unwrap();
        assert_eq!(back.state(), state);
        let installed = recorder.0.lock().unwrap().installs.clone();
        assert_eq!(installed.len(), 1);
        assert_eq!(installed[0][3], MsiMessage::from_entry((2 << 56) | 0x33));
        assert!(installed[0][11].is_some());

        let mut short = state.clone();
        short.entries.pop();
        let err = IoApic::from_state(&short, Box::new(Recorder::default())).unwrap_err();
        assert!(matches!(err, IoApicError::EntryCount(23)));
        // Bits a guest cannot write are dropped from a hostile state.
        let mut odd = state;
        odd.entries[0] = u64::MAX;
        odd.id = 0xff;
        let back = IoApic::from_state(&odd, Box::new(Recorder::default())).unwrap();
        assert_eq!(back.entry(0), Some(WRITABLE | REMOTE_IRR));
        assert_eq!(back.state().id, 0xff);
    }

    #[test]
    fn failures_are_counted_not_fatal() {
        let (mut ioapic, recorder) = ioapic();
        recorder.0.lock().unwrap().fail = true;
        program(&mut ioapic, 1, 0x21);
        assert!(ioapic.failures() >= 1);
        // The next change tries again.
        recorder.0.lock().unwrap().fail = false;
        program(&mut ioapic, 1, 0x22);
        let log = recorder.0.lock().unwrap();
        assert_eq!(log.installs.last().unwrap()[1].unwrap().data, 0x22);
        drop(log);
        let failed = Recorder::default();
        failed.0.lock().unwrap().fail = true;
        let err = IoApic::from_state(&ioapic.state(), Box::new(failed)).unwrap_err();
        assert!(matches!(err, IoApicError::Routes(_)));
    }
}
