//! Firecracker-style metrics: counters kept by the API, the vCPUs and the devices, written as
//! one JSON object per line (newline-delimited JSON) to the file or named pipe given by
//! `--metrics-path` or `PUT /metrics`, at every `FlushMetrics`, every 60 s while the VM runs,
//! and at exit. Counters are deltas since the previous line; gauges are their current value.
//! The keys and units are Firecracker's, so tools that parse its metrics parse these.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use vmm_api::{ApiRequest, SnapshotType, VmState};
use vmm_devices::metrics::{
    BalloonMetrics, BlockMetrics, DeviceMetrics, EntropyMetrics, I8042Metrics, NetMetrics,
    SerialMetrics, VsockMetrics,
};

/// A count of events; a flush writes how many happened since the previous flush.
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicU64,
    flushed: AtomicU64,
}

impl Counter {
    /// Counts one event.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Counts `n` events.
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Everything counted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// What was counted since the last call.
    pub fn take_delta(&self) -> u64 {
        let total = self.total.load(Ordering::Relaxed);
        let before = self.flushed.swap(total, Ordering::Relaxed);
        total.wrapping_sub(before)
    }
}

/// A value written as it is at flush time.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Counter {
    /// A counter at 0.
    pub const fn new() -> Counter {
        Counter {
            total: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }
}

impl Gauge {
    /// A gauge at 0.
    pub const fn new() -> Gauge {
        Gauge(AtomicU64::new(0))
    }
}

/// What a metric writes into a line.
trait Report {
    /// The value for this line (a counter's delta, a gauge's value).
    fn report(&self) -> Value;
}

impl Report for Counter {
    fn report(&self) -> Value {
        self.take_delta().into()
    }
}

impl Report for Gauge {
    fn report(&self) -> Value {
        self.get().into()
    }
}

/// Firecracker's latency aggregate (`min_us`, `max_us`, `sum_us`) of one kind of vCPU exit.
/// This VMM does not time exits (it would cost two clock reads per exit), so they stay 0.
#[derive(Debug, Default)]
pub struct LatencyAggregate {
    /// Shortest, in microseconds.
    pub min_us: Gauge,
    /// Longest, in microseconds.
    pub max_us: Gauge,
    /// Sum, in microseconds (a counter).
    pub sum_us: Counter,
}

impl LatencyAggregate {
    /// All 0.
    pub const fn new() -> LatencyAggregate {
        LatencyAggregate {
            min_us: Gauge::new(),
            max_us: Gauge::new(),
            sum_us: Counter::new(),
        }
    }
}

impl Report for LatencyAggregate {
    fn report(&self) -> Value {
        json!({
            "min_us": self.min_us.get(),
            "max_us": self.max_us.get(),
            "sum_us": self.sum_us.take_delta(),
        })
    }
}

/// Defines a group of metrics: a struct with a `const fn new` and its JSON object.
macro_rules! group {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// Everything at 0.
            pub const fn new() -> $name {
                $name { $($field: $ty::new(),)* }
            }

            /// The group's object for one line (counters as deltas).
            fn report(&self) -> Map<String, Value> {
                let mut group = Map::new();
                $(group.insert(stringify!($field).into(), Report::report(&self.$field));)*
                group
            }
        }
    };
}

group! {
    /// `api_server`: the process's startup times, from the jailer's flags.
    ApiServerMetrics {
        /// Microseconds from the jailer's start to the VMM's (`--start-time-us`).
        process_startup_time_us: Gauge,
        /// CPU microseconds of the same (`--start-time-cpu-us`, `--parent-cpu-time-us`).
        process_startup_time_cpu_us: Gauge,
    }
}

group! {
    /// `get_api_requests`.
    GetRequestsMetrics {
        /// `GET /`.
        instance_info_count: Counter,
        /// `GET /machine-config`.
        machine_cfg_count: Counter,
        /// `GET /mmds` (MMDS is not supported: 0).
        mmds_count: Counter,
        /// `GET /version`.
        vmm_version_count: Counter,
        /// `GET /hotplug/memory` (not supported: 0).
        hotplug_memory_count: Counter,
    }
}

