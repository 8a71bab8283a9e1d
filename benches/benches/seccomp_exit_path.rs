//! The cost of the vCPU threads' seccomp filter on the exit path: every KVM exit is one
//! `KVM_RUN` ioctl plus, for device exits, a few syscalls (an eventfd write to raise an
//! interrupt, say), and a filter runs its BPF program on each. This times one such syscall, an
//! eventfd write, in a thread under vmm-core's vCPU filter and in one without a filter,
//! alternately, and prints the difference per syscall. (A plain bench binary: a filtered
//! thread may not do what criterion's harness does.)
//!
//! `cargo bench -p vmm-benches --bench seccomp_exit_path`

use std::time::Instant;

use vmm_core::seccomp::{built_in, ThreadKind};
use vmm_sys_util::eventfd::EventFd;

const CALLS: u32 = 200_000;
const ROUNDS: usize = 7;

/// Nanoseconds per eventfd write over `CALLS` writes, in a new thread under `filter`.
fn time_writes(filter: Option<seccompiler::BpfProgram>) -> f64 {
    std::thread::spawn(move || {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        if let Some(program) = &filter {
            seccompiler::apply_filter(program).expect("apply the vCPU filter");
        }
        let start = Instant::now();
        for _ in 0..CALLS {
            // 1 each time: the counter never reaches its limit within CALLS writes.
            event.write(1).unwrap();
        }
        start.elapsed().as_nanos() as f64 / f64::from(CALLS)
    })
    .join()
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes harness flags (`--bench`); a filter run takes none.
    let filters = built_in().expect("build the filters");
    let vcpu = filters[&ThreadKind::Vcpu].clone();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        off.push(time_writes(None));
        on.push(time_writes(Some(vcpu.clone())));
    }
    let (off, on) = (median(off), median(on));
    println!(
        "eventfd write, {CALLS} calls x {ROUNDS} rounds (medians): no filter {off:.1} ns, \
         vCPU filter {on:.1} ns, filter cost {:.1} ns per syscall",
        on - off
    );
}
