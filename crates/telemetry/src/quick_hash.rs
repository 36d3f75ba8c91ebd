//! A quick hasher for maps looked up on every request, keyed by what the platform chose
//! (instance addresses) or by random ids (trace ids): one folded multiply per 8 bytes instead
//! of SipHash, which showed in the per-request profile. Each map starts from its own random
//! key, so ids a client chooses cannot be made to pile into one bucket.

use std::hash::{BuildHasher, Hasher};

#[derive(Debug, Clone, Copy)]
pub struct QuickHashing {
    key: u64,
}

impl Default for QuickHashing {
    fn default() -> QuickHashing {
        QuickHashing { key: rand::random() }
    }
}

impl BuildHasher for QuickHashing {
    type Hasher = QuickHasher;
    fn build_hasher(&self) -> QuickHasher {
        QuickHasher(self.key)
    }
}

pub struct QuickHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl QuickHasher {
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for QuickHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.mix(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(n.into());
    }

    fn write_u16(&mut self, n: u16) {
        self.mix(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::SocketAddr;

    #[test]
    fn nearby_keys_spread_over_buckets() {
        // Instances on one host differ only in the port; the low bits pick hashbrown's bucket
        // and the top seven its control byte, so both must vary.
        let hashing = QuickHashing::default();
        let hashes: Vec<u64> = (40000..41024u16)
            .map(|port| hashing.hash_one(SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        let low: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 600, "{} distinct low parts of 1024", low.len());
        assert_eq!(top.len(), 128);
        // Strings that differ only in trailing zero bytes hash apart.
        assert_ne!(hashing.hash_one("a"), hashing.hash_one("a\0"));
        assert_ne!(hashing.hash_one(""), hashing.hash_one("\0"));
    }
}
