//! `vmm`: the command line over vmm-core (one VM), vmm-api (its configuration and API client)
//! and vmm-fleet (many VMs). It parses flags (or a JSON config file), runs the VM,
//! prints any error as one line with its cause chain, and exits with the VM's exit code.
// The flags' doc comments are clap's --help texts, where [..] marks optional parts, not links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vmm_api::{
    BalloonConfig, DiskConfig, ElfEntry, Irqchip, MemorySize, NetConfig, SerialMode, VmConfig,
    VsockConfig,
};
use vmm_cli::parse_socket_mode;

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "A KVM virtual machine monitor for Linux guests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM and run it until the guest powers off or resets.
    Run(Box<RunArgs>),
    /// Restore a snapshot in this process and run it.
    Restore(RestoreArgs),
    /// Pause a running VM (vCPUs and device queues) through its API socket.
    Pause(ClientArgs),
    /// Resume a paused VM.
    Resume(ClientArgs),
    /// Print a VM's state (Running, Paused, Not started) as JSON.
    Status(ClientArgs),
    /// Stop a VM: ask the guest (the ACPI power button; Ctrl+Alt+Del for an acpi=off guest),
    /// then SIGTERM after a timeout. Exits 0 when the guest stopped itself, 4 when the stop had
    /// to be forced.
    Stop(StopArgs),
    /// Create or load snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Schedule many VM jobs on one host (FCFS, SJF, SRTF, round robin).
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Disk image tools: create, clone, snapshot, commit, info, check, convert, import.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Run as a drop-in `firecracker`: Firecracker's flags and API (`vmm firecracker --help`).
    /// Invoking this binary under the name `firecracker` does the same.
    Firecracker {
        /// Firecracker's flags.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// Build a jail and exec a VMM in it, as Firecracker's jailer does (`vmm jail --help`).
    /// Invoking this binary under the name `jailer` does the same.
    Jail {
        /// The jailer's flags.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// The VM's control API socket (`vmm run --api-sock PATH`).
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
}

#[derive(Args, Debug)]
struct StopArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Seconds to wait for the guest before forcing the stop.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    timeout: u64,
}

/// The seccomp flags of `run` and `restore`.
#[derive(Args, Debug, Default)]
struct SeccompArgs {
    /// Run without seccomp filters (by default every thread gets one for its kind).
    #[arg(long, conflicts_with = "seccomp_filter")]
    no_seccomp: bool,
    /// Replace the built-in seccomp filters by the filters in FILE (seccompiler's JSON
    /// format, one filter per thread kind: vmm, api, vcpu, events, signals, metrics).
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
}

