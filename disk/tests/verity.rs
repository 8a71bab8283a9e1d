//! dm-verity interop with cryptsetup's `veritysetup`: hash files it makes open and read here,
//! hash files made here pass `veritysetup verify`, and damage is caught block by block.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmm_disk::verity::{self, Algorithm, Error, FormatOptions, VerityImage};
use vmm_disk::{DiskIoError, ImageFile, RawFile};

fn veritysetup(args: &[&str]) -> std::process::Output {
    match Command::new("veritysetup").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run veritysetup ({e}): install cryptsetup-bin with scripts/install-deps.sh"
        ),
    }
}

/// `veritysetup format` with `args`; returns the root hash it prints.
fn vs_format(data: &Path, hash: &Path, args: &[&str]) -> String {
    let mut all = vec!["format"];
    all.extend_from_slice(args);
    let (d, h) = (data.to_str().unwrap(), hash.to_str().unwrap());
    all.extend_from_slice(&[d, h]);
    let out = veritysetup(&all);
    assert!(out.status.success(), "veritysetup format: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .expect("a root hash line")
        .trim()
        .to_string()
}

fn vs_verify(data: &Path, hash: &Path, root: &str) -> bool {
    let (d, h) = (data.to_str().unwrap(), hash.to_str().unwrap());
    veritysetup(&["verify", d, h, root]).status.success()
}

/// Deterministic, non-repeating bytes (a small xorshift; not a hash).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

struct Case {
    _dir: tempfile::TempDir,
    data: PathBuf,
    hash: PathBuf,
    bytes: Vec<u8>,
}

fn case(len: usize, seed: u64) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.img");
    let hash = dir.path().join("data.hash");
    let bytes = pattern(len, seed);
    std::fs::write(&data, &bytes).unwrap();
    Case {
        _dir: dir,
        data,
        hash,
        bytes,
    }
}

fn open(c: &Case, root: &str) -> Result<VerityImage<RawFile>, Error> {
    VerityImage::open(RawFile::open(&c.data, true).unwrap(), &c.hash, root)
}

fn read_all(image: &mut VerityImage<RawFile>, expect: &[u8]) {
    assert_eq!(image.size(), expect.len() as u64);
    let mut got = vec![0u8; expect.len()];
    image.read(0, &mut got).unwrap();
    assert!(got == expect, "whole-disk read differs");
    // Unaligned pieces too.
    for (offset, len) in [(1usize, 1usize), (511, 2), (4095, 4098), (12345, 70000)] {
        if offset + len <= expect.len() {
            let mut piece = vec![0u8; len];
            image.read(offset as u64, &mut piece).unwrap();
            assert_eq!(piece, expect[offset..offset + len]);
        }
    }
    assert_eq!(image.corrupt_blocks(), 0);
}

fn corrupt_block(err: DiskIoError) -> u64 {
    let DiskIoError::Format(inner) = err else {
        panic!("not a format error: {err:?}")
    };
    match inner.downcast_ref::<Error>() {
        Some(Error::CorruptBlock { block, .. }) | Some(Error::CorruptHashBlock { block, .. }) => {
            *block
        }
        other => panic!("not a verity corruption: {other:?}"),
    }
}

#[test]
fn reads_veritysetup_4k_trees() {
    // 1000 blocks: a partial last level-0 hash block and two levels.
    let c = case(1000 * 4096, 1);
    let root = vs_format(&c.data, &c.hash, &[]);
    read_all(&mut open(&c, &root).unwrap(), &c.bytes);
}

#[test]
fn reads_veritysetup_512_byte_blocks_with_salt() {
    let c = case(3000 * 512 + 100, 2);
    let root = vs_format(
        &c.data,
        &c.hash,
        &[
            "--data-block-size=512",
            "--hash-block-size=512",
            "--salt=00112233445566778899aabbccddeeff",
        ],
    );
    let mut image = open(&c, &root).unwrap();
    assert_eq!(image.superblock().salt.len(), 16);
    read_all(&mut image, &c.bytes[..3000 * 512]);
}

