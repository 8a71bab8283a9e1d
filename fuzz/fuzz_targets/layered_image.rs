//! Arbitrary bytes as a whole layer file: opening, reading every block, `info` and `check`
//! return errors or data, never panic or allocate without bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_disk::layered::{check, info, LayeredImage};
use vmm_disk::ImageFile;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("vmm-fuzz-layered-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("image");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = check(&path);
    let _ = info(&path);
    if let Ok(mut image) = LayeredImage::open(&path, true) {
        let mut buf = vec![0u8; 4096];
        let blocks = image.size().div_ceil(4096).min(256);
        for b in 0..blocks {
            let len = (image.size() - b * 4096).min(4096) as usize;
            let _ = image.read(b * 4096, &mut buf[..len]);
        }
    }
});
