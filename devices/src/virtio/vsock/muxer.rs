//! The device's host side: the listener, the host streams, the inner epoll that watches them,
//! and the translation between guest packets and stream bytes.
//!
//! Every host descriptor (the listener, the deadline timer, each pending or connected stream)
//! sits in one epoll the device owns; the event loop only sees that epoll. Each stream's
//! interest follows what the device can do with it: input only while the guest can take data
//! (rx buffers and credit), output only while bytes wait for the host. A stream that hung up
//! leaves the epoll, since epoll reports a hang-up whatever the interest.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{
    parse_connect_line, pending, ConnKey, ConnState, Connection, PendingStream,
};
use super::host::{connect_nonblocking, send_nosignal, Timer};
use super::packet::{op, shutdown, PacketHeader, HEADER_LEN, TYPE_STREAM};
use super::{
    BUF_ALLOC, CREDIT_UPDATE_THRESHOLD, HOST_CID, MAX_CONNECTIONS, MAX_CONNECT_LINE,
    MAX_CONTROL_PACKETS, MAX_PENDING_STREAMS, MAX_PKT_PAYLOAD,
};
use crate::metrics::VsockMetrics;
use crate::virtio::{pop_chain, VirtioError};

/// Epoll token of the listener.
const TOKEN_LISTENER: u64 = 0;
/// Epoll token of the deadline timer.
const TOKEN_TIMER: u64 = 1;
/// First token of a stream; tokens are never reused, so a stale event finds nothing.
const FIRST_STREAM_TOKEN: u64 = 2;
/// Host-side ports the device allocates for host-initiated connections (never `u32::MAX`,
/// which is VMADDR_PORT_ANY).
const HOST_PORT_FIRST: u32 = 1 << 30;
const HOST_PORT_LAST: u32 = u32::MAX - 1;
/// Events handled per `process_backend`; the rest stay ready for the next call.
const EVENTS_PER_CALL: usize = 64;
/// Connections the listener accepts per readiness report.
const ACCEPTS_PER_CALL: usize = 32;
/// How long the listener rests after an accept failed (no descriptors left, say).
const LISTENER_RETRY: Duration = Duration::from_millis(100);

/// What became of an rx buffer offered to a connection.
enum Fill {
    /// A packet of this many bytes was written.
    Packet(u32),
    /// The connection has nothing after all.
    Nothing,
}

pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: Timer,
    timer_at: Option<Instant>,
    /// When a listener paused after an accept failure is watched again.
    listener_retry_at: Option<Instant>,
    conns: HashMap<ConnKey, Connection>,
    conn_tokens: HashMap<u64, ConnKey>,
    pending_streams: HashMap<u64, PendingStream>,
    next_token: u64,
    next_host_port: u32,
    /// Connections that may have something for the rx queue, each at most once.
    rx_ready: VecDeque<ConnKey>,
    /// Connections whose epoll interest may be stale, each at most once.
    dirty: Vec<ConnKey>,
    /// Connection-less packets for the guest (RSTs), bounded.
    control: VecDeque<PacketHeader>,
    /// Packets dropped because `control` was full.
    pub dropped_control: u64,
    /// tx processing stopped because `control` was full.
    pub tx_stalled: bool,
    /// Staging for one packet's payload.
    scratch: crate::virtio::LazyBuf,
    /// How long a host stream has to send its CONNECT line.
    pub line_timeout: Duration,
    /// How long the guest has to answer a host-initiated REQUEST.
    pub connect_timeout: Duration,
    /// How long a closing connection may take to flush or to get the guest's RST.
    pub close_timeout: Duration,
    /// The device's counters.
    pub metrics: Arc<VsockMetrics>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("connections", &self.conns.len())
            .field("pending_streams", &self.pending_streams.len())
            .field("control", &self.control.len())
            .field("tx_stalled", &self.tx_stalled)
            .finish_non_exhaustive()
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Adds `fd` to `epoll`, reporting `events` with `token`.
fn watch(epoll: &Epoll, fd: RawFd, events: EventSet, token: u64) -> io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
}

/// Changes what `epoll` reports for `fd` to `events`, with `token`.
fn rewatch(epoll: &Epoll, fd: RawFd, events: EventSet, token: u64) -> io::Result<()> {
    epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
}

