//! Tier 2: the real fleet runner on this machine's /dev/kvm with the tiny PVH guest
//! (../shared/guest/tiny-pvh.elf), which powers off at once when its command line holds
//! `test=` and halts for ever otherwise (deaf to the power button). A job whose VMM dies (its
//! kernel does not exist) is reported Failed; the others run to the end. A job stopped by the
//! runner (over its run limit, or the run was stopped) has its guest asked to shut down, gets
//! its grace, and then its VMM is killed; `vmm fleet run` stops that way on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use vmm_fleet::runner::{run_fleet, FleetReport, FleetStop, JobRecord, Outcome, RunOptions};
use vmm_fleet::{policy_by_name, Capacity, JobsFile};

fn guest_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("VMM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/guest"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: set VMM_GUEST_DIR to the guest image folder",
        path.display()
    );
    path
}

#[test]
fn a_job_whose_vmm_dies_fails_and_the_others_complete() {
    let dir = scratch("dies");
    let tiny = guest_file("tiny-pvh.elf");
    let vm = |kernel: &str| serde_json::json!({"kernel": kernel, "cmdline": "test=fleet", "memory": "32M", "vcpus": 1});
    let jobs = serde_json::json!({"jobs": [
        {"name": "first", "arrival_ms": 0, "estimate_ms": 100, "vm": vm(tiny.to_str().unwrap())},
        {"name": "broken", "arrival_ms": 0, "estimate_ms": 100, "vm": vm("/nonexistent/vmlinux")},
        {"name": "last", "arrival_ms": 100, "estimate_ms": 100, "vm": vm(tiny.to_str().unwrap())},
    ]});
    let path = dir.join("jobs.json");
    std::fs::write(&path, jobs.to_string()).unwrap();
    let (report, log) = run_jobs(&dir, &path, Some(60_000), 0, None, Box::new(|_| {}));
    let outcome = |name: &str| record(&report, name);
    assert_eq!(outcome("first").outcome, Outcome::Done, "{log}");
    assert_eq!(outcome("last").outcome, Outcome::Done, "{log}");
    match &outcome("broken").outcome {
        Outcome::Failed(why) => assert!(why.contains("nonexistent"), "{why}\n{log}"),
        other => panic!("broken: {other:?}\n{log}"),
    }
    assert!(log.contains("FAILED broken"), "{log}");
    // FCFS on one CPU: first, then broken (which dies at once), then last.
    let first = outcome("first");
    let last = outcome("last");
    assert!(first.finish_ms.unwrap() <= last.start_ms.unwrap(), "{log}");
    assert!(report.jobs.iter().all(|j| j.preemptions == 0), "{log}");
    // The tiny guest's marker reached its serial log.
    let serial = std::fs::read_to_string(&first.serial_log).unwrap();
    assert!(serial.contains("GUEST-TEST-DONE"), "{serial}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-fleet-run-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A jobs file in `dir` of the tiny guest halting for ever ("deaf", arriving at 0) and, when
/// `late`, a job arriving an hour later.
fn deaf_jobs(dir: &Path, late: bool) -> PathBuf {
    let tiny = guest_file("tiny-pvh.elf");
    let vm = serde_json::json!({"kernel": tiny, "cmdline": "console=ttyS0", "memory": "32M", "vcpus": 1});
    let mut jobs = vec![serde_json::json!(
        {"name": "deaf", "arrival_ms": 0, "estimate_ms": 100, "vm": vm.clone()}
    )];
    if late {
        jobs.push(serde_json::json!(
            {"name": "late", "arrival_ms": 3_600_000, "estimate_ms": 100, "vm": vm}
        ));
    }
    let path = dir.join("jobs.json");
    std::fs::write(&path, serde_json::json!({ "jobs": jobs }).to_string()).unwrap();
    path
}

/// Runs the jobs file FCFS on one CPU; `on_line` sees each log line. The report and the log.
fn run_jobs(
    dir: &Path,
    jobs: &Path,
    max_run_ms: Option<u64>,
    stop_grace_ms: u64,
    stop: Option<FleetStop>,
    mut on_line: Box<dyn FnMut(&str) + Send>,
) -> (FleetReport, String) {
    let capacity = Capacity {
        cpus: 1,
        memory_bytes: 1 << 30,
    };
    let jobs = JobsFile::from_file(jobs)
        .unwrap()
        .validate(capacity, true)
        .unwrap();
    let mut policy = policy_by_name("fcfs", None).unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let report = run_fleet(
        jobs,
        policy.as_mut(),
        capacity,
        RunOptions {
            vmm_binary: PathBuf::from(env!("CARGO_BIN_EXE_vmm")),
            work_dir: dir.join("work"),
            ksm: false,
            max_run_ms,
            stop_grace_ms,
            stop,
            log: Box::new(move |line| {
                sink.lock().unwrap().push(line.to_string());
                on_line(line);
            }),
        },
    )
    .unwrap();
    let log = lines.lock().unwrap().join("\n");
    (report, log)
}

fn record<'a>(report: &'a FleetReport, name: &str) -> &'a JobRecord {
    report
        .jobs
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name} in {report:?}"))
}

