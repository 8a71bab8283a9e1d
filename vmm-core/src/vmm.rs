//! [`Vmm`]: a running VM with typed operations (pause, resume, snapshot, balloon target,
//! Ctrl+Alt+Del, state) and its shutdown. The control API reaches these through
//! `dispatch.rs`; a program embedding this crate calls them directly.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_api::{
    ApiConfig, ApiRequest, ApiResponse, BalloonUpdate, Flavor, InstanceState, PartialDrive,
    PartialNetworkInterface, RateLimiterConfig, SnapshotCreateParams,
};
use vmm_devices::virtio::balloon::Balloon;
use vmm_devices::virtio::net::Net;
use vmm_devices::{Ged, I8042Wrapper, SerialDevice};
use vmm_memory::GuestMemoryMmap;
use vmm_vcpu::Vm;

use crate::builder::BuiltVm;
use crate::error::{Error, Result};
use crate::event_loop::{stdin_fd, EventLoop, SerialInput};
use crate::events::{ShutdownReason, SignalForwarder, VmEvent};
use crate::persist::{self, VmSnapshot};
use crate::terminal::RawTerminal;
use crate::vcpu_threads::VcpuThreads;
use crate::virtio_devices::{self, AttachedDevice};
use vmm_api::SerialMode;

/// How a VM starts running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// The guest runs at once.
    Running,
    /// vCPUs and devices parked until [`Vmm::resume`].
    Paused,
    /// Parked, then resumed at once: a restored VM, whose device queues get one pass on resume.
    PausedThenResumed,
}

/// A running VM: its vCPU threads, the event-loop thread, its devices and memory.
///
/// Dropping it (or [`Vmm::shutdown`]) stops the threads, then releases the devices, the KVM
/// VM and guest memory, in that order.
pub struct Vmm {
    threads: Option<VcpuThreads>,
    event_loop: Option<EventLoop>,
    events: Receiver<VmEvent>,
    /// Termination signals into `events`.
    _signals: SignalForwarder,
    virtio: Vec<AttachedDevice>,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Wrapper>>,
    /// The ACPI power button.
    ged: Arc<Mutex<Ged>>,
    /// The split irqchip's IOAPIC.
    ioapic: Option<Arc<Mutex<vmm_devices::IoApic>>>,
    /// The guest was booted with `acpi=off`: it has no power button.
    acpi_off: bool,
    /// A termination signal that pressed the power button, and when the guest's grace to
    /// power off ends.
    signal_grace: Option<(i32, Instant)>,
    config: ApiConfig,
    /// Dirty pages read for a snapshot that failed, to be part of the next one.
    unsaved_dirty: Option<Vec<Vec<u64>>>,
    /// Writes a metrics line every minute while the VM runs.
    _metrics_flush: Option<crate::metrics::PeriodicFlush>,
    /// The buses' unclaimed accesses, for the metrics.
    unclaimed: Arc<crate::exits::UnclaimedAccesses>,
    /// Declared after everything that points into guest memory or uses the VM fd.
    vm: Vm,
    memory: GuestMemoryMmap,
    _terminal: Option<RawTerminal>,
}

impl Vmm {
    /// Starts `built`: the event loop, then one thread per vCPU, running or parked as `mode`
    /// says. The VM's events go to a channel of its own; see [`Vmm::wait_for_end`].
    pub fn start(built: BuiltVm, mode: StartMode) -> Result<Vmm> {
        let (events_tx, events_rx) = channel();
        Vmm::start_with_events(built, mode, Flavor::Vmm, events_tx, events_rx)
    }

