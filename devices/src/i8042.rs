//! The i8042 keyboard controller: enough of it for Linux to probe it quickly and to reset the
//! machine through it.
//!
//! vm-superio's `I8042Device` handles only the reset command (0xFE); every other controller
//! command reads back nothing, so Linux's probe waits for its timeouts (seconds in a nested
//! guest) and then says "Can't read CTR". No rust-vmm crate models the rest, so the controller
//! commands Linux uses (read/write the configuration byte, self tests, port enable/disable,
//! output port) and the keyboard's replies (ACK, reset, identify) are written here; the reset
//! still goes through vm-superio's device.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::metrics::I8042Metrics;
use crate::trigger::EventFdTrigger;

/// The i8042's base on the port-I/O bus (0x60, the data port).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64: the data port at offset 0 and the status/command port at offset 4.
pub const I8042_PORT_LEN: u64 = 5;

/// Offset of the data port (0x60).
const DATA_OFFSET: u64 = 0;
/// Offset of the status (read) / command (write) port (0x64).
const COMMAND_OFFSET: u64 = 4;

// Status register bits.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KBD_UNLOCKED: u8 = 0x10;

// Configuration byte ("CTR") bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_RESET_CPU: u8 = 0xfe;

// Keyboard commands (port 0x60) and replies.
const KBD_ECHO: u8 = 0xee;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83];

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// No mouse is attached: the aux port test reports its clock line stuck low.
const AUX_PORT_ABSENT: u8 = 0x01;

/// Output port bit 0: the CPU reset line (active low).
const OUTPUT_PORT_RESET_LINE: u8 = 0x01;
/// Bytes the output buffer holds at most; a guest flooding commands loses the oldest replies.
const OUTPUT_QUEUE_MAX: usize = 16;

/// The i8042 controller.
///
/// Command 0xFE on port 0x64 (or clearing the reset line through the output port) fires
/// `reset`, which the VMM watches to end the VM. Replies go to an output queue read through
/// port 0x60 and, when the guest enabled it, raise the keyboard interrupt (IRQ 1). Only
/// single-byte accesses at offsets 0 and 4 reach the controller: other offsets read all ones
/// and writes to them are ignored.
pub struct I8042Wrapper {
    device: I8042Device<EventFdTrigger>,
    keyboard_interrupt: Option<EventFdTrigger>,
    ctr: u8,
    output_port: u8,
    /// A command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    last_was_command: bool,
    output: VecDeque<u8>,
    metrics: Arc<I8042Metrics>,
}

