//! Random (`pick = "random"`): a backend drawn with probability in
//! proportion to its weight, independently for each request.
//!
//! The draws come from one splitmix64 stream per process, seeded from the
//! process's own entropy (so gateways behind one ECMP group do not draw in
//! step), or by [`reseed`] for experiments that must repeat: with the same
//! seed and the same order of requests, the same backends are drawn. One
//! atomic add a pick, as round-robin's turn counter.

use std::{
    hash::{BuildHasher, Hasher},
    sync::{
        Once,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{Member, Selector, bounded_hash::mix};

/// Weighted random choice.
#[derive(Debug, Default)]
pub struct Random;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

static STATE: AtomicU64 = AtomicU64::new(0);
static SEEDED: Once = Once::new();

/// Restarts the stream from `seed` (the fleet bench seeds it from the
/// scenario, so two runs draw alike).
pub fn reseed(seed: u64) {
    SEEDED.call_once(|| {});
    STATE.store(seed, Ordering::Relaxed);
}

/// The stream's next value.
fn next() -> u64 {
    SEEDED.call_once(|| {
        // std's per-process random hash keys: entropy without a dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        STATE.store(h.finish(), Ordering::Relaxed);
    });
    mix(STATE
        .fetch_add(GOLDEN, Ordering::Relaxed)
        .wrapping_add(GOLDEN))
}

impl Selector for Random {
    fn select<'a>(&self, _key: u64, members: &'a [Member]) -> Option<&'a Member> {
        let total: u64 = members.iter().map(|m| m.weight as u64).sum();
        if total == 0 {
            return None;
        }
        let mut r = next() % total;
        members.iter().find(|m| {
            if r < m.weight as u64 {
                true
            } else {
                r -= m.weight as u64;
                false
            }
        })
    }
}
