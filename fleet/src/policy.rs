//! Scheduling policies behind one trait: FCFS, SJF, SRTF and round robin.
//!
//! A policy is asked at every decision point (an arrival, a completion, a quantum expiry) which
//! jobs should be running afterwards; the caller (the simulator or the real runner) then
//! pauses, hibernates, resumes and starts jobs to match.
//!
//! **Admission is "first fit".** Every policy orders its candidates (by arrival, estimate,
//! remaining estimate or queue position) and walks that order, taking each job whose vCPUs and
//! memory still fit the host and *skipping* a job that does not fit to try the next one. A big
//! job at the head of the order therefore does not block smaller ones behind it (better use of
//! the host, and no head-of-line blocking), at the price that a big job can wait while smaller
//! later ones overtake it. Strict order ("stop at the first job that does not fit") would be the
//! other choice; first fit is what these policies do.
//!
//! The capacity a selection must fit is that of the selected jobs alone. A Paused job that is
//! not selected still holds its memory in the real runner; making room for the selection by
//! hibernating such jobs (snapshot to disk, end the process) is the runner's decision, not the
//! policy's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use super::jobs::Capacity;
use super::FleetError;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Arrived (or not yet), never run.
    Waiting,
    /// Running now.
    Running,
    /// Preempted and paused: holds its memory, not its CPUs.
    Paused,
    /// Preempted and saved to disk: holds neither.
    Hibernated,
    /// Ended.
    Done,
    /// Its VM failed; it will not run again.
    Failed,
}

/// What a policy sees of a job.
#[derive(Clone, Debug)]
pub struct JobView {
    /// The job's id ([`super::Job::id`]).
    pub id: usize,
    /// Arrival, ms.
    pub arrival_ms: u64,
    /// Estimated run time, ms.
    pub estimate_ms: u64,
    /// The estimate less the time it has run so far (0 once it ran longer than its estimate).
    pub remaining_estimate_ms: u64,
    /// Priority.
    pub priority: i32,
    /// vCPUs it holds while running.
    pub vcpus: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Its state.
    pub state: JobState,
    /// When it last started (or resumed) running: the start of the current run while Running.
    /// None when it never ran.
    pub last_run_ms: Option<u64>,
}

impl JobView {
    /// Whether the job may be selected at `now_ms`: arrived, and neither Done nor Failed.
    pub fn eligible(&self, now_ms: u64) -> bool {
        self.arrival_ms <= now_ms && !matches!(self.state, JobState::Done | JobState::Failed)
    }
}

/// A scheduling policy.
pub trait Policy: Send {
    /// Its name (`fcfs`, `sjf`, `srtf`, `rr`).
    fn name(&self) -> &'static str;
    /// Whether it may stop a running job before it ends.
    fn preemptive(&self) -> bool;
    /// Its time slice, if it has one: the caller must then make a decision when a running job
    /// has run this long since it was (re)started.
    fn quantum_ms(&self) -> Option<u64>;
    /// The ids of the jobs that should be running after this decision point: arrived, neither
    /// Done nor Failed, and together within `capacity` (vCPUs and memory). `jobs` may hold any
    /// jobs in any order (ineligible ones are ignored); the result's order is the policy's
    /// order of preference.
    fn select(&mut self, now_ms: u64, jobs: &[JobView], capacity: Capacity) -> Vec<usize>;

    /// Whether the policy keeps its own queue and answers [`Policy::decide`]: then a caller may
    /// tell it about arrivals ([`Policy::arrive`]), ended jobs ([`Policy::leave`]) and paused
    /// jobs ([`Policy::restate`]) and ask [`Policy::decide`] with only the running jobs, which
    /// costs O(log n) per job started or preempted instead of the O(n) of `select`. A caller
    /// uses one way or the other for a whole run, never both on one policy object. All the
    /// built-in policies do; the default is `false`.
    fn incremental(&self) -> bool {
        false
    }
    /// Incremental use: `job` has arrived (it is eligible from now on).
    fn arrive(&mut self, _job: &JobView) {}
    /// Incremental use: job `id` ended (Done or Failed); unknown ids are ignored.
    fn leave(&mut self, _id: usize) {}
    /// Incremental use: a job that is not running has a new view (the remaining estimate of a
    /// job the caller paused later than the decision); unknown ids are ignored.
    fn restate(&mut self, _job: &JobView) {}
    /// Incremental use: the same answer as `select` over all arrived, unended jobs, given only
    /// the views of the jobs running now (the others are the policy's queue: arrived and not
    /// left). The caller then runs exactly the answer. Only called when `incremental()`.
    fn decide(&mut self, now_ms: u64, running: &[JobView], capacity: Capacity) -> Vec<usize> {
        let _ = (now_ms, capacity);
        running.iter().map(|job| job.id).collect()
    }
}

