//! A discrete-event simulator: runs a [`Policy`] over jobs on a virtual clock, with each job's
//! `burst_ms` as its true run time, and records the [`Schedule`].
//!
//! Events are arrivals (jobs sorted by arrival), completions and quantum expiries (a binary
//! heap); all events at one instant are applied, then the policy makes one decision. The policy
//! sees only the active jobs (arrived, not ended), kept in place between decisions. A policy that
//! is [`Policy::incremental`] (all the built-in ones) is told of each arrival and completion and
//! sees only the running jobs at a decision, so a decision costs O(log n) per job started or
//! preempted; any other policy gets `select` over all active jobs, O(active jobs) per decision.
//! For policies that never preempt, an arrival while every CPU is busy needs no decision and gets
//! none.
//!
//! Memory is modelled as in the real runner: a preempted job stays resident (Paused) until the
//! running jobs plus the paused ones need more than the host's memory; then the paused job that
//! stopped longest ago is hibernated (its memory freed) until they fit.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use super::jobs::{Capacity, Job};
use super::policy::{JobState, JobView, Policy};
use super::report::{Interval, JobOutcome, Schedule};

const NONE: usize = usize::MAX;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Completion,
    Quantum,
}

/// Per-job simulation state.
struct SimJob {
    burst: u64,
    /// Run time before the current run.
    ran: u64,
    run_start: u64,
    slice_start: u64,
    /// Bumped at every start: events of an older run are stale.
    epoch: u32,
    lane: usize,
    state: JobState,
    paused_at: u64,
    outcome: JobOutcome,
}

