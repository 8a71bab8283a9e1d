//! Arbitrary command line pieces: `build_cmdline` must return an error or a command line that
//! fits the guest's area and holds only printable ASCII, never panic.
//!
//! Input format: the first byte's low bit says whether a base command line is given (else a
//! typical one is used); the rest, split at 0xff bytes, is the base (if any) and then the append
//! pieces.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm_loader::build_cmdline;
use vmm_memory::layout::CMDLINE_MAX_SIZE;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let pieces: Vec<String> = rest
        .split(|&b| b == 0xff)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let (base, append) = match (flags & 1 == 1, pieces.split_first()) {
        (true, Some((first, others))) => (first.as_str(), others),
        _ => (vmm_api::DEFAULT_CMDLINE, pieces.as_slice()),
    };
    let append: Vec<&str> = append.iter().map(String::as_str).collect();
    let Ok(mut cmdline) = build_cmdline(base, &append, CMDLINE_MAX_SIZE) else {
        return;
    };
    let text = cmdline
        .as_cstring()
        .expect("a built command line converts to a C string");
    assert!(text.as_bytes_with_nul().len() <= CMDLINE_MAX_SIZE);
    assert!(text.as_bytes().iter().all(|b| (b' '..=b'~').contains(b)));
    // What the VMM does next: add a device; it may not fit, but must not panic.
    let _ = cmdline.add_virtio_mmio_device(0x1000, GuestAddress(0xd000_0000), 5, None);
});