/// A policy seen only through [`Policy::select`] (not incremental): a simulator or runner then
/// asks it over every active job at each decision, the straightforward O(n) reference that an
/// incremental policy's [`Policy::decide`] must match. For tests and fuzzing.
pub struct SelectOnly(pub Box<dyn Policy>);

impl Policy for SelectOnly {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn preemptive(&self) -> bool {
        self.0.preemptive()
    }
    fn quantum_ms(&self) -> Option<u64> {
        self.0.quantum_ms()
    }
    fn select(&mut self, now_ms: u64, jobs: &[JobView], capacity: Capacity) -> Vec<usize> {
        self.0.select(now_ms, jobs, capacity)
    }
}

/// Builds a policy by name: `fcfs`, `sjf`, `srtf` or `rr` (which needs a quantum of at least
/// 1 ms; the others take none).
pub fn policy_by_name(name: &str, quantum_ms: Option<u64>) -> Result<Box<dyn Policy>, FleetError> {
    let policy: Box<dyn Policy> = match name.to_ascii_lowercase().as_str() {
        "fcfs" => Box::new(Fcfs::default()),
        "sjf" => Box::new(Sjf::default()),
        "srtf" => Box::new(Srtf::default()),
        "rr" => {
            return match quantum_ms {
                None => Err(FleetError::NoQuantum),
                Some(0) => Err(FleetError::ZeroQuantum),
                Some(q) => Ok(Box::new(RoundRobin::new(q))),
            }
        }
        _ => return Err(FleetError::UnknownPolicy(name.to_string())),
    };
    if quantum_ms.is_some() {
        return Err(FleetError::QuantumNotUsed(policy.name()));
    }
    Ok(policy)
}

/// Sort key of a candidate: compared as a tuple, smallest first.
type Key = (u64, u64, u64, usize);

/// Capacity left while a selection is built.
struct Room {
    cpus: u64,
    memory: u64,
}

impl Room {
    fn new(capacity: Capacity) -> Room {
        Room {
            cpus: capacity.cpus,
            memory: capacity.memory_bytes,
        }
    }

    /// Takes the job's share when it fits.
    fn take(&mut self, job: &JobView) -> bool {
        self.take_parts(job.vcpus, job.memory_bytes)
    }

    fn take_parts(&mut self, vcpus: u64, memory: u64) -> bool {
        if vcpus <= self.cpus && memory <= self.memory {
            self.cpus -= vcpus;
            self.memory -= memory;
            true
        } else {
            false
        }
    }

    /// Takes the job's share whether or not it fits (jobs kept running).
    fn force(&mut self, job: &JobView) {
        self.force_parts(job.vcpus, job.memory_bytes);
    }

    fn force_parts(&mut self, vcpus: u64, memory: u64) {
        self.cpus = self.cpus.saturating_sub(vcpus);
        self.memory = self.memory.saturating_sub(memory);
    }
}

/// First fit over the candidates in key order: heapify (O(n)) and pop only until the CPUs are
/// used up, so a decision costs O(n + k log n) for k jobs started.
fn first_fit(
    heap_storage: &mut Vec<Reverse<(Key, usize)>>,
    jobs: &[JobView],
    room: &mut Room,
    out: &mut Vec<usize>,
) {
    let mut heap = BinaryHeap::from(std::mem::take(heap_storage));
    while room.cpus > 0 {
        let Some(Reverse((_, index))) = heap.pop() else {
            break;
        };
        if let Some(job) = jobs.get(index) {
            if room.take(job) {
                out.push(job.id);
            }
        }
    }
    let mut storage = heap.into_vec();
    storage.clear();
    *heap_storage = storage;
}

/// The non-preemptive policies: running jobs keep running, free room goes to waiting jobs in
/// key order.
fn non_preemptive(
    scratch: &mut Vec<Reverse<(Key, usize)>>,
    now_ms: u64,
    jobs: &[JobView],
    capacity: Capacity,
    key: impl Fn(&JobView) -> Key,
) -> Vec<usize> {
    let mut room = Room::new(capacity);
    let mut out = Vec::new();
    scratch.clear();
    for (index, job) in jobs.iter().enumerate() {
        if !job.eligible(now_ms) {
            continue;
        }
        if job.state == JobState::Running {
            room.force(job);
            out.push(job.id);
        } else {
            scratch.push(Reverse((key(job), index)));
        }
    }
    first_fit(scratch, jobs, &mut room, &mut out);
    out
}

