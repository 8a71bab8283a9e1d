//! The COM1 16550A UART on `vm-superio`'s [`Serial`].

use std::fmt;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use vm_superio::serial::{Error as SerialError, SerialEvents};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::metrics::SerialMetrics;
use crate::trigger::EventFdTrigger;
use crate::Error;

/// The first serial port's (COM1) base on the port-I/O bus.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// Number of UART registers (ports) from [`SERIAL_PORT_BASE`].
pub const SERIAL_PORT_LEN: u64 = 8;

type Uart = Serial<EventFdTrigger, InputRoom, Box<dyn Write + Send>>;

/// Tells whoever feeds host input that the guest has emptied the receive FIFO: input held back
/// while the FIFO was full can go in now, without polling for room. Also counts the UART's
/// events in its [`SerialMetrics`].
#[derive(Debug, Default)]
pub struct InputRoom {
    event: OnceLock<EventFd>,
    metrics: Arc<SerialMetrics>,
}

impl SerialEvents for InputRoom {
    fn buffer_read(&self) {
        self.metrics.read_count.inc();
    }
    fn out_byte(&self) {
        self.metrics.write_count.inc();
    }
    fn tx_lost_byte(&self) {
        self.metrics.missed_write_count.inc();
    }
    fn in_buffer_empty(&self) {
        if let Some(event) = self.event.get() {
            // A full counter already means "there is room": nothing is lost.
            let _ = event.write(1);
        }
    }
}

/// A 16550A UART on `vm-superio`'s `Serial`, on the port bus at offsets 0..8.
///
/// Output goes to any `Write` (stdout, a file, a sink); input comes from the VMM's event loop
/// through [`enqueue_input`](Self::enqueue_input). Its interrupt line is the EventFd it is
/// built with; the VMM binds it to the guest's IRQ for the port (COM1's is IRQ 4). The
/// registers are single bytes: accesses of another size, and offsets past the last register,
/// are ignored (reads return all ones).
/// A write to the output that fails (a closed pipe, a full disk) loses the byte but never stops
/// the guest; [`lost_output_bytes`](Self::lost_output_bytes) counts them.
pub struct SerialDevice {
    uart: Uart,
}

impl fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialDevice")
            .field("input_capacity", &self.input_capacity())
            .field("lost_output_bytes", &self.lost_output_bytes())
            .field("interrupt_errors", &self.interrupt_errors())
            .finish_non_exhaustive()
    }
}

