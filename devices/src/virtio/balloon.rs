//! virtio-balloon, the traditional memory balloon (virtio 1.2, 5.5).
//!
//! The host sets a target (`num_pages`, in 4 KiB balloon pages) with
//! [`Balloon::set_target_pages`]; the guest driver gives pages up by sending their page frame
//! numbers on the inflate queue, takes them back through the deflate queue, and reports how
//! many it holds in `actual`.
//!
//! Inflated pages go back to the host with `madvise(MADV_DONTNEED)` on their host mapping:
//! guest RAM is private anonymous memory, so the host frees the pages and the next guest touch
//! faults in a zero page. Runs of adjacent pages are returned with one call. Deflate needs no
//! host work for that same reason, so it is only acknowledged.
//!
//! Hostile drivers: each PFN is checked to name a whole 4 KiB page inside one region of guest
//! memory; anything else is skipped and counted as refused. Nothing outside the named pages
//! and the used ring is ever changed, and the PFNs one chain can name are bounded
//! ([`MAX_PFNS_PER_CHAIN`]).
//!
//! Statistics (VIRTIO_BALLOON_F_STATS_VQ, offered when a polling interval is configured): the
//! driver puts one buffer of `(tag: u16, value: u64)` entries on the third queue; the device
//! keeps the latest values and holds the buffer, and every interval (a timerfd in the event
//! loop) hands it back used, which asks the driver for fresh values. A driver that sends
//! garbage gets its entries ignored: only whole entries with known tags are kept.
//!
//! Not implemented: free page hinting and free page reporting, page poisoning and
//! MUST_TELL_HOST (not offered, so the driver may reuse deflated pages at once, which is fine
//! since deflate does nothing on the host).

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::BalloonMetrics;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::{
    device_type, drain_queue, features, notify_used, pop_valid_chain, ActiveQueues, BackendFd,
    Persist, VirtioDevice, VirtioDeviceState, VirtioError, VirtioInterrupt,
};

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the inflate queue.
pub const INFLATE_QUEUE: usize = 0;
/// Index of the deflate queue.
pub const DEFLATE_QUEUE: usize = 1;
/// Index of the statistics queue (present when statistics are configured).
pub const STATS_QUEUE: usize = 2;
/// VIRTIO_BALLOON_F_STATS_VQ.
pub const F_STATS_VQ: u64 = 1 << 1;
/// The token of the statistics timer in [`VirtioDevice::backend_fds`].
pub const STATS_TIMER_TOKEN: u32 = 1;
/// Feature bit: the driver may deflate the balloon when the guest runs out of memory.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// The balloon's page size; PFNs count these whatever the guest or host page size.
pub const BALLOON_PAGE_SIZE: u64 = 4096;
/// The most PFNs taken from one descriptor chain (16 MiB of guest memory); the rest are
/// refused. Linux sends at most 256 per chain; the bound keeps a chain of huge descriptors of
/// scattered PFNs (one madvise each) from holding the device, and its lock, for long.
pub const MAX_PFNS_PER_CHAIN: u64 = 1 << 12;

const PFN_SHIFT: u32 = 12;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
/// Bytes of one statistics entry: a little-endian u16 tag and u64 value, packed.
const STAT_ENTRY_LEN: usize = 10;
/// Statistics entries read from one buffer at most (the spec defines 16 tags).
const MAX_STAT_ENTRIES: usize = 64;
/// Config space: `num_pages` (le32, read-only for the driver) then `actual` (le32).
const ACTUAL_OFFSET: u64 = 4;
const CONFIG_SIZE: u64 = 8;
/// PFNs read from guest memory at a time.
const PFN_BATCH: usize = 256;
/// `BALLOON_PAGE_SIZE` as a host size.
const PAGE_BYTES: usize = 4096;

/// How the balloon starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Pages (4 KiB) the host initially wants the guest to give up.
    pub target_pages: u32,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest may take pages back under memory
    /// pressure instead of going out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between two statistics requests to the guest; 0: no statistics queue.
    pub stats_polling_interval_s: u32,
}

/// The guest's memory statistics as its driver last reported them (virtio 1.2, 5.5.6.3);
/// `None` for what it never reported. Memory amounts are in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemoryStats {
    /// Memory swapped in (VIRTIO_BALLOON_S_SWAP_IN).
    pub swap_in: Option<u64>,
    /// Memory swapped out.
    pub swap_out: Option<u64>,
    /// Major page faults.
    pub major_faults: Option<u64>,
    /// Minor page faults.
    pub minor_faults: Option<u64>,
    /// Memory not used for anything.
    pub free_memory: Option<u64>,
    /// Memory the guest has.
    pub total_memory: Option<u64>,
    /// Memory available to new programs without swapping.
    pub available_memory: Option<u64>,
    /// Page cache that can be dropped at once.
    pub disk_caches: Option<u64>,
    /// Successful hugetlb allocations.
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb allocations.
    pub hugetlb_failures: Option<u64>,
    /// OOM killer runs.
    pub oom_kill: Option<u64>,
    /// Allocation stalls.
    pub alloc_stall: Option<u64>,
    /// Memory scanned asynchronously.
    pub async_scan: Option<u64>,
    /// Memory scanned directly.
    pub direct_scan: Option<u64>,
    /// Memory reclaimed asynchronously.
    pub async_reclaim: Option<u64>,
    /// Memory reclaimed directly.
    pub direct_reclaim: Option<u64>,
}

impl GuestMemoryStats {
    /// Records one entry; an unknown tag is ignored.
    fn set(&mut self, tag: u16, value: u64) {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return,
        };
        *slot = Some(value);
    }
}