group! {
    /// `put_api_requests`: each request kind and its failures.
    PutRequestsMetrics {
        /// `PUT /actions`.
        actions_count: Counter,
        /// Failed `PUT /actions`.
        actions_fails: Counter,
        /// `PUT /boot-source`.
        boot_source_count: Counter,
        /// Failed `PUT /boot-source`.
        boot_source_fails: Counter,
        /// `PUT /drives/{id}`.
        drive_count: Counter,
        /// Failed `PUT /drives/{id}`.
        drive_fails: Counter,
        /// `PUT /logger`.
        logger_count: Counter,
        /// Failed `PUT /logger`.
        logger_fails: Counter,
        /// `PUT /machine-config`.
        machine_cfg_count: Counter,
        /// Failed `PUT /machine-config`.
        machine_cfg_fails: Counter,
        /// `PUT /cpu-config` (not supported: 0).
        cpu_cfg_count: Counter,
        /// Failed `PUT /cpu-config`.
        cpu_cfg_fails: Counter,
        /// `PUT /metrics`.
        metrics_count: Counter,
        /// Failed `PUT /metrics`.
        metrics_fails: Counter,
        /// `PUT /network-interfaces/{id}`.
        network_count: Counter,
        /// Failed `PUT /network-interfaces/{id}`.
        network_fails: Counter,
        /// `PUT /mmds` (not supported: 0).
        mmds_count: Counter,
        /// Failed `PUT /mmds`.
        mmds_fails: Counter,
        /// `PUT /vsock`.
        vsock_count: Counter,
        /// Failed `PUT /vsock`.
        vsock_fails: Counter,
        /// `PUT /pmem/{id}` (not supported: 0).
        pmem_count: Counter,
        /// Failed `PUT /pmem/{id}`.
        pmem_fails: Counter,
        /// `PUT /serial` (not supported: 0).
        serial_count: Counter,
        /// Failed `PUT /serial`.
        serial_fails: Counter,
        /// `PUT /hotplug/memory` (not supported: 0).
        hotplug_memory_count: Counter,
        /// Failed `PUT /hotplug/memory`.
        hotplug_memory_fails: Counter,
    }
}

group! {
    /// `patch_api_requests`.
    PatchRequestsMetrics {
        /// `PATCH /drives/{id}`.
        drive_count: Counter,
        /// Failed `PATCH /drives/{id}`.
        drive_fails: Counter,
        /// `PATCH /network-interfaces/{id}`.
        network_count: Counter,
        /// Failed `PATCH /network-interfaces/{id}`.
        network_fails: Counter,
        /// `PATCH /machine-config`.
        machine_cfg_count: Counter,
        /// Failed `PATCH /machine-config`.
        machine_cfg_fails: Counter,
        /// `PATCH /mmds` (not supported: 0).
        mmds_count: Counter,
        /// Failed `PATCH /mmds`.
        mmds_fails: Counter,
        /// `PATCH /hotplug/memory` (not supported: 0).
        hotplug_memory_count: Counter,
        /// Failed `PATCH /hotplug/memory`.
        hotplug_memory_fails: Counter,
        /// `PATCH /pmem/{id}` (not supported: 0).
        pmem_count: Counter,
        /// Failed `PATCH /pmem/{id}`.
        pmem_fails: Counter,
    }
}

group! {
    /// `deprecated_api`.
    DeprecatedApiMetrics {
        /// Calls to deprecated API endpoints (none are served: 0).
        deprecated_http_api_calls: Counter,
    }
}

group! {
    /// `logger`.
    LoggerMetrics {
        /// Log lines that could not be written (full pipe, write error).
        missed_log_count: Counter,
        /// Lines that could not be written (full pipe, write error).
        missed_metrics_count: Counter,
        /// Flushes that failed.
        metrics_fails: Counter,
        /// Log lines dropped by rate limiting (none: 0).
        rate_limited_log_count: Counter,
    }
}

group! {
    /// `mmds`: MMDS is not supported, all 0.
    MmdsMetrics {
        /// Frames for MMDS accepted.
        rx_accepted: Counter,
        /// Frames for MMDS that failed.
        rx_accepted_err: Counter,
        /// Unusual frames for MMDS.
        rx_accepted_unusual: Counter,
        /// Frames that were not Ethernet.
        rx_bad_eth: Counter,
        /// Requests with an invalid token.
        rx_invalid_token: Counter,
        /// Requests without a token.
        rx_no_token: Counter,
        /// Frames received.
        rx_count: Counter,
        /// Bytes sent.
        tx_bytes: Counter,
        /// Sends.
        tx_count: Counter,
        /// Send errors.
        tx_errors: Counter,
        /// Frames sent.
        tx_frames: Counter,
        /// Connections opened.
        connections_created: Counter,
        /// Connections closed.
        connections_destroyed: Counter,
    }
}

