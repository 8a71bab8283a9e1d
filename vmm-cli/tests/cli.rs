//! Tier 2: the `vmm` binary end to end on this machine's /dev/kvm with the tiny PVH guest
//! (../shared/guest/tiny-pvh.elf), and every bad-input case the CLI must refuse cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn guest_dir() -> PathBuf {
    std::env::var_os("VMM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/guest"))
}

fn guest_file(name: &str) -> PathBuf {
    let path = guest_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: set VMM_GUEST_DIR to the guest image folder",
        path.display()
    );
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-cli-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The run failed with exit code 1 and exactly one error line on stderr containing `needle`.
fn assert_clean_error(output: &Output, needle: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("vmm: warning"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected, got: {stderr}");
    assert!(lines[0].starts_with("vmm: error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Reads the VMM's output until the guest's GUEST-INIT-OK line.
fn wait_for_marker(output: &mut impl BufRead) {
    let mut line = String::new();
    while !line.contains("GUEST-INIT-OK") {
        line.clear();
        assert!(
            output.read_line(&mut line).unwrap() > 0,
            "vmm closed its output before the marker"
        );
    }
}

#[test]
fn tiny_pvh_guest_prints_its_marker_and_exits_zero() {
    let kernel = guest_file("tiny-pvh.elf");
    let output = vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=1",
        "--memory",
        "64M",
    ]);
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("GUEST-INIT-OK"),
        "stdout: {stdout} stderr: {}",
        text(&output.stderr)
    );
    assert!(stdout.contains("GUEST-TEST-DONE"), "{stdout}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
}

#[test]
fn both_irqchip_modes_run_the_tiny_guest_and_a_bad_mode_is_refused() {
    let kernel = guest_file("tiny-pvh.elf");
    let k = kernel.to_str().unwrap();
    for mode in ["split", "kernel"] {
        let output = vmm(&[
            "run",
            "--kernel",
            k,
            "--cmdline",
            "test=1",
            "--irqchip",
            mode,
        ]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{mode}: {}",
            text(&output.stderr)
        );
        assert!(text(&output.stdout).contains("GUEST-TEST-DONE"), "{mode}");
    }
    let output = vmm(&["run", "--kernel", k, "--irqchip", "both"]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        text(&output.stderr).contains("use split or kernel"),
        "{}",
        text(&output.stderr)
    );
    // The environment variable is the flag's default (the e2e suite runs on it).
    let output = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["run", "--kernel", k])
        .env("VMM_IRQCHIP", "neither")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    assert!(
        text(&output.stderr).contains("neither"),
        "{}",
        text(&output.stderr)
    );
}

/// The row of `table` for `exit` at `address`: its count.
fn exit_count(table: &str, exit: &str, address: &str) -> Option<u64> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&exit) && fields.get(3) == Some(&address))
            .then(|| fields[0].parse().ok())
            .flatten()
    })
}

#[test]
fn exit_stats_count_the_tiny_guests_exits() {
    let kernel = guest_file("tiny-pvh.elf");
    let output = vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=1",
        "--memory",
        "64M",
        "--exit-stats",
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    let table = stderr
        .split_once("vmm: vCPU exits: ")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no exit table in stderr: {stderr}"));
    // One OUT to COM1's THR per byte of its two lines, and nothing else on COM1 (it never
    // reads LSR).
    let serial = ("GUEST-INIT-OK\r\n".len() + "GUEST-TEST-DONE\r\n".len()) as u64;
    assert_eq!(
        exit_count(table, "pio-out", "0x3f8"),
        Some(serial),
        "{table}"
    );
    // Its stop: the ACPI sleep control write powers the VM off. The main thread then stops
    // the vCPU, which meanwhile may or may not reach the guest's fallbacks (the MMIO write,
    // then the i8042 reset): each happens at most once, however fast the VMM stops it.
    assert_eq!(exit_count(table, "pio-out", "0x600"), Some(1), "{table}");
    for (exit, address) in [("mmio-write", "0xfea00200"), ("pio-out", "0x64")] {
        assert!(
            matches!(exit_count(table, exit, address), None | Some(1)),
            "{exit} {address}: {table}"
        );
    }
    let total: u64 = table
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total: {table}"));
    assert!(total > serial, "{table}");
    // Without the flag, no table.
    let plain = vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=1",
        "--memory",
        "64M",
    ]);
    assert!(!text(&plain.stderr).contains("vCPU exits"));
}