impl SeccompArgs {
    fn config(&self) -> vmm_core::SeccompConfig {
        match (&self.seccomp_filter, self.no_seccomp) {
            (_, true) => vmm_core::SeccompConfig::Disabled,
            (Some(path), false) => vmm_core::SeccompConfig::File(path.clone()),
            (None, false) => vmm_core::SeccompConfig::Default,
        }
    }
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// The snapshot's state file.
    #[arg(long, value_name = "PATH")]
    snapshot: PathBuf,
    /// The snapshot's memory file (mapped privately, never written).
    #[arg(long, value_name = "PATH")]
    mem: PathBuf,
    /// A diff memory file (`vmm snapshot create --diff`) layered over --mem; repeatable,
    /// oldest first. --snapshot is then the state file of the newest diff.
    #[arg(long, value_name = "PATH")]
    mem_diff: Vec<PathBuf>,
    /// Track dirty pages in the restored VM, so that diff snapshots of it can be taken.
    #[arg(long)]
    track_dirty_pages: bool,
    /// Where the writable clones of the snapshot's sealed disks (layered format) go; by
    /// default next to each sealed layer, named `<layer>.clone-<pid>-<n>`.
    #[arg(long, value_name = "DIR")]
    disk_clone_dir: Option<PathBuf>,
    /// The key file of a sealed snapshot (`vmm snapshot create --key-file`): the state and
    /// memory files are authenticated and decrypted before the guest runs.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Serve the control API on this socket.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// The API socket file's permissions, in octal (only root and the VMM's own uid are
    /// served, whatever they are).
    #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = parse_socket_mode)]
    api_sock_mode: u32,
    /// Stay paused after the restore (resume with `vmm resume`).
    #[arg(long)]
    paused: bool,
    /// Count every vCPU exit by kind and address (port and direction, MMIO address with its
    /// device and register, other exits) and print the table to stderr when the VM ends.
    #[arg(long)]
    exit_stats: bool,
    #[command(flatten)]
    seccomp: SeccompArgs,
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Snapshot a paused VM: its state file and its memory file.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// Where the state file goes.
        #[arg(long, value_name = "PATH")]
        snapshot: PathBuf,
        /// Where the memory file goes.
        #[arg(long, value_name = "PATH")]
        mem: PathBuf,
        /// A diff snapshot: the memory file gets only the pages written since the previous
        /// snapshot (the VM must run with --track-dirty-pages).
        #[arg(long)]
        diff: bool,
        /// Seal the snapshot: encrypt and authenticate both files with AES-256-GCM under a
        /// key derived from this file's bytes (32 to 4096 of them, e.g. `head -c 32
        /// /dev/urandom`). Full snapshots only.
        #[arg(long, value_name = "PATH", conflicts_with = "diff")]
        key_file: Option<PathBuf>,
    },
    /// Load a snapshot into a VMM started with only `--api-sock`.
    Load {
        #[command(flatten)]
        client: ClientArgs,
        /// The state file.
        #[arg(long, value_name = "PATH")]
        snapshot: PathBuf,
        /// The memory file.
        #[arg(long, value_name = "PATH")]
        mem: PathBuf,
        /// Resume the VM once loaded.
        #[arg(long)]
        resume: bool,
        /// The key file of a sealed snapshot.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
    /// Merge a diff memory file into its base, writing a new full memory file (offline; OUT
    /// may be BASE itself).
    Merge {
        /// The state file of the snapshot (base or diff: both hold the memory layout); without
        /// it the layout follows from the length of BASE.
        #[arg(long, value_name = "PATH")]
        snapshot: Option<PathBuf>,
        /// The full memory file.
        #[arg(long, value_name = "PATH")]
        base: PathBuf,
        /// The diff memory file to layer over it.
        #[arg(long, value_name = "PATH")]
        diff: PathBuf,
        /// Where the merged memory file goes.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

/// Every flag overrides the same key of `--config`.
#[derive(Args, Debug, Default)]
struct RunArgs {
    /// Instance id reported by the API's `GET /` (1 to 64 letters, digits and '-')
    /// [default: anonymous-instance].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// JSON config file; its keys are these flags' long names (e.g. {"kernel": "...", "vcpus": 2}).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio, optionally compressed as the kernel supports).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line, replacing the default.
    #[arg(long, value_name = "STRING")]
    cmdline: Option<String>,
    /// Appended to the kernel command line (repeatable).
    #[arg(long, value_name = "STRING")]
    append: Vec<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    vcpus: Option<u64>,
    /// Guest RAM, e.g. 256M, 5G; a plain number is MiB [default: 256M].
    #[arg(long, value_name = "SIZE")]
    memory: Option<MemorySize>,
    /// Serial console: stdio, none or file:PATH [default: stdio]. With stdio on a terminal
    /// (raw mode: Ctrl-C goes to the guest), Ctrl-A x quits (the terminal is restored, exit
    /// code 5) and Ctrl-A Ctrl-A sends one Ctrl-A to the guest.
    #[arg(long, value_name = "MODE")]
    serial: Option<SerialMode>,
    /// Back guest RAM with transparent hugepages.
    #[arg(long)]
    hugepages: bool,
    /// Let KSM merge identical guest pages.
    #[arg(long)]
    ksm: bool,
    /// Fault all guest RAM in before boot.
    #[arg(long)]
    prefault: bool,
    /// Track the guest memory pages written since the last snapshot, for diff snapshots.
    #[arg(long)]
    track_dirty_pages: bool,
    /// ELF kernel entry: auto (PVH when the kernel has the note), linux64 or pvh.
    #[arg(long, value_name = "ENTRY")]
    elf_entry: Option<ElfEntry>,
    /// Where the interrupt controllers are emulated: split (the IOAPIC in this process, the
    /// LAPICs in KVM, no PIC or PIT: for guests that use ACPI) or kernel (all in KVM, with the
    /// PIC and PIT: for guests that need them, e.g. some booted with acpi=off)
    /// [default: split]. A restored snapshot keeps its own.
    #[arg(long, value_name = "MODE", env = "VMM_IRQCHIP")]
    irqchip: Option<Irqchip>,
    /// On SIGTERM, SIGINT or SIGHUP, press the ACPI power button and give the guest this many
    /// seconds to power off (exit code 0 if it does) before ending the VM anyway (a second
    /// signal ends it at once) [default: 0: end at the first signal].
    #[arg(long, value_name = "SECONDS")]
    shutdown_grace: Option<u64>,
    /// virtio-blk disk on an image: path=FILE[,read_only=on][,id=NAME][,cache=unsafe]
    /// [,format=raw|qcow2|layered] (without format=, detected from the file's magic)
    /// (repeatable; the first is /dev/vda). Guest flushes reach the host's disk unless
    /// cache=unsafe.
    #[arg(long, value_name = "SPEC")]
    disk: Vec<DiskConfig>,
    /// virtio-net device on a tap (attached, or created for the VM's lifetime):
    /// tap=NAME[,mac=02:..] (repeatable).
    #[arg(long, value_name = "SPEC")]
    net: Vec<NetConfig>,
    /// virtio-vsock device with its host side on a Unix socket: cid=N,socket=PATH.
    #[arg(long, value_name = "SPEC")]
    vsock: Option<VsockConfig>,
    /// virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// virtio-balloon device: [target=SIZE][,deflate_on_oom=on][,stats_s=SECONDS] (stats_s:
    /// ask the guest for memory statistics that often; `GET /balloon/statistics`).
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "")]
    balloon: Option<BalloonConfig>,
    /// Serve the control API (Firecracker-compatible HTTP) on this Unix socket. Without
    /// --kernel the VMM waits to be configured or to load a snapshot through it.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    #[command(flatten)]
    seccomp: SeccompArgs,
    /// The API socket file's permissions, in octal (only root and the VMM's own uid are
    /// served, whatever they are).
    #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = parse_socket_mode)]
    api_sock_mode: u32,
    /// Count every vCPU exit by kind and address (port and direction, MMIO address with its
    /// device and register, other exits) and print the table to stderr when the VM ends.
    #[arg(long)]
    exit_stats: bool,
}

