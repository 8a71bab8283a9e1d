//! Event counters the devices keep, named as in Firecracker's metrics (`block`, `net`, `vsock`,
//! `entropy`, `balloon`, `uart`, `i8042`).
//!
//! Each device owns its counters in an [`Arc`](std::sync::Arc) it hands out (`Block::metrics`,
//! `Net::metrics`, ...), so the VMM reads them from any thread without locking the device. A
//! counter only ever grows (relaxed atomics, no lock in the I/O path); whoever reports them
//! computes the deltas between reports. Counters for events this VMM never has (rate limiters,
//! MMDS, ...) stay 0 so that the set of names is Firecracker's.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic event count, shared between a device and whoever reports it.
#[derive(Default)]
pub struct Count(AtomicU64);

impl Count {
    /// A count at 0.
    pub const fn new() -> Count {
        Count(AtomicU64::new(0))
    }

    /// Counts one event.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Counts `n` events (or bytes).
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Everything counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// A device's set of counters, listed by name for reporting.
pub trait DeviceMetrics: Send + Sync + fmt::Debug {
    /// Every counter, by its Firecracker name, with its total so far, always in the same order.
    fn totals(&self) -> Vec<(&'static str, u64)>;
}

/// Defines a struct of [`Count`]s and its [`DeviceMetrics`] listing.
macro_rules! counters {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: Count,)*
        }

        impl DeviceMetrics for $name {
            fn totals(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.get()),)*]
            }
        }
    };
}

counters! {
    /// A virtio-blk device's counters (Firecracker's `block` group).
    BlockMetrics {
        /// Activations that failed.
        activate_fails,
        /// Config space writes that failed (the device has no writable config).
        cfg_fails,
        /// Queue notifications that found no request.
        no_avail_buffer,
        /// Queue or backend events whose handling failed.
        event_fails,
        /// Requests the backend failed (I/O errors).
        execute_fails,
        /// Malformed requests: bad chains, unknown types, out-of-range sectors, writes to a
        /// read-only disk.
        invalid_reqs_count,
        /// FLUSH requests.
        flush_count,
        /// Queue notifications handled.
        queue_event_count,
        /// Rate limiter events (no rate limiter here: 0).
        rate_limiter_event_count,
        /// Backing file updates (PATCH /drives): 0.
        update_count,
        /// Backing file updates that failed: 0.
        update_fails,
        /// Bytes read from the disk into guest memory.
        read_bytes,
        /// Bytes written from guest memory to the disk.
        write_bytes,
        /// Successful read requests.
        read_count,
        /// Successful write requests.
        write_count,
        /// Requests held back by a rate limiter: 0.
        rate_limiter_throttled_events,
        /// Requests held back by the I/O engine: 0 (requests run synchronously).
        io_engine_throttled_events,
        /// Requests left in the queue after an event: 0 (every event drains the queue).
        remaining_reqs_count,
    }
}

counters! {
    /// A virtio-net device's counters (Firecracker's `net` group). Byte counts leave out the
    /// 12-byte virtio-net header.
    NetMetrics {
        /// Activations that failed.
        activate_fails,
        /// Config space writes that failed.
        cfg_fails,
        /// MAC address changes by the guest: 0 (not offered).
        mac_address_updates,
        /// Times the guest had no receive buffer for a waiting frame.
        no_rx_avail_buffer,
        /// Transmit notifications that found no frame.
        no_tx_avail_buffer,
        /// Queue or backend events whose handling failed.
        event_fails,
        /// Receive queue notifications handled.
        rx_queue_event_count,
        /// Rate limiter events on receive: 0.
        rx_event_rate_limiter_count,
        /// Receives held back by a rate limiter: 0.
        rx_rate_limiter_throttled,
        /// Tap (backend) readiness events handled.
        rx_tap_event_count,
        /// Bytes of frames delivered to the guest.
        rx_bytes_count,
        /// Frames delivered to the guest.
        rx_packets_count,
        /// Frames from the backend dropped: too short, or larger than the guest's buffers.
        rx_fails,
        /// Successful receive operations.
        rx_count,
        /// Backend reads that failed.
        tap_read_fails,
        /// Backend writes that failed.
        tap_write_fails,
        /// Bytes of frames sent to the backend.
        tx_bytes_count,
        /// Transmit chains that did not hold a frame.
        tx_malformed_frames,
        /// Frames the backend refused.
        tx_fails,
        /// Successful transmit operations.
        tx_count,
        /// Frames sent to the backend.
        tx_packets_count,
        /// Transmit queue notifications handled.
        tx_queue_event_count,
        /// Rate limiter events on transmit: 0.
        tx_rate_limiter_event_count,
        /// Transmits held back by a rate limiter: 0.
        tx_rate_limiter_throttled,
        /// Frames with a source MAC other than the guest's: 0 (not checked).
        tx_spoofed_mac_count,
        /// Transmit requests left in the queue after an event: 0.
        tx_remaining_reqs_count,
    }
}

