//! Fuzzes the split irqchip's user-space IOAPIC (`vmm_devices::ioapic`) as a guest drives it:
//! register accesses of any size at any offset, EOIs of any vector, device lines going up and
//! down, and save/restore. Nothing may panic, and after every step:
//! - the routes installed last are exactly what the redirection table says (an MSI for each
//!   unmasked pin with a deliverable mode, none for the others);
//! - every MSI raised from user space is that of a level-triggered pin whose line is asserted;
//! - the redirection entries read back through the window registers are the ones it holds;
//! - a saved state restores to an IOAPIC with the same registers and routes.
#![no_main]

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vmm_devices::ioapic::{IoApic, IoApicRoutes, MsiMessage, IOAPIC_PINS};
use vmm_devices::BusDevice;

#[derive(Default)]
struct Log {
    installed: Option<Vec<Option<MsiMessage>>>,
    signals: Vec<MsiMessage>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Log>>);

impl IoApicRoutes for Recorder {
    fn set_routes(&mut self, routes: &[Option<MsiMessage>; IOAPIC_PINS]) -> io::Result<()> {
        self.0.lock().unwrap().installed = Some(routes.to_vec());
        Ok(())
    }
    fn signal(&mut self, msi: MsiMessage) -> io::Result<()> {
        self.0.lock().unwrap().signals.push(msi);
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `size % 9` bytes at `offset`.
    Read {
        offset: u8,
        size: u8,
    },
    /// A write of these bytes at `offset`.
    Write {
        offset: u8,
        data: Vec<u8>,
    },
    /// IOREGSEL, then IOWIN: the way a guest programs a register.
    Program {
        index: u8,
        value: u32,
    },
    Eoi(u8),
    Line {
        pin: u8,
        asserted: bool,
    },
    SaveRestore,
}

const LEVEL_TRIGGERED: u64 = 1 << 15;

fn read_entry(ioapic: &mut IoApic, pin: usize) -> u64 {
    let mut half = |index: u32| {
        ioapic.write(0x00, &index.to_le_bytes());
        let mut data = [0u8; 4];
        ioapic.read(0x10, &mut data);
        u64::from(u32::from_le_bytes(data))
    };
    let low = half(0x10 + 2 * pin as u32);
    let high = half(0x11 + 2 * pin as u32);
    low | (high << 32)
}

fn check(ioapic: &mut IoApic, log: &Recorder, lines: &[Arc<AtomicBool>]) {
    let entries: Vec<u64> = (0..IOAPIC_PINS).map(|p| ioapic.entry(p).unwrap()).collect();
    let expected: Vec<Option<MsiMessage>> =
        entries.iter().map(|&e| MsiMessage::from_entry(e)).collect();
    let mut log = log.0.lock().unwrap();
    match &log.installed {
        Some(routes) => assert_eq!(routes, &expected, "installed routes follow the table"),
        None => assert!(
            expected.iter().all(Option::is_none),
            "routes never installed"
        ),
    }
    for msi in log.signals.drain(..) {
        let raised_by = (0..IOAPIC_PINS).any(|p| {
            entries[p] & LEVEL_TRIGGERED != 0
                && lines[p].load(Ordering::SeqCst)
                && MsiMessage::from_entry(entries[p]) == Some(msi)
        });
        assert!(
            raised_by,
            "{msi:x?} raised by no asserted level-triggered pin"
        );
    }
    drop(log);
    let select = ioapic.state().select;
    for (pin, &entry) in entries.iter().enumerate() {
        assert_eq!(read_entry(ioapic, pin), entry, "entry {pin} reads back");
    }
    // Put the guest's select register back as it was.
    ioapic.write(0x00, &u32::from(select).to_le_bytes());
}

fn connect(ioapic: &mut IoApic, lines: &[Arc<AtomicBool>]) {
    for (pin, line) in lines.iter().enumerate() {
        let line = line.clone();
        ioapic.set_line_level(pin, Box::new(move || line.load(Ordering::SeqCst)));
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let lines: Vec<Arc<AtomicBool>> = (0..IOAPIC_PINS)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let mut log = Recorder::default();
    let mut ioapic = IoApic::new(1, Box::new(log.clone()));
    connect(&mut ioapic, &lines);
    for op in ops.into_iter().take(256) {
        match op {
            Op::Read { offset, size } => {
                let mut data = vec![0u8; usize::from(size % 9)];
                ioapic.read(u64::from(offset), &mut data);
            }
            Op::Write { offset, data } => ioapic.write(u64::from(offset), &data),
            Op::Program { index, value } => {
                ioapic.write(0x00, &u32::from(index).to_le_bytes());
                ioapic.write(0x10, &value.to_le_bytes());
            }
            Op::Eoi(vector) => ioapic.end_of_interrupt(vector),
            Op::Line { pin, asserted } => {
                lines[usize::from(pin) % IOAPIC_PINS].store(asserted, Ordering::SeqCst)
            }
            Op::SaveRestore => {
                let state = ioapic.state();
                let fresh = Recorder::default();
                let mut restored =
                    IoApic::from_state(&state, Box::new(fresh.clone())).expect("own state");
                assert_eq!(restored.state(), state, "state round trip");
                connect(&mut restored, &lines);
                ioapic = restored;
                log = fresh;
            }
        }
        check(&mut ioapic, &log, &lines);
    }
});