/// First come, first served: by arrival (then id); non-preemptive.
#[derive(Debug, Default)]
pub struct Fcfs {
    scratch: Vec<Reverse<(Key, usize)>>,
    ready: Ready,
}

impl Policy for Fcfs {
    fn name(&self) -> &'static str {
        "fcfs"
    }
    fn preemptive(&self) -> bool {
        false
    }
    fn quantum_ms(&self) -> Option<u64> {
        None
    }
    fn select(&mut self, now_ms: u64, jobs: &[JobView], capacity: Capacity) -> Vec<usize> {
        non_preemptive(&mut self.scratch, now_ms, jobs, capacity, |j| {
            (j.arrival_ms, j.id as u64, 0, 0)
        })
    }
    fn incremental(&self) -> bool {
        true
    }
    fn arrive(&mut self, job: &JobView) {
        arrive_keyed(&mut self.ready, job, fcfs_key);
    }
    fn leave(&mut self, id: usize) {
        self.ready.leave(id);
    }
    fn restate(&mut self, job: &JobView) {
        restate_keyed(&mut self.ready, job, fcfs_key);
    }
    fn decide(&mut self, _now_ms: u64, running: &[JobView], capacity: Capacity) -> Vec<usize> {
        self.ready
            .decide_non_preemptive(running, capacity, fcfs_key)
    }
}

/// Shortest job first: the waiting job with the shortest estimate (then arrival, then id) starts
/// when there is room; non-preemptive.
#[derive(Debug, Default)]
pub struct Sjf {
    scratch: Vec<Reverse<(Key, usize)>>,
    ready: Ready,
}

impl Policy for Sjf {
    fn name(&self) -> &'static str {
        "sjf"
    }
    fn preemptive(&self) -> bool {
        false
    }
    fn quantum_ms(&self) -> Option<u64> {
        None
    }
    fn select(&mut self, now_ms: u64, jobs: &[JobView], capacity: Capacity) -> Vec<usize> {
        non_preemptive(&mut self.scratch, now_ms, jobs, capacity, |j| {
            (j.estimate_ms, j.arrival_ms, j.id as u64, 0)
        })
    }
    fn incremental(&self) -> bool {
        true
    }
    fn arrive(&mut self, job: &JobView) {
        arrive_keyed(&mut self.ready, job, sjf_key);
    }
    fn leave(&mut self, id: usize) {
        self.ready.leave(id);
    }
    fn restate(&mut self, job: &JobView) {
        restate_keyed(&mut self.ready, job, sjf_key);
    }
    fn decide(&mut self, _now_ms: u64, running: &[JobView], capacity: Capacity) -> Vec<usize> {
        self.ready.decide_non_preemptive(running, capacity, sjf_key)
    }
}

/// Shortest remaining time first: the jobs with the shortest remaining estimates run, so a new
/// shorter job preempts the running job with the longest remaining estimate. Ties keep the
/// running job (no needless preemption), then go by arrival and id.
#[derive(Debug, Default)]
pub struct Srtf {
    scratch: Vec<Reverse<(Key, usize)>>,
    ready: Ready,
}

