//! virtio-block (placeholder until the device lands).

use serde::{Deserialize, Serialize};

/// Snapshot state of the block device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockState {}
