//! Fuzzes the i8042 controller: sequences of reads and writes, applied to an `I8042Wrapper`
//! directly and through a port bus holding a UART and a second i8042 at their real bases.
//! Nothing may panic; the reset event fires whenever a single-byte 0xFE reaches the command
//! port (offset 4, port 0x64), may fire for a single-byte data-port write (the output-port
//! reset line), and never fires otherwise.
//!
//! Input: a list of operations, each `op offset size value...`:
//! - `op % 4`: 0 direct read, 1 direct write, 2 bus read, 3 bus write;
//! - `op & 0x80`: the offset / port comes from the next 8 bytes instead of one byte
//!   (a byte offset is taken as is for direct accesses, and as `0x58 + byte` on the bus);
//! - `size % 10`: the access size (0..=9 bytes), followed by that many value bytes.
#![no_main]

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;
use vmm_devices::{
    Bus, BusDevice, EventFd, EventFdTrigger, I8042Wrapper, SerialDevice, EFD_NONBLOCK,
    I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};

fn event_fd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

/// Whether `evt` fired since the last call (and clears it).
fn fired(evt: &EventFd) -> bool {
    match evt.read() {
        Ok(n) => n > 0,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("reading the reset EventFd: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let reset = event_fd();
    let mut i8042 = I8042Wrapper::new(EventFdTrigger::new(reset.try_clone().expect("dup")));

    let bus_reset = event_fd();
    let mut bus = Bus::new();
    bus.insert(
        Arc::new(Mutex::new(I8042Wrapper::new(EventFdTrigger::new(
            bus_reset.try_clone().expect("dup"),
        )))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )
    .expect("i8042 on the bus");
    bus.insert(
        Arc::new(Mutex::new(SerialDevice::new(
            EventFdTrigger::new(event_fd()),
            Box::new(std::io::sink()),
        ))),
        SERIAL_PORT_BASE,
        SERIAL_PORT_LEN,
    )
    .expect("serial on the bus");

    let mut input = Cursor(data);
    while !input.is_empty() {
        let op = input.byte();
        let wide = op & 0x80 != 0;
        let offset = if wide {
            input.u64()
        } else {
            u64::from(input.byte())
        };
        let size = usize::from(input.byte() % 10);
        let mut value = input.bytes(size);
        let is_reset = value == [0xfe];

        match op % 4 {
            0 => {
                i8042.read(offset, &mut value);
                // The controller's own ports answer with state; everything else is all ones.
                if !(size == 1 && (offset == 0 || offset == 4)) {
                    assert!(value.iter().all(|&b| b == 0xff), "read {offset:#x}/{size}");
                }
            }
            1 => {
                i8042.write(offset, &value);
                let fired = fired(&reset);
                if offset == 4 && is_reset {
                    assert!(fired, "0xfe on the command port must reset");
                } else if !(offset == 0 && size == 1) {
                    assert!(!fired, "write {offset:#x}/{size} reset the machine");
                }
            }
            2 => {
                let addr = if wide { offset } else { 0x58 + offset };
                let claimed = bus.read(addr, &mut value);
                let end = addr.checked_add(size as u64);
                // The access must start inside the range (even a zero-sized one) and end
                // by its end.
                let in_range = |base: u64, len: u64| {
                    addr >= base && addr < base + len && end.is_some_and(|end| end <= base + len)
                };
                assert_eq!(
                    claimed,
                    in_range(I8042_PORT_BASE, I8042_PORT_LEN)
                        || in_range(SERIAL_PORT_BASE, SERIAL_PORT_LEN),
                    "bus read {addr:#x}/{size}"
                );
            }
            _ => {
                let addr = if wide { offset } else { 0x58 + offset };
                bus.write(addr, &value);
                let fired = fired(&bus_reset);
                if addr == I8042_PORT_BASE + 4 && is_reset {
                    assert!(fired, "0xfe on port 0x64 must reset");
                } else if !(addr == I8042_PORT_BASE && size == 1) {
                    assert!(!fired, "bus write {addr:#x}/{size} reset the machine");
                }
            }
        }
        assert!(!fired(&reset) && !fired(&bus_reset), "a stray reset");
        assert_eq!(i8042.reset_errors(), 0);
    }
});
