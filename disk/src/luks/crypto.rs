//! The primitives LUKS composes, all from RustCrypto: AES-XTS with plain64 IVs, PBKDF2 and
//! Argon2 key derivation, and the anti-forensic splitter (AF) built on a hash.

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use sha2::Digest;
use xts_mode::Xts128;

use super::secret::{Secret, SecretBuf};
use super::Error;

/// A hash LUKS names (`hash-spec`, `af.hash`, `digests.hash`, a pbkdf2 `hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// The hash called `name`, or `Unsupported`.
    pub fn parse(name: &str) -> Result<Hash, Error> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Hash::Sha1),
            "sha256" => Ok(Hash::Sha256),
            "sha512" => Ok(Hash::Sha512),
            _ => Err(Error::Unsupported(format!(
                "hash {name:?} (sha1, sha256 or sha512)"
            ))),
        }
    }

    /// Its name in headers.
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "sha1",
            Hash::Sha256 => "sha256",
            Hash::Sha512 => "sha512",
        }
    }

    /// `PBKDF2-HMAC-<hash>(pass, salt, iterations)` into `out`.
    pub fn pbkdf2(self, pass: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        let iterations = iterations.max(1);
        match self {
            Hash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(pass, salt, iterations, out),
            Hash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(pass, salt, iterations, out),
            Hash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(pass, salt, iterations, out),
        }
    }

    /// The AF diffusion of `buf`: each hash-sized block `i` (the last one may be short) becomes
    /// `H(be32(i) || block)`, cut to the block's length.
    fn diffuse(self, buf: &mut [u8]) {
        match self {
            Hash::Sha1 => diffuse::<sha1::Sha1>(buf),
            Hash::Sha256 => diffuse::<sha2::Sha256>(buf),
            Hash::Sha512 => diffuse::<sha2::Sha512>(buf),
        }
    }

    /// Digest of `data` (the LUKS2 binary header checksum).
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

fn diffuse<D: Digest>(buf: &mut [u8]) {
    let size = <D as Digest>::output_size();
    for (i, block) in buf.chunks_mut(size).enumerate() {
        let mut hasher = D::new();
        hasher.update((i as u32).to_be_bytes());
        hasher.update(&*block);
        let mut out = hasher.finalize();
        let n = block.len();
        block.copy_from_slice(&out[..n]);
        zeroize::Zeroize::zeroize(out.as_mut_slice());
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Merges `stripes` AF stripes of `key.len()` bytes each from `material` into `key`.
pub fn af_merge(material: &[u8], stripes: usize, hash: Hash, key: &mut [u8]) {
    let len = key.len();
    key.fill(0);
    if len == 0 || stripes == 0 {
        return;
    }
    for (i, stripe) in material.chunks_exact(len).take(stripes).enumerate() {
        xor_into(key, stripe);
        if i + 1 < stripes {
            hash.diffuse(key);
        }
    }
}

/// Splits `key` into `stripes` AF stripes in `material` (`key.len() * stripes` bytes), all but
/// the last random.
pub fn af_split(key: &[u8], stripes: usize, hash: Hash, material: &mut [u8]) -> Result<(), Error> {
    let len = key.len();
    let mut d = SecretBuf::zeroed(len)?;
    let mut stripes_iter = material.chunks_exact_mut(len).take(stripes);
    for _ in 1..stripes {
        let stripe = stripes_iter
            .next()
            .ok_or(Error::Internal("AF material too short"))?;
        random_bytes(stripe)?;
        xor_into(&mut d, stripe);
        hash.diffuse(&mut d);
    }
    let last = stripes_iter
        .next()
        .ok_or(Error::Internal("AF material too short"))?;
    last.copy_from_slice(&d);
    xor_into(last, key);
    Ok(())
}

/// Fills `buf` from the kernel's random source (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> Result<(), Error> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Random(e));
        }
        done += n as usize;
    }
    Ok(())
}

/// Caps on the key derivation costs a header may ask for: a header is untrusted input, and
/// unlocking runs its KDF before anything else can be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfLimits {
    /// Most PBKDF2 iterations per keyslot (and digest).
    pub max_pbkdf2_iterations: u32,
    /// Most Argon2 memory, in KiB (cryptsetup's own maximum is 4 GiB; its default 1 GiB).
    pub max_argon2_memory_kib: u32,
    /// Most Argon2 passes.
    pub max_argon2_time: u32,
    /// Most Argon2 lanes.
    pub max_argon2_lanes: u32,
}

