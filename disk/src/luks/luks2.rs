//! LUKS2: two binary headers (primary at 0, secondary right after it), each a 4096-byte
//! big-endian binary part followed by a JSON area, the whole `hdr_size` bytes checksummed;
//! then the keyslot areas; JSON objects describe keyslots, segments and digests.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::crypto::{self, Hash, Kdf, XtsCipher};
use super::{
    BuiltHeader, Error, FormatKdf, Header, HeaderSource, Keyslot, SecretBuf, VkDigest, CIPHER,
    LUKS_MAGIC,
};

const BIN_LEN: usize = 4096;
/// The header sizes (binary part plus JSON area) the specification allows.
const HDR_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];
const SECONDARY_MAGIC: [u8; 6] = *b"SKUL\xba\xbe";
const CSUM_AT: usize = 448;

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Reads and checks the header at `offset`: `(seqid, hdr_size, JSON)`.
fn read_one(
    src: &mut dyn HeaderSource,
    offset: u64,
    magic: &[u8; 6],
) -> Result<(u64, u64, Value), Error> {
    let mut bin = [0u8; BIN_LEN];
    src.read_exact_at(offset, &mut bin)?;
    if &bin[..6] != magic {
        return Err(Error::Damaged(format!(
            "no header magic at offset {offset}"
        )));
    }
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    if version != 2 {
        return Err(Error::Damaged(format!(
            "header at {offset} has version {version}"
        )));
    }
    let hdr_size = be64(&bin, 8);
    if !HDR_SIZES.contains(&hdr_size) {
        return Err(Error::Damaged(format!(
            "header size {hdr_size} is not an allowed size"
        )));
    }
    let seqid = be64(&bin, 16);
    if be64(&bin, 256) != offset {
        return Err(Error::Damaged(format!(
            "header at {offset} says it is at {}",
            be64(&bin, 256)
        )));
    }
    let alg = text(&bin[72..104]);
    let hash =
        Hash::parse(&alg).map_err(|_| Error::Damaged(format!("checksum algorithm {alg:?}")))?;
    let mut all = vec![0u8; hdr_size as usize];
    src.read_exact_at(offset, &mut all)?;
    let stored = all[CSUM_AT..CSUM_AT + 64].to_vec();
    all[CSUM_AT..CSUM_AT + 64].fill(0);
    let sum = hash.digest(&all);
    if !crypto::ct_eq(&sum, &stored[..sum.len()]) {
        return Err(Error::Damaged(format!(
            "checksum mismatch in the header at {offset}"
        )));
    }
    let area = &all[BIN_LEN..];
    let end = area.iter().position(|c| *c == 0).unwrap_or(area.len());
    let json: Value = serde_json::from_slice(&area[..end])
        .map_err(|e| Error::Damaged(format!("JSON area: {e}")))?;
    Ok((seqid, hdr_size, json))
}

fn obj<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Map<String, Value>, Error> {
    v.get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Damaged(format!("{what}: no object {key:?}")))
}

fn string<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, Error> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Damaged(format!("{what}: no string {key:?}")))
}

/// A u64 written as a decimal string (LUKS2's convention for offsets and sizes).
fn u64_str(v: &Value, key: &str, what: &str) -> Result<u64, Error> {
    string(v, key, what)?
        .parse()
        .map_err(|_| Error::Damaged(format!("{what}: {key:?} is not a number")))
}

fn u32_num(v: &Value, key: &str, what: &str) -> Result<u32, Error> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Error::Damaged(format!("{what}: {key:?} is not a 32-bit number")))
}