    /// [`Vmm::start`] on a channel made earlier (the API server already holds a sender), with
    /// the API answering as `flavor`.
    pub(crate) fn start_with_events(
        built: BuiltVm,
        mode: StartMode,
        flavor: Flavor,
        events_tx: Sender<VmEvent>,
        events_rx: Receiver<VmEvent>,
    ) -> Result<Vmm> {
        let start_paused = mode != StartMode::Running;
        let signals = SignalForwarder::start(events_tx.clone())
            .map_err(|e| Error::Thread(crate::thread_names::SIGNALS, e))?;
        let BuiltVm {
            memory,
            vm,
            vcpus,
            virtio,
            serial,
            i8042,
            reset,
            power_off,
            ged,
            ioapic,
            acpi_off,
            exits,
            config,
            iface_ids,
            ..
        } = built;
        let interactive = config.serial == SerialMode::Stdio;
        let terminal = interactive.then(RawTerminal::enter);
        // On a terminal (in raw mode, where Ctrl-C reaches the guest) Ctrl-A x quits.
        let on_terminal = terminal.as_ref().is_some_and(RawTerminal::is_active);
        let input = interactive.then(|| {
            let input = SerialInput::new(stdin_fd(), serial.clone());
            if on_terminal {
                input.with_console_escape(events_tx.clone())
            } else {
                input
            }
        });
        if start_paused {
            for device in &virtio {
                device.set_paused(true);
            }
        }
        let subscribers = virtio
            .iter()
            .map(AttachedDevice::subscriber)
            .collect::<Result<Vec<_>>>()?;
        let event_loop = EventLoop::start(input, reset, power_off, subscribers, events_tx.clone())
            .map_err(Error::EventLoop)?;
        let mut vmm = Vmm {
            threads: None,
            event_loop: Some(event_loop),
            events: events_rx,
            _signals: signals,
            virtio,
            serial,
            i8042,
            ged,
            ioapic,
            acpi_off,
            signal_grace: None,
            config: ApiConfig::new(config),
            unsaved_dirty: None,
            // The metrics file can only be configured before boot: without one now, there
            // is never anything to write.
            _metrics_flush: if crate::metrics::is_configured() {
                match crate::metrics::PeriodicFlush::start() {
                    Ok(flush) => Some(flush),
                    Err(e) => {
                        log::warn!("no periodic metrics: {e}");
                        None
                    }
                }
            } else {
                None
            },
            unclaimed: Arc::new(crate::exits::UnclaimedAccesses::new(&exits)),
            vm,
            memory,
            _terminal: terminal,
        };
        vmm.keep_api_view(iface_ids, flavor);
        vmm.threads = Some(VcpuThreads::spawn(vcpus, exits, events_tx, start_paused)?);
        if mode == StartMode::PausedThenResumed {
            vmm.resume()?;
        }
        Ok(vmm)
    }

    fn threads(&mut self) -> &mut VcpuThreads {
        self.threads
            .as_mut()
            .expect("the vCPU threads run from start to shutdown")
    }

    /// Keeps what the API knew before boot and the VM's configuration cannot hold (the
    /// interfaces' `iface_id`s, who the API says this process is), then names the devices'
    /// counters by those ids for the metrics.
    fn keep_api_view(&mut self, iface_ids: Vec<String>, flavor: Flavor) {
        if !iface_ids.is_empty() && iface_ids.len() == self.config.vm.net.len() {
            self.config.iface_ids = iface_ids;
        }
        self.config.flavor = flavor;
        self.register_metrics();
    }

    /// Hands the devices' counters to the metrics, named by drive and interface ids.
    fn register_metrics(&self) {
        use crate::metrics::Registration;
        let (mut disks, mut nets) = (0usize, 0usize);
        let mut sources = Vec::with_capacity(self.virtio.len() + 3);
        for device in &self.virtio {
            let (group, counters) = &device.metrics;
            let id = match *group {
                "block" => {
                    let index = disks;
                    disks += 1;
                    Some(
                        self.config
                            .drive_id(index)
                            .unwrap_or_else(|| device.id.clone()),
                    )
                }
                "net" => {
                    let index = nets;
                    nets += 1;
                    let id = self.config.iface_id(index);
                    Some(if id.is_empty() { device.id.clone() } else { id })
                }
                _ => None,
            };
            sources.push(Registration {
                group,
                id,
                counters: counters.clone(),
            });
        }
        sources.push(Registration {
            group: "uart",
            id: None,
            counters: crate::lock(&self.serial).metrics(),
        });
        sources.push(Registration {
            group: "i8042",
            id: None,
            counters: crate::lock(&self.i8042).metrics(),
        });
        sources.push(Registration {
            group: "vmm",
            id: None,
            counters: self.unclaimed.clone(),
        });
        crate::metrics::register(sources);
    }

    /// Whether the guest runs or is paused.
    pub fn state(&self) -> InstanceState {
        match &self.threads {
            Some(threads) if threads.is_paused() => InstanceState::Paused,
            _ => InstanceState::Running,
        }
    }

