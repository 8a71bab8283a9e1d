//! virtio-vsock (placeholder until the device lands).

use serde::{Deserialize, Serialize};

/// Snapshot state of the vsock device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsockState {}