fn b64(v: &Value, key: &str, what: &str) -> Result<Vec<u8>, Error> {
    let s = string(v, key, what)?;
    if s.len() > 1024 {
        return Err(Error::Damaged(format!("{what}: {key:?} too long")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::Damaged(format!("{what}: {key:?} is not base64")))
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn parse(src: &mut dyn HeaderSource) -> Result<Header, Error> {
    let primary = read_one(src, 0, &LUKS_MAGIC);
    let mut best = primary.as_ref().ok().cloned();
    // The secondary header sits right after the primary, whose size may be what was damaged:
    // try every allowed offset.
    let mut secondary_error = None;
    for offset in HDR_SIZES {
        if offset + BIN_LEN as u64 > src.len() {
            break;
        }
        match read_one(src, offset, &SECONDARY_MAGIC) {
            Ok(found) => {
                if best.as_ref().is_none_or(|b| found.0 > b.0) {
                    best = Some(found);
                }
                break;
            }
            Err(e) => {
                secondary_error.get_or_insert(e);
            }
        }
    }
    let (_, hdr_size, json) = match (best, primary) {
        (Some(best), _) => best,
        (None, Err(e)) => return Err(e),
        (None, Ok(_)) => return Err(Error::Internal("primary header lost")),
    };
    interpret(&json, hdr_size)
}

fn interpret(json: &Value, hdr_size: u64) -> Result<Header, Error> {
    let config = obj(json, "config", "JSON")?;
    let config = Value::Object(config.clone());
    let json_size = u64_str(&config, "json_size", "config")?;
    if json_size != hdr_size - BIN_LEN as u64 {
        return Err(Error::Damaged(format!(
            "config json_size {json_size} does not match the header size {hdr_size}"
        )));
    }
    let keyslots_size = u64_str(&config, "keyslots_size", "config")?;
    if let Some(reqs) = config.get("requirements").and_then(|r| r.get("mandatory")) {
        if reqs.as_array().is_some_and(|a| !a.is_empty()) {
            return Err(Error::Unsupported(format!(
                "mandatory requirements {reqs} (an unfinished reencryption?)"
            )));
        }
    }
    let segments = obj(json, "segments", "JSON")?;
    if segments.len() != 1 {
        return Err(Error::Unsupported(format!(
            "{} data segments (an unfinished reencryption?); exactly one is supported",
            segments.len()
        )));
    }
    let (segment_id, segment) = segments
        .iter()
        .next()
        .ok_or(Error::Internal("segment count"))?;
    let what = "segment";
    let kind = string(segment, "type", what)?;
    if kind != "crypt" {
        return Err(Error::Unsupported(format!("segment type {kind:?}")));
    }
    let encryption = string(segment, "encryption", what)?;
    if encryption != CIPHER {
        return Err(Error::UnsupportedCipher(encryption.to_string()));
    }
    if segment.get("integrity").is_some() {
        return Err(Error::Unsupported("dm-integrity segments".into()));
    }
    let payload_offset = u64_str(segment, "offset", what)?;
    let payload_size = match string(segment, "size", what)? {
        "dynamic" => None,
        _ => Some(u64_str(segment, "size", what)?),
    };
    let iv_tweak = u64_str(segment, "iv_tweak", what)?;
    let sector_size = u32_num(segment, "sector_size", what)?;
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(Error::Unsupported(format!(
            "encryption sector size {sector_size} (512, 1024, 2048 or 4096)"
        )));
    }
    if payload_offset % 512 != 0 || payload_size.is_some_and(|s| s % u64::from(sector_size) != 0) {
        return Err(Error::Damaged(
            "segment offset or size not sector-aligned".into(),
        ));
    }
    let digests = obj(json, "digests", "JSON")?;
    let mut key_size = None;
    let mut keyslots = Vec::new();
    for (id, slot) in obj(json, "keyslots", "JSON")? {
        let what = "keyslot";
        if string(slot, "type", what)? != "luks2" {
            continue;
        }
        if slot.get("priority").and_then(Value::as_u64) == Some(0) {
            continue;
        }
        let Some(digest) = digests.values().find(|d| {
            ids(d, "keyslots").iter().any(|k| k == id)
                && ids(d, "segments").iter().any(|s| s == segment_id)
        }) else {
            continue;
        };
        if string(digest, "type", "digest")? != "pbkdf2" {
            return Err(Error::Unsupported(format!(
                "digest type {:?}",
                string(digest, "type", "digest")?
            )));
        }
        let digest = VkDigest {
            hash: Hash::parse(string(digest, "hash", "digest")?)?,
            iterations: u32_num(digest, "iterations", "digest")?,
            salt: b64(digest, "salt", "digest")?,
            value: b64(digest, "digest", "digest")?,
        };
        if digest.value.is_empty() {
            return Err(Error::Damaged("empty digest".into()));
        }
        let vk_size = u32_num(slot, "key_size", what)? as usize;
        if vk_size != 32 && vk_size != 64 {
            return Err(Error::UnsupportedCipher(format!(
                "{CIPHER} with a {}-bit key",
                vk_size * 8
            )));
        }
        if *key_size.get_or_insert(vk_size) != vk_size {
            return Err(Error::Damaged("keyslots disagree on the key size".into()));
        }
        let af = slot
            .get("af")
            .ok_or_else(|| Error::Damaged("keyslot without af".into()))?;
        if string(af, "type", "af")? != "luks1" {
            return Err(Error::Unsupported(format!(
                "AF type {:?}",
                string(af, "type", "af")?
            )));
        }
        let stripes = u32_num(af, "stripes", "af")?;
        if stripes == 0 {
            return Err(Error::Damaged("AF with 0 stripes".into()));
        }
        let area = slot
            .get("area")
            .ok_or_else(|| Error::Damaged("keyslot without area".into()))?;
        if string(area, "type", "area")? != "raw" {
            return Err(Error::Unsupported(format!(
                "keyslot area type {:?}",
                string(area, "type", "area")?
            )));
        }
        let area_encryption = string(area, "encryption", "area")?;
        if area_encryption != CIPHER {
            return Err(Error::UnsupportedCipher(format!(
                "{area_encryption} (keyslot area)"
            )));
        }
        let area_offset = u64_str(area, "offset", "area")?;
        let area_size = u64_str(area, "size", "area")?;
        let lo = 2 * hdr_size;
        if area_offset < lo
            || area_offset
                .checked_add(area_size)
                .is_none_or(|end| end > lo.saturating_add(keyslots_size))
        {
            return Err(Error::Damaged(format!(
                "keyslot {id} area {area_offset}+{area_size} outside the keyslots area"
            )));
        }
        let kdf_v = slot
            .get("kdf")
            .ok_or_else(|| Error::Damaged("keyslot without kdf".into()))?;
        let salt = b64(kdf_v, "salt", "kdf")?;
        let kdf = match string(kdf_v, "type", "kdf")? {
            "pbkdf2" => Kdf::Pbkdf2 {
                hash: Hash::parse(string(kdf_v, "hash", "kdf")?)?,
                iterations: u32_num(kdf_v, "iterations", "kdf")?,
                salt,
            },
            t @ ("argon2i" | "argon2id") => Kdf::Argon2 {
                id: t == "argon2id",
                time: u32_num(kdf_v, "time", "kdf")?,
                memory_kib: u32_num(kdf_v, "memory", "kdf")?,
                lanes: u32_num(kdf_v, "cpus", "kdf")?,
                salt,
            },
            other => return Err(Error::Unsupported(format!("KDF {other:?}"))),
        };
        keyslots.push(Keyslot {
            kdf,
            area_offset,
            area_size,
            area_key_size: u32_num(area, "key_size", "area")? as usize,
            stripes,
            af_hash: Hash::parse(string(af, "hash", "af")?)?,
            digest,
        });
    }
    let key_size = key_size.unwrap_or(64);
    for slot in &keyslots {
        if slot.area_key_size != 32 && slot.area_key_size != 64 {
            return Err(Error::UnsupportedCipher(format!(
                "{CIPHER} with a {}-bit keyslot key",
                slot.area_key_size * 8
            )));
        }
    }
    Ok(Header {
        version: 2,
        key_size,
        payload_offset,
        payload_size,
        sector_size,
        iv_tweak,
        keyslots,
    })
}

fn b64e(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn random_vec(n: usize) -> Result<Vec<u8>, Error> {
    let mut v = vec![0u8; n];
    crypto::random_bytes(&mut v)?;
    Ok(v)
}

pub(super) fn build(
    key: &[u8],
    key_size: usize,
    kdf: FormatKdf,
    detached: bool,
) -> Result<BuiltHeader, Error> {
    const HDR: u64 = 16 << 10;
    let stripes = 4000usize;
    let hash = Hash::Sha256;
    let material_len = key_size * stripes;
    let area_size = (material_len as u64).div_ceil(4096) * 4096;
    let area_offset = 2 * HDR;
    // cryptsetup's default layout: room for more keyslots and for the reencryption keyslot
    // that `cryptsetup reencrypt` adds, data at 16 MiB.
    let data_offset: u64 = 16 << 20;
    let keyslots_size = data_offset - area_offset;

    let mut vk = SecretBuf::zeroed(key_size)?;
    crypto::random_bytes(&mut vk)?;
    let salt = random_vec(32)?;
    let (kdf_json, kdf_impl) = match kdf {
        FormatKdf::Pbkdf2 { iterations } => (
            json!({"type": "pbkdf2", "hash": hash.name(), "iterations": iterations, "salt": b64e(&salt)}),
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            },
        ),
        FormatKdf::Argon2id {
            time,
            memory_kib,
            lanes,
        } => (
            json!({"type": "argon2id", "time": time, "memory": memory_kib, "cpus": lanes, "salt": b64e(&salt)}),
            Kdf::Argon2 {
                id: true,
                time,
                memory_kib,
                lanes,
                salt,
            },
        ),
    };
    let mut slot_key = SecretBuf::zeroed(key_size)?;
    let limits = super::KdfLimits {
        max_pbkdf2_iterations: u32::MAX,
        max_argon2_memory_kib: u32::MAX,
        max_argon2_time: u32::MAX,
        max_argon2_lanes: u32::MAX,
    };
    kdf_impl.derive(key, &mut slot_key, &limits)?;
    let mut material = SecretBuf::zeroed(area_size as usize)?;
    crypto::af_split(&vk, stripes, hash, &mut material[..material_len])?;
    XtsCipher::new(&slot_key)?.encrypt(&mut material, 512, 0);

    let digest_salt = random_vec(32)?;
    let digest_iterations = 1000u32;
    let mut digest = [0u8; 32];
    hash.pbkdf2(&vk, &digest_salt, digest_iterations, &mut digest);
    let segment_offset = if detached { 0 } else { data_offset };
    let json = json!({
        "keyslots": {"0": {
            "type": "luks2",
            "key_size": key_size,
            "af": {"type": "luks1", "stripes": stripes, "hash": hash.name()},
            "area": {"type": "raw", "offset": area_offset.to_string(), "size": area_size.to_string(),
                     "encryption": CIPHER, "key_size": key_size},
            "kdf": kdf_json,
        }},
        "tokens": {},
        "segments": {"0": {
            "type": "crypt", "offset": segment_offset.to_string(), "size": "dynamic",
            "iv_tweak": "0", "encryption": CIPHER, "sector_size": 512,
        }},
        "digests": {"0": {
            "type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": hash.name(),
            "iterations": digest_iterations, "salt": b64e(&digest_salt), "digest": b64e(&digest),
        }},
        "config": {"json_size": (HDR - BIN_LEN as u64).to_string(), "keyslots_size": keyslots_size.to_string()},
    });
    let text = serde_json::to_vec(&json).map_err(|_| Error::Internal("JSON"))?;
    if text.len() >= (HDR as usize - BIN_LEN) {
        return Err(Error::Internal("JSON area too small"));
    }
    let uuid = super::luks1::uuid()?;
    let mut out = vec![0u8; data_offset as usize];
    for (offset, magic) in [(0u64, LUKS_MAGIC), (HDR, SECONDARY_MAGIC)] {
        let h = &mut out[offset as usize..(offset + HDR) as usize];
        h[..6].copy_from_slice(&magic);
        h[6..8].copy_from_slice(&2u16.to_be_bytes());
        h[8..16].copy_from_slice(&HDR.to_be_bytes());
        h[16..24].copy_from_slice(&1u64.to_be_bytes());
        h[72..72 + 6].copy_from_slice(b"sha256");
        let salt = random_vec(64)?;
        h[104..168].copy_from_slice(&salt);
        h[168..168 + uuid.len()].copy_from_slice(uuid.as_bytes());
        h[256..264].copy_from_slice(&offset.to_be_bytes());
        h[BIN_LEN..BIN_LEN + text.len()].copy_from_slice(&text);
        let sum = Hash::Sha256.digest(h);
        h[CSUM_AT..CSUM_AT + sum.len()].copy_from_slice(&sum);
    }
    out[area_offset as usize..(area_offset + area_size) as usize].copy_from_slice(&material);
    Ok(BuiltHeader {
        bytes: out,
        payload_offset: segment_offset,
        vk,
    })
}