/// What the balloon did since it was created (counts survive a device reset and a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Pages the driver put in the balloon that lie in guest memory and were accepted.
    pub inflated_pages: u64,
    /// Pages the driver took back out of the balloon.
    pub deflated_pages: u64,
    /// PFNs in inflate requests that were skipped: outside guest memory, straddling a region's
    /// end, beyond [`MAX_PFNS_PER_CHAIN`], or whose madvise failed.
    pub refused_pages: u64,
    /// Bytes of guest memory returned to the host with madvise.
    pub bytes_returned: u64,
    /// madvise calls made (runs of adjacent pages share one).
    pub madvise_calls: u64,
}

/// Snapshot state of the balloon device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalloonState {
    /// The host's target, in 4 KiB pages.
    pub target_pages: u32,
    /// What the driver last reported in `actual`.
    pub actual_pages: u32,
    /// Whether DEFLATE_ON_OOM was configured (must match the device restored into).
    pub deflate_on_oom: bool,
    /// The counters.
    pub stats: BalloonStats,
    /// The statistics buffer the device held (its head index), to hand back after a restore.
    #[serde(default)]
    pub stats_head: Option<u16>,
    /// The guest's latest statistics.
    #[serde(default)]
    pub guest_stats: GuestMemoryStats,
}

/// What the device holds between DRIVER_OK and reset.
struct Active<M> {
    mem: M,
    inflate: Queue,
    deflate: Queue,
    /// The statistics queue, when statistics are configured.
    stats: Option<Queue>,
    interrupt: VirtioInterrupt,
}

/// The virtio memory balloon device, on guest memory of type `M`.
pub struct Balloon<M> {
    deflate_on_oom: bool,
    target_pages: u32,
    actual_pages: u32,
    stats: BalloonStats,
    metrics: Arc<BalloonMetrics>,
    host_page_size: usize,
    active: Option<Active<M>>,
    /// Seconds between statistics requests; 0 when statistics are off.
    stats_interval_s: u32,
    /// Fires every `stats_interval_s` while the driver is active.
    stats_timer: Option<TimerFd>,
    /// The statistics buffer the driver gave and the device holds (its head index).
    stats_head: Option<u16>,
    guest_stats: GuestMemoryStats,
}

impl<M> fmt::Debug for Balloon<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balloon")
            .field("deflate_on_oom", &self.deflate_on_oom)
            .field("target_pages", &self.target_pages)
            .field("actual_pages", &self.actual_pages)
            .field("stats", &self.stats)
            .field("activated", &self.active.is_some())
            .finish()
    }
}

impl<M: GuestMemoryBackend> Balloon<M> {
    /// A balloon with the given initial target, waiting for its driver.
    pub fn new(config: BalloonConfig) -> Balloon<M> {
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let host_page_size = usize::try_from(page)
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(PAGE_BYTES);
        Balloon {
            deflate_on_oom: config.deflate_on_oom,
            target_pages: config.target_pages,
            actual_pages: 0,
            stats: BalloonStats::default(),
            metrics: Arc::default(),
            host_page_size,
            active: None,
            stats_interval_s: config.stats_polling_interval_s,
            stats_timer: None,
            stats_head: None,
            guest_stats: GuestMemoryStats::default(),
        }
    }

    /// Seconds between statistics requests (0: statistics are off).
    pub fn stats_polling_interval_s(&self) -> u32 {
        self.stats_interval_s
    }

    /// The guest's latest memory statistics.
    pub fn guest_stats(&self) -> GuestMemoryStats {
        self.guest_stats
    }

    /// Changes the statistics interval at run time and asks for statistics at once.
    /// Statistics cannot be switched on or off after the device was built (the queue is part
    /// of what the driver negotiated): `secs` must be non-zero, and statistics configured.
    pub fn set_stats_polling_interval(&mut self, secs: u32) -> Result<(), VirtioError> {
        if self.stats_interval_s == 0 || secs == 0 {
            return Err(VirtioError::StateMismatch(
                "balloon statistics cannot be switched on or off after boot".into(),
            ));
        }
        self.stats_interval_s = secs;
        self.arm_stats_timer(Duration::from_nanos(1))?;
        Ok(())
    }

    /// Arms the statistics timer: first in `first`, then every interval.
    fn arm_stats_timer(&mut self, first: Duration) -> Result<(), VirtioError> {
        let interval = Duration::from_secs(u64::from(self.stats_interval_s));
        if let Some(timer) = &mut self.stats_timer {
            timer
                .reset(first, Some(interval))
                .map_err(|e| VirtioError::Backend(e.into()))?;
        }
        Ok(())
    }

