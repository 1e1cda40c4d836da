//! From telemetry to weights.
//!
//! For each backend of a pool, once per interval:
//!
//! 1. **Load** `L` is the weighted mean of the normalised load components the
//!    backend reports, or, if larger, its strongest backlog component (queue,
//!    KV cache, latency, TCP retransmits, scaled by its weight relative to
//!    the heaviest one): a long queue, or a path that loses segments,
//!    saturates a backend however idle its CPU is. Components
//!    are 0..1; the [`Formula`] says how much each counts:
//!    queue `1 - e^(-waiting/queue_scale)`, running
//!    `1 - e^(-running/running_scale)`, KV cache, GPU utilisation, GPU memory,
//!    CPU, host memory, network `bytes/s / net_capacity`, latency
//!    `min(1, ttft_p95 / latency_target)` (Triton: mean queue time), and
//!    TCP loss `min(1, retransmitted share / retrans_target)` (backlog only:
//!    it never enters the mean, so a clean path dilutes nothing). Missing
//!    components are left out, not counted as idle. **Stale telemetry** (no
//!    successful scrape for `stale_after`) counts as `L = 1`: saturated, and
//!    so does **unknown telemetry**: a scrape that succeeded but yielded no
//!    load component (empty `/metrics`, wrong `kind`, renamed metrics).
//! 2. **Capacity** `C` is the capacity hint (the backend's configured weight)
//!    refined by observed throughput: a backend that generates more tokens per
//!    unit of load than the pool's median gets up to 2x its hint, less down to
//!    0.5x, trusted with exponent `throughput_trust`.
//! 3. **Target** `T = C x (1 - L)`: capacity times headroom. Backends that are
//!    down (scrape failures or health checks, with `fall`/`rise` counts) or do
//!    not have the VIP's model get 0. Targets are scaled so the largest is
//!    1000.
//! 4. **Stability**: the target is smoothed (EWMA, `ewma_alpha`), a change
//!    smaller than `hysteresis` (relative) is ignored, and one step moves the
//!    published weight by at most `max_step` (relative, at least 2% of full
//!    scale). A backend that comes back (health, or model loaded) ramps up
//!    linearly over `slow_start_s` from 10%. Going down is immediate.
//! 5. **Fail open**: if every backend is down the pool keeps serving on the
//!    capacity hints and says so loudly; if all are merely saturated, weights
//!    follow capacity.
//!
//! Files follow the steps: the policy and its check (`policy.rs`), load
//! (`load.rs`), capacity, targets and failing open (`target.rs`), and
//! stability (`stability.rs`).

mod load;
mod policy;
mod stability;
mod target;
#[cfg(test)]
mod tests;

pub use self::{
    load::components,
    policy::{Formula, ScoringPolicy},
};

use std::{collections::HashMap, net::IpAddr, time::Instant};

use serde::{Deserialize, Serialize};

use self::{load::Row, stability::Memory};
use crate::control::telemetry::Signals;

/// Full scale of published weights.
pub const SCALE: f64 = 1000.0;

/// What the scorer knows about a backend this interval.
#[derive(Debug, Clone)]
pub struct Input {
    /// Address.
    pub addr: IpAddr,
    /// Capacity hint (its configured weight).
    pub hint: f64,
    /// Signals of the last interval, if any scrape succeeded.
    pub signals: Option<Signals>,
    /// When the last scrape succeeded.
    pub last_ok: Option<Instant>,
    /// Down, and why (scrape failures or health checks).
    pub down: Option<String>,
    /// Whether it serves the VIP's model (`None`: unknown, assumed yes).
    pub has_model: Option<bool>,
    /// Set when its last scrape succeeded but held no metric its kind is
    /// known by (empty `/metrics`, wrong `kind`, renamed metrics), e.g.
    /// `no recognised signal (kind vllm)`: it counts as saturated, not idle.
    pub unknown: Option<String>,
}

