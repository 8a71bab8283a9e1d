//! One stream connection between a guest socket and a host Unix stream: its state, the bytes
//! the host has not taken yet, and both directions' credit counters (virtio 1.2, 5.10.6.3).

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{op, shutdown, PacketHeader, TYPE_STREAM};
use super::{BUF_ALLOC, HOST_CID};

/// Identifies a connection: the host-side port and the guest-side port (the CIDs are fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub host_port: u32,
    pub guest_port: u32,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Host initiated: the REQUEST is queued or sent; waiting for the guest's RESPONSE or RST.
    HostConnecting,
    /// Data flows (possibly one direction shut down).
    Established,
    /// Nothing more will flow: the device is flushing what the host has not taken yet, or
    /// waiting for the guest's RST; a deadline bounds both.
    Closing,
}

/// Control packets owed to the guest, sent in this order before any data.
pub(crate) mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
}

#[derive(Debug)]
pub(crate) struct Connection {
    pub stream: UnixStream,
    /// Token of the stream in the device's epoll.
    pub token: u64,
    pub state: ConnState,
    /// Whether the stream is still in the device's epoll (a hung-up stream is taken out, or
    /// it would be reported ready forever).
    pub registered: bool,
    /// The interest currently registered.
    pub interest: EventSet,
    /// epoll said the stream has input (or EOF) that has not been read yet.
    pub host_readable: bool,
    /// The host will send no more (read returned 0).
    pub host_eof: bool,
    /// The host stream is closed both ways.
    pub host_hup: bool,
    /// SHUTDOWN flags received from the guest.
    pub guest_shut: u32,
    /// SHUTDOWN flags to send with the pending SHUTDOWN.
    pub shutdown_flags: u32,
    /// Guest bytes the host stream did not take yet (at most [`BUF_ALLOC`]).
    pub tx_buf: VecDeque<u8>,
    /// Guest bytes written to the host stream, wrapping (our `fwd_cnt`).
    pub fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard from us.
    pub fwd_cnt_sent: u32,
    /// Bytes sent to the guest, wrapping.
    pub rx_cnt: u32,
    /// The guest's receive buffer size for this connection.
    pub peer_buf_alloc: u32,
    /// Bytes the guest consumed, wrapping.
    pub peer_fwd_cnt: u32,
    /// [`pending`] bits.
    pub pending: u8,
    /// Whether the connection's key is in the device's rx work list.
    pub in_rx_ready: bool,
    /// Whether the connection's key is in the device's list of interests to update.
    pub dirty: bool,
    /// When a HostConnecting or Closing connection gives up.
    pub deadline: Option<Instant>,
}

impl Connection {
    pub fn new(stream: UnixStream, token: u64, state: ConnState, peer: &PacketHeader) -> Self {
        Connection {
            stream,
            token,
            state,
            registered: false,
            interest: EventSet::empty(),
            host_readable: false,
            host_eof: false,
            host_hup: false,
            guest_shut: 0,
            shutdown_flags: 0,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: peer.buf_alloc,
            peer_fwd_cnt: peer.fwd_cnt,
            pending: 0,
            in_rx_ready: false,
            dirty: false,
            deadline: None,
        }
    }

    /// Bytes the guest can take now: its buf_alloc minus what is in flight. A driver that
    /// claims to have consumed more than it got, or shrank its buffer, gets nothing.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host input should be read and sent to the guest now.
    pub fn data_ready(&self) -> bool {
        self.state != ConnState::HostConnecting
            && self.host_readable
            && !self.host_eof
            && self.guest_shut & shutdown::RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection has something for the rx queue.
    pub fn rx_worthy(&self) -> bool {
        self.pending != 0 || self.data_ready()
    }

    /// Neither side will send any more.
    pub fn finished(&self) -> bool {
        self.guest_shut == shutdown::BOTH
            || (self.guest_shut & shutdown::SEND != 0 && self.host_eof)
    }

    /// The epoll interest the stream should have: input while the device wants to read it,
    /// output while bytes wait for it.
    pub fn wanted_interest(&self) -> EventSet {
        let mut want = EventSet::empty();
        if self.state != ConnState::HostConnecting
            && !self.host_readable
            && !self.host_eof
            && self.guest_shut & shutdown::RCV == 0
        {
            want |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            want |= EventSet::OUT;
        }
        want
    }

    /// A header from us to the guest on this connection, with our current credit.
    pub fn header(&self, key: ConnKey, guest_cid: u64, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: key.host_port,
            dst_port: key.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next control packet owed to the guest, clearing its bit.
    pub fn take_control(&mut self, key: ConnKey, guest_cid: u64) -> Option<PacketHeader> {
        let (bit, code) = if self.pending & pending::REQUEST != 0 {
            (pending::REQUEST, op::REQUEST)
        } else if self.pending & pending::RESPONSE != 0 {
            (pending::RESPONSE, op::RESPONSE)
        } else if self.pending & pending::CREDIT_UPDATE != 0 {
            (pending::CREDIT_UPDATE, op::CREDIT_UPDATE)
        } else if self.pending & pending::SHUTDOWN != 0 && !self.data_ready() {
            // Data the host sent before shutting down goes first.
            (pending::SHUTDOWN, op::SHUTDOWN)
        } else {
            return None;
        };
        self.pending &= !bit;
        let mut hdr = self.header(key, guest_cid, code);
        if code == op::SHUTDOWN {
            hdr.flags = self.shutdown_flags;
        }
        self.fwd_cnt_sent = self.fwd_cnt;
        Some(hdr)
    }
}

/// A host stream that connected to the listener and has not sent its `CONNECT <port>\n` line.
#[derive(Debug)]
pub(crate) struct PendingStream {
    pub stream: UnixStream,
    pub line: Vec<u8>,
    pub deadline: Instant,
}

/// Parses `CONNECT <port>\n` (the trailing newline already checked and included).
pub(crate) fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"CONNECT ")?.strip_suffix(b"\n")?;
    if rest.is_empty() || rest.len() > 10 || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect_line(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295\n"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT 4294967296\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT \n"), None);
        assert_eq!(parse_connect_line(b"CONNECT +5\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT 5"), None);
        assert_eq!(parse_connect_line(b"connect 5\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT 5 \n"), None);
    }

    #[test]
    fn credit_never_exceeds_what_the_peer_advertised() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = PacketHeader {
            buf_alloc: 100,
            fwd_cnt: 0,
            ..Default::default()
        };
        let mut c = Connection::new(a, 9, ConnState::Established, &peer);
        assert_eq!(c.peer_credit(), 100);
        c.rx_cnt = 60;
        assert_eq!(c.peer_credit(), 40);
        c.peer_fwd_cnt = 50;
        assert_eq!(c.peer_credit(), 90);
        // A driver claiming more than it got has no credit, rather than a huge one.
        c.peer_fwd_cnt = 70;
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap.
        c.rx_cnt = 5;
        c.peer_fwd_cnt = u32::MAX - 4;
        assert_eq!(c.peer_credit(), 90);
    }
}
