//! The real fleet runner: one `vmm` process per job, driven through its control API socket.
//!
//! A loop with a clock from the start of the run calls the policy at each decision point (a
//! job's arrival, a VM's exit, a quantum's expiry) and carries out what it decided: start a
//! job (`vmm run --config FILE --api-sock SOCK`), pause a running one (`PATCH /vm Paused`),
//! resume a paused one, and, when memory is short for the jobs selected to run, hibernate
//! paused ones: `PUT /snapshot/create` (Full) into the work directory, SIGTERM, and later
//! `vmm restore --snapshot S --mem M --api-sock SOCK2`. A job ends when its VMM process exits:
//! exit code 0 (the guest powered off) is Done, anything else Failed; the others go on.
//!
//! The loop never waits on a VMM. Each job has a worker thread that owns its `vmm` process and
//! carries out the job's operations (launch and wait for the API socket, pause, resume,
//! snapshot and end) in the order they were decided, reporting each effect, and the process's
//! exit, through one channel. The loop waits on that channel until the next timed decision
//! point (an arrival, a quantum's or run limit's end, a KSM sample). A job's state is what was
//! decided (a job whose start is in flight counts as running: it takes its room and is not
//! started twice; a pause decided meanwhile waits for the start); its run time, intervals and
//! log lines follow the effects. A launch decided while a hibernation is in flight waits for
//! it (it needs the memory that frees).
//!
//! A job the runner stops while its guest runs (over `max_run_ms`, or the run was stopped
//! through a [`FleetStop`]) is not killed outright: its worker asks the guest to shut down
//! (the ACPI power button, Ctrl+Alt+Del without ACPI) and gives it
//! [`RunOptions::stop_grace_ms`] before SIGKILL, and reports how it ended.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::report::{Interval, JobOutcome, Schedule};
use super::{Capacity, FleetError, Job, JobState, JobView, Policy};

/// Errors that stop a real run as a whole (a single job's failure does not: it is reported as
/// that job's [`Outcome::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A jobs-file, policy or option error.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The work directory cannot be created.
    #[error("cannot create the work directory {path}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host's KSM cannot be switched on.
    #[error("cannot switch KSM on through {KSM_RUN} (needs root and a kernel with CONFIG_KSM)")]
    Ksm(#[source] std::io::Error),
    /// Jobs whose ids are not their indices (validate the jobs file first).
    #[error("job {name:?} has id {id} at index {index}: ids must be the jobs' indices")]
    JobIds {
        /// The job.
        name: String,
        /// Its id.
        id: usize,
        /// Its index.
        index: usize,
    },
}
use vmm_api::{ApiClient, SerialMode};

/// How often the loop samples KSM's counter with `ksm` (it waits on its workers otherwise).
const POLL_KSM_MS: u64 = 50;
/// The kinds of [`Transition`].
pub const TRANSITION_KINDS: [&str; 5] = ["start", "pause", "resume", "hibernate", "restore"];
/// How long a new or restored VMM may take to answer on its API socket.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Each API request's limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a VMM has to exit after SIGTERM before it gets SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// The host's KSM switch and its counter of guest pages mapped to a shared page.
const KSM_RUN: &str = "/sys/kernel/mm/ksm/run";
const KSM_PAGES_SHARING: &str = "/sys/kernel/mm/ksm/pages_sharing";

/// What [`run_fleet`] needs besides the jobs and the policy.
pub struct RunOptions {
    /// The `vmm` binary to start per job (the CLI passes its own executable).
    pub vmm_binary: PathBuf,
    /// Where config files, serial logs, VMM stderr, API sockets and snapshots go (created).
    pub work_dir: PathBuf,
    /// Turn the host's KSM on for the run (restored after) and mark guest memory mergeable.
    pub ksm: bool,
    /// A job that has run (wall time, excluding pauses and hibernation) longer than this is
    /// stopped (see `stop_grace_ms`) and reported Failed; `None`: no limit.
    pub max_run_ms: Option<u64>,
    /// When the runner stops a job whose guest runs (over `max_run_ms`, or the run was told to
    /// stop), it first asks the guest to shut down (its ACPI power button; Ctrl+Alt+Del for
    /// an `acpi=off` guest) and gives it this long to power off before its VMM is killed.
    /// 0: killed at once.
    pub stop_grace_ms: u64,
    /// Lets another thread stop the run (a signal, a test); `None`: it runs to the end.
    pub stop: Option<FleetStop>,
    /// Receives one line per event (start, pause, resume, hibernate, restore, exit).
    pub log: Box<dyn FnMut(&str) + Send>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("vmm_binary", &self.vmm_binary)
            .field("work_dir", &self.work_dir)
            .field("ksm", &self.ksm)
            .field("max_run_ms", &self.max_run_ms)
            .field("stop_grace_ms", &self.stop_grace_ms)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

/// Stops a [`run_fleet`] in progress from another thread (a signal's, a test's). The first
/// [`FleetStop::stop`] fails every job that has not ended, with its reason: jobs not started
/// stay so, and each running guest is asked to shut down and gets
/// [`RunOptions::stop_grace_ms`] to do it; a second one kills the VMMs still running at once.
#[derive(Clone, Debug, Default)]
pub struct FleetStop {
    inner: Arc<StopInner>,
}

#[derive(Debug, Default)]
struct StopInner {
    state: Mutex<StopState>,
    /// Set by a second request: no more grace.
    hurry: AtomicBool,
}

#[derive(Debug, Default)]
struct StopState {
    /// The first request's reason.
    why: Option<String>,
    /// Wakes the runner's loop, once it runs.
    wake: Option<Sender<Message>>,
}

impl FleetStop {
    /// A handle that has not stopped anything yet.
    pub fn new() -> FleetStop {
        FleetStop::default()
    }