impl Default for KdfLimits {
    fn default() -> KdfLimits {
        KdfLimits {
            max_pbkdf2_iterations: 50_000_000,
            max_argon2_memory_kib: 4 << 20,
            max_argon2_time: 1000,
            max_argon2_lanes: 16,
        }
    }
}

/// A key derivation function with its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2 with an HMAC of `hash`.
    Pbkdf2 {
        /// Hash for the HMAC.
        hash: Hash,
        /// Iterations.
        iterations: u32,
        /// Salt.
        salt: Vec<u8>,
    },
    /// Argon2i or Argon2id (version 0x13).
    Argon2 {
        /// Argon2id rather than Argon2i.
        id: bool,
        /// Passes.
        time: u32,
        /// Memory in KiB.
        memory_kib: u32,
        /// Lanes.
        lanes: u32,
        /// Salt.
        salt: Vec<u8>,
    },
}

impl Kdf {
    /// Derives `out.len()` bytes from `pass`, refusing costs over `limits`.
    pub fn derive(&self, pass: &[u8], out: &mut [u8], limits: &KdfLimits) -> Result<(), Error> {
        match self {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => {
                if *iterations == 0 || *iterations > limits.max_pbkdf2_iterations {
                    return Err(Error::KdfCost(format!(
                        "pbkdf2 iterations {iterations} (at most {})",
                        limits.max_pbkdf2_iterations
                    )));
                }
                hash.pbkdf2(pass, salt, *iterations, out);
                Ok(())
            }
            Kdf::Argon2 {
                id,
                time,
                memory_kib,
                lanes,
                salt,
            } => {
                if *memory_kib > limits.max_argon2_memory_kib
                    || *time > limits.max_argon2_time
                    || *lanes > limits.max_argon2_lanes
                {
                    return Err(Error::KdfCost(format!(
                        "argon2 time {time}, memory {memory_kib} KiB, {lanes} lanes (at most {}, {} KiB, {})",
                        limits.max_argon2_time, limits.max_argon2_memory_kib, limits.max_argon2_lanes
                    )));
                }
                let params = argon2::Params::new(*memory_kib, *time, *lanes, Some(out.len()))
                    .map_err(|e| Error::Damaged(format!("argon2 parameters: {e}")))?;
                let blocks_needed = params.block_count();
                let algorithm = if *id {
                    argon2::Algorithm::Argon2id
                } else {
                    argon2::Algorithm::Argon2i
                };
                let argon = argon2::Argon2::new(algorithm, argon2::Version::V0x13, params);
                let mut blocks: Vec<argon2::Block> = Vec::new();
                blocks
                    .try_reserve_exact(blocks_needed)
                    .map_err(|_| Error::KdfCost(format!("argon2 memory {memory_kib} KiB")))?;
                blocks.resize(blocks_needed, argon2::Block::default());
                let result = argon
                    .hash_password_into_with_memory(pass, salt, out, &mut blocks)
                    .map_err(|e| Error::Damaged(format!("argon2: {e}")));
                for block in blocks.iter_mut() {
                    zeroize::Zeroize::zeroize(block);
                }
                result
            }
        }
    }
}

/// AES-XTS with a 256- or 512-bit key (two AES-128 or AES-256 keys).
// Kept inline, not boxed: it lives in a locked `Secret` mapping, and a box would move the key
// schedule to the ordinary heap.
#[allow(clippy::large_enum_variant)]
pub enum XtsCipher {
    /// aes-xts-plain64 with a 32-byte key.
    Aes128(Xts128<Aes128>),
    /// aes-xts-plain64 with a 64-byte key.
    Aes256(Xts128<Aes256>),
}

impl XtsCipher {
    /// The cipher for `key` (32 or 64 bytes), in locked memory.
    pub fn new(key: &[u8]) -> Result<Secret<XtsCipher>, Error> {
        let cipher = match key.len() {
            32 => XtsCipher::Aes128(Xts128::new(
                Aes128::new_from_slice(&key[..16]).map_err(|_| Error::Internal("aes key"))?,
                Aes128::new_from_slice(&key[16..]).map_err(|_| Error::Internal("aes key"))?,
            )),
            64 => XtsCipher::Aes256(Xts128::new(
                Aes256::new_from_slice(&key[..32]).map_err(|_| Error::Internal("aes key"))?,
                Aes256::new_from_slice(&key[32..]).map_err(|_| Error::Internal("aes key"))?,
            )),
            n => {
                return Err(Error::UnsupportedCipher(format!(
                    "aes-xts-plain64 with a {}-bit key (256 or 512)",
                    n * 8
                )))
            }
        };
        Ok(Secret::new(cipher)?)
    }

