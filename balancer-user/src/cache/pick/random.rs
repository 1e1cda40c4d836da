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

use super::{Ask, Member, Selector, bounded_hash::mix};

/// Weighted random choice.
#[derive(Debug, Default)]
pub struct Random;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A splitmix64 stream that many threads draw from: one atomic add a draw.
#[derive(Debug)]
pub(super) struct Stream {
    state: AtomicU64,
}

impl Stream {
    /// A stream that starts from `seed`.
    pub(super) const fn seeded(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// Restarts the stream from `seed`.
    fn reseed(&self, seed: u64) {
        self.state.store(seed, Ordering::Relaxed);
    }

    /// The stream's next value.
    pub(super) fn next(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN))
    }
}

/// The process's stream, behind every `pick = "random"` route.
static STREAM: Stream = Stream::seeded(0);
static SEEDED: Once = Once::new();

/// Restarts the stream from `seed` (the fleet bench seeds it from the
/// scenario, so two runs draw alike).
pub fn reseed(seed: u64) {
    SEEDED.call_once(|| {});
    STREAM.reseed(seed);
}

/// The process stream's next value, seeded from entropy on first use.
fn next() -> u64 {
    SEEDED.call_once(|| {
        // std's per-process random hash keys: entropy without a dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        STREAM.reseed(h.finish());
    });
    STREAM.next()
}

/// The member that the draw `r` lands on, each owning a span of the total
/// weight as wide as its own.
pub(super) fn choose(r: u64, members: &[Member]) -> Option<&Member> {
    let total: u64 = members.iter().map(|m| m.weight as u64).sum();
    if total == 0 {
        return None;
    }
    let mut r = r % total;
    members.iter().find(|m| {
        if r < m.weight as u64 {
            true
        } else {
            r -= m.weight as u64;
            false
        }
    })
}

impl Selector for Random {
    fn select<'a>(&self, _ask: &Ask<'_>, members: &'a [Member]) -> Option<&'a Member> {
        choose(next(), members)
    }
}