#[test]
fn config_file_and_serial_file() {
    let kernel = guest_file("tiny-pvh.elf");
    let out = scratch("serial.txt");
    let _ = std::fs::remove_file(&out);
    let config = scratch("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"kernel": "{}", "cmdline": "test=1", "vcpus": 2, "memory": "32M", "serial": "file:{}"}}"#,
            kernel.display(),
            out.display()
        ),
    )
    .unwrap();
    let output = vmm(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).is_empty(),
        "serial went to the file, not stdout"
    );
    let serial = std::fs::read_to_string(&out).unwrap();
    assert!(
        serial.contains("GUEST-INIT-OK") && serial.contains("GUEST-TEST-DONE"),
        "{serial}"
    );
}

/// The tiny guest under `vmm run EXTRA`, halted for ever after its marker (no `test=`), sent
/// SIGTERM once the marker is out. Its stderr is piped.
fn sigterm_a_halted_tiny_guest(extra: &[&str]) -> std::process::Child {
    let kernel = guest_file("tiny-pvh.elf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["run", "--kernel", kernel.to_str().unwrap()])
        .args(["--cmdline", "console=ttyS0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_marker(&mut BufReader::new(child.stdout.take().unwrap()));
    // SAFETY: sends SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child
}

#[test]
fn sigterm_ends_a_halted_guest_cleanly() {
    let status = sigterm_a_halted_tiny_guest(&[]).wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
}

/// [`sigterm_a_halted_tiny_guest`] with `--shutdown-grace SECONDS` (the tiny guest is deaf to
/// the power button): the child and its stderr, read up to the line that says the button was
/// pressed.
fn sigterm_with_grace(
    seconds: &str,
) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut child = sigterm_a_halted_tiny_guest(&["--shutdown-grace", seconds]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("pressed the power button") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "vmm closed stderr before pressing the power button"
        );
    }
    assert!(
        line.contains(&format!("the guest has {seconds} s")),
        "{line}"
    );
    (child, stderr)
}

#[test]
fn a_shutdown_grace_presses_the_power_button_then_ends_at_its_deadline() {
    // The tiny guest never powers off: the grace runs out (an upper bound, not a speed).
    let (mut child, mut stderr) = sigterm_with_grace("1");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("did not power off within 1 s"), "{rest}");
}

#[test]
fn a_second_signal_ends_the_shutdown_grace_at_once() {
    let (mut child, _stderr) = sigterm_with_grace("3600");
    // SAFETY: sends SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
}

#[test]
fn host_input_on_a_pipe_neither_blocks_nor_ends_the_vm() {
    // The tiny guest never reads its UART, so this checks that input on a pipe neither blocks nor
    // kills the VMM, and that EOF on stdin is harmless.
    let kernel = guest_file("tiny-pvh.elf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "test=1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(&[b'x'; 4096]);
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).contains("GUEST-TEST-DONE"));
}

#[test]
fn missing_kernel_file() {
    assert_clean_error(
        &vmm(&["run", "--kernel", "/nonexistent/vmlinux"]),
        "cannot open kernel /nonexistent/vmlinux",
    );
}

#[test]
fn no_kernel_at_all() {
    assert_clean_error(&vmm(&["run"]), "no kernel given");
}

#[test]
fn bad_instance_ids() {
    let kernel = guest_file("tiny-pvh.elf");
    let k = kernel.to_str().unwrap();
    for id in ["", "has space", "under_score", &"x".repeat(65)] {
        assert_clean_error(
            &vmm(&["run", "--kernel", k, "--id", id]),
            "invalid instance id",
        );
        // Also when the VM waits for its configuration over the API.
        assert_clean_error(
            &vmm(&["run", "--api-sock", "/nonexistent/dir/api.sock", "--id", id]),
            "invalid instance id",
        );
    }
}

#[test]
fn kernel_that_is_a_directory() {
    assert_clean_error(&vmm(&["run", "--kernel", "/tmp"]), "is a directory");
}