impl RunArgs {
    fn into_config(self) -> Result<VmConfig, vmm_api::ConfigError> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::default(),
        };
        if let Some(id) = self.id {
            config.id = Some(id);
        }
        if let Some(kernel) = self.kernel {
            config.kernel = Some(kernel);
        }
        if let Some(initrd) = self.initrd {
            config.initrd = Some(initrd);
        }
        if let Some(cmdline) = self.cmdline {
            config.cmdline = Some(cmdline);
        }
        if !self.append.is_empty() {
            config.append = Some(self.append.join(" "));
        }
        if let Some(vcpus) = self.vcpus {
            config.vcpus = vcpus;
        }
        if let Some(memory) = self.memory {
            config.memory = memory;
        }
        if let Some(serial) = self.serial {
            config.serial = serial;
        }
        config.hugepages |= self.hugepages;
        config.ksm |= self.ksm;
        config.prefault |= self.prefault;
        config.track_dirty_pages |= self.track_dirty_pages;
        if let Some(entry) = self.elf_entry {
            config.elf_entry = entry;
        }
        if let Some(irqchip) = self.irqchip {
            config.irqchip = irqchip;
        }
        if let Some(grace) = self.shutdown_grace {
            config.shutdown_grace_s = grace;
        }
        // Device lists replace the file's lists rather than adding to them.
        if !self.disk.is_empty() {
            config.disk = self.disk;
        }
        if !self.net.is_empty() {
            config.net = self.net;
        }
        if let Some(vsock) = self.vsock {
            config.vsock = Some(vsock);
        }
        config.rng |= self.rng;
        if let Some(balloon) = self.balloon {
            config.balloon = Some(balloon);
        }
        // Checked now: with --api-sock and no kernel, the rest is only checked at boot.
        config.check_instance_id()?;
        Ok(config)
    }
}

mod client;
mod disk;
mod firecracker;
mod fleet;
mod jailer;

/// One line: the error and every cause, joined by ": ".
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    vmm_core::error_chain(error)
}

