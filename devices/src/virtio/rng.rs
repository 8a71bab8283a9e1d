//! virtio-rng (placeholder until the device lands).

use serde::{Deserialize, Serialize};

/// Snapshot state of the rng device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RngState {}
