//! Arbitrary bytes as a kernel image, under each ELF entry preference: the loader must return
//! an error or a kernel that fits in memory, never panic. Accepted kernels go on through the
//! initrd placement and boot structure writers.

#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm_loader::{build_cmdline, configure_boot, load_initrd, load_kernel, BootLayout, ElfEntry};
use vmm_memory::layout;
use vmm_memory::GuestMemoryMmap;

const RAM: u64 = 32 << 20;

/// One guest memory for all runs: creating 32 MiB per input would dominate the run time, and a
/// kernel must load correctly whatever an earlier input left in memory.
static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let mem = MEM.get_or_init(|| {
        vmm_memory::create_guest_memory(RAM, Default::default()).expect("32 MiB of guest memory")
    });
    let boot = BootLayout::default();
    let map = layout::memory_map(RAM);
    for entry in [ElfEntry::Auto, ElfEntry::Linux64, ElfEntry::Pvh] {
        let Ok(kernel) = load_kernel(mem, &boot, &mut Cursor::new(data), entry) else {
            continue;
        };
        assert!(kernel.kernel_end <= RAM, "{kernel:?}");
        assert!(kernel.entry < kernel.kernel_end, "{kernel:?}");
        let initrd = load_initrd(mem, &boot, &mut Cursor::new([0x1f_u8; 64]), 64, &kernel).ok();
        let cmdline = build_cmdline(vmm_api::DEFAULT_CMDLINE, &["quiet"], boot.cmdline_max_size)
            .expect("default command line");
        // May refuse (e.g. a bzImage header with a tiny cmdline_size), must not panic.
        let _ = configure_boot(mem, &boot, &kernel, &cmdline, initrd, &map);
    }
});