#[test]
fn files_that_are_not_kernels() {
    let text_file = scratch("notes.txt");
    std::fs::write(&text_file, "just some text, not a kernel\n").unwrap();
    let random = scratch("random.bin");
    let bytes: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&random, bytes).unwrap();
    let empty = scratch("empty");
    std::fs::write(&empty, b"").unwrap();
    let truncated = scratch("truncated.elf");
    let elf = std::fs::read(guest_file("tiny-pvh.elf")).unwrap();
    std::fs::write(&truncated, &elf[..100]).unwrap();
    for file in [&text_file, &random, &empty, &truncated] {
        let output = vmm(&["run", "--kernel", file.to_str().unwrap()]);
        assert_clean_error(&output, "cannot load kernel");
    }
}

#[test]
fn bad_memory_sizes() {
    let kernel = guest_file("tiny-pvh.elf");
    let k = kernel.to_str().unwrap();
    assert_clean_error(&vmm(&["run", "--kernel", k, "--memory", "0"]), "too small");
    assert_clean_error(
        &vmm(&["run", "--kernel", k, "--memory", "64T"]),
        "more than the host",
    );
    let output = vmm(&["run", "--kernel", k, "--memory", "lots"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap refuses unparsable sizes"
    );
}

#[test]
fn bad_vcpu_counts() {
    let kernel = guest_file("tiny-pvh.elf");
    let k = kernel.to_str().unwrap();
    assert_clean_error(
        &vmm(&["run", "--kernel", k, "--vcpus", "0"]),
        "at least 1 vCPU",
    );
    assert_clean_error(
        &vmm(&["run", "--kernel", k, "--vcpus", "100000"]),
        "vCPUs requested",
    );
}

#[test]
fn missing_initrd() {
    let kernel = guest_file("tiny-pvh.elf");
    let output = vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_clean_error(&output, "cannot open initrd /nonexistent/initrd");
}

#[test]
fn initrd_that_does_not_fit() {
    let kernel = guest_file("tiny-pvh.elf");
    let big = scratch("big-initrd");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let output = vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        big.to_str().unwrap(),
        "--memory",
        "8M",
    ]);
    assert_clean_error(&output, "cannot load initrd");
}

