//! The event-loop thread (event-manager): host stdin into the serial console, the i8042 reset
//! line, and the virtio devices' queue notifications and host backends. It reports VM-ending events to the main
//! thread over a channel.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_devices::SerialDevice;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::events::VmEvent;
use crate::terminal::ConsoleEscape;
use crate::virtio_devices::VirtioSubscriber;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Feeds host input (stdin) to the guest's serial port, with back-pressure: while the guest's
/// receive FIFO is full, input stays unread on the host side (off epoll) until the UART says
/// the guest emptied the FIFO (its `in_buffer_empty` event on `room`).
pub struct SerialInput {
    fd: RawFd,
    serial: Arc<Mutex<SerialDevice>>,
    /// Written by the UART when the guest empties its receive FIFO.
    room: Option<EventFd>,
    /// Bytes read from the host that the guest's receive FIFO had no room for yet.
    pending: Vec<u8>,
    /// Input is off epoll while `pending` waits for room in the FIFO.
    paused: bool,
    /// The host closed its end (EOF) or it cannot be polled.
    closed: bool,
    /// The console's escape keys (Ctrl-A x quits) and where the quit goes, on a terminal.
    escape: Option<(ConsoleEscape, Sender<VmEvent>)>,
}

impl SerialInput {
    /// Input from `fd` (normally stdin) to `serial`.
    pub fn new(fd: RawFd, serial: Arc<Mutex<SerialDevice>>) -> Self {
        // Without the event (no eventfd to be had) input still flows; a full FIFO then holds
        // the rest until more host input arrives.
        let room = EventFd::new(libc::EFD_NONBLOCK).ok().filter(|room| {
            room.try_clone()
                .is_ok_and(|clone| crate::lock(&serial).notify_input_room(clone))
        });
        SerialInput {
            fd,
            serial,
            room,
            pending: Vec::new(),
            paused: false,
            closed: false,
            escape: None,
        }
    }

    /// Reads the console's escape sequences from the input (see [`ConsoleEscape`]): Ctrl-A x
    /// ends the VM ([`VmEvent::ConsoleQuit`] on `events`).
    pub(crate) fn with_console_escape(mut self, events: Sender<VmEvent>) -> Self {
        self.escape = Some((ConsoleEscape::default(), events));
        self
    }

