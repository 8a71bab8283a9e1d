//! The `firecracker` drop-in's inputs: an argv vector (NUL-separated words; the dictionary has
//! Firecracker's flags and typical and wrong values) parsed by clap as
//! `vmm_cli::firecracker_args::FirecrackerArgs`, then after a 0xff byte the bytes of its
//! `--config-file` (`vmm_api::FirecrackerConfigFile`), applied onto the configuration the flags
//! start.
//!
//! Checked:
//! - nothing panics (clap's own definition checks included, as fuzz builds keep debug
//!   assertions);
//! - a refused command line has a first line (the only one printed) with a message;
//! - an accepted one keeps clap's promises: `--no-api` only with `--config-file`, never both
//!   `--no-seccomp` and `--seccomp-filter`, a socket mode within 0o7777 that prints back in
//!   octal to the same value; an `--id` that the VMM's instance-id check accepts is 1 to 64
//!   ASCII letters, digits and `-`, and one it refuses is refused with a one-line error;
//! - a config file is refused with a one-line typed error, or serializes and parses back equal;
//!   applied, it is refused with a one-line error or gives a VM with its kernel, its vCPU count
//!   and memory (when it has a machine-config), no more drives and interfaces than it lists,
//!   and its vsock, entropy and balloon devices.

#![no_main]

#[path = "common/argv.rs"]
mod argv;
#[path = "common/one_line.rs"]
mod one_line;

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use vmm_api::{ApiConfig, FirecrackerConfigFile, Flavor, VmConfig, MAX_INSTANCE_ID_BYTES};
use vmm_cli::firecracker_args::FirecrackerArgs;
use vmm_cli::parse_socket_mode;

use argv::check_clap_error;
use one_line::assert_one_line;

fuzz_target!(|data: &[u8]| {
    // The command line, then after a 0xff byte (never in UTF-8 text) the config file.
    let (args, config) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let argv = argv::argv("firecracker", args, "/tmp");
    let id = match FirecrackerArgs::try_parse_from(&argv) {
        Ok(args) => check_args(&args),
        Err(error) => {
            check_clap_error(&error);
            None
        }
    };
    check_config_file(config, id);
});

/// Checks accepted flags; returns the instance id when the VMM would take it.
fn check_args(args: &FirecrackerArgs) -> Option<String> {
    assert!(!args.no_api || args.config_file.is_some(), "{args:?}");
    assert!(
        !(args.no_seccomp && args.seccomp_filter.is_some()),
        "{args:?}"
    );
    assert!(args.api_sock_mode <= 0o7777, "{args:?}");
    assert_eq!(
        parse_socket_mode(&format!("{:o}", args.api_sock_mode)),
        Ok(args.api_sock_mode)
    );
    let config = VmConfig {
        id: Some(args.id.clone()),
        ..VmConfig::default()
    };
    match config.check_instance_id() {
        Ok(()) => {
            let id = &args.id;
            assert!(
                !id.is_empty() && id.len() <= MAX_INSTANCE_ID_BYTES,
                "{id:?}"
            );
            assert!(
                id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{id:?}"
            );
            Some(args.id.clone())
        }
        Err(error) => {
            assert_one_line(&error);
            None
        }
    }
}

fn check_config_file(bytes: &[u8], id: Option<String>) {
    let file = match FirecrackerConfigFile::parse(bytes) {
        Ok(file) => file,
        Err(error) => {
            assert_one_line(&error);
            return;
        }
    };
    let text = serde_json::to_string(&file).expect("an accepted config file serializes");
    let back = FirecrackerConfigFile::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
    assert_eq!(back, file, "{text}");

    let mut api = ApiConfig::new(VmConfig {
        id: id.or_else(|| Some(vmm_api::DEFAULT_INSTANCE_ID.to_string())),
        ..VmConfig::default()
    });
    api.flavor = Flavor::Firecracker;
    if let Err(error) = file.apply(&mut api) {
        assert_one_line(&error);
        return;
    }
    let vm = &api.vm;
    let boot = file
        .boot_source
        .as_ref()
        .expect("applied without a boot-source");
    assert_eq!(
        vm.kernel.as_deref(),
        Some(std::path::Path::new(&boot.kernel_image_path))
    );
    if let Some(machine) = &file.machine_config {
        assert_eq!(vm.vcpus, machine.vcpu_count);
        assert_eq!(vm.memory.0, machine.mem_size_mib << 20);
    }
    assert!(vm.disk.len() <= file.drives.as_ref().map_or(0, Vec::len));
    assert!(vm.net.len() <= file.network_interfaces.as_ref().map_or(0, Vec::len));
    assert_eq!(vm.vsock.is_some(), file.vsock.is_some());
    assert_eq!(vm.rng, file.entropy.is_some());
    assert_eq!(vm.balloon.is_some(), file.balloon.is_some());
    assert_eq!(api.iface_ids.len(), vm.net.len());
}
