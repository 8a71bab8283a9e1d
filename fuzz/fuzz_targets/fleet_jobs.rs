//! Arbitrary bytes as a fleet jobs file (`vmm fleet run|simulate FILE`) and as a duration
//! (`--quantum`, `parse_duration_ms`).
//!
//! Checked:
//! - parsing, validation and the duration parser never panic; every refusal is a typed
//!   [`FleetError`] whose `Display` chain is one line;
//! - an accepted file serializes, and the text parses back to the same file (compared through
//!   its JSON, as `JobsFile` has no `PartialEq`);
//! - an accepted duration `ms` prints back as `"{ms}ms"` and parses to `ms` again; a plain
//!   number is taken as milliseconds;
//! - jobs that validate against a small host (2 CPUs, 1 GiB), with bursts of at most 100 s and
//!   at most 64 jobs (to bound the run time), are simulated under every policy with the
//!   schedule invariants of `fleet_policies` (see `common/schedule.rs`).

#![no_main]

#[path = "common/one_line.rs"]
mod one_line;
#[path = "common/schedule.rs"]
mod schedule;

use libfuzzer_sys::fuzz_target;
use vmm_fleet::{parse_duration_ms, Capacity, JobsFile};

use one_line::assert_one_line;

const HOST: Capacity = Capacity {
    cpus: 2,
    memory_bytes: 1 << 30,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_duration(text);
    let file: JobsFile = match text.parse() {
        Ok(file) => file,
        Err(error) => {
            assert_one_line(&error);
            return;
        }
    };
    let json = serde_json::to_string(&file).expect("an accepted jobs file serializes");
    let back: JobsFile = json
        .parse()
        .unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
    let json_back = serde_json::to_string(&back).expect("serializes");
    assert_eq!(json_back, json);

    for needs_vm in [false, true] {
        match file.validate(HOST, needs_vm) {
            Ok(jobs) => {
                let bounded = jobs.len() <= 64
                    && jobs
                        .iter()
                        .all(|j| j.sim_burst_ms() <= 100_000 && j.arrival_ms <= 1 << 40);
                if !needs_vm && bounded {
                    let longest = jobs.iter().map(|j| j.sim_burst_ms()).max().unwrap_or(0);
                    schedule::check_all_policies(&jobs, HOST, (longest / 16).max(1));
                }
            }
            Err(error) => assert_one_line(&error),
        }
    }
});

fn check_duration(text: &str) {
    if text.len() > 64 {
        return;
    }
    match parse_duration_ms(text) {
        Ok(ms) => {
            assert_eq!(
                parse_duration_ms(&format!("{ms}ms")).ok(),
                Some(ms),
                "{text:?}"
            );
            if let Ok(plain) = text.trim().parse::<u64>() {
                assert_eq!(ms, plain, "{text:?} is a plain number of milliseconds");
            }
        }
        Err(error) => assert_one_line(&error),
    }
}
