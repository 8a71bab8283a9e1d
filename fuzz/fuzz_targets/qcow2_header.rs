//! Arbitrary qcow2 image files: `Qcow2Image::open` must refuse them with an error or open them,
//! and then reads (and, opened read-write, a write and a flush) must return, never panic.
//!
//! Input format: the whole input is the image file (written to a scratch file, as imago reads
//! through a file). Seeds are small images from `qemu-img create -o cluster_size=512`.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm_disk::qcow2::Qcow2Image;
use vmm_disk::ImageFile;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("vmm-fuzz-qcow2-{}.qcow2", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    for read_only in [true, false] {
        let Ok(mut image) = Qcow2Image::open(path, read_only) else {
            continue;
        };
        let size = image.size();
        let mut buf = vec![0u8; 4096];
        for offset in [0, size / 2, size.saturating_sub(4096)] {
            let _ = image.read(offset, &mut buf);
        }
        if !read_only {
            let _ = image.write(size / 3, &[0x5a; 1000]);
            let _ = image.discard(0, size.min(1 << 16));
            let _ = image.flush();
        }
    }
});
