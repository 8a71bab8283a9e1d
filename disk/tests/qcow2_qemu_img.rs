//! qcow2 interoperability with QEMU's own tools: images this crate writes pass `qemu-img check`
//! and compare equal to a raw shadow that got the same writes; images qemu-img and qemu-io wrote
//! (backing chains, 64 KiB and 2 MiB clusters, compressed) read back as `qemu-img convert -O raw`
//! says; and what this crate refuses is refused with the right error.
//!
//! These tests need qemu-img and qemu-io (Debian's qemu-utils, installed by
//! scripts/install-deps.sh) and fail, not skip, without them.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmm_disk::convert::{convert, ConvertOptions};
use vmm_disk::qcow2::{create_qcow2, Error as QError, Qcow2Image};
use vmm_disk::{open_image, DiskError, Format, ImageFile, OpenOptions, OpenedImage};

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("vmm-disk-qcow2-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a QEMU tool in `dir`; panics with its output when it fails, and with a clear message
/// when it is not installed.
fn tool(dir: &Path, prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {prog} ({e}): install qemu-utils (scripts/install-deps.sh)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{prog} {args:?} failed: {text}");
    text
}

fn qemu_img(dir: &Path, args: &[&str]) -> String {
    tool(dir, "qemu-img", args)
}

/// qemu-io writes `pattern` bytes over `len` bytes at `offset` of a qcow2 image.
fn qemu_io_write(dir: &Path, image: &str, pattern: u8, offset: u64, len: u64) {
    let cmd = format!("write -P {pattern} {offset} {len}");
    tool(dir, "qemu-io", &["-f", "qcow2", "-c", &cmd, image]);
}

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// Every byte of `image`.
fn read_all(image: &mut dyn ImageFile) -> Vec<u8> {
    let size = image.size() as usize;
    let mut out = vec![0u8; size];
    for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
        image.read((i << 20) as u64, chunk).unwrap();
    }
    out
}

/// What qemu-img says the disk holds: `qemu-img convert -O raw`.
fn qemu_raw(dir: &Path, image: &str) -> Vec<u8> {
    let out = format!("{image}.qemu.raw");
    qemu_img(dir, &["convert", "-O", "raw", image, &out]);
    let bytes = fs::read(dir.join(&out)).unwrap();
    fs::remove_file(dir.join(&out)).unwrap();
    bytes
}

/// Asserts this crate reads `image` exactly as qemu-img does.
fn assert_reads_like_qemu(dir: &Path, image: &str) {
    let mut ours = Qcow2Image::open(&dir.join(image), true).unwrap();
    let got = read_all(&mut ours);
    let want = qemu_raw(dir, image);
    assert_eq!(got.len(), want.len(), "{image}: size");
    assert!(got == want, "{image}: contents differ from qemu-img's");
}

/// `count` random writes (any byte offset and length) and some discards, applied to both
/// `image` and the raw `shadow`.
fn random_writes(image: &mut dyn ImageFile, shadow: &fs::File, seed: u64, count: usize) {
    let size = image.size();
    let mut rng = Rng(seed);
    for i in 0..count {
        let len = 1 + rng.below(200 << 10);
        let offset = rng.below(size - len);
        if i % 10 == 9 && image.can_discard() {
            image.discard(offset, len).unwrap();
            shadow
                .write_all_at(&vec![0u8; len as usize], offset)
                .unwrap();
        } else {
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data);
            image.write(offset, &data).unwrap();
            shadow.write_all_at(&data, offset).unwrap();
        }
    }
    image.flush().unwrap();
}

fn check_and_compare(dir: &Path, image: &str, shadow: &str) {
    let check = qemu_img(dir, &["check", image]);
    assert!(
        check.contains("No errors"),
        "qemu-img check {image}: {check}"
    );
    qemu_img(dir, &["compare", "-f", "qcow2", "-F", "raw", image, shadow]);
}

#[test]
fn images_we_write_pass_qemu_img_check_and_compare() {
    for cluster in [4096u32, 64 << 10, 2 << 20] {
        let s = Scratch::new(&format!("ours-{cluster}"));
        let size = 16u64 << 20;
        create_qcow2(&s.path("a.qcow2"), Some(size), None, cluster).unwrap();
        let shadow = fs::File::create(s.path("a.raw")).unwrap();
        shadow.set_len(size).unwrap();
        {
            let mut img = Qcow2Image::open(&s.path("a.qcow2"), false).unwrap();
            assert_eq!(img.size(), size);
            random_writes(&mut img, &shadow, 0x5eed + u64::from(cluster), 120);
        }
        check_and_compare(&s.0, "a.qcow2", "a.raw");
        // And we read back what we wrote, after reopening.
        let mut img = Qcow2Image::open(&s.path("a.qcow2"), true).unwrap();
        assert!(read_all(&mut img) == fs::read(s.path("a.raw")).unwrap());
    }
}

