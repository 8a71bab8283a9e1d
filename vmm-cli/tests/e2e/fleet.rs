//! Tier 3 for the fleet manager: three real guests (`guest.test=busy guest.work=N`: N units of
//! CPU work, `BUSY k/N` after each, then power-off) on a host of one CPU, through FCFS, SRTF
//! and RR, checking the completion order, the preemptions and that every job completed; then
//! SRTF on a host whose memory holds one guest only, so that the preempted job is hibernated
//! (snapshot, process ended, restored later) and must go on with its work, not start over.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmm_core::fleet::runner::{run_fleet, FleetReport, JobRecord, Outcome, RunOptions};
use vmm_core::fleet::{policy_by_name, Capacity, JobsFile};

use super::{guest, require_real_kvm, QUIET};

/// One job of the workload: name, arrival, estimate, units of work.
#[derive(Clone)]
struct Spec {
    name: &'static str,
    arrival_ms: u64,
    estimate_ms: u64,
    work: u32,
}

/// A long job first, then a short and a medium one.
const WORKLOAD: [Spec; 3] = [
    Spec {
        name: "long",
        arrival_ms: 0,
        estimate_ms: 20_000,
        work: 12,
    },
    Spec {
        name: "short",
        arrival_ms: 1_000,
        estimate_ms: 6_000,
        work: 3,
    },
    Spec {
        name: "medium",
        arrival_ms: 2_000,
        estimate_ms: 8_000,
        work: 6,
    },
];

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-e2e-fleet-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the jobs file for `specs` and runs it under `policy` on one CPU and `memory`.
/// `on_line` sees every event line as it is logged.
fn run(
    dir: &Path,
    specs: &[Spec],
    policy: &str,
    quantum_ms: Option<u64>,
    memory: u64,
    on_line: Box<dyn FnMut(&str) + Send>,
) -> FleetReport {
    run_on(dir, specs, policy, quantum_ms, (1, memory), false, on_line)
}

/// [`run`] on a host of `cpus` and `memory` bytes, with KSM when `ksm`.
fn run_on(
    dir: &Path,
    specs: &[Spec],
    policy: &str,
    quantum_ms: Option<u64>,
    (cpus, memory): (u64, u64),
    ksm: bool,
    on_line: Box<dyn FnMut(&str) + Send>,
) -> FleetReport {
    require_real_kvm();
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    let jobs: Vec<serde_json::Value> = specs
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "arrival_ms": s.arrival_ms,
                "estimate_ms": s.estimate_ms,
                "vm": {
                    "kernel": kernel,
                    "initrd": initrd,
                    "memory": "64M",
                    "vcpus": 1,
                    "append": format!("{QUIET} guest.test=busy guest.work={}", s.work),
                },
            })
        })
        .collect();
    let path = dir.join("jobs.json");
    std::fs::write(&path, serde_json::json!({ "jobs": jobs }).to_string()).unwrap();
    let capacity = Capacity {
        cpus,
        memory_bytes: memory,
    };
    let jobs = JobsFile::from_file(&path)
        .unwrap()
        .validate(capacity, true)
        .unwrap();
    let mut policy = policy_by_name(policy, quantum_ms).unwrap();
    let mut on_line = on_line;
    run_fleet(
        jobs,
        policy.as_mut(),
        capacity,
        RunOptions {
            vmm_binary: PathBuf::from(env!("CARGO_BIN_EXE_vmm")),
            work_dir: dir.join("work"),
            ksm,
            max_run_ms: Some(180_000),
            log: Box::new(move |line| {
                eprintln!("fleet: {line}");
                on_line(line);
            }),
        },
    )
    .unwrap()
}

/// Runs `scenario`; inside the nested test host, where a boot fails now and then, once more
/// after a failure (the first one printed).
fn with_retry(scenario: impl Fn() + std::panic::RefUnwindSafe) {
    if std::env::var_os("TESTHOST").is_none() {
        return scenario();
    }
    if std::panic::catch_unwind(&scenario).is_err() {
        eprintln!("e2e: RETRYING the fleet run after a failure (first failure above)");
        scenario();
    }
}

fn job<'a>(report: &'a FleetReport, name: &str) -> &'a JobRecord {
    report
        .jobs
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name} in {report:?}"))
}