impl Policy for Srtf {
    fn name(&self) -> &'static str {
        "srtf"
    }
    fn preemptive(&self) -> bool {
        true
    }
    fn quantum_ms(&self) -> Option<u64> {
        None
    }
    fn select(&mut self, now_ms: u64, jobs: &[JobView], capacity: Capacity) -> Vec<usize> {
        let mut room = Room::new(capacity);
        let mut out = Vec::new();
        self.scratch.clear();
        for (index, job) in jobs.iter().enumerate() {
            if job.eligible(now_ms) {
                let not_running = u64::from(job.state != JobState::Running);
                let key = (
                    job.remaining_estimate_ms,
                    not_running,
                    job.arrival_ms,
                    job.id,
                );
                self.scratch.push(Reverse((key, index)));
            }
        }
        first_fit(&mut self.scratch, jobs, &mut room, &mut out);
        out
    }

    fn incremental(&self) -> bool {
        true
    }
    fn arrive(&mut self, job: &JobView) {
        arrive_keyed(&mut self.ready, job, |rec, id| srtf_key(rec, id, false));
    }
    fn leave(&mut self, id: usize) {
        self.ready.leave(id);
    }
    fn restate(&mut self, job: &JobView) {
        restate_keyed(&mut self.ready, job, |rec, id| srtf_key(rec, id, false));
    }
    fn decide(&mut self, _now_ms: u64, running: &[JobView], capacity: Capacity) -> Vec<usize> {
        let ready = &mut self.ready;
        ready.reconcile(running, |rec, id| Some(srtf_key(rec, id, false)));
        ready.fresh.clear();
        // The running jobs compete with the queue, ahead of waiting ones on equal keys.
        let mut extra = Vec::with_capacity(ready.running.len());
        for id in std::mem::take(&mut ready.running) {
            let rec = ready.rec(id);
            rec.running = false;
            extra.push((srtf_key(rec, id, true), id));
        }
        extra.sort_unstable();
        let mut room = Room::new(capacity);
        let mut out = Vec::with_capacity(extra.len() + 1);
        for id in ready.first_fit(&mut room, &mut out, &extra) {
            let key = srtf_key(ready.rec(id), id, false);
            ready.enqueue(id, key);
        }
        out
    }
}

/// A job's place in the round-robin queue.
#[derive(Debug, Default)]
struct RrEntry {
    /// Position in the queue: smaller runs first; moving to the back takes a new, larger one.
    seq: u64,
    /// When its current time slice began, while it runs.
    slice_start: Option<u64>,
    /// The last decision that saw it (0: never). A job missing from one decision's jobs is
    /// forgotten and queues again at the back if it comes back.
    seen: u64,
}

/// Ids below this are kept in a vector indexed by id (the usual dense ids from a jobs file);
/// larger ones in a map.
const DENSE_IDS: usize = 1 << 20;

/// Round robin: a FIFO queue of arrived jobs. A running job keeps its CPU for a whole quantum;
/// when its quantum is over and some job is waiting, it goes to the back of the queue (behind
/// the jobs that arrived meanwhile, including at that very instant) and the head of the queue
/// runs. With nobody waiting it simply starts a new quantum.
#[derive(Debug)]
pub struct RoundRobin {
    quantum_ms: u64,
    dense: Vec<RrEntry>,
    sparse: HashMap<usize, RrEntry>,
    next_seq: u64,
    decision: u64,
    scratch: Vec<Reverse<(Key, usize)>>,
    fresh: Vec<(u64, usize, usize)>,
    running: Vec<(u64, usize)>,
    ready: Ready,
}

impl RoundRobin {
    /// Round robin with this quantum (ms, at least 1: 0 is taken as 1).
    pub fn new(quantum_ms: u64) -> RoundRobin {
        RoundRobin {
            quantum_ms: quantum_ms.max(1),
            dense: Vec::new(),
            sparse: HashMap::new(),
            next_seq: 0,
            decision: 0,
            scratch: Vec::new(),
            fresh: Vec::new(),
            running: Vec::new(),
            ready: Ready {
                fifo: Some(VecDeque::new()),
                ..Ready::default()
            },
        }
    }
}

