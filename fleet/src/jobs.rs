//! Job files: `{"jobs": [{"name": "a", "arrival_ms": 0, "estimate_ms": 3000, "burst_ms": 2500,
//! "vm": {...VmConfig...}}]}`, parsed and validated with errors that name the job.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FleetError;
use vmm_api::{MemorySize, VmConfig};

/// One job as written in a jobs file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A unique name.
    pub name: String,
    /// When the job is submitted, in ms from the start of the run.
    pub arrival_ms: u64,
    /// The estimated run time the policies see (SJF, SRTF); defaults to `burst_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_ms: Option<u64>,
    /// The true run time: used only by the simulator (a real job ends when its guest powers off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_ms: Option<u64>,
    /// A priority (bigger is more important); 0 when absent. No built-in policy uses it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// The VM; may be left out in files that are only simulated (1 vCPU, 256M then).
    #[serde(default)]
    pub vm: VmConfig,
}

/// A whole jobs file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsFile {
    /// The jobs, in file order.
    pub jobs: Vec<JobSpec>,
}

/// The host's capacity: what the running jobs together may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Host CPUs: the running jobs' vCPUs add up to at most this.
    pub cpus: u64,
    /// Host memory in bytes for guests (`u64::MAX`: unlimited).
    pub memory_bytes: u64,
}

impl Capacity {
    /// `cpus` CPUs and unlimited memory.
    pub fn cpus(cpus: u64) -> Capacity {
        Capacity {
            cpus,
            memory_bytes: u64::MAX,
        }
    }
}

/// A validated job, ready for a policy.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its position in the file; the id the policies see.
    pub id: usize,
    /// Its unique name.
    pub name: String,
    /// Arrival, ms.
    pub arrival_ms: u64,
    /// Estimated run time, ms (the burst when no estimate was given).
    pub estimate_ms: u64,
    /// True run time, ms, when known (simulation).
    pub burst_ms: Option<u64>,
    /// Priority (0 when absent).
    pub priority: i32,
    /// vCPUs it holds while running.
    pub vcpus: u64,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// The VM.
    pub vm: VmConfig,
}

impl Job {
    /// The run time the simulator uses: the burst, else the estimate.
    pub fn sim_burst_ms(&self) -> u64 {
        self.burst_ms.unwrap_or(self.estimate_ms)
    }
}

const TIME_FIELDS: [&str; 3] = ["arrival_ms", "estimate_ms", "burst_ms"];

impl FromStr for JobsFile {
    type Err = FleetError;

    /// Parses a jobs file's text, one job at a time so that an error names its job.
    fn from_str(text: &str) -> Result<JobsFile, FleetError> {
        let value: Value = serde_json::from_str(text).map_err(FleetError::Json)?;
        let Value::Object(mut top) = value else {
            return Err(FleetError::Shape(
                "a jobs file is a JSON object: {\"jobs\": [...]}".into(),
            ));
        };
        if let Some(key) = top.keys().find(|k| *k != "jobs") {
            return Err(FleetError::Shape(format!(
                "unknown key {key:?} in the jobs file: only \"jobs\" is allowed"
            )));
        }
        let Some(Value::Array(items)) = top.remove("jobs") else {
            return Err(FleetError::Shape(
                "the jobs file needs \"jobs\": [...], a list of jobs".into(),
            ));
        };
        let mut jobs = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let label = match item.get("name").and_then(Value::as_str) {
                Some(name) => format!("{name:?}"),
                None => format!("#{index}"),
            };
            for field in TIME_FIELDS {
                if let Some(number) = item.get(field).filter(|v| v.is_number()) {
                    if number.as_u64().is_none() && number.as_f64().is_some_and(|f| f < 0.0) {
                        return Err(FleetError::NegativeTime {
                            job: label,
                            field,
                            value: number.to_string(),
                        });
                    }
                }
            }
            let spec = serde_json::from_value(item)
                .map_err(|source| FleetError::BadJob { job: label, source })?;
            jobs.push(spec);
        }
        Ok(JobsFile { jobs })
    }
}

