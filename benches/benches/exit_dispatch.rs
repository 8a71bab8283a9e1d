//! The exit dispatch path: what a vCPU thread does for a port exit once KVM_RUN returns.
//!
//! A port bus holds the serial UART (output to a sink), the i8042 and 16 dummy devices, as a
//! busy VM's bus would; each bench is one `Bus` lookup, one device lock and the device's work.
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, Criterion};
use vmm_devices::{
    Bus, BusDevice, EventFd, EventFdTrigger, I8042Wrapper, SerialDevice, EFD_NONBLOCK,
    I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};

/// A register file standing in for the other devices of a bus.
struct Dummy([u8; 8]);

impl BusDevice for Dummy {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.0[(offset as usize + i) % 8];
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.0[(offset as usize + i) % 8] = *b;
        }
    }
}

const DUMMY_BASE: u64 = 0x500;
const DUMMY_LEN: u64 = 8;
const DUMMIES: u64 = 16;
/// A port nobody claims (the POST diagnostic port, which Linux writes to for delays).
const UNCLAIMED_PORT: u64 = 0x80;

fn port_bus() -> Bus {
    let trigger = || EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let mut bus = Bus::new();
    let serial = SerialDevice::new(trigger(), Box::new(std::io::sink()));
    bus.insert(
        Arc::new(Mutex::new(serial)),
        SERIAL_PORT_BASE,
        SERIAL_PORT_LEN,
    )
    .expect("serial");
    bus.insert(
        Arc::new(Mutex::new(I8042Wrapper::new(trigger()))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )
    .expect("i8042");
    for i in 0..DUMMIES {
        bus.insert(
            Arc::new(Mutex::new(Dummy([0; 8]))),
            DUMMY_BASE + i * 0x10,
            DUMMY_LEN,
        )
        .expect("dummy");
    }
    bus
}

fn exit_dispatch(c: &mut Criterion) {
    let bus = port_bus();
    let mut group = c.benchmark_group("exit_dispatch");

    group.bench_function("serial_thr_write", |b| {
        b.iter(|| assert!(bus.write(black_box(SERIAL_PORT_BASE), black_box(b"x"))))
    });

    group.bench_function("serial_lsr_read", |b| {
        let mut data = [0u8; 1];
        b.iter(|| {
            assert!(bus.read(black_box(SERIAL_PORT_BASE + 5), &mut data));
            black_box(data[0])
        })
    });

    group.bench_function("unclaimed_port_read", |b| {
        let mut data = [0u8; 1];
        b.iter(|| {
            if !bus.read(black_box(UNCLAIMED_PORT), &mut data) {
                data.fill(0xff);
            }
            black_box(data[0])
        })
    });

    group.finish();
}

criterion_group!(benches, exit_dispatch);
criterion_main!(benches);