/// The entry of `id`: in the vector when the id is small, else in the map.
fn entry_of<'a>(
    dense: &'a mut Vec<RrEntry>,
    sparse: &'a mut HashMap<usize, RrEntry>,
    id: usize,
) -> &'a mut RrEntry {
    if id < DENSE_IDS {
        if id >= dense.len() {
            dense.resize_with(id + 1, RrEntry::default);
        }
        &mut dense[id]
    } else {
        sparse.entry(id).or_default()
    }
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "rr"
    }
    fn preemptive(&self) -> bool {
        true
    }
    fn quantum_ms(&self) -> Option<u64> {
        Some(self.quantum_ms)
    }
    fn select(&mut self, now_ms: u64, jobs: &[JobView], capacity: Capacity) -> Vec<usize> {
        self.decision += 1;
        let decision = self.decision;
        let mut waiting = false;
        self.fresh.clear();
        self.running.clear();
        self.scratch.clear();
        // One pass: known waiting jobs become candidates by queue position, running ones are
        // set aside, new ones are collected.
        for (index, job) in jobs.iter().enumerate() {
            if !job.eligible(now_ms) {
                continue;
            }
            let running = job.state == JobState::Running;
            let entry = entry_of(&mut self.dense, &mut self.sparse, job.id);
            if entry.seen == decision {
                continue; // the same id twice
            }
            let known = entry.seen != 0 && entry.seen + 1 == decision;
            entry.seen = decision;
            waiting |= !running;
            if !known {
                self.fresh.push((job.arrival_ms, job.id, index));
            } else if running {
                if entry.slice_start.is_none() {
                    entry.slice_start = Some(job.last_run_ms.unwrap_or(now_ms));
                }
                self.running.push((entry.seq, index));
            } else {
                entry.slice_start = None;
                self.scratch.push(Reverse(((entry.seq, 0, 0, 0), index)));
            }
        }
        if !self.sparse.is_empty() {
            self.sparse.retain(|_, entry| entry.seen == decision);
        }
        // Arrivals join the back of the queue in arrival order, before any job whose quantum
        // ends now.
        self.fresh.sort_unstable();
        for k in 0..self.fresh.len() {
            let (_, id, index) = self.fresh[k];
            let seq = self.next_seq;
            self.next_seq += 1;
            let job = &jobs[index];
            let running = job.state == JobState::Running;
            let entry = entry_of(&mut self.dense, &mut self.sparse, id);
            entry.seq = seq;
            entry.slice_start = running.then(|| job.last_run_ms.unwrap_or(now_ms));
            if running {
                self.running.push((seq, index));
            } else {
                self.scratch.push(Reverse(((seq, 0, 0, 0), index)));
            }
        }
        // Running jobs inside their quantum keep running. Those whose quantum is over go to the
        // back (in queue order) when someone waits, else start a new quantum.
        self.running.sort_unstable();
        let mut room = Room::new(capacity);
        let mut out = Vec::new();
        for k in 0..self.running.len() {
            let index = self.running[k].1;
            let job = &jobs[index];
            let quantum = self.quantum_ms;
            let mut seq = self.next_seq;
            let entry = entry_of(&mut self.dense, &mut self.sparse, job.id);
            let expired = entry
                .slice_start
                .is_some_and(|start| now_ms.saturating_sub(start) >= quantum);
            if expired && waiting {
                entry.seq = seq;
                entry.slice_start = None;
                seq += 1;
                self.next_seq = seq;
                self.scratch.push(Reverse(((entry.seq, 0, 0, 0), index)));
            } else {
                if expired {
                    entry.slice_start = Some(now_ms);
                }
                room.force(job);
                out.push(job.id);
            }
        }
        // The rest of the room goes by queue order, first fit.
        let kept = out.len();
        first_fit(&mut self.scratch, jobs, &mut room, &mut out);
        for &id in &out[kept..] {
            entry_of(&mut self.dense, &mut self.sparse, id).slice_start = Some(now_ms);
        }
        out
    }

    fn incremental(&self) -> bool {
        true
    }
    fn arrive(&mut self, job: &JobView) {
        if !self.ready.record(job) {
            self.ready.fresh.push(job.id);
        }
    }
    fn leave(&mut self, id: usize) {
        self.ready.leave(id);
    }
    fn restate(&mut self, job: &JobView) {
        let rec = self.ready.rec(job.id);
        if rec.alive && !rec.running {
            self.ready.record(job);
        }
    }
    fn decide(&mut self, now_ms: u64, running: &[JobView], capacity: Capacity) -> Vec<usize> {
        let quantum = self.quantum_ms;
        let ready = &mut self.ready;
        ready.reconcile(running, |rec, _| rec.seq.map(|seq| (seq, 0, 0, 0)));
        // Arrivals join the back of the queue in arrival order, before any job whose quantum
        // ends now.
        let mut fresh = std::mem::take(&mut ready.fresh);
        fresh.retain(|&id| {
            let rec = ready.rec(id);
            rec.alive && rec.seq.is_none()
        });
        fresh.sort_unstable_by_key(|&id| (ready.rec(id).arrival, id));
        fresh.dedup();
        for &id in &fresh {
            let seq = self.next_seq;
            self.next_seq += 1;
            let rec = ready.rec(id);
            rec.seq = Some(seq);
            if rec.running {
                rec.slice_start = Some(rec.last_run.unwrap_or(now_ms));
            } else {
                ready.enqueue(id, (seq, 0, 0, 0));
            }
        }
        fresh.clear();
        ready.fresh = fresh;
        let waiting = ready.peek().is_some();
        // Running jobs inside their quantum keep running. Those whose quantum is over go to the
        // back (in queue order) when someone waits, else start a new quantum.
        let ids = std::mem::take(&mut ready.running);
        let mut order: Vec<(u64, usize)> = ids
            .iter()
            .map(|&id| (ready.rec(id).seq.unwrap_or(0), id))
            .collect();
        order.sort_unstable();
        let mut room = Room::new(capacity);
        let mut out = Vec::with_capacity(order.len() + 1);
        for (_, id) in order {
            let rec = ready.rec(id);
            let start = *rec
                .slice_start
                .get_or_insert(rec.last_run.unwrap_or(now_ms));
            let expired = now_ms.saturating_sub(start) >= quantum;
            if expired && waiting {
                let seq = self.next_seq;
                self.next_seq += 1;
                rec.seq = Some(seq);
                rec.slice_start = None;
                ready.enqueue(id, (seq, 0, 0, 0));
            } else {
                if expired {
                    rec.slice_start = Some(now_ms);
                }
                room.force_parts(rec.vcpus, rec.memory);
                out.push(id);
                ready.running.push(id);
            }
        }
        // The rest of the room goes by queue order, first fit.
        let kept = out.len();
        ready.first_fit(&mut room, &mut out, &[]);
        for &id in &out[kept..] {
            ready.rec(id).slice_start = Some(now_ms);
        }
        out
    }
}

