//! Snapshot state of the block device: the identity of the disk the guest saw.

use serde::{Deserialize, Serialize};

use super::{id_from_str, DiskInfo};
use crate::virtio::VirtioError;

/// Snapshot state of the block device: the identity of the disk the guest saw.
///
/// Requests complete inside `process_queue`, so nothing is ever in flight. The serialized form
/// is part of the snapshot format: keep its fields as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Whether the disk was read-only (VIRTIO_BLK_F_RO offered).
    pub read_only: bool,
    /// The GET_ID string the guest saw (trailing NULs removed).
    pub id: String,
}

impl BlockState {
    /// The state of a device over `disk`.
    pub(super) fn of(disk: &DiskInfo) -> BlockState {
        BlockState {
            capacity_sectors: disk.capacity_sectors,
            read_only: disk.read_only,
            id: disk.id_string(),
        }
    }

    /// Checks that this state fits `disk` (same capacity, same read-only setting) and adopts
    /// its ID: the guest already read it (udev names /dev/disk/by-id from it), so the saved one
    /// stays even if the image now sits on another inode.
    pub(super) fn restore_into(&self, disk: &mut DiskInfo) -> Result<(), VirtioError> {
        if self.capacity_sectors != disk.capacity_sectors {
            return Err(VirtioError::StateMismatch(format!(
                "the disk has {} sectors, the saved disk had {}",
                disk.capacity_sectors, self.capacity_sectors
            )));
        }
        let mode = |read_only| if read_only { "read-only" } else { "read-write" };
        if self.read_only != disk.read_only {
            return Err(VirtioError::StateMismatch(format!(
                "the disk is {}, the saved disk was {}",
                mode(disk.read_only),
                mode(self.read_only),
            )));
        }
        let Some(id) = id_from_str(&self.id) else {
            return Err(VirtioError::StateMismatch(format!(
                "saved disk id {:?} is longer than 20 bytes",
                self.id
            )));
        };
        disk.id = id;
        Ok(())
    }
}
