//! Tier 2: the `hello_guest` example's guest (examples/hello_guest.rs, compiled in here) runs
//! on this machine's /dev/kvm, writes its message to port 0x3f8 one byte at a time and halts.

#[allow(dead_code)] // its `main` is for `cargo run --example hello_guest`
#[path = "../examples/hello_guest.rs"]
mod hello_guest;

use vmm_vcpu::VcpuExitReason;

#[test]
fn hello_guest_example_prints_its_message_and_halts() {
    let handler = hello_guest::PrintingHandler::default();
    let reason =
        hello_guest::run_guest(&handler).expect("/dev/kvm must be usable for tier-2 tests");
    assert_eq!(reason, VcpuExitReason::Halted);
    assert_eq!(handler.text.lock().unwrap().as_slice(), b"Hello, KVM!\n");
}