#[test]
fn reads_veritysetup_unsalted_mixed_sizes_and_sha512() {
    let c = case(700 * 512, 3);
    let root = vs_format(&c.data, &c.hash, &["--data-block-size=512", "--salt=-"]);
    read_all(&mut open(&c, &root).unwrap(), &c.bytes);
    let root = vs_format(
        &c.data,
        &c.hash,
        &["--hash=sha512", "--hash-block-size=1024"],
    );
    let mut image = open(&c, &root).unwrap();
    assert_eq!(image.superblock().algorithm, Algorithm::Sha512);
    read_all(&mut image, &c.bytes[..(700 * 512 / 4096) * 4096]);
}

#[test]
fn reads_a_single_block_image() {
    let c = case(4096, 4);
    let root = vs_format(&c.data, &c.hash, &[]);
    read_all(&mut open(&c, &root).unwrap(), &c.bytes);
    let wrong = "00".repeat(32);
    assert!(matches!(open(&c, &wrong), Err(Error::WrongRootHash)));
}

#[test]
fn a_flipped_byte_fails_only_its_block() {
    let c = case(600 * 4096, 5);
    let root = vs_format(&c.data, &c.hash, &[]);
    let mut bytes = c.bytes.clone();
    bytes[200 * 4096 + 77] ^= 0x40;
    std::fs::write(&c.data, &bytes).unwrap();
    let mut image = open(&c, &root).unwrap().with_cache_blocks(2);
    let mut block = vec![0u8; 4096];
    for b in 0..600u64 {
        let got = image.read(b * 4096, &mut block);
        if b == 200 {
            assert_eq!(corrupt_block(got.unwrap_err()), 200);
        } else {
            got.unwrap();
            assert!(
                block[..] == c.bytes[b as usize * 4096..][..4096],
                "block {b}"
            );
        }
    }
    // A read spanning the block fails; one byte of a neighbour reads.
    let mut big = vec![0u8; 64 << 10];
    assert_eq!(
        corrupt_block(image.read(190 * 4096, &mut big).unwrap_err()),
        200
    );
    image.read(201 * 4096, &mut big[..1]).unwrap();
    assert_eq!(image.corrupt_blocks(), 2);
    let counter = image.corrupt_counter();
    assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn a_damaged_hash_block_fails_the_blocks_below_it() {
    let c = case(300 * 4096, 6);
    let root = vs_format(&c.data, &c.hash, &["--salt=-"]);
    // Tree of 300 blocks: top block (1), then three level-0 blocks; damage the second.
    let mut hash = std::fs::read(&c.hash).unwrap();
    hash[4096 * 3 + 5] ^= 1;
    std::fs::write(&c.hash, &hash).unwrap();
    let mut image = open(&c, &root).unwrap();
    let mut block = vec![0u8; 4096];
    image.read(0, &mut block).unwrap();
    assert_eq!(
        corrupt_block(image.read(130 * 4096, &mut block).unwrap_err()),
        130
    );
    image.read(260 * 4096, &mut block).unwrap();
}

#[test]
fn refuses_wrong_root_hash_and_foreign_hash_files() {
    let c = case(64 * 4096, 7);
    let root = vs_format(&c.data, &c.hash, &[]);
    let mut wrong = verity::from_hex(&root).unwrap();
    wrong[0] ^= 1;
    assert!(matches!(
        open(&c, &verity::to_hex(&wrong)),
        Err(Error::WrongRootHash)
    ));
    assert!(matches!(open(&c, "abc"), Err(Error::RootHashHex(_))));
    assert!(matches!(
        open(&c, "abcd"),
        Err(Error::RootHashLength { .. })
    ));

    // Another image's hash file (of another size; of the same size, its root hash fails).
    let other = case(65 * 4096, 8);
    let other_root = vs_format(&other.data, &other.hash, &[]);
    let image = VerityImage::open(RawFile::open(&c.data, true).unwrap(), &other.hash, &root);
    assert!(
        matches!(image, Err(Error::SizeMismatch { .. })),
        "{image:?}"
    );
    let same = case(64 * 4096, 9);
    vs_format(&same.data, &same.hash, &[]);
    let image = VerityImage::open(RawFile::open(&c.data, true).unwrap(), &same.hash, &root);
    assert!(matches!(image, Err(Error::WrongRootHash)));
    let _ = other_root;
}

#[test]
fn veritysetup_verifies_our_hash_files() {
    for (data_block, hash_block, salt) in [
        (4096u32, 4096u32, None),
        (512, 512, Some(vec![0xa5; 16])),
        (512, 4096, Some(vec![])),
        (4096, 512, Some(vec![1, 2, 3])),
    ] {
        let c = case(777 * 512, u64::from(data_block) + u64::from(hash_block));
        let options = FormatOptions {
            data_block_size: data_block,
            hash_block_size: hash_block,
            salt: salt.clone(),
            ..FormatOptions::default()
        };
        let root = verity::format(&c.data, &c.hash, &options).unwrap();
        assert!(
            vs_verify(&c.data, &c.hash, &root),
            "veritysetup verify refused {data_block}/{hash_block} salt {salt:?}"
        );
        let len = (777 * 512 / data_block as usize) * data_block as usize;
        read_all(&mut open(&c, &root).unwrap(), &c.bytes[..len]);
        // Same parameters through veritysetup: same root hash.
        if let Some(salt) = salt {
            let salt_arg = if salt.is_empty() {
                "--salt=-".to_string()
            } else {
                format!("--salt={}", verity::to_hex(&salt))
            };
            let theirs = c.hash.with_extension("theirs");
            let root2 = vs_format(
                &c.data,
                &theirs,
                &[
                    &format!("--data-block-size={data_block}"),
                    &format!("--hash-block-size={hash_block}"),
                    &salt_arg,
                ],
            );
            assert_eq!(root, root2);
        }
    }
}

#[test]
fn hostile_hash_files_are_errors() {
    let c = case(100 * 4096, 10);
    let root = vs_format(&c.data, &c.hash, &[]);
    let good = std::fs::read(&c.hash).unwrap();
    let try_with = |bytes: &[u8]| {
        std::fs::write(&c.hash, bytes).unwrap();
        open(&c, &root).map(|_| ())
    };
    assert!(matches!(
        try_with(&[]),
        Err(Error::ShortSuperblock { len: 0 })
    ));
    assert!(matches!(
        try_with(&good[..300]),
        Err(Error::ShortSuperblock { .. })
    ));
    assert!(matches!(
        try_with(&good[..4096 + 10]),
        Err(Error::HashFileTooShort { .. })
    ));
    let edit = |at: usize, with: &[u8]| {
        let mut b = good.clone();
        b[at..at + with.len()].copy_from_slice(with);
        try_with(&b)
    };
    assert!(matches!(edit(8, &[9]), Err(Error::Version(9))));
    assert!(matches!(edit(0, b"VERITY"), Err(Error::BadSignature)));
    assert!(matches!(edit(32, b"sha1\0"), Err(Error::Algorithm(_))));
    assert!(matches!(
        edit(72, &u64::MAX.to_le_bytes()),
        Err(Error::TooLarge)
    ));
    assert!(matches!(
        edit(72, &(1u64 << 40).to_le_bytes()),
        Err(Error::HashFileTooShort { .. })
    ));
    assert!(matches!(
        edit(72, &50u64.to_le_bytes()),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(matches!(
        edit(68, &7u32.to_le_bytes()),
        Err(Error::BlockSize { .. })
    ));
    assert!(matches!(edit(80, &[0xff, 0xff]), Err(Error::SaltSize(_))));
    // A different salt: the tree no longer hashes to the root.
    assert!(matches!(edit(88, &[0]), Err(Error::WrongRootHash)));
    try_with(&good).unwrap();
}

#[test]
fn writes_are_refused() {
    let c = case(8 * 4096, 11);
    let root = verity::format(&c.data, &c.hash, &FormatOptions::default()).unwrap();
    let mut image = open(&c, &root).unwrap();
    assert!(image.read_only());
    assert!(image.write(0, &[0; 512]).is_err());
    let mut past = [0u8; 512];
    assert!(image.read(8 * 4096, &mut past).is_err());
    assert!(image.read(u64::MAX, &mut past).is_err());
}