/// What the incremental form of a policy keeps of one job.
#[derive(Clone, Debug, Default)]
struct Rec {
    /// Arrived and not left.
    alive: bool,
    /// Running, as far as the policy knows (it chose so, or the caller said so).
    running: bool,
    /// The ticket of its live entry in the queue's heap; 0 when it is not queued.
    ticket: u64,
    /// The last decision whose running jobs included it.
    mark: u64,
    arrival: u64,
    estimate: u64,
    remaining: u64,
    vcpus: u64,
    memory: u64,
    last_run: Option<u64>,
    /// Round robin: its queue position; None until the decision after its arrival.
    seq: Option<u64>,
    /// Round robin: when its current time slice began, while it runs.
    slice_start: Option<u64>,
}

/// A queue entry: the policy's key, the job's id, and the ticket that is live while the job
/// stays queued with this key (older entries are skipped when they reach the top).
type Entry = Reverse<(Key, usize, u64)>;

/// The incremental form shared by all the policies: a record per job, the waiting jobs in a
/// binary heap by the policy's key (lazy deletion by ticket), and the running jobs.
#[derive(Debug, Default)]
struct Ready {
    dense: Vec<Rec>,
    sparse: HashMap<usize, Rec>,
    heap: BinaryHeap<Entry>,
    /// Round robin's queue instead of the heap: its keys (queue positions) only grow, so a
    /// deque kept in key order does what the heap does in O(1).
    fifo: Option<VecDeque<Entry>>,
    tickets: u64,
    running: Vec<usize>,
    decision: u64,
    /// Round robin: arrivals since the last decision.
    fresh: Vec<usize>,
    skipped: Vec<Entry>,
}

impl Ready {
    fn rec(&mut self, id: usize) -> &mut Rec {
        if id < DENSE_IDS {
            if id >= self.dense.len() {
                self.dense.resize_with(id + 1, Rec::default);
            }
            &mut self.dense[id]
        } else {
            self.sparse.entry(id).or_default()
        }
    }

    /// Records a job's view (a new arrival or a new state); returns whether it was known.
    fn record(&mut self, job: &JobView) -> bool {
        let rec = self.rec(job.id);
        let known = rec.alive;
        rec.alive = true;
        rec.arrival = job.arrival_ms;
        rec.estimate = job.estimate_ms;
        rec.remaining = job.remaining_estimate_ms;
        rec.vcpus = job.vcpus;
        rec.memory = job.memory_bytes;
        rec.last_run = job.last_run_ms;
        known
    }

    fn enqueue(&mut self, id: usize, key: Key) {
        self.tickets += 1;
        let ticket = self.tickets;
        let rec = self.rec(id);
        rec.ticket = ticket;
        rec.running = false;
        let entry = Reverse((key, id, ticket));
        match &mut self.fifo {
            None => self.heap.push(entry),
            Some(fifo) => {
                if fifo.back().is_none_or(|back| *back > entry) {
                    fifo.push_back(entry);
                } else {
                    // An old position (a job the caller stopped without asking): keep the order.
                    let at = fifo.partition_point(|e| *e > entry);
                    fifo.insert(at, entry);
                }
            }
        }
    }

