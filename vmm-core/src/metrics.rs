//! Firecracker-style metrics: counters kept by the API, the vCPUs and the devices, written as
//! one JSON object per line (newline-delimited JSON) to the file or named pipe given by
//! `--metrics-path` or `PUT /metrics`, at every `FlushMetrics`, every 60 s while the VM runs,
//! and at exit. Counters are deltas since the previous line; gauges are their current value.
//! The keys and units are Firecracker's, so tools that parse its metrics parse these.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

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

/// A request counter and its failure counter, Firecracker's `<name>_count`/`<name>_fails`.
#[derive(Debug, Default)]
pub struct RequestCounter {
    /// Requests.
    pub count: Counter,
    /// Requests that failed.
    pub fails: Counter,
}

impl RequestCounter {
    /// Counts one request and, if `failed`, one failure.
    pub fn record(&self, failed: bool) {
        self.count.inc();
        if failed {
            self.fails.inc();
        }
    }
}

/// The metrics this crate keeps itself (device counters live in the devices).
#[derive(Debug, Default)]
pub struct VmmMetrics {
    /// `api_server.process_startup_time_us`.
    pub process_startup_time_us: Gauge,
    /// `api_server.process_startup_time_cpu_us`.
    pub process_startup_time_cpu_us: Gauge,
    /// `signals.sighup` and friends: how many termination signals arrived.
    pub signals_sighup: Counter,
    /// `signals.sigterm`.
    pub signals_sigterm: Counter,
    /// `signals.sigint`.
    pub signals_sigint: Counter,
    /// Lines that could not be written (full pipe, write error).
    pub missed_metrics_count: Counter,
    /// Flushes that failed.
    pub metrics_fails: Counter,
}

/// Where the lines go.
static SINK: Mutex<Option<File>> = Mutex::new(None);
static METRICS: OnceLock<VmmMetrics> = OnceLock::new();

/// The process's metrics.
pub fn metrics() -> &'static VmmMetrics {
    METRICS.get_or_init(VmmMetrics::default)
}

/// Whether a metrics file is configured.
pub fn is_configured() -> bool {
    crate::lock(&SINK).is_some()
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
    *sink = Some(crate::logger::open_nonblocking(path)?);
    Ok(())
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
        m.process_startup_time_us
            .set(wall_clock_us().saturating_sub(start));
    }
    if let Some(start_cpu) = start_cpu_us {
        let parent = parent_cpu_us.unwrap_or(0);
        m.process_startup_time_cpu_us
            .set(process_cpu_us().saturating_sub(start_cpu) + parent);
    }
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn process_cpu_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// One metrics line: every group, counters as deltas since the previous line.
pub fn snapshot() -> Value {
    let m = metrics();
    let mut line = Map::new();
    line.insert("utc_timestamp_ms".into(), json!(wall_clock_us() / 1_000));
    line.insert(
        "api_server".into(),
        json!({
            "process_startup_time_us": m.process_startup_time_us.get(),
            "process_startup_time_cpu_us": m.process_startup_time_cpu_us.get(),
        }),
    );
    line.insert(
        "signals".into(),
        json!({
            "sighup": m.signals_sighup.take_delta(),
            "sigterm": m.signals_sigterm.take_delta(),
            "sigint": m.signals_sigint.take_delta(),
        }),
    );
    let logger = crate::logger::counters();
    line.insert(
        "logger".into(),
        json!({
            "missed_metrics_count": m.missed_metrics_count.take_delta(),
            "metrics_fails": m.metrics_fails.take_delta(),
            "missed_log_count": take(&logger.missed_log_count, &LOG_MISSED_FLUSHED),
        }),
    );
    Value::Object(line)
}

static LOG_MISSED_FLUSHED: AtomicU64 = AtomicU64::new(0);

fn take(total: &AtomicU64, flushed: &AtomicU64) -> u64 {
    let total = total.load(Ordering::Relaxed);
    total.wrapping_sub(flushed.swap(total, Ordering::Relaxed))
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
        metrics().missed_metrics_count.inc();
        metrics().metrics_fails.inc();
    })?;
    Ok(true)
}
