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
use std::collections::{BinaryHeap, HashMap};

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
        if job.vcpus <= self.cpus && job.memory_bytes <= self.memory {
            self.cpus -= job.vcpus;
            self.memory -= job.memory_bytes;
            true
        } else {
            false
        }
    }

    /// Takes the job's share whether or not it fits (jobs kept running).
    fn force(&mut self, job: &JobView) {
        self.cpus = self.cpus.saturating_sub(job.vcpus);
        self.memory = self.memory.saturating_sub(job.memory_bytes);
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
}

/// Shortest job first: the waiting job with the shortest estimate (then arrival, then id) starts
/// when there is room; non-preemptive.
#[derive(Debug, Default)]
pub struct Sjf {
    scratch: Vec<Reverse<(Key, usize)>>,
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
}

/// Shortest remaining time first: the jobs with the shortest remaining estimates run, so a new
/// shorter job preempts the running job with the longest remaining estimate. Ties keep the
/// running job (no needless preemption), then go by arrival and id.
#[derive(Debug, Default)]
pub struct Srtf {
    scratch: Vec<Reverse<(Key, usize)>>,
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
