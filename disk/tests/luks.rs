//! LUKS interoperability: images from `cryptsetup` and `qemu-img` open through [`LuksImage`],
//! and images written through it decrypt with them. Both tools come from
//! `scripts/install-deps.sh` (cryptsetup-bin, qemu-utils); no device-mapper is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmm_disk::luks::{
    luks_format, Error, FormatKdf, FormatOptions, LuksImage, LuksOpenOptions, LuksVersion,
};
use vmm_disk::{ImageFile, RawFile};

const KEY: &[u8] = b"correct horse battery staple\n";

/// Runs `program` to its end; a program that cannot be started is a setup error.
fn output(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install it with scripts/install-deps.sh")
        })
}

fn run(program: &str, args: &[&str]) -> String {
    let out = output(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`run`] for `qemu-img` commands that create LUKS keyslots: QEMU times PBKDF2 on the thread's
/// CPU clock to pick an iteration count, and on a loaded machine that measurement can fail
/// ("Unable to get accurate CPU usage", seen in CI); only that failure is retried, twice.
fn run_qemu_img_keyslot(args: &[&str]) -> String {
    for _ in 0..2 {
        let out = output("qemu-img", args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Unable to get accurate CPU usage"),
            "qemu-img {args:?} failed: {stderr}"
        );
    }
    run("qemu-img", args)
}

fn fails(program: &str, args: &[&str]) -> bool {
    !output(program, args).status.success()
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        let dir = Dir(tempfile::tempdir().unwrap());
        std::fs::write(dir.p("key"), KEY).unwrap();
        dir
    }
    fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_string()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 4096) as u8) ^ seed)
        .collect()
}

fn open(img: &Path, key: &[u8], header: Option<&Path>) -> Result<LuksImage<RawFile>, Error> {
    let raw = RawFile::open(img, false).unwrap();
    LuksImage::open(
        raw,
        key,
        &LuksOpenOptions {
            header: header.map(Path::to_path_buf),
            ..Default::default()
        },
    )
}

fn read_all(image: &mut impl ImageFile) -> Vec<u8> {
    let mut buf = vec![0u8; image.size() as usize];
    image.read(0, &mut buf).unwrap();
    buf
}

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

#[test]
fn cryptsetup_luks2_argon2id_opens_and_refuses_wrong_key() {
    let d = Dir::new();
    sparse(&d.p("img"), 20 << 20);
    run(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32",
            "--pbkdf-force-iterations",
            "4",
            &d.s("img"),
            &d.s("key"),
        ],
    );
    let image = open(&d.p("img"), KEY, None).unwrap();
    assert_eq!(image.size(), 4 << 20);
    assert_eq!(image.info().version, 2);
    assert_eq!(image.info().key_size, 64);
    let wrong = open(&d.p("img"), b"correct horse battery staple", None);
    assert!(
        matches!(wrong, Err(Error::WrongKey { tried: 1 })),
        "{wrong:?}"
    );
}

#[test]
fn cryptsetup_luks1_pbkdf2_opens_and_refuses_wrong_key() {
    let d = Dir::new();
    sparse(&d.p("img"), 4 << 20);
    run(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks1",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-size",
            "256",
            &d.s("img"),
            &d.s("key"),
        ],
    );
    let image = open(&d.p("img"), KEY, None).unwrap();
    assert_eq!(image.info().version, 1);
    assert_eq!(image.info().key_size, 32);
    assert_eq!(image.size(), (4 << 20) - image.info().payload_offset);
    assert!(matches!(
        open(&d.p("img"), b"nope", None),
        Err(Error::WrongKey { .. })
    ));
}

#[test]
fn cryptsetup_unsupported_cipher_refused() {
    let d = Dir::new();
    sparse(&d.p("img"), 20 << 20);
    run(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--cipher",
            "aes-cbc-essiv:sha256",
            "--key-size",
            "256",
            &d.s("img"),
            &d.s("key"),
        ],
    );
    let err = open(&d.p("img"), KEY, None).unwrap_err();
    assert!(matches!(err, Error::UnsupportedCipher(_)), "{err:?}");
    assert!(err.to_string().contains("aes-cbc-essiv:sha256"), "{err}");
}