    /// Stops the run (the first call) or ends its grace at once (a later one). `why` goes
    /// into each stopped job's failure.
    pub fn stop(&self, why: &str) {
        let mut state = self.lock();
        if state.why.is_some() {
            self.inner.hurry.store(true, Ordering::SeqCst);
            return;
        }
        state.why = Some(why.to_string());
        if let Some(wake) = &state.wake {
            let _ = wake.send(Message::Stop);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StopState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets [`FleetStop::stop`] wake the loop that reads `wake`; a stop requested before is
    /// sent at once.
    fn attach(&self, wake: Sender<Message>) {
        let mut state = self.lock();
        if state.why.is_some() {
            let _ = wake.send(Message::Stop);
        }
        state.wake = Some(wake);
    }

    fn reason(&self) -> Option<String> {
        self.lock().why.clone()
    }

    fn hurried(&self) -> bool {
        self.inner.hurry.load(Ordering::SeqCst)
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its guest powered off (VMM exit code 0).
    Done,
    /// Its VMM failed, or it could not be started, paused, snapshotted or restored.
    Failed(String),
}

/// One job's record in a real run. Times are milliseconds from the start of the run.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    /// The job's id (its index in the jobs file).
    pub id: usize,
    /// Its name.
    pub name: String,
    /// When it arrived.
    pub arrival_ms: u64,
    /// When its VMM was first started.
    pub start_ms: Option<u64>,
    /// When its VMM exited for good.
    pub finish_ms: Option<u64>,
    /// Time between arrival and finish not spent running.
    pub waiting_ms: u64,
    /// Finish minus arrival.
    pub turnaround_ms: u64,
    /// Time spent running.
    pub run_ms: u64,
    /// How many times it was stopped before it ended (paused; a paused job later hibernated
    /// counts once).
    pub preemptions: u64,
    /// How many of those stops were later saved to disk to free memory (snapshot, process
    /// ended, restored later).
    pub hibernations: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The intervals (start, end) it ran, in order.
    pub intervals: Vec<(u64, u64)>,
    /// Its serial console log.
    pub serial_log: PathBuf,
}

/// A decision carried out: which job, what, and how long from the decision to the effect.
#[derive(Clone, Debug, Serialize)]
pub struct Transition {
    /// When the policy decided (ms from the start).
    pub decided_ms: u64,
    /// The job.
    pub job: usize,
    /// `start`, `pause`, `resume`, `hibernate` or `restore`.
    pub kind: &'static str,
    /// Microseconds from the decision to the VM actually started, paused, resumed, saved
    /// (process ended) or restored (answering on its socket).
    pub latency_us: u64,
}

/// What a real run did.
#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    /// The policy's name.
    pub policy: String,
    /// Its quantum, if any.
    pub quantum_ms: Option<u64>,
    /// The host.
    pub capacity: Capacity,
    /// Policy decisions made.
    pub decisions: u64,
    /// One record per job, in id order.
    pub jobs: Vec<JobRecord>,
    /// Every transition in order, with its decision-to-effect latency.
    pub transitions: Vec<Transition>,
    /// When the last job ended (ms from the start).
    pub makespan_ms: u64,
    /// With `--ksm`: the most pages KSM shared while two or more guests ran.
    pub ksm_pages_sharing_max: Option<u64>,
    /// The same in bytes (pages times the host page size).
    pub ksm_saved_bytes: Option<u64>,
}

impl FleetReport {
    /// The same run as a [`Schedule`], for the table, JSON and Gantt chart the simulator uses.
    /// Each interval gets the first chart lane free at its start.
    pub fn to_schedule(&self) -> Schedule {
        let jobs = self
            .jobs
            .iter()
            .map(|j| {
                let mut outcome = JobOutcome {
                    id: j.id,
                    name: j.name.clone(),
                    arrival_ms: j.arrival_ms,
                    burst_ms: j.run_ms,
                    start_ms: j.start_ms,
                    finish_ms: match j.outcome {
                        Outcome::Done => j.finish_ms,
                        Outcome::Failed(_) => None,
                    },
                    waiting_ms: None,
                    turnaround_ms: None,
                    response_ms: None,
                    preemptions: j.preemptions,
                    hibernations: j.hibernations,
                    failed: matches!(j.outcome, Outcome::Failed(_)),
                };
                outcome.derive_times();
                outcome
            })
            .collect();
        let mut all: Vec<(u64, u64, usize)> = self
            .jobs
            .iter()
            .flat_map(|j| j.intervals.iter().map(move |&(s, e)| (s, e, j.id)))
            .collect();
        all.sort_unstable();
        let mut lanes_free_at: Vec<u64> = Vec::new();
        let mut intervals = Vec::with_capacity(all.len());
        for (start_ms, end_ms, job) in all {
            let slot = match lanes_free_at.iter().position(|&free| free <= start_ms) {
                Some(slot) => slot,
                None => {
                    lanes_free_at.push(0);
                    lanes_free_at.len() - 1
                }
            };
            lanes_free_at[slot] = end_ms;
            intervals.push(Interval {
                job,
                start_ms,
                end_ms,
                slot,
            });
        }
        Schedule::new(
            &self.policy,
            self.quantum_ms,
            self.capacity,
            jobs,
            intervals,
            self.decisions,
        )
    }

    /// The mean decision-to-effect latency of transitions of `kind`, in microseconds.
    pub fn mean_latency_us(&self, kind: &str) -> Option<u64> {
        let all: Vec<u64> = self
            .transitions
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.latency_us)
            .collect();
        (!all.is_empty()).then(|| all.iter().sum::<u64>() / all.len() as u64)
    }

    /// The median and 99th percentile (nearest rank) of the decision-to-effect latencies of
    /// transitions of `kind`, in microseconds, and how many there were.
    pub fn latency_percentiles_us(&self, kind: &str) -> Option<(u64, u64, usize)> {
        let mut all: Vec<u64> = self
            .transitions
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.latency_us)
            .collect();
        let n = all.len();
        Some((percentile(&mut all, 50)?, percentile(&mut all, 99)?, n))
    }
}

/// Everything the loop knows about one job.
struct Slot {
    job: Job,
    state: JobState,
    arrived: bool,
    /// Holds host memory, or will once its launch is through (a hibernating job does not).
    resident: bool,
    /// A hibernation is in flight.
    hibernating: bool,
    /// Operations waiting for a hibernation to end before they go to the worker.
    held: VecDeque<Request>,
    worker: Option<Worker>,
    generation: u32,
    running_since: Option<u64>,
    slice_start: Option<u64>,
    run_ms: u64,
    last_run_ms: Option<u64>,
    start_ms: Option<u64>,
    finish_ms: Option<u64>,
    preemptions: u64,
    hibernations: u64,
    snapshot: Option<(PathBuf, PathBuf)>,
    intervals: Vec<(u64, u64)>,
    failure: Option<String>,
    serial_log: PathBuf,
}

