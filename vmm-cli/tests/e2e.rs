//! Tier 3: full Linux boots of the shared guest (VMM_GUEST_DIR, default ../shared/guest) through
//! the whole VMM, asserting the guest's marker lines and the exit code.
//!
//! These need a /dev/kvm with hardware virtualization. On a PVM host run them inside the
//! test host (`scripts/e2e.sh` does that, in one test-host boot for the whole suite); run
//! directly they refuse to start there, loudly. `cargo test` leaves this target out (it is
//! `test = false`); `scripts/e2e.sh` or `cargo test --test e2e` runs it.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "e2e/disk.rs"]
mod disk;
#[path = "e2e/firecracker.rs"]
mod firecracker;
#[path = "e2e/fleet.rs"]
mod fleet;
#[path = "e2e/jail.rs"]
mod jail;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/luks.rs"]
mod luks;
#[path = "e2e/power.rs"]
mod power;
#[path = "e2e/verity.rs"]
mod verity;
#[path = "e2e/virtio.rs"]
mod virtio;

/// Per-boot limit: nested boots in the test host take seconds; the Debian kernel a minute.
/// An upper bound only: every test waits for the guest's lines, never for a duration.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Quiet guests: serial output is the slowest part of a nested boot. `noxsave` avoids a
/// spurious XSAVE warning in the nested test host (see ../shared/testhost/README.md).
const QUIET: &str = "quiet noxsave";