#[test]
fn qemu_written_images_read_back_identical() {
    for cluster in ["65536", "2097152"] {
        let s = Scratch::new(&format!("qemu-{cluster}"));
        qemu_img(
            &s.0,
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster}"),
                "q.qcow2",
                "8M",
            ],
        );
        qemu_io_write(&s.0, "q.qcow2", 0x5a, 0, 65536);
        qemu_io_write(&s.0, "q.qcow2", 0x11, 3 << 20, 4096);
        qemu_io_write(&s.0, "q.qcow2", 0xee, (8 << 20) - 512, 512);
        tool(
            &s.0,
            "qemu-io",
            &["-f", "qcow2", "-c", "write -z 4096 4096", "q.qcow2"],
        );
        assert_reads_like_qemu(&s.0, "q.qcow2");
    }
}

#[test]
fn backing_chains_read_like_qemu_and_take_our_writes() {
    let s = Scratch::new("chain");
    let size = 4usize << 20;
    let mut base = vec![0u8; size];
    Rng(7).fill(&mut base[..size / 2]);
    fs::write(s.path("base.raw"), &base).unwrap();

    // Two deep: qcow2 over raw.
    qemu_img(
        &s.0,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    qemu_io_write(&s.0, "top.qcow2", 0x33, 100_000, 70_000);
    assert_reads_like_qemu(&s.0, "top.qcow2");

    // Three deep: qcow2 over qcow2 over raw.
    qemu_img(
        &s.0,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "mid.qcow2",
        ],
    );
    qemu_io_write(&s.0, "mid.qcow2", 0x44, 1 << 20, 200_000);
    qemu_img(
        &s.0,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top3.qcow2",
        ],
    );
    qemu_io_write(&s.0, "top3.qcow2", 0x55, (1 << 20) + 65536, 4096);
    qemu_io_write(&s.0, "top3.qcow2", 0x66, (3 << 20) + 7, 9000);
    assert_reads_like_qemu(&s.0, "top3.qcow2");

    // Our writes over the three-deep chain: copy-on-write of partial clusters from below.
    let before = qemu_raw(&s.0, "top3.qcow2");
    fs::write(s.path("shadow.raw"), &before).unwrap();
    let shadow = fs::OpenOptions::new()
        .write(true)
        .open(s.path("shadow.raw"))
        .unwrap();
    {
        let mut top = Qcow2Image::open(&s.path("top3.qcow2"), false).unwrap();
        random_writes(&mut top, &shadow, 99, 60);
    }
    check_and_compare(&s.0, "top3.qcow2", "shadow.raw");
    // The layers below were not written.
    assert!(fs::read(s.path("base.raw")).unwrap() == base);

    // A chain created by us over qemu's image.
    create_qcow2(
        &s.path("ours.qcow2"),
        None,
        Some(Path::new("top3.qcow2")),
        65536,
    )
    .unwrap();
    let info = qemu_img(&s.0, &["info", "ours.qcow2"]);
    assert!(info.contains("backing file: top3.qcow2"), "{info}");
    assert!(info.contains("backing file format: qcow2"), "{info}");
    qemu_img(&s.0, &["check", "ours.qcow2"]);
    assert_reads_like_qemu(&s.0, "ours.qcow2");
}