/// The UART's registers and receive FIFO, for snapshots (vm-superio's `SerialState` has no
/// serde). Not rust-vmm's `vm-superio-ser`: its 0.4.1 pins `vm-superio = "=0.8.1"`, which lacks
/// 0.8.2's fix that re-asserts a pending receive interrupt when the guest rewrites IER (Linux's
/// 8250 console relies on it; without it typed input can sit unread in the FIFO).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read.
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// The registers and receive FIFO.
    pub fn save_state(&self) -> SerialDeviceState {
        let s = self.uart.state();
        SerialDeviceState {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in a saved state (untrusted: a FIFO longer than the UART's is refused).
    pub fn from_state(
        state: &SerialDeviceState,
        interrupt: EventFdTrigger,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, Error> {
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor[0],
            baud_divisor_high: state.baud_divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Serial::from_state(&s, interrupt, InputRoom::default(), out)
            .map_err(|_| Error::SerialState)?;
        Ok(SerialDevice { uart })
    }

    /// A UART that raises `interrupt` and writes the guest's output to `out`.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::with_events(interrupt, InputRoom::default(), out),
        }
    }

    /// Queues host input bytes for the guest; returns how many were accepted.
    ///
    /// The receive FIFO may be full (then this returns `Ok(0)`), or have room for only part of
    /// `bytes`: the caller keeps the rest for later. In loopback mode the UART takes no host
    /// input and this returns `Ok(0)` too. Raises the interrupt when the guest enabled it; if
    /// raising it fails the bytes are still queued, but the error is returned.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, Error> {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => Ok(n),
            Err(SerialError::FullFifo) => Ok(0),
            Err(SerialError::Trigger(e)) | Err(SerialError::IOError(e)) => {
                self.uart.events().metrics.error_count.inc();
                Err(Error::Interrupt(e))
            }
        }
    }

    /// Makes the UART write to `event` each time the guest empties its receive FIFO (see
    /// [`InputRoom`]). Only the first event given is used; returns false for a later one.
    pub fn notify_input_room(&self, event: EventFd) -> bool {
        self.uart.events().event.set(event).is_ok()
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The interrupt line this UART raises.
    pub fn interrupt(&self) -> &EventFdTrigger {
        self.uart.interrupt_evt()
    }

    /// Output bytes the guest sent that the output `Write` refused.
    pub fn lost_output_bytes(&self) -> u64 {
        self.uart.events().metrics.missed_write_count.get()
    }

    /// Times raising the interrupt failed.
    pub fn interrupt_errors(&self) -> u64 {
        self.uart.events().metrics.error_count.get()
    }

    /// The UART's counters (bytes the guest wrote out and read in, lost output bytes,
    /// interrupt failures), shared with whoever reports them.
    pub fn metrics(&self) -> Arc<SerialMetrics> {
        self.uart.events().metrics.clone()
    }

    /// The register `offset` names, if the access is a single byte within the UART.
    fn register(offset: u64, size: usize) -> Option<u8> {
        if size != 1 || offset >= SERIAL_PORT_LEN {
            return None;
        }
        u8::try_from(offset).ok()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::register(offset, data.len()) {
            Some(reg) => data[0] = self.uart.read(reg),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(reg) = Self::register(offset, data.len()) else {
            return;
        };
        match self.uart.write(reg, data[0]) {
            Ok(()) => {}
            // Counted as lost by the UART's events (`tx_lost_byte`).
            Err(SerialError::IOError(_)) => {}
            Err(SerialError::Trigger(_)) => self.uart.events().metrics.error_count.inc(),
            Err(SerialError::FullFifo) => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const FIFO_SIZE: usize = 64;

    /// A `Write` the test can look into (also used by the crate-level tests).
    #[derive(Clone, Default)]
    pub(crate) struct SharedBuf(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    fn serial() -> (SerialDevice, EventFd, SharedBuf) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let dev = SerialDevice::new(
            EventFdTrigger::new(evt.try_clone().unwrap()),
            Box::new(out.clone()),
        );
        (dev, evt, out)
    }

    fn read(dev: &mut SerialDevice, offset: u64) -> u8 {
        let mut data = [0u8];
        dev.read(offset, &mut data);
        data[0]
    }

    fn pending(evt: &EventFd) -> u64 {
        match evt.read() {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn metrics_count_bytes_out_lost_and_in() {
        let (mut dev, _evt, _out) = serial();
        let m = dev.metrics();
        for &b in b"abc" {
            dev.write(THR, &[b]);
        }
        dev.write(SCR, &[1]);
        assert_eq!(m.write_count.get(), 3, "only bytes sent out count");
        assert_eq!(dev.enqueue_input(b"xy").unwrap(), 2);
        read(&mut dev, RBR);
        assert_eq!(m.read_count.get(), 1);
        assert_eq!(m.missed_write_count.get(), 0);

        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut broken = SerialDevice::new(EventFdTrigger::new(irq), Box::new(Broken));
        broken.write(THR, b"z");
        assert_eq!(broken.metrics().missed_write_count.get(), 1);
        assert_eq!(broken.lost_output_bytes(), 1);
    }

    #[test]
    fn thr_bytes_reach_the_output() {
        let (mut dev, evt, out) = serial();
        for &b in b"hi!\n" {
            dev.write(THR, &[b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi!\n");
        assert_eq!(read(&mut dev, LSR) & LSR_THR_EMPTY, LSR_THR_EMPTY);
        // No interrupt enabled, none raised.
        assert_eq!(pending(&evt), 0);
    }

    #[test]
    fn ier_thr_empty_raises_the_interrupt() {
        let (mut dev, evt, _out) = serial();
        dev.write(IER, &[0x02]);
        // The THR is always empty: enabling the interrupt asserts it at once.
        assert_eq!(pending(&evt), 1);
        assert_eq!(read(&mut dev, IIR) & 0x0f, 0x02);
        dev.write(THR, b"x");
        assert_eq!(pending(&evt), 1);
        assert_eq!(dev.interrupt_errors(), 0);
    }

    #[test]
    fn ier_rda_raises_the_interrupt_on_input() {
        let (mut dev, evt, _out) = serial();
        assert_eq!(dev.enqueue_input(b"a").unwrap(), 1);
        assert_eq!(pending(&evt), 0, "interrupt not enabled yet");
        // Enabling it with data pending asserts it.
        dev.write(IER, &[0x01]);
        assert_eq!(pending(&evt), 1);
        assert_eq!(read(&mut dev, RBR), b'a');
        assert_eq!(dev.enqueue_input(b"b").unwrap(), 1);
        assert_eq!(pending(&evt), 1);
        assert_eq!(read(&mut dev, IIR) & 0x0f, 0x04);
    }

    #[test]
    fn an_emptied_fifo_is_announced_for_held_back_input() {
        let (mut dev, _evt, _out) = serial();
        let room = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        assert!(dev.notify_input_room(room.try_clone().unwrap()));
        assert!(
            !dev.notify_input_room(room.try_clone().unwrap()),
            "set once"
        );
        // Fill the FIFO: the rest of the host's input has to wait.
        let fill = vec![b'x'; dev.input_capacity() + 10];
        let taken = dev.enqueue_input(&fill).unwrap();
        assert!(taken < fill.len());
        assert!(room.read().is_err(), "no room yet");
        for _ in 0..taken - 1 {
            read(&mut dev, RBR);
        }
        assert!(room.read().is_err(), "one byte left");
        read(&mut dev, RBR);
        assert_eq!(room.read().unwrap(), 1, "the guest read the last byte");
        assert_eq!(dev.enqueue_input(&fill[taken..]).unwrap(), 10);
    }

    #[test]
    fn input_comes_back_in_order() {
        let (mut dev, _evt, _out) = serial();
        assert_eq!(dev.input_capacity(), FIFO_SIZE);
        assert_eq!(dev.enqueue_input(b"").unwrap(), 0);
        assert_eq!(dev.enqueue_input(b"abc").unwrap(), 3);
        assert_eq!(dev.input_capacity(), FIFO_SIZE - 3);
        let mut got = Vec::new();
        while read(&mut dev, LSR) & LSR_DATA_READY != 0 {
            got.push(read(&mut dev, RBR));
        }
        assert_eq!(got, b"abc");
        assert_eq!(dev.input_capacity(), FIFO_SIZE);
    }

    #[test]
    fn a_full_fifo_accepts_fewer_bytes() {
        let (mut dev, _evt, _out) = serial();
        let input: Vec<u8> = (0..100).collect();
        assert_eq!(dev.enqueue_input(&input).unwrap(), FIFO_SIZE);
        assert_eq!(dev.input_capacity(), 0);
        assert_eq!(dev.enqueue_input(&input[FIFO_SIZE..]).unwrap(), 0);
        assert_eq!(read(&mut dev, RBR), 0);
        assert_eq!(dev.enqueue_input(&input[FIFO_SIZE..]).unwrap(), 1);
        for expected in 1..=FIFO_SIZE as u8 {
            assert_eq!(read(&mut dev, RBR), expected);
        }
        assert_eq!(read(&mut dev, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn loopback_mode_takes_no_host_input() {
        let (mut dev, _evt, out) = serial();
        dev.write(MCR, &[0x10]);
        assert_eq!(dev.enqueue_input(b"x").unwrap(), 0);
        dev.write(THR, b"y");
        assert_eq!(read(&mut dev, RBR), b'y');
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn dlab_and_divisor_writes_are_harmless() {
        let (mut dev, _evt, out) = serial();
        dev.write(LCR, &[0x80]);
        dev.write(0, &[0x01]);
        dev.write(1, &[0x00]);
        assert_eq!(read(&mut dev, 0), 0x01);
        assert_eq!(read(&mut dev, 1), 0x00);
        dev.write(LCR, &[0x03]);
        // Divisor writes did not go out as data, nor enable interrupts.
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(read(&mut dev, IER), 0);
        dev.write(THR, b"k");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"k");
        dev.write(SCR, &[0x5a]);
        assert_eq!(read(&mut dev, SCR), 0x5a);
    }

    #[test]
    fn odd_sizes_and_offsets_are_ignored() {
        let (mut dev, evt, out) = serial();
        dev.write(THR, b"ab");
        dev.write(THR, &[]);
        dev.write(8, b"c");
        dev.write(u64::MAX, b"d");
        dev.write(1 << 32, b"e");
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(dev.enqueue_input(b"z").unwrap(), 1);
        let mut wide = [0u8; 4];
        dev.read(RBR, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        let mut none = [0u8; 0];
        dev.read(RBR, &mut none);
        let mut one = [0u8];
        dev.read(9, &mut one);
        assert_eq!(one, [0xff]);
        // The byte is still there: no odd access consumed it.
        assert_eq!(read(&mut dev, RBR), b'z');
        assert_eq!(pending(&evt), 0);
    }

    #[test]
    fn a_failing_output_loses_bytes_without_stopping_the_uart() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(EventFdTrigger::new(evt), Box::new(Broken));
        dev.write(THR, b"x");
        dev.write(THR, b"y");
        assert_eq!(dev.lost_output_bytes(), 2);
        assert_eq!(read(&mut dev, LSR) & LSR_THR_EMPTY, LSR_THR_EMPTY);
        assert!(format!("{dev:?}").contains("lost_output_bytes: 2"));
    }

    #[test]
    fn hostile_sequences_do_not_panic() {
        let (mut dev, evt, _out) = serial();
        // A small xorshift generator keeps the test deterministic without extra crates.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..100_000 {
            let r = next();
            let offset = match r & 3 {
                0 => r >> 8 & 0xf,
                1 => r >> 8,
                _ => r >> 8 & 7,
            };
            let size = (r >> 4 & 0xf) as usize;
            let mut data = [(r >> 16) as u8; 16];
            match r >> 62 {
                0 => dev.read(offset, &mut data[..size]),
                1 => dev.enqueue_input(&data[..size]).map(drop).unwrap(),
                _ => dev.write(offset, &data[..size]),
            }
            assert!(dev.input_capacity() <= FIFO_SIZE);
            // Keep the EventFd counter from saturating.
            if r & 0xff == 0 {
                pending(&evt);
            }
        }
    }
}