impl JobsFile {
    /// Reads and parses a jobs file (errors name the file).
    pub fn from_file(path: &Path) -> Result<JobsFile, FleetError> {
        let text = std::fs::read_to_string(path).map_err(|source| FleetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        text.parse().map_err(|e| FleetError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Checks the jobs against the host and turns them into [`Job`]s: a non-empty list, unique
    /// non-empty names, an estimate (or a burst to default it from), at least one vCPU, and each
    /// job small enough for the empty host. With `needs_vm` (a real run) each VM config must
    /// also be runnable (a kernel named, and so on).
    pub fn validate(&self, capacity: Capacity, needs_vm: bool) -> Result<Vec<Job>, FleetError> {
        if self.jobs.is_empty() {
            return Err(FleetError::NoJobs);
        }
        if capacity.cpus == 0 {
            return Err(FleetError::NoHostCpus);
        }
        let mut names: HashMap<&str, usize> = HashMap::with_capacity(self.jobs.len());
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for (id, spec) in self.jobs.iter().enumerate() {
            if spec.name.is_empty() {
                return Err(FleetError::EmptyName(id));
            }
            if let Some(first) = names.insert(&spec.name, id) {
                return Err(FleetError::DuplicateName {
                    name: spec.name.clone(),
                    first,
                    second: id,
                });
            }
            let job = || format!("{:?}", spec.name);
            let estimate_ms = spec
                .estimate_ms
                .or(spec.burst_ms)
                .ok_or_else(|| FleetError::NoEstimate { job: job() })?;
            let vcpus = spec.vm.vcpus;
            if vcpus == 0 {
                return Err(FleetError::NoVcpus { job: job() });
            }
            if vcpus > capacity.cpus {
                return Err(FleetError::TooManyVcpus {
                    job: job(),
                    vcpus,
                    host_cpus: capacity.cpus,
                });
            }
            let memory_bytes = spec.vm.memory.0;
            if memory_bytes > capacity.memory_bytes {
                return Err(FleetError::TooMuchMemory {
                    job: job(),
                    memory: spec.vm.memory,
                    host_memory: MemorySize(capacity.memory_bytes),
                });
            }
            if needs_vm {
                spec.vm
                    .validate()
                    .map_err(|source| FleetError::BadVm { job: job(), source })?;
            }
            jobs.push(Job {
                id,
                name: spec.name.clone(),
                arrival_ms: spec.arrival_ms,
                estimate_ms,
                burst_ms: spec.burst_ms,
                priority: spec.priority.unwrap_or(0),
                vcpus,
                memory_bytes,
                vm: spec.vm.clone(),
            });
        }
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobsFile, FleetError> {
        text.parse()
    }

    fn host() -> Capacity {
        Capacity {
            cpus: 2,
            memory_bytes: 1 << 30,
        }
    }

    #[test]
    fn fleet_jobs_parse_and_default_the_estimate() {
        let file = parse(
            r#"{"jobs": [
                {"name": "a", "arrival_ms": 0, "estimate_ms": 3000, "burst_ms": 2500},
                {"name": "b", "arrival_ms": 5, "burst_ms": 40, "priority": 2,
                 "vm": {"vcpus": 2, "memory": "512M"}}]}"#,
        )
        .unwrap();
        let jobs = file.validate(host(), false).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[0].id, jobs[0].estimate_ms, jobs[0].burst_ms),
            (0, 3000, Some(2500))
        );
        assert_eq!((jobs[0].vcpus, jobs[0].memory_bytes), (1, 256 << 20));
        assert_eq!(
            (jobs[1].estimate_ms, jobs[1].priority, jobs[1].vcpus),
            (40, 2, 2)
        );
        assert_eq!(jobs[1].memory_bytes, 512 << 20);
    }

    #[test]
    fn fleet_jobs_validation_errors() {
        let err = |text: &str| {
            let file = parse(text)?;
            file.validate(host(), false).map(|_| ())
        };
        let msg = |text: &str| err(text).unwrap_err().to_string();

        assert!(matches!(err(r#"{"jobs": []}"#), Err(FleetError::NoJobs)));
        assert!(matches!(err("[1]"), Err(FleetError::Shape(_))));
        assert!(matches!(err(r#"{"jobz": []}"#), Err(FleetError::Shape(_))));
        assert!(matches!(err("{"), Err(FleetError::Json(_))));

        let dup = r#"{"jobs": [{"name": "a", "arrival_ms": 0, "burst_ms": 1},
                                {"name": "a", "arrival_ms": 1, "burst_ms": 1}]}"#;
        assert!(matches!(
            err(dup),
            Err(FleetError::DuplicateName {
                first: 0,
                second: 1,
                ..
            })
        ));

        let negative = r#"{"jobs": [{"name": "late", "arrival_ms": -5, "burst_ms": 1}]}"#;
        assert!(matches!(
            err(negative),
            Err(FleetError::NegativeTime {
                field: "arrival_ms",
                ..
            })
        ));
        let text = msg(negative);
        assert!(text.contains("\"late\"") && text.contains("-5"), "{text}");

        let none = r#"{"jobs": [{"name": "x", "arrival_ms": 0}]}"#;
        assert!(matches!(err(none), Err(FleetError::NoEstimate { .. })));

        let cpus =
            r#"{"jobs": [{"name": "big", "arrival_ms": 0, "burst_ms": 1, "vm": {"vcpus": 4}}]}"#;
        assert!(matches!(
            err(cpus),
            Err(FleetError::TooManyVcpus {
                vcpus: 4,
                host_cpus: 2,
                ..
            })
        ));
        let text = msg(cpus);
        assert!(
            text.contains("big") && text.contains('4') && text.contains('2'),
            "{text}"
        );

        let mem = r#"{"jobs": [{"name": "fat", "arrival_ms": 0, "burst_ms": 1, "vm": {"memory": "2G"}}]}"#;
        let text = msg(mem);
        assert!(
            text.contains("fat") && text.contains("2G") && text.contains("1G"),
            "{text}"
        );

        let zero =
            r#"{"jobs": [{"name": "z", "arrival_ms": 0, "burst_ms": 1, "vm": {"vcpus": 0}}]}"#;
        assert!(matches!(err(zero), Err(FleetError::NoVcpus { .. })));

        let unknown = r#"{"jobs": [{"name": "u", "arrival": 0, "burst_ms": 1}]}"#;
        assert!(matches!(err(unknown), Err(FleetError::BadJob { .. })));
        assert!(msg(unknown).contains("\"u\""));

        let empty = r#"{"jobs": [{"name": "", "arrival_ms": 0, "burst_ms": 1}]}"#;
        assert!(matches!(err(empty), Err(FleetError::EmptyName(0))));

        let ok = r#"{"jobs": [{"name": "a", "arrival_ms": 0, "burst_ms": 1}]}"#;
        assert!(err(ok).is_ok());
        assert!(matches!(
            parse(ok).unwrap().validate(host(), true),
            Err(FleetError::BadVm { .. })
        ));
        assert!(matches!(
            parse(ok).unwrap().validate(Capacity::cpus(0), false),
            Err(FleetError::NoHostCpus)
        ));
    }

    #[test]
    fn fleet_jobs_file_errors_name_the_file() {
        let missing = Path::new("/nonexistent/jobs.json");
        assert!(matches!(
            JobsFile::from_file(missing),
            Err(FleetError::Read { .. })
        ));
    }
}