    /// Takes the statistics the driver sent and keeps its buffer until the next request.
    fn process_stats(&mut self) -> Result<(), VirtioError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(queue) = active.stats.as_mut() else {
            return Ok(());
        };
        let mem = &active.mem;
        while let Some(chain) = pop_valid_chain(queue, mem)? {
            // A driver that sends a second buffer gets the first one back.
            if let Some(old) = self.stats_head.replace(chain.head_index()) {
                queue.add_used(mem, old, 0)?;
                notify_used(queue, mem, &active.interrupt)?;
            }
            let mut bytes = Vec::new();
            for desc in chain.readable() {
                let room = MAX_STAT_ENTRIES * STAT_ENTRY_LEN - bytes.len();
                let len = (desc.len() as usize).min(room);
                let start = bytes.len();
                bytes.resize(start + len, 0);
                if mem.read_slice(&mut bytes[start..], desc.addr()).is_err() {
                    bytes.truncate(start);
                }
            }
            for entry in bytes.chunks_exact(STAT_ENTRY_LEN) {
                let tag = u16::from_le_bytes([entry[0], entry[1]]);
                let mut value = [0u8; 8];
                value.copy_from_slice(&entry[2..]);
                self.guest_stats.set(tag, u64::from_le_bytes(value));
            }
            self.metrics.stats_updates_count.inc();
        }
        Ok(())
    }

    /// The interval passed: hands the held statistics buffer back, which asks the driver for
    /// new values.
    fn request_stats(&mut self) -> Result<(), VirtioError> {
        if let Some(timer) = &mut self.stats_timer {
            // Nonblocking: a wake-up without an expiry reads nothing.
            let _ = timer.wait();
        }
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let (Some(queue), Some(head)) = (active.stats.as_mut(), self.stats_head.take()) else {
            return Ok(());
        };
        queue.add_used(&active.mem, head, 0)?;
        notify_used(queue, &active.mem, &active.interrupt)
    }

    /// Sets the number of 4 KiB pages the host wants the guest to give up, and tells the
    /// driver (config-change interrupt) when it is running.
    pub fn set_target_pages(&mut self, pages: u32) -> Result<(), VirtioError> {
        self.target_pages = pages;
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change()?;
        }
        Ok(())
    }

    /// The host's target, in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    /// How many pages the driver says the balloon holds (its `actual` field).
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// The counters.
    pub fn stats(&self) -> BalloonStats {
        self.stats
    }

    /// The device's counters (inflate and deflate requests, failures), shared with whoever
    /// reports them.
    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.metrics.clone()
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE as usize] {
        let mut c = [0u8; CONFIG_SIZE as usize];
        let (num_pages, actual) = c.split_at_mut(4);
        num_pages.copy_from_slice(&self.target_pages.to_le_bytes());
        actual.copy_from_slice(&self.actual_pages.to_le_bytes());
        c
    }

    fn process(&mut self, index: usize) -> Result<(), VirtioError> {
        let Some(active) = self.active.as_mut() else {
            // A notify before DRIVER_OK or after a reset: nothing to do.
            return Ok(());
        };
        let mem = &active.mem;
        let (queue, inflate) = match index {
            INFLATE_QUEUE => (&mut active.inflate, true),
            DEFLATE_QUEUE => (&mut active.deflate, false),
            _ => return Ok(()),
        };
        let host_page_size = self.host_page_size;
        let stats = &mut self.stats;
        let metrics = &*self.metrics;
        drain_queue(queue, mem, &active.interrupt, |chain| {
            if inflate {
                metrics.inflate_count.inc();
                inflate_chain(mem, chain, host_page_size, stats);
            } else {
                metrics.deflate_count.inc();
                deflate_chain(chain, stats);
            }
            // The balloon never writes into the buffers.
            Ok(0)
        })
        .inspect_err(|_| metrics.event_fails.inc())
    }
}

/// Counts the PFNs of a deflate chain; the pages need no host work (see the module doc).
fn deflate_chain<M: GuestMemoryBackend>(chain: DescriptorChain<&M>, stats: &mut BalloonStats) {
    let mut budget = MAX_PFNS_PER_CHAIN;
    for desc in chain.readable() {
        let take = u64::from(desc.len() / 4).min(budget);
        budget -= take;
        stats.deflated_pages = stats.deflated_pages.saturating_add(take);
    }
}

/// Returns the pages named by an inflate chain to the host.
fn inflate_chain<M: GuestMemoryBackend>(
    mem: &M,
    chain: DescriptorChain<&M>,
    host_page_size: usize,
    stats: &mut BalloonStats,
) {
    let mut pages = PageReleaser {
        mem,
        host_page_size,
        stats,
        region: None,
        run: None,
    };
    let mut budget = MAX_PFNS_PER_CHAIN;
    let mut buf = [0u8; PFN_BATCH * 4];
    'descs: for desc in chain.readable() {
        // A trailing partial PFN (length not a multiple of 4) is ignored.
        let pfns = u64::from(desc.len() / 4);
        let take = pfns.min(budget);
        budget -= take;
        pages.refuse(pfns - take);
        let mut addr = desc.addr();
        let mut left = take;
        while left > 0 {
            // At most PFN_BATCH, so the conversion and the slice below cannot fail.
            let n = usize::try_from(left.min(PFN_BATCH as u64)).unwrap_or(PFN_BATCH);
            let Some(bytes) = buf.get_mut(..n * 4) else {
                break 'descs;
            };
            let got = match mem.read(bytes, addr) {
                Ok(got) => got,
                // The PFN array is outside guest memory: nothing more to trust in this chain.
                Err(_) => break 'descs,
            };
            for pfn in bytes.get(..got).unwrap_or_default().chunks_exact(4) {
                let mut le = [0u8; 4];
                le.copy_from_slice(pfn);
                pages.add(u32::from_le_bytes(le));
            }
            if got < n * 4 {
                break 'descs;
            }
            let Some(next) = addr.checked_add(got as u64) else {
                break 'descs;
            };
            addr = next;
            left -= n as u64;
        }
    }
    pages.flush();
}

/// The guest region last looked up: most PFNs of a request fall in the same one.
#[derive(Clone, Copy)]
struct RegionSpan {
    /// First guest address.
    start: u64,
    /// One past the last guest address.
    end: u64,
    /// Host address of `start`.
    host: usize,
}

/// Host address range of adjacent balloon pages waiting for one madvise.
struct Run {
    start: usize,
    end: usize,
    pages: u64,
}

/// Turns PFNs into madvise calls on runs of host-adjacent pages.
struct PageReleaser<'a, M> {
    mem: &'a M,
    host_page_size: usize,
    stats: &'a mut BalloonStats,
    region: Option<RegionSpan>,
    run: Option<Run>,
}