group! {
    /// `latencies_us`: how long the last of each operation took, in microseconds. The plain
    /// names time the API request, the `vmm_` ones the VMM's part of it.
    PerformanceMetrics {
        /// Last full snapshot, as the API saw it.
        full_create_snapshot: Gauge,
        /// Last diff snapshot, as the API saw it.
        diff_create_snapshot: Gauge,
        /// Last snapshot load, as the API saw it.
        load_snapshot: Gauge,
        /// Last pause, as the API saw it.
        pause_vm: Gauge,
        /// Last resume, as the API saw it.
        resume_vm: Gauge,
        /// Last full snapshot, the VMM's part.
        vmm_full_create_snapshot: Gauge,
        /// Last diff snapshot, the VMM's part.
        vmm_diff_create_snapshot: Gauge,
        /// Last snapshot load, the VMM's part.
        vmm_load_snapshot: Gauge,
        /// Last pause, the VMM's part.
        vmm_pause_vm: Gauge,
        /// Last resume, the VMM's part.
        vmm_resume_vm: Gauge,
    }
}

group! {
    /// `seccomp`: no seccomp filters here, so no faults.
    SeccompMetrics {
        /// Seccomp faults.
        num_faults: Gauge,
    }
}

group! {
    /// `signals`: Firecracker's fatal signals (not handled here: 0) and the termination
    /// signals this VMM handles, counted by the signal handler (atomics only).
    SignalMetrics {
        /// SIGBUS.
        sigbus: Gauge,
        /// SIGSEGV.
        sigsegv: Gauge,
        /// SIGXFSZ.
        sigxfsz: Gauge,
        /// SIGXCPU.
        sigxcpu: Gauge,
        /// SIGPIPE.
        sigpipe: Counter,
        /// SIGHUP received.
        sighup: Counter,
        /// SIGILL.
        sigill: Gauge,
        /// SIGTERM received.
        sigterm: Counter,
        /// SIGINT received.
        sigint: Counter,
    }
}

group! {
    /// `vcpu`: vCPU exits, counted per exit in the vCPU threads.
    VcpuMetrics {
        /// Port reads.
        exit_io_in: Counter,
        /// Port writes.
        exit_io_out: Counter,
        /// MMIO reads.
        exit_mmio_read: Counter,
        /// MMIO writes.
        exit_mmio_write: Counter,
        /// vCPU runs that failed (an error or a panic).
        failures: Counter,
        /// KVM_KVMCLOCK_CTRL failures (not used: 0).
        kvmclock_ctrl_fails: Counter,
        /// Port read latencies (not timed).
        exit_io_in_agg: LatencyAggregate,
        /// Port write latencies (not timed).
        exit_io_out_agg: LatencyAggregate,
        /// MMIO read latencies (not timed).
        exit_mmio_read_agg: LatencyAggregate,
        /// MMIO write latencies (not timed).
        exit_mmio_write_agg: LatencyAggregate,
    }
}

group! {
    /// `vmm` (plus the buses' unclaimed accesses of the running VM, registered).
    VmmGroupMetrics {
        /// Panics (a panic ends the process: 0).
        panic_count: Gauge,
    }
}

group! {
    /// `interrupts`.
    InterruptMetrics {
        /// Interrupts raised (not counted: 0).
        triggers: Counter,
        /// Interrupt routing updates (none: 0).
        config_updates: Counter,
    }
}

/// The metrics this crate keeps itself (device counters live in the devices and are
/// [`register`]ed).
#[derive(Debug, Default)]
pub struct VmmMetrics {
    /// `api_server`.
    pub api_server: ApiServerMetrics,
    /// `get_api_requests`.
    pub get_api_requests: GetRequestsMetrics,
    /// `put_api_requests`.
    pub put_api_requests: PutRequestsMetrics,
    /// `patch_api_requests`.
    pub patch_api_requests: PatchRequestsMetrics,
    /// `deprecated_api`.
    pub deprecated_api: DeprecatedApiMetrics,
    /// `logger`.
    pub logger: LoggerMetrics,
    /// `mmds`.
    pub mmds: MmdsMetrics,
    /// `latencies_us`.
    pub latencies_us: PerformanceMetrics,
    /// `seccomp`.
    pub seccomp: SeccompMetrics,
    /// `signals`.
    pub signals: SignalMetrics,
    /// `vcpu`.
    pub vcpu: VcpuMetrics,
    /// `vmm`.
    pub vmm: VmmGroupMetrics,
    /// `interrupts`.
    pub interrupts: InterruptMetrics,
}

