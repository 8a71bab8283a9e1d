//! The fleet manager: job files ([`jobs`]), the scheduling policies behind one trait
//! ([`policy`]), a discrete-event simulator that runs those policies without VMs ([`sim`]), the
//! per-job report and Gantt chart ([`report`]), and the real runner ([`runner`]).
//!
//! The real runner drives `vmm` processes over their control API through the same
//! [`policy::Policy`] trait, so a small workload schedules the same way simulated and real.

pub mod jobs;
pub mod policy;
pub mod report;
pub mod runner;
pub mod sim;

use std::path::PathBuf;

pub use jobs::{Capacity, Job, JobSpec, JobsFile};
pub use policy::{policy_by_name, JobState, JobView, Policy};
pub use report::{gantt_svg, Averages, Interval, JobOutcome, Schedule};
pub use sim::simulate;

/// Errors in job files, policies and fleet options.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The jobs file cannot be read.
    #[error("cannot read jobs file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something wrong inside a jobs file.
    #[error("in jobs file {path}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<FleetError>,
    },
    /// The text is not JSON.
    #[error("not valid JSON")]
    Json(#[source] serde_json::Error),
    /// JSON of the wrong shape at the top level.
    #[error("{0}")]
    Shape(String),
    /// The file has no jobs.
    #[error("the jobs file has no jobs: give at least one in \"jobs\": [...]")]
    NoJobs,
    /// One job's entry does not parse.
    #[error("job {job}: invalid entry")]
    BadJob {
        /// The job's name, or `#N` (its position) when it has none.
        job: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A negative time.
    #[error("job {job}: {field} is {value}: times must be zero or more milliseconds")]
    NegativeTime {
        /// The job.
        job: String,
        /// The field (`arrival_ms`, `estimate_ms`, `burst_ms`).
        field: &'static str,
        /// The value as written.
        value: String,
    },
    /// An empty job name.
    #[error("job #{0}: the name is empty")]
    EmptyName(usize),
    /// Two jobs with one name.
    #[error("duplicate job name {name:?}: jobs #{first} and #{second}")]
    DuplicateName {
        /// The name.
        name: String,
        /// Position of the first.
        first: usize,
        /// Position of the second.
        second: usize,
    },
    /// Neither an estimate nor a burst.
    #[error("job {job}: neither estimate_ms nor burst_ms is given: the policies need an estimate")]
    NoEstimate {
        /// The job.
        job: String,
    },
    /// A job without vCPUs.
    #[error("job {job}: 0 vCPUs: a job needs at least one")]
    NoVcpus {
        /// The job.
        job: String,
    },
    /// A job with more vCPUs than the host.
    #[error("job {job} needs {vcpus} vCPUs but the host has {host_cpus} CPUs: it could never run")]
    TooManyVcpus {
        /// The job.
        job: String,
        /// Its vCPUs.
        vcpus: u64,
        /// The host's CPUs.
        host_cpus: u64,
    },
    /// A job with more memory than the host.
    #[error(
        "job {job} needs {memory} of memory but the host has {host_memory}: it could never run"
    )]
    TooMuchMemory {
        /// The job.
        job: String,
        /// Its memory.
        memory: vmm_api::MemorySize,
        /// The host's memory.
        host_memory: vmm_api::MemorySize,
    },
    /// A job's VM config is not runnable.
    #[error("job {job}: invalid VM config")]
    BadVm {
        /// The job.
        job: String,
        /// Why.
        #[source]
        source: vmm_api::ConfigError,
    },
    /// A policy name that is not known.
    #[error("unknown policy {0:?}: use fcfs, sjf, srtf or rr")]
    UnknownPolicy(String),
    /// Round robin without a quantum.
    #[error("the rr policy needs a quantum (--quantum 500ms)")]
    NoQuantum,
    /// A zero quantum.
    #[error("the quantum must be at least 1 ms")]
    ZeroQuantum,
    /// A quantum for a policy that has none.
    #[error("--quantum applies only to rr, not to {0}")]
    QuantumNotUsed(&'static str),
    /// A host without CPUs.
    #[error("the host needs at least one CPU (--host-cpus)")]
    NoHostCpus,
    /// A duration that does not parse.
    #[error("invalid duration {0:?}: use milliseconds (500, 500ms) or seconds (2s, 1.5s)")]
    Duration(String),
}

/// Parses a duration into milliseconds: `"500ms"`, `"2s"`, `"1.5s"`, or a plain number of
/// milliseconds (`"500"`).
pub fn parse_duration_ms(text: &str) -> Result<u64, FleetError> {
    let err = || FleetError::Duration(text.to_string());
    let trimmed = text.trim();
    if let Some(ms) = trimmed.strip_suffix("ms") {
        return ms.trim().parse().map_err(|_| err());
    }
    if let Some(secs) = trimmed.strip_suffix('s') {
        let secs = secs.trim();
        if let Ok(whole) = secs.parse::<u64>() {
            return whole.checked_mul(1000).ok_or_else(err);
        }
        let value: f64 = secs.parse().map_err(|_| err())?;
        let ms = (value * 1000.0).round();
        if !value.is_finite() || value < 0.0 || ms > u64::MAX as f64 {
            return Err(err());
        }
        return Ok(ms as u64);
    }
    trimmed.parse().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_durations() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("4").unwrap(), 4);
        assert_eq!(parse_duration_ms("2s").unwrap(), 2000);
        assert_eq!(parse_duration_ms("1.5s").unwrap(), 1500);
        for bad in ["", "ms", "-1", "-1s", "1.5", "x", "1h", "NaNs", "infs"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