    /// The configuration the VM runs with (as the API shows it).
    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    /// Stops every vCPU (each leaves KVM_RUN and parks), then the device queues. Pausing a
    /// paused VM does nothing.
    pub fn pause(&mut self) -> Result<()> {
        let gauge = &crate::metrics::metrics().latencies_us.vmm_pause_vm;
        crate::metrics::timed(gauge, || {
            self.threads().pause()?;
            for device in &self.virtio {
                device.set_paused(true);
            }
            Ok(())
        })
    }

    /// Restarts the device queues, then the vCPUs. Resuming a running VM does nothing.
    pub fn resume(&mut self) -> Result<()> {
        let gauge = &crate::metrics::metrics().latencies_us.vmm_resume_vm;
        crate::metrics::timed(gauge, || {
            for device in &self.virtio {
                device.set_paused(false);
            }
            self.threads().resume();
            Ok(())
        })
    }

    /// Presses Ctrl+Alt+Del on the i8042 keyboard (a guest that listens reboots or powers off).
    pub fn send_ctrl_alt_del(&self) {
        crate::lock(&self.i8042).send_ctrl_alt_del();
    }

    /// Presses the ACPI power button: the GED's event register says so and its interrupt is
    /// raised. A guest whose init handles the button (systemd-logind, acpid) powers off,
    /// which ends the VM ([`ShutdownReason::GuestPowerOff`]). Refused for a guest booted with
    /// `acpi=off`, which has no power button.
    pub fn press_power_button(&self) -> Result<()> {
        if self.acpi_off {
            return Err(Error::NoPowerButton);
        }
        crate::lock(&self.ged)
            .press_power_button()
            .map_err(Error::PowerButton)
    }

    /// Writes a snapshot of the paused VM: the memory file (all of RAM, or for a `Diff` the
    /// pages written since the previous snapshot), then the state file.
    pub fn snapshot(&mut self, params: &SnapshotCreateParams) -> Result<()> {
        let latencies = &crate::metrics::metrics().latencies_us;
        let gauge = match params.snapshot_type {
            vmm_api::SnapshotType::Full => &latencies.vmm_full_create_snapshot,
            vmm_api::SnapshotType::Diff => &latencies.vmm_diff_create_snapshot,
        };
        crate::metrics::timed(gauge, || self.write_snapshot(params))
    }

    fn write_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<()> {
        let tracking = self.config.vm.track_dirty_pages;
        let paused = self.state() == InstanceState::Paused;
        persist::check_snapshot_request(params.snapshot_type, tracking, paused)?;
        let key = persist::snapshot_key(params)?;
        let vcpus = self.threads().save_states()?;
        let vm = self.vm.save_state()?;
        let devices = persist::save_devices(&self.virtio);
        // The disks are sealed with the VM paused and no request in flight (requests complete
        // on the event loop, which holds a device's lock while it serves it).
        let disk_seals = persist::seal_disks(&self.virtio)?;
        let serial = crate::lock(&self.serial).save_state();
        let ged = crate::lock(&self.ged).save_state();
        let ioapic = self.ioapic.as_ref().map(|i| crate::lock(i).state());
        // Every snapshot, full or diff, starts a new epoch of dirty tracking: reading KVM's log
        // clears it, and the VMM's bitmaps are read and cleared with it. Pages of a snapshot
        // that then fails are kept for the next one.
        let dirty = if tracking {
            Some(persist::take_dirty(
                &self.vm,
                &self.memory,
                self.unsaved_dirty.take(),
            )?)
        } else {
            None
        };
        let config = self.config.vm.clone();
        let iface_ids = self.config.iface_ids.clone();
        let written = persist::write_snapshot(
            params,
            &self.memory,
            dirty.as_deref(),
            key.as_ref(),
            |memory| VmSnapshot {
                config,
                vcpus,
                vm,
                devices,
                serial,
                memory,
                iface_ids,
                ged,
                ioapic,
                disk_seals,
            },
        );
        if written.is_err() {
            self.unsaved_dirty = dirty;
        }
        written
    }

    /// Sets the balloon's target (`PATCH /balloon`): the guest inflates or deflates towards it.
    pub fn set_balloon_target(&mut self, update: &BalloonUpdate) -> Result<()> {
        self.config
            .apply(&ApiRequest::PatchBalloon(update.clone()))
            .map_err(Error::Request)?;
        let pages = self
            .config
            .vm
            .balloon
            .as_ref()
            .map_or(0, |b| virtio_devices::balloon_pages(b.target));
        for device in &self.virtio {
            let mut transport = crate::lock(&device.transport);
            if let Some(balloon) = transport
                .device_mut()
                .as_any_mut()
                .downcast_mut::<Balloon<GuestMemoryMmap>>()
            {
                return balloon.set_target_pages(pages).map_err(Error::Balloon);
            }
        }
        Err(Error::NoBalloon)
    }

