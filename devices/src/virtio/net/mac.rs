//! MAC addresses: checks, text form, and the locally administered ones the device makes up.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// Whether `mac` can be a card's address: unicast and not all zeros.
pub(super) fn is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// `mac` as `52:54:00:12:34:56`.
pub(super) fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// A locally administered unicast MAC, stable for `seed` within this process.
pub(super) fn derived_mac(seed: &str) -> [u8; 6] {
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    let h = hasher.finish().to_le_bytes();
    // Bit 0 clear: unicast. Bit 1 set: locally administered, so it never collides with a
    // vendor's address.
    [(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]]
}