#[test]
fn convert_both_ways_agrees_with_qemu_img() {
    let s = Scratch::new("convert");
    let size = 6usize << 20;
    let mut data = vec![0u8; size];
    Rng(3).fill(&mut data[65536..200_000]);
    Rng(4).fill(&mut data[(4 << 20)..(4 << 20) + 1000]);
    fs::write(s.path("in.raw"), &data).unwrap();

    // Ours raw -> qcow2, checked by qemu-img; sparse: only clusters with data are allocated.
    let report = convert(
        &s.path("in.raw"),
        &s.path("out.qcow2"),
        Format::Qcow2,
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_eq!(report.input_format, Format::Raw);
    assert_eq!(report.size, size as u64);
    assert_eq!(report.data_bytes, 4 * 65536);
    check_and_compare(&s.0, "out.qcow2", "in.raw");
    let map = qemu_img(&s.0, &["map", "--output=json", "out.qcow2"]);
    assert!(map.matches("\"data\": true").count() <= 3, "{map}");

    // qemu-img's qcow2 (compressed, too) -> ours raw.
    qemu_img(&s.0, &["convert", "-O", "qcow2", "in.raw", "q.qcow2"]);
    qemu_img(
        &s.0,
        &["convert", "-c", "-O", "qcow2", "in.raw", "qc.qcow2"],
    );
    for input in ["q.qcow2", "qc.qcow2"] {
        let out = format!("{input}.out.raw");
        let report = convert(
            &s.path(input),
            &s.path(&out),
            Format::Raw,
            &ConvertOptions::default(),
        )
        .unwrap();
        assert_eq!(report.input_format, Format::Qcow2);
        assert!(fs::read(s.path(&out)).unwrap() == data, "{input}");
    }

    // An existing output is never overwritten; layered output reads back the same bytes.
    assert!(convert(
        &s.path("in.raw"),
        &s.path("q.qcow2"),
        Format::Raw,
        &ConvertOptions::default()
    )
    .is_err());
    convert(
        &s.path("in.raw"),
        &s.path("l.img"),
        Format::Layered,
        &ConvertOptions::default(),
    )
    .unwrap();
    convert(
        &s.path("l.img"),
        &s.path("l.raw"),
        Format::Raw,
        &ConvertOptions::default(),
    )
    .unwrap();
    assert!(fs::read(s.path("l.raw")).unwrap() == fs::read(s.path("in.raw")).unwrap());
}

#[test]
fn open_image_detects_qcow2() {
    let s = Scratch::new("detect");
    qemu_img(&s.0, &["create", "-f", "qcow2", "d.qcow2", "1M"]);
    let opened = open_image(&s.path("d.qcow2"), &OpenOptions::default()).unwrap();
    assert_eq!(opened.format(), Format::Qcow2);
    assert!(matches!(opened, OpenedImage::Other(Format::Qcow2, _)));
    assert_eq!(opened.into_image_file().size(), 1 << 20);
}

fn open_err(path: &Path, read_only: bool) -> QError {
    Qcow2Image::open(path, read_only).expect_err("must be refused")
}

/// Sets bits in the big-endian u32/u64 header field at `at`.
fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

#[test]
fn dirty_bit_is_refused_with_the_repair_command() {
    let s = Scratch::new("dirty");
    qemu_img(&s.0, &["create", "-f", "qcow2", "d.qcow2", "1M"]);
    patch(&s.path("d.qcow2"), 72, &1u64.to_be_bytes());
    for ro in [true, false] {
        let e = open_err(&s.path("d.qcow2"), ro);
        assert!(matches!(e, QError::Dirty { .. }), "{e}");
        assert!(e.to_string().contains("qemu-img check -r all"), "{e}");
    }
    // And qemu-img's repair makes it open.
    qemu_img(&s.0, &["check", "-r", "all", "d.qcow2"]);
    Qcow2Image::open(&s.path("d.qcow2"), false).unwrap();
}

#[test]
fn internal_snapshots_open_read_only_only() {
    let s = Scratch::new("snap");
    qemu_img(&s.0, &["create", "-f", "qcow2", "s.qcow2", "2M"]);
    qemu_io_write(&s.0, "s.qcow2", 0x77, 0, 65536);
    qemu_img(&s.0, &["snapshot", "-c", "snap1", "s.qcow2"]);
    qemu_io_write(&s.0, "s.qcow2", 0x78, 0, 4096);
    let e = open_err(&s.path("s.qcow2"), false);
    assert!(
        matches!(e, QError::InternalSnapshots { count: 1, .. }),
        "{e}"
    );
    assert_reads_like_qemu(&s.0, "s.qcow2");
}

#[test]
fn compressed_images_read_and_take_writes() {
    let s = Scratch::new("compressed");
    let size = 2usize << 20;
    let mut data = vec![0u8; size];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i / 1000) as u8; // compressible
    }
    fs::write(s.path("in.raw"), &data).unwrap();
    qemu_img(&s.0, &["convert", "-c", "-O", "qcow2", "in.raw", "c.qcow2"]);
    assert_reads_like_qemu(&s.0, "c.qcow2");
    // imago copies a compressed cluster into a new one on write.
    let shadow = fs::OpenOptions::new()
        .write(true)
        .open(s.path("in.raw"))
        .unwrap();
    {
        let mut img = Qcow2Image::open(&s.path("c.qcow2"), false).unwrap();
        random_writes(&mut img, &shadow, 11, 30);
    }
    check_and_compare(&s.0, "c.qcow2", "in.raw");
}