impl<M: GuestMemoryBackend> PageReleaser<'_, M> {
    fn refuse(&mut self, pages: u64) {
        self.stats.refused_pages = self.stats.refused_pages.saturating_add(pages);
    }

    /// Host address of the balloon page `pfn`, if all of it lies in one guest region.
    fn host_page(&mut self, pfn: u32) -> Option<usize> {
        // A u32 PFN shifted by 12 stays below 2^44: neither line overflows.
        let gpa = u64::from(pfn) << PFN_SHIFT;
        let end = gpa + BALLOON_PAGE_SIZE;
        let span = match self.region {
            Some(span) if span.start <= gpa && end <= span.end => span,
            _ => {
                let region = self.mem.find_region(GuestAddress(gpa))?;
                let start = region.start_addr();
                let host = self.mem.get_host_address(start).ok()? as usize;
                let span = RegionSpan {
                    start: start.raw_value(),
                    end: start.raw_value().checked_add(region.len())?,
                    host,
                };
                self.region = Some(span);
                span
            }
        };
        if end > span.end {
            // The page runs past the end of its region.
            return None;
        }
        let offset = usize::try_from(gpa - span.start).ok()?;
        span.host.checked_add(offset)
    }

    fn add(&mut self, pfn: u32) {
        let Some(page) = self.host_page(pfn) else {
            self.refuse(1);
            return;
        };
        // MADV_DONTNEED changes the page's contents (to zeros, or back to a snapshot's file)
        // behind vm-memory's back: mark it for the next diff snapshot.
        let gpa = GuestAddress(u64::from(pfn) << PFN_SHIFT);
        if let Ok(slice) = self.mem.get_slice(gpa, PAGE_BYTES) {
            slice.bitmap().mark_dirty(0, slice.len());
        }
        let Some(page_end) = page.checked_add(PAGE_BYTES) else {
            self.refuse(1);
            return;
        };
        if let Some(run) = &mut self.run {
            if run.start <= page && page_end <= run.end {
                // Already pending (a repeated PFN): nothing more to return.
                run.pages += 1;
                return;
            }
            // Drivers often hand out pages in ascending or descending order: grow either end.
            if page == run.end {
                run.end = page_end;
                run.pages += 1;
                return;
            }
            if page_end == run.start {
                run.start = page;
                run.pages += 1;
                return;
            }
        }
        self.flush();
        self.run = Some(Run {
            start: page,
            end: page_end,
            pages: 1,
        });
    }

    /// Returns the pending run to the host.
    fn flush(&mut self) {
        let Some(run) = self.run.take() else {
            return;
        };
        // madvise works on whole host pages; with host pages larger than 4 KiB only the host
        // pages wholly inside the run can go back (rounding outwards would free guest memory
        // the driver did not give up).
        let hps = self.host_page_size;
        let start = run
            .start
            .checked_next_multiple_of(hps)
            .unwrap_or(usize::MAX);
        let end = run.end - run.end % hps;
        if start >= end {
            self.stats.inflated_pages = self.stats.inflated_pages.saturating_add(run.pages);
            return;
        }
        let len = end - start;
        self.stats.madvise_calls = self.stats.madvise_calls.saturating_add(1);
        // SAFETY: [start, end) lies inside the host memory of `self.mem`'s regions (their
        // `get_host_address`), which `self.mem` keeps alive for this call: every page of the run
        // was checked to lie within one region, and a run only joins host-adjacent pages. MADV_DONTNEED leaves the mapping
        // in place and only drops its contents (private anonymous memory then reads as zeros).
        // Guest memory is only ever accessed through volatile raw-pointer accesses, never Rust
        // references, and the guest may change it at any time anyway, so no Rust invariant
        // depends on its contents.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            self.stats.inflated_pages = self.stats.inflated_pages.saturating_add(run.pages);
            self.stats.bytes_returned = self.stats.bytes_returned.saturating_add(len as u64);
        } else {
            // E.g. locked or hugetlbfs-backed memory: the pages stay with the guest's mapping.
            self.refuse(run.pages);
        }
    }
}

impl<M: GuestMemoryBackend + Send + 'static> VirtioDevice<M> for Balloon<M> {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        if self.stats_interval_s > 0 {
            &QUEUE_SIZES
        } else {
            &QUEUE_SIZES[..2]
        }
    }

    fn device_features(&self) -> u64 {
        let mut f = features::VERSION_1 | features::RING_EVENT_IDX;
        if self.deflate_on_oom {
            f |= F_DEFLATE_ON_OOM;
        }
        if self.stats_interval_s > 0 {
            f |= F_STATS_VQ;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is driver-writable; bytes landing on `num_pages` or past the end are
        // dropped.
        let mut actual = self.actual_pages.to_le_bytes();
        for (i, &byte) in data.iter().enumerate() {
            if let Some(slot) = u64::try_from(i)
                .ok()
                .and_then(|i| offset.checked_add(i))
                .and_then(|pos| pos.checked_sub(ACTUAL_OFFSET))
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| actual.get_mut(i))
            {
                *slot = byte;
            }
        }
        self.actual_pages = u32::from_le_bytes(actual);
    }

    fn activate(&mut self, active: ActiveQueues<M>) -> Result<(), VirtioError> {
        let (mem, inflate, deflate, stats, interrupt) = if self.stats_interval_s > 0 {
            let (mem, [inflate, deflate, stats], interrupt) = active
                .into_queues()
                .inspect_err(|_| self.metrics.activate_fails.inc())?;
            (mem, inflate, deflate, Some(stats), interrupt)
        } else {
            let (mem, [inflate, deflate], interrupt) = active
                .into_queues()
                .inspect_err(|_| self.metrics.activate_fails.inc())?;
            (mem, inflate, deflate, None, interrupt)
        };
        if stats.is_some() && self.stats_timer.is_none() {
            let timer = TimerFd::new().map_err(|e| VirtioError::Backend(e.into()))?;
            // SAFETY: fcntl on a descriptor this device owns, changing only its file flags.
            let nonblocking = unsafe {
                let flags = libc::fcntl(timer.as_raw_fd(), libc::F_GETFL);
                flags >= 0
                    && libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
            };
            if !nonblocking {
                return Err(VirtioError::Backend(std::io::Error::last_os_error()));
            }
            self.stats_timer = Some(timer);
        }
        self.active = Some(Active {
            mem,
            inflate,
            deflate,
            stats,
            interrupt,
        });
        if self.stats_interval_s > 0 {
            let interval = Duration::from_secs(u64::from(self.stats_interval_s));
            self.arm_stats_timer(interval)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        // A reset driver starts with an empty balloon; the host's target stays.
        self.active = None;
        self.actual_pages = 0;
        self.stats_head = None;
        if let Some(timer) = &mut self.stats_timer {
            let _ = timer.clear();
        }
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        self.stats_timer
            .iter()
            .map(|timer| BackendFd {
                fd: timer.as_raw_fd(),
                events: EventSet::IN,
                token: STATS_TIMER_TOKEN,
            })
            .collect()
    }

    fn process_backend(&mut self, token: u32, _events: EventSet) -> Result<(), VirtioError> {
        if token == STATS_TIMER_TOKEN {
            self.request_stats()?;
        }
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        if index == STATS_QUEUE {
            return self.process_stats();
        }
        self.process(index)
    }

    fn save_state(&self) -> VirtioDeviceState {
        crate::virtio::save_state(self)
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
        crate::virtio::restore_state(self, state)
    }
}

