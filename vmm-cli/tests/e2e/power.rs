//! Tier 3 for ACPI power management: a Linux guest's `poweroff -f` (ACPI S5 through the FADT's
//! sleep control register) ends the VMM with exit code 0, and `vmm stop` presses the ACPI power
//! button (a Generic Event Device's interrupt), which a guest that handles it answers by
//! powering off: the VMM then exits 0 by itself, before the stop's timeout, unkilled.
//!
//! With `--shutdown-grace`, SIGTERM presses the button too and the guest has that long to power
//! off (exit 0).
//!
//! The shared guest's busybox init has no power button handler; the test initramfs's
//! `powerbutton` script plays that part (it waits for the GED's interrupt, then powers off).

use std::process::Command;
use std::time::{Duration, Instant};

use super::virtio::{test_initramfs, Scratch};
use super::{guest, retried_in_test_host, Running, BOOT_TIMEOUT, QUIET};

/// What the output of a clean ACPI power-off must not hold: an error, or a reason printed for
/// an unclean end (a signal, a triple fault). A power-off, like a reset, ends silently.
fn assert_clean(code: i32, output: &str) {
    assert_eq!(
        code, 0,
        "the guest's power-off must end vmm with 0:\n{output}"
    );
    assert!(!output.contains("vmm: error"), "{output}");
    assert!(!output.contains("vmm: VM ended"), "{output}");
}

#[test]
fn guest_poweroff_through_acpi_s5_ends_the_vmm_with_0() {
    let (kernel, initrd) = (guest("vmlinux"), test_initramfs());
    let append = format!("{QUIET} guest.test=poweroff-acpi");
    let (code, output) = retried_in_test_host(|| {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut vm = Running::start(&[
            "--kernel", &kernel, "--initrd", &initrd, "--memory", "128M", "--append", &append,
        ]);
        vm.expect("POWEROFF-ACPI-OK", deadline);
        vm.finish(deadline)
    });
    assert_clean(code, &output);
    // The VM ended at the script's `poweroff -f`, not later through init's own way out.
    assert!(!output.contains("POWEROFF-ACPI-FAIL"), "{output}");
    assert!(!output.contains("GUEST-TEST-DONE"), "{output}");
}

/// The shared kernel with the test initramfs running its `powerbutton` script, under `vmm run
/// EXTRA`, once the script waits for the button.
fn powerbutton_guest(extra: &[&str], deadline: Instant) -> Running {
    let (kernel, initrd) = (guest("vmlinux"), test_initramfs());
    let append = format!("{QUIET} guest.test=powerbutton");
    let mut args = vec!["--kernel", &kernel, "--initrd", &initrd, "--memory", "128M"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--append", &append]);
    let mut vm = Running::start(&args);
    vm.expect("POWERBUTTON-READY", deadline);
    vm
}

#[test]
fn vmm_stop_presses_the_power_button_and_the_guest_powers_off() {
    let dir = Scratch::new("powerbutton");
    let sock = dir.path("api.sock").to_string_lossy().into_owned();
    // An upper bound for the guest to power off once pressed, never waited out when it does.
    let stop_timeout = Duration::from_secs(120);
    let (code, output, stop) = retried_in_test_host(|| {
        let _ = std::fs::remove_file(&sock);
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut vm = powerbutton_guest(&["--api-sock", &sock], deadline);
        let started = Instant::now();
        let stop = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(["stop", "--api-sock", &sock, "--timeout"])
            .arg(stop_timeout.as_secs().to_string())
            .output()
            .expect("run vmm stop");
        assert!(
            started.elapsed() < stop_timeout,
            "vmm stop waited its timeout out"
        );
        vm.expect("POWERBUTTON-PRESSED", deadline);
        let (code, output) = vm.finish(deadline);
        (code, output, stop)
    });
    let stop_stderr = String::from_utf8_lossy(&stop.stderr);
    assert_eq!(
        stop.status.code(),
        Some(0),
        "vmm stop: the guest must stop itself: {stop_stderr}\nVM output:\n{output}"
    );
    assert!(stop_stderr.contains("the guest stopped"), "{stop_stderr}");
    assert_clean(code, &output);
    assert!(!output.contains("POWERBUTTON-FAIL"), "{output}");
}

#[test]
fn sigterm_with_a_shutdown_grace_lets_the_guest_power_off_through_its_button() {
    let (code, output) = retried_in_test_host(|| {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        // The grace is an upper bound, never waited out when the guest powers off.
        let mut vm = powerbutton_guest(&["--shutdown-grace", "120"], deadline);
        // SAFETY: sends SIGTERM to our own child process.
        unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
        vm.expect("POWERBUTTON-PRESSED", deadline);
        vm.finish(deadline)
    });
    // The guest's own power-off ended the VMM (0), not the signal (143).
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("pressed the power button"), "{output}");
    assert!(!output.contains("did not power off"), "{output}");
    assert!(!output.contains("POWERBUTTON-FAIL"), "{output}");
}