fn guest(name: &str) -> String {
    let dir = std::env::var_os("VMM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/guest"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: set VMM_GUEST_DIR to the guest image folder",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A scratch directory `vmm-e2e-<name>-<pid>` for one test (modules prefix `name` with their
/// own name), emptied first; the test removes it when it passes.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `dir/name` as a string, for command lines.
pub(crate) fn path_in(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Runs a host command; panics with its output unless it succeeds. Returns its stdout.
pub(crate) fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} (scripts/install-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{program} {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_real_kvm() {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    assert!(
        !pvm,
        "this host's /dev/kvm is PVM, which cannot boot Linux: run the end-to-end suite with scripts/e2e.sh \
         (it runs inside ../shared/testhost)"
    );
}

/// How fast the gated guest tests work, for checking that no test depends on it:
/// `E2E_GUEST_SCALE` (default 1) multiplies the size of a `busy-gated` unit and the interval of
/// `count-gated` and `diskwrite` (0.1: ten times faster; 5: five times slower).
fn guest_scale() -> f64 {
    std::env::var("E2E_GUEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0)
}

/// `base` scaled by [`guest_scale`], at least 1.
fn scaled(base: u64) -> u64 {
    ((base as f64 * guest_scale()).round() as u64).max(1)
}

/// A gate for the test initramfs's gated guest tests (scripts/guest/tests/gate.sh): a small
/// read-only disk whose first sector the test writes to tell the guest to go on, to stop at a
/// given item, or that it may finish. This lets a test act on the guest's progress instead of
/// guessing how long its work takes.
struct Gate {
    path: PathBuf,
}

impl Gate {
    /// A new gate that runs (the guest goes on and does not finish).
    fn new(dir: &Path, name: &str) -> Gate {
        let gate = Gate {
            path: dir.join(name),
        };
        std::fs::write(&gate.path, vec![0u8; 4096]).unwrap();
        gate
    }

    /// The `--disk` argument that attaches it.
    fn disk(&self) -> String {
        format!("path={},read_only=on", self.path.display())
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn set(&self, word: &str) {
        use std::os::unix::fs::FileExt;
        let mut sector = vec![0u8; 512];
        sector[..word.len()].copy_from_slice(word.as_bytes());
        sector[word.len()] = b'\n';
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        file.write_all_at(&sector, 0).unwrap();
        file.sync_all().unwrap();
    }

    /// The guest may finish once it has done its minimum.
    fn open(&self) {
        self.set("open");
    }

    /// The guest may finish once it has done its minimum and item `last`.
    fn open_at(&self, last: usize) {
        self.set(&format!("open {last}"));
    }

    /// The guest may start items up to `last`, then waits.
    fn allow_up_to(&self, last: u32) {
        self.set(&last.to_string());
    }
}

/// One of a child's output pipes, read without blocking: poll(2) says when bytes are there.
struct OutputPipe {
    fd: std::os::fd::RawFd,
    reader: Box<dyn Read + Send>,
    partial: Vec<u8>,
    closed: bool,
}

impl OutputPipe {
    fn new<T: Read + AsRawFd + Send + 'static>(pipe: T) -> OutputPipe {
        let fd = pipe.as_raw_fd();
        // SAFETY: fcntl on a pipe fd that `pipe` owns and keeps open as long as this struct.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            assert!(flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0);
        }
        OutputPipe {
            fd,
            reader: Box::new(pipe),
            partial: Vec::new(),
            closed: false,
        }
    }

    /// Reads everything the pipe holds now; complete lines go to `lines`.
    fn read_available(&mut self, lines: &mut Vec<String>) {
        let mut chunk = [0u8; 8192];
        while !self.closed {
            match self.reader.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.partial.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the vmm's output: {e}"),
            }
        }
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            lines.push(text.trim_end_matches(['\n', '\r']).to_string());
        }
        if self.closed && !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            lines.push(String::from_utf8_lossy(&rest).trim_end().to_string());
        }
    }
}

/// A running `vmm` with its stdout and stderr read line by line (both into one list).
struct Running {
    child: Child,
    pipes: Vec<OutputPipe>,
    /// Every line so far, in the order read.
    seen: Vec<String>,
    /// How many of `seen` [`Running::next_line`] has handed out.
    handed: usize,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        Running::start_in(&[], args)
    }

    /// Starts `vmm ARGS` (a subcommand other than `run`).
    fn start_raw(args: &[&str]) -> Running {
        Running::spawn(&[], args)
    }

    /// Starts `vmm run ARGS` through `prefix` (e.g. `ip netns exec NS`) when it is not empty.
    fn start_in(prefix: &[&str], args: &[&str]) -> Running {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        Running::spawn(prefix, &all)
    }

    fn spawn(prefix: &[&str], args: &[&str]) -> Running {
        Running::spawn_program(Path::new(env!("CARGO_BIN_EXE_vmm")), prefix, args)
    }

    /// Starts `program ARGS` (another VMM binary), through `prefix` when it is not empty.
    fn spawn_program(program: &Path, prefix: &[&str], args: &[&str]) -> Running {
        require_real_kvm();
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmm");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let stderr: ChildStderr = child.stderr.take().unwrap();
        Running {
            child,
            pipes: vec![OutputPipe::new(stdout), OutputPipe::new(stderr)],
            seen: Vec::new(),
            handed: 0,
        }
    }

    /// Collects every complete line the vmm has written so far. Once the VMM has answered a
    /// pause, everything its guest printed before is in the pipes: this reads all of it.
    fn collect_output(&mut self) {
        for pipe in &mut self.pipes {
            pipe.read_available(&mut self.seen);
        }
    }

    /// Waits until the vmm writes more (or closes its output), at most until `deadline`.
    /// Returns false at the deadline.
    fn wait_for_output(&mut self, deadline: Instant) -> bool {
        let mut fds: Vec<libc::pollfd> = self
            .pipes
            .iter()
            .filter(|p| !p.closed)
            .map(|p| libc::pollfd {
                fd: p.fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            return Instant::now() < deadline;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of fds.len() pollfd structs for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        n != 0 || Instant::now() < deadline
    }

    /// The next line not yet handed out, waiting for it until `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(line) = self.seen.get(self.handed) {
                self.handed += 1;
                return Some(line.clone());
            }
            self.collect_output();
            if self.handed < self.seen.len() {
                continue;
            }
            if self.pipes.iter().all(|p| p.closed) || !self.wait_for_output(deadline) {
                return None;
            }
        }
    }

    /// Waits for a line starting with `marker` and returns it.
    fn expect(&mut self, marker: &str, deadline: Instant) -> String {
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.starts_with(marker)) {
                return line.clone();
            }
            self.collect_output();
            if self.seen.iter().any(|l| l.starts_with(marker)) {
                continue;
            }
            let ended = self.pipes.iter().all(|p| p.closed);
            if ended || !self.wait_for_output(deadline) {
                let status = self.kill();
                panic!(
                    "no line starting with {marker:?} (vmm {status}{}); output so far:\n{}",
                    if ended {
                        ", output closed"
                    } else {
                        ", timed out"
                    },
                    self.seen.join("\n")
                );
            }
        }
    }

    /// SIGKILLs the vmm and says how it ended. The wait is bounded: a process that outlives
    /// SIGKILL for a minute is stuck in the (test host's) kernel, and the test must fail with
    /// its output instead of hanging the suite.
    fn kill(&mut self) -> String {
        let _ = self.child.kill();
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => return "still running a minute after SIGKILL".to_string(),
                Err(e) => return format!("not waitable: {e}"),
            }
        }
    }

    fn send(&mut self, input: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the process to end and returns its exit code and all output.
    fn finish(mut self, deadline: Instant) -> (i32, String) {
        drop(self.child.stdin.take());
        // The output closes when the vmm (and anything it started) has exited.
        while !self.pipes.iter().all(|p| p.closed) {
            self.collect_output();
            if !self.pipes.iter().all(|p| p.closed) && !self.wait_for_output(deadline) {
                let status = self.kill();
                panic!(
                    "vmm did not exit (killed: {status}); output:\n{}",
                    self.seen.join("\n")
                );
            }
        }
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }
}

