//! Tier 3 for the fleet manager: three real guests (`guest.test=busy-gated guest.work=N`: at
//! least N units of CPU work, `BUSY k/N` after each, then power-off) on a host of one CPU,
//! through FCFS, SJF, SRTF and RR, checking the completion order, the preemptions and that every
//! job completed; then SRTF on a host whose memory holds one guest only, so that the preempted
//! job is hibernated (snapshot, process ended, restored later) and must go on with its work,
//! not start over; and two identical guests sharing pages under KSM. A run stopped while a
//! guest that handles its ACPI power button runs lets that guest power off.
//!
//! Arrivals are on the runner's clock, and a guest's work takes as long as the machine makes
//! it. So that no outcome depends on that, a job whose work must outlast an event is gated
//! (scripts/guest/tests/gate.sh): it keeps working until the test sees that event in the
//! runner's log and opens its gate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmm_fleet::runner::{run_fleet, FleetReport, FleetStop, JobRecord, Outcome, RunOptions};
use vmm_fleet::{policy_by_name, Capacity, JobsFile};

use super::{guest, require_real_kvm, scaled, Gate, BOOT_TIMEOUT, QUIET};

/// One job of the workload: name, arrival, estimate, units of work, and the runner's event
/// (a log line ending with it) that lets it finish: until then it keeps working. `None`: it
/// ends after its units.
#[derive(Clone)]
struct Spec {
    name: &'static str,
    arrival_ms: u64,
    estimate_ms: u64,
    work: u32,
    until: Option<&'static str>,
}

/// A long job first, then a short and a medium one. None is gated: each test says which.
const WORKLOAD: [Spec; 3] = [
    Spec {
        name: "long",
        arrival_ms: 0,
        estimate_ms: 20_000,
        work: 2,
        until: None,
    },
    Spec {
        name: "short",
        arrival_ms: 1_000,
        estimate_ms: 6_000,
        work: 2,
        until: None,
    },
    Spec {
        name: "medium",
        arrival_ms: 2_000,
        estimate_ms: 8_000,
        work: 2,
        until: None,
    },
];

