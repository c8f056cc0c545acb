//! Identifiers: time-ordered, unique, URL-safe (26 Crockford base32 characters, ULID layout).

use std::sync::atomic::{AtomicU64, Ordering};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new unique id whose prefix sorts by creation time (milliseconds).
pub fn new_id(now_ms: i64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // 48 bits of time, then 80 bits: a process-random part plus a counter, so ids made in
    // the same millisecond stay unique and (within a process) ordered.
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u64 = rand::random::<u64>() & 0xFFFF;
    let value: u128 = ((now_ms.max(0) as u128 & 0xFFFF_FFFF_FFFF) << 80)
        | ((count as u128 & 0xFFFF_FFFF_FFFF) << 16)
        | random as u128;
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 125 - i * 5;
        *slot = ALPHABET[((value >> shift) & 0x1F) as usize];
    }
    String::from_utf8(out.to_vec()).expect("invariant: alphabet is ascii")
}

/// A new random lowercase hex string of `bytes` bytes.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::new_id;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = new_id(1_000);
        let b = new_id(1_000);
        let c = new_id(2_000);
        assert_eq!(a.len(), 26);
        assert_ne!(a, b);
        assert!(a < c && b < c);
    }
}
