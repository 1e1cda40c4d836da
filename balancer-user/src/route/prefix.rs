//! Prompt prefixes as the gateway sees them: a prompt's text cut into
//! fixed blocks, each block's hash chained on the ones before (so a hash
//! names the whole prefix up to it, as vLLM's block hashes do), and an
//! approximate per-backend index of the prefixes it recently served.
//!
//! The gateway cannot know an engine's tokenizer or block size, so it
//! counts in bytes ([`BLOCK_BYTES`]): what it needs is which backend holds
//! the longest shared prefix, and about how many prompt bytes that skips.

use std::{collections::HashSet, sync::Mutex};

/// Bytes of prompt text a block covers (about 64 tokens).
pub const BLOCK_BYTES: usize = 256;
/// Most blocks hashed of one prompt (256 KiB of text): longer prompts are
/// matched on their start only.
pub const MAX_BLOCKS: usize = 1024;
/// Block hashes a backend's index holds (two generations of half each).
pub const INDEX_BLOCKS: usize = 65_536;

/// The chained hashes of `text`'s full blocks, at most [`MAX_BLOCKS`].
pub fn blocks(text: &[u8]) -> Vec<u64> {
    let mut prev = 0xcbf2_9ce4_8422_2325u64;
    text.chunks_exact(BLOCK_BYTES)
        .take(MAX_BLOCKS)
        .map(|b| {
            // FNV-1a seeded with the hash before: the chain in one pass.
            prev = b
                .iter()
                .fold(prev, |h, x| (h ^ *x as u64).wrapping_mul(0x0100_0000_01b3));
            prev
        })
        .collect()
}

/// The prefixes one backend served lately: an LRU approximated by two
/// generations, so it is bounded and a lookup or insert is O(1) a block.
/// When the young generation fills, it becomes the old one and the old one
/// is forgotten.
#[derive(Debug, Default)]
pub struct Index {
    gens: Mutex<(HashSet<u64>, HashSet<u64>)>,
}

impl Index {
    /// Leading blocks of `chain` the backend holds.
    pub fn matched(&self, chain: &[u64]) -> usize {
        if chain.is_empty() {
            return 0;
        }
        let g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
        // Chained hashes: the held prefixes are closed under "shorter", so
        // the first miss ends the match.
        chain
            .iter()
            .take_while(|h| g.0.contains(h) || g.1.contains(h))
            .count()
    }

    /// Records that the backend computed `chain`.
    pub fn insert(&self, chain: &[u64]) {
        let mut g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
        for h in chain {
            if g.0.len() >= INDEX_BLOCKS / 2 {
                g.1 = std::mem::take(&mut g.0);
            }
            g.0.insert(*h);
        }
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        let g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
        g.0.len() + g.1.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_start_matches_and_a_changed_block_ends_the_match() {
        let a = [b"x".repeat(BLOCK_BYTES * 3), b"tail".to_vec()].concat();
        let mut b = a.clone();
        b[BLOCK_BYTES * 2 + 5] = b'y'; // the third block differs
        let (ca, cb) = (blocks(&a), blocks(&b));
        assert_eq!(ca.len(), 3, "the partial tail is not a block");
        assert_ne!(ca[0], ca[1], "equal text at another depth hashes apart");
        let i = Index::default();
        assert_eq!(i.matched(&ca), 0);
        i.insert(&ca);
        assert_eq!(i.matched(&ca), 3);
        assert_eq!(i.matched(&cb), 2);
        assert_eq!(i.matched(&blocks(b"short")), 0);
    }

    #[test]
    fn the_index_is_bounded_and_keeps_the_recent_prefixes() {
        let i = Index::default();
        let old = blocks(&b"o".repeat(BLOCK_BYTES * 4));
        i.insert(&old);
        for n in 0..(INDEX_BLOCKS as u64 / 64) {
            let text: Vec<u8> = (0..BLOCK_BYTES * 64)
                .map(|k| (n.wrapping_mul(31) as usize + k / BLOCK_BYTES) as u8)
                .collect();
            let mut t = text;
            t[..8].copy_from_slice(&n.to_le_bytes());
            i.insert(&blocks(&t));
        }
        assert!(i.len() <= INDEX_BLOCKS, "{}", i.len());
        assert_eq!(i.matched(&old), 0, "the oldest prefix is forgotten");
        let recent = blocks(&b"r".repeat(BLOCK_BYTES * 2));
        i.insert(&recent);
        assert_eq!(i.matched(&recent), 2);
    }
}