/// The job names in the order they finished.
fn completion_order(report: &FleetReport) -> Vec<String> {
    let mut done: Vec<&JobRecord> = report.jobs.iter().collect();
    done.sort_by_key(|j| j.finish_ms);
    done.iter().map(|j| j.name.clone()).collect()
}

/// The simulator, given the same jobs (estimates as run times) and policy on the same host,
/// finishes them in the same order with the same preemptions per job as the real run.
fn assert_matches_simulation(report: &FleetReport, specs: &[Spec], policy: &str, cpus: u64) {
    let jobs: Vec<serde_json::Value> = specs
        .iter()
        .map(|s| serde_json::json!({"name": s.name, "arrival_ms": s.arrival_ms, "estimate_ms": s.estimate_ms}))
        .collect();
    let file: JobsFile = serde_json::json!({ "jobs": jobs })
        .to_string()
        .parse()
        .unwrap();
    let capacity = Capacity {
        cpus,
        memory_bytes: 1 << 30,
    };
    let jobs = file.validate(capacity, false).unwrap();
    let mut policy = policy_by_name(policy, None).unwrap();
    let schedule = vmm_core::fleet::simulate(&jobs, policy.as_mut(), capacity);
    let mut simulated: Vec<_> = schedule.jobs.iter().collect();
    simulated.sort_by_key(|j| j.finish_ms);
    let order: Vec<String> = simulated.iter().map(|j| j.name.clone()).collect();
    assert_eq!(order, completion_order(report), "simulated vs real order");
    for j in &schedule.jobs {
        assert_eq!(
            j.preemptions,
            job(report, &j.name).preemptions,
            "preemptions of {} (simulated vs real)",
            j.name
        );
    }
}

/// Every job Done, and its serial log counts BUSY 1/N .. N/N once each, then BUSY-DONE N.
fn assert_all_completed(report: &FleetReport, specs: &[Spec]) {
    for spec in specs {
        let record = job(report, spec.name);
        assert_eq!(record.outcome, Outcome::Done, "{}: {report:#?}", spec.name);
        let numbers = busy_numbers(&record.serial_log);
        let expected: Vec<u32> = (1..=spec.work).collect();
        assert_eq!(numbers, expected, "{}: BUSY lines", spec.name);
        let log = std::fs::read_to_string(&record.serial_log).unwrap();
        assert!(
            log.contains(&format!("BUSY-DONE {}", spec.work)),
            "{}: {log}",
            spec.name
        );
    }
}