fn failure<'a>(report: &'a FleetReport, name: &str, log: &str) -> &'a str {
    match &record(report, name).outcome {
        Outcome::Failed(why) => why,
        other => panic!("{name}: {other:?}\n{log}"),
    }
}

/// The pid the runner logged for the job's start (`start NAME (pid N)`).
fn started_pid(log: &str, name: &str) -> u32 {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("start {name} (pid ")))
        .unwrap_or_else(|| panic!("no start of {name}:\n{log}"));
    let pid = line.rsplit("(pid ").next().unwrap().trim_end_matches(')');
    pid.parse().unwrap()
}

/// The runner reaped the job's VMM: no process with its pid is left.
fn assert_vmm_gone(pid: u32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "VMM {pid} left behind"
    );
}

#[test]
fn a_job_over_its_run_limit_is_asked_to_shut_down_then_killed_after_its_grace() {
    let dir = scratch("limit");
    let jobs = deaf_jobs(&dir, false);
    let (report, log) = run_jobs(&dir, &jobs, Some(1), 200, None, Box::new(|_| {}));
    let why = failure(&report, "deaf", &log);
    assert!(
        why.starts_with("ran longer than the limit of 1 ms; "),
        "{why}\n{log}"
    );
    // The deaf guest was asked (a press of its button) and did not answer within the grace.
    assert!(
        why.ends_with("the guest did not shut down within 200 ms of being asked: VMM killed"),
        "{why}\n{log}"
    );
    assert!(
        log.contains("stopped deaf: the guest did not shut down"),
        "{log}"
    );
    assert_vmm_gone(started_pid(&log, "deaf"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stopped_run_fails_unstarted_jobs_and_ends_the_running_ones() {
    let dir = scratch("stop");
    let jobs = deaf_jobs(&dir, true);
    let stop = FleetStop::new();
    let stopper = stop.clone();
    // Stopped once the deaf job runs; the late job has an hour to go.
    let on_line = Box::new(move |line: &str| {
        if line.contains("start deaf") {
            stopper.stop("told by the test");
        }
    });
    let (report, log) = run_jobs(&dir, &jobs, None, 0, Some(stop), on_line);
    assert_eq!(
        failure(&report, "deaf", &log),
        "the fleet was stopped: told by the test; VMM killed",
        "{log}"
    );
    assert_eq!(
        failure(&report, "late", &log),
        "the fleet was stopped: told by the test",
        "{log}"
    );
    assert_eq!(record(&report, "late").start_ms, None, "{log}");
    assert_vmm_gone(started_pid(&log, "deaf"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vmm_fleet_run_stops_on_sigterm_with_the_guests_grace_and_exits_128_plus_15() {
    let dir = scratch("sigterm");
    let jobs = deaf_jobs(&dir, true);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "fleet",
            "run",
            "--policy",
            "fcfs",
            "--host-cpus",
            "1",
            "--stop-grace",
            "0.3s",
        ])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg(&jobs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let pid = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "vmm fleet run ended before starting deaf:\n{seen}"
        );
        seen.push_str(&line);
        if line.contains("start deaf (pid ") {
            break started_pid(&line, "deaf");
        }
    };
    // SAFETY: sends SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let all = format!("{seen}{rest}\nstderr:\n{stderr}");
    assert_eq!(output.status.code(), Some(128 + libc::SIGTERM), "{all}");
    assert!(stderr.contains("SIGTERM: stopping"), "{all}");
    assert!(
        rest.contains(
            "FAILED deaf: the fleet was stopped: SIGTERM; the guest did not shut down within \
             300 ms of being asked: VMM killed"
        ),
        "{all}"
    );
    assert!(
        rest.contains("FAILED late: the fleet was stopped: SIGTERM\n"),
        "{all}"
    );
    assert_vmm_gone(pid);
    let _ = std::fs::remove_dir_all(&dir);
}
