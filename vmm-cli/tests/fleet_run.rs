//! Tier 2: the real fleet runner on this machine's /dev/kvm with the tiny PVH guest
//! (../shared/guest/tiny-pvh.elf), which powers off at once when its command line holds
//! `test=`. A job whose VMM dies (its kernel does not exist) is reported Failed; the others
//! run to the end.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm_fleet::runner::{run_fleet, Outcome, RunOptions};
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
    let dir = std::env::temp_dir().join(format!("vmm-fleet-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = guest_file("tiny-pvh.elf");
    let vm = |kernel: &str| serde_json::json!({"kernel": kernel, "cmdline": "test=fleet", "memory": "32M", "vcpus": 1});
    let jobs = serde_json::json!({"jobs": [
        {"name": "first", "arrival_ms": 0, "estimate_ms": 100, "vm": vm(tiny.to_str().unwrap())},
        {"name": "broken", "arrival_ms": 0, "estimate_ms": 100, "vm": vm("/nonexistent/vmlinux")},
        {"name": "last", "arrival_ms": 100, "estimate_ms": 100, "vm": vm(tiny.to_str().unwrap())},
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
            max_run_ms: Some(60_000),
            log: Box::new(move |line| sink.lock().unwrap().push(line.to_string())),
        },
    )
    .unwrap();
    let log = lines.lock().unwrap().join("\n");
    let outcome = |name: &str| {
        report
            .jobs
            .iter()
            .find(|j| j.name == name)
            .unwrap_or_else(|| panic!("no job {name}"))
    };
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
