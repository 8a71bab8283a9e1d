//! Arbitrary bytes as the VMM's JSON configuration (`vmm run --config FILE`, a jobs file's
//! `"vm"`): a [`VmConfig`].
//!
//! Checked:
//! - parsing and validation never panic, and every refusal is a typed error whose `Display`
//!   (each cause in its chain) is one line, as the CLI prints it;
//! - an accepted config serializes, and the text parses back to an equal config;
//! - its Firecracker shape (`GET /vm/config`, a [`FullVmConfig`]) serializes and parses back
//!   equal;
//! - for a config that validates, that shape written as a Firecracker `--config-file` and applied
//!   onto a fresh [`ApiConfig`] either is refused (one-line typed error: the API's rules for ids,
//!   taps and paths are stricter than the config file's) or describes the same VM again (the
//!   same `GET /vm/config`).

#![no_main]

#[path = "common/one_line.rs"]
mod one_line;

use libfuzzer_sys::fuzz_target;
use vmm_api::{ApiConfig, FirecrackerConfigFile, FullVmConfig, VmConfig};

use one_line::assert_one_line;

fuzz_target!(|data: &[u8]| {
    let config: VmConfig = match serde_json::from_slice(data) {
        Ok(config) => config,
        Err(error) => {
            assert_one_line(&error);
            return;
        }
    };
    let text = serde_json::to_string(&config).expect("an accepted config serializes");
    let back: VmConfig =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
    assert_eq!(back, config, "{text}");

    let valid = match config.validate() {
        Ok(()) => true,
        Err(error) => {
            assert_one_line(&error);
            false
        }
    };

    let full = ApiConfig::new(config.clone()).to_firecracker();
    let json = serde_json::to_string(&full).expect("GET /vm/config serializes");
    let full_back: FullVmConfig =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
    assert_eq!(full_back, full, "{json}");

    if !valid {
        return;
    }
    let file = FirecrackerConfigFile {
        boot_source: full.boot_source.clone(),
        machine_config: Some(full.machine_config.clone()),
        drives: Some(full.drives.clone()),
        network_interfaces: Some(full.network_interfaces.clone()),
        vsock: full.vsock.clone(),
        entropy: full.entropy.clone(),
        balloon: full.balloon.clone(),
        ..FirecrackerConfigFile::default()
    };
    let mut again = ApiConfig::new(VmConfig::default());
    match file.apply(&mut again) {
        Ok(()) => assert_eq!(again.to_firecracker(), full, "{text}"),
        Err(error) => assert_one_line(&error),
    }
});
