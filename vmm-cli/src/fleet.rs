//! `vmm fleet ...`: schedule many VM jobs on one host. `simulate` runs a policy on a
//! discrete-event clock without VMs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use vmm_api::MemorySize;
use vmm_fleet::runner::FleetStop;
use vmm_fleet::{self as fleet, Capacity, FleetError, JobsFile};

/// The fleet subcommands.
#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Simulate a jobs file under a policy, without VMs (each job runs its burst_ms).
    Simulate(SimulateArgs),
    /// Run a jobs file as real VMs, one `vmm` process per job, under a policy. Prints one line
    /// per event, then the per-job table. Exit code 0 when every job's guest powered off, 2
    /// when some job failed (the others still ran). SIGTERM, SIGINT or SIGHUP stop the run:
    /// jobs not started fail, running guests get --stop-grace to shut down, the table is
    /// printed and the exit code is 128 + the signal.
    Run(RunArgs),
}

/// What both `vmm fleet run` and `vmm fleet simulate` take: the jobs, the policy, the host,
/// and how to print the schedule.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// The jobs file: {"jobs": [{"name", "arrival_ms", "estimate_ms", "burst_ms", "vm": {VmConfig}}]}
    /// (`burst_ms` is for the simulator; `vm` is needed to run real VMs).
    #[arg(value_name = "JOBS.json")]
    pub jobs: PathBuf,
    /// The policy: fcfs, sjf, srtf or rr.
    #[arg(long, value_name = "NAME")]
    pub policy: String,
    /// The round-robin time slice: 500ms, 2s, or plain milliseconds.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub quantum: Option<u64>,
    /// Host CPUs the jobs' vCPUs share.
    #[arg(long, value_name = "N")]
    pub host_cpus: u64,
    /// Host memory for guests (e.g. 2G); unlimited when absent. Paused jobs are hibernated to
    /// disk when the jobs to run need it.
    #[arg(long, value_name = "SIZE")]
    pub host_memory: Option<MemorySize>,
    /// Print the schedule as JSON instead of a table (`fleet run`'s event log then goes to
    /// stderr).
    #[arg(long)]
    pub json: bool,
    /// Draw the schedule as an SVG Gantt chart into this file.
    #[arg(long, value_name = "FILE.svg")]
    pub gantt: Option<PathBuf>,
}

/// A policy ready to run and the validated jobs.
type PolicyAndJobs = (Box<dyn fleet::Policy>, Vec<fleet::Job>);

impl ScheduleArgs {
    fn capacity(&self) -> Capacity {
        Capacity {
            cpus: self.host_cpus,
            memory_bytes: self.host_memory.map_or(u64::MAX, |m| m.0),
        }
    }

    /// The policy and the validated jobs (`needs_vm`: every job must name a VM).
    fn load(&self, needs_vm: bool) -> Result<PolicyAndJobs, Box<dyn std::error::Error>> {
        let policy = fleet::policy_by_name(&self.policy, self.quantum)?;
        let jobs = JobsFile::from_file(&self.jobs)?
            .validate(self.capacity(), needs_vm)
            .map_err(|e| FleetError::InFile {
                path: self.jobs.clone(),
                source: Box::new(e),
            })?;
        Ok((policy, jobs))
    }