impl Slot {
    fn active(&self) -> bool {
        self.arrived && !matches!(self.state, JobState::Done | JobState::Failed)
    }

    fn run_time(&self, now: u64) -> u64 {
        self.run_ms
            + self
                .running_since
                .map_or(0, |since| now.saturating_sub(since))
    }

    /// The job's VM starts (or resumes) running at `now` (its state was set at the decision).
    fn begin_running(&mut self, now: u64) {
        self.running_since = Some(now);
        self.slice_start = Some(now);
        self.last_run_ms = Some(now);
    }

    fn view(&self, now: u64) -> JobView {
        JobView {
            id: self.job.id,
            arrival_ms: self.job.arrival_ms,
            estimate_ms: self.job.estimate_ms,
            remaining_estimate_ms: self.job.estimate_ms.saturating_sub(self.run_time(now)),
            priority: self.job.priority,
            vcpus: self.job.vcpus,
            memory_bytes: self.job.memory_bytes,
            state: self.state,
            last_run_ms: self.last_run_ms,
        }
    }

    /// The job stops running at `now` (paused, exited).
    fn stop_running(&mut self, now: u64) {
        if let Some(since) = self.running_since.take() {
            self.run_ms += now.saturating_sub(since);
            self.intervals.push((since, now));
        }
        self.slice_start = None;
    }

    /// Holds host memory: a VMM process exists.
    fn resident(&self) -> bool {
        self.resident
    }
}

