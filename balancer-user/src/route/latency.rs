//! How long a route takes to answer, per priority tier: a histogram of the
//! time from a request's arrival to its answer's headers (for a streamed
//! answer, about its first token; a wait in the queue included), with
//! fixed buckets so that recording is a few atomic adds.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::tier::Tier;

/// The buckets' upper bounds, seconds (the last bucket is everything
/// above).
pub const BOUNDS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One tier's histogram.
#[derive(Debug, Default)]
struct Cells {
    /// Per bucket (the last above every bound), not cumulative.
    buckets: [AtomicU64; BOUNDS_S.len() + 1],
    sum_us: AtomicU64,
}

/// A route's answer times, per tier.
#[derive(Debug, Default)]
pub struct TierLatency([Cells; 3]);

impl TierLatency {
    /// Records one answer of `tier` after `took`.
    pub fn record(&self, tier: Tier, took: Duration) {
        let c = &self.0[tier.index()];
        let s = took.as_secs_f64();
        let i = BOUNDS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BOUNDS_S.len());
        c.buckets[i].fetch_add(1, Ordering::Relaxed);
        c.sum_us.fetch_add(
            took.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// The histograms, in [`Tier::ALL`]'s order.
    pub fn snapshot(&self) -> [Histogram; 3] {
        [0, 1, 2].map(|i| {
            let c = &self.0[i];
            Histogram {
                counts: c
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect(),
                sum_s: c.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            }
        })
    }
}

/// A histogram as the API carries it: a count per bucket of [`BOUNDS_S`]
/// (not cumulative; one more for above the last bound) and the sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Answers per bucket.
    pub counts: Vec<u64>,
    /// Their total time, seconds.
    pub sum_s: f64,
}

impl Histogram {
    /// Answers recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0-1), seconds;
    /// `None` when empty, infinity when it lies above the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // The rank of the q-quantile, 1-based.
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(BOUNDS_S.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_their_bucket_and_quantiles_read_back() {
        let l = TierLatency::default();
        // {description, tier, time, bucket's upper bound}
        let cases = [
            ("on a bound", Tier::Critical, 10_000, 0.01),
            ("just above one", Tier::Critical, 10_001, 0.025),
            (
                "above every bound",
                Tier::Critical,
                60_000_000,
                f64::INFINITY,
            ),
            ("another tier", Tier::Sheddable, 700, 0.001),
        ];
        for (what, tier, us, bound) in cases {
            let one = TierLatency::default();
            one.record(tier, Duration::from_micros(us));
            let h = &one.snapshot()[tier.index()];
            assert_eq!(h.quantile(1.0), Some(bound), "{what}");
            l.record(tier, Duration::from_micros(us));
        }
        let [c, s, sh] = l.snapshot();
        assert_eq!((c.count(), s.count(), sh.count()), (3, 0, 1));
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(c.quantile(0.5), Some(0.025), "the 2nd of 3");
        assert!((c.sum_s - 60.020001).abs() < 1e-9, "{}", c.sum_s);
    }
}
