//! The window's share of the budget, chosen by miniature simulation: four
//! shadow copies of the policy, one per candidate share, see a sample of
//! the keys, and the real window follows the one that would have saved the
//! most backend time.

use std::hash::Hash;

use super::Policy;

/// Window shares the shadow caches try, as fractions of the budget.
pub(super) const SHARES: [f64; 4] = [0.01, 0.2, 0.5, 0.8];
/// Weight of the past in the shadows' scores, per period.
const DECAY: f64 = 0.99;
/// The window moves to another share only if that share's shadow missed
/// this much less (cost-weighted) than the current one's...
const HYSTERESIS: f64 = 0.02;
/// ... or hit this much more (a tighter bound would follow noise).
const HYSTERESIS_HITS: f64 = 0.1;
/// Sample one key in this many for the shadow caches of a large cache.
const SHADOW_SAMPLING: u64 = 16;
/// Below this many expected entries the shadows see every key.
const SHADOW_FULL_BELOW: usize = 4096;

/// Miniature simulations (Waldspurger et al., "Cache Modeling and
/// Optimization using Miniature Simulations", 2017): the same policy with
/// each candidate window share, fed a hash-sampled subset of the keys at a
/// proportionally scaled budget. The real window follows the best of them.
#[derive(Debug, Clone)]
pub(super) struct Shadow<K: Hash + Eq + Clone> {
    minis: Vec<Policy<K>>,
    /// Decayed cost-weighted hits per mini.
    score: Vec<f64>,
    /// Decayed cost of all sampled accesses: `total − score` is a mini's
    /// cost-weighted misses.
    total: f64,
    /// Mean cost of recent inserts: the cost of an access whose key no one
    /// holds (all minis miss it, so its exact value matters little).
    mean_cost: f64,
    /// Inserts seen, up to 100 (the mean's weight).
    inserts: f64,
    /// Index of the share the real window has now.
    current: usize,
    mask: u64,
    seen: u64,
    period: u64,
}

impl<K: Hash + Eq + Clone> Shadow<K> {
    /// Shadows for a policy of `budget` bytes and about `expected_items`
    /// entries, whose window starts at the first share.
    pub(super) fn new(budget: u64, expected_items: usize) -> Self {
        let items = expected_items.max(16);
        let sampling = if items < SHADOW_FULL_BELOW {
            1
        } else {
            SHADOW_SAMPLING
        };
        let mini_items = (items as u64 / sampling).max(16) as usize;
        Self {
            minis: SHARES
                .iter()
                .map(|w| Policy::fixed((budget / sampling).max(1), mini_items, *w))
                .collect(),
            score: vec![0.0; SHARES.len()],
            total: 0.0,
            mean_cost: 1.0,
            inserts: 0.0,
            current: 0,
            mask: sampling - 1,
            seen: 0,
            period: (mini_items as u64).max(256),
        }
    }

    /// Whether the key of hash `h` is in the sample.
    fn samples(&self, h: u64) -> bool {
        (h >> 48) & self.mask == 0
    }

    /// Replays an access of the real policy (`known`: the entry's size and
    /// cost when the real policy holds it). Returns the share the window
    /// should move to, when a period ends with another share clearly ahead.
    pub(super) fn access(&mut self, k: &K, h: u64, known: Option<(u64, f64)>) -> Option<f64> {
        if !self.samples(h) {
            return None;
        }
        // Every access counts once, at the cost a hit would have saved.
        self.total += known
            .map(|(_, cost)| cost)
            .or_else(|| self.minis.iter().find_map(|m| m.cost_of(k)))
            .unwrap_or(self.mean_cost);
        for (m, score) in self.minis.iter_mut().zip(self.score.iter_mut()) {
            if m.touch(k) {
                *score += m.cost_of(k).unwrap_or(1.0);
            } else if let Some((size, cost)) = known {
                // The real cache hit: the caller will not insert.
                m.insert(k.clone(), size, cost);
            }
        }
        self.seen += 1;
        if !self.seen.is_multiple_of(self.period) {
            return None;
        }
        let moved = self.best_if_clearly_ahead();
        if let Some(best) = moved {
            self.current = best;
        }
        // History fades slowly: one noisy period does not flip the window.
        self.total *= DECAY;
        for x in self.score.iter_mut() {
            *x *= DECAY;
        }
        moved.map(|i| SHARES[i])
    }

    /// The best share, if it beats the current one by the hysteresis.
    fn best_if_clearly_ahead(&self) -> Option<usize> {
        // Ties go to the smaller window (`max_by` keeps the last).
        let best = (0..SHARES.len())
            .rev()
            .max_by(|a, b| self.score[*a].total_cmp(&self.score[*b]))
            .unwrap_or(0);
        // 2% fewer misses, or 10% more hits: where hits are rare, twice the
        // hits can be under 2% fewer misses.
        let misses = |i: usize| self.total - self.score[i];
        let ahead = misses(best) < misses(self.current) * (1.0 - HYSTERESIS)
            || self.score[best] > self.score[self.current] * (1.0 + HYSTERESIS_HITS);
        ahead.then_some(best)
    }

    /// Replays an insert of the real policy (of a key of hash `h`).
    pub(super) fn insert(&mut self, k: &K, h: u64, size: u64, cost: f64) {
        self.inserts = (self.inserts + 1.0).min(100.0);
        self.mean_cost += (cost - self.mean_cost) / self.inserts;
        if self.samples(h) {
            for m in &mut self.minis {
                if !m.contains(k) {
                    m.insert(k.clone(), size, cost);
                }
            }
        }
    }
}