impl VmmMetrics {
    const fn new() -> VmmMetrics {
        VmmMetrics {
            api_server: ApiServerMetrics::new(),
            get_api_requests: GetRequestsMetrics::new(),
            put_api_requests: PutRequestsMetrics::new(),
            patch_api_requests: PatchRequestsMetrics::new(),
            deprecated_api: DeprecatedApiMetrics::new(),
            logger: LoggerMetrics::new(),
            mmds: MmdsMetrics::new(),
            latencies_us: PerformanceMetrics::new(),
            seccomp: SeccompMetrics::new(),
            signals: SignalMetrics::new(),
            vcpu: VcpuMetrics::new(),
            vmm: VmmGroupMetrics::new(),
            interrupts: InterruptMetrics::new(),
        }
    }
}

/// Where the lines go.
static SINK: Mutex<Option<File>> = Mutex::new(None);
/// A plain static (no lazy initialisation), so that a signal handler may count into it.
static METRICS: VmmMetrics = VmmMetrics::new();

/// The process's metrics.
pub fn metrics() -> &'static VmmMetrics {
    &METRICS
}

/// Opens `path` (a file, created if missing, or a named pipe; never blocking) as the metrics
/// sink. Firecracker allows this once; so does this.
pub fn configure(path: &Path) -> io::Result<()> {
    let mut sink = crate::lock(&SINK);
    if sink.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the metrics file is already configured",
        ));
    }
    *sink = Some(crate::output_file::open_nonblocking(path)?);
    Ok(())
}

/// Whether a metrics file is configured. `PUT /metrics` is accepted before boot only (as in
/// Firecracker), and the front ends' `--metrics-path` and config file are read before boot too,
/// so what this says at boot holds for the VM's whole run.
pub(crate) fn is_configured() -> bool {
    crate::lock(&SINK).is_some()
}

