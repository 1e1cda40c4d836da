//! Prefix caching: prompts as chains of block hashes, and a node's LRU of
//! the blocks it has computed.
//!
//! As in vLLM, a block's hash covers its tokens and every block before it,
//! so two prompts share a cached block only if they share the whole prefix
//! up to it. Only full blocks are cached. The cache lives in the KV memory
//! that no running sequence holds: the engine shrinks it as sequences take
//! blocks.

use std::collections::{BTreeMap, HashMap};

/// A prompt's full blocks, each hash chained on the one before.
pub fn chain(blocks: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut prev = 0u64;
    blocks
        .into_iter()
        .map(|b| {
            // splitmix64 of (prev, block): cheap, and well spread.
            let mut z = prev ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            prev = z ^ (z >> 31);
            prev
        })
        .collect()
}

/// An LRU set of block hashes.
#[derive(Debug, Default)]
pub struct PrefixCache {
    /// Hash to its last use.
    at: HashMap<u64, u64>,
    /// Last use to hash, oldest first.
    order: BTreeMap<u64, u64>,
    clock: u64,
    /// Prompt tokens looked up (vLLM's `prefix_cache_queries`).
    pub queried_tokens: u64,
    /// Of those, tokens found cached (`prefix_cache_hits`).
    pub hit_tokens: u64,
}

impl PrefixCache {
    /// Blocks held.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    fn touch(&mut self, h: u64) {
        self.clock += 1;
        if let Some(old) = self.at.insert(h, self.clock) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, h);
    }

    /// How many leading blocks of `chain` are cached (refreshing them), and
    /// counts the lookup: `prompt_tokens` queried, the cached blocks' tokens
    /// hit.
    pub fn lookup(&mut self, chain: &[u64], block_tokens: u32, prompt_tokens: u32) -> u32 {
        let n = chain.iter().take_while(|h| self.at.contains_key(h)).count();
        for h in &chain[..n] {
            self.touch(*h);
        }
        let hit = (n as u64 * block_tokens as u64).min(prompt_tokens as u64);
        self.queried_tokens += prompt_tokens as u64;
        self.hit_tokens += hit;
        n as u32
    }

    /// Records `chain`'s blocks as computed.
    pub fn insert(&mut self, chain: &[u64]) {
        for h in chain {
            self.touch(*h);
        }
    }

    /// Evicts the least recently used blocks until at most `blocks` remain.
    pub fn shrink_to(&mut self, blocks: usize) {
        while self.at.len() > blocks {
            let Some((_, h)) = self.order.pop_first() else {
                break;
            };
            self.at.remove(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_shared_only_with_its_whole_prefix() {
        let a = chain([1, 2, 3]);
        let b = chain([1, 2, 4]);
        let c = chain([9, 2, 3]);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        assert!(a.iter().all(|h| !c.contains(h)), "{a:?} {c:?}");
    }

    #[test]
    fn lookup_counts_leading_blocks_and_lru_evicts_the_oldest() {
        let mut p = PrefixCache::default();
        let a = chain([1, 2, 3]);
        assert_eq!(p.lookup(&a, 16, 50), 0);
        p.insert(&a);
        assert_eq!(p.lookup(&chain([1, 2, 7]), 16, 40), 2);
        assert_eq!((p.queried_tokens, p.hit_tokens), (90, 32));
        let b = chain([5, 6]);
        p.insert(&b);
        // Oldest first: a's third block, then its first two (refreshed by
        // the lookup), then b's. Keeping three leaves a's second block,
        // which no longer counts: its prefix is gone.
        p.shrink_to(3);
        assert_eq!(p.len(), 3);
        assert_eq!(p.lookup(&a, 16, 48), 0);
        assert_eq!(p.lookup(&b, 16, 32), 2);
        p.shrink_to(0);
        assert!(p.is_empty());
    }
}