/// `cryptsetup reencrypt --encrypt` in place: our layer reads the plaintext back.
#[test]
fn cryptsetup_reencrypt_in_place_reads_plaintext() {
    let d = Dir::new();
    let plain = pattern(40 << 20, 1);
    std::fs::write(d.p("img"), &plain).unwrap();
    run(
        "cryptsetup",
        &[
            "reencrypt",
            "--encrypt",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--reduce-device-size",
            "32M",
            "--force-offline-reencrypt",
            "--key-file",
            &d.s("key"),
            &d.s("img"),
        ],
    );
    let mut image = open(&d.p("img"), KEY, None).unwrap();
    let got = read_all(&mut image);
    assert_eq!(got.len(), 24 << 20);
    let keep = (40 << 20) - (32 << 20);
    assert!(got[..keep] == plain[..keep], "plaintext differs");
}

/// Detached header, 4096-byte encryption sectors: encrypted by cryptsetup, read by us; then
/// written by us (512-byte writes inside 4 KiB sectors), decrypted by cryptsetup.
#[test]
fn cryptsetup_detached_header_4k_sectors_both_ways() {
    let d = Dir::new();
    let plain = pattern(8 << 20, 2);
    std::fs::write(d.p("img"), &plain).unwrap();
    run(
        "cryptsetup",
        &[
            "reencrypt",
            "--encrypt",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--header",
            &d.s("hdr"),
            "--sector-size",
            "4096",
            "--force-offline-reencrypt",
            "--key-file",
            &d.s("key"),
            &d.s("img"),
        ],
    );
    let mut image = open(&d.p("img"), KEY, Some(&d.p("hdr"))).unwrap();
    assert_eq!(image.info().sector_size, 4096);
    let got = read_all(&mut image);
    let first_bad = got.iter().zip(&plain).position(|(a, b)| a != b);
    assert_eq!(got.len(), plain.len());
    assert_eq!(first_bad, None, "decrypted bytes differ");
    // Without the header the image is no LUKS image.
    assert!(matches!(open(&d.p("img"), KEY, None), Err(Error::NotLuks)));

    let mut expect = plain.clone();
    let patch = pattern(3 * 512, 9);
    image.write(4096 + 512, &patch).unwrap();
    expect[4096 + 512..4096 + 2048].copy_from_slice(&patch);
    image.write(7, b"odd").unwrap();
    expect[7..10].copy_from_slice(b"odd");
    image.flush().unwrap();
    drop(image);
    run(
        "cryptsetup",
        &[
            "reencrypt",
            "--decrypt",
            "--batch-mode",
            "--header",
            &d.s("hdr"),
            "--force-offline-reencrypt",
            "--key-file",
            &d.s("key"),
            &d.s("img"),
        ],
    );
    assert!(
        std::fs::read(d.p("img")).unwrap() == expect,
        "cryptsetup decrypted other bytes"
    );
}

/// `qemu-img convert -O luks` (LUKS1): our layer reads the plaintext.
#[test]
fn qemu_img_luks_reads_plaintext() {
    let d = Dir::new();
    let plain = pattern(2 << 20, 3);
    std::fs::write(d.p("plain.raw"), &plain).unwrap();
    let secret = format!("secret,id=s0,file={}", d.s("key"));
    run_qemu_img_keyslot(&[
        "convert",
        "--object",
        &secret,
        "-O",
        "luks",
        "-o",
        "key-secret=s0,iter-time=200",
        &d.s("plain.raw"),
        &d.s("enc.luks"),
    ]);
    let mut image = open(&d.p("enc.luks"), KEY, None).unwrap();
    assert_eq!(image.info().version, 1);
    assert!(read_all(&mut image) == plain);
}

fn format_and_write(d: &Dir, options: &FormatOptions) -> Vec<u8> {
    luks_format(&d.p("enc"), KEY, Some(2 << 20), options).unwrap();
    let mut image = open(&d.p("enc"), KEY, options.header.as_deref()).unwrap();
    assert_eq!(image.size(), 2 << 20);
    let plain = pattern(2 << 20, 4);
    image.write(0, &plain).unwrap();
    image.flush().unwrap();
    assert!(read_all(&mut image) == plain);
    assert!(matches!(
        open(&d.p("enc"), b"wrong", options.header.as_deref()),
        Err(Error::WrongKey { .. })
    ));
    plain
}

