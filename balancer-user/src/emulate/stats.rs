//! Latency histograms of an emulated server, in vLLM's buckets.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

/// vLLM's bucket bounds for TTFT and end-to-end latency, seconds.
pub const BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0,
];

/// A Prometheus histogram over [`BOUNDS`], updated without a lock.
#[derive(Debug)]
pub struct Histogram {
    /// Per bucket (the last is +Inf), not cumulative.
    counts: Vec<AtomicU64>,
    /// Sum of observations, microseconds.
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..=BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation, seconds.
    pub fn observe(&self, secs: f64) {
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((secs.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Appends the histogram as exposition text; `labels` without braces.
    pub fn render(&self, o: &mut String, name: &str, labels: &str) {
        let _ = writeln!(o, "# TYPE {name} histogram");
        let mut cum = 0u64;
        for (i, b) in BOUNDS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\",{labels}}} {cum}");
        }
        cum += self.counts[BOUNDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\",{labels}}} {cum}");
        let _ = writeln!(o, "{name}_count{{{labels}}} {cum}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "{name}_sum{{{labels}}} {sum}");
    }
}

/// The server's latency histograms.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Time to first token.
    pub ttft: Histogram,
    /// Request start to last token.
    pub e2e: Histogram,
}