impl fmt::Debug for I8042Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I8042Wrapper")
            .field("ctr", &self.ctr)
            .field("pending", &self.pending)
            .field("output", &self.output)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl I8042Wrapper {
    /// A controller that fires `reset` when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        I8042Wrapper {
            device: I8042Device::new(reset),
            keyboard_interrupt: None,
            ctr: CTR_KBD_INT | CTR_SYSTEM_FLAG | CTR_TRANSLATE,
            output_port: OUTPUT_PORT_RESET_LINE,
            pending: None,
            last_was_command: false,
            output: VecDeque::new(),
            metrics: Arc::default(),
        }
    }

    /// Raises `trigger` (bound to IRQ 1) when a reply is ready and the guest enabled the
    /// keyboard interrupt.
    pub fn with_keyboard_interrupt(mut self, trigger: EventFdTrigger) -> Self {
        self.keyboard_interrupt = Some(trigger);
        self
    }

    /// Presses and releases Ctrl+Alt+Del on the keyboard, as scan code set 1 bytes (what the
    /// guest reads with translation on, the default), raising IRQ 1 when enabled. A Linux
    /// guest with a keyboard handler (CONFIG_VT) reboots on it.
    pub fn send_ctrl_alt_del(&mut self) {
        // Ctrl, Alt, Del (extended) down, then up in reverse order.
        self.reply(&[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
    }

    /// The reset trigger.
    pub fn reset_evt(&self) -> &EventFdTrigger {
        self.device.reset_evt()
    }

    /// Times firing the reset trigger failed.
    pub fn reset_errors(&self) -> u64 {
        self.metrics.error_count.get()
    }

    /// The controller's counters (register reads and writes, resets), shared with whoever
    /// reports them.
    pub fn metrics(&self) -> Arc<I8042Metrics> {
        self.metrics.clone()
    }

    fn status(&self) -> u8 {
        let mut status = SB_SYSTEM_FLAG | SB_KBD_UNLOCKED;
        if !self.output.is_empty() {
            status |= SB_OUT_FULL;
        }
        if self.last_was_command {
            status |= SB_LAST_WAS_COMMAND;
        }
        status
    }

    fn reply(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.output.len() == OUTPUT_QUEUE_MAX {
                self.output.pop_front();
            }
            self.output.push_back(byte);
        }
        if self.ctr & CTR_KBD_INT != 0 {
            if let Some(irq) = &self.keyboard_interrupt {
                // A lost interrupt only delays the guest's driver until it polls.
                let _ = irq.trigger();
            }
        }
    }

    fn reset(&mut self) {
        self.metrics.reset_count.inc();
        if self
            .device
            .write(COMMAND_OFFSET as u8, CMD_RESET_CPU)
            .is_err()
        {
            self.metrics.error_count.inc();
        }
    }

    fn command(&mut self, command: u8) {
        self.last_was_command = true;
        match command {
            CMD_READ_CTR => self.reply(&[self.ctr]),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT | CMD_WRITE_KBD_BUFFER => {
                self.pending = Some(command)
            }
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_TEST_AUX => self.reply(&[AUX_PORT_ABSENT]),
            CMD_SELF_TEST => self.reply(&[SELF_TEST_OK]),
            CMD_TEST_KBD => self.reply(&[PORT_TEST_OK]),
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_INPUT_PORT => self.reply(&[0]),
            CMD_READ_OUTPUT_PORT => self.reply(&[self.output_port]),
            CMD_RESET_CPU => self.reset(),
            // Everything else (including pulses of other output lines) does nothing.
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & OUTPUT_PORT_RESET_LINE == 0 {
                    self.reset();
                }
            }
            Some(CMD_WRITE_KBD_BUFFER) => self.reply(&[value]),
            _ => self.keyboard_command(value),
        }
    }

    /// A byte for the keyboard itself: it acknowledges everything, and answers reset,
    /// identify and echo as a standard AT keyboard does.
    fn keyboard_command(&mut self, value: u8) {
        match value {
            KBD_RESET => self.reply(&[KBD_ACK, KBD_SELF_TEST_OK]),
            KBD_IDENTIFY => self.reply(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_ECHO => self.reply(&[KBD_ECHO]),
            _ => self.reply(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042Wrapper {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (DATA_OFFSET, [byte]) => {
                self.metrics.read_count.inc();
                *byte = self.output.pop_front().unwrap_or(0);
            }
            (COMMAND_OFFSET, [byte]) => {
                self.metrics.read_count.inc();
                *byte = self.status();
            }
            (_, data) => {
                self.metrics.missed_read_count.inc();
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA_OFFSET, &[value]) => {
                self.metrics.write_count.inc();
                self.data(value);
            }
            (COMMAND_OFFSET, &[value]) => {
                self.metrics.write_count.inc();
                self.command(value);
            }
            _ => self.metrics.missed_write_count.inc(),
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

    fn read(dev: &mut I8042Wrapper, offset: u64) -> u8 {
        let mut data = [0xaau8];
        dev.read(offset, &mut data);
        data[0]
    }

    #[test]
    fn metrics_count_accesses_and_resets() {
        let (mut dev, _evt) = i8042();
        let m = dev.metrics();
        read(&mut dev, COMMAND_OFFSET);
        read(&mut dev, 1);
        dev.write(COMMAND_OFFSET, &[0xfe]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0]);
        assert_eq!(
            (m.read_count.get(), m.missed_read_count.get()),
            (1, 1),
            "reads"
        );
        assert_eq!(
            (m.write_count.get(), m.missed_write_count.get()),
            (1, 1),
            "writes"
        );
        assert_eq!(m.reset_count.get(), 1);
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
    fn clearing_the_reset_line_through_the_output_port_resets() {
        let (mut dev, evt) = i8042();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x02]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_commands_and_ports_do_not_reset() {
        let (mut dev, evt) = i8042();
        for value in (0..=0xffu8).filter(|&v| v != 0xfe && v != CMD_WRITE_OUTPUT_PORT) {
            dev.write(COMMAND_OFFSET, &[value]);
            // Answer any command that waits for data with a harmless byte.
            dev.write(DATA_OFFSET, &[0x45]);
        }
        for offset in [1, 2, 3, 5, 0x64, u64::MAX] {
            dev.write(offset, &[0xfe]);
        }
        // The reset command, but not as a single byte.
        dev.write(COMMAND_OFFSET, &[0xfe, 0]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0xfe, 0xfe, 0xfe]);
        dev.write(COMMAND_OFFSET, &[]);
        assert!(no_event(&evt));
    }

    #[test]
    fn linux_probe_sequence_gets_answers() {
        let (mut dev, _evt) = i8042();
        assert_eq!(
            read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL,
            0,
            "empty at start"
        );
        // Read the configuration byte.
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL, 0);
        let ctr = read(&mut dev, DATA_OFFSET);
        assert_eq!(ctr, CTR_KBD_INT | CTR_SYSTEM_FLAG | CTR_TRANSLATE);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_FULL, 0);
        // Write it back changed, read it again.
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x65]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x65);
        // Self test and keyboard port test.
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_OK);
        dev.write(COMMAND_OFFSET, &[CMD_TEST_KBD]);
        assert_eq!(read(&mut dev, DATA_OFFSET), PORT_TEST_OK);
        // Keyboard reset and identify.
        dev.write(DATA_OFFSET, &[KBD_RESET]);
        assert_eq!(
            [read(&mut dev, DATA_OFFSET), read(&mut dev, DATA_OFFSET)],
            [KBD_ACK, KBD_SELF_TEST_OK]
        );
        dev.write(DATA_OFFSET, &[KBD_IDENTIFY]);
        let id: Vec<u8> = (0..3).map(|_| read(&mut dev, DATA_OFFSET)).collect();
        assert_eq!(id, vec![KBD_ACK, 0xab, 0x83]);
        // Empty buffer reads 0.
        assert_eq!(read(&mut dev, DATA_OFFSET), 0);
    }

    #[test]
    fn replies_raise_irq1_only_when_enabled() {
        let (dev, _reset) = i8042();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = dev.with_keyboard_interrupt(EventFdTrigger::new(irq.try_clone().unwrap()));
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(irq.read().unwrap(), 1);
        read(&mut dev, DATA_OFFSET);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0]);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert!(no_event(&irq), "keyboard interrupt disabled in the CTR");
    }

    #[test]
    fn a_flooding_guest_cannot_grow_the_output_queue() {
        let (mut dev, _evt) = i8042();
        for _ in 0..10_000 {
            dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        }
        assert_eq!(dev.output.len(), OUTPUT_QUEUE_MAX);
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