counters! {
    /// The virtio-vsock device's counters (Firecracker's `vsock` group). Byte counts are
    /// payload bytes, headers left out.
    VsockMetrics {
        /// Activations that failed.
        activate_fails,
        /// Config space writes that failed.
        cfg_fails,
        /// Receive queue events whose handling failed.
        rx_queue_event_fails,
        /// Transmit queue events whose handling failed.
        tx_queue_event_fails,
        /// Event queue events whose handling failed.
        ev_queue_event_fails,
        /// Host socket (muxer) events whose handling failed.
        muxer_event_fails,
        /// Connection events whose handling failed: 0 (they end the connection).
        conn_event_fails,
        /// Receive queue notifications handled.
        rx_queue_event_count,
        /// Transmit queue notifications handled.
        tx_queue_event_count,
        /// Payload bytes delivered to the guest.
        rx_bytes_count,
        /// Payload bytes the guest sent to host sockets.
        tx_bytes_count,
        /// Packets delivered to the guest.
        rx_packets_count,
        /// Packets taken from the guest.
        tx_packets_count,
        /// Connections opened (by the guest or the host).
        conns_added,
        /// Connections the device reset (errors, protocol violations, timeouts).
        conns_killed,
        /// Connections forgotten, however they ended.
        conns_removed,
        /// Kill queue resyncs: 0.
        killq_resync,
        /// Flushes of buffered guest data to a host socket that failed.
        tx_flush_fails,
        /// Writes of guest data to a host socket that failed.
        tx_write_fails,
        /// Reads from a host socket that failed.
        rx_read_fails,
    }
}

counters! {
    /// The virtio-rng device's counters (Firecracker's `entropy` group).
    EntropyMetrics {
        /// Activations that failed.
        activate_fails,
        /// Queue events whose handling failed.
        entropy_event_fails,
        /// Queue notifications handled.
        entropy_event_count,
        /// Random bytes given to the guest.
        entropy_bytes,
        /// Reads from the host's random source that failed.
        host_rng_fails,
        /// Requests held back by a rate limiter: 0.
        entropy_rate_limiter_throttled,
        /// Rate limiter events: 0.
        rate_limiter_event_count,
    }
}

counters! {
    /// The virtio-balloon device's counters (Firecracker's `balloon` group).
    BalloonMetrics {
        /// Activations that failed.
        activate_fails,
        /// Inflate requests (chains) handled.
        inflate_count,
        /// Statistics buffers the driver sent.
        stats_updates_count,
        /// Statistics updates that failed: 0.
        stats_update_fails,
        /// Deflate requests (chains) handled.
        deflate_count,
        /// Queue events whose handling failed.
        event_fails,
        /// Free page reports: 0 (not offered).
        free_page_report_count,
        /// Pages freed by free page reporting: 0.
        free_page_report_freed,
        /// Free page reports that failed: 0.
        free_page_report_fails,
        /// Free page hints: 0 (not offered).
        free_page_hint_count,
        /// Pages freed by free page hinting: 0.
        free_page_hint_freed,
        /// Free page hints that failed: 0.
        free_page_hint_fails,
    }
}

counters! {
    /// The serial port's counters (Firecracker's `uart` group).
    SerialMetrics {
        /// Interrupts that could not be raised.
        error_count,
        /// Output flushes: 0 (output is written byte by byte).
        flush_count,
        /// Reads that found nothing to read: 0.
        missed_read_count,
        /// Output bytes the host output refused (lost).
        missed_write_count,
        /// Register reads by the guest.
        read_count,
        /// Register writes by the guest.
        write_count,
        /// Input bytes dropped by a rate limiter: 0.
        rate_limiter_dropped_bytes,
    }
}

counters! {
    /// The i8042 controller's counters (Firecracker's `i8042` group).
    I8042Metrics {
        /// Reset requests that could not be signalled.
        error_count,
        /// Reads of registers the controller does not have.
        missed_read_count,
        /// Writes to registers the controller does not have.
        missed_write_count,
        /// Register reads by the guest.
        read_count,
        /// CPU resets the guest asked for.
        reset_count,
        /// Register writes by the guest.
        write_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_list_every_counter_by_name() {
        let m = BlockMetrics::default();
        m.read_bytes.add(512);
        m.read_count.inc();
        let totals = m.totals();
        assert_eq!(totals.len(), 18);
        assert!(totals.contains(&("read_bytes", 512)));
        assert!(totals.contains(&("read_count", 1)));
        assert!(totals.contains(&("write_bytes", 0)));
        assert_eq!(NetMetrics::default().totals().len(), 26);
        assert_eq!(I8042Metrics::default().totals()[4].0, "reset_count");
    }
}