#[test]
fn bad_config_file() {
    let config = scratch("bad.json");
    std::fs::write(&config, r#"{"kernal": "/typo"}"#).unwrap();
    assert_clean_error(
        &vmm(&["run", "--config", config.to_str().unwrap()]),
        "invalid config file",
    );
    assert_clean_error(
        &vmm(&["run", "--config", "/nonexistent.json"]),
        "cannot read config file",
    );
}

#[test]
fn command_line_too_long() {
    let kernel = guest_file("tiny-pvh.elf");
    let long = "x".repeat(5000);
    assert_clean_error(
        &vmm(&[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--append",
            &long,
        ]),
        "boot setup",
    );
}

#[test]
fn no_access_to_dev_kvm() {
    // As an unprivileged user (root can't be denied): /dev/kvm is root-only on this machine.
    let kernel = guest_file("tiny-pvh.elf");
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        panic!("setpriv (util-linux) is needed for this test");
    };
    let kvm_mode = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    // The checkout may sit where user nobody cannot reach: copy binary and kernel to /tmp.
    let binary = scratch("vmm-as-nobody");
    std::fs::copy(env!("CARGO_BIN_EXE_vmm"), &binary).unwrap();
    let kernel_copy = scratch("tiny-pvh-as-nobody.elf");
    std::fs::copy(&kernel, &kernel_copy).unwrap();
    for path in [&binary, &kernel_copy] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    std::fs::set_permissions(
        binary.parent().unwrap(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let output = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["run", "--kernel", kernel_copy.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if matches!(kvm_mode, Ok(mode) if mode & 0o006 == 0o006) {
        // /dev/kvm open to all: nothing to deny; the run must still not fail on permissions.
        assert!(!text(&output.stderr).contains("no permission"));
    } else {
        assert_clean_error(&output, "no permission to open /dev/kvm");
    }
}

#[test]
fn pvm_host_explains_why_linux_cannot_boot() {
    // On a PVM host an ordinary kernel dies in KVM's emulator (~15 s in); the VMM must say why
    // up front and name the internal error with its RIP. Elsewhere there is no such warning.
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let (kernel, initrd) = (guest_file("vmlinux"), guest_file("initramfs.cpio.gz"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ])
        .args(["--serial", "none", "--append", "guest.test=poweroff"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    if !pvm {
        // Real KVM: the guest boots and powers off; nothing on stderr.
        let status = child.wait().unwrap();
        stderr.read_line(&mut first).unwrap();
        assert_eq!(status.code(), Some(0), "{first}");
        assert!(first.is_empty(), "{first}");
        return;
    }
    stderr.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("vmm: warning: ") && first.contains("PVM"),
        "{first}"
    );
    // The emulator reaches the failing instruction in ~15 s here and the VM ends by itself;
    // the deadline is an upper bound only, for a VMM that would hang instead.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "vmm still running after 600 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(lines.len(), 1, "{rest}");
    assert!(lines[0].starts_with("vmm: error: "), "{rest}");
    assert!(
        lines[0].contains("KVM internal error") && lines[0].contains("RIP 0x"),
        "{rest}"
    );
    assert!(lines[0].contains("PVM"), "{rest}");
}

#[test]
fn memory_options_boot() {
    let kernel = guest_file("tiny-pvh.elf");
    let output = vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=1",
        "--memory",
        "64M",
        "--hugepages",
        "--ksm",
        "--prefault",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert!(text(&output.stdout).contains("GUEST-TEST-DONE"));
}

/// The local-mode flags of a terminal.
fn lflag(fd: i32) -> libc::tcflag_t {
    // SAFETY: tcgetattr fills a termios we own for a descriptor we opened.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut t), 0);
        t.c_lflag
    }
}

/// `vmm run` of the tiny guest with its console on a new pseudo-terminal, once the guest is up:
/// the child, the terminal's master side (what the VMM writes; writing it types), and the
/// slave side's descriptor (to read its mode).
fn tiny_guest_on_a_pty() -> (std::process::Child, BufReader<std::fs::File>, i32) {
    use std::os::fd::FromRawFd;
    let kernel = guest_file("tiny-pvh.elf");
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into our integers; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0);
    let canonical = libc::ICANON | libc::ECHO;
    assert_eq!(
        lflag(slave) & canonical,
        canonical,
        "a new pty starts canonical"
    );
    // SAFETY: `slave` is a descriptor we own; each File gets its own duplicate.
    let (stdin, stdout) = unsafe { (libc::dup(slave), libc::dup(slave)) };
    let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
        ])
        // SAFETY: the duplicated descriptors are ours alone; each is handed to the child once.
        .stdin(unsafe { Stdio::from_raw_fd(stdin) })
        // SAFETY: as for stdin.
        .stdout(unsafe { Stdio::from_raw_fd(stdout) })
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // SAFETY: `master` is ours; reading it sees what the VMM writes to the terminal. The reader
    // lives as long as the caller keeps it: closing the master would hang up the VMM's terminal.
    let mut terminal = BufReader::new(unsafe { std::fs::File::from_raw_fd(master) });
    wait_for_marker(&mut terminal);
    assert_eq!(lflag(slave) & canonical, 0, "raw while the guest runs");
    (child, terminal, slave)
}

#[test]
fn terminal_is_raw_while_running_and_restored_after() {
    let (child, _terminal, slave) = tiny_guest_on_a_pty();
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(128 + libc::SIGTERM));
    let canonical = libc::ICANON | libc::ECHO;
    assert_eq!(lflag(slave) & canonical, canonical, "restored on exit");
    // SAFETY: closes the descriptor we still own.
    unsafe { libc::close(slave) };
}

