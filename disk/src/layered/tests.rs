//! Tests of the layered format: a model test, crash injection, a SIGKILLed writer, hostile
//! files, and the image operations.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::file::fault;
use super::*;

const SIZE: u64 = 16 * 4096 + 1000;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(7)) | 1)
        .collect()
}

fn read_all(image: &mut LayeredImage) -> Vec<u8> {
    let mut buf = vec![0u8; image.size() as usize];
    image.read(0, &mut buf).unwrap();
    buf
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: usize, seed: u8 },
    Discard { offset: u64, len: u64 },
    Flush,
    Snapshot,
    Clone,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..SIZE, 1usize..9000, any::<u8>()).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        2 => (0..SIZE, 1u64..9000).prop_map(|(offset, len)| Op::Discard { offset, len }),
        1 => Just(Op::Flush),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Clone),
        1 => Just(Op::Reopen),
    ]
}

fn run_model(ops: &[Op], with_base: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let base = if with_base {
        let p = dir.path().join("base.raw");
        model = pattern(99, SIZE as usize);
        std::fs::write(&p, &model).unwrap();
        Some(p)
    } else {
        None
    };
    let mut path = dir.path().join("disk0");
    create(&path, Some(SIZE), base.as_deref()).unwrap();
    let mut image = LayeredImage::open(&path, false).unwrap();
    let mut clones = 0;
    for op in ops {
        match *op {
            Op::Write { offset, len, seed } => {
                let len = len.min((SIZE - offset) as usize);
                let data = pattern(seed, len);
                image.write(offset, &data).unwrap();
                model[offset as usize..offset as usize + len].copy_from_slice(&data);
            }
            Op::Discard { offset, len } => {
                let len = len.min(SIZE - offset);
                image.discard(offset, len).unwrap();
                model[offset as usize..(offset + len) as usize].fill(0);
            }
            Op::Flush => image.flush().unwrap(),
            Op::Snapshot => {
                let seal = image.seal_for_snapshot().unwrap().unwrap();
                assert!(seal.layer.exists());
            }
            Op::Clone => {
                drop(image);
                clones += 1;
                let new = dir.path().join(format!("clone{clones}"));
                clone_image(&path, &new).unwrap();
                path = new;
                image = LayeredImage::open(&path, false).unwrap();
            }
            Op::Reopen => {
                drop(image);
                image = LayeredImage::open(&path, false).unwrap();
            }
        }
        assert_eq!(read_all(&mut image), model, "after {op:?}");
    }
    drop(image);
    assert_eq!(check(&path).unwrap(), Vec::<Problem>::new());
    commit(&path).unwrap();
    let mut flat = LayeredImage::open(&path, true).unwrap();
    assert_eq!(flat.layer_count(), 1);
    assert_eq!(read_all(&mut flat), model);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn matches_a_model(ops in proptest::collection::vec(op(), 1..40), with_base in any::<bool>()) {
        run_model(&ops, with_base);
    }
}

#[test]
fn many_blocks_make_a_deep_tree_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let blocks = 70_000u64;
    create(&path, Some(blocks * 4096), None).unwrap();
    let mut image = LayeredImage::open(&path, false).unwrap();
    for round in 0..2u64 {
        for b in (round..blocks).step_by(3) {
            image.write(b * 4096, &(b + 1).to_le_bytes()).unwrap();
        }
        image.flush().unwrap();
    }
    image.seal_for_snapshot().unwrap();
    drop(image);
    let info = info(&path).unwrap();
    assert_eq!(info.layers[1].tree_depth, 2);
    let fp = info.layers[1].filter_fp_rate.unwrap();
    assert!(fp < 0.03, "{fp}");
    let mut image = LayeredImage::open(&path, true).unwrap();
    for b in [0u64, 1, 2, 3, 4, 69_999, 35_001] {
        let mut buf = [0u8; 8];
        image.read(b * 4096, &mut buf).unwrap();
        let expect = if b % 3 == 2 { 0 } else { b + 1 };
        assert_eq!(u64::from_le_bytes(buf), expect, "block {b}");
    }
    drop(image);
    assert!(super::check(&path).unwrap().is_empty());
}

/// Per block, the values it may hold after a crash: the last flushed one and every one
/// written since.
struct CrashModel {
    current: Vec<u8>,
    allowed: Vec<Vec<u8>>,
}