/// Records the process start times the jailer passes (`--start-time-us`,
/// `--start-time-cpu-us`, `--parent-cpu-time-us`) as Firecracker's startup-time gauges.
pub fn set_process_start(
    start_us: Option<u64>,
    start_cpu_us: Option<u64>,
    parent_cpu_us: Option<u64>,
) {
    let m = metrics();
    if let Some(start) = start_us {
        m.api_server
            .process_startup_time_us
            .set(wall_clock_us().saturating_sub(start));
    }
    if let Some(start_cpu) = start_cpu_us {
        let parent = parent_cpu_us.unwrap_or(0);
        m.api_server
            .process_startup_time_cpu_us
            .set(process_cpu_us().saturating_sub(start_cpu) + parent);
    }
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

use vmm_devices::boot_timer::process_cpu_us;

/// The device groups of a line: each key, and its counters' names (listed from an unused set).
type NamesOf = fn() -> Vec<(&'static str, u64)>;
const DEVICE_GROUPS: [(&str, NamesOf); 7] = [
    ("block", || BlockMetrics::default().totals()),
    ("net", || NetMetrics::default().totals()),
    ("vsock", || VsockMetrics::default().totals()),
    ("entropy", || EntropyMetrics::default().totals()),
    ("balloon", || BalloonMetrics::default().totals()),
    ("uart", || SerialMetrics::default().totals()),
    ("i8042", || I8042Metrics::default().totals()),
];

/// Device groups that also get one `<group>_<id>` object per device, as in Firecracker.
const PER_DEVICE_GROUPS: [&str; 2] = ["block", "net"];

/// Counters registered by the running VM.
struct Source {
    group: &'static str,
    id: Option<String>,
    counters: Arc<dyn DeviceMetrics>,
    /// The totals at the previous line.
    flushed: Vec<u64>,
}

static SOURCES: Mutex<Vec<Source>> = Mutex::new(Vec::new());

/// Counters for the lines to report: a device's, under its group (`"block"`, `"net"`,
/// `"vsock"`, `"entropy"`, `"balloon"`, `"uart"`, `"i8042"`) and id, or extra `"vmm"` keys.
pub struct Registration {
    /// The group.
    pub group: &'static str,
    /// The drive or interface id, for the `block_<id>` and `net_<id>` objects.
    pub id: Option<String>,
    /// The counters.
    pub counters: Arc<dyn DeviceMetrics>,
}

/// Makes `sources` the counters the lines report, replacing those registered before. Counters
/// registered again (the same `Arc`) keep what the previous line reported of them.
pub fn register(sources: Vec<Registration>) {
    let mut registered = crate::lock(&SOURCES);
    let old = std::mem::take(&mut *registered);
    for source in sources {
        let flushed = old
            .iter()
            .find(|o| std::ptr::addr_eq(Arc::as_ptr(&o.counters), Arc::as_ptr(&source.counters)))
            .map_or_else(Vec::new, |o| o.flushed.clone());
        registered.push(Source {
            group: source.group,
            id: source.id,
            counters: source.counters,
            flushed,
        });
    }
}

/// Each counter's growth since the previous call, by name.
fn take_deltas(source: &mut Source) -> Vec<(&'static str, u64)> {
    let totals = source.counters.totals();
    source.flushed.resize(totals.len(), 0);
    totals
        .into_iter()
        .zip(source.flushed.iter_mut())
        .map(|((name, total), flushed)| {
            (name, total.wrapping_sub(std::mem::replace(flushed, total)))
        })
        .collect()
}

fn object(pairs: &[(&'static str, u64)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|&(name, value)| (name.to_string(), value.into()))
            .collect(),
    )
}

/// One metrics line: every group, counters as deltas since the previous line.
pub fn snapshot() -> Value {
    let m = metrics();
    let mut line = Map::new();
    line.insert("utc_timestamp_ms".into(), json!(wall_clock_us() / 1_000));
    let groups = [
        ("api_server", m.api_server.report()),
        ("get_api_requests", m.get_api_requests.report()),
        ("put_api_requests", m.put_api_requests.report()),
        ("patch_api_requests", m.patch_api_requests.report()),
        ("deprecated_api", m.deprecated_api.report()),
        ("mmds", m.mmds.report()),
        ("latencies_us", m.latencies_us.report()),
        ("seccomp", m.seccomp.report()),
        ("signals", m.signals.report()),
        ("vcpu", m.vcpu.report()),
        ("vmm", m.vmm.report()),
        ("interrupts", m.interrupts.report()),
    ];
    for (key, group) in groups {
        line.insert(key.into(), Value::Object(group));
    }
    line.insert("logger".into(), Value::Object(m.logger.report()));

    let mut sources = crate::lock(&SOURCES);
    for (group, names) in DEVICE_GROUPS {
        let mut sum = names();
        for source in sources.iter_mut().filter(|s| s.group == group) {
            let deltas = take_deltas(source);
            for ((_, total), (_, delta)) in sum.iter_mut().zip(&deltas) {
                *total = total.wrapping_add(*delta);
            }
            if let (Some(id), true) = (&source.id, PER_DEVICE_GROUPS.contains(&group)) {
                line.insert(format!("{group}_{id}"), object(&deltas));
            }
        }
        line.insert(group.into(), object(&sum));
    }
    if let Some(Value::Object(vmm)) = line.get_mut("vmm") {
        for source in sources.iter_mut().filter(|s| s.group == "vmm") {
            for (name, delta) in take_deltas(source) {
                vmm.insert(name.into(), delta.into());
            }
        }
    }
    Value::Object(line)
}

/// Counts an API request by its kind and the status of its answer (a failure is any status
/// from 400 up), and records how long pauses, resumes and snapshots took as the API saw them.
pub fn record_api_request(request: &ApiRequest, status: u16, took: Duration) {
    let m = metrics();
    let failed = status >= 400;
    let (get, put, patch) = (
        &m.get_api_requests,
        &m.put_api_requests,
        &m.patch_api_requests,
    );
    let counted = |count: &Counter, fails: &Counter| {
        count.inc();
        if failed {
            fails.inc();
        }
    };
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let latency = &m.latencies_us;
    match request {
        ApiRequest::GetInstanceInfo => get.instance_info_count.inc(),
        ApiRequest::GetVersion => get.vmm_version_count.inc(),
        ApiRequest::GetMachineConfig => get.machine_cfg_count.inc(),
        ApiRequest::PutBootSource(_) => counted(&put.boot_source_count, &put.boot_source_fails),
        ApiRequest::PutMachineConfig(_) => counted(&put.machine_cfg_count, &put.machine_cfg_fails),
        ApiRequest::PatchMachineConfig(_) => {
            counted(&patch.machine_cfg_count, &patch.machine_cfg_fails)
        }
        ApiRequest::PutDrive(_) => counted(&put.drive_count, &put.drive_fails),
        ApiRequest::PatchDrive(_) => counted(&patch.drive_count, &patch.drive_fails),
        ApiRequest::PutNetworkInterface(_) => counted(&put.network_count, &put.network_fails),
        ApiRequest::PatchNetworkInterface(_) => counted(&patch.network_count, &patch.network_fails),
        ApiRequest::PutVsock(_) => counted(&put.vsock_count, &put.vsock_fails),
        ApiRequest::PutLogger(_) => counted(&put.logger_count, &put.logger_fails),
        ApiRequest::PutMetrics(_) => counted(&put.metrics_count, &put.metrics_fails),
        ApiRequest::Action(_) => counted(&put.actions_count, &put.actions_fails),
        ApiRequest::PatchVm(VmState::Paused) if !failed => latency.pause_vm.set(us),
        ApiRequest::PatchVm(VmState::Resumed) if !failed => latency.resume_vm.set(us),
        ApiRequest::CreateSnapshot(params) if !failed => match params.snapshot_type {
            SnapshotType::Full => latency.full_create_snapshot.set(us),
            SnapshotType::Diff => latency.diff_create_snapshot.set(us),
        },
        ApiRequest::LoadSnapshot(_) if !failed => latency.load_snapshot.set(us),
        _ => {}
    }
}

/// Runs `operation` and, when it succeeds, sets `gauge` to how long it took in microseconds:
/// the VMM's part of a pause, resume or snapshot (`latencies_us.vmm_*`).
pub(crate) fn timed<T, E>(
    gauge: &Gauge,
    operation: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let started = Instant::now();
    let result = operation();
    if result.is_ok() {
        gauge.set(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    result
}

/// Writes one line to the metrics sink. `Ok(false)` when none is configured.
pub fn flush() -> io::Result<bool> {
    let mut sink = crate::lock(&SINK);
    let Some(file) = sink.as_mut() else {
        return Ok(false);
    };
    let mut line = serde_json::to_vec(&snapshot()).map_err(io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line).inspect_err(|_| {
        metrics().logger.missed_metrics_count.inc();
        metrics().logger.metrics_fails.inc();
    })?;
    Ok(true)
}

/// How often a running VM writes a line.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// A thread that writes a metrics line every [`FLUSH_INTERVAL`] (when a metrics file is
/// configured): it sleeps on a timerfd and its stop eventfd, never polling. Dropping it stops
/// the thread. Started at boot only when a metrics file is configured ([`is_configured`]):
/// without one it would only wake to write nothing, and its stack and task cost memory.
pub(crate) struct PeriodicFlush {
    _thread: crate::stoppable::StoppableThread,
}

impl PeriodicFlush {
    /// Starts the thread.
    pub(crate) fn start() -> io::Result<PeriodicFlush> {
        use std::os::fd::AsRawFd;
        let mut timer = vmm_sys_util::timerfd::TimerFd::new()?;
        timer.reset(FLUSH_INTERVAL, Some(FLUSH_INTERVAL))?;
        let thread =
            crate::stoppable::StoppableThread::spawn(crate::thread_names::METRICS, move |stop| {
                loop {
                    let ready = crate::stoppable::wait_readable(
                        &[timer.as_raw_fd(), stop.as_raw_fd()],
                        None,
                    );
                    if ready.get(1).copied().unwrap_or(true) {
                        return;
                    }
                    if ready.first().copied().unwrap_or(false) {
                        // Expirations missed while a flush was slow count once.
                        let _ = timer.wait();
                        if let Err(e) = flush() {
                            log::warn!("cannot write the metrics: {e}");
                        }
                    }
                }
            })?;
        Ok(PeriodicFlush { _thread: thread })
    }
}

/// Writes the last line as the VMM ends (a no-op without a metrics file).
pub(crate) fn flush_at_exit() {
    if let Err(e) = flush() {
        log::warn!("cannot write the metrics at exit: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP_LEVEL: [&str; 22] = [
        "utc_timestamp_ms",
        "api_server",
        "block",
        "net",
        "vcpu",
        "vmm",
        "uart",
        "i8042",
        "vsock",
        "entropy",
        "balloon",
        "latencies_us",
        "get_api_requests",
        "put_api_requests",
        "patch_api_requests",
        "logger",
        "signals",
        "seccomp",
        "deprecated_api",
        "interrupts",
        "mmds",
        "block_root",
    ];

    // One test: the metrics are the process's, and tests run in parallel.
    #[test]
    fn lines_have_every_group_and_counters_reset_after_each() {
        let root = Arc::new(BlockMetrics::default());
        let data = Arc::new(BlockMetrics::default());
        let tap = Arc::new(NetMetrics::default());
        let uart = Arc::new(SerialMetrics::default());
        register(vec![
            Registration {
                group: "block",
                id: Some("root".into()),
                counters: root.clone(),
            },
            Registration {
                group: "block",
                id: Some("data".into()),
                counters: data.clone(),
            },
            Registration {
                group: "net",
                id: Some("eth0".into()),
                counters: tap.clone(),
            },
            Registration {
                group: "uart",
                id: None,
                counters: uart.clone(),
            },
        ]);
        root.read_bytes.add(4096);
        data.read_bytes.add(512);
        data.write_count.inc();
        tap.tx_packets_count.add(3);
        uart.write_count.add(5);
        metrics().vcpu.exit_io_out.add(7);
        metrics().latencies_us.pause_vm.set(42);
        let request = ApiRequest::PutMetrics(vmm_api::Metrics {
            metrics_path: "/m".into(),
        });
        record_api_request(&request, 400, Duration::ZERO);
        record_api_request(&ApiRequest::GetInstanceInfo, 200, Duration::ZERO);

        let line = snapshot();
        for key in TOP_LEVEL {
            assert!(line.get(key).is_some(), "{key} missing from {line}");
        }
        assert_eq!(line["block_root"]["read_bytes"], 4096);
        assert_eq!(line["block_data"]["read_bytes"], 512);
        assert_eq!(
            line["block"]["read_bytes"], 4608,
            "the aggregate sums the drives"
        );
        assert_eq!(line["block"]["write_count"], 1);
        assert_eq!(line["net_eth0"]["tx_packets_count"], 3);
        assert_eq!(line["net"]["tx_packets_count"], 3);
        assert_eq!(line["uart"]["write_count"], 5);
        assert!(line.get("uart_").is_none() && line.get("vsock_").is_none());
        assert_eq!(line["vcpu"]["exit_io_out"], 7);
        assert_eq!(line["vcpu"]["exit_io_in_agg"]["min_us"], 0);
        assert_eq!(line["put_api_requests"]["metrics_count"], 1);
        assert_eq!(line["put_api_requests"]["metrics_fails"], 1);
        assert_eq!(line["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(line["seccomp"]["num_faults"], 0);
        assert_eq!(line["signals"]["sigterm"], 0);
        assert_eq!(line["latencies_us"]["pause_vm"], 42);
        assert_eq!(line["entropy"]["entropy_bytes"], 0);
        assert_eq!(line["balloon"]["inflate_count"], 0);
        assert_eq!(line["i8042"]["reset_count"], 0);

        // Counters are deltas; gauges keep their value.
        root.read_bytes.add(512);
        let line = snapshot();
        assert_eq!(line["block_root"]["read_bytes"], 512);
        assert_eq!(line["block_data"]["read_bytes"], 0);
        assert_eq!(line["block"]["read_bytes"], 512);
        assert_eq!(line["uart"]["write_count"], 0);
        assert_eq!(line["vcpu"]["exit_io_out"], 0);
        assert_eq!(line["put_api_requests"]["metrics_count"], 0);
        assert_eq!(line["latencies_us"]["pause_vm"], 42);

        // Registering the same counters again keeps the deltas; new ones start from theirs.
        root.read_bytes.add(1);
        register(vec![Registration {
            group: "block",
            id: Some("root".into()),
            counters: root.clone(),
        }]);
        let line = snapshot();
        assert_eq!(line["block_root"]["read_bytes"], 1);
        assert!(line.get("block_data").is_none());
        register(Vec::new());
    }
}
