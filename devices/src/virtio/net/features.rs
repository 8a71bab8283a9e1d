//! What the device offers and what its frames look like: the feature bits, the backend
//! offloads they turn on, and the sizes of the virtio-net header and of frames.

use virtio_bindings::virtio_net as vnet;

use super::tap::offload;
use crate::virtio::features;

/// The virtio 1.x net header (`struct virtio_net_hdr_v1`) before every frame.
pub const NET_HDR_LEN: usize = 12;
/// Largest Ethernet frame, without the header: a 64 KiB segmentation-offload frame plus its
/// Ethernet header.
pub const MAX_FRAME_LEN: usize = 65550;
/// Largest header + frame the device moves in either direction.
pub const MAX_BUFFER_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;

/// Ethernet header; a shorter frame is not a frame.
const ETH_HLEN: usize = 14;
/// Shortest header + frame the device passes on.
pub(super) const MIN_BUFFER_LEN: usize = NET_HDR_LEN + ETH_HLEN;
/// Where `num_buffers` sits in the header.
pub(super) const NUM_BUFFERS_OFFSET: usize = 10;

/// Feature bit `n` as a mask.
pub(super) const fn bit(n: u32) -> u64 {
    1 << n
}

/// Feature bits the device offers.
pub const AVAIL_FEATURES: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | bit(vnet::VIRTIO_NET_F_CSUM)
    | bit(vnet::VIRTIO_NET_F_GUEST_CSUM)
    | bit(vnet::VIRTIO_NET_F_MAC)
    | bit(vnet::VIRTIO_NET_F_GUEST_TSO4)
    | bit(vnet::VIRTIO_NET_F_GUEST_TSO6)
    | bit(vnet::VIRTIO_NET_F_GUEST_ECN)
    | bit(vnet::VIRTIO_NET_F_HOST_TSO4)
    | bit(vnet::VIRTIO_NET_F_HOST_TSO6)
    | bit(vnet::VIRTIO_NET_F_HOST_ECN)
    | bit(vnet::VIRTIO_NET_F_MRG_RXBUF)
    | bit(vnet::VIRTIO_NET_F_STATUS);

/// Whether the driver accepted mergeable receive buffers (a frame may fill several chains).
pub(super) fn mergeable_rx(acked: u64) -> bool {
    acked & bit(vnet::VIRTIO_NET_F_MRG_RXBUF) != 0
}

/// The tap offloads matching what the guest accepted, so the backend hands it only frames it
/// can take. Flags the kernel would refuse (TSO without checksum offload, ECN without TSO) are
/// left out even if a driver acked them against the spec's feature dependencies.
pub(super) fn backend_offloads(acked: u64) -> u32 {
    let has = |n| acked & bit(n) != 0;
    let mut flags = 0;
    if has(vnet::VIRTIO_NET_F_GUEST_CSUM) {
        flags |= offload::TUN_F_CSUM;
        if has(vnet::VIRTIO_NET_F_GUEST_TSO4) {
            flags |= offload::TUN_F_TSO4;
        }
        if has(vnet::VIRTIO_NET_F_GUEST_TSO6) {
            flags |= offload::TUN_F_TSO6;
        }
        if flags & (offload::TUN_F_TSO4 | offload::TUN_F_TSO6) != 0
            && has(vnet::VIRTIO_NET_F_GUEST_ECN)
        {
            flags |= offload::TUN_F_TSO_ECN;
        }
    }
    flags
}