#[test]
fn encrypted_images_are_refused() {
    let s = Scratch::new("crypt");
    // AES (crypt_method 1), written by qemu-img itself (no key derivation, no timing).
    qemu_img(
        &s.0,
        &[
            "create",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=abc",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=sec0",
            "aes.qcow2",
            "1M",
        ],
    );
    let e = open_err(&s.path("aes.qcow2"), true);
    assert!(matches!(e, QError::Encrypted { method: 1, .. }), "{e}");
    // LUKS (crypt_method 2): patched in, as LUKS creation times its key derivation.
    qemu_img(&s.0, &["create", "-f", "qcow2", "l.qcow2", "1M"]);
    patch(&s.path("l.qcow2"), 32, &2u32.to_be_bytes());
    let e = open_err(&s.path("l.qcow2"), true);
    assert!(matches!(e, QError::Encrypted { method: 2, .. }), "{e}");
}

#[test]
fn missing_backing_file_is_named() {
    let s = Scratch::new("missing");
    fs::write(s.path("base.raw"), vec![0u8; 1 << 20]).unwrap();
    qemu_img(
        &s.0,
        &[
            "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "t.qcow2",
        ],
    );
    fs::remove_file(s.path("base.raw")).unwrap();
    let e = open_err(&s.path("t.qcow2"), true);
    match &e {
        QError::MissingBacking { backing, .. } => assert_eq!(backing, &s.path("base.raw")),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("base.raw"), "{e}");
    // Through open_image too.
    let e = open_image(&s.path("t.qcow2"), &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(e, DiskError::Qcow2(QError::MissingBacking { .. })),
        "{e}"
    );
}

#[test]
fn backing_loops_are_refused() {
    let s = Scratch::new("loop");
    qemu_img(&s.0, &["create", "-f", "qcow2", "a.qcow2", "1M"]);
    // Point a.qcow2 at itself: name after the header, in the first cluster.
    let name = b"a.qcow2";
    patch(&s.path("a.qcow2"), 4000, name);
    patch(&s.path("a.qcow2"), 8, &4000u64.to_be_bytes());
    patch(&s.path("a.qcow2"), 16, &(name.len() as u32).to_be_bytes());
    let e = open_err(&s.path("a.qcow2"), true);
    assert!(matches!(e, QError::ChainTooDeep { .. }), "{e}");
}

#[test]
fn truncated_and_garbage_headers_are_refused() {
    let s = Scratch::new("garbage");
    qemu_img(&s.0, &["create", "-f", "qcow2", "g.qcow2", "1M"]);
    let good = fs::read(s.path("g.qcow2")).unwrap();

    fs::write(s.path("t.qcow2"), &good[..50]).unwrap();
    assert!(matches!(
        open_err(&s.path("t.qcow2"), true),
        QError::Truncated { len: 50, .. }
    ));

    // Magic, then garbage.
    let mut garbage = good[..4].to_vec();
    let mut rng = Rng(1234);
    let mut rest = vec![0u8; 65536 * 3];
    rng.fill(&mut rest);
    garbage.extend_from_slice(&rest);
    fs::write(s.path("x.qcow2"), &garbage).unwrap();
    let e = open_err(&s.path("x.qcow2"), true);
    assert!(matches!(e, QError::Version { .. }), "{e}");

    // A valid version but garbage fields: refused by our checks or imago's, never a panic.
    for seed in 0..64u64 {
        let mut g = good.clone();
        let mut rng = Rng(seed + 1);
        let mut fields = vec![0u8; 96];
        rng.fill(&mut fields);
        g[8..104].copy_from_slice(&fields);
        fs::write(s.path("f.qcow2"), &g).unwrap();
        if let Ok(mut img) = Qcow2Image::open(&s.path("f.qcow2"), true) {
            let mut buf = [0u8; 512];
            let _ = img.read(0, &mut buf);
        }
    }
}

/// An image the fuzzer found: its refcount table lies past the end of the file, and imago's
/// allocator recursed until the stack overflowed on a write. Refused at a read-write open now.
#[test]
fn refcounts_not_covering_the_file_are_refused_read_write() {
    let s = Scratch::new("fuzz-refcount");
    let hex = [
        "514649fb00000003000000000000000000000000000000090000000000100000",
        "0000000000000020000000000000060000000000000002000000000100000000",
        "0000000000040000000000000000000000000000000000000000000000000000",
        "0000000400000070000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000514649fb0000000300000000000000000000000000000009",
        "0000000000100000000000000000000000000000000000000000",
    ]
    .concat();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    fs::write(s.path("r.qcow2"), &bytes).unwrap();
    let e = open_err(&s.path("r.qcow2"), false);
    assert!(matches!(e, QError::BadHeader { .. }), "{e}");
    // Read-only it may open (imago allocates nothing then); reads must not panic.
    if let Ok(mut img) = Qcow2Image::open(&s.path("r.qcow2"), true) {
        let mut buf = [0u8; 4096];
        let _ = img.read(0, &mut buf);
    }
}
