//! virtio-net (placeholder until the device lands).

use serde::{Deserialize, Serialize};

/// Snapshot state of the net device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetState {}
