//! Arbitrary job sets and hosts (generated with `arbitrary`): up to 64 jobs with arrivals (ties
//! included), bursts and estimates (which may be wrong either way, or absent), vCPUs and memory
//! that fit the empty host, on 1 to 8 CPUs with unlimited or scarce memory; round robin gets an
//! arbitrary quantum.
//!
//! Every built-in policy (FCFS, SJF, SRTF, RR) is simulated and its schedule checked
//! (`common/schedule.rs`): every job finishes with exactly its burst of service, no job runs
//! before it arrives or twice at once, the running jobs fit the host's CPUs and memory at every
//! instant with one slot each, no arrived job waits while it would fit (first-fit admission),
//! FCFS and SJF never preempt (one interval per job), and each incremental policy gives exactly
//! the schedule of its reference `select`.
//!
//! Times stay below 2^40 ms: with arrivals near `u64::MAX` the simulator's clock saturates,
//! and a schedule past the end of time is not a meaningful input.

#![no_main]

#[path = "common/schedule.rs"]
mod schedule;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vmm_fleet::{Capacity, Job};

#[derive(Arbitrary, Debug)]
struct Input {
    cpus: u8,
    /// `None`: unlimited memory; else that many 256 MiB units (at least one).
    memory_units: Option<u8>,
    quantum: u16,
    start: u32,
    jobs: Vec<JobInput>,
}

#[derive(Arbitrary, Debug)]
struct JobInput {
    gap: u8,
    burst: u16,
    estimate: Option<u16>,
    vcpus: u8,
    memory_units: u8,
}

const UNIT: u64 = 256 << 20;

fuzz_target!(|input: Input| {
    let cpus = 1 + u64::from(input.cpus % 8);
    let host_units = input.memory_units.map(|u| 1 + u64::from(u % 8));
    let capacity = Capacity {
        cpus,
        memory_bytes: host_units.map_or(u64::MAX, |u| u * UNIT),
    };
    let mut arrival = u64::from(input.start);
    let jobs: Vec<Job> = input
        .jobs
        .iter()
        .take(64)
        .enumerate()
        .map(|(id, j)| {
            // Small gaps make many ties (equal arrivals); a big one now and then leaves the host
            // idle.
            arrival += if j.gap > 250 {
                u64::from(j.gap) * 1000
            } else {
                u64::from(j.gap % 8)
            };
            let burst = u64::from(j.burst % 600);
            let units = 1 + u64::from(j.memory_units % 4);
            Job {
                id,
                name: format!("j{id}"),
                arrival_ms: arrival,
                estimate_ms: j.estimate.map_or(burst, |e| u64::from(e % 600)),
                burst_ms: Some(burst),
                priority: 0,
                vcpus: 1 + u64::from(j.vcpus) % cpus,
                memory_bytes: host_units.map_or(units, |h| units.min(h)) * UNIT,
                vm: vmm_api::VmConfig::default(),
            }
        })
        .collect();
    let quantum = 1 + u64::from(input.quantum % 512);
    schedule::check_all_policies(&jobs, capacity, quantum);
});