/// Boots, runs the guest tests named in `tests`, and checks every marker and exit code 0.
///
/// Inside the nested test host (QEMU TCG emulating SVM) a boot fails now and then for reasons
/// of that emulation (its README: hangs under load); there a failed boot is retried once, and
/// the first failure is printed in full so that it stays visible. On real KVM: no retry.
fn boot_and_test(args: &[&str], tests: &str, markers: &[&str]) -> String {
    boot_and_test_in(&[], args, tests, markers)
}

/// [`boot_and_test`] with the VMM started through `prefix` (e.g. `ip netns exec NS`).
fn boot_and_test_in(prefix: &[&str], args: &[&str], tests: &str, markers: &[&str]) -> String {
    retried_in_test_host(|| boot_and_test_once(prefix, args, tests, markers))
}

/// Runs `boot`; inside the test host a failed boot is retried once (see [`boot_and_test`]).
fn retried_in_test_host<T>(boot: impl Fn() -> T + std::panic::RefUnwindSafe) -> T {
    if std::env::var_os("TESTHOST").is_none() {
        return boot();
    }
    // The panic message of the first attempt is printed by the default hook as it happens.
    match std::panic::catch_unwind(&boot) {
        Ok(output) => output,
        Err(_) => {
            eprintln!("e2e: RETRYING after a failed nested boot (first failure above)");
            boot()
        }
    }
}

fn boot_and_test_once(prefix: &[&str], args: &[&str], tests: &str, markers: &[&str]) -> String {
    let append = format!("{QUIET} guest.test={tests}");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--append", &append]);
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = Running::start_in(prefix, &all);
    vm.expect("GUEST-INIT-OK", deadline);
    for marker in markers {
        vm.expect(marker, deadline);
    }
    vm.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = vm.finish(deadline);
    assert_eq!(
        code, 0,
        "the guest's reboot must end vmm with 0; output:\n{output}"
    );
    assert!(!output.contains("vmm: error"), "{output}");
    output
}

#[test]
fn vmlinux_pvh_one_vcpu_small_memory() {
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--vcpus",
            "1",
            "--memory",
            "64M",
            "--append",
            "guest.cpus=1",
        ],
        "smp",
        &["SMP-OK 1"],
    );
}

/// `--exit-stats` on a Linux boot: the table is printed (run with --nocapture to read it; the
/// README's "Exits of a Linux boot" shows one) and counts some exits.
#[test]
fn exit_stats_of_a_linux_boot() {
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    let output = boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--vcpus",
            "1",
            "--exit-stats",
            "--append",
            "guest.cpus=1",
        ],
        "smp",
        &["SMP-OK 1"],
    );
    let table = output
        .split_once("vmm: vCPU exits: ")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no exit table:\n{output}"));
    println!("e2e: exit table of a Linux boot:\nvmm: vCPU exits: {table}");
    let total: u64 = table
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total in the table:\n{table}"));
    assert!(total > 0, "{table}");
    assert!(table.contains("by device:"), "{table}");
}