    fn top(&self) -> Option<&Entry> {
        match &self.fifo {
            None => self.heap.peek(),
            Some(fifo) => fifo.front(),
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        match &mut self.fifo {
            None => self.heap.pop(),
            Some(fifo) => fifo.pop_front(),
        }
    }

    fn leave(&mut self, id: usize) {
        let rec = if id < DENSE_IDS {
            self.dense.get_mut(id)
        } else {
            self.sparse.get_mut(&id)
        };
        let Some(rec) = rec else {
            return;
        };
        let was_running = rec.running;
        *rec = Rec::default();
        if id >= DENSE_IDS {
            self.sparse.remove(&id);
        }
        if was_running {
            self.running.retain(|&r| r != id);
        }
    }

    /// The top of the heap after dropping stale entries.
    fn peek(&mut self) -> Option<(Key, usize)> {
        while let Some(&Reverse((key, id, ticket))) = self.top() {
            if self.rec(id).ticket == ticket {
                return Some((key, id));
            }
            self.pop();
        }
        None
    }

    /// Takes the running jobs from the caller: those it names run (out of the queue if they
    /// were in it); those the policy thought running that it does not name and that have not
    /// left go back to the queue with `requeue`'s key.
    fn reconcile(&mut self, running: &[JobView], requeue: impl Fn(&Rec, usize) -> Option<Key>) {
        self.decision += 1;
        let decision = self.decision;
        let before = std::mem::take(&mut self.running);
        for job in running {
            let known = self.record(job);
            let rec = self.rec(job.id);
            if rec.mark == decision {
                continue;
            }
            rec.mark = decision;
            rec.ticket = 0;
            rec.running = true;
            if !known {
                self.fresh.push(job.id);
            }
            self.running.push(job.id);
        }
        for id in before {
            let rec = self.rec(id);
            if rec.alive && rec.mark != decision {
                rec.running = false;
                rec.slice_start = None;
                if let Some(key) = requeue(rec, id) {
                    self.enqueue(id, key);
                }
            }
        }
    }

    /// First fit in key order over the queue, merged with `extra` (candidates that are not in
    /// the queue, sorted by key): pops until the CPUs are used up, taking each job that fits
    /// (it runs then) and putting back the others. Returns the `extra` ones not taken.
    fn first_fit(
        &mut self,
        room: &mut Room,
        out: &mut Vec<usize>,
        extra: &[(Key, usize)],
    ) -> Vec<usize> {
        let mut left = Vec::new();
        let mut next_extra = 0;
        while room.cpus > 0 {
            let top = self.peek();
            let from_extra = match (top, extra.get(next_extra)) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((key, _)), Some(&(extra_key, _))) => extra_key < key,
            };
            let id = if from_extra {
                next_extra += 1;
                extra[next_extra - 1].1
            } else {
                let Some(entry) = self.pop() else {
                    break;
                };
                let id = entry.0 .1;
                let rec = self.rec(id);
                if !room.take_parts(rec.vcpus, rec.memory) {
                    self.skipped.push(entry);
                    continue;
                }
                rec.ticket = 0;
                rec.running = true;
                self.running.push(id);
                out.push(id);
                continue;
            };
            let rec = self.rec(id);
            if room.take_parts(rec.vcpus, rec.memory) {
                rec.running = true;
                self.running.push(id);
                out.push(id);
            } else {
                left.push(id);
            }
        }
        left.extend(extra[next_extra..].iter().map(|&(_, id)| id));
        let mut skipped = std::mem::take(&mut self.skipped);
        match &mut self.fifo {
            None => self.heap.extend(skipped.drain(..)),
            // They came off the front in order: back to the front in reverse.
            Some(fifo) => skipped.drain(..).rev().for_each(|e| fifo.push_front(e)),
        }
        self.skipped = skipped;
        left
    }

    /// The non-preemptive policies: running jobs keep running, free room goes to the queue in
    /// key order.
    fn decide_non_preemptive(
        &mut self,
        running: &[JobView],
        capacity: Capacity,
        key: impl Fn(&Rec, usize) -> Key,
    ) -> Vec<usize> {
        self.reconcile(running, |rec, id| Some(key(rec, id)));
        self.fresh.clear();
        let mut room = Room::new(capacity);
        let mut out = Vec::with_capacity(self.running.len() + 1);
        for k in 0..self.running.len() {
            let id = self.running[k];
            let rec = self.rec(id);
            room.force_parts(rec.vcpus, rec.memory);
            out.push(id);
        }
        self.first_fit(&mut room, &mut out, &[]);
        out
    }
}

fn fcfs_key(rec: &Rec, id: usize) -> Key {
    (rec.arrival, id as u64, 0, 0)
}