/// One load component in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Name.
    pub name: String,
    /// Normalised value 0..1.
    pub value: f64,
    /// Its weight in the formula.
    pub weight: f64,
}

/// The scorer's decision for one backend, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Address.
    pub addr: IpAddr,
    /// Weight to publish.
    pub weight: u32,
    /// Down reason (to mark it down), if down.
    pub down: Option<String>,
    /// Raw signals.
    pub signals: Option<Signals>,
    /// Load components used.
    pub components: Vec<Component>,
    /// Load 0..1.
    pub load: f64,
    /// Capacity (hint x refinement).
    pub capacity: f64,
    /// Target before smoothing, 0..1000.
    pub target: f64,
    /// Smoothed target.
    pub smoothed: f64,
    /// Why, in words.
    pub why: String,
    /// Its telemetry held no recognised signal, so it counts as saturated.
    #[serde(default)]
    pub unknown: bool,
}

/// Per-pool scorer state across intervals.
#[derive(Debug, Default)]
pub struct Scorer {
    mem: HashMap<IpAddr, Memory>,
}

impl Scorer {
    /// Scores a pool. Returns a decision per input and, when the pool fails
    /// open, the warning to log.
    pub fn score(
        &mut self,
        p: &ScoringPolicy,
        inputs: &[Input],
        now: Instant,
    ) -> (Vec<Decision>, Option<String>) {
        let mut rows: Vec<Row> = inputs.iter().map(|i| Row::new(i, p, now)).collect();
        target::set_capacities(inputs, &mut rows, p);
        let t = target::targets(inputs, &rows);
        let max = t.raw.iter().cloned().fold(0.0, f64::max);
        let out = inputs
            .iter()
            .zip(&rows)
            .zip(&t.raw)
            .map(|((i, row), raw)| {
                let target = if max > 0.0 { raw / max * SCALE } else { 0.0 };
                self.decide(p, i, row, target, t.fail_open, now)
            })
            .collect();
        self.mem.retain(|a, _| inputs.iter().any(|i| i.addr == *a));
        (out, t.warning)
    }

    /// Step 4 for one backend, from its scaled target, with the why.
    fn decide(
        &mut self,
        p: &ScoringPolicy,
        i: &Input,
        row: &Row,
        target: f64,
        fail_open: bool,
        now: Instant,
    ) -> Decision {
        let m = self.mem.entry(i.addr).or_default();
        let mut notes = Vec::new();
        let eligible = row.eligible || fail_open;
        let target = m.slow_start(p, target, eligible, now, &mut notes);
        let published = m.publish(p, target, eligible, &mut notes);
        let mut why = explain(i, row, target);
        if fail_open {
            why = format!("failing open ({why})");
        }
        for n in notes {
            why.push_str("; ");
            why.push_str(&n);
        }
        Decision {
            addr: i.addr,
            weight: published.round() as u32,
            down: if fail_open { None } else { i.down.clone() },
            signals: i.signals.clone(),
            components: row.comps.clone(),
            load: row.load,
            capacity: row.capacity,
            target,
            smoothed: m.smoothed,
            why,
            unknown: row.unknown,
        }
    }
}

/// Why a backend gets its target, in words.
fn explain(i: &Input, row: &Row, target: f64) -> String {
    if let Some(d) = &i.down {
        return format!("down: {d}");
    }
    if i.has_model == Some(false) {
        return "does not serve the VIP's model".to_string();
    }
    if let Some(s) = &row.stale {
        return s.clone();
    }
    let parts: Vec<String> = row
        .comps
        .iter()
        .map(|c| format!("{} {:.2}", c.name, c.value))
        .collect();
    format!(
        "load {:.2} ({}) -> headroom {:.2} x capacity {:.2} -> target {:.0}",
        row.load,
        if parts.is_empty() {
            "no signals".into()
        } else {
            parts.join(", ")
        },
        (1.0 - row.load).max(0.0),
        row.capacity,
        target
    )
}