    /// Writes the Gantt chart when asked.
    fn write_gantt(&self, schedule: &fleet::Schedule) -> Result<(), Box<dyn std::error::Error>> {
        if let Some(path) = &self.gantt {
            std::fs::write(path, fleet::gantt_svg(schedule))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// `vmm fleet run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Switch the host's KSM on for the run (restored after), mark guest memory mergeable,
    /// and report the memory KSM saved.
    #[arg(long)]
    pub ksm: bool,
    /// Where configs, serial logs (ID-NAME.log), API sockets and snapshots go; kept after
    /// the run. Default: a new directory under the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Kill and fail a job that has run longer than this (600s, 2.5s or milliseconds); no
    /// limit when absent.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_run: Option<u64>,
    /// A job stopped while its guest runs (over --max-run, or the run got a signal) has its
    /// guest asked to shut down (the ACPI power button; Ctrl+Alt+Del with acpi=off) and this
    /// long to power off before its VMM is killed; 0: killed at once. A second signal ends
    /// the grace.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub stop_grace: u64,
}

/// `vmm fleet simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub schedule: ScheduleArgs,
}

fn parse_duration(text: &str) -> Result<u64, String> {
    fleet::parse_duration_ms(text).map_err(|e| e.to_string())
}

/// Runs a fleet subcommand.
pub fn main(command: FleetCommand) -> ExitCode {
    let result = match command {
        FleetCommand::Simulate(args) => simulate(&args).map(|()| ExitCode::SUCCESS),
        FleetCommand::Run(args) => run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vmm: error: {}", super::error_chain(error.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn simulate(args: &SimulateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let args = &args.schedule;
    let capacity = args.capacity();
    let started = Instant::now();
    let (mut policy, jobs) = args.load(false)?;
    let loaded = started.elapsed();
    let started = Instant::now();
    let schedule = fleet::simulate(&jobs, policy.as_mut(), capacity);
    let simulated = started.elapsed();
    eprintln!(
        "vmm: simulated {} jobs under {}: {} decisions in {:.1} ms ({:.1} ms to load the file)",
        jobs.len(),
        schedule.policy,
        schedule.decisions,
        simulated.as_secs_f64() * 1e3,
        loaded.as_secs_f64() * 1e3
    );
    args.write_gantt(&schedule)?;
    let text = if args.json {
        schedule.to_json() + "\n"
    } else {
        schedule.table()
    };
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread it starts later (the
/// runner's workers), and starts a thread that takes them with sigwait(2): the first stops
/// `stop`'s run, a later one ends its grace. The number of the first one is what this returns
/// once it came. The VMMs start with no signal blocked (std resets the mask of a child) and in
/// process groups of their own, so a terminal's Ctrl-C reaches the runner alone.
fn stop_on_termination_signals(stop: FleetStop) -> Result<Arc<AtomicI32>, String> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; sigaddset and
    // pthread_sigmask read and write only that local set and this thread's mask.
    let set = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!(
                "cannot block termination signals: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        set
    };
    let first = Arc::new(AtomicI32::new(0));
    let seen = Arc::clone(&first);
    std::thread::Builder::new()
        .name("fleet-signals".to_string())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: sigwait reads the set (blocked in this thread, inherited from the
            // caller) and writes the signal number into a live local.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            let _ = seen.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
            let name = match signal {
                libc::SIGTERM => "SIGTERM",
                libc::SIGINT => "SIGINT",
                _ => "SIGHUP",
            };
            eprintln!("vmm: fleet: {name}: stopping (a second signal ends the guests' grace)");
            stop.stop(name);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(first)
}

fn run(args: RunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use std::io::Write as _;
    use vmm_fleet::runner::{run_fleet, Outcome, RunOptions};

    let capacity = args.schedule.capacity();
    let (mut policy, jobs) = args.schedule.load(true)?;
    let vmm_binary =
        std::env::current_exe().map_err(|e| format!("cannot find the vmm binary: {e}"))?;
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("vmm-fleet-{}", std::process::id())));
    let json = args.schedule.json;
    let log: Box<dyn FnMut(&str) + Send> = Box::new(move |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    });
    let stop = FleetStop::new();
    let signalled = stop_on_termination_signals(stop.clone())?;
    let report = run_fleet(
        jobs,
        policy.as_mut(),
        capacity,
        RunOptions {
            vmm_binary,
            work_dir: work_dir.clone(),
            ksm: args.ksm,
            max_run_ms: args.max_run,
            stop_grace_ms: args.stop_grace,
            stop: Some(stop),
            log,
        },
    )?;
    let schedule = report.to_schedule();
    args.schedule.write_gantt(&schedule)?;
    let kinds = ["start", "pause", "resume", "hibernate", "restore"];
    let text = if json {
        let mut value = serde_json::to_value(&schedule)?;
        if let Some(object) = value.as_object_mut() {
            let latency: serde_json::Map<String, serde_json::Value> = kinds
                .iter()
                .filter_map(|k| Some((k.to_string(), report.mean_latency_us(k)?.into())))
                .collect();
            object.insert("mean_latency_us".into(), latency.into());
            let percentiles: serde_json::Map<String, serde_json::Value> = kinds
                .iter()
                .filter_map(|k| {
                    let (p50, p99, n) = report.latency_percentiles_us(k)?;
                    Some((
                        k.to_string(),
                        serde_json::json!({"p50": p50, "p99": p99, "count": n}),
                    ))
                })
                .collect();
            object.insert("latency_percentiles_us".into(), percentiles.into());
            object.insert(
                "transitions".into(),
                serde_json::to_value(&report.transitions)?,
            );
            object.insert(
                "ksm_pages_sharing_max".into(),
                serde_json::to_value(report.ksm_pages_sharing_max)?,
            );
            object.insert(
                "ksm_saved_bytes".into(),
                serde_json::to_value(report.ksm_saved_bytes)?,
            );
            object.insert("work_dir".into(), serde_json::to_value(&work_dir)?);
        }
        serde_json::to_string_pretty(&value)? + "\n"
    } else {
        let mut text = schedule.table();
        for kind in kinds {
            if let (Some(us), Some((p50, p99, count))) = (
                report.mean_latency_us(kind),
                report.latency_percentiles_us(kind),
            ) {
                text.push_str(&format!(
                    "{kind}: {count} x, mean {:.1} ms, p50 {:.1} ms, p99 {:.1} ms from decision to done\n",
                    us as f64 / 1e3,
                    p50 as f64 / 1e3,
                    p99 as f64 / 1e3
                ));
            }
        }
        if let Some(bytes) = report.ksm_saved_bytes {
            text.push_str(&format!(
                "ksm: up to {} pages shared ({:.1} MiB saved) while guests ran together\n",
                report.ksm_pages_sharing_max.unwrap_or(0),
                bytes as f64 / f64::from(1u32 << 20)
            ));
        }
        for job in &report.jobs {
            if let Outcome::Failed(why) = &job.outcome {
                text.push_str(&format!("FAILED {}: {why}\n", job.name));
            }
        }
        text.push_str(&format!(
            "serial logs and snapshots in {}\n",
            work_dir.display()
        ));
        text
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    let failed = report
        .jobs
        .iter()
        .any(|j| matches!(j.outcome, Outcome::Failed(_)));
    let signal = signalled.load(Ordering::SeqCst);
    Ok(if signal != 0 {
        ExitCode::from(u8::try_from(128 + signal).unwrap_or(255))
    } else if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
