//! virtio-balloon (placeholder until the device lands).

use serde::{Deserialize, Serialize};

/// Snapshot state of the balloon device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalloonState {}
