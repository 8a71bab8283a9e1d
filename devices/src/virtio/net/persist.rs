//! Snapshot state of the net device.

use serde::{Deserialize, Serialize};

use super::mac::{format_mac, is_unicast};
use crate::virtio::VirtioError;

/// Snapshot state of the net device. A received frame still waiting for guest buffers is not
/// saved (it is dropped, as a real network may drop it). The serialized form is part of the
/// snapshot format: keep its fields as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    /// The MAC address the guest saw.
    pub mac: [u8; 6],
}

impl NetState {
    /// The saved MAC, once checked (the state file is untrusted input).
    pub(super) fn checked_mac(&self) -> Result<[u8; 6], VirtioError> {
        if !is_unicast(&self.mac) {
            return Err(VirtioError::StateMismatch(format!(
                "virtio-net MAC {} is not a unicast address",
                format_mac(&self.mac)
            )));
        }
        Ok(self.mac)
    }
}