/// Restores the host's KSM settings when dropped.
struct KsmGuard {
    previous: Vec<(&'static str, String)>,
}

/// KSM's scan rate while a fleet runs: the kernel's default (100 pages every 20 ms) needs
/// minutes to find the shared pages of a few guests that live seconds.
const KSM_TUNING: [(&str, &str); 2] = [
    ("/sys/kernel/mm/ksm/pages_to_scan", "5000"),
    ("/sys/kernel/mm/ksm/sleep_millisecs", "10"),
];

impl KsmGuard {
    fn enable() -> Result<KsmGuard, RunError> {
        let mut guard = KsmGuard {
            previous: Vec::new(),
        };
        for (path, value) in KSM_TUNING {
            if let Ok(old) = std::fs::read_to_string(path) {
                if std::fs::write(path, value).is_ok() {
                    guard.previous.push((path, old.trim().to_string()));
                }
            }
        }
        let previous = std::fs::read_to_string(KSM_RUN).map_err(RunError::Ksm)?;
        std::fs::write(KSM_RUN, "1").map_err(RunError::Ksm)?;
        guard.previous.push((KSM_RUN, previous.trim().to_string()));
        Ok(guard)
    }
}

impl Drop for KsmGuard {
    fn drop(&mut self) {
        for (path, value) in self.previous.drain(..).rev() {
            let _ = std::fs::write(path, value);
        }
    }
}

fn ksm_pages_sharing() -> Option<u64> {
    std::fs::read_to_string(KSM_PAGES_SHARING)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Sends `signal` to the process `pid`.
fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pid` is a child we
    // spawned and have not reaped yet, so the pid cannot have been reused.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Ends a child: SIGTERM, then SIGKILL after `TERM_TIMEOUT`; returns its exit status.
fn terminate(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child.id(), libc::SIGTERM);
    if let Some(status) = wait_for_exit(child, TERM_TIMEOUT, || false) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Waits up to `within` for `child` to exit, or until `cut_short` says to stop waiting; its
/// exit status if it exited.
fn wait_for_exit(
    child: &mut Child,
    within: Duration,
    cut_short: impl Fn() -> bool,
) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !cut_short() {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(EXIT_POLL),
            Ok(Some(status)) => return Some(status),
            Err(_) => return None,
        }
    }
    None
}

/// A file name made of the job's name (letters, digits, `-`, `_`, `.` kept).
fn file_stem(job: &Job) -> String {
    let clean: String = job
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{}-{clean}", job.id)
}

fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown exit".to_string(),
    }
}

/// The last non-empty line of a VMM's stderr file, to say why it failed.
fn last_error_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// What a job's worker is asked to do, in the order the runner decided it.
enum Op {
    /// Spawn `vmm ARGS` and wait until it answers on `sock` (`kind`: start or restore).
    Launch {
        args: Vec<OsString>,
        sock: PathBuf,
        stderr: PathBuf,
    },
    /// `PATCH /vm` to `state` (`Paused`, `Resumed`).
    Patch { state: &'static str },
    /// `PUT /snapshot/create` with `body`, end the process, then delete the `old` snapshot.
    Hibernate {
        body: String,
        old: Option<(PathBuf, PathBuf)>,
    },
}

/// One operation sent to a job's worker, with the decision it carries out.
struct Request {
    op: Op,
    kind: &'static str,
    decided: Instant,
    decided_ms: u64,
}

/// What happened to a job's VMM, as its worker saw it.
enum Effect {
    /// The request took effect (the VMM answered).
    Done {
        kind: &'static str,
        decided: Instant,
        decided_ms: u64,
        /// The new process, for a launch.
        pid: Option<u32>,
    },
    /// The VMM exited (on its own, or while a request to it failed).
    Exited {
        status: ExitStatus,
        last_line: Option<String>,
    },
    /// A request failed and the VMM did not exit: the job cannot go on (its process is gone).
    Failed(String),
    /// After the runner let go of the job: how its running VMM was ended.
    Stopped(String),
}

/// What the runner's loop waits for.
enum Message {
    /// A worker's report.
    Worker(Event),
    /// [`FleetStop::stop`] was called.
    Stop,
}

/// A worker's report to the runner's loop.
struct Event {
    slot: usize,
    at: Instant,
    effect: Effect,
}

/// The thread that owns one job's `vmm` process and carries out its operations in order, so
/// that the runner's loop never waits on a VMM.
struct Worker {
    tx: Option<Sender<Request>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often a worker with nothing to do looks whether its VMM has exited.
const EXIT_POLL: Duration = Duration::from_millis(5);

struct WorkerState {
    slot: usize,
    vmm_binary: PathBuf,
    events: Sender<Message>,
    cancel: Arc<AtomicBool>,
    child: Option<Child>,
    api: Option<ApiClient>,
    stderr: Option<PathBuf>,
    /// The VM was paused by this worker and not resumed since.
    paused: bool,
    /// How long a guest asked to shut down gets (`RunOptions::stop_grace_ms`).
    grace: Duration,
    /// Cuts that grace short.
    stop: FleetStop,
}

impl WorkerState {
    fn send(&self, effect: Effect) {
        let _ = self.events.send(Message::Worker(Event {
            slot: self.slot,
            at: Instant::now(),
            effect,
        }));
    }

    fn run(mut self, rx: Receiver<Request>) {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                break;
            }
            match rx.recv_timeout(EXIT_POLL) {
                Ok(request) => {
                    if self.cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    self.carry_out(request);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.check_exit();
        }
        self.stop_vmm();
    }

    /// Ends the VMM of a job the runner let go of: a guest still running is asked to shut
    /// itself down (a paused one is resumed for that) and gets `grace`, then the process is
    /// killed. Reports how it went.
    fn stop_vmm(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let asked = match &self.api {
            Some(api) if !self.grace.is_zero() && !self.stop.hurried() => {
                let resumed = !self.paused
                    || api
                        .request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
                        .is_ok();
                resumed && api.ask_guest_to_stop().is_ok()
            }
            _ => false,
        };
        let asked_at = Instant::now();
        let stop = &self.stop;
        let ended = asked
            .then(|| wait_for_exit(&mut child, self.grace, || stop.hurried()))
            .flatten();
        let line = match ended {
            Some(status) if status.success() => format!(
                "the guest shut down when asked ({} ms)",
                asked_at.elapsed().as_millis()
            ),
            Some(status) => format!(
                "asked to shut down, the VMM ended with {}",
                describe_exit(&status)
            ),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                if asked {
                    format!(
                        "the guest did not shut down within {} ms of being asked: VMM killed",
                        self.grace.as_millis()
                    )
                } else {
                    "VMM killed".to_string()
                }
            }
        };
        self.send(Effect::Stopped(line));
    }

    /// Reports the VMM's exit, if it exited; true when it did.
    fn check_exit(&mut self) -> bool {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        match exited {
            Some(status) => {
                self.child = None;
                let last_line = self.stderr.as_deref().and_then(last_error_line);
                self.send(Effect::Exited { status, last_line });
                true
            }
            None => false,
        }
    }

    fn carry_out(&mut self, request: Request) {
        let Request {
            op,
            kind,
            decided,
            decided_ms,
        } = request;
        let done = |pid| Effect::Done {
            kind,
            decided,
            decided_ms,
            pid,
        };
        match op {
            Op::Launch { args, sock, stderr } => {
                if self.child.is_some() {
                    return self.send(Effect::Failed(format!("cannot {kind}: a VMM runs")));
                }
                match spawn_vmm(&self.vmm_binary, &args, &sock, &stderr, &self.cancel) {
                    Ok(child) => {
                        let pid = child.id();
                        self.child = Some(child);
                        self.paused = false;
                        self.api = Some(ApiClient::new(&sock, REQUEST_TIMEOUT));
                        self.stderr = Some(stderr);
                        self.send(done(Some(pid)));
                    }
                    Err(why) => {
                        let why = if kind == "restore" {
                            format!("restore failed: {why}")
                        } else {
                            why
                        };
                        self.send(Effect::Failed(why));
                    }
                }
            }
            Op::Patch { state } => {
                let body = format!("{{\"state\": \"{state}\"}}");
                match self.request("PATCH", "/vm", &body) {
                    Ok(()) => {
                        self.paused = state == "Paused";
                        self.send(done(None));
                    }
                    Err(why) => self.request_failed(kind, why),
                }
            }
            Op::Hibernate { body, old } => {
                if let Err(why) = self.request("PUT", "/snapshot/create", &body) {
                    return self.request_failed("snapshot", why);
                }
                if let Some(mut child) = self.child.take() {
                    terminate(&mut child);
                }
                // The previous snapshot (if any) is no longer needed: the new one replaces it.
                if let Some((old_state, old_mem)) = old {
                    let _ = std::fs::remove_file(old_state);
                    let _ = std::fs::remove_file(old_mem);
                }
                self.send(done(None));
            }
        }
    }

    fn request(&self, method: &str, path: &str, body: &str) -> Result<(), String> {
        match (&self.child, &self.api) {
            (Some(_), Some(api)) => api
                .request(method, path, Some(body))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => Err("no VMM process".to_string()),
        }
    }

    /// After a failed request: if the VMM exits within 2 s, report its exit; else end it and
    /// report the failure.
    fn request_failed(&mut self, what: &str, why: String) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.child.is_some() && Instant::now() < deadline {
            if self.check_exit() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        self.send(Effect::Failed(format!("cannot {what}: {why}")));
    }
}

/// Spawns the `vmm` binary with `args` and waits until it answers on `sock` (or `cancel` is
/// set). Errors say why the job cannot go on (the process is gone then).
fn spawn_vmm(
    vmm_binary: &Path,
    args: &[OsString],
    sock: &Path,
    stderr_path: &Path,
    cancel: &AtomicBool,
) -> Result<Child, String> {
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_path)
        .map_err(|e| format!("cannot open {}: {e}", stderr_path.display()))?;
    let _ = std::fs::remove_file(sock);
    // Its own process group: a terminal's Ctrl-C goes to the runner, which stops the job
    // its way (RunOptions::stop_grace_ms), not straight to every VMM.
    let mut child = Command::new(vmm_binary)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", vmm_binary.display()))?;
    let api = ApiClient::new(sock, REQUEST_TIMEOUT);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            if status.success() {
                // A guest that powered off before the socket was polled: the worker reports
                // its exit next.
                return Ok(child);
            }
            let why = last_error_line(stderr_path).unwrap_or_default();
            return Err(format!(
                "the VMM ended at start ({}): {why}",
                describe_exit(&status)
            ));
        }
        if sock.exists() && api.request("GET", "/", None).is_ok() {
            return Ok(child);
        }
        if cancel.load(Ordering::Relaxed) {
            terminate(&mut child);
            return Err("cancelled".to_string());
        }
        if Instant::now() > deadline {
            terminate(&mut child);
            return Err(format!(
                "the VMM did not answer on {} within {} s",
                sock.display(),
                STARTUP_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `p`-th percentile (nearest rank) of `values`, which it sorts.
fn percentile(values: &mut [u64], p: u64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (values.len() as u64 * p).div_ceil(100).max(1);
    values.get(usize::try_from(rank - 1).ok()?).copied()
}

struct Runner<'a> {
    slots: Vec<Slot>,
    policy: &'a mut dyn Policy,
    capacity: Capacity,
    options: RunOptions,
    start: Instant,
    transitions: Vec<Transition>,
    ksm_max: Option<u64>,
    decisions: u64,
    /// Set when a job ends or fails.
    ended: bool,
    /// The workers' reports and stop requests.
    events: Receiver<Message>,
    events_tx: Sender<Message>,
    /// Stops the run from outside (a default one that nobody holds when none was given).
    stop: FleetStop,
}

impl Runner<'_> {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn log(&mut self, message: &str) {
        let now = self.start.elapsed();
        let line = format!(
            "[{:>4}.{:03}s] {message}",
            now.as_secs(),
            now.subsec_millis()
        );
        (self.options.log)(&line);
    }

    fn path(&self, slot: usize, suffix: &str) -> PathBuf {
        let stem = file_stem(&self.slots[slot].job);
        self.options.work_dir.join(format!("{stem}{suffix}"))
    }

    fn record(
        &mut self,
        at: Instant,
        decided: Instant,
        decided_ms: u64,
        job: usize,
        kind: &'static str,
    ) {
        let latency_us =
            u64::try_from(at.saturating_duration_since(decided).as_micros()).unwrap_or(u64::MAX);
        self.transitions.push(Transition {
            decided_ms,
            job,
            kind,
            latency_us,
        });
    }

    /// Sends `op` to the job's worker (started on first use). A launch waits while a
    /// hibernation is in flight (it needs the memory that frees), and so does everything
    /// decided for the job after it.
    fn send(&mut self, slot: usize, op: Op, kind: &'static str, decided: Instant, decided_ms: u64) {
        let request = Request {
            op,
            kind,
            decided,
            decided_ms,
        };
        let hibernating = self.slots.iter().any(|s| s.hibernating);
        let s = &mut self.slots[slot];
        if !s.held.is_empty() || (hibernating && matches!(request.op, Op::Launch { .. })) {
            s.held.push_back(request);
            return;
        }
        self.dispatch(slot, request);
    }

    fn dispatch(&mut self, slot: usize, request: Request) {
        if self.slots[slot].worker.is_none() {
            let (tx, rx) = mpsc::channel();
            let cancel = Arc::new(AtomicBool::new(false));
            let state = WorkerState {
                slot,
                vmm_binary: self.options.vmm_binary.clone(),
                events: self.events_tx.clone(),
                cancel: Arc::clone(&cancel),
                child: None,
                api: None,
                stderr: None,
                paused: false,
                grace: Duration::from_millis(self.options.stop_grace_ms),
                stop: self.stop.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("fleet-job-{slot}"))
                .spawn(move || state.run(rx))
                .ok();
            self.slots[slot].worker = Some(Worker {
                tx: Some(tx),
                cancel,
                thread,
            });
        }
        let sent = self.slots[slot]
            .worker
            .as_ref()
            .and_then(|w| w.tx.as_ref())
            .map(|tx| tx.send(request).is_ok());
        if sent != Some(true) {
            self.fail(slot, "its worker thread is gone".to_string());
        }
    }

    /// Sends the held operations once no hibernation is in flight.
    fn release_held(&mut self) {
        if self.slots.iter().any(|s| s.hibernating) {
            return;
        }
        for slot in 0..self.slots.len() {
            while let Some(request) = self.slots[slot].held.pop_front() {
                self.dispatch(slot, request);
            }
        }
    }

    /// Stops the job's worker: it ends the VMM process, if any (see [`WorkerState::stop_vmm`]),
    /// and reports nothing more but how.
    fn stop_worker(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.held.clear();
        if let Some(worker) = s.worker.as_mut() {
            worker.cancel.store(true, Ordering::Relaxed);
            worker.tx = None;
        }
    }

    /// Marks the job failed, ending its process if it has one.
    fn fail(&mut self, slot: usize, why: String) {
        let now = self.now();
        self.stop_worker(slot);
        let s = &mut self.slots[slot];
        s.stop_running(now);
        s.resident = false;
        s.hibernating = false;
        s.state = JobState::Failed;
        s.finish_ms = Some(now);
        s.failure = Some(why.clone());
        self.ended = true;
        self.policy.leave(slot);
        let name = s.job.name.clone();
        self.log(&format!("FAILED {name}: {why}"));
        self.release_held();
    }

    fn start_job(&mut self, slot: usize, decided: Instant, decided_ms: u64) {
        let config_path = self.path(slot, ".json");
        let serial_log = self.slots[slot].serial_log.clone();
        let mut config = self.slots[slot].job.vm.clone();
        config.serial = SerialMode::File(serial_log);
        config.ksm |= self.options.ksm;
        let written = serde_json::to_string_pretty(&config)
            .map_err(|e| e.to_string())
            .and_then(|text| std::fs::write(&config_path, text).map_err(|e| e.to_string()));
        if let Err(e) = written {
            return self.fail(slot, format!("cannot write {}: {e}", config_path.display()));
        }
        let args = [OsString::from("run"), "--config".into(), config_path.into()];
        self.launch(slot, &args, "start", decided, decided_ms);
    }

    /// Asks for `vmm ARGS --api-sock SOCK` (a socket of the slot's current generation); the
    /// job counts as running (and resident) from now on, and its run time from when the VMM
    /// answers. `kind` ("start", "restore") names the transition in the report and the log.
    fn launch(
        &mut self,
        slot: usize,
        args: &[OsString],
        kind: &'static str,
        decided: Instant,
        decided_ms: u64,
    ) {
        let generation = self.slots[slot].generation;
        let sock = self.path(slot, &format!("-{generation}.sock"));
        let stderr = self.path(slot, &format!("-{generation}.stderr"));
        let mut all = args.to_vec();
        all.extend([OsString::from("--api-sock"), sock.clone().into()]);
        let s = &mut self.slots[slot];
        s.state = JobState::Running;
        s.resident = true;
        let op = Op::Launch {
            args: all,
            sock,
            stderr,
        };
        self.send(slot, op, kind, decided, decided_ms);
    }

    fn pause_job(&mut self, slot: usize, decided: Instant, decided_ms: u64) {
        let s = &mut self.slots[slot];
        s.state = JobState::Paused;
        // Its remaining estimate as of the decision: the policy sees it paused from now on.
        self.policy.restate(&s.view(decided_ms));
        let op = Op::Patch { state: "Paused" };
        self.send(slot, op, "pause", decided, decided_ms);
    }

    fn resume_job(&mut self, slot: usize, decided: Instant, decided_ms: u64) {
        self.slots[slot].state = JobState::Running;
        let op = Op::Patch { state: "Resumed" };
        self.send(slot, op, "resume", decided, decided_ms);
    }

    /// Snapshots a paused job to the work directory and ends its process.
    fn hibernate_job(&mut self, slot: usize, decided: Instant, decided_ms: u64) {
        let generation = self.slots[slot].generation;
        let state_path = self.path(slot, &format!("-{generation}.state"));
        let mem_path = self.path(slot, &format!("-{generation}.mem"));
        let body = serde_json::json!({
            "snapshot_type": "Full",
            "snapshot_path": state_path,
            "mem_file_path": mem_path,
        })
        .to_string();
        let s = &mut self.slots[slot];
        let old = s.snapshot.replace((state_path, mem_path));
        s.state = JobState::Hibernated;
        // The job was already counted preempted when it was paused.
        s.hibernations += 1;
        s.generation += 1;
        // Its memory counts as free for the decisions; launches wait until it is.
        s.resident = false;
        s.hibernating = true;
        let op = Op::Hibernate { body, old };
        self.send(slot, op, "hibernate", decided, decided_ms);
    }

    fn restore_job(&mut self, slot: usize, decided: Instant, decided_ms: u64) {
        let Some((state_path, mem_path)) = self.slots[slot].snapshot.clone() else {
            return self.fail(slot, "hibernated without a snapshot".to_string());
        };
        let args = [
            OsString::from("restore"),
            "--snapshot".into(),
            state_path.into(),
            "--mem".into(),
            mem_path.into(),
        ];
        self.launch(slot, &args, "restore", decided, decided_ms);
    }

    /// A worker's report (an operation took effect, the VMM exited, the job failed, its VMM
    /// was stopped) or a stop request.
    fn handle(&mut self, message: Message) {
        let event = match message {
            Message::Worker(event) => event,
            Message::Stop => return self.stop_all(),
        };
        let slot = event.slot;
        if let Effect::Stopped(how) = event.effect {
            return self.stopped(slot, &how);
        }
        if !self.slots[slot].active() {
            // Reports about a job already ended (its worker is being stopped).
            return;
        }
        match event.effect {
            Effect::Done {
                kind,
                decided,
                decided_ms,
                pid,
            } => {
                let now = self.now();
                let s = &mut self.slots[slot];
                let name = s.job.name.clone();
                match kind {
                    "start" | "restore" | "resume" => {
                        s.begin_running(now);
                        if kind == "start" {
                            s.start_ms.get_or_insert(now);
                        }
                    }
                    "pause" => {
                        s.stop_running(now);
                        // Counted when it took effect: a guest that powers off meanwhile
                        // was not preempted.
                        s.preemptions += 1;
                    }
                    _ => s.hibernating = false,
                }
                self.record(event.at, decided, decided_ms, slot, kind);
                let line = match (kind, pid) {
                    ("hibernate", _) => format!("hibernate {name} (snapshot saved, VMM ended)"),
                    (_, Some(pid)) => format!("{kind} {name} (pid {pid})"),
                    _ => format!("{kind} {name}"),
                };
                self.log(&line);
                if kind == "hibernate" {
                    self.release_held();
                }
            }
            Effect::Exited { status, last_line } => self.exited(slot, status, last_line),
            Effect::Failed(why) => self.fail(slot, why),
            Effect::Stopped(_) => {}
        }
    }

    /// [`FleetStop::stop`]: every job that has not ended fails (those not started stay so),
    /// which stops the VMMs, and the loop ends.
    fn stop_all(&mut self) {
        let why = self.stop.reason().unwrap_or_default();
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if matches!(s.state, JobState::Done | JobState::Failed) {
                continue;
            }
            s.arrived = true;
            self.fail(slot, format!("the fleet was stopped: {why}"));
        }
    }

    /// A stopped job's VMM is gone: its failure and the log say how it ended.
    fn stopped(&mut self, slot: usize, how: &str) {
        let s = &mut self.slots[slot];
        if let Some(why) = s.failure.as_mut() {
            why.push_str("; ");
            why.push_str(how);
        }
        let name = s.job.name.clone();
        self.log(&format!("stopped {name}: {how}"));
    }

    /// Stops every worker and waits for each to have ended its VMM.
    fn stop_and_join_workers(&mut self) {
        for slot in 0..self.slots.len() {
            self.stop_worker(slot);
        }
        for s in self.slots.iter_mut() {
            if let Some(thread) = s.worker.as_mut().and_then(|w| w.thread.take()) {
                let _ = thread.join();
            }
        }
    }

    /// Ends every worker (each stops its VMM the way [`WorkerState::stop_vmm`] says) and
    /// takes in their last reports, so that the report says how each stopped job ended.
    fn wind_down(&mut self) {
        self.stop_and_join_workers();
        while let Ok(Message::Worker(event)) = self.events.try_recv() {
            if let Effect::Stopped(how) = event.effect {
                self.stopped(event.slot, &how);
            }
        }
    }

    /// The job's VMM exited on its own.
    fn exited(&mut self, slot: usize, status: ExitStatus, last_line: Option<String>) {
        let now = self.now();
        // Exit code 0 is also how a guest that triple-faulted ends (a dying kernel resets);
        // the VMM says so on stderr, and that is no completed job.
        let triple_fault = last_line
            .as_deref()
            .is_some_and(|l| l.contains("triple fault"));
        if status.success() && !triple_fault {
            self.ended = true;
            self.stop_worker(slot);
            let s = &mut self.slots[slot];
            s.resident = false;
            s.hibernating = false;
            s.stop_running(now);
            s.state = JobState::Done;
            s.finish_ms = Some(now);
            let name = s.job.name.clone();
            self.policy.leave(slot);
            self.log(&format!("done {name}"));
            self.release_held();
        } else {
            let why = match last_line {
                Some(line) => format!("the VMM ended with {}: {line}", describe_exit(&status)),
                None => format!("the VMM ended with {}", describe_exit(&status)),
            };
            self.fail(slot, why);
        }
    }

    /// Marks newly arrived jobs; true when any arrived.
    fn arrivals(&mut self, now: u64) -> bool {
        let mut any = false;
        let mut names = Vec::new();
        let incremental = self.policy.incremental();
        for s in self.slots.iter_mut() {
            if !s.arrived && s.job.arrival_ms <= now {
                s.arrived = true;
                any = true;
                names.push(s.job.name.clone());
                if incremental {
                    self.policy.arrive(&s.view(now));
                }
            }
        }
        for name in names {
            self.log(&format!("arrive {name}"));
        }
        any
    }

    /// A running job has used up its quantum since it was last (re)started.
    fn quantum_expired(&self, now: u64) -> bool {
        let Some(quantum) = self.policy.quantum_ms() else {
            return false;
        };
        self.slots.iter().any(|s| {
            s.state == JobState::Running
                && s.slice_start
                    .is_some_and(|since| now.saturating_sub(since) >= quantum)
        })
    }

    /// Asks the policy and carries out its decision.
    fn decide(&mut self) {
        let decided = Instant::now();
        let now = self.now();
        // An incremental policy keeps its own queue (told of arrivals, ends and pauses) and
        // sees only the running jobs; any other gets every active job.
        let incremental = self.policy.incremental();
        let views: Vec<JobView> = self
            .slots
            .iter()
            .filter(|s| s.active() && (!incremental || s.state == JobState::Running))
            .map(|s| s.view(now))
            .collect();
        let selected = if incremental {
            self.policy.decide(now, &views, self.capacity)
        } else {
            self.policy.select(now, &views, self.capacity)
        };
        self.decisions += 1;
        let want: BTreeSet<usize> = selected
            .iter()
            .copied()
            .filter(|&id| self.slots.get(id).is_some_and(|s| s.active()))
            .collect();
        // A job kept running past its quantum starts a new one (as round robin does when
        // nobody waits).
        let quantum = self.policy.quantum_ms();
        for s in self.slots.iter_mut() {
            if s.state == JobState::Running && want.contains(&s.job.id) {
                if let (Some(q), Some(since)) = (quantum, s.slice_start) {
                    if now.saturating_sub(since) >= q {
                        s.slice_start = Some(now);
                    }
                }
            }
        }
        // 1. Pause what should not run.
        for slot in 0..self.slots.len() {
            if self.slots[slot].state == JobState::Running && !want.contains(&slot) {
                self.pause_job(slot, decided, now);
            }
        }
        // 2. Hibernate paused jobs while the jobs to run do not fit in memory.
        loop {
            let needed: u64 = self
                .slots
                .iter()
                .filter(|s| {
                    want.contains(&s.job.id) && s.active()
                        || (s.resident() && !want.contains(&s.job.id))
                })
                .map(|s| s.job.memory_bytes)
                .sum();
            if needed <= self.capacity.memory_bytes {
                break;
            }
            // The biggest paused job not wanted goes first.
            let victim = self
                .slots
                .iter()
                .filter(|s| {
                    s.state == JobState::Paused && s.resident() && !want.contains(&s.job.id)
                })
                .max_by_key(|s| (s.job.memory_bytes, s.job.id))
                .map(|s| s.job.id);
            match victim {
                Some(slot) => self.hibernate_job(slot, decided, now),
                None => break,
            }
        }
        // 3. Start, resume or restore what should run, in the policy's order.
        for id in selected {
            if !want.contains(&id) {
                continue;
            }
            match self.slots[id].state {
                JobState::Waiting => self.start_job(id, decided, now),
                JobState::Paused => self.resume_job(id, decided, now),
                JobState::Hibernated => self.restore_job(id, decided, now),
                JobState::Running | JobState::Done | JobState::Failed => {}
            }
        }
    }

    /// Fails the jobs that ran longer than `max_run_ms`.
    fn enforce_run_limit(&mut self) {
        let Some(limit) = self.options.max_run_ms else {
            return;
        };
        let now = self.now();
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            if s.state == JobState::Running && s.run_time(now) > limit {
                self.fail(slot, format!("ran longer than the limit of {limit} ms"));
            }
        }
    }

    fn sample_ksm(&mut self) {
        if !self.options.ksm {
            return;
        }
        let live = self.slots.iter().filter(|s| s.resident()).count();
        if live >= 2 {
            if let Some(pages) = ksm_pages_sharing() {
                let before = self.ksm_max.unwrap_or(0);
                self.ksm_max = Some(before.max(pages));
                // Logged when sharing starts and each time it doubles: a few lines per run.
                if pages > 0 && pages >= before.saturating_mul(2).max(1) {
                    self.log(&format!("ksm: {pages} pages shared"));
                }
            }
        }
    }

    /// When the loop must look again though no worker reported: the next arrival, quantum
    /// expiry or run limit, a KSM sample, or (`stalled`) the stall check.
    fn next_wake(&self, now: u64, stalled: bool) -> Instant {
        let mut at = now.saturating_add(if stalled { 100 } else { 1_000 });
        if self.options.ksm {
            at = at.min(now.saturating_add(POLL_KSM_MS));
        }
        let quantum = self.policy.quantum_ms();
        for s in &self.slots {
            if !s.arrived {
                at = at.min(s.job.arrival_ms);
            }
            if s.state != JobState::Running {
                continue;
            }
            if let (Some(q), Some(since)) = (quantum, s.slice_start) {
                at = at.min(since.saturating_add(q));
            }
            if let (Some(limit), Some(_)) = (self.options.max_run_ms, s.running_since) {
                let left = limit.saturating_sub(s.run_time(now));
                at = at.min(now.saturating_add(left).saturating_add(1));
            }
        }
        self.start + Duration::from_millis(at.max(now))
    }

    fn run(&mut self) {
        let mut stalled_since: Option<Instant> = None;
        loop {
            let now = self.now();
            let mut event = self.arrivals(now);
            event |= std::mem::take(&mut self.ended);
            event |= self.quantum_expired(now);
            if event {
                self.decide();
            }
            self.sample_ksm();
            self.enforce_run_limit();
            if self.ended {
                continue;
            }
            let pending = self.slots.iter().any(|s| !s.arrived);
            let active = self.slots.iter().any(|s| s.active());
            if !pending && !active {
                return;
            }
            let live = self.slots.iter().any(|s| s.state == JobState::Running);
            let stalled = !live && !pending && active;
            if stalled {
                // Nothing runs and nothing will arrive: the policy must pick something now.
                let first = *stalled_since.get_or_insert_with(Instant::now);
                if first.elapsed() > Duration::from_secs(1) {
                    let stuck: Vec<usize> = (0..self.slots.len())
                        .filter(|&i| self.slots[i].active())
                        .collect();
                    for slot in stuck {
                        self.fail(slot, "the policy never selected it".to_string());
                    }
                    continue;
                }
                self.decide();
            } else {
                stalled_since = None;
            }
            // Wait for a worker's report or the next timed decision point, whichever is first.
            let wake = self.next_wake(self.now(), stalled);
            let timeout = wake.saturating_duration_since(Instant::now());
            if let Ok(first) = self.events.recv_timeout(timeout) {
                self.handle(first);
                while let Ok(more) = self.events.try_recv() {
                    self.handle(more);
                }
            }
        }
    }

    /// `decision-to-effect: start p50 X ms p99 Y ms (n N), pause ...`: the latencies of the
    /// run's transitions, per kind.
    fn latency_summary(&self) -> String {
        let report = self.report();
        let parts: Vec<String> = TRANSITION_KINDS
            .iter()
            .filter_map(|kind| {
                let (p50, p99, n) = report.latency_percentiles_us(kind)?;
                Some(format!(
                    "{kind} p50 {:.1} ms p99 {:.1} ms (n {n})",
                    p50 as f64 / 1e3,
                    p99 as f64 / 1e3
                ))
            })
            .collect();
        if parts.is_empty() {
            return "decision-to-effect: no transitions".to_string();
        }
        format!("decision-to-effect: {}", parts.join(", "))
    }

    fn report(&self) -> FleetReport {
        let jobs = self
            .slots
            .iter()
            .map(|s| {
                let finish = s.finish_ms.unwrap_or(0);
                let turnaround = finish.saturating_sub(s.job.arrival_ms);
                JobRecord {
                    id: s.job.id,
                    name: s.job.name.clone(),
                    arrival_ms: s.job.arrival_ms,
                    start_ms: s.start_ms,
                    finish_ms: s.finish_ms,
                    waiting_ms: turnaround.saturating_sub(s.run_ms),
                    turnaround_ms: turnaround,
                    run_ms: s.run_ms,
                    preemptions: s.preemptions,
                    hibernations: s.hibernations,
                    outcome: match &s.failure {
                        Some(why) => Outcome::Failed(why.clone()),
                        None => Outcome::Done,
                    },
                    intervals: s.intervals.clone(),
                    serial_log: s.serial_log.clone(),
                }
            })
            .collect();
        // SAFETY: sysconf reads a system constant and touches no memory of ours.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).unwrap_or(4096);
        FleetReport {
            policy: self.policy.name().to_string(),
            quantum_ms: self.policy.quantum_ms(),
            capacity: self.capacity,
            decisions: self.decisions,
            jobs,
            transitions: self.transitions.clone(),
            makespan_ms: self
                .slots
                .iter()
                .filter_map(|s| s.finish_ms)
                .max()
                .unwrap_or(0),
            ksm_pages_sharing_max: self.ksm_max,
            ksm_saved_bytes: self.ksm_max.map(|p| p.saturating_mul(page)),
        }
    }
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        // Never leave VMMs behind, whatever ended the run (after wind_down: nothing left).
        self.stop_and_join_workers();
    }
}

/// Runs `jobs` (validated, ids equal to their index) as real VMs under `policy` on a host of
/// `capacity`, and reports what happened. A job whose VMM fails is reported Failed; the
/// others go on. Errors: the work directory cannot be made, or KSM cannot be switched on.
pub fn run_fleet(
    jobs: Vec<Job>,
    policy: &mut dyn Policy,
    capacity: Capacity,
    options: RunOptions,
) -> Result<FleetReport, RunError> {
    std::fs::create_dir_all(&options.work_dir).map_err(|source| RunError::WorkDir {
        path: options.work_dir.clone(),
        source,
    })?;
    for (index, job) in jobs.iter().enumerate() {
        if job.id != index {
            return Err(RunError::JobIds {
                name: job.name.clone(),
                id: job.id,
                index,
            });
        }
    }
    let _ksm = if options.ksm {
        Some(KsmGuard::enable()?)
    } else {
        None
    };
    let slots = jobs
        .into_iter()
        .map(|job| {
            let serial_log = options.work_dir.join(format!("{}.log", file_stem(&job)));
            let _ = std::fs::remove_file(&serial_log);
            Slot {
                job,
                state: JobState::Waiting,
                arrived: false,
                resident: false,
                hibernating: false,
                held: VecDeque::new(),
                worker: None,
                generation: 0,
                running_since: None,
                slice_start: None,
                run_ms: 0,
                last_run_ms: None,
                start_ms: None,
                finish_ms: None,
                preemptions: 0,
                hibernations: 0,
                snapshot: None,
                intervals: Vec::new(),
                failure: None,
                serial_log,
            }
        })
        .collect();
    let (events_tx, events) = mpsc::channel();
    let stop = options.stop.clone().unwrap_or_default();
    stop.attach(events_tx.clone());
    let mut runner = Runner {
        slots,
        policy,
        capacity,
        options,
        start: Instant::now(),
        transitions: Vec::new(),
        ksm_max: None,
        decisions: 0,
        ended: false,
        events,
        events_tx,
        stop,
    };
    let name = runner.policy.name();
    runner.log(&format!(
        "fleet: {} jobs, policy {name}, host {} CPUs, {} MiB",
        runner.slots.len(),
        runner.capacity.cpus,
        runner.capacity.memory_bytes >> 20
    ));
    runner.run();
    runner.wind_down();
    let summary = runner.latency_summary();
    runner.log(&summary);
    Ok(runner.report())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&mut [], 50), None);
        assert_eq!(percentile(&mut [7], 99), Some(7));
        let mut values: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut values, 50), Some(50));
        assert_eq!(percentile(&mut values, 99), Some(99));
        let mut eight = [8, 1, 7, 2, 6, 3, 5, 4];
        assert_eq!(percentile(&mut eight, 50), Some(4));
        assert_eq!(percentile(&mut eight, 99), Some(8));
    }
}
