//! Scheduling overhead of the fleet policies, without VMs.
//!
//! - `select/{policy}/{100,10000}`: one decision (`Policy::select`) over that many arrived jobs on
//!   a 4-CPU host, 4 of them running.
//! - `simulate_10000/{policy}`: a whole discrete-event simulation of 10,000 synthetic jobs on 4
//!   CPUs (arrivals every 10 ms on average, bursts of 35 ms on average: about 90% load).
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vmm_fleet::{policy_by_name, sim::synthetic_jobs, simulate, Capacity, JobState, JobView};

const POLICIES: [(&str, Option<u64>); 4] = [
    ("fcfs", None),
    ("sjf", None),
    ("srtf", None),
    ("rr", Some(4)),
];

fn views(count: usize) -> Vec<JobView> {
    synthetic_jobs(count, 3, 0, 50)
        .into_iter()
        .map(|job| JobView {
            id: job.id,
            arrival_ms: job.arrival_ms,
            estimate_ms: job.estimate_ms,
            remaining_estimate_ms: job.estimate_ms,
            priority: job.priority,
            vcpus: job.vcpus,
            memory_bytes: job.memory_bytes,
            state: if job.id < 4 {
                JobState::Running
            } else {
                JobState::Waiting
            },
            last_run_ms: (job.id < 4).then_some(0),
        })
        .collect()
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for count in [100, 10_000] {
        let jobs = views(count);
        for (name, quantum) in POLICIES {
            let mut policy = policy_by_name(name, quantum).expect("policy");
            let mut now = 0u64;
            group.bench_with_input(BenchmarkId::new(name, count), &jobs, |b, jobs| {
                b.iter(|| {
                    now += 1;
                    black_box(policy.select(black_box(now), jobs, Capacity::cpus(4)))
                })
            });
        }
    }
    group.finish();
}

fn whole_simulation(c: &mut Criterion) {
    let jobs = synthetic_jobs(10_000, 7, 10, 35);
    let mut group = c.benchmark_group("simulate_10000");
    group.sample_size(10);
    for (name, quantum) in POLICIES {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut policy = policy_by_name(name, quantum).expect("policy");
                black_box(simulate(&jobs, policy.as_mut(), Capacity::cpus(4)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, select, whole_simulation);
criterion_main!(benches);