impl CrashModel {
    fn write(&mut self, block: usize, value: u8) {
        self.current[block] = value;
        self.allowed[block].push(value);
    }
    fn flushed(&mut self) {
        for (b, v) in self.current.iter().enumerate() {
            self.allowed[b] = vec![*v];
        }
    }
}

fn crash_scenario(path: &Path, m: &mut CrashModel) -> Result<()> {
    let mut image = LayeredImage::open(path, false)?;
    let result = (|| {
        for round in 0..3u8 {
            for b in 0..8usize {
                let block = (b * 3 + usize::from(round)) % 16;
                let value = 10 * (round + 1) + b as u8;
                m.write(block, value);
                image.write_range(block as u64 * 4096, 4096, Some(&[value; 4096]))?;
            }
            if round == 1 {
                m.write(5, 0);
                image.write_range(5 * 4096, 4096, None)?;
                image.seal_top()?;
            }
            image.commit_top()?;
            m.flushed();
        }
        Ok(())
    })();
    // A crashed process runs no destructor: nothing more reaches the files.
    std::mem::forget(image);
    result
}

#[test]
fn crash_at_every_write_and_sync_keeps_flushed_state() {
    for drop_unsynced in [false, true] {
        let mut k = 0;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk");
            create(&path, Some(16 * 4096), None).unwrap();
            let mut m = CrashModel {
                current: vec![0; 16],
                allowed: vec![vec![0]; 16],
            };
            fault::arm(k, drop_unsynced);
            let result = crash_scenario(&path, &mut m);
            let crashed = fault::disarm();
            assert_eq!(crashed, result.is_err(), "k={k}: {result:?}");
            let mut image = LayeredImage::open(&path, false)
                .unwrap_or_else(|e| panic!("k={k} drop={drop_unsynced}: {e}"));
            let problems = check(&path).unwrap();
            assert!(
                problems.is_empty(),
                "k={k} drop={drop_unsynced}: {problems:?}"
            );
            for b in 0..16u64 {
                let mut buf = [0u8; 4096];
                image.read(b * 4096, &mut buf).unwrap();
                assert!(buf.iter().all(|&x| x == buf[0]), "k={k} block {b} torn");
                assert!(
                    m.allowed[b as usize].contains(&buf[0]),
                    "k={k} drop={drop_unsynced} block {b} = {} not in {:?}",
                    buf[0],
                    m.allowed[b as usize]
                );
            }
            drop(image);
            if !crashed {
                break;
            }
            k += 1;
        }
        assert!(k > 20, "the scenario has {k} operations");
    }
}

const CHILD_ENV: &str = "VMM_LAYERED_SIGKILL_DIR";

/// The writer the SIGKILL test runs in a child process: writes block i % 64 with i, flushes,
/// reports i, forever.
#[test]
#[ignore = "run by sigkill_mid_write_opens_clean in a child process"]
fn sigkill_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let path = PathBuf::from(dir).join("disk");
    let mut image = LayeredImage::open(&path, false).unwrap();
    for i in 1u32.. {
        let block = u64::from(i % 64);
        let data: Vec<u8> = (0..1024).flat_map(|_| i.to_le_bytes()).collect();
        image.write(block * 4096, &data).unwrap();
        if i % 3 == 0 {
            image.flush().unwrap();
            println!("flushed {i}");
        }
    }
}

#[test]
fn sigkill_mid_write_opens_clean() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    create(&path, Some(64 * 4096), None).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "layered::tests::sigkill_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last = 0u32;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("flushed ") {
            last = n.parse().unwrap();
            if last >= 300 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(last >= 300);
    assert_eq!(check(&path).unwrap(), Vec::<Problem>::new());
    let mut image = LayeredImage::open(&path, true).unwrap();
    for b in 0..64u32 {
        let mut buf = [0u8; 4];
        image.read(u64::from(b) * 4096, &mut buf).unwrap();
        let v = u32::from_le_bytes(buf);
        // The last flushed write to this block, or a later one.
        let flushed = (0..=last)
            .rev()
            .find(|i| i % 64 == b && *i > 0)
            .unwrap_or(0);
        assert!(
            v >= flushed && (v == 0 || v % 64 == b),
            "block {b}: {v} < {flushed}"
        );
    }
}

/// An image with a sealed layer (tree, filter) under a top with data.
fn sample(dir: &Path) -> (PathBuf, PathBuf) {
    let path = dir.join("disk");
    create(&path, Some(600 * 4096), None).unwrap();
    let mut image = LayeredImage::open(&path, false).unwrap();
    for b in 0..300u64 {
        image.write(b * 2 * 4096, &[b as u8 | 1; 100]).unwrap();
    }
    let seal = image.seal_for_snapshot().unwrap().unwrap();
    image.write(4096, &[7; 4096]).unwrap();
    drop(image);
    (path, seal.layer)
}

