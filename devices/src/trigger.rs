//! [`EventFdTrigger`]: an interrupt line or notification backed by an EventFd.

use std::io;
use std::ops::Deref;

/// Re-exported so users build triggers with the same `vmm-sys-util` version as this crate.
pub use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// An interrupt line / notification backed by an EventFd: `vm-superio`'s `Trigger` for it.
///
/// `vmm-core` binds the EventFd to a guest IRQ with KVM_IRQFD (or watches it in its event loop,
/// as for the i8042 reset); devices never see KVM. Triggering writes 1 to the EventFd.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `event_fd`.
    pub fn new(event_fd: EventFd) -> Self {
        EventFdTrigger(event_fd)
    }

    /// A second trigger on the same EventFd (a `dup` of the descriptor).
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(EventFdTrigger)
    }

    /// The EventFd behind this trigger.
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_superio::Trigger;

    #[test]
    fn trigger_writes_one_and_clones_share_the_counter() {
        let t = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let clone = t.try_clone().unwrap();
        t.trigger().unwrap();
        clone.trigger().unwrap();
        assert_eq!(t.event_fd().read().unwrap(), 2);
        // Deref reaches the EventFd too; nothing is pending now.
        assert_eq!(clone.read().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