    /// `GET /balloon/statistics`: the balloon's size and the guest's latest memory
    /// statistics. Refused when no balloon or no statistics interval is configured.
    pub fn balloon_stats(&self) -> Result<vmm_api::BalloonStats> {
        let report = self
            .with_device("balloon", |b: &mut Balloon<GuestMemoryMmap>| {
                (b.stats_polling_interval_s() > 0).then(|| {
                    let (target, actual) = (b.target_pages(), b.actual_pages());
                    let g = b.guest_stats();
                    // 4 KiB balloon pages: 256 to the MiB.
                    vmm_api::BalloonStats {
                        target_pages: target,
                        actual_pages: actual,
                        target_mib: target / 256,
                        actual_mib: actual / 256,
                        swap_in: g.swap_in,
                        swap_out: g.swap_out,
                        major_faults: g.major_faults,
                        minor_faults: g.minor_faults,
                        free_memory: g.free_memory,
                        total_memory: g.total_memory,
                        available_memory: g.available_memory,
                        disk_caches: g.disk_caches,
                        hugetlb_allocations: g.hugetlb_allocations,
                        hugetlb_failures: g.hugetlb_failures,
                        oom_kill: g.oom_kill,
                        alloc_stall: g.alloc_stall,
                        async_scan: g.async_scan,
                        direct_scan: g.direct_scan,
                        async_reclaim: g.async_reclaim,
                        direct_reclaim: g.direct_reclaim,
                    }
                })
            })
            .ok_or(Error::NoBalloon)?;
        report.ok_or(Error::BalloonStatsOff)
    }

    /// `PATCH /balloon/statistics`: a new polling interval, with a statistics request at once.
    pub fn set_balloon_stats_interval(&mut self, secs: u32) -> Result<()> {
        self.with_device("balloon", |b: &mut Balloon<GuestMemoryMmap>| {
            b.set_stats_polling_interval(secs)
        })
        .ok_or(Error::NoBalloon)?
        .map_err(|_| Error::BalloonStatsOff)?;
        if let Some(balloon) = self.config.vm.balloon.as_mut() {
            balloon.stats_polling_interval_s = secs;
        }
        Ok(())
    }

