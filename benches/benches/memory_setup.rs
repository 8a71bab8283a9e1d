//! Guest memory setup and the whole pre-vCPU boot path: what a VM start costs before KVM runs
//! any guest code.
//!
//! - `create_guest_memory/{128MiB,1GiB}`: allocating guest RAM (lazy, MAP_NORESERVE).
//! - `boot_path/tiny-pvh`: RAM + loading `tiny-pvh.elf` + command line + boot structures + MP
//!   table, from `$VMM_GUEST_DIR` (default `../shared/guest` from the workspace root).
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::fs::File;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use vmm_loader::{build_cmdline, configure_boot, load_kernel, setup_mptable, BootLayout, ElfEntry};
use vmm_memory::layout;

const MIB: u64 = 1 << 20;

fn guest_file(name: &str) -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = match std::env::var_os("VMM_GUEST_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("../shared/guest"),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: set VMM_GUEST_DIR to the shared guest folder",
        path.display()
    );
    path
}

fn create_memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("create_guest_memory");
    for (name, bytes) in [("128MiB", 128 * MIB), ("1GiB", 1024 * MIB)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mem = vmm_memory::create_guest_memory(black_box(bytes), Default::default())
                    .expect("guest memory");
                black_box(mem)
            })
        });
    }
    group.finish();
}

fn boot_path(c: &mut Criterion) {
    let kernel_path = guest_file("tiny-pvh.elf");
    let ram = 128 * MIB;
    let boot = BootLayout::default();
    c.bench_function("boot_path/tiny-pvh", |b| {
        b.iter(|| {
            let mem = vmm_memory::create_guest_memory(ram, Default::default()).expect("memory");
            let mut image = File::open(&kernel_path).expect("tiny-pvh.elf");
            let kernel = load_kernel(&mem, &boot, &mut image, ElfEntry::Auto).expect("load kernel");
            let cmdline =
                build_cmdline(vmm_api::DEFAULT_CMDLINE, &["quiet"], boot.cmdline_max_size)
                    .expect("command line");
            configure_boot(
                &mem,
                &boot,
                &kernel,
                &cmdline,
                None,
                &layout::memory_map(ram),
            )
            .expect("boot structures");
            setup_mptable(&mem, &boot, 2).expect("MP table");
            black_box(mem)
        })
    });
}

criterion_group!(benches, create_memory, boot_path);
criterion_main!(benches);