/// `specs` with the jobs named in `gated` kept working until `event`.
fn gated(specs: &[Spec], gated: &[&str], event: &'static str) -> Vec<Spec> {
    specs
        .iter()
        .map(|s| Spec {
            until: gated.contains(&s.name).then_some(event).or(s.until),
            ..s.clone()
        })
        .collect()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-e2e-fleet-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What a test does when the runner logs a line: it gets the line and the jobs' gates.
type OnLine = Box<dyn FnMut(&str, &HashMap<&'static str, Gate>) + Send>;

/// Writes the jobs file for `specs` and runs it under `policy` on one CPU and `memory`.
fn run(
    dir: &Path,
    specs: &[Spec],
    policy: &str,
    quantum_ms: Option<u64>,
    memory: u64,
) -> FleetReport {
    run_on(
        dir,
        specs,
        policy,
        quantum_ms,
        (1, memory),
        false,
        Box::new(|_, _| {}),
    )
}

/// [`run`] on a host of `cpus` and `memory` bytes, with KSM when `ksm`. Each gated job's gate
/// opens when the runner logs its event; `on_line` sees every line after that.
fn run_on(
    dir: &Path,
    specs: &[Spec],
    policy: &str,
    quantum_ms: Option<u64>,
    (cpus, memory): (u64, u64),
    ksm: bool,
    mut on_line: OnLine,
) -> FleetReport {
    require_real_kvm();
    let (kernel, initrd) = (guest("vmlinux"), super::virtio::test_initramfs());
    let mut gates: HashMap<&'static str, Gate> = HashMap::new();
    let jobs: Vec<serde_json::Value> = specs
        .iter()
        .map(|s| {
            let mut append = format!(
                "{QUIET} guest.test=busy-gated guest.work={} guest.unit={}",
                s.work,
                scaled(2000)
            );
            let mut disks = Vec::new();
            if s.until.is_some() {
                let gate = Gate::new(dir, &format!("{}.gate", s.name));
                disks.push(serde_json::json!({"path": gate.path(), "read_only": true}));
                append.push_str(" guest.gate=/dev/vda");
                gates.insert(s.name, gate);
            }
            serde_json::json!({
                "name": s.name,
                "arrival_ms": s.arrival_ms,
                "estimate_ms": s.estimate_ms,
                "vm": {
                    "kernel": kernel,
                    "initrd": initrd,
                    "memory": "64M",
                    "vcpus": 1,
                    "append": append,
                    "disk": disks,
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
    let events: Vec<(&'static str, &'static str)> = specs
        .iter()
        .filter_map(|s| Some((s.name, s.until?)))
        .collect();
    run_fleet(
        jobs,
        policy.as_mut(),
        capacity,
        RunOptions {
            ksm,
            // An upper bound only: every job ends once the events it waits for have happened.
            max_run_ms: Some(600_000),
            ..run_options(
                dir,
                Box::new(move |line| {
                    eprintln!("fleet: {line}");
                    for (name, event) in &events {
                        if line.ends_with(event) {
                            eprintln!("fleet test: {event}: opening the gate of {name}");
                            gates[name].open();
                        }
                    }
                    on_line(line, &gates);
                }),
            )
        },
    )
    .unwrap()
}

/// The options of a test run in `dir`: this build's vmm, no KSM, no run limit, stopped jobs
/// killed at once, no stop handle, `log` for the lines.
fn run_options(dir: &Path, log: Box<dyn FnMut(&str) + Send>) -> RunOptions {
    RunOptions {
        vmm_binary: PathBuf::from(env!("CARGO_BIN_EXE_vmm")),
        work_dir: dir.join("work"),
        ksm: false,
        max_run_ms: None,
        stop_grace_ms: 0,
        stop: None,
        log,
    }
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
    let schedule = vmm_fleet::simulate(&jobs, policy.as_mut(), capacity);
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

/// Every job Done, and its serial log counts BUSY 1/N .. K/N once each (K >= N units, more
/// for a gated job), then BUSY-DONE K; and its guest booted once (a restore goes on, it does
/// not boot again).
fn assert_all_completed(report: &FleetReport, specs: &[Spec]) {
    for spec in specs {
        let record = job(report, spec.name);
        assert_eq!(record.outcome, Outcome::Done, "{}: {report:#?}", spec.name);
        let numbers = busy_numbers(&record.serial_log);
        let done = numbers.len() as u32;
        assert!(
            done >= spec.work,
            "{}: {done} units of {}",
            spec.name,
            spec.work
        );
        let expected: Vec<u32> = (1..=done).collect();
        assert_eq!(numbers, expected, "{}: BUSY lines", spec.name);
        let log = std::fs::read_to_string(&record.serial_log).unwrap();
        assert!(
            log.lines().any(|l| l.trim() == format!("BUSY-DONE {done}")),
            "{}: {log}",
            spec.name
        );
        assert_eq!(
            log.matches("GUEST-INIT-OK").count(),
            1,
            "{}: one boot expected: {log}",
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
        // long works until all have arrived, so short and medium wait for it.
        let specs = gated(&WORKLOAD, &["long"], "arrive medium");
        let report = run(&dir, &specs, "fcfs", None, 1 << 30);
        assert_all_completed(&report, &specs);
        assert_eq!(
            completion_order(&report),
            names(&["long", "short", "medium"])
        );
        assert!(
            report.jobs.iter().all(|j| j.preemptions == 0),
            "{report:#?}"
        );
        assert_matches_simulation(&report, &specs, "fcfs", 1);
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
        // long works until both others wait.
        let specs = gated(&specs, &["long"], "arrive short");
        let report = run(&dir, &specs, "sjf", None, 1 << 30);
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
        // Both work until the runner has seen KSM share pages between them.
        let twin = |name| Spec {
            name,
            arrival_ms: 0,
            estimate_ms: 20_000,
            work: 2,
            until: Some("pages shared"),
        };
        let specs = [twin("a"), twin("b")];
        let before = std::fs::read_to_string("/sys/kernel/mm/ksm/run").unwrap_or_default();
        let report = run_on(
            &dir,
            &specs,
            "fcfs",
            None,
            (2, 1 << 30),
            true,
            Box::new(|_, _| {}),
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
        // long works until it has been preempted, short until medium has arrived.
        let specs = gated(&WORKLOAD, &["long"], "pause long");
        let specs = gated(&specs, &["short"], "arrive medium");
        let report = run(&dir, &specs, "srtf", None, 1 << 30);
        assert_all_completed(&report, &specs);
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
        assert_matches_simulation(&report, &specs, "srtf", 1);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn fleet_rr_takes_turns() {
    with_retry(|| {
        let dir = scratch("rr");
        // long and medium work until short is done: long is running when its first 2 s
        // quantum ends with short waiting, and short cannot lose the race to finish first.
        let specs = gated(&WORKLOAD, &["long", "medium"], "done short");
        let report = run(&dir, &specs, "rr", Some(2_000), 1 << 30);
        assert_all_completed(&report, &specs);
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
                work: 1,
                // Opened below, when it is hibernated.
                until: Some("(never logged)"),
            },
            Spec {
                name: "short",
                arrival_ms: 12_000,
                estimate_ms: 3_000,
                work: 2,
                until: None,
            },
        ];
        // The long job's BUSY count when it was hibernated, read from its serial log then (its
        // VMM has ended, so the log is complete). Its gate then asks for two more units: the
        // restored guest must go on from there, not from 1.
        let at_hibernation = Arc::new(Mutex::new(Vec::<usize>::new()));
        let seen = at_hibernation.clone();
        let long_log = dir.join("work").join("0-long.log");
        let on_line: OnLine = Box::new(move |line, gates| {
            if line.contains("hibernate long") {
                let units = busy_numbers(&long_log).len();
                seen.lock().unwrap().push(units);
                gates["long"].open_at(units + 2);
            }
        });
        // Room for one 64 MiB guest only: the paused long job must leave memory to the short one.
        let report = run_on(&dir, &specs, "srtf", None, (1, 100 << 20), false, on_line);
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
        let done = busy_numbers(&long.serial_log).len();
        assert!(
            done >= counts[0] + 2,
            "hibernated after {} units, done after {done}",
            counts[0]
        );
        eprintln!(
            "fleet test: long hibernated after {} units, ended after {done}",
            counts[0]
        );
        // assert_all_completed checked BUSY 1..done once each and one boot: after the restore
        // the guest went on from counts[0] + 1, not from 1.
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A stopped run asks each running guest to shut down: a Linux guest that handles its power
/// button (the test initramfs's `powerbutton` script) powers off within the grace, and its
/// job's record and the log say so.
#[test]
fn a_stopped_run_lets_a_linux_guest_power_off_through_its_button() {
    require_real_kvm();
    with_retry(|| {
        let dir = scratch("stop");
        let (kernel, initrd) = (guest("vmlinux"), super::virtio::test_initramfs());
        let vm = serde_json::json!({
            "kernel": kernel,
            "initrd": initrd,
            "memory": "128M",
            "vcpus": 1,
            "append": format!("{QUIET} guest.test=powerbutton"),
        });
        let jobs = serde_json::json!({"jobs": [
            {"name": "button", "arrival_ms": 0, "estimate_ms": 1000, "vm": vm}
        ]});
        let path = dir.join("jobs.json");
        std::fs::write(&path, jobs.to_string()).unwrap();
        let capacity = Capacity {
            cpus: 1,
            memory_bytes: 1 << 30,
        };
        let jobs = JobsFile::from_file(&path)
            .unwrap()
            .validate(capacity, true)
            .unwrap();
        let mut policy = policy_by_name("fcfs", None).unwrap();
        let stop = FleetStop::new();
        // Stops the run once the guest's script waits for the button (its serial log says
        // so), or at the boot timeout, when the assertions below fail.
        let watcher = {
            let stop = stop.clone();
            let serial = dir.join("work").join("0-button.log");
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
                while std::time::Instant::now() < deadline {
                    let text = std::fs::read_to_string(&serial).unwrap_or_default();
                    if text.contains("POWERBUTTON-READY") {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                stop.stop("told by the test");
            })
        };
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let report = run_fleet(
            jobs,
            policy.as_mut(),
            capacity,
            RunOptions {
                // An upper bound only: the guest powers off as soon as it handled the press.
                stop_grace_ms: BOOT_TIMEOUT.as_millis() as u64,
                stop: Some(stop),
                ..run_options(
                    &dir,
                    Box::new(move |line| {
                        eprintln!("fleet: {line}");
                        sink.lock().unwrap().push(line.to_string());
                    }),
                )
            },
        )
        .unwrap();
        watcher.join().unwrap();
        let log = lines.lock().unwrap().join("\n");
        let button = job(&report, "button");
        let serial = std::fs::read_to_string(&button.serial_log).unwrap_or_default();
        match &button.outcome {
            Outcome::Failed(why) => assert!(
                why.starts_with(
                    "the fleet was stopped: told by the test; the guest shut down when asked"
                ),
                "{why}\n{log}\nserial:\n{serial}"
            ),
            other => panic!("button: {other:?}\n{log}"),
        }
        assert!(serial.contains("POWERBUTTON-PRESSED"), "{serial}");
        assert!(!serial.contains("POWERBUTTON-FAIL"), "{serial}");
        assert!(
            log.contains("stopped button: the guest shut down when asked"),
            "{log}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