    /// Encrypts `data` (whole `sector_size` sectors) whose first sector has IV number
    /// `first_iv`. plain64: the IV is the little-endian number of the sector's first 512-byte
    /// sector, whatever the encryption sector size (as dm-crypt without `iv_large_sectors`,
    /// which is how cryptsetup sets up LUKS2: one 4096-byte sector advances the IV by 8).
    pub fn encrypt(&self, data: &mut [u8], sector_size: usize, first_iv: u64) {
        let step = (sector_size / 512).max(1) as u128;
        let first = u128::from(first_iv);
        let tweak =
            |i: u128| xts_mode::get_tweak_default((first + i * step) & u128::from(u64::MAX));
        match self {
            XtsCipher::Aes128(x) => x.encrypt_area(data, sector_size, 0, tweak),
            XtsCipher::Aes256(x) => x.encrypt_area(data, sector_size, 0, tweak),
        }
    }

    /// Decrypts, as [`XtsCipher::encrypt`] encrypts.
    pub fn decrypt(&self, data: &mut [u8], sector_size: usize, first_iv: u64) {
        let step = (sector_size / 512).max(1) as u128;
        let first = u128::from(first_iv);
        let tweak =
            |i: u128| xts_mode::get_tweak_default((first + i * step) & u128::from(u64::MAX));
        match self {
            XtsCipher::Aes128(x) => x.decrypt_area(data, sector_size, 0, tweak),
            XtsCipher::Aes256(x) => x.decrypt_area(data, sector_size, 0, tweak),
        }
    }
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn af_split_merge_round_trip() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            let key: Vec<u8> = (0..64u8).collect();
            let mut material = vec![0u8; 64 * 4000];
            af_split(&key, 4000, hash, &mut material).unwrap();
            let mut out = [0u8; 64];
            af_merge(&material, 4000, hash, &mut out);
            assert_eq!(out.as_slice(), key.as_slice());
            material[100] ^= 1;
            af_merge(&material, 4000, hash, &mut out);
            assert_ne!(out.as_slice(), key.as_slice());
        }
    }

    #[test]
    fn xts_round_trip_and_iv() {
        for len in [32, 64] {
            let key = vec![7u8; len];
            let cipher = XtsCipher::new(&key).unwrap();
            let mut data = vec![0x5au8; 4096];
            cipher.encrypt(&mut data, 512, 10);
            let mut one = vec![0x5au8; 512];
            cipher.encrypt(&mut one, 512, 11);
            assert_eq!(&data[512..1024], one.as_slice());
            cipher.decrypt(&mut data, 512, 10);
            assert!(data.iter().all(|b| *b == 0x5a));
        }
        assert!(matches!(
            XtsCipher::new(&[0; 48]),
            Err(Error::UnsupportedCipher(_))
        ));
    }

    #[test]
    fn kdf_limits_refuse() {
        let limits = KdfLimits {
            max_pbkdf2_iterations: 10,
            max_argon2_memory_kib: 64,
            max_argon2_time: 4,
            max_argon2_lanes: 1,
        };
        let mut out = [0u8; 32];
        let kdf = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 11,
            salt: vec![0; 32],
        };
        assert!(matches!(
            kdf.derive(b"x", &mut out, &limits),
            Err(Error::KdfCost(_))
        ));
        let kdf = Kdf::Argon2 {
            id: true,
            time: 4,
            memory_kib: 1 << 30,
            lanes: 1,
            salt: vec![0; 32],
        };
        assert!(matches!(
            kdf.derive(b"x", &mut out, &limits),
            Err(Error::KdfCost(_))
        ));
        let kdf = Kdf::Argon2 {
            id: true,
            time: 1,
            memory_kib: 32,
            lanes: 1,
            salt: vec![0; 32],
        };
        kdf.derive(b"x", &mut out, &limits).unwrap();
    }
}