    /// Moves pending bytes into the FIFO; true when all went in.
    fn flush_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let mut serial = crate::lock(&self.serial);
        let accepted = serial.enqueue_input(&self.pending).unwrap_or(0);
        self.pending.drain(..accepted);
        self.pending.is_empty()
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reads at most buf.len() bytes into a live local buffer from a descriptor we
        // were given for reading; epoll said it is readable, so this does not block.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => self.stop_polling(ops, true),
            n if n > 0 => {
                let input = &buf[..n as usize];
                match &mut self.escape {
                    Some((escape, events)) => {
                        if escape.filter(input, &mut self.pending) {
                            let _ = events.send(VmEvent::ConsoleQuit);
                            self.stop_polling(ops, true);
                            return;
                        }
                    }
                    None => self.pending.extend_from_slice(input),
                }
                if !self.flush_pending() {
                    self.stop_polling(ops, false);
                    self.paused = true;
                }
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted
                    && err.kind() != io::ErrorKind::WouldBlock
                {
                    self.stop_polling(ops, true);
                }
            }
        }
    }

    fn stop_polling(&mut self, ops: &mut EventOps, closed: bool) {
        let _ = ops.remove(Events::empty_raw(self.fd));
        self.closed |= closed;
    }

    /// The guest emptied its FIFO: move held-back input in, and read the host again once all
    /// of it went in.
    fn room_in_fifo(&mut self, ops: &mut EventOps) {
        if let Some(room) = &self.room {
            let _ = room.read();
        }
        if self.paused && !self.closed && self.flush_pending() {
            self.paused = false;
            if ops.add(Events::new_raw(self.fd, EventSet::IN)).is_err() {
                self.closed = true;
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        // /dev/null and regular files cannot be polled: then there is simply no input.
        if ops.add(Events::new_raw(self.fd, EventSet::IN)).is_err() {
            self.closed = true;
        }
        if let Some(room) = &self.room {
            let _ = ops.add(Events::new(room, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self
            .room
            .as_ref()
            .is_some_and(|room| events.fd() == room.as_raw_fd())
        {
            self.room_in_fifo(ops);
        } else if events.event_set().contains(EventSet::IN) {
            self.read_input(ops);
        } else {
            // HUP or ERR without data: the host side is gone.
            self.stop_polling(ops, true);
        }
    }
}

/// Ends the VM when the guest resets it (the i8042 or the ACPI reset register) or powers it
/// off (ACPI S5). One listener reads both lines each time either is raised, and power-off wins
/// when both are: a guest that writes S5 and then falls back to a reset (the tiny test guest,
/// firmware-style shutdown code) may raise both before the loop wakes, and epoll does not say
/// which came first; the S5 write always comes first in such a guest's program order.
struct EndListener {
    reset: EventFd,
    power_off: EventFd,
    events: Sender<VmEvent>,
    /// The end was reported (at most once).
    ended: bool,
}

impl MutEventSubscriber for EndListener {
    fn init(&mut self, ops: &mut EventOps) {
        for line in [&self.reset, &self.power_off] {
            if let Err(e) = ops.add(Events::new(line, EventSet::IN)) {
                let _ = self
                    .events
                    .send(VmEvent::EventLoopFailed(io::Error::other(e.to_string())));
            }
        }
    }

    fn process(&mut self, _: Events, ops: &mut EventOps) {
        // Nonblocking eventfds: a line that was not raised reads as an error.
        let reset = self.reset.read().is_ok();
        let power_off = self.power_off.read().is_ok();
        if self.ended || !(reset || power_off) {
            return;
        }
        self.ended = true;
        for line in [&self.reset, &self.power_off] {
            let _ = ops.remove(Events::new(line, EventSet::IN));
        }
        let _ = self.events.send(if power_off {
            VmEvent::GuestPowerOff
        } else {
            VmEvent::GuestReset
        });
    }
}

/// Wakes the loop when the VM ends: the loop blocks in epoll with no timeout.
struct StopListener {
    stop: EventFd,
}

impl MutEventSubscriber for StopListener {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.stop, EventSet::IN));
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.stop.read();
    }
}

/// The running event loop thread.
pub struct EventLoop {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Starts the loop with the serial input (if any), the reset and power-off lines.
    pub(crate) fn start(
        input: Option<SerialInput>,
        reset: EventFd,
        power_off: EventFd,
        virtio: Vec<VirtioSubscriber>,
        events: Sender<VmEvent>,
    ) -> io::Result<EventLoop> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let wake_listener = StopListener {
            stop: wake.try_clone()?,
        };
        let thread = std::thread::Builder::new()
            .name(crate::thread_names::EVENTS.into())
            .spawn(move || {
                if let Err(e) = event_loop(
                    input,
                    [reset, power_off],
                    virtio,
                    wake_listener,
                    events.clone(),
                    &stop_flag,
                ) {
                    let _ = events.send(VmEvent::EventLoopFailed(e));
                }
            })?;
        Ok(EventLoop {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the loop and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn event_loop(
    input: Option<SerialInput>,
    [reset, power_off]: [EventFd; 2],
    virtio: Vec<VirtioSubscriber>,
    wake: StopListener,
    events: Sender<VmEvent>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let to_io = |e: event_manager::Error| io::Error::other(e.to_string());
    let mut manager: EventManager<Subscriber> = EventManager::new().map_err(to_io)?;
    manager.add_subscriber(Arc::new(Mutex::new(wake)));
    manager.add_subscriber(Arc::new(Mutex::new(EndListener {
        reset,
        power_off,
        events,
        ended: false,
    })));
    for device in virtio {
        manager.add_subscriber(Arc::new(Mutex::new(device)));
    }
    if let Some(input) = input {
        manager.add_subscriber(Arc::new(Mutex::new(input)));
    }
    // Confined once its descriptors are registered, before it serves a device.
    crate::seccomp::apply(crate::seccomp::ThreadKind::Events);
    while !stop.load(Ordering::SeqCst) {
        manager.run().map_err(to_io)?;
    }
    Ok(())
}

/// Standard input's descriptor.
pub fn stdin_fd() -> RawFd {
    io::stdin().as_raw_fd()
}