fn exercise(path: &Path) -> std::result::Result<Vec<Problem>, String> {
    let problems = check(path).map_err(|e| e.to_string())?;
    let _ = info(path);
    let mut image = LayeredImage::open(path, true).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let mut failed = false;
    for b in 0..600u64 {
        failed |= image.read(b * 4096, &mut buf).is_err();
    }
    if failed && problems.is_empty() {
        return Err("read failed".into());
    }
    Ok(problems)
}

#[test]
fn truncated_layers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (path, sealed) = sample(dir.path());
    let original = std::fs::read(&sealed).unwrap();
    let blocks = original.len() / 4096;
    for cut in (0..=blocks).flat_map(|b| [b * 4096, (b * 4096).saturating_sub(1)]) {
        if cut >= original.len() {
            continue;
        }
        std::fs::write(&sealed, &original[..cut]).unwrap();
        if let Ok(problems) = exercise(&path) {
            assert!(!problems.is_empty(), "cut at {cut} went unnoticed");
        }
    }
}

#[test]
fn flipped_metadata_bytes_are_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, sealed) = sample(dir.path());
    let original = std::fs::read(&sealed).unwrap();
    let layer = layer::Layer::open(&sealed, false).unwrap();
    let filter = layer.sb.filter_block as usize * 4096
        ..(layer.sb.filter_block * 4096 + layer.sb.filter_bits / 8) as usize;
    let mut metadata: Vec<usize> = vec![0, 1, 2, layer.sb.root as usize];
    btree::walk(
        &layer.file,
        layer.tree(),
        u64::MAX,
        &mut |_, _| Ok(()),
        &mut |_, b| metadata.push(b as usize),
    )
    .unwrap();
    drop(layer);
    for block in 0..original.len() / 4096 {
        for at in [0usize, 9, 10, 20, 40, 100, 4000, 4095] {
            let mut bytes = original.clone();
            bytes[block * 4096 + at] ^= 0x5a;
            std::fs::write(&sealed, &bytes).unwrap();
            let result = exercise(&path);
            if metadata.contains(&block) || filter.contains(&(block * 4096 + at)) {
                if let Ok(problems) = result {
                    assert!(
                        !problems.is_empty(),
                        "flip in block {block} at {at} unnoticed"
                    );
                }
            }
        }
    }
}

#[test]
fn parents_missing_or_changed_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![3u8; 8192]).unwrap();
    let path = dir.path().join("disk");
    create(&path, None, Some(&base)).unwrap();
    let mut image = LayeredImage::open(&path, false).unwrap();
    assert_eq!(image.size(), 8192);
    let mut buf = [0u8; 4];
    image.read(8000, &mut buf).unwrap();
    assert_eq!(buf, [3; 4]);
    drop(image);
    std::fs::write(&base, vec![4u8; 8192]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(0));
    let meta_changed = LayeredImage::open(&path, true);
    // Rewriting a file keeps its inode and size; mtime tells (when the clock moved).
    if let Err(e) = meta_changed {
        assert!(matches!(e, Error::ParentChanged { .. }), "{e}");
    }
    std::fs::remove_file(&base).unwrap();
    let e = LayeredImage::open(&path, true).unwrap_err();
    assert!(matches!(e, Error::MissingParent { .. }), "{e}");
    assert!(!check(&path).unwrap().is_empty());
    assert!(create(&dir.path().join("zero"), Some(0), None).is_err());
}

#[test]
fn open_sealed_gives_each_restore_its_own_clone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    create(&path, Some(1 << 20), None).unwrap();
    let mut image = LayeredImage::open(&path, false).unwrap();
    image.write(0, b"snapshot state").unwrap();
    let seal = image.seal_for_snapshot().unwrap().unwrap();
    image.write(0, b"later state!!!").unwrap();
    let mut a = open_sealed(&seal, &dir.path().join("a")).unwrap();
    let mut b = crate::open_sealed(&seal, &dir.path().join("b"))
        .unwrap()
        .into_image_file();
    a.write(0, b"A").unwrap();
    let mut buf = [0u8; 14];
    b.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"snapshot state");
    a.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"Anapshot state");
    image.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"later state!!!");
    let mut wrong = seal.clone();
    wrong.layer_id = "00".into();
    assert!(matches!(
        open_sealed(&wrong, &dir.path().join("c")),
        Err(Error::SealMismatch { .. })
    ));
    let opened = crate::open_image(&path, &crate::OpenOptions::default()).unwrap();
    assert_eq!(opened.format(), crate::Format::Layered);
}

