//! Fuzzes the 16550A UART: sequences of reads, writes and host input, applied to a
//! `SerialDevice` directly and through a port bus holding a second UART and the i8042 at their
//! real bases. Nothing may panic, the receive FIFO never claims more room than it has, and the
//! bus claims exactly the accesses that fit inside a device's ports.
//!
//! Input: a list of operations, each `op offset size value...`:
//! - `op % 5`: 0 direct read, 1 direct write, 2 enqueue_input, 3 bus read, 4 bus write;
//! - `op & 0x80`: the offset / port comes from the next 8 bytes instead of one byte
//!   (a byte offset is taken as is for direct accesses, and as `0x3f0 + byte` on the bus);
//! - `size % 10`: the access size (0..=9 bytes; 9 is larger than any real exit), followed by
//!   that many value bytes.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;
use vmm_devices::{
    Bus, BusDevice, EventFd, EventFdTrigger, I8042Wrapper, SerialDevice, EFD_NONBLOCK,
    I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};

const FIFO_SIZE: usize = 64;

fn trigger() -> EventFdTrigger {
    EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))
}

fn claims(base: u64, len: u64, addr: u64, size: usize) -> bool {
    addr >= base && addr - base < len && (addr - base) + size as u64 <= len
}

fuzz_target!(|data: &[u8]| {
    let mut serial = SerialDevice::new(trigger(), Box::new(std::io::sink()));

    let bus_serial = Arc::new(Mutex::new(SerialDevice::new(
        trigger(),
        Box::new(std::io::sink()),
    )));
    let mut bus = Bus::new();
    bus.insert(bus_serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)
        .expect("serial on the bus");
    bus.insert(
        Arc::new(Mutex::new(I8042Wrapper::new(trigger()))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )
    .expect("i8042 on the bus");

    let mut unclaimed = 0u64;
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

        match op % 5 {
            0 => serial.read(offset, &mut value),
            1 => serial.write(offset, &value),
            2 => {
                let room = serial.input_capacity();
                let accepted = serial.enqueue_input(&value).expect("enqueue_input");
                assert!(accepted <= value.len() && accepted <= room);
            }
            op => {
                let addr = if wide { offset } else { 0x3f0 + offset };
                let claimed = if op == 3 {
                    bus.read(addr, &mut value)
                } else {
                    bus.write(addr, &value)
                };
                let expected = claims(SERIAL_PORT_BASE, SERIAL_PORT_LEN, addr, size)
                    || claims(I8042_PORT_BASE, I8042_PORT_LEN, addr, size);
                assert_eq!(claimed, expected, "addr {addr:#x} size {size}");
                if !claimed {
                    unclaimed += 1;
                }
                assert_eq!(bus.unclaimed_accesses(), unclaimed);
            }
        }
        assert!(serial.input_capacity() <= FIFO_SIZE);
        assert!(bus_serial.lock().unwrap().input_capacity() <= FIFO_SIZE);
        // A read of a size other than one byte, or past the registers, is all ones.
        if op % 5 == 0 && (size != 1 || offset >= SERIAL_PORT_LEN) {
            assert!(value.iter().all(|&b| b == 0xff));
        }
    }
});