#[test]
fn ctrl_a_x_on_the_console_quits_with_exit_code_5_and_restores_the_terminal() {
    let (child, mut terminal, slave) = tiny_guest_on_a_pty();
    // Ctrl-A Ctrl-A is a literal Ctrl-A for the guest, not a quit; then Ctrl-A x.
    terminal.get_mut().write_all(b"\x01\x01").unwrap();
    terminal.get_mut().write_all(b"\x01x").unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("quit from the console (Ctrl-A x)"),
        "{stderr}"
    );
    let canonical = libc::ICANON | libc::ECHO;
    assert_eq!(lflag(slave) & canonical, canonical, "restored on exit");
    // SAFETY: closes the descriptor we still own.
    unsafe { libc::close(slave) };
}

#[test]
fn tiny_guest_runs_with_every_virtio_device_but_net_attached() {
    // The devices are created, placed on the MMIO bus and wired to irqfd/ioeventfd on this
    // host's KVM; the tiny guest never drives them, so this checks the setup path and teardown
    // (the vsock socket file is removed on exit).
    let kernel = guest_file("tiny-pvh.elf");
    let disk = scratch("tiny-virtio.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let socket = scratch("tiny-virtio.sock");
    let _ = std::fs::remove_file(&socket);
    let output = vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=virtio",
        "--disk",
        &format!("path={},id=tiny", disk.display()),
        "--disk",
        &format!("path={},read_only=on", guest_file("rootfs.ext4").display()),
        "--vsock",
        &format!("cid=3,socket={}", socket.display()),
        "--rng",
        "--balloon",
        "target=16M",
    ]);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("GUEST-INIT-OK"), "{stdout}");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(!socket.exists(), "the vsock socket outlived vmm");
}

