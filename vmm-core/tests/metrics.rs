//! Tier 2: the metrics line a VM's end writes, with the tiny PVH guest (which prints its marker
//! on the serial port, then powers off through ACPI S5 when `test=` is on its command line). A
//! test binary of its own: the metrics are the process's.

mod common;
use common::{scratch, tiny_guest};

use vmm_api::{MemorySize, SerialMode, VmConfig};
use vmm_core::ShutdownReason;

#[test]
fn the_last_line_counts_what_the_guest_did() {
    let dir = scratch("metrics");
    let metrics = dir.join("metrics.json");
    vmm_core::metrics::configure(&metrics).unwrap();
    let config = VmConfig {
        kernel: Some(tiny_guest()),
        cmdline: Some("console=ttyS0 test=1".into()),
        memory: MemorySize(64 << 20),
        serial: SerialMode::File(dir.join("serial")),
        rng: true,
        ..VmConfig::default()
    };
    assert_eq!(
        vmm_core::run_vm(&config).unwrap(),
        ShutdownReason::GuestPowerOff
    );

    let text = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line, written as the VM ended: {text}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let serial = std::fs::read(dir.join("serial")).unwrap();
    assert!(!serial.is_empty());
    assert_eq!(
        line["uart"]["write_count"],
        serial.len() as u64,
        "every byte on the console was counted: {line}"
    );
    assert!(line["vcpu"]["exit_io_out"].as_u64().unwrap() >= serial.len() as u64);
    assert!(line["i8042"].is_object());
    assert_eq!(line["vcpu"]["failures"], 0);
    assert!(line["entropy"].is_object() && line["block"].is_object());
    let _ = std::fs::remove_dir_all(&dir);
}