/// The k of every `BUSY k/N` line in a serial log.
fn busy_numbers(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("BUSY "))
        .filter_map(|rest| rest.split('/').next()?.trim().parse().ok())
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn fleet_fcfs_runs_in_arrival_order_without_preemption() {
    with_retry(|| {
        let dir = scratch("fcfs");
        let report = run(&dir, &WORKLOAD, "fcfs", None, 1 << 30, Box::new(|_| {}));
        assert_all_completed(&report, &WORKLOAD);
        assert_eq!(
            completion_order(&report),
            names(&["long", "short", "medium"])
        );
        assert!(
            report.jobs.iter().all(|j| j.preemptions == 0),
            "{report:#?}"
        );
        assert_matches_simulation(&report, &WORKLOAD, "fcfs", 1);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn fleet_sjf_runs_the_shortest_waiting_job_next_without_preemption() {
    with_retry(|| {
        let dir = scratch("sjf");
        // medium arrives before short: FCFS would run it first, SJF picks short.
        let specs = [
            WORKLOAD[0].clone(),
            Spec {
                arrival_ms: 1_000,
                ..WORKLOAD[2].clone()
            },
            Spec {
                arrival_ms: 2_000,
                ..WORKLOAD[1].clone()
            },
        ];
        let report = run(&dir, &specs, "sjf", None, 1 << 30, Box::new(|_| {}));
        assert_all_completed(&report, &specs);
        // long runs first (alone at t=0) and is not preempted; when it ends, medium and short
        // both wait and the shorter estimate goes first.
        assert_eq!(
            completion_order(&report),
            names(&["long", "short", "medium"])
        );
        assert!(
            report.jobs.iter().all(|j| j.preemptions == 0),
            "{report:#?}"
        );
        assert_matches_simulation(&report, &specs, "sjf", 1);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn fleet_ksm_merges_identical_guests_and_reports_it() {
    with_retry(|| {
        let dir = scratch("ksm");
        let specs = [
            Spec {
                name: "a",
                arrival_ms: 0,
                estimate_ms: 20_000,
                work: 40,
            },
            Spec {
                name: "b",
                arrival_ms: 0,
                estimate_ms: 20_000,
                work: 40,
            },
        ];
        let before = std::fs::read_to_string("/sys/kernel/mm/ksm/run").unwrap_or_default();
        let report = run_on(
            &dir,
            &specs,
            "fcfs",
            None,
            (2, 1 << 30),
            true,
            Box::new(|_| {}),
        );
        assert_all_completed(&report, &specs);
        let shared = report.ksm_pages_sharing_max.unwrap_or(0);
        assert!(
            shared > 0,
            "KSM shared no pages between two identical guests: {report:#?}"
        );
        assert_eq!(
            std::fs::read_to_string("/sys/kernel/mm/ksm/run").unwrap_or_default(),
            before,
            "the KSM switch is restored"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn fleet_srtf_preempts_the_long_job_for_shorter_ones() {
    with_retry(|| {
        let dir = scratch("srtf");
        let report = run(&dir, &WORKLOAD, "srtf", None, 1 << 30, Box::new(|_| {}));
        assert_all_completed(&report, &WORKLOAD);
        // short arrives while long runs (shorter: long is paused); medium arrives while short
        // runs (longer: no preemption); then medium (shorter remaining estimate), then long.
        assert_eq!(
            completion_order(&report),
            names(&["short", "medium", "long"])
        );
        assert_eq!(job(&report, "long").preemptions, 1, "{report:#?}");
        assert_eq!(job(&report, "long").hibernations, 0, "{report:#?}");
        assert_eq!(job(&report, "short").preemptions, 0, "{report:#?}");
        assert_eq!(job(&report, "medium").preemptions, 0, "{report:#?}");
        assert!(report.mean_latency_us("pause").is_some());
        assert!(report.mean_latency_us("resume").is_some());
        assert_matches_simulation(&report, &WORKLOAD, "srtf", 1);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn fleet_rr_takes_turns() {
    with_retry(|| {
        let dir = scratch("rr");
        let report = run(
            &dir,
            &WORKLOAD,
            "rr",
            Some(2_000),
            1 << 30,
            Box::new(|_| {}),
        );
        assert_all_completed(&report, &WORKLOAD);
        // With a 2 s quantum and boots of several seconds every job is preempted at least once
        // while others wait; the shortest job finishes first.
        assert!(job(&report, "long").preemptions >= 1, "{report:#?}");
        assert_eq!(completion_order(&report)[0], "short", "{report:#?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn fleet_hibernated_job_resumes_its_work() {
    with_retry(|| {
        let dir = scratch("hibernate");
        let specs = [
            Spec {
                name: "long",
                arrival_ms: 0,
                estimate_ms: 60_000,
                work: 150,
            },
            Spec {
                name: "short",
                arrival_ms: 12_000,
                estimate_ms: 3_000,
                work: 3,
            },
        ];
        // The long job's BUSY count when it was hibernated, read from its serial log then.
        let at_hibernation = Arc::new(Mutex::new(Vec::<usize>::new()));
        let seen = at_hibernation.clone();
        let long_log = dir.join("work").join("0-long.log");
        let on_line = Box::new(move |line: &str| {
            if line.contains("hibernate long") {
                seen.lock().unwrap().push(busy_numbers(&long_log).len());
            }
        });
        // Room for one 64 MiB guest only: the paused long job must leave memory to the short one.
        let report = run(&dir, &specs, "srtf", None, 100 << 20, on_line);
        assert_all_completed(&report, &specs);
        assert_eq!(completion_order(&report), names(&["short", "long"]));
        let long = job(&report, "long");
        assert_eq!(long.hibernations, 1, "{report:#?}");
        assert_eq!(
            long.preemptions, 1,
            "paused once, then hibernated: {report:#?}"
        );
        let counts = at_hibernation.lock().unwrap().clone();
        assert_eq!(counts.len(), 1, "one hibernation seen: {counts:?}");
        assert!(
            counts[0] >= 1 && counts[0] < 150,
            "the long job should have done some but not all of its work when hibernated: {} units",
            counts[0]
        );
        // assert_all_completed checked BUSY 1..150 once each: after the restore it went on from
        // counts[0] + 1, not from 1.
        let _ = std::fs::remove_dir_all(&dir);
    });
}
