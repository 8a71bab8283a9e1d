//! The `firecracker` front end: the binary started under that name (a copy or hard link of
//! `vmm`), or `vmm firecracker ARGS...`, takes Firecracker's own command line, so that the
//! engines that spawn Firecracker (Kata Containers, firecracker-containerd, Nomad, flintlock,
//! firecracker-go-sdk) run this VMM unchanged. The flags follow Firecracker v1.16's; the API
//! behind `--api-sock` is the same one `vmm run --api-sock` serves, answering as Firecracker.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use vmm_api::{ApiConfig, FirecrackerConfigFile, Flavor, Logger, VmConfig, FIRECRACKER_VERSION};
use vmm_cli::firecracker_args::FirecrackerArgs;
use vmm_core::logger::{self, LogStyle};

/// Errors of the `firecracker` front end.
#[derive(Debug, thiserror::Error)]
enum FcError {
    /// `--config-file` could not be read or applied.
    #[error("config file {0}: {1}")]
    Config(PathBuf, String),
    /// A flag for something this VMM does not do.
    #[error("{0}")]
    Unsupported(&'static str),
    /// `--id` is not a valid instance id.
    #[error("--id")]
    Id(#[source] vmm_api::ConfigError),
    /// The seccomp filters could not be built or read.
    #[error("seccomp filters")]
    Seccomp(#[source] vmm_core::SeccompError),
    /// `--log-path` could not be opened.
    #[error("cannot open the log {0}")]
    Log(PathBuf, #[source] std::io::Error),
    /// `--metrics-path` could not be opened.
    #[error("cannot open the metrics file {0}")]
    Metrics(PathBuf, #[source] std::io::Error),
    /// The VM failed.
    #[error(transparent)]
    Core(vmm_core::Error),
}

/// Whether this process was started under the name `firecracker`.
pub fn invoked_as_firecracker(argv0: Option<&OsString>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name().map(|n| n == "firecracker"))
        .unwrap_or(false)
}

/// Runs the `firecracker` front end on `args` (the first is the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match vmm_cli::on_own_stack(move || FirecrackerArgs::try_parse_from(args)) {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help: Firecracker prints its version first.
            println!("Firecracker v{FIRECRACKER_VERSION}\n");
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("firecracker: {}", first.trim_start_matches("error: "));
            return ExitCode::from(1);
        }
    };
    if args.version {
        println!("Firecracker v{FIRECRACKER_VERSION}\n");
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            let line = vmm_core::error_chain(&e);
            log::error!("{line}");
            eprintln!("firecracker: error: {line}");
            ExitCode::from(1)
        }
    }
}

fn run(args: FirecrackerArgs) -> Result<ExitCode, FcError> {
    if args.metadata.is_some() || args.mmds_size_limit.is_some() {
        return Err(FcError::Unsupported(
            "--metadata/--mmds-size-limit: the microVM metadata service (MMDS) is not supported",
        ));
    }
    if args.enable_pci {
        return Err(FcError::Unsupported(
            "--enable-pci: devices are on virtio-mmio only",
        ));
    }
    let seccomp = match (&args.seccomp_filter, args.no_seccomp) {
        (_, true) => vmm_core::SeccompConfig::Disabled,
        (Some(path), false) => vmm_core::SeccompConfig::File(path.clone()),
        (None, false) => vmm_core::SeccompConfig::Default,
    };
    vmm_core::seccomp::install(&seccomp).map_err(FcError::Seccomp)?;
    let config = VmConfig {
        id: Some(args.id.clone()),
        ..VmConfig::default()
    };
    config.check_instance_id().map_err(FcError::Id)?;
    logger::init(LogStyle::Firecracker, &args.id);
    let flags_logger = Logger {
        log_path: args
            .log_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        level: args.level,
        show_level: Some(args.show_level),
        show_log_origin: Some(args.show_log_origin),
        module: args.module.clone(),
    };
    logger::configure(&flags_logger)
        .map_err(|e| FcError::Log(args.log_path.clone().unwrap_or_default(), e))?;
    if let Some(path) = &args.metrics_path {
        vmm_core::metrics::configure(path).map_err(|e| FcError::Metrics(path.clone(), e))?;
    }
    vmm_core::metrics::set_process_start(
        args.start_time_us,
        args.start_time_cpu_us,
        args.parent_cpu_time_us,
    );
    let mut api = ApiConfig::new(config);
    api.flavor = Flavor::Firecracker;
    if let Some(path) = &args.config_file {
        apply_config_file(&mut api, path)?;
    }
    api.vm.boot_timer = args.boot_timer;
    api.vm.irqchip = args.irqchip;
    let reason = if args.no_api {
        vmm_core::run_vm(&api.vm)
    } else {
        let options = vmm_core::ApiOptions {
            socket: args.api_sock.clone(),
            max_body: args.http_api_max_payload_size,
            flavor: Flavor::Firecracker,
            socket_mode: args.api_sock_mode,
        };
        vmm_core::run_api_config(api, &options)
    }
    .map_err(FcError::Core)?;
    log::info!("VM ended: {reason}");
    Ok(ExitCode::from(reason.exit_code().clamp(0, 255) as u8))
}

/// Applies Firecracker's JSON config file as the API requests it stands for, in the order
/// Firecracker takes them (logger and metrics first, so that what follows is logged).
fn apply_config_file(api: &mut ApiConfig, path: &Path) -> Result<(), FcError> {
    let bad = |why: String| FcError::Config(path.to_path_buf(), why);
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let file = FirecrackerConfigFile::parse(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(config) = &file.logger {
        logger::configure(config).map_err(|e| bad(format!("logger: {e}")))?;
    }
    if let Some(metrics) = &file.metrics {
        vmm_core::metrics::configure(Path::new(&metrics.metrics_path))
            .map_err(|e| bad(format!("metrics: {e}")))?;
    }
    file.apply(api).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's sections are vmm-api's (config_file.rs tests every one); here: the file is
    /// read, applied, and a refusal or an unreadable file is one error naming the file's problem.
    #[test]
    fn a_config_file_is_read_and_applied() {
        let dir = std::env::temp_dir().join(format!("fc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.json");
        std::fs::write(
            &file,
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}}"#,
        )
        .unwrap();
        let mut api = ApiConfig::new(VmConfig::default());
        apply_config_file(&mut api, &file).unwrap();
        assert_eq!(api.vm.kernel, Some(PathBuf::from("/k")));
        assert_eq!(api.vm.vcpus, 2);
        std::fs::write(
            &file,
            r#"{"boot-source": {"kernel_image_path": "/k"}, "mmds-config": {}}"#,
        )
        .unwrap();
        let error = apply_config_file(&mut api, &file).unwrap_err().to_string();
        assert!(error.contains("MMDS"), "{error}");
        let error = apply_config_file(&mut api, &dir.join("absent.json"))
            .unwrap_err()
            .to_string();
        assert!(!error.contains('\n'), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_name_decides_the_mode() {
        assert!(invoked_as_firecracker(Some(&"/usr/bin/firecracker".into())));
        assert!(invoked_as_firecracker(Some(&"firecracker".into())));
        assert!(!invoked_as_firecracker(Some(&"/usr/bin/vmm".into())));
        assert!(!invoked_as_firecracker(None));
    }
}