/// Runs `policy` over `jobs` on a host of `capacity` and returns the schedule. Job ids in the
/// policy's views are positions in `jobs`; the outcomes carry each [`Job::id`]. Selections over
/// capacity or naming unknown jobs are trimmed, never trusted; jobs a policy leaves unscheduled
/// with nothing else to happen are reported as failed.
pub fn simulate(jobs: &[Job], policy: &mut dyn Policy, capacity: Capacity) -> Schedule {
    let n = jobs.len();
    let quantum = policy.quantum_ms().map(|q| q.max(1));
    let preemptive = policy.preemptive();
    let incremental = policy.incremental();
    let mut sim: Vec<SimJob> = jobs
        .iter()
        .map(|job| SimJob {
            burst: job.sim_burst_ms(),
            ran: 0,
            run_start: 0,
            slice_start: 0,
            epoch: 0,
            lane: NONE,
            state: JobState::Waiting,
            paused_at: 0,
            outcome: JobOutcome {
                id: job.id,
                name: job.name.clone(),
                arrival_ms: job.arrival_ms,
                burst_ms: job.sim_burst_ms(),
                start_ms: None,
                finish_ms: None,
                waiting_ms: None,
                turnaround_ms: None,
                response_ms: None,
                preemptions: 0,
                hibernations: 0,
                failed: false,
            },
        })
        .collect();
    let mut by_arrival: Vec<usize> = (0..n).collect();
    by_arrival.sort_by_key(|&i| (jobs[i].arrival_ms, i));
    let mut next_arrival = 0;

    let mut events: BinaryHeap<Reverse<(u64, Kind, usize, u32)>> = BinaryHeap::new();
    let mut views: Vec<JobView> = Vec::new();
    let mut pos = vec![NONE; n];
    let mut running: Vec<usize> = Vec::new();
    let mut mark = vec![0u64; n];
    let mut generation = 0u64;
    let mut free_lanes: BinaryHeap<Reverse<usize>> = BinaryHeap::new();
    let mut lanes = 0usize;
    let mut intervals: Vec<Interval> = Vec::new();
    let mut paused: BTreeSet<(u64, usize)> = BTreeSet::new();
    let mut paused_memory = 0u64;
    let mut used_cpus = 0u64;
    let mut decisions = 0u64;
    let mut selected: Vec<usize> = Vec::new();
    let mut running_views: Vec<JobView> = Vec::new();

    loop {
        let next_event = events.peek().map(|Reverse((t, ..))| *t);
        let arrival = by_arrival.get(next_arrival).map(|&i| jobs[i].arrival_ms);
        let now = match (next_event, arrival) {
            (Some(a), Some(b)) => a.min(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => break,
        };
        let mut must_decide = false;
        let mut arrived = false;
        while let Some(&Reverse((t, kind, i, epoch))) = events.peek() {
            if t != now {
                break;
            }
            events.pop();
            let job = &mut sim[i];
            if job.epoch != epoch || job.state != JobState::Running {
                continue;
            }
            must_decide = true;
            if kind == Kind::Completion {
                stop_run(job, i, now, &mut intervals, &mut free_lanes);
                job.state = JobState::Done;
                job.outcome.finish_ms = Some(now);
                used_cpus = used_cpus.saturating_sub(jobs[i].vcpus);
                running.retain(|&r| r != i);
                if incremental {
                    policy.leave(i);
                }
                let p = pos[i];
                views.swap_remove(p);
                if let Some(moved) = views.get(p) {
                    pos[moved.id] = p;
                }
                pos[i] = NONE;
            }
        }
        while let Some(&i) = by_arrival.get(next_arrival) {
            if jobs[i].arrival_ms != now {
                break;
            }
            next_arrival += 1;
            arrived = true;
            pos[i] = views.len();
            views.push(JobView {
                id: i,
                arrival_ms: jobs[i].arrival_ms,
                estimate_ms: jobs[i].estimate_ms,
                remaining_estimate_ms: jobs[i].estimate_ms,
                priority: jobs[i].priority,
                vcpus: jobs[i].vcpus,
                memory_bytes: jobs[i].memory_bytes,
                state: JobState::Waiting,
                last_run_ms: None,
            });
            if incremental {
                policy.arrive(&views[pos[i]]);
            }
        }
        if arrived && (preemptive || used_cpus < capacity.cpus) {
            must_decide = true;
        }
        if !must_decide {
            continue;
        }

        // Decide.
        for &i in &running {
            let ran = sim[i].ran + (now - sim[i].run_start);
            views[pos[i]].remaining_estimate_ms = jobs[i].estimate_ms.saturating_sub(ran);
        }
        decisions += 1;
        let choice = if incremental {
            running_views.clear();
            running_views.extend(running.iter().map(|&i| views[pos[i]].clone()));
            policy.decide(now, &running_views, capacity)
        } else {
            policy.select(now, &views, capacity)
        };
        generation += 1;
        selected.clear();
        let (mut cpus, mut memory) = (0u64, 0u64);
        for id in choice {
            if id >= n || pos[id] == NONE || mark[id] == generation {
                continue;
            }
            let (c, m) = (
                cpus + jobs[id].vcpus,
                memory.saturating_add(jobs[id].memory_bytes),
            );
            if c <= capacity.cpus && m <= capacity.memory_bytes {
                cpus = c;
                memory = m;
                mark[id] = generation;
                selected.push(id);
            }
        }
        // Preempt the running jobs not selected.
        let mut r = 0;
        while r < running.len() {
            let i = running[r];
            if mark[i] == generation {
                r += 1;
                continue;
            }
            running.swap_remove(r);
            let job = &mut sim[i];
            stop_run(job, i, now, &mut intervals, &mut free_lanes);
            job.state = JobState::Paused;
            job.paused_at = now;
            job.outcome.preemptions += 1;
            views[pos[i]].state = JobState::Paused;
            paused.insert((now, i));
            paused_memory = paused_memory.saturating_add(jobs[i].memory_bytes);
        }
        // Start (or resume) the selected jobs not running; renew expired quanta.
        for &i in &selected {
            let job = &mut sim[i];
            if job.state == JobState::Running {
                if let Some(q) = quantum {
                    if job.slice_start.saturating_add(q) <= now {
                        job.slice_start = now;
                        events.push(Reverse((
                            now.saturating_add(q),
                            Kind::Quantum,
                            i,
                            job.epoch,
                        )));
                    }
                }
                continue;
            }
            if job.state == JobState::Paused && paused.remove(&(job.paused_at, i)) {
                paused_memory = paused_memory.saturating_sub(jobs[i].memory_bytes);
            }
            job.state = JobState::Running;
            job.run_start = now;
            job.slice_start = now;
            job.epoch = job.epoch.wrapping_add(1);
            job.lane = match free_lanes.pop() {
                Some(Reverse(lane)) => lane,
                None => {
                    lanes += 1;
                    lanes - 1
                }
            };
            job.outcome.start_ms.get_or_insert(now);
            let left = job.burst.saturating_sub(job.ran);
            events.push(Reverse((
                now.saturating_add(left),
                Kind::Completion,
                i,
                job.epoch,
            )));
            if let Some(q) = quantum {
                events.push(Reverse((
                    now.saturating_add(q),
                    Kind::Quantum,
                    i,
                    job.epoch,
                )));
            }
            let view = &mut views[pos[i]];
            view.state = JobState::Running;
            view.last_run_ms = Some(now);
            running.push(i);
        }
        used_cpus = cpus;
        // Hibernate paused jobs, oldest first, while memory is short.
        while memory.saturating_add(paused_memory) > capacity.memory_bytes {
            let Some((_, i)) = paused.pop_first() else {
                break;
            };
            paused_memory = paused_memory.saturating_sub(jobs[i].memory_bytes);
            sim[i].state = JobState::Hibernated;
            sim[i].outcome.hibernations += 1;
            views[pos[i]].state = JobState::Hibernated;
        }
    }

    let outcomes = sim
        .into_iter()
        .map(|job| {
            let mut outcome = job.outcome;
            outcome.failed = job.state != JobState::Done;
            outcome.derive_times();
            outcome
        })
        .collect();
    intervals.sort_unstable_by_key(|iv| (iv.start_ms, iv.slot));
    for iv in &mut intervals {
        iv.job = jobs[iv.job].id;
    }
    Schedule::new(
        policy.name(),
        quantum,
        capacity,
        outcomes,
        intervals,
        decisions,
    )
}

/// Ends a job's current run at `now`: records the interval and frees its lane.
fn stop_run(
    job: &mut SimJob,
    index: usize,
    now: u64,
    intervals: &mut Vec<Interval>,
    free_lanes: &mut BinaryHeap<Reverse<usize>>,
) {
    if now > job.run_start {
        intervals.push(Interval {
            job: index,
            start_ms: job.run_start,
            end_ms: now,
            slot: job.lane,
        });
    }
    job.ran += now - job.run_start;
    free_lanes.push(Reverse(job.lane));
    job.lane = NONE;
}

/// A reproducible synthetic workload for tests and benchmarks: `count` jobs, 1 vCPU and 256M
/// each, arrivals spaced 0..2×`mean_gap_ms` apart and bursts of 1..2×`mean_burst_ms`, with
/// estimates off the burst by up to ±25%, from a fixed-seed generator.
pub fn synthetic_jobs(count: usize, seed: u64, mean_gap_ms: u64, mean_burst_ms: u64) -> Vec<Job> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut arrival = 0u64;
    (0..count)
        .map(|id| {
            arrival += next() % (2 * mean_gap_ms + 1);
            let burst = 1 + next() % (2 * mean_burst_ms.max(1));
            let skew = (next() % 51) as i64 - 25;
            let estimate = (burst as i64 + burst as i64 * skew / 100).max(1) as u64;
            Job {
                id,
                name: format!("job{id}"),
                arrival_ms: arrival,
                estimate_ms: estimate,
                burst_ms: Some(burst),
                priority: 0,
                vcpus: 1,
                memory_bytes: 256 << 20,
                vm: vmm_api::VmConfig::default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::jobs::JobsFile;
    use super::super::policy::{policy_by_name, SelectOnly};
    use super::super::report::gantt_svg;
    use super::*;

    /// Jobs from (name, arrival, burst), 1 vCPU and 1M each, estimate = burst.
    fn jobs(list: &[(&str, u64, u64)]) -> Vec<Job> {
        list.iter()
            .enumerate()
            .map(|(id, &(name, arrival, burst))| Job {
                id,
                name: name.to_string(),
                arrival_ms: arrival,
                estimate_ms: burst,
                burst_ms: Some(burst),
                priority: 0,
                vcpus: 1,
                memory_bytes: 1 << 20,
                vm: vmm_api::VmConfig::default(),
            })
            .collect()
    }

    fn run(jobs: &[Job], policy: &str, quantum: Option<u64>, capacity: Capacity) -> Schedule {
        let mut policy = policy_by_name(policy, quantum).unwrap();
        simulate(jobs, policy.as_mut(), capacity)
    }

    /// The order in which jobs first start, by name.
    fn order(s: &Schedule) -> Vec<&str> {
        let mut started: Vec<_> = s.jobs.iter().map(|j| (j.start_ms, j.id, &j.name)).collect();
        started.sort();
        started.into_iter().map(|(_, _, n)| n.as_str()).collect()
    }

    fn finish(s: &Schedule) -> Vec<u64> {
        s.jobs.iter().map(|j| j.finish_ms.unwrap()).collect()
    }

    fn waiting(s: &Schedule) -> Vec<u64> {
        s.jobs.iter().map(|j| j.waiting_ms.unwrap()).collect()
    }

    /// The runs as (name, start, end), in time order.
    fn runs(s: &Schedule) -> Vec<(&str, u64, u64)> {
        s.intervals
            .iter()
            .map(|iv| (s.jobs[iv.job].name.as_str(), iv.start_ms, iv.end_ms))
            .collect()
    }

    /// Silberschatz: P1 24, P2 3, P3 3, all at 0.
    fn convoy() -> Vec<Job> {
        jobs(&[("P1", 0, 24), ("P2", 0, 3), ("P3", 0, 3)])
    }

    /// Stallings: A(0,3) B(2,6) C(4,4) D(6,5) E(8,2) as (arrival, burst).
    fn stallings() -> Vec<Job> {
        jobs(&[
            ("A", 0, 3),
            ("B", 2, 6),
            ("C", 4, 4),
            ("D", 6, 5),
            ("E", 8, 2),
        ])
    }

    #[test]
    fn fleet_fcfs_textbook() {
        // P1 0-24, P2 24-27, P3 27-30: waiting 0, 24, 27 → average 17.
        let s = run(&convoy(), "fcfs", None, Capacity::cpus(1));
        assert_eq!(order(&s), ["P1", "P2", "P3"]);
        assert_eq!(waiting(&s), [0, 24, 27]);
        assert_eq!(s.averages.waiting_ms, 17.0);
        // Stallings: A 0-3, B 3-9, C 9-13, D 13-18, E 18-20. Turnaround 3, 7, 9, 12, 12 → 8.6;
        // waiting 0, 1, 5, 7, 10 → 4.6.
        let s = run(&stallings(), "fcfs", None, Capacity::cpus(1));
        assert_eq!(finish(&s), [3, 9, 13, 18, 20]);
        assert_eq!(waiting(&s), [0, 1, 5, 7, 10]);
        assert!((s.averages.turnaround_ms - 8.6).abs() < 1e-9);
        assert!((s.averages.waiting_ms - 4.6).abs() < 1e-9);
        assert_eq!(s.averages.preemptions, 0);
    }

    #[test]
    fn fleet_sjf_textbook() {
        // Silberschatz: P1 6, P2 8, P3 7, P4 3 at 0: P4 0-3, P1 3-9, P3 9-16, P2 16-24;
        // waiting 3, 16, 9, 0 → 7.
        let s = run(
            &jobs(&[("P1", 0, 6), ("P2", 0, 8), ("P3", 0, 7), ("P4", 0, 3)]),
            "sjf",
            None,
            Capacity::cpus(1),
        );
        assert_eq!(order(&s), ["P4", "P1", "P3", "P2"]);
        assert_eq!(waiting(&s), [3, 16, 9, 0]);
        assert_eq!(s.averages.waiting_ms, 7.0);
        // Stallings: A 0-3, B 3-9 (alone at 3), then E 9-11, C 11-15, D 15-20.
        // Turnaround 3, 7, 11, 14, 3 → 7.6; waiting 0, 1, 7, 9, 1 → 3.6.
        let s = run(&stallings(), "sjf", None, Capacity::cpus(1));
        assert_eq!(order(&s), ["A", "B", "E", "C", "D"]);
        assert_eq!(finish(&s), [3, 9, 15, 20, 11]);
        assert!((s.averages.turnaround_ms - 7.6).abs() < 1e-9);
        assert!((s.averages.waiting_ms - 3.6).abs() < 1e-9);
    }

    #[test]
    fn fleet_srtf_textbook() {
        // Silberschatz: P1(0,8) P2(1,4) P3(2,9) P4(3,5): P1 0-1, P2 1-5, P4 5-10, P1 10-17,
        // P3 17-26; waiting 9, 0, 15, 2 → 6.5; P1 preempted once.
        let s = run(
            &jobs(&[("P1", 0, 8), ("P2", 1, 4), ("P3", 2, 9), ("P4", 3, 5)]),
            "srtf",
            None,
            Capacity::cpus(1),
        );
        assert_eq!(
            runs(&s),
            [
                ("P1", 0, 1),
                ("P2", 1, 5),
                ("P4", 5, 10),
                ("P1", 10, 17),
                ("P3", 17, 26)
            ]
        );
        assert_eq!(waiting(&s), [9, 0, 15, 2]);
        assert_eq!(s.averages.waiting_ms, 6.5);
        assert_eq!(s.jobs[0].preemptions, 1);
        assert_eq!(s.averages.preemptions, 1);
        // Stallings: A 0-3, B 3-4, C 4-8, E 8-10, B 10-15 (ties D at 5, arrived first), D 15-20.
        // Turnaround 3, 13, 4, 14, 2 → 7.2; waiting 0, 7, 0, 9, 0 → 3.2.
        let s = run(&stallings(), "srtf", None, Capacity::cpus(1));
        assert_eq!(
            runs(&s),
            [
                ("A", 0, 3),
                ("B", 3, 4),
                ("C", 4, 8),
                ("E", 8, 10),
                ("B", 10, 15),
                ("D", 15, 20)
            ]
        );
        assert!((s.averages.turnaround_ms - 7.2).abs() < 1e-9);
        assert!((s.averages.waiting_ms - 3.2).abs() < 1e-9);
    }

    #[test]
    fn fleet_rr_textbook() {
        // Silberschatz, q=4: P1 0-4, P2 4-7, P3 7-10, P1 10-30 (alone, new quanta, no
        // preemption); waiting 6, 4, 7 → 17/3.
        let s = run(&convoy(), "rr", Some(4), Capacity::cpus(1));
        assert_eq!(
            runs(&s),
            [("P1", 0, 4), ("P2", 4, 7), ("P3", 7, 10), ("P1", 10, 30)]
        );
        assert_eq!(waiting(&s), [6, 4, 7]);
        assert!((s.averages.waiting_ms - 17.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.averages.preemptions, 1);
        // q=2: P1 0-2, P2 2-4, P3 4-6, P1 6-8, P2 8-9, P3 9-10, P1 10-30;
        // waiting 6, 6, 7 → 19/3; preemptions P1 2, P2 1, P3 1.
        let s = run(&convoy(), "rr", Some(2), Capacity::cpus(1));
        assert_eq!(finish(&s), [30, 9, 10]);
        assert_eq!(waiting(&s), [6, 6, 7]);
        assert_eq!(
            s.jobs.iter().map(|j| j.preemptions).collect::<Vec<_>>(),
            [2, 1, 1]
        );
        // Stallings q=4: A 0-3, B 3-7, C 7-11, D 11-15, B 15-17, E 17-19, D 19-20 (C, D arrived
        // before B's quantum ended, so they queue ahead of it). Turnaround 3, 15, 7, 14, 11 → 10;
        // waiting 0, 9, 3, 9, 9 → 6.
        let s = run(&stallings(), "rr", Some(4), Capacity::cpus(1));
        assert_eq!(
            runs(&s),
            [
                ("A", 0, 3),
                ("B", 3, 7),
                ("C", 7, 11),
                ("D", 11, 15),
                ("B", 15, 17),
                ("E", 17, 19),
                ("D", 19, 20)
            ]
        );
        assert_eq!(s.averages.turnaround_ms, 10.0);
        assert_eq!(s.averages.waiting_ms, 6.0);
        // Stallings q=2: A 0-2, B 2-4 (B arrived at 2, before A went back), A 4-5 (C arrived at
        // 4, queued behind A and before B), C 5-7, B 7-9, D 9-11, C 11-13, E 13-15, B 15-17,
        // D 17-20. Finish 5, 17, 13, 20, 15; waiting 2, 9, 5, 9, 5 → 6; 5 preemptions.
        let s = run(&stallings(), "rr", Some(2), Capacity::cpus(1));
        assert_eq!(finish(&s), [5, 17, 13, 20, 15]);
        assert_eq!(waiting(&s), [2, 9, 5, 9, 5]);
        assert_eq!(s.averages.waiting_ms, 6.0);
        assert_eq!(s.averages.preemptions, 5);
    }

    #[test]
    fn fleet_two_cpus_and_memory() {
        // FCFS on 2 CPUs: a 0-4 and b 0-3 at once, c 3-5 when b ends, d 4-5 when a ends;
        // waiting 0, 0, 3, 3 → 1.5.
        let list = jobs(&[("a", 0, 4), ("b", 0, 3), ("c", 0, 2), ("d", 1, 1)]);
        let s = run(&list, "fcfs", None, Capacity::cpus(2));
        assert_eq!(waiting(&s), [0, 0, 3, 3]);
        assert_eq!(s.averages.waiting_ms, 1.5);
        assert!(s.intervals.iter().all(|iv| iv.slot < 2));
        // Memory 1G: a 512M, b 768M, c 256M. First fit: a and c at 0 (b does not fit beside
        // a), b only when a ends at 10.
        let mut list = jobs(&[("a", 0, 10), ("b", 0, 5), ("c", 0, 5)]);
        list[0].memory_bytes = 512 << 20;
        list[1].memory_bytes = 768 << 20;
        list[2].memory_bytes = 256 << 20;
        let host = Capacity {
            cpus: 2,
            memory_bytes: 1 << 30,
        };
        let s = run(&list, "fcfs", None, host);
        assert_eq!(
            s.jobs
                .iter()
                .map(|j| j.start_ms.unwrap())
                .collect::<Vec<_>>(),
            [0, 10, 0]
        );
        // A 2-vCPU job takes the whole host.
        let mut list = jobs(&[("wide", 0, 4), ("x", 0, 1), ("y", 0, 1)]);
        list[0].vcpus = 2;
        let s = run(&list, "fcfs", None, Capacity::cpus(2));
        assert_eq!(finish(&s), [4, 5, 5]);
    }

    #[test]
    fn fleet_memory_pressure_hibernates() {
        // 1 CPU, 1G: long (768M) is preempted by short (512M) under SRTF; both cannot stay
        // resident, so long is hibernated, then resumed to finish its work.
        let mut list = jobs(&[("long", 0, 10), ("short", 2, 3)]);
        list[0].memory_bytes = 768 << 20;
        list[1].memory_bytes = 512 << 20;
        let host = Capacity {
            cpus: 1,
            memory_bytes: 1 << 30,
        };
        let s = run(&list, "srtf", None, host);
        assert_eq!(runs(&s), [("long", 0, 2), ("short", 2, 5), ("long", 5, 13)]);
        assert_eq!((s.jobs[0].preemptions, s.jobs[0].hibernations), (1, 1));
        assert_eq!(s.averages.hibernations, 1);
    }

    #[test]
    fn fleet_ten_thousand_jobs_all_finish() {
        for (policy, quantum) in [
            ("fcfs", None),
            ("sjf", None),
            ("srtf", None),
            ("rr", Some(4)),
        ] {
            let list = synthetic_jobs(10_000, 7, 10, 35);
            let s = run(&list, policy, quantum, Capacity::cpus(4));
            assert_eq!(s.averages.completed, 10_000, "{policy}");
            assert_eq!(s.averages.failed, 0, "{policy}");
            // Every job ran exactly its burst, never on more than 4 slots at once.
            let mut ran = vec![0u64; list.len()];
            for iv in &s.intervals {
                ran[iv.job] += iv.end_ms - iv.start_ms;
                assert!(iv.slot < 4);
            }
            for job in &list {
                assert_eq!(ran[job.id], job.burst_ms.unwrap(), "{policy} {}", job.name);
            }
        }
    }

    #[test]
    fn fleet_zero_burst_and_json_round_trip() {
        let file: JobsFile = r#"{"jobs": [
            {"name": "zero", "arrival_ms": 0, "burst_ms": 0},
            {"name": "one", "arrival_ms": 0, "estimate_ms": 9, "burst_ms": 1}]}"#
            .parse()
            .unwrap();
        let list = file.validate(Capacity::cpus(1), false).unwrap();
        let s = run(&list, "sjf", None, Capacity::cpus(1));
        assert_eq!(finish(&s), [0, 1]);
        let back: Schedule = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(back.jobs, s.jobs);
        assert_eq!(back.averages, s.averages);
        assert_eq!(back.policy, "sjf");
        let value: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        for key in ["start_ms", "finish_ms", "waiting_ms", "turnaround_ms"] {
            assert!(value["jobs"][1][key].is_u64(), "{key}");
        }
        assert!(value["averages"]["waiting_ms"].is_number());
    }

    #[test]
    fn fleet_gantt_svg_is_well_formed() {
        for list in [stallings(), synthetic_jobs(200, 1, 5, 10)] {
            let s = run(&list, "rr", Some(2), Capacity::cpus(2));
            let svg = gantt_svg(&s);
            assert!(svg.starts_with("<svg"));
            assert!(svg.trim_end().ends_with("</svg>"));
            assert_eq!(svg.matches("<rect").count(), s.intervals.len());
            assert_eq!(svg.matches("<rect").count(), svg.matches("</rect>").count());
            assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        }
        let s = run(&stallings(), "fcfs", None, Capacity::cpus(1));
        let svg = gantt_svg(&s);
        for name in ["A", "B", "E", "ms"] {
            assert!(svg.contains(&format!(">{name}<")) || svg.contains(name));
        }
    }

    /// A seeded xorshift generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    #[test]
    fn fleet_incremental_matches_reference_on_random_jobs() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for round in 0..80u64 {
            let count = 200 + rng.below(400) as usize;
            let cpus = 1 + rng.below(4);
            // Few distinct values make many equal arrivals, estimates and bursts (ties).
            let gap_range = [1, 2, 4, 12][rng.below(4) as usize];
            let burst_range = [1, 3, 8, 40][rng.below(4) as usize];
            let wide = round % 3 == 0;
            let mut arrival = 0;
            let list: Vec<Job> = (0..count)
                .map(|id| {
                    arrival += rng.below(gap_range);
                    let burst = rng.below(burst_range + 1);
                    let estimate = match rng.below(3) {
                        0 => burst,
                        1 => rng.below(burst_range + 1),
                        _ => burst / 2,
                    };
                    Job {
                        id,
                        name: format!("j{id}"),
                        arrival_ms: arrival,
                        estimate_ms: estimate,
                        burst_ms: Some(burst),
                        priority: 0,
                        vcpus: if wide { 1 + rng.below(cpus) } else { 1 },
                        memory_bytes: (1 + rng.below(4)) << 28,
                        vm: vmm_api::VmConfig::default(),
                    }
                })
                .collect();
            // Unlimited memory, or so little that first fit skips jobs and paused jobs are
            // hibernated.
            let memory_bytes = if round % 2 == 0 { u64::MAX } else { 1 << 30 };
            let host = Capacity { cpus, memory_bytes };
            let quanta = [1, 2, 3, burst_range, burst_range + 1, 1000];
            let quantum = quanta[rng.below(quanta.len() as u64) as usize];
            for (name, q) in [
                ("fcfs", None),
                ("sjf", None),
                ("srtf", None),
                ("rr", Some(quantum)),
            ] {
                let fast = run(&list, name, q, host);
                let mut reference = SelectOnly(policy_by_name(name, q).unwrap());
                assert!(!reference.incremental());
                let slow = simulate(&list, &mut reference, host);
                assert_eq!(
                    fast, slow,
                    "round {round}: {name} q={q:?} cpus={cpus} memory={memory_bytes}"
                );
                assert_eq!(slow.averages.completed, count, "{name}");
            }
        }
    }

    /// A policy that only ever wants job 0 (and names a job that does not exist): the others
    /// end up failed, and the simulation still ends.
    struct Lazy;
    impl Policy for Lazy {
        fn name(&self) -> &'static str {
            "lazy"
        }
        fn preemptive(&self) -> bool {
            false
        }
        fn quantum_ms(&self) -> Option<u64> {
            None
        }
        fn select(&mut self, _: u64, _: &[JobView], _: Capacity) -> Vec<usize> {
            vec![99, 0, 0]
        }
    }

    #[test]
    fn fleet_bad_policy_output_is_trimmed() {
        let list = jobs(&[("a", 0, 2), ("b", 0, 2), ("c", 5, 1)]);
        let s = simulate(&list, &mut Lazy, Capacity::cpus(1));
        // Only "a" ever fits; "b" and "c" are left behind and reported failed.
        assert_eq!(s.averages.completed, 1);
        assert_eq!(s.averages.failed, 2);
        assert!(s.jobs[1].failed && s.jobs[1].finish_ms.is_none());
    }
}