/// An image we create and write (LUKS1) decrypts with `qemu-img` and dumps with cryptsetup.
#[test]
fn our_luks1_decrypts_with_qemu_img() {
    let d = Dir::new();
    let options = FormatOptions {
        version: LuksVersion::Luks1,
        ..FormatOptions::cheap()
    };
    let plain = format_and_write(&d, &options);
    let info = run("qemu-img", &["info", &d.s("enc")]);
    assert!(info.contains("file format: luks"), "{info}");
    let dump = run("cryptsetup", &["luksDump", &d.s("enc")]);
    assert!(dump.contains("Version:       \t1"), "{dump}");
    let secret = format!("secret,id=s0,file={}", d.s("key"));
    let opts = format!("driver=luks,key-secret=s0,file.filename={}", d.s("enc"));
    run(
        "qemu-img",
        &[
            "convert",
            "--object",
            &secret,
            "--image-opts",
            &opts,
            "-O",
            "raw",
            &d.s("out.raw"),
        ],
    );
    assert!(std::fs::read(d.p("out.raw")).unwrap() == plain);
}

/// An image we create (LUKS2, argon2id, detached header) and write decrypts with cryptsetup.
#[test]
fn our_luks2_decrypts_with_cryptsetup() {
    for detached in [false, true] {
        let d = Dir::new();
        let options = FormatOptions {
            kdf: FormatKdf::Argon2id {
                time: 4,
                memory_kib: 32,
                lanes: 1,
            },
            header: detached.then(|| d.p("hdr")),
            ..FormatOptions::default()
        };
        let plain = format_and_write(&d, &options);
        let header = if detached { d.s("hdr") } else { d.s("enc") };
        let dump = run("cryptsetup", &["luksDump", &header]);
        assert!(dump.contains("argon2id"), "{dump}");
        assert!(!fails(
            "cryptsetup",
            &[
                "luksOpen",
                "--test-passphrase",
                "--key-file",
                &d.s("key"),
                &header
            ]
        ));
        if detached {
            run(
                "cryptsetup",
                &[
                    "reencrypt",
                    "--decrypt",
                    "--batch-mode",
                    "--header",
                    &header,
                    "--force-offline-reencrypt",
                    "--key-file",
                    &d.s("key"),
                    &d.s("enc"),
                ],
            );
            assert!(std::fs::read(d.p("enc")).unwrap() == plain);
        }
    }
}

#[test]
fn damaged_headers_refused() {
    let d = Dir::new();
    luks_format(&d.p("enc"), KEY, Some(1 << 20), &FormatOptions::cheap()).unwrap();
    let good = std::fs::read(d.p("enc")).unwrap();
    let damage = |edits: &[usize]| {
        let mut bytes = good.clone();
        for at in edits {
            bytes[*at] ^= 0x40;
        }
        std::fs::write(d.p("enc"), &bytes).unwrap();
        open(&d.p("enc"), KEY, None)
    };
    // The primary's JSON damaged: the secondary header serves, as cryptsetup's does.
    assert!(damage(&[4096 + 10]).is_ok());
    // Both JSON areas, both checksums: refused as damaged.
    assert!(matches!(
        damage(&[4096 + 10, 16384 + 4096 + 10]),
        Err(Error::Damaged(_))
    ));
    assert!(matches!(
        damage(&[448, 16384 + 448]),
        Err(Error::Damaged(_))
    ));
    // Keyslot material: the key no longer opens it.
    assert!(matches!(
        damage(&[32768 + 1000]),
        Err(Error::WrongKey { .. })
    ));
    // Truncated inside the keyslot area.
    std::fs::write(d.p("enc"), &good[..40000]).unwrap();
    assert!(matches!(
        open(&d.p("enc"), KEY, None),
        Err(Error::Truncated { .. })
    ));
}

#[test]
fn luks1_damage_refused() {
    let d = Dir::new();
    let options = FormatOptions {
        version: LuksVersion::Luks1,
        ..FormatOptions::cheap()
    };
    luks_format(&d.p("enc"), KEY, Some(1 << 20), &options).unwrap();
    let mut bytes = std::fs::read(d.p("enc")).unwrap();
    bytes[120] ^= 1; // mk-digest
    std::fs::write(d.p("enc"), &bytes).unwrap();
    assert!(matches!(
        open(&d.p("enc"), KEY, None),
        Err(Error::WrongKey { .. })
    ));
    bytes[120] ^= 1;
    bytes[208] = 0x12; // keyslot 0 state
    std::fs::write(d.p("enc"), &bytes).unwrap();
    assert!(matches!(
        open(&d.p("enc"), KEY, None),
        Err(Error::Damaged(_))
    ));
}