/// Makes every thread allocate from glibc's main arena, before any thread exists. A thread's
/// own arena, when it shrinks, makes glibc read /proc/sys/vm/overcommit_memory (once per
/// process): under seccomp that `openat` killed the event loop when a layered disk's commit freed
/// its node buffers. One arena also keeps the VMM's memory small; its threads allocate little,
/// so they hardly contend for its lock.
fn one_malloc_arena() {
    // SAFETY: mallopt only changes an allocator setting; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// How many file descriptors the table is grown to at start: a Linux guest with every kind of
/// virtio device needs ~70 (eventfds, timerfds, the tap, sockets), past the 64 a process
/// starts with.
const FD_TABLE_AT_START: libc::c_int = 256;

/// Grows the file descriptor table while the process has one thread. Growing it later (the
/// 65th descriptor, while the vCPU and device threads run) makes the kernel wait for an RCU
/// grace period (expand_fdtable's synchronize_rcu when the table is shared): a 14 ms stall in
/// a restore measured inside the test host, more under load. The table never shrinks, so one
/// descriptor opened at FD_TABLE_AT_START - 1 and closed again is enough (about 2 KiB of kernel
/// memory). Failures (a lower RLIMIT_NOFILE) leave it to grow as it would have.
fn grow_fd_table() {
    // SAFETY: fcntl duplicates fd 2 (or fails, e.g. when it is closed) and close releases only
    // the descriptor just made; no memory is involved.
    unsafe {
        let fd = libc::fcntl(
            libc::STDERR_FILENO,
            libc::F_DUPFD_CLOEXEC,
            FD_TABLE_AT_START - 1,
        );
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

/// Sets up the seccomp filters the VM's threads will apply; an error ends `vmm` (exit 1).
fn install_seccomp(args: &SeccompArgs) -> Result<(), ExitCode> {
    vmm_core::seccomp::install(&args.config()).map_err(|error| {
        eprintln!("vmm: error: {}", error_chain(&error));
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    one_malloc_arena();
    grow_fd_table();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if firecracker::invoked_as_firecracker(argv.first()) {
        return firecracker::main(argv);
    }
    if argv.get(1).is_some_and(|a| a == "firecracker") {
        return firecracker::main(argv[1..].to_vec());
    }
    if jailer::invoked_as_jailer(argv.first()) {
        return jailer::main(argv);
    }
    if argv.get(1).is_some_and(|a| a == "jail") {
        return jailer::main(argv[1..].to_vec());
    }
    // The library crates' records (a virtio device that needs a reset, ...) go to stderr as
    // `vmm: ...`, warnings and errors only; nothing is read from the environment (the VMM
    // may run jailed).
    vmm_core::logger::init(
        vmm_core::logger::LogStyle::Vmm,
        vmm_api::DEFAULT_INSTANCE_ID,
    );
    let cli = vmm_cli::on_own_stack(Cli::parse);
    let result = match cli.command {
        Command::Run(mut args) => {
            let api_sock = args.api_sock.take();
            if let Err(code) = install_seccomp(&args.seccomp) {
                return code;
            }
            let socket_mode = args.api_sock_mode;
            if args.exit_stats {
                vmm_core::exit_stats::enable();
            }
            args.into_config()
                .map_err(vmm_core::Error::from)
                .and_then(|config| match api_sock {
                    Some(sock) => {
                        let options = vmm_core::ApiOptions {
                            socket_mode,
                            ..vmm_core::ApiOptions::new(&sock)
                        };
                        vmm_core::run_api_config(vmm_api::ApiConfig::new(config), &options)
                    }
                    None => vmm_core::run_vm(&config),
                })
        }
        Command::Restore(args) => {
            if let Err(code) = install_seccomp(&args.seccomp) {
                return code;
            }
            if args.exit_stats {
                vmm_core::exit_stats::enable();
            }
            let source = vmm_core::RestoreSource {
                state: args.snapshot,
                mem: args.mem,
                mem_diffs: args.mem_diff,
                track_dirty_pages: args.track_dirty_pages,
                disk_clone_dir: args.disk_clone_dir,
                key_file: args.key_file,
                ..Default::default()
            };
            let api = args.api_sock.as_deref().map(|sock| vmm_core::ApiOptions {
                socket_mode: args.api_sock_mode,
                ..vmm_core::ApiOptions::new(sock)
            });
            vmm_core::restore_vm(&source, api.as_ref(), !args.paused)
        }
        Command::Pause(args) => return client::patch_vm(&args.api_sock, "Paused"),
        Command::Resume(args) => return client::patch_vm(&args.api_sock, "Resumed"),
        Command::Status(args) => return client::status(&args.api_sock),
        Command::Stop(args) => return client::stop(&args.client.api_sock, args.timeout),
        Command::Snapshot(SnapshotCommand::Create {
            client,
            snapshot,
            mem,
            diff,
            key_file,
        }) => {
            return client::snapshot_create(
                &client.api_sock,
                &snapshot,
                &mem,
                diff,
                key_file.as_deref(),
            )
        }
        Command::Snapshot(SnapshotCommand::Merge {
            snapshot,
            base,
            diff,
            out,
        }) => {
            return match vmm_core::merge_diff_snapshot(snapshot.as_deref(), &base, &diff, &out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("vmm: error: {}", error_chain(&error));
                    ExitCode::from(1)
                }
            }
        }
        Command::Snapshot(SnapshotCommand::Load {
            client,
            snapshot,
            mem,
            resume,
            key_file,
        }) => {
            return client::snapshot_load(
                &client.api_sock,
                &snapshot,
                &mem,
                resume,
                key_file.as_deref(),
            )
        }
        Command::Fleet(command) => return fleet::main(command),
        Command::Disk(command) => return disk::main(command),
        Command::Firecracker { .. } => unreachable!("handled before parsing"),
        Command::Jail { .. } => unreachable!("handled before parsing"),
    };
    // The VM has ended (or never started): its exits, when they were counted.
    if let Some(table) = vmm_core::exit_stats::report() {
        eprint!("{table}");
    }
    match result {
        Ok(reason) => {
            let code = reason.exit_code();
            // A clean guest reboot (i8042 or ACPI reset) or power-off (ACPI S5) needs no word;
            // anything else (a triple fault is how a dying guest resets, a signal, a crash, a
            // quit from the console) is said once.
            if !matches!(
                reason,
                vmm_core::ShutdownReason::GuestReset | vmm_core::ShutdownReason::GuestPowerOff
            ) {
                eprintln!("vmm: VM ended: {reason}");
            }
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(error) => {
            eprintln!("vmm: error: {}", error_chain(&error));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_modes_are_octal() {
        let cli = Cli::try_parse_from(["vmm", "run", "--api-sock", "s"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.api_sock_mode, 0o600);
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("vmm-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.json");
        std::fs::write(
            &file,
            r#"{"kernel": "/a", "vcpus": 2, "memory": "128M", "append": "x=1"}"#,
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "vmm",
            "run",
            "--config",
            file.to_str().unwrap(),
            "--vcpus",
            "4",
            "--append",
            "y=2",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.kernel, Some(PathBuf::from("/a")));
        assert_eq!(config.vcpus, 4);
        assert_eq!(config.memory, MemorySize(128 << 20));
        assert_eq!(config.append.as_deref(), Some("y=2"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_flag_values_are_refused_by_the_parser() {
        for args in [
            vec!["vmm", "run", "--memory", "lots"],
            vec!["vmm", "run", "--vcpus", "-1"],
            vec!["vmm", "run", "--serial", "tcp:1"],
            vec!["vmm", "run", "--elf-entry", "bios"],
        ] {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn exit_stats_flag_on_run_and_restore() {
        let cli = Cli::try_parse_from(["vmm", "run", "--kernel", "/k", "--exit-stats"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.exit_stats);
        let cli = Cli::try_parse_from([
            "vmm",
            "restore",
            "--snapshot",
            "/s",
            "--mem",
            "/m",
            "--exit-stats",
        ])
        .unwrap();
        let Command::Restore(args) = cli.command else {
            panic!("not restore")
        };
        assert!(args.exit_stats);
    }

    #[test]
    fn diff_snapshot_flags_parse() {
        let cli = Cli::try_parse_from([
            "vmm",
            "restore",
            "--snapshot",
            "/s",
            "--mem",
            "/m",
            "--mem-diff",
            "/d1",
            "--mem-diff",
            "/d2",
            "--track-dirty-pages",
        ])
        .unwrap();
        let Command::Restore(args) = cli.command else {
            panic!("not restore")
        };
        assert_eq!(args.mem_diff, [PathBuf::from("/d1"), PathBuf::from("/d2")]);
        assert!(args.track_dirty_pages);
        let cli =
            Cli::try_parse_from(["vmm", "run", "--kernel", "/k", "--track-dirty-pages"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.into_config().unwrap().track_dirty_pages);
        let cli = Cli::try_parse_from([
            "vmm",
            "snapshot",
            "create",
            "--api-sock",
            "/a",
            "--snapshot",
            "/s",
            "--mem",
            "/m",
            "--diff",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Snapshot(SnapshotCommand::Create { diff: true, .. })
        ));
        let cli = Cli::try_parse_from([
            "vmm", "snapshot", "merge", "--base", "/b", "--diff", "/d", "--out", "/o",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Snapshot(SnapshotCommand::Merge { snapshot: None, .. })
        ));
    }

    #[test]
    fn error_chain_is_one_line() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let outer = vmm_core::Error::OpenFile {
            what: "kernel",
            path: "/x".into(),
            source: inner,
        };
        assert_eq!(error_chain(&outer), "cannot open kernel /x: No such file");
    }
}