/// Removes `fd` from `epoll`. Failure only means it was not registered; closing the
/// descriptor removes it anyway.
fn unwatch(epoll: &Epoll, fd: RawFd) {
    let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let timer = Timer::new()?;
        watch(&epoll, listener.as_raw_fd(), EventSet::IN, TOKEN_LISTENER)?;
        watch(&epoll, timer.raw_fd(), EventSet::IN, TOKEN_TIMER)?;
        Ok(Muxer {
            guest_cid,
            uds_path,
            listener,
            epoll,
            timer,
            timer_at: None,
            listener_retry_at: None,
            conns: HashMap::new(),
            conn_tokens: HashMap::new(),
            pending_streams: HashMap::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_host_port: HOST_PORT_FIRST,
            rx_ready: VecDeque::new(),
            dirty: Vec::new(),
            control: VecDeque::new(),
            dropped_control: 0,
            tx_stalled: false,
            scratch: crate::virtio::LazyBuf::new(MAX_PKT_PAYLOAD),
            line_timeout: super::LINE_TIMEOUT,
            connect_timeout: super::CONNECT_TIMEOUT,
            close_timeout: super::CLOSE_TIMEOUT,
            metrics: Arc::default(),
        })
    }

    pub fn epoll_fd(&self) -> i32 {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn pending_stream_count(&self) -> usize {
        self.pending_streams.len()
    }

    /// Guest bytes held for host streams that did not take them yet.
    #[cfg(test)]
    pub fn buffered_for_host(&self) -> usize {
        self.conns.values().map(|c| c.tx_buf.len()).sum()
    }

    /// Device reset: every stream closed, nothing owed to the guest. The listener stays.
    pub fn reset(&mut self) {
        self.drop_connections();
        for (_, p) in self.pending_streams.drain() {
            unwatch(&self.epoll, p.stream.as_raw_fd());
        }
        self.control.clear();
        self.tx_stalled = false;
        self.timer_at = None;
        let _ = self.timer.set(None);
        // A paused listener still needs its wake-up.
        if let Some(at) = self.listener_retry_at {
            self.arm_timer(at);
        }
    }

    /// Closes every connection without telling the guest (a transport reset tells it).
    pub fn drop_connections(&mut self) {
        for (_, c) in self.conns.drain() {
            self.metrics.conns_removed.inc();
            if c.registered {
                unwatch(&self.epoll, c.stream.as_raw_fd());
            }
        }
        self.conn_tokens.clear();
        self.rx_ready.clear();
        self.dirty.clear();
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        // 2^64 streams will not happen; wrapping keeps it panic-free regardless.
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_STREAM_TOKEN);
        t
    }

    /// Whether a tx packet may run (it can queue at most one control packet).
    pub fn control_has_room(&self) -> bool {
        self.control.len() < MAX_CONTROL_PACKETS
    }

    fn push_control(&mut self, hdr: PacketHeader) {
        if self.control_has_room() {
            self.control.push_back(hdr);
        } else {
            self.dropped_control = self.dropped_control.saturating_add(1);
        }
    }

    /// An RST answering `to` (addressed back to its sender), unless `to` is an RST itself.
    fn reply_rst(&mut self, to: &PacketHeader) {
        if to.op == op::RST {
            return;
        }
        self.push_control(PacketHeader {
            src_cid: to.dst_cid,
            dst_cid: to.src_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: to.type_,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn rst_for(&self, key: ConnKey) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.host_port,
            dst_port: key.guest_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Default::default()
        }
    }

    /// Closes a connection's stream and forgets it; with `rst`, tells the guest.
    fn kill(&mut self, key: ConnKey, rst: bool) {
        if let Some(c) = self.conns.remove(&key) {
            self.metrics.conns_removed.inc();
            if rst {
                self.metrics.conns_killed.inc();
            }
            if c.registered {
                unwatch(&self.epoll, c.stream.as_raw_fd());
            }
            self.conn_tokens.remove(&c.token);
            if rst {
                let hdr = self.rst_for(key);
                self.push_control(hdr);
            }
        }
    }

    fn mark_rx_ready(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.in_rx_ready && c.rx_worthy() {
                c.in_rx_ready = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    /// Notes that a connection's epoll interest may need to change. The change is made by
    /// [`Muxer::sync_interest`] once the device is done with the current notification, so a
    /// stream read dry in the same call keeps its input interest without two epoll_ctl calls.
    fn touch(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Applies the interest changes noted by [`Muxer::touch`]. Called at the end of every
    /// queue or backend notification, after rx processing: a stream still readable then
    /// cannot be served (no rx buffer, no credit) and stops being polled for input.
    pub fn sync_interest(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            if let Some(c) = self.conns.get_mut(key) {
                c.dirty = false;
            }
            self.update_interest(*key);
        }
        // Keep the allocation.
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Brings the stream's epoll interest in line with its state.
    fn update_interest(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.registered {
            return;
        }
        let want = c.wanted_interest();
        if want == c.interest {
            return;
        }
        let ok = rewatch(&self.epoll, c.stream.as_raw_fd(), want, c.token).is_ok();
        if ok {
            c.interest = want;
        } else {
            self.kill(key, true);
        }
    }

    fn set_deadline(&mut self, key: ConnKey, after: Duration) {
        let at = Instant::now() + after;
        if let Some(c) = self.conns.get_mut(&key) {
            c.deadline = Some(at);
        }
        self.arm_timer(at);
    }

    fn arm_timer(&mut self, at: Instant) {
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        let now = Instant::now();
        if self
            .timer
            .set(Some(at.saturating_duration_since(now)))
            .is_ok()
        {
            self.timer_at = Some(at);
        }
    }

    /// Allocates a host-side port for a connection to guest port `guest_port`.
    fn alloc_host_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_host_port;
            self.next_host_port = if port >= HOST_PORT_LAST {
                HOST_PORT_FIRST
            } else {
                port + 1
            };
            let key = ConnKey {
                host_port: port,
                guest_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    // ---- host side -------------------------------------------------------------------------

    /// Handles what the inner epoll reports now (zero timeout). `active`: whether the guest
    /// driver is up (host connections are refused otherwise).
    pub fn handle_events(&mut self, active: bool) -> Result<(), VirtioError> {
        let mut events = [EpollEvent::default(); EVENTS_PER_CALL];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VirtioError::Backend(e)),
            }
        };
        for ev in events.iter().take(n) {
            let set = ev.event_set();
            match ev.data() {
                TOKEN_LISTENER => self.accept(active),
                TOKEN_TIMER => self.expire(),
                token => {
                    if let Some(&key) = self.conn_tokens.get(&token) {
                        self.stream_event(key, set);
                    } else if self.pending_streams.contains_key(&token) {
                        self.read_connect_line(token, active);
                    }
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, active: bool) {
        for _ in 0..ACCEPTS_PER_CALL {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if would_block(&e) => return,
                Err(_) => {
                    // Out of descriptors or memory: the connection stays in the backlog and
                    // the listener stays ready, so stop watching it for a while instead of
                    // spinning on it.
                    self.pause_listener();
                    return;
                }
            };
            if !active || self.pending_streams.len() >= MAX_PENDING_STREAMS {
                continue; // dropping it closes it: the host sees EOF without "OK"
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.new_token();
            if watch(&self.epoll, stream.as_raw_fd(), EventSet::IN, token).is_err() {
                continue;
            }
            let deadline = Instant::now() + self.line_timeout;
            self.pending_streams.insert(
                token,
                PendingStream {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                    deadline,
                },
            );
            self.arm_timer(deadline);
        }
    }

    pub(super) fn pause_listener(&mut self) {
        let paused = rewatch(
            &self.epoll,
            self.listener.as_raw_fd(),
            EventSet::empty(),
            TOKEN_LISTENER,
        )
        .is_ok();
        if paused {
            let at = Instant::now() + LISTENER_RETRY;
            self.listener_retry_at = Some(at);
            self.arm_timer(at);
        }
    }

    fn drop_pending(&mut self, token: u64) -> Option<PendingStream> {
        let p = self.pending_streams.remove(&token)?;
        unwatch(&self.epoll, p.stream.as_raw_fd());
        Some(p)
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so that bytes the host sends
    /// after it stay in the stream for the guest.
    fn read_connect_line(&mut self, token: u64, active: bool) {
        let Some(p) = self.pending_streams.get_mut(&token) else {
            return;
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match (&p.stream).read(&mut byte) {
                Ok(1) => {
                    p.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break parse_connect_line(&p.line);
                    }
                    if p.line.len() >= MAX_CONNECT_LINE {
                        break None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => return,
                // EOF or an error before a full line.
                _ => break None,
            }
        };
        let Some(p) = self.drop_pending(token) else {
            return;
        };
        if let (Some(guest_port), true) = (port, active) {
            self.host_connect(p.stream, guest_port);
        }
    }

    /// A host program asked for guest port `guest_port`: queue a REQUEST for the guest.
    fn host_connect(&mut self, stream: UnixStream, guest_port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let Some(host_port) = self.alloc_host_port(guest_port) else {
            return;
        };
        let key = ConnKey {
            host_port,
            guest_port,
        };
        let token = self.new_token();
        // Until the guest answers, the stream is watched only for hang-ups.
        if watch(&self.epoll, stream.as_raw_fd(), EventSet::empty(), token).is_err() {
            return;
        }
        let mut c = Connection::new(
            stream,
            token,
            ConnState::HostConnecting,
            &PacketHeader::default(),
        );
        c.registered = true;
        c.pending = pending::REQUEST;
        self.conns.insert(key, c);
        self.metrics.conns_added.inc();
        self.conn_tokens.insert(token, key);
        let timeout = self.connect_timeout;
        self.set_deadline(key, timeout);
        self.mark_rx_ready(key);
    }

    fn stream_event(&mut self, key: ConnKey, set: EventSet) {
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hangup(key);
            return;
        }
        if set.contains(EventSet::OUT) {
            self.flush(key);
        }
        if set.contains(EventSet::IN) {
            if let Some(c) = self.conns.get_mut(&key) {
                c.host_readable = true;
            }
            self.mark_rx_ready(key);
        }
        self.touch(key);
    }

    /// The host stream is closed both ways (or failed).
    fn host_hangup(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        unwatch(&self.epoll, c.stream.as_raw_fd());
        c.registered = false;
        c.host_hup = true;
        // Nobody will read these any more.
        c.tx_buf = VecDeque::new();
        if c.state == ConnState::HostConnecting {
            let told = c.pending & pending::REQUEST == 0;
            self.kill(key, told);
            return;
        }
        if c.guest_shut == shutdown::BOTH {
            // The guest is gone too (this was a close waiting on the host): done.
            self.kill(key, true);
            return;
        }
        if c.host_eof || c.guest_shut & shutdown::RCV != 0 {
            // No input left to deliver: say the host is gone both ways.
            self.host_gone(key);
        } else {
            // Deliver what the host wrote before closing; the read that returns 0 then
            // sends the SHUTDOWN.
            c.host_readable = true;
            self.mark_rx_ready(key);
        }
    }

    /// The host will neither send nor receive: SHUTDOWN both ways to the guest, then wait a
    /// while for its RST.
    fn host_gone(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.host_eof = true;
        c.host_readable = false;
        c.pending |= pending::SHUTDOWN;
        c.shutdown_flags = shutdown::BOTH;
        c.state = ConnState::Closing;
        let timeout = self.close_timeout;
        self.set_deadline(key, timeout);
        self.mark_rx_ready(key);
    }

    /// Writes buffered guest bytes to the host stream.
    fn flush(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut failed = false;
        while !c.tx_buf.is_empty() {
            let (front, _) = c.tx_buf.as_slices();
            match send_nosignal(&c.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    let full = n >= front.len();
                    c.tx_buf.drain(..n.min(front.len()));
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                    if !full {
                        break;
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.metrics.tx_flush_fails.inc();
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.kill(key, true);
            return;
        }
        self.after_forward(key);
    }

    /// After bytes went to the host: release the buffer, finish a shutdown, offer credit.
    fn after_forward(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.tx_buf.is_empty() {
            if c.tx_buf.capacity() > 0 {
                c.tx_buf = VecDeque::new();
            }
            if c.finished() {
                self.kill(key, true);
                return;
            }
            if c.guest_shut & shutdown::SEND != 0 {
                let _ = c.stream.shutdown(Shutdown::Write);
            }
        }
        if c.state != ConnState::Closing
            && c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD
        {
            c.pending |= pending::CREDIT_UPDATE;
        }
        self.mark_rx_ready(key);
        self.touch(key);
    }

    /// Deadlines: unanswered host connects, silent pending streams, slow closes.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .pending_streams
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            self.drop_pending(t);
        }
        let late: Vec<(ConnKey, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, c)| {
                // A REQUEST the guest never saw needs no RST.
                let told =
                    !(c.state == ConnState::HostConnecting && c.pending & pending::REQUEST != 0);
                (k, told)
            })
            .collect();
        for (key, told) in late {
            self.kill(key, told);
        }
        if self.listener_retry_at.is_some_and(|t| t <= now) {
            let resumed = rewatch(
                &self.epoll,
                self.listener.as_raw_fd(),
                EventSet::IN,
                TOKEN_LISTENER,
            )
            .is_ok();
            self.listener_retry_at = (!resumed).then(|| now + LISTENER_RETRY);
        }
        let next = self
            .pending_streams
            .values()
            .map(|p| p.deadline)
            .chain(self.conns.values().filter_map(|c| c.deadline))
            .chain(self.listener_retry_at)
            .min();
        self.timer_at = None;
        match next {
            Some(at) => self.arm_timer(at),
            None => {
                // Disarming also clears the expired timer's readiness.
                let _ = self.timer.set(None);
            }
        }
    }

    // ---- guest tx --------------------------------------------------------------------------

    /// Processes the tx queue. Returns whether chains were used. Stops early (`tx_stalled`)
    /// when the control queue is full, so that answers are never lost while the guest gives
    /// no rx buffers.
    pub fn process_tx<M: GuestMemoryBackend>(
        &mut self,
        q: &mut Queue,
        mem: &M,
    ) -> Result<bool, VirtioError> {
        let mut used = false;
        self.tx_stalled = false;
        loop {
            q.disable_notification(mem)?;
            loop {
                if !self.control_has_room() {
                    self.tx_stalled = true;
                    return Ok(used);
                }
                let Some(chain) = pop_chain(q, mem)? else {
                    break;
                };
                let head = chain.head_index();
                if let Ok(mut reader) = Reader::new(mem, chain) {
                    self.guest_packet(&mut reader);
                }
                // The device writes nothing into tx buffers.
                q.add_used(mem, head, 0)?;
                used = true;
            }
            if !q.enable_notification(mem)? {
                break;
            }
        }
        Ok(used)
    }

    fn guest_packet<B: BitmapSlice>(&mut self, reader: &mut Reader<'_, B>) {
        let mut raw = [0u8; HEADER_LEN];
        if reader.read_exact(&mut raw).is_err() {
            return; // too short to be a packet: nobody to answer
        }
        self.metrics.tx_packets_count.inc();
        let hdr = PacketHeader::from_bytes(&raw);
        if hdr.src_cid != self.guest_cid {
            return; // spoofed source: an answer would go to the wrong socket
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            self.reply_rst(&hdr);
            return;
        }
        let key = ConnKey {
            host_port: hdr.dst_port,
            guest_port: hdr.src_port,
        };
        let Some(c) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(key, &hdr),
                op::RST => {}
                _ => self.reply_rst(&hdr),
            }
            return;
        };
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            op::RESPONSE => self.guest_accepted(key),
            op::RST => self.kill(key, false),
            op::SHUTDOWN => self.guest_shutdown(key, hdr.flags),
            op::RW => self.guest_data(key, &hdr, reader),
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => c.pending |= pending::CREDIT_UPDATE,
            // A second REQUEST for a live connection, or an unknown op: the connection is
            // broken on the guest's side.
            _ => self.kill(key, true),
        }
        // New credit may let host input through.
        self.mark_rx_ready(key);
        self.touch(key);
    }

    /// The guest connects to host port `key.host_port`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &PacketHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.reply_rst(hdr);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", key.host_port));
        let Ok(stream) = connect_nonblocking(&PathBuf::from(path)) else {
            self.reply_rst(hdr);
            return;
        };
        let token = self.new_token();
        let mut c = Connection::new(stream, token, ConnState::Established, hdr);
        let interest = c.wanted_interest();
        if watch(&self.epoll, c.stream.as_raw_fd(), interest, token).is_err() {
            self.reply_rst(hdr);
            return;
        }
        c.registered = true;
        c.interest = interest;
        c.pending = pending::RESPONSE;
        self.conns.insert(key, c);
        self.metrics.conns_added.inc();
        self.conn_tokens.insert(token, key);
        self.mark_rx_ready(key);
    }

    /// The guest accepted a host-initiated connection: tell the host program.
    fn guest_accepted(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state != ConnState::HostConnecting || c.pending & pending::REQUEST != 0 {
            self.kill(key, true);
            return;
        }
        let line = format!("OK {}\n", key.host_port);
        // The stream's send buffer is empty (nothing was written to it yet), so this short
        // line goes in one call; anything else means the host side is broken.
        match send_nosignal(&c.stream, line.as_bytes()) {
            Ok(n) if n == line.len() => {
                c.state = ConnState::Established;
                c.deadline = None;
            }
            _ => self.kill(key, true),
        }
    }

    fn guest_shutdown(&mut self, key: ConnKey, flags: u32) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state == ConnState::HostConnecting {
            self.kill(key, true);
            return;
        }
        c.guest_shut |= flags & shutdown::BOTH;
        if c.guest_shut & shutdown::RCV != 0 {
            // The host program's writes now fail instead of piling up unread.
            let _ = c.stream.shutdown(Shutdown::Read);
            c.host_readable = false;
        }
        if c.finished() && !c.tx_buf.is_empty() && c.state != ConnState::Closing {
            // Let the host take what is buffered first, for a bounded time.
            c.state = ConnState::Closing;
            let timeout = self.close_timeout;
            self.set_deadline(key, timeout);
        }
        // Closes the connection when finished and nothing is buffered.
        self.after_forward(key);
    }

    fn guest_data<B: BitmapSlice>(
        &mut self,
        key: ConnKey,
        hdr: &PacketHeader,
        reader: &mut Reader<'_, B>,
    ) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let len = hdr.len as usize;
        let acceptable = c.state == ConnState::Established
            && c.guest_shut & shutdown::SEND == 0
            && !c.host_hup
            && len <= MAX_PKT_PAYLOAD
            && len <= reader.available_bytes()
            // The credit we gave: what we hold unforwarded may not exceed our buf_alloc.
            && c.tx_buf.len().saturating_add(len) <= BUF_ALLOC as usize;
        if !acceptable {
            self.kill(key, true);
            return;
        }
        if len == 0 {
            return;
        }
        let Some(data) = self.scratch.get().get_mut(..len) else {
            return;
        };
        if reader.read_exact(data).is_err() {
            self.kill(key, true);
            return;
        }
        self.metrics.tx_bytes_count.add(len as u64);
        let mut written = 0;
        if c.tx_buf.is_empty() {
            match send_nosignal(&c.stream, data) {
                Ok(n) => written = n.min(len),
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    self.metrics.tx_write_fails.inc();
                    self.kill(key, true);
                    return;
                }
            }
        }
        if let Some(rest) = data.get(written..) {
            c.tx_buf.extend(rest);
        }
        c.fwd_cnt = c.fwd_cnt.wrapping_add(written as u32);
        self.after_forward(key);
    }

    // ---- guest rx --------------------------------------------------------------------------

    /// Whether anything waits for an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    /// Fills rx buffers with what waits for the guest. Returns whether chains were used.
    pub fn process_rx<M: GuestMemoryBackend>(
        &mut self,
        q: &mut Queue,
        mem: &M,
    ) -> Result<bool, VirtioError> {
        let mut used = false;
        while self.has_rx_work() {
            let Some(chain) = pop_chain(q, mem)? else {
                // Out of buffers: ask for a kick when the driver adds some.
                if q.enable_notification(mem)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let mut writer = match Writer::new(mem, chain) {
                Ok(w) if w.available_bytes() >= HEADER_LEN => w,
                // Unusable buffer (outside guest memory, or smaller than a header): give it
                // back empty.
                _ => {
                    q.add_used(mem, head, 0)?;
                    used = true;
                    continue;
                }
            };
            match self.next_packet(&mut writer) {
                Some(len) => {
                    if len > 0 {
                        self.metrics.rx_packets_count.inc();
                    }
                    q.add_used(mem, head, len)?;
                    used = true;
                }
                None => {
                    q.go_to_previous_position();
                    break;
                }
            }
        }
        Ok(used)
    }

    fn next_packet<B: BitmapSlice>(&mut self, writer: &mut Writer<'_, B>) -> Option<u32> {
        if let Some(hdr) = self.control.pop_front() {
            return Some(write_header(writer, &hdr));
        }
        // Each connection gets one try per buffer: one that cannot fill this buffer (too
        // small for data) goes back to the end of the list.
        for _ in 0..self.rx_ready.len() {
            let Some(key) = self.rx_ready.pop_front() else {
                break;
            };
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.in_rx_ready = false;
            let fill = self.conn_packet(key, writer);
            self.mark_rx_ready(key);
            self.touch(key);
            if let Fill::Packet(len) = fill {
                return Some(len);
            }
        }
        None
    }

    /// One packet from connection `key` into `writer`: control first, then host data.
    fn conn_packet<B: BitmapSlice>(&mut self, key: ConnKey, writer: &mut Writer<'_, B>) -> Fill {
        let guest_cid = self.guest_cid;
        let Some(c) = self.conns.get_mut(&key) else {
            return Fill::Nothing;
        };
        if let Some(hdr) = c.take_control(key, guest_cid) {
            return Fill::Packet(write_header(writer, &hdr));
        }
        if !c.data_ready() {
            return Fill::Nothing;
        }
        let room = writer.available_bytes().saturating_sub(HEADER_LEN);
        let max = room
            .min(c.peer_credit() as usize)
            .min(MAX_PKT_PAYLOAD)
            .min(self.scratch.len());
        if max == 0 {
            return Fill::Nothing;
        }
        let Some(buf) = self.scratch.get().get_mut(..max) else {
            return Fill::Nothing;
        };
        let n = loop {
            match (&c.stream).read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) && c.registered => {
                    // Drained: epoll watches for more.
                    c.host_readable = false;
                    return Fill::Nothing;
                }
                // Out of the epoll, nothing more will come: same as EOF.
                Err(e) if would_block(&e) => break 0,
                Err(_) => {
                    self.metrics.rx_read_fails.inc();
                    self.kill(key, true);
                    return Fill::Nothing;
                }
            }
        };
        if n == 0 {
            return self.host_eof(key, writer);
        }
        let n = n.min(max);
        if n < max && c.registered {
            // A short read emptied the socket: epoll says when more comes, which saves a
            // read that would only return EAGAIN. A hung-up stream (out of the epoll) is read
            // until EOF instead.
            c.host_readable = false;
        }
        let mut hdr = c.header(key, guest_cid, op::RW);
        // n <= MAX_PKT_PAYLOAD, which fits u32.
        hdr.len = n as u32;
        c.rx_cnt = c.rx_cnt.wrapping_add(hdr.len);
        self.metrics.rx_bytes_count.add(u64::from(hdr.len));
        c.fwd_cnt_sent = c.fwd_cnt;
        // Any packet carries our fwd_cnt, so a pending CREDIT_UPDATE is answered by this one.
        c.pending &= !pending::CREDIT_UPDATE;
        let data = buf.get(..n).unwrap_or_default();
        if writer.write_all(&hdr.to_bytes()).is_err() || writer.write_all(data).is_err() {
            // Cannot happen (the room was checked), but bytes read and not delivered break
            // the stream.
            self.kill(key, true);
            return Fill::Packet(0);
        }
        Fill::Packet(HEADER_LEN as u32 + hdr.len)
    }

    /// The host stream reached EOF: SHUTDOWN to the guest, written into `writer` now.
    fn host_eof<B: BitmapSlice>(&mut self, key: ConnKey, writer: &mut Writer<'_, B>) -> Fill {
        let guest_cid = self.guest_cid;
        let Some(c) = self.conns.get_mut(&key) else {
            return Fill::Nothing;
        };
        c.host_eof = true;
        c.host_readable = false;
        let mut hdr = c.header(key, guest_cid, op::SHUTDOWN);
        c.fwd_cnt_sent = c.fwd_cnt;
        if c.host_hup || c.finished() {
            // Nothing more can flow: both ways, then wait for the guest's RST.
            hdr.flags = shutdown::BOTH;
            c.state = ConnState::Closing;
            let timeout = self.close_timeout;
            self.set_deadline(key, timeout);
        } else {
            // Half close: the host may still receive.
            hdr.flags = shutdown::SEND;
        }
        Fill::Packet(write_header(writer, &hdr))
    }
}

/// Writes a header-only packet; returns its length (0 if the buffer refused it).
fn write_header<B: BitmapSlice>(writer: &mut Writer<'_, B>, hdr: &PacketHeader) -> u32 {
    if writer.write_all(&hdr.to_bytes()).is_ok() {
        HEADER_LEN as u32
    } else {
        0
    }
}