impl<M> Persist for Balloon<M> {
    const KIND: &'static str = "virtio-balloon";
    type State = BalloonState;

    fn save(&self) -> BalloonState {
        BalloonState {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            deflate_on_oom: self.deflate_on_oom,
            stats: self.stats,
            stats_head: self.stats_head,
            guest_stats: self.guest_stats,
        }
    }

    fn restore(&mut self, state: BalloonState) -> Result<(), VirtioError> {
        if state.deflate_on_oom != self.deflate_on_oom {
            return Err(VirtioError::StateMismatch(format!(
                "balloon state has deflate_on_oom {}, this device has {}",
                state.deflate_on_oom, self.deflate_on_oom
            )));
        }
        self.target_pages = state.target_pages;
        self.actual_pages = state.actual_pages;
        self.stats = state.stats;
        self.stats_head = state.stats_head;
        self.guest_stats = state.guest_stats;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::interrupt_bits;
    use crate::virtio::test_utils::{activate, test_memory, wait_readable, TestQueue};
    use vmm_memory::GuestMemoryMmap;

    /// The device on the VMM's memory type (dirty bitmap included).
    type Balloon = super::Balloon<GuestMemoryMmap>;

    const MEM_SIZE: usize = 0x10_0000;
    const INFLATE_BASE: u64 = 0x1_0000;
    const DEFLATE_BASE: u64 = 0x2_0000;
    /// PFN arrays.
    const ARRAYS: u64 = 0x3_0000;
    /// First PFN of the data pages the tests inflate.
    const DATA_PFN: u32 = 0x40;

    struct Harness {
        mem: GuestMemoryMmap,
        inflate: TestQueue,
        deflate: TestQueue,
        balloon: Balloon,
        interrupt: VirtioInterrupt,
    }

    fn harness_on(mem: GuestMemoryMmap, config: BalloonConfig) -> Harness {
        let inflate = TestQueue::new(INFLATE_BASE, QUEUE_SIZE);
        let deflate = TestQueue::new(DEFLATE_BASE, QUEUE_SIZE);
        let mut balloon = Balloon::new(config);
        let acked = features::VERSION_1 | features::RING_EVENT_IDX;
        let (interrupt, _) = activate(&mut balloon, &mem, [&inflate, &deflate], acked).unwrap();
        Harness {
            mem,
            inflate,
            deflate,
            balloon,
            interrupt,
        }
    }

    fn harness() -> Harness {
        harness_on(
            test_memory(MEM_SIZE),
            BalloonConfig {
                target_pages: 100,
                deflate_on_oom: false,
                stats_polling_interval_s: 0,
            },
        )
    }

    fn page_addr(pfn: u32) -> GuestAddress {
        GuestAddress(u64::from(pfn) << 12)
    }

    fn fill_page(mem: &GuestMemoryMmap, pfn: u32, byte: u8) {
        mem.write_slice(&[byte; 4096], page_addr(pfn)).unwrap();
    }

    fn page(mem: &GuestMemoryMmap, pfn: u32) -> Vec<u8> {
        let mut v = vec![0; 4096];
        mem.read_slice(&mut v, page_addr(pfn)).unwrap();
        v
    }

    fn write_pfns(mem: &GuestMemoryMmap, at: u64, pfns: &[u32]) -> u32 {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        bytes.len() as u32
    }

    impl Harness {
        /// Sends `pfns` as one single-descriptor chain on the inflate queue and processes it.
        fn inflate_pfns(&mut self, pfns: &[u32]) {
            let len = write_pfns(&self.mem, ARRAYS, pfns);
            self.inflate.add_chain(&self.mem, &[(ARRAYS, len, false)]);
            self.balloon.process_queue(INFLATE_QUEUE).unwrap();
        }
    }

    #[test]
    fn inflated_page_goes_back_to_the_host_and_reads_as_zeros() {
        let mut h = harness();
        fill_page(&h.mem, DATA_PFN, 0xab);
        fill_page(&h.mem, DATA_PFN + 1, 0xcd);
        h.inflate_pfns(&[DATA_PFN]);
        assert!(page(&h.mem, DATA_PFN).iter().all(|&b| b == 0));
        assert!(page(&h.mem, DATA_PFN + 1).iter().all(|&b| b == 0xcd));
        assert_eq!(h.inflate.used_idx(&h.mem), 1);
        assert_eq!(h.inflate.used_elem(&h.mem, 0), (0, 0));
        assert_eq!(
            h.balloon.stats(),
            BalloonStats {
                inflated_pages: 1,
                bytes_returned: 4096,
                madvise_calls: 1,
                ..Default::default()
            }
        );
        assert_eq!(h.interrupt.status(), interrupt_bits::USED_BUFFER);
    }

    #[test]
    fn adjacent_pfns_share_one_madvise_in_either_order() {
        let mut h = harness();
        let mut pfns: Vec<u32> = (DATA_PFN..DATA_PFN + 8).collect();
        pfns.extend([DATA_PFN + 0x12, DATA_PFN + 0x11, DATA_PFN + 0x10]);
        pfns.push(DATA_PFN + 0x20);
        for &p in &pfns {
            fill_page(&h.mem, p, 0x77);
        }
        h.inflate_pfns(&pfns);
        for &p in &pfns {
            assert!(page(&h.mem, p).iter().all(|&b| b == 0), "pfn {p:#x}");
        }
        let s = h.balloon.stats();
        assert_eq!(s.madvise_calls, 3);
        assert_eq!(s.inflated_pages, 12);
        assert_eq!(s.bytes_returned, 12 * 4096);
        assert_eq!(s.refused_pages, 0);
    }

    #[test]
    fn runs_span_descriptors_and_are_flushed_per_chain() {
        let mut h = harness();
        write_pfns(&h.mem, ARRAYS, &[DATA_PFN, DATA_PFN + 1]);
        write_pfns(&h.mem, ARRAYS + 0x100, &[DATA_PFN + 2]);
        h.inflate
            .add_chain(&h.mem, &[(ARRAYS, 8, false), (ARRAYS + 0x100, 4, false)]);
        h.balloon.process_queue(INFLATE_QUEUE).unwrap();
        assert_eq!(h.balloon.stats().madvise_calls, 1);
        assert_eq!(h.balloon.stats().inflated_pages, 3);
    }

    #[test]
    fn pfns_outside_memory_or_straddling_a_region_end_are_refused() {
        // RAM at 0..1 MiB, and a 6 KiB region at 2 MiB: its second page is only half there.
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MEM_SIZE),
            (GuestAddress(0x20_0000), 0x1800),
        ])
        .unwrap();
        let mut h = harness_on(
            mem,
            BalloonConfig {
                target_pages: 0,
                deflate_on_oom: false,
                stats_polling_interval_s: 0,
            },
        );
        h.mem
            .write_slice(&[0x11; 0x1800], GuestAddress(0x20_0000))
            .unwrap();
        fill_page(&h.mem, DATA_PFN, 0x22);
        h.inflate_pfns(&[0x150, 0x201, u32::MAX, 0x200, 0x100, DATA_PFN]);
        let s = h.balloon.stats();
        assert_eq!(s.refused_pages, 4, "hole, straddle, far beyond, end of RAM");
        assert_eq!(s.inflated_pages, 2);
        assert!(page(&h.mem, 0x200).iter().all(|&b| b == 0));
        let mut half = [0u8; 0x800];
        h.mem
            .read_slice(&mut half, GuestAddress(0x20_1000))
            .unwrap();
        assert!(half.iter().all(|&b| b == 0x11), "straddling page untouched");
        assert!(page(&h.mem, DATA_PFN).iter().all(|&b| b == 0));
        assert_eq!(h.inflate.used_elem(&h.mem, 0).1, 0);
    }

    #[test]
    fn odd_descriptor_lengths_stop_at_the_last_whole_pfn() {
        let mut h = harness();
        for p in DATA_PFN..DATA_PFN + 3 {
            fill_page(&h.mem, p, 0x33);
        }
        write_pfns(&h.mem, ARRAYS, &[DATA_PFN, DATA_PFN + 1, DATA_PFN + 2]);
        // 10 bytes: two PFNs and half of the third.
        h.inflate.add_chain(&h.mem, &[(ARRAYS, 10, false)]);
        // 3 bytes: no PFN at all.
        h.inflate.add_chain(&h.mem, &[(ARRAYS + 8, 3, false)]);
        h.balloon.process_queue(INFLATE_QUEUE).unwrap();
        assert_eq!(h.inflate.used_idx(&h.mem), 2);
        assert!(page(&h.mem, DATA_PFN + 1).iter().all(|&b| b == 0));
        assert!(page(&h.mem, DATA_PFN + 2).iter().all(|&b| b == 0x33));
        assert_eq!(h.balloon.stats().inflated_pages, 2);
    }

    #[test]
    fn writable_descriptors_are_ignored_and_a_bad_array_ends_the_chain() {
        let mut h = harness();
        for p in DATA_PFN..DATA_PFN + 3 {
            fill_page(&h.mem, p, 0x44);
        }
        write_pfns(&h.mem, ARRAYS, &[DATA_PFN]);
        write_pfns(&h.mem, ARRAYS + 0x100, &[DATA_PFN + 1]);
        write_pfns(&h.mem, ARRAYS + 0x200, &[DATA_PFN + 2]);
        h.inflate.add_chain(
            &h.mem,
            &[
                (ARRAYS, 4, false),
                (ARRAYS + 0x100, 4, true),
                (MEM_SIZE as u64 + 0x1000, 4, false),
                (ARRAYS + 0x200, 4, false),
            ],
        );
        h.balloon.process_queue(INFLATE_QUEUE).unwrap();
        assert_eq!(h.inflate.used_idx(&h.mem), 1);
        assert!(page(&h.mem, DATA_PFN).iter().all(|&b| b == 0));
        assert!(page(&h.mem, DATA_PFN + 1).iter().all(|&b| b == 0x44));
        assert!(page(&h.mem, DATA_PFN + 2).iter().all(|&b| b == 0x44));
    }

    #[test]
    fn a_huge_descriptor_is_bounded() {
        let mut h = harness();
        // u32::MAX bytes of "PFNs" starting in RAM: only what lies in memory is read, and at
        // most MAX_PFNS_PER_CHAIN are taken.
        h.inflate.add_chain(&h.mem, &[(ARRAYS, u32::MAX, false)]);
        h.balloon.process_queue(INFLATE_QUEUE).unwrap();
        assert_eq!(h.inflate.used_idx(&h.mem), 1);
        let s = h.balloon.stats();
        assert_eq!(
            s.refused_pages,
            u64::from(u32::MAX / 4) - MAX_PFNS_PER_CHAIN
        );
    }

    #[test]
    fn deflate_is_acknowledged_without_touching_memory() {
        let mut h = harness();
        fill_page(&h.mem, DATA_PFN, 0x55);
        let len = write_pfns(&h.mem, ARRAYS, &[DATA_PFN, DATA_PFN + 1, DATA_PFN + 2]);
        let head = h.deflate.add_chain(&h.mem, &[(ARRAYS, len, false)]);
        h.balloon.process_queue(DEFLATE_QUEUE).unwrap();
        assert_eq!(h.deflate.used_idx(&h.mem), 1);
        assert_eq!(h.deflate.used_elem(&h.mem, 0), (u32::from(head), 0));
        assert!(page(&h.mem, DATA_PFN).iter().all(|&b| b == 0x55));
        assert_eq!(h.balloon.stats().deflated_pages, 3);
        assert_eq!(h.balloon.stats().madvise_calls, 0);
        assert_eq!(h.inflate.used_idx(&h.mem), 0);
        // A queue index the balloon does not have is ignored.
        h.balloon.process_queue(2).unwrap();
    }

    #[test]
    fn config_space_num_pages_read_only_actual_writable() {
        let mut b = Balloon::new(BalloonConfig {
            target_pages: 0x1234_5678,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
        });
        let mut data = [0u8; 8];
        b.read_config(0, &mut data);
        assert_eq!(data, [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);

        b.write_config(0, &7u32.to_le_bytes());
        assert_eq!(b.target_pages(), 0x1234_5678, "num_pages is read-only");
        b.write_config(4, &300u32.to_le_bytes());
        assert_eq!(b.actual_pages(), 300);
        // A write straddling both fields only changes the `actual` bytes.
        b.write_config(2, &[0xff, 0xff, 0x01, 0x02]);
        assert_eq!(b.target_pages(), 0x1234_5678);
        assert_eq!(b.actual_pages(), 0x0201);
        // Single bytes, and writes past the end (or far away) are ignored.
        b.write_config(7, &[0x80]);
        assert_eq!(b.actual_pages(), 0x8000_0201);
        b.write_config(8, &[1, 2, 3, 4]);
        b.write_config(u64::MAX, &[1, 2]);
        assert_eq!(b.actual_pages(), 0x8000_0201);

        let mut word = [0u8; 4];
        b.read_config(4, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0x8000_0201);
        b.read_config(6, &mut word);
        assert_eq!(word, [0x00, 0x80, 0, 0], "bytes past the end read as zero");
        b.read_config(u64::MAX, &mut word);
        assert_eq!(word, [0; 4]);
    }

    #[test]
    fn set_target_pages_raises_a_config_change_once_running() {
        let mut b = Balloon::new(BalloonConfig {
            target_pages: 1,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
        });
        b.set_target_pages(2).unwrap();
        assert_eq!(b.target_pages(), 2);

        let mut h = harness();
        assert_eq!(h.interrupt.status(), 0);
        h.balloon.set_target_pages(4096).unwrap();
        assert_eq!(h.balloon.target_pages(), 4096);
        assert_eq!(h.interrupt.status(), interrupt_bits::CONFIG_CHANGE);
        assert_eq!(h.interrupt.line().event_fd().read().unwrap(), 1);
        let mut data = [0u8; 4];
        h.balloon.read_config(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 4096);
    }

    #[test]
    fn deflate_on_oom_offered_only_when_configured() {
        let base = features::VERSION_1 | features::RING_EVENT_IDX;
        let off = Balloon::new(BalloonConfig {
            target_pages: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
        });
        let on = Balloon::new(BalloonConfig {
            target_pages: 0,
            deflate_on_oom: true,
            stats_polling_interval_s: 0,
        });
        assert_eq!(off.device_features(), base);
        assert_eq!(on.device_features(), base | F_DEFLATE_ON_OOM);
        assert_eq!(on.device_type(), device_type::BALLOON);
        assert_eq!(on.queue_max_sizes(), &[256, 256]);
    }

    #[test]
    fn reset_empties_the_balloon_but_keeps_the_target() {
        let mut h = harness();
        h.balloon.write_config(4, &5u32.to_le_bytes());
        h.balloon.reset();
        assert!(!h.balloon.is_activated());
        assert_eq!(h.balloon.actual_pages(), 0);
        assert_eq!(h.balloon.target_pages(), 100);
        // Notifies after reset do nothing; set_target_pages raises no interrupt.
        h.inflate_pfns(&[DATA_PFN]);
        assert_eq!(h.inflate.used_idx(&h.mem), 0);
        h.balloon.set_target_pages(1).unwrap();
        assert_eq!(h.interrupt.status(), 0);
    }

    #[test]
    fn activation_needs_two_queues() {
        let mem = test_memory(MEM_SIZE);
        let mut b = Balloon::new(BalloonConfig {
            target_pages: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
        });
        let inflate = TestQueue::new(INFLATE_BASE, QUEUE_SIZE);
        let err = activate(&mut b, &mem, [&inflate], features::VERSION_1).unwrap_err();
        assert!(matches!(
            err,
            VirtioError::QueueCount {
                expected: 2,
                got: 1
            }
        ));
    }

    #[test]
    fn state_round_trip() {
        let mut h = harness();
        h.inflate_pfns(&[DATA_PFN, 0x9999_9999]);
        h.balloon.write_config(4, &1u32.to_le_bytes());
        h.balloon.set_target_pages(77).unwrap();
        let state = h.balloon.save_state();
        let json = serde_json::to_string(&state).unwrap();
        let back: VirtioDeviceState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);

        let mut restored = Balloon::new(BalloonConfig {
            target_pages: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
        });
        restored.restore_state(&back).unwrap();
        assert_eq!(restored.target_pages(), 77);
        assert_eq!(restored.actual_pages(), 1);
        assert_eq!(restored.stats(), h.balloon.stats());
        assert_eq!(restored.stats().refused_pages, 1);
        assert_eq!(restored.save_state(), state);

        let mut other = Balloon::new(BalloonConfig {
            target_pages: 0,
            deflate_on_oom: true,
            stats_polling_interval_s: 0,
        });
        let err = other.restore_state(&back).unwrap_err();
        assert!(err.to_string().contains("deflate_on_oom"), "{err}");
        let err = other
            .restore_state(
                &VirtioDeviceState::new("virtio-rng", &crate::virtio::rng::RngState::default())
                    .unwrap(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("virtio-rng"), "{err}");
    }

    #[test]
    fn the_statistics_queue_keeps_the_guests_values_and_asks_again_on_its_timer() {
        const STATS_BASE: u64 = 0x4_0000;
        const STATS_BUF: u64 = 0x5_0000;
        let mem = test_memory(MEM_SIZE);
        let inflate = TestQueue::new(INFLATE_BASE, QUEUE_SIZE);
        let deflate = TestQueue::new(DEFLATE_BASE, QUEUE_SIZE);
        let mut stats_q = TestQueue::new(STATS_BASE, QUEUE_SIZE);
        let mut balloon: Balloon = Balloon::new(BalloonConfig {
            target_pages: 512,
            deflate_on_oom: false,
            stats_polling_interval_s: 3600,
        });
        assert_ne!(balloon.device_features() & F_STATS_VQ, 0);
        assert_eq!(balloon.queue_max_sizes().len(), 3);
        let acked = features::VERSION_1 | F_STATS_VQ;
        activate(&mut balloon, &mem, [&inflate, &deflate, &stats_q], acked).unwrap();

        // The driver's buffer: free memory, total memory, an unknown tag, a torn entry.
        let mut buf = Vec::new();
        for (tag, value) in [(4u16, 1000u64), (5, 64 << 20), (99, 7)] {
            buf.extend_from_slice(&tag.to_le_bytes());
            buf.extend_from_slice(&value.to_le_bytes());
        }
        buf.extend_from_slice(&[6, 0, 1]);
        mem.write_slice(&buf, GuestAddress(STATS_BUF)).unwrap();
        let head = stats_q.add_chain(&mem, &[(STATS_BUF, buf.len() as u32, false)]);
        balloon.process_queue(STATS_QUEUE).unwrap();
        let g = balloon.guest_stats();
        assert_eq!(g.free_memory, Some(1000));
        assert_eq!(g.total_memory, Some(64 << 20));
        assert_eq!(g.available_memory, None, "a torn entry is ignored");
        assert_eq!(stats_q.used_idx(&mem), 0, "the buffer is held");
        assert_eq!(balloon.metrics().stats_updates_count.get(), 1);

        // A new interval asks at once: the timer fires and the buffer goes back.
        let fds = balloon.backend_fds();
        let timer = fds
            .iter()
            .find(|f| f.token == STATS_TIMER_TOKEN)
            .unwrap()
            .fd;
        balloon.set_stats_polling_interval(1800).unwrap();
        wait_readable(timer);
        balloon
            .process_backend(STATS_TIMER_TOKEN, EventSet::IN)
            .unwrap();
        assert_eq!(stats_q.used_idx(&mem), 1);
        assert_eq!(stats_q.used_elem(&mem, 0).0, u32::from(head));
        // Nothing held: another wake-up returns nothing.
        balloon
            .process_backend(STATS_TIMER_TOKEN, EventSet::IN)
            .unwrap();
        assert_eq!(stats_q.used_idx(&mem), 1);
        assert!(
            balloon.set_stats_polling_interval(0).is_err(),
            "cannot switch off"
        );

        // The held buffer and the values survive a snapshot.
        let head2 = stats_q.add_chain(&mem, &[(STATS_BUF, 10, false)]);
        balloon.process_queue(STATS_QUEUE).unwrap();
        let state = balloon.save();
        assert_eq!(state.stats_head, Some(head2));
        let mut restored: Balloon = Balloon::new(BalloonConfig {
            target_pages: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 1800,
        });
        restored.restore(state).unwrap();
        assert_eq!(restored.guest_stats().total_memory, Some(64 << 20));

        // Without an interval there is no statistics queue to switch on later.
        let mut off: Balloon = Balloon::new(BalloonConfig {
            target_pages: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
        });
        assert_eq!(off.device_features() & F_STATS_VQ, 0);
        assert_eq!(off.queue_max_sizes().len(), 2);
        assert!(off.set_stats_polling_interval(5).is_err());
    }
}