    /// The attached device `id` ("blk0", "net1"), locked, as a `T`.
    fn with_device<T: 'static, R>(&self, id: &str, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let device = self.virtio.iter().find(|d| d.id == id)?;
        let mut transport = crate::lock(&device.transport);
        let typed = transport.device_mut().as_any_mut().downcast_mut::<T>()?;
        Some(f(typed))
    }

    /// Changes a drive of the running VM (`PATCH /drives/{id}`): a new `path_on_host` is
    /// opened (read-only if the drive is), becomes the disk's backend and its size the disk's
    /// capacity, and the guest gets a config-change interrupt to re-read it; a `rate_limiter`
    /// changes the buckets it names (a bucket with size or refill time 0 is removed, one left
    /// out is unchanged). Nothing changes when the new file cannot be opened.
    pub fn update_drive(&mut self, patch: &PartialDrive) -> Result<()> {
        let unknown = || Error::UnknownDevice {
            kind: "drive",
            id: patch.drive_id.clone(),
        };
        let index = self
            .config
            .drive_index(&patch.drive_id)
            .ok_or_else(unknown)?;
        let read_only = self.config.vm.disk[index].read_only;
        let verified = self.config.vm.disk[index].verity.is_some();
        let backend = match &patch.path_on_host {
            Some(path) if verified => {
                return Err(Error::Disk {
                    path: path.into(),
                    source: vmm_disk::DiskError::from(vmm_disk::verity::Error::SwapRefused).into(),
                })
            }
            Some(path) => {
                let path = std::path::PathBuf::from(path);
                // The image of another drive would be written by two devices at once, and a
                // snapshot of this VM could never be restored (a build refuses it). Compared by
                // inode: the running VMM's seccomp filter allows stat, not realpath's readlink.
                if let Some(other) = (0..self.config.vm.disk.len())
                    .filter(|&i| i != index)
                    .find(|&i| same_file(&path, &self.config.vm.disk[i].path))
                {
                    return Err(Error::Request(vmm_api::ApiError::InvalidValue {
                        field: "path_on_host",
                        why: format!(
                            "{} is the image of drive {:?} already: a disk cannot be attached twice",
                            path.display(),
                            self.config.drive_id(other).unwrap_or_default()
                        ),
                    }));
                }
                // Any format, detected from the new file's magic; a LUKS disk's new image opens
                // with the same key.
                let mut disk = self.config.vm.disk[index].clone();
                disk.path = path.clone();
                disk.format = None;
                disk.read_only = read_only;
                let (backend, _) =
                    virtio_devices::open_disk_config(&disk).map_err(|e| Error::Disk {
                        path,
                        source: e.into(),
                    })?;
                Some(backend)
            }
            None => None,
        };
        let (bandwidth, ops) = virtio_devices::bucket_updates(patch.rate_limiter.as_ref());
        self.with_device(
            &format!("blk{index}"),
            |block: &mut virtio_devices::BlockDevice| -> Result<()> {
                block
                    .update_rate_limiter(bandwidth, ops)
                    .map_err(Error::RateLimiter)?;
                if let Some(backend) = backend {
                    block.swap_backend(backend).map_err(Error::DriveSwap)?;
                }
                Ok(())
            },
        )
        .ok_or_else(unknown)??;
        let disk = &mut self.config.vm.disk[index];
        if let Some(path) = &patch.path_on_host {
            disk.path = path.into();
        }
        merge_limiter(&mut disk.rate_limiter, patch.rate_limiter.as_ref());
        Ok(())
    }

    /// Changes a network interface's rate limiters on the running VM
    /// (`PATCH /network-interfaces/{id}`), with the same bucket semantics as
    /// [`Vmm::update_drive`].
    pub fn update_network_interface(&mut self, patch: &PartialNetworkInterface) -> Result<()> {
        let unknown = || Error::UnknownDevice {
            kind: "network interface",
            id: patch.iface_id.clone(),
        };
        let index = self
            .config
            .iface_index(&patch.iface_id)
            .ok_or_else(unknown)?;
        let rx = virtio_devices::bucket_updates(patch.rx_rate_limiter.as_ref());
        let tx = virtio_devices::bucket_updates(patch.tx_rate_limiter.as_ref());
        self.with_device(&format!("net{index}"), |net: &mut Net<GuestMemoryMmap>| {
            net.update_rate_limiters(rx, tx)
        })
        .ok_or_else(unknown)?
        .map_err(Error::RateLimiter)?;
        let net = &mut self.config.vm.net[index];
        merge_limiter(&mut net.rx_rate_limiter, patch.rx_rate_limiter.as_ref());
        merge_limiter(&mut net.tx_rate_limiter, patch.tx_rate_limiter.as_ref());
        Ok(())
    }

    /// Waits for the VM to end: the guest's reset or shutdown, a fatal vCPU exit, a failed
    /// thread, or a termination signal. API requests that arrive meanwhile are answered by
    /// `on_request`.
    pub fn wait_for_end(
        &mut self,
        mut on_request: impl FnMut(&mut Vmm, ApiRequest) -> ApiResponse,
    ) -> Result<ShutdownReason> {
        loop {
            let event = match self.signal_grace {
                // The deadline is an upper bound for a guest that ignores the button.
                Some((signal, deadline)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.events.recv_timeout(left) {
                        Ok(event) => event,
                        Err(RecvTimeoutError::Timeout) => {
                            log::warn!(
                                "the guest did not power off within {} s of signal {signal}",
                                self.config.vm.shutdown_grace_s
                            );
                            return Ok(ShutdownReason::Signal(signal));
                        }
                        Err(RecvTimeoutError::Disconnected) => return Err(Error::EventChannelLost),
                    }
                }
                None => self.events.recv().map_err(|_| Error::EventChannelLost)?,
            };
            if let Some(end) = self.on_event(event, &mut on_request) {
                return end;
            }
        }
    }

    /// On a first termination signal with a shutdown grace configured, presses the power
    /// button of a running ACPI guest and starts the grace; false when the signal ends the VM
    /// now (no grace, a second signal, a paused or `acpi=off` guest).
    fn begin_signal_grace(&mut self, signal: i32) -> bool {
        let grace = self.config.vm.shutdown_grace_s;
        if grace == 0 || self.signal_grace.is_some() || self.state() != InstanceState::Running {
            return false;
        }
        if let Err(e) = self.press_power_button() {
            log::info!("signal {signal}: no power button to press ({e}): ending the VM");
            return false;
        }
        log::warn!(
            "signal {signal}: pressed the power button; the guest has {grace} s to power off"
        );
        let deadline = Instant::now() + Duration::from_secs(grace);
        self.signal_grace = Some((signal, deadline));
        true
    }

    /// [`Vmm::wait_for_end`] without waiting: takes the events already there and says how the
    /// VM ended, `None` while it has not.
    pub fn poll_end(
        &mut self,
        mut on_request: impl FnMut(&mut Vmm, ApiRequest) -> ApiResponse,
    ) -> Option<Result<ShutdownReason>> {
        if let Some((signal, deadline)) = self.signal_grace {
            if Instant::now() >= deadline {
                return Some(Ok(ShutdownReason::Signal(signal)));
            }
        }
        loop {
            let event = match self.events.try_recv() {
                Ok(event) => event,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => return Some(Err(Error::EventChannelLost)),
            };
            if let Some(end) = self.on_event(event, &mut on_request) {
                return Some(end);
            }
        }
    }

    /// Acts on one event: how the VM ended, or `None` when it goes on.
    fn on_event(
        &mut self,
        event: VmEvent,
        on_request: &mut impl FnMut(&mut Vmm, ApiRequest) -> ApiResponse,
    ) -> Option<Result<ShutdownReason>> {
        Some(match event {
            VmEvent::GuestReset => Ok(ShutdownReason::GuestReset),
            VmEvent::GuestPowerOff => Ok(ShutdownReason::GuestPowerOff),
            VmEvent::ConsoleQuit => Ok(ShutdownReason::ConsoleQuit),
            VmEvent::Vcpu(Ok(reason)) => Ok(ShutdownReason::from_vcpu(reason)?),
            VmEvent::Vcpu(Err(e)) => Err(e.into()),
            VmEvent::VcpuPanicked(index) => Err(Error::VcpuPanicked(index)),
            VmEvent::EventLoopFailed(e) => Err(Error::EventLoop(e)),
            VmEvent::Signal(signal) => {
                if self.begin_signal_grace(signal) {
                    return None;
                }
                Ok(ShutdownReason::Signal(signal))
            }
            VmEvent::Api(request, reply) => {
                let _ = reply.send(on_request(self, *request));
                return None;
            }
        })
    }

    /// Stops the vCPU threads and the event loop and releases the VM. Returns where each
    /// vCPU stopped (index, RIP), which tells whether a stuck guest was idle or spinning.
    pub fn shutdown(mut self) -> Vec<(u8, u64)> {
        self.stop_threads()
    }

    fn stop_threads(&mut self) -> Vec<(u8, u64)> {
        let vcpus = self
            .threads
            .take()
            .map(VcpuThreads::stop)
            .unwrap_or_default();
        if let Some(event_loop) = self.event_loop.take() {
            event_loop.stop();
        }
        vcpus
            .iter()
            .filter_map(|vcpu| Some((vcpu.index(), vcpu.fd().get_regs().ok()?.rip)))
            .collect()
    }
}

/// Whether `a` and `b` name the same file: the same path, or the same device and inode.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    a == b
        || matches!(
            (std::fs::metadata(a), std::fs::metadata(b)),
            (Ok(x), Ok(y)) if (x.dev(), x.ino()) == (y.dev(), y.ino())
        )
}

/// Applies a PATCH body's limiter to the configured one: buckets left out stay, buckets with
/// size or refill time 0 go, others replace what was there.
fn merge_limiter(config: &mut Option<RateLimiterConfig>, patch: Option<&RateLimiterConfig>) {
    let Some(patch) = patch else {
        return;
    };
    let mut merged = config.unwrap_or_default();
    for (slot, bucket) in [
        (&mut merged.bandwidth, patch.bandwidth),
        (&mut merged.ops, patch.ops),
    ] {
        if let Some(bucket) = bucket {
            *slot = bucket.is_enabled().then_some(bucket);
        }
    }
    *config = (merged != RateLimiterConfig::default()).then_some(merged);
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop_threads();
        // The devices go next, then (by field order) the VM fd, and guest memory last: KVM's
        // slots point into it until the VM fd closes.
        self.virtio.clear();
    }
}
