//! A pool's scoring policy (`[vip.telemetry.policy]`): how much each load
//! component counts and how the published weight is kept stable, with the
//! defaults and the one range check the configuration calls.

use serde::{Deserialize, Serialize};

/// How much each load component counts (0 leaves it out).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Formula {
    /// Requests waiting.
    pub queue: f64,
    /// Requests running.
    pub running: f64,
    /// KV-cache use.
    pub kv_cache: f64,
    /// GPU utilisation.
    pub gpu_util: f64,
    /// GPU memory use.
    pub gpu_mem: f64,
    /// CPU utilisation.
    pub cpu: f64,
    /// Host memory use.
    pub mem: f64,
    /// Network throughput.
    pub net: f64,
    /// Time to first token (or queue time).
    pub latency: f64,
    /// TCP retransmissions (a backlog component: a lossy path saturates a
    /// backend alone).
    pub retrans: f64,
}

impl Default for Formula {
    fn default() -> Self {
        Self {
            queue: 1.0,
            running: 0.3,
            kv_cache: 1.0,
            gpu_util: 0.5,
            gpu_mem: 0.2,
            cpu: 0.2,
            mem: 0.1,
            net: 0.1,
            latency: 0.5,
            retrans: 1.0,
        }
    }
}

impl Formula {
    /// Every weight with its key, in the file's order.
    fn weights(&self) -> [(&'static str, f64); 10] {
        [
            ("queue", self.queue),
            ("running", self.running),
            ("kv_cache", self.kv_cache),
            ("gpu_util", self.gpu_util),
            ("gpu_mem", self.gpu_mem),
            ("cpu", self.cpu),
            ("mem", self.mem),
            ("net", self.net),
            ("latency", self.latency),
            ("retrans", self.retrans),
        ]
    }
}

/// A pool's scoring policy (`[vip.telemetry.policy]`; not the cache's
/// eviction policy).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringPolicy {
    /// Component weights.
    pub formula: Formula,
    /// Waiting requests at which the queue component reaches 63%.
    pub queue_scale: f64,
    /// Running requests at which the running component reaches 63%.
    pub running_scale: f64,
    /// Network capacity, bytes per second.
    pub net_capacity_bps: f64,
    /// Time to first token that counts as fully loaded, seconds.
    pub latency_target_s: f64,
    /// Share of TCP segments retransmitted that counts as fully loaded
    /// (each loss costs at least a 200 ms retransmission timeout).
    pub retrans_target: f64,
    /// EWMA weight of the newest target (0..1].
    pub ewma_alpha: f64,
    /// Relative change below which the published weight stays.
    pub hysteresis: f64,
    /// Largest relative change per step.
    pub max_step: f64,
    /// Ramp after coming back, seconds.
    pub slow_start_s: f64,
    /// Telemetry older than this counts as saturated, milliseconds.
    pub stale_after_ms: u64,
    /// Exponent of the throughput refinement of capacity (0 ignores it).
    pub throughput_trust: f64,
}

impl Default for ScoringPolicy {
    fn default() -> Self {
        Self {
            formula: Formula::default(),
            queue_scale: 8.0,
            running_scale: 32.0,
            net_capacity_bps: 1.25e9,
            latency_target_s: 2.0,
            retrans_target: 0.02,
            ewma_alpha: 0.5,
            hysteresis: 0.05,
            max_step: 0.5,
            slow_start_s: 10.0,
            stale_after_ms: 3000,
            throughput_trust: 0.5,
        }
    }
}

impl ScoringPolicy {
    /// Checks ranges; the message says what to use.
    pub fn check(&self) -> Result<(), String> {
        for (n, v) in self.formula.weights() {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("formula.{n} = {v}: use 0 to 100"));
            }
        }
        let pos = |n: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("{n} = {v}: must be positive"))
            }
        };
        pos("queue_scale", self.queue_scale)?;
        pos("running_scale", self.running_scale)?;
        pos("net_capacity_bps", self.net_capacity_bps)?;
        pos("latency_target_s", self.latency_target_s)?;
        pos("retrans_target", self.retrans_target)?;
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return Err(format!(
                "ewma_alpha = {}: use a value in (0, 1]",
                self.ewma_alpha
            ));
        }
        for (n, v, hi) in [
            ("hysteresis", self.hysteresis, 0.5),
            ("max_step", self.max_step, 10.0),
            ("throughput_trust", self.throughput_trust, 1.0),
        ] {
            if !(0.0..=hi).contains(&v) {
                return Err(format!("{n} = {v}: use 0 to {hi}"));
            }
        }
        if !(0.0..=3600.0).contains(&self.slow_start_s) {
            return Err(format!(
                "slow_start_s = {}: use 0 to 3600",
                self.slow_start_s
            ));
        }
        Ok(())
    }
}
