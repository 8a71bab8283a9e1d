//! LUKS1: a 592-byte big-endian header (magic, version, cipher name and mode, hash, payload
//! offset, key bytes, master key digest, UUID, eight 48-byte keyslots), then keyslot material.

use super::crypto::{self, Hash, Kdf, XtsCipher};
use super::{BuiltHeader, Error, FormatKdf, Header, HeaderSource, Keyslot, SecretBuf, VkDigest};

const HEADER_LEN: usize = 592;
const KEYSLOTS: usize = 8;
const KEYSLOT_ACTIVE: u32 = 0x00AC_71F3;
const KEYSLOT_DISABLED: u32 = 0x0000_DEAD;
const STRIPES: u32 = 4000;
const DIGEST_LEN: usize = 20;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A NUL-padded string field.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub(super) fn parse(src: &mut dyn HeaderSource) -> Result<Header, Error> {
    let mut h = [0u8; HEADER_LEN];
    src.read_exact_at(0, &mut h)?;
    let cipher_name = text(&h[8..40]);
    let cipher_mode = text(&h[40..72]);
    let hash_spec = text(&h[72..104]);
    let payload_sectors = be32(&h, 104);
    let key_bytes = be32(&h, 108) as usize;
    if cipher_name != "aes" || cipher_mode != "xts-plain64" {
        return Err(Error::UnsupportedCipher(format!(
            "{cipher_name}-{cipher_mode}"
        )));
    }
    if key_bytes != 32 && key_bytes != 64 {
        return Err(Error::UnsupportedCipher(format!(
            "{cipher_name}-{cipher_mode} with a {}-bit key",
            key_bytes * 8
        )));
    }
    let hash = Hash::parse(&hash_spec)?;
    let digest = VkDigest {
        hash,
        iterations: be32(&h, 164),
        salt: h[132..164].to_vec(),
        value: h[112..132].to_vec(),
    };
    if digest.iterations == 0 {
        return Err(Error::Damaged("master key digest iterations are 0".into()));
    }
    let material_sectors = (key_bytes as u64 * u64::from(STRIPES)).div_ceil(512);
    let mut keyslots = Vec::new();
    for i in 0..KEYSLOTS {
        let k = &h[208 + i * 48..208 + (i + 1) * 48];
        let active = be32(k, 0);
        match active {
            KEYSLOT_ACTIVE => {}
            KEYSLOT_DISABLED => continue,
            other => {
                return Err(Error::Damaged(format!(
                    "keyslot {i} state {other:#x} is neither active nor disabled"
                )))
            }
        }
        let iterations = be32(k, 4);
        let offset = be32(k, 40);
        let stripes = be32(k, 44);
        if stripes != STRIPES {
            return Err(Error::Damaged(format!(
                "keyslot {i} has {stripes} AF stripes, not 4000"
            )));
        }
        if u64::from(offset) < (HEADER_LEN as u64).div_ceil(512)
            || (payload_sectors != 0
                && u64::from(offset) + material_sectors > u64::from(payload_sectors))
        {
            return Err(Error::Damaged(format!(
                "keyslot {i} material at sector {offset} overlaps the header or the payload"
            )));
        }
        keyslots.push(Keyslot {
            kdf: Kdf::Pbkdf2 {
                hash,
                iterations,
                salt: k[8..40].to_vec(),
            },
            area_offset: u64::from(offset) * 512,
            area_size: material_sectors * 512,
            area_key_size: key_bytes,
            stripes,
            af_hash: hash,
            digest: digest.clone(),
        });
    }
    Ok(Header {
        version: 1,
        key_size: key_bytes,
        payload_offset: u64::from(payload_sectors) * 512,
        payload_size: None,
        sector_size: 512,
        iv_tweak: 0,
        keyslots,
    })
}

fn put_text(dst: &mut [u8], s: &str) {
    dst[..s.len()].copy_from_slice(s.as_bytes());
}

/// A random version-4 UUID, as text.
pub(super) fn uuid() -> Result<String, Error> {
    let mut b = [0u8; 16];
    crypto::random_bytes(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

pub(super) fn build(
    key: &[u8],
    key_size: usize,
    kdf: FormatKdf,
    detached: bool,
) -> Result<BuiltHeader, Error> {
    let FormatKdf::Pbkdf2 { iterations } = kdf else {
        return Err(Error::Create("LUKS1 keyslots use pbkdf2 only".into()));
    };
    let hash = Hash::Sha256;
    // Keyslot material in 4 KiB-aligned runs after the header, payload 1 MiB-aligned after
    // all eight (cryptsetup's layout).
    let material_len = key_size * STRIPES as usize;
    let slot_sectors = (material_len as u64).div_ceil(512).div_ceil(8) * 8;
    let first = 8u64;
    let end = first + KEYSLOTS as u64 * slot_sectors;
    let payload_sectors = end.div_ceil(2048) * 2048;
    let mut vk = SecretBuf::zeroed(key_size)?;
    crypto::random_bytes(&mut vk)?;

    let mut h = vec![0u8; (payload_sectors * 512) as usize];
    h[..6].copy_from_slice(&super::LUKS_MAGIC);
    h[6..8].copy_from_slice(&1u16.to_be_bytes());
    put_text(&mut h[8..40], "aes");
    put_text(&mut h[40..72], "xts-plain64");
    put_text(&mut h[72..104], hash.name());
    let payload_field = if detached { 0 } else { payload_sectors as u32 };
    h[104..108].copy_from_slice(&payload_field.to_be_bytes());
    h[108..112].copy_from_slice(&(key_size as u32).to_be_bytes());
    let mut digest_salt = [0u8; 32];
    crypto::random_bytes(&mut digest_salt)?;
    let digest_iterations = iterations.max(1000);
    let mut digest = [0u8; DIGEST_LEN];
    hash.pbkdf2(&vk, &digest_salt, digest_iterations, &mut digest);
    h[112..132].copy_from_slice(&digest);
    h[132..164].copy_from_slice(&digest_salt);
    h[164..168].copy_from_slice(&digest_iterations.to_be_bytes());
    put_text(&mut h[168..208], &uuid()?);
    for i in 0..KEYSLOTS {
        let at = 208 + i * 48;
        let offset = first + i as u64 * slot_sectors;
        let k = &mut h[at..at + 48];
        k[40..44].copy_from_slice(&(offset as u32).to_be_bytes());
        k[44..48].copy_from_slice(&STRIPES.to_be_bytes());
        if i > 0 {
            k[0..4].copy_from_slice(&KEYSLOT_DISABLED.to_be_bytes());
            continue;
        }
        k[0..4].copy_from_slice(&KEYSLOT_ACTIVE.to_be_bytes());
        k[4..8].copy_from_slice(&iterations.to_be_bytes());
        let mut salt = [0u8; 32];
        crypto::random_bytes(&mut salt)?;
        k[8..40].copy_from_slice(&salt);
        let mut slot_key = SecretBuf::zeroed(key_size)?;
        hash.pbkdf2(key, &salt, iterations, &mut slot_key);
        let mut material = SecretBuf::zeroed((slot_sectors * 512) as usize)?;
        crypto::af_split(&vk, STRIPES as usize, hash, &mut material[..material_len])?;
        XtsCipher::new(&slot_key)?.encrypt(&mut material, 512, 0);
        let start = (offset * 512) as usize;
        h[start..start + material.len()].copy_from_slice(&material);
    }
    Ok(BuiltHeader {
        bytes: h,
        payload_offset: if detached { 0 } else { payload_sectors * 512 },
        vk,
    })
}
