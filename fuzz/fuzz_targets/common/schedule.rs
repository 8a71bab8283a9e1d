//! Invariants of a simulated fleet [`Schedule`], shared by the fleet targets.

use vmm_fleet::policy::SelectOnly;
use vmm_fleet::{policy_by_name, simulate, Capacity, Job, Schedule};

/// Simulates `jobs` under every built-in policy (round robin with `quantum`), checks each
/// schedule, and compares the incremental policies with their `select` reference.
pub fn check_all_policies(jobs: &[Job], capacity: Capacity, quantum: u64) {
    for (name, q) in [
        ("fcfs", None),
        ("sjf", None),
        ("srtf", None),
        ("rr", Some(quantum)),
    ] {
        let mut policy = policy_by_name(name, q).expect("a built-in policy");
        assert!(policy.incremental(), "{name}");
        let schedule = simulate(jobs, policy.as_mut(), capacity);
        check_schedule(jobs, capacity, &schedule, !policy.preemptive());
        let mut reference = SelectOnly(policy_by_name(name, q).expect("a built-in policy"));
        let slow = simulate(jobs, &mut reference, capacity);
        assert_eq!(
            schedule, slow,
            "{name} q={q:?}: the incremental policy differs from its select()"
        );
    }
}

/// Checks one schedule of `jobs` (each small enough for the empty host, as
/// `JobsFile::validate` guarantees).
pub fn check_schedule(jobs: &[Job], capacity: Capacity, s: &Schedule, non_preemptive: bool) {
    let name = &s.policy;
    assert_eq!(s.jobs.len(), jobs.len(), "{name}: one outcome per job");
    let mut per_job: Vec<Vec<(u64, u64)>> = vec![Vec::new(); jobs.len()];
    let index_of = |id: usize| jobs.iter().position(|j| j.id == id);
    for iv in &s.intervals {
        let i = index_of(iv.job).unwrap_or_else(|| panic!("{name}: unknown job {iv:?}"));
        let job = &jobs[i];
        assert!(iv.start_ms < iv.end_ms, "{name}: empty interval {iv:?}");
        assert!(
            iv.start_ms >= job.arrival_ms,
            "{name}: {} runs at {} before it arrives at {}",
            job.name,
            iv.start_ms,
            job.arrival_ms
        );
        assert!(
            (iv.slot as u64) < capacity.cpus,
            "{name}: slot {} on a host of {} CPUs",
            iv.slot,
            capacity.cpus
        );
        per_job[i].push((iv.start_ms, iv.end_ms));
    }
    for (i, job) in jobs.iter().enumerate() {
        let outcome = &s.jobs[i];
        assert_eq!(outcome.id, job.id, "{name}: outcomes in job order");
        assert!(
            !outcome.failed,
            "{name}: {} never finished: {outcome:?}",
            job.name
        );
        let runs = &mut per_job[i];
        runs.sort_unstable();
        let service: u64 = runs.iter().map(|(a, b)| b - a).sum();
        assert_eq!(
            service,
            job.sim_burst_ms(),
            "{name}: {} got {service} ms of its {} ms burst",
            job.name,
            job.sim_burst_ms()
        );
        for pair in runs.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{name}: {} runs twice at once: {runs:?}",
                job.name
            );
        }
        let (start, finish) = (outcome.start_ms.unwrap(), outcome.finish_ms.unwrap());
        assert!(
            start >= job.arrival_ms && finish >= start,
            "{name}: {outcome:?}"
        );
        if let (Some(first), Some(last)) = (runs.first(), runs.last()) {
            // A job can be started and stopped again at one instant when a zero-burst job ends
            // there (a second decision at that instant): a start without service, so the first
            // start may precede the first run.
            assert!(
                start <= first.0,
                "{name}: start of {}\n{}",
                job.name,
                dump(jobs, s)
            );
            assert_eq!(finish, last.1, "{name}: finish of {}", job.name);
        } else {
            assert_eq!(
                start, finish,
                "{name}: a job without service has no duration"
            );
        }
        assert!(
            outcome.preemptions + 1 >= runs.len() as u64,
            "{name}: {} ran {} times with {} preemptions",
            job.name,
            runs.len(),
            outcome.preemptions
        );
        if non_preemptive {
            assert_eq!(outcome.preemptions, 0, "{name} preempted {}", job.name);
            assert!(runs.len() <= 1, "{name} split {}: {runs:?}", job.name);
        }
    }
    // At every instant where something changes, the running jobs fit the host, no two share a
    // slot, and no arrived, unfinished job waits while it would fit in what is left (the
    // policies admit by first fit over all candidates).
    let mut instants: Vec<u64> = s
        .intervals
        .iter()
        .flat_map(|iv| [iv.start_ms, iv.end_ms])
        .chain(jobs.iter().map(|j| j.arrival_ms))
        .collect();
    instants.sort_unstable();
    instants.dedup();
    // A sweep: the intervals by start, and those running at the current instant.
    let mut by_start: Vec<_> = s.intervals.iter().collect();
    by_start.sort_unstable_by_key(|iv| iv.start_ms);
    let mut next = 0;
    let mut running: Vec<&vmm_fleet::Interval> = Vec::new();
    for &t in &instants {
        running.retain(|iv| iv.end_ms > t);
        while let Some(iv) = by_start.get(next).filter(|iv| iv.start_ms <= t) {
            running.push(iv);
            next += 1;
        }
        let mut cpus = 0u64;
        let mut memory = 0u64;
        let mut slots = Vec::new();
        for iv in &running {
            let job = &jobs[index_of(iv.job).unwrap()];
            cpus += job.vcpus;
            memory = memory.saturating_add(job.memory_bytes);
            slots.push(iv.slot);
        }
        assert!(
            cpus <= capacity.cpus && memory <= capacity.memory_bytes,
            "{name}: at {t} ms the running jobs need {cpus} CPUs and {memory} bytes"
        );
        slots.sort_unstable();
        let before = slots.len();
        slots.dedup();
        assert_eq!(
            before,
            slots.len(),
            "{name}: two jobs in one slot at {t} ms"
        );
        for (i, job) in jobs.iter().enumerate() {
            let finish = s.jobs[i].finish_ms.unwrap();
            let is_running = running.iter().any(|iv| iv.job == job.id);
            if job.arrival_ms <= t && t < finish && !is_running {
                let fits = cpus + job.vcpus <= capacity.cpus
                    && memory.saturating_add(job.memory_bytes) <= capacity.memory_bytes;
                assert!(
                    !fits,
                    "{name}: at {t} ms {} waits although it fits ({cpus} CPUs and {memory} \
                     bytes in use)",
                    job.name
                );
            }
        }
    }
}

/// The jobs and the schedule's runs, for a failure message.
fn dump(jobs: &[Job], s: &Schedule) -> String {
    let mut out = String::new();
    for job in jobs {
        out += &format!(
            "{}: arrival {} estimate {} burst {} vcpus {} memory {}\n",
            job.name,
            job.arrival_ms,
            job.estimate_ms,
            job.sim_burst_ms(),
            job.vcpus,
            job.memory_bytes >> 20
        );
    }
    for iv in &s.intervals {
        out += &format!(
            "  j{} {}..{} slot {}\n",
            iv.job, iv.start_ms, iv.end_ms, iv.slot
        );
    }
    out += &format!("{:?}", s.jobs);
    out
}
