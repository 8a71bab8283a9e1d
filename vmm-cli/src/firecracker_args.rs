//! The `firecracker` front end's command line: Firecracker v1.16's flags, parsed without
//! acting on them (the binary's `firecracker` module runs the VM from them). Kept in the
//! library so that the parsing can be tested and fuzzed without a process.

use std::path::PathBuf;

use clap::Parser;
use vmm_api::{LogLevel, MAX_BODY_BYTES};

/// Firecracker's default API socket.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// Firecracker's flags.
#[derive(Parser, Debug)]
#[command(
    name = "firecracker",
    disable_version_flag = true,
    about = "A KVM virtual machine monitor, run under Firecracker's name and command line"
)]
pub struct FirecrackerArgs {
    /// Path to the API socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCK)]
    pub api_sock: PathBuf,
    /// The API socket file's permissions, in octal (not a Firecracker flag; only root and the
    /// VMM's own uid are served, whatever they are).
    #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = crate::parse_socket_mode)]
    pub api_sock_mode: u32,
    /// MicroVM unique identifier (letters, digits and '-', at most 64).
    #[arg(long, value_name = "ID", default_value = vmm_api::DEFAULT_INSTANCE_ID)]
    pub id: String,
    /// Path to a file that contains the microVM configuration in JSON format; the VM boots at
    /// once and the API keeps serving.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Start and run the microVM without the API socket (needs --config-file).
    #[arg(long, requires = "config_file")]
    pub no_api: bool,
    /// Path to a file or named pipe for the human-readable log.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<LogLevel>,
    /// Only log records from this module path.
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
    /// Show the level in each log line.
    #[arg(long)]
    pub show_level: bool,
    /// Show the source file and line of each log line.
    #[arg(long)]
    pub show_log_origin: bool,
    /// Path to a file or named pipe for the metrics.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Log how long the guest took to boot once it writes 123 to the boot timer (MMIO
    /// 0xcffff000, the page below the virtio-mmio window).
    #[arg(long)]
    pub boot_timer: bool,
    /// Disable seccomp filtering (by default every thread gets a filter for its kind).
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,
    /// Custom seccomp filters in seccompiler's JSON format (not Firecracker's compiled BPF
    /// file): "vmm", "api" and "vcpu" filters, and optionally "events", "signals" and
    /// "metrics" (which default to "vmm"'s).
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
    /// Largest API request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_BODY_BYTES)]
    pub http_api_max_payload_size: usize,
    /// Where the interrupt controllers are emulated (not a Firecracker flag): split (IOAPIC in
    /// this process, LAPICs in KVM; no PIC or PIT) or kernel (all in KVM, with the PIC and
    /// PIT, as Firecracker does).
    #[arg(
        long,
        value_name = "MODE",
        env = "VMM_IRQCHIP",
        default_value = "split"
    )]
    pub irqchip: vmm_api::Irqchip,
    /// Process start time (wall clock, microseconds), as the jailer passes it.
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,
    /// Process start CPU time (microseconds), as the jailer passes it.
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// The parent's CPU time (microseconds), as the jailer passes it.
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    /// Print the Firecracker version this binary implements, and exit.
    #[arg(long)]
    pub version: bool,
    /// A file of MMDS metadata (refused: no metadata service here).
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// MMDS data store limit (refused: no metadata service here).
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<u64>,
    /// PCIe transport (refused: devices are on virtio-mmio).
    #[arg(long)]
    pub enable_pci: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<FirecrackerArgs, clap::Error> {
        FirecrackerArgs::try_parse_from(std::iter::once("firecracker").chain(args.iter().copied()))
    }

    #[test]
    fn firecrackers_flags_parse_with_its_defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.api_sock, PathBuf::from(DEFAULT_API_SOCK));
        assert_eq!(args.id, "anonymous-instance");
        assert_eq!(args.http_api_max_payload_size, 51200);
        assert_eq!(args.api_sock_mode, 0o600);
        assert_eq!(
            parse(&["--api-sock-mode", "660"]).unwrap().api_sock_mode,
            0o660
        );
        assert!(parse(&["--api-sock-mode", "rw"]).is_err());
        let args = parse(&[
            "--api-sock",
            "/tmp/x.sock",
            "--id",
            "vm-1",
            "--level",
            "debug",
            "--show-level",
            "--show-log-origin",
            "--log-path",
            "/tmp/log",
            "--metrics-path",
            "/tmp/m",
            "--boot-timer",
            "--no-seccomp",
            "--http-api-max-payload-size",
            "1000",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "2",
            "--parent-cpu-time-us",
            "3",
        ])
        .unwrap();
        assert_eq!(args.level, Some(LogLevel::Debug));
        assert!(args.show_level && args.show_log_origin && args.boot_timer && args.no_seccomp);
        assert_eq!(args.start_time_us, Some(1));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for bad in [
            vec!["--no-api"],
            vec!["--frobnicate"],
            vec!["--level", "loud"],
            vec!["--no-seccomp", "--seccomp-filter", "/f"],
            vec!["run"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }
}