#[test]
fn vmlinux_64bit_entry_two_vcpus() {
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--elf-entry",
            "linux64",
            "--vcpus",
            "2",
            "--append",
            "guest.cpus=2",
        ],
        "smp",
        &["SMP-OK 2"],
    );
}

#[test]
fn bzimage_eight_vcpus_from_the_mp_table_and_memory_above_4g() {
    // acpi=off: the guest finds its CPUs and interrupt routing in the MP table alone.
    let (kernel, initrd) = (guest("bzImage"), guest("initramfs.cpio.gz"));
    let output = boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--vcpus",
            "8",
            "--memory",
            "5G",
            "--append",
            "acpi=off guest.cpus=8",
        ],
        "devices,smp",
        &["DEVICES-OK", "SMP-OK 8"],
    );
    // The guest must see (almost) all 5 GiB: RAM on both sides of the MMIO gap in its e820 map.
    let line = output
        .lines()
        .find(|l| l.starts_with("devices: cpus="))
        .expect("devices line");
    let kib: u64 = line
        .split("mem=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no mem= in {line:?}"));
    assert!(
        kib > 4 << 20 && kib <= 5 << 20,
        "guest MemTotal {kib} kB for 5 GiB of RAM"
    );
}

#[test]
fn debian_distro_kernel_reaches_init_and_finds_both_cpus_in_acpi() {
    // Debian's kernel has no MP-table parser: it finds the second CPU only in the ACPI MADT.
    let (kernel, initrd) = (guest("debian-cloud-vmlinuz"), guest("initramfs.cpio.gz"));
    boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--vcpus",
            "2",
            "--append",
            "guest.cpus=2",
        ],
        "smp",
        &["SMP-OK 2"],
    );
}

#[test]
fn interactive_shell_then_reboot_exits_zero() {
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = Running::start(&[
        "--kernel", &kernel, "--initrd", &initrd, "--vcpus", "2", "--append", QUIET,
    ]);
    vm.expect("GUEST-INIT-OK", deadline);
    vm.expect("guest: leaving the shell", deadline);
    // The shell may still be starting: repeat the command until its answer appears (each try
    // waits up to 10 s for it; all of them together are bounded by the boot deadline).
    let mut answered = false;
    while !answered && Instant::now() < deadline {
        vm.send("echo SHELL-$((6*7))\n");
        let try_until = (Instant::now() + Duration::from_secs(10)).min(deadline);
        while let Some(line) = vm.next_line(try_until) {
            if line.contains("SHELL-42") {
                answered = true;
                break;
            }
        }
    }
    assert!(
        answered,
        "the shell never answered; output:\n{}",
        vm.seen.join("\n")
    );
    vm.send("reboot -f\n");
    let (code, output) = vm.finish(deadline);
    assert_eq!(code, 0, "{output}");
}

/// The minimal-vmm example (examples/minimal-vmm: no vmm-core), built beside `vmm`.
fn minimal_vmm() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_vmm")).with_file_name("minimal-vmm");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p minimal-vmm` (scripts/e2e.sh does)",
        path.display()
    );
    path
}

#[test]
fn minimal_vmm_example_boots_linux_on_two_vcpus_and_ends_on_the_guests_reboot() {
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux \
         i8042.dumbkbd {QUIET} guest.test=smp guest.cpus=2"
    );
    let program = minimal_vmm();
    let args = [&kernel, &cmdline, "--initrd", &initrd, "--vcpus", "2"];
    let (code, output) = retried_in_test_host(|| {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut vm = Running::spawn_program(&program, &[], &args);
        vm.expect("GUEST-INIT-OK", deadline);
        vm.expect("SMP-OK 2", deadline);
        vm.expect("GUEST-TEST-DONE", deadline);
        vm.finish(deadline)
    });
    // No ACPI S5 in the tables: the guest's poweroff becomes a reboot, through the i8042.
    let ended = "minimal-vmm: the guest reset the VM (i8042)";
    assert_eq!(
        code, 0,
        "its reboot must end minimal-vmm with 0; output:\n{output}"
    );
    assert!(output.contains(ended), "{output}");
    assert!(!output.contains("minimal-vmm: error"), "{output}");
}