fn sjf_key(rec: &Rec, id: usize) -> Key {
    (rec.estimate, rec.arrival, id as u64, 0)
}

/// SRTF's key; `running` sorts first among equal remaining estimates.
fn srtf_key(rec: &Rec, id: usize, running: bool) -> Key {
    (rec.remaining, u64::from(!running), rec.arrival, id)
}

/// Incremental arrival for the policies whose key is known at arrival.
fn arrive_keyed(ready: &mut Ready, job: &JobView, key: impl Fn(&Rec, usize) -> Key) {
    if ready.record(job) {
        return; // already known
    }
    let k = key(ready.rec(job.id), job.id);
    ready.enqueue(job.id, k);
}

/// Incremental restate: a queued job's key may change (SRTF's remaining estimate).
fn restate_keyed(ready: &mut Ready, job: &JobView, key: impl Fn(&Rec, usize) -> Key) {
    let rec = ready.rec(job.id);
    if !rec.alive || rec.running {
        return;
    }
    let queued = rec.ticket != 0;
    ready.record(job);
    if queued {
        let k = key(ready.rec(job.id), job.id);
        ready.enqueue(job.id, k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: usize, arrival: u64, estimate: u64, state: JobState) -> JobView {
        JobView {
            id,
            arrival_ms: arrival,
            estimate_ms: estimate,
            remaining_estimate_ms: estimate,
            priority: 0,
            vcpus: 1,
            memory_bytes: 1 << 20,
            state,
            last_run_ms: None,
        }
    }

    #[test]
    fn fleet_policy_by_name() {
        for name in ["fcfs", "sjf", "srtf", "FCFS"] {
            assert!(policy_by_name(name, None).is_ok());
            assert!(matches!(
                policy_by_name(name, Some(4)),
                Err(FleetError::QuantumNotUsed(_))
            ));
        }
        assert_eq!(policy_by_name("rr", Some(4)).unwrap().quantum_ms(), Some(4));
        assert!(matches!(
            policy_by_name("rr", None),
            Err(FleetError::NoQuantum)
        ));
        assert!(matches!(
            policy_by_name("rr", Some(0)),
            Err(FleetError::ZeroQuantum)
        ));
        assert!(matches!(
            policy_by_name("lottery", None),
            Err(FleetError::UnknownPolicy(_))
        ));
    }

    #[test]
    fn fleet_policy_fcfs_keeps_running_jobs() {
        let mut fcfs = Fcfs::default();
        let jobs = [
            view(0, 0, 10, JobState::Running),
            view(1, 1, 1, JobState::Waiting),
            view(2, 2, 1, JobState::Waiting),
            view(3, 9, 1, JobState::Waiting),
        ];
        assert_eq!(fcfs.select(3, &jobs, Capacity::cpus(2)), vec![0, 1]);
        assert_eq!(fcfs.select(3, &jobs, Capacity::cpus(1)), vec![0]);
    }

    #[test]
    fn fleet_policy_sjf_and_srtf_choose_the_shortest() {
        let jobs = [
            view(0, 0, 10, JobState::Running),
            view(1, 1, 5, JobState::Waiting),
            view(2, 2, 3, JobState::Waiting),
        ];
        assert_eq!(
            Sjf::default().select(2, &jobs, Capacity::cpus(2)),
            vec![0, 2]
        );
        // SRTF: both new ones are shorter than the running one, which is preempted.
        assert_eq!(
            Srtf::default().select(2, &jobs, Capacity::cpus(2)),
            vec![2, 1]
        );
        // A tie keeps the running job.
        let tie = [
            view(0, 0, 4, JobState::Running),
            view(1, 0, 4, JobState::Waiting),
        ];
        assert_eq!(Srtf::default().select(1, &tie, Capacity::cpus(1)), vec![0]);
    }

    #[test]
    fn fleet_policy_first_fit_skips_a_job_that_does_not_fit() {
        let mut jobs = [
            view(0, 0, 1, JobState::Waiting),
            view(1, 1, 1, JobState::Waiting),
            view(2, 2, 1, JobState::Waiting),
        ];
        jobs[0].memory_bytes = 600;
        jobs[1].memory_bytes = 600;
        jobs[2].memory_bytes = 300;
        let host = Capacity {
            cpus: 4,
            memory_bytes: 1000,
        };
        assert_eq!(Fcfs::default().select(5, &jobs, host), vec![0, 2]);
    }
}