#[test]
fn dedup_import_stores_shared_blocks_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut one = Vec::new();
    for b in 0..64u32 {
        one.extend((0..1024).flat_map(|_| (b + 1).to_le_bytes()));
    }
    let mut two = one.clone();
    two[5 * 4096..6 * 4096].fill(0xee);
    two[9 * 4096..10 * 4096].fill(0);
    let (i1, i2) = (dir.path().join("one.raw"), dir.path().join("two.raw"));
    std::fs::write(&i1, &one).unwrap();
    std::fs::write(&i2, &two).unwrap();
    let (o1, o2) = (dir.path().join("one"), dir.path().join("two"));
    let report =
        crate::import_dedup(&[i1, i2], &[o1.clone(), o2.clone()], HashKind::Sha256).unwrap();
    assert_eq!(report.blocks_seen, 127);
    assert_eq!(report.blocks_stored, 65);
    assert!(report.ratio > 1.9);
    for (out, data) in [(&o1, &one), (&o2, &two)] {
        let mut image = LayeredImage::open(out, true).unwrap();
        assert_eq!(&read_all(&mut image), data);
        assert!(check(out).unwrap().is_empty());
    }
    let text = info(&o2).unwrap().to_string();
    assert!(text.contains("dedup ratio"), "{text}");
}

/// The guest's path (`DiskImage`): whole-block writes go from guest memory to the top's file in
/// runs, partial ones through a buffer; reads come back through guest memory and through the
/// host side alike, before and after a flush and a reopen, over a base.
#[test]
fn guest_writes_and_reads_through_guest_memory() {
    use crate::{DiskImage, GuestBuffers, GuestRange};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, pattern(9, SIZE as usize)).unwrap();
    let path = dir.path().join("top");
    create(&path, None, Some(&base)).unwrap();
    let mut model = pattern(9, SIZE as usize);
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut image = LayeredImage::open(&path, false).unwrap();
    // (disk offset, guest buffers): aligned runs split over several buffers, a rewrite, and
    // unaligned pieces (512-byte sectors inside blocks).
    let writes: [(u64, &[(u64, u32)]); 4] = [
        (0, &[(0x1000, 4096), (0x8000, 8192)]),
        (4 * 4096, &[(0x2_0000, 3 * 4096)]),
        (4096, &[(0x3_0000, 4096)]),
        (5 * 4096 + 512, &[(0x4_0000, 1024), (0x5_0000, 512)]),
    ];
    for (n, (offset, ranges)) in writes.iter().enumerate() {
        let ranges: Vec<GuestRange> = ranges
            .iter()
            .map(|&(addr, len)| GuestRange {
                addr: GuestAddress(addr),
                len,
            })
            .collect();
        let bufs = GuestBuffers::new(&mem, &ranges).unwrap();
        let data = pattern(n as u8 + 40, bufs.len() as usize);
        bufs.write_from(0, &data).unwrap();
        DiskImage::write_at(&mut image, *offset, &bufs).unwrap();
        model[*offset as usize..*offset as usize + data.len()].copy_from_slice(&data);
    }
    let verify = |image: &mut LayeredImage| {
        let ranges = [GuestRange {
            addr: GuestAddress(0x8_0000),
            len: 8 * 4096,
        }];
        let bufs = GuestBuffers::new(&mem, &ranges).unwrap();
        DiskImage::read_at(image, 0, &bufs).unwrap();
        let mut got = vec![0u8; 8 * 4096];
        mem.read_slice(&mut got, GuestAddress(0x8_0000)).unwrap();
        assert!(got == model[..8 * 4096], "through guest memory");
        let mut all = vec![0u8; SIZE as usize];
        ImageFile::read(image, 0, &mut all).unwrap();
        assert!(all == model, "through the host side");
    };
    verify(&mut image);
    DiskImage::<GuestMemoryMmap<()>>::flush(&mut image).unwrap();
    drop(image);
    let mut image = LayeredImage::open(&path, false).unwrap();
    verify(&mut image);
    drop(image);
    assert!(super::check(&path).unwrap().is_empty());
}