#[test]
fn bad_virtio_flags_fail_with_one_line_before_the_guest_starts() {
    let kernel = guest_file("tiny-pvh.elf");
    let kernel = kernel.to_str().unwrap();
    let missing = scratch("no-such-disk.img");
    let dir = scratch("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let disk = scratch("dup.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let existing = scratch("existing-file");
    std::fs::write(&existing, b"x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--disk".into(), format!("path={}", missing.display())],
            "cannot attach disk",
        ),
        (
            vec!["--disk".into(), format!("path={}", dir.display())],
            "cannot attach disk",
        ),
        (
            vec![
                "--disk".into(),
                format!("path={},id=same", disk.display()),
                "--disk".into(),
                format!("path={},id=same", missing.display()),
            ],
            "two disks have the id \"same\"",
        ),
        (
            vec![
                "--disk".into(),
                format!("path={}", disk.display()),
                "--disk".into(),
                format!("path={}", disk.display()),
            ],
            "is attached twice",
        ),
        (
            vec![
                "--disk".into(),
                format!("path={},id=an-id-longer-than-twenty", disk.display()),
            ],
            "cannot attach disk",
        ),
        (
            vec!["--net".into(), "tap=bad/name".into()],
            "cannot attach network device: invalid tap name \"bad/name\"",
        ),
        (
            vec!["--net".into(), "tap=a-name-far-too-long-for-linux".into()],
            "cannot attach network device",
        ),
        (
            vec![
                "--net".into(),
                "tap=t0".into(),
                "--net".into(),
                "tap=t0".into(),
            ],
            "two network devices use tap \"t0\"",
        ),
        (
            vec![
                "--vsock".into(),
                format!("cid=3,socket={}", existing.display()),
            ],
            "cannot set up vsock",
        ),
        (
            vec![
                "--balloon".into(),
                "target=1G".into(),
                "--memory".into(),
                "64M".into(),
            ],
            "balloon target 1G is larger than guest memory 64M",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["run", "--kernel", kernel];
        args.extend(flags.iter().map(String::as_str));
        let output = vmm(&args);
        assert_clean_error(&output, needle);
        assert!(
            !text(&output.stdout).contains("GUEST-INIT-OK"),
            "the guest must not start: {flags:?}"
        );
    }
    // Flags that do not parse are refused by the argument parser (exit 2, usage message).
    for flags in [
        ["--disk", "read_only=on"],
        ["--disk", "path=/x,colour=blue"],
        ["--net", "mac=02:00:00:00:00:01"],
        ["--net", "tap=t0,mac=ff:ff:ff:ff:ff:ff"],
        ["--vsock", "cid=2,socket=/tmp/x"],
        ["--balloon", "target=lots"],
    ] {
        let mut args = vec!["run", "--kernel", kernel];
        args.extend(flags);
        let output = vmm(&args);
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("invalid value"), "{flags:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `vmm disk`: bad arguments get one clear line and exit code 1, before anything is created.
#[test]
fn disk_subcommands_refuse_bad_arguments_in_one_line() {
    let missing = scratch("disk-missing.img");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["disk", "info", missing],
        vec!["disk", "check", missing],
        vec!["disk", "clone", missing, "/tmp/never-made"],
        vec!["disk", "snapshot", missing],
        vec!["disk", "commit", missing],
        vec![
            "disk",
            "convert",
            missing,
            "/tmp/never-made",
            "--format",
            "raw",
        ],
        vec!["disk", "create", "/tmp/never-made", "--base", missing],
    ] {
        let out = vmm(&args);
        assert_clean_error(&out, "No such file or directory");
        assert!(!std::path::Path::new("/tmp/never-made").exists());
    }
    let new = scratch("disk-new.layered");
    let new = new.to_str().unwrap();
    for size in ["0", "0G"] {
        assert_clean_error(
            &vmm(&["disk", "create", new, "--size", size]),
            "a disk must be larger than 0 bytes",
        );
    }
    assert_clean_error(
        &vmm(&["disk", "create", new, "--size", "lots"]),
        "invalid disk size",
    );
    assert_clean_error(
        &vmm(&["disk", "create", new]),
        "needs --size, --base or both",
    );

    let raw = scratch("disk-raw.img");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let raw = raw.to_str().unwrap();
    assert_clean_error(
        &vmm(&["disk", "convert", raw, new, "--format", "vmdk"]),
        "unknown disk format \"vmdk\" (raw, qcow2 or layered)",
    );
    assert_clean_error(
        &vmm(&[
            "disk", "import", "--dedup", "--hash", "md5", raw, "--out", new,
        ]),
        "unknown block hash \"md5\"",
    );
    // An output that exists is never overwritten.
    assert_clean_error(
        &vmm(&["disk", "create", raw, "--size", "1G"]),
        "exists already",
    );
    assert!(!std::path::Path::new(new).exists());

    // A raw image needs nothing wired: info and check work now.
    let info = vmm(&["disk", "info", raw, "--json"]);
    assert_eq!(info.status.code(), Some(0), "{}", text(&info.stderr));
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["format"], "raw");
    assert_eq!(json["virtual_size"], 1 << 20);
    let check = vmm(&["disk", "check", raw]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
}

/// `--disk format=` names an unknown format (refused by the argument parser, exit 2, as every
/// `--disk` that does not parse), or one the file is not (one line, exit 1).
#[test]
fn disk_format_errors_are_one_line() {
    let kernel = guest_file("tiny-pvh.elf");
    let raw = scratch("format-raw.img");
    std::fs::write(&raw, vec![0u8; 1 << 16]).unwrap();
    let qcow = scratch("format-fake.qcow2");
    let mut header = b"QFI\xfb".to_vec();
    header.resize(1 << 16, 0);
    std::fs::write(&qcow, header).unwrap();
    let run = |disk: String| vmm(&["run", "--kernel", kernel.to_str().unwrap(), "--disk", &disk]);
    let unknown = run(format!("path={},format=vmdk", raw.display()));
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = text(&unknown.stderr);
    assert!(
        stderr
            .lines()
            .next()
            .unwrap_or_default()
            .contains("unknown disk format \"vmdk\" (raw, qcow2 or layered)"),
        "{stderr}"
    );
    assert_clean_error(
        &run(format!("path={},format=layered", qcow.display())),
        "is qcow2, not layered",
    );
}

/// `vmm disk verity-format` prints the root hash; bad arguments, a hash file that exists and a
/// verity drive that is not read-only, lacks its root hash or has the wrong one get one clear
/// line.
#[test]
fn disk_verity_format_and_verity_drives() {
    let raw = scratch("verity-data.img");
    std::fs::write(&raw, vec![0x3c; 1 << 20]).unwrap();
    let hash = scratch("verity-data.hash");
    let _ = std::fs::remove_file(&hash);
    let (raw, hash) = (raw.to_str().unwrap(), hash.to_str().unwrap());
    let out = vmm(&["disk", "verity-format", raw, hash, "--salt", "-"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let root = text(&out.stdout).trim().to_string();
    assert_eq!(root.len(), 64, "{root}");
    assert!(root.bytes().all(|c| c.is_ascii_hexdigit()), "{root}");
    assert_clean_error(
        &vmm(&["disk", "verity-format", raw, hash]),
        "exists already",
    );
    let never = "/tmp/never-made.hash";
    let missing = scratch("verity-missing.img");
    for (args, needle) in [
        (
            vec!["--data-block-size", "1000"],
            "--data-block-size 1000: a power of two",
        ),
        (vec!["--hash-block-size", "8192"], "--hash-block-size 8192"),
        (vec!["--hash", "md5"], "--hash md5"),
        (vec!["--salt", "xyz"], "--salt xyz"),
    ] {
        let mut all = vec!["disk", "verity-format", raw, never];
        all.extend(args);
        assert_clean_error(&vmm(&all), needle);
    }
    assert_clean_error(
        &vmm(&["disk", "verity-format", missing.to_str().unwrap(), never]),
        "No such file or directory",
    );
    assert!(!std::path::Path::new(never).exists());

    let kernel = guest_file("tiny-pvh.elf");
    let kernel = kernel.to_str().unwrap();
    let wrong = format!(
        "{}{}",
        &root[..63],
        if root.ends_with('0') { "1" } else { "0" }
    );
    let output = vmm(&[
        "run",
        "--kernel",
        kernel,
        "--disk",
        &format!("path={raw},read_only=on,verity={hash},root_hash={wrong}"),
    ]);
    assert_clean_error(&output, "root hash does not match");
    for flags in [
        format!("path={raw},verity={hash},root_hash={root}"),
        format!("path={raw},read_only=on,verity={hash}"),
        format!("path={raw},read_only=on,verity={hash},root_hash=nothex"),
    ] {
        let output = vmm(&["run", "--kernel", kernel, "--disk", &flags]);
        assert_eq!(output.status.code(), Some(2), "{flags}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("read-only")
                || stderr.contains("root_hash")
                || stderr.contains("hex digest"),
            "{flags}: {stderr}"
        );
    }
}

/// `vmm disk luks-format`: bad arguments get one clear line; a good one makes an image that a
/// `--disk ...,key_file=` opens (here: that the wrong key is refused at open, in one line).
#[test]
fn disk_luks_format_refuses_bad_arguments() {
    let key = scratch("luks-key");
    std::fs::write(&key, b"k3y\n").unwrap();
    let key = key.to_str().unwrap();
    let img = scratch("luks.img");
    let _ = std::fs::remove_file(&img);
    let img = img.to_str().unwrap();
    let missing = scratch("luks-missing-key");
    let missing = missing.to_str().unwrap();
    assert_clean_error(
        &vmm(&[
            "disk",
            "luks-format",
            img,
            "--key-file",
            missing,
            "--size",
            "1M",
        ]),
        "No such file or directory",
    );
    assert_clean_error(
        &vmm(&[
            "disk",
            "luks-format",
            img,
            "--key-file",
            key,
            "--size",
            "1M",
            "--type",
            "luks3",
        ]),
        "unknown LUKS type",
    );
    assert_clean_error(
        &vmm(&[
            "disk",
            "luks-format",
            img,
            "--key-file",
            key,
            "--size",
            "1M",
            "--pbkdf2-iterations",
            "10",
        ]),
        "at least 1000 iterations",
    );
    assert_clean_error(
        &vmm(&["disk", "luks-format", img, "--key-file", key]),
        "No such file or directory",
    );
    assert!(!std::path::Path::new(img).exists());
    let out = vmm(&[
        "disk",
        "luks-format",
        img,
        "--key-file",
        key,
        "--size",
        "1M",
        "--pbkdf2-iterations",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("LUKS2"), "{}", text(&out.stdout));
    assert_clean_error(
        &vmm(&[
            "disk",
            "luks-format",
            img,
            "--key-file",
            key,
            "--size",
            "1M",
        ]),
        "exists already",
    );
    let _ = std::fs::remove_file(img);
}
