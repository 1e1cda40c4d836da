//! From telemetry to weights.
//!
//! For each backend of a pool, once per interval:
//!
//! 1. **Load** `L` is the weighted mean of the normalised load components the
//!    backend reports, or, if larger, its strongest backlog component (queue,
//!    KV cache, latency, scaled by its weight relative to the heaviest one):
//!    a long queue saturates a backend however idle its CPU is. Components
//!    are 0..1; the [`Formula`] says how much each counts:
//!    queue `1 - e^(-waiting/queue_scale)`, running
//!    `1 - e^(-running/running_scale)`, KV cache, GPU utilisation, GPU memory,
//!    CPU, host memory, network `bytes/s / net_capacity`, and latency
//!    `min(1, ttft_p95 / latency_target)` (Triton: mean queue time). Missing
//!    components are left out, not counted as idle. **Stale telemetry** (no
//!    successful scrape for `stale_after`) counts as `L = 1`: saturated.
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

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::control::telemetry::Signals;

/// Full scale of published weights.
pub const SCALE: f64 = 1000.0;

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
        }
    }
}

/// A pool's scoring policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
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

impl Default for Policy {
    fn default() -> Self {
        Self {
            formula: Formula::default(),
            queue_scale: 8.0,
            running_scale: 32.0,
            net_capacity_bps: 1.25e9,
            latency_target_s: 2.0,
            ewma_alpha: 0.5,
            hysteresis: 0.05,
            max_step: 0.5,
            slow_start_s: 10.0,
            stale_after_ms: 3000,
            throughput_trust: 0.5,
        }
    }
}

impl Policy {
    /// Checks ranges; the message says what to use.
    pub fn check(&self) -> Result<(), String> {
        let f = &self.formula;
        for (n, v) in [
            ("queue", f.queue),
            ("running", f.running),
            ("kv_cache", f.kv_cache),
            ("gpu_util", f.gpu_util),
            ("gpu_mem", f.gpu_mem),
            ("cpu", f.cpu),
            ("mem", f.mem),
            ("net", f.net),
            ("latency", f.latency),
        ] {
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
}

#[derive(Debug, Clone, Default)]
struct Memory {
    smoothed: f64,
    published: f64,
    eligible: bool,
    ramp_from: Option<Instant>,
}

/// Per-pool scorer state across intervals.
#[derive(Debug, Default)]
pub struct Scorer {
    mem: HashMap<IpAddr, Memory>,
}

fn sat(x: f64, scale: f64) -> f64 {
    1.0 - (-x / scale).exp()
}

/// Load components of a backend's signals under `p`.
pub fn components(s: &Signals, p: &Policy) -> Vec<Component> {
    let f = &p.formula;
    let mut out = Vec::new();
    let mut push = |name: &str, v: Option<f64>, w: f64| {
        if let Some(v) = v
            && w > 0.0
        {
            out.push(Component {
                name: name.into(),
                value: v.clamp(0.0, 1.0),
                weight: w,
            });
        }
    };
    push(
        "queue",
        s.queue_waiting.map(|q| sat(q, p.queue_scale)),
        f.queue,
    );
    push(
        "running",
        s.requests_running.map(|r| sat(r, p.running_scale)),
        f.running,
    );
    push("kv_cache", s.kv_cache, f.kv_cache);
    push("gpu_util", s.gpu_util, f.gpu_util);
    push("gpu_mem", s.gpu_mem, f.gpu_mem);
    push("cpu", s.cpu, f.cpu);
    push("mem", s.mem, f.mem);
    push("net", s.net_bps.map(|b| b / p.net_capacity_bps), f.net);
    let latency = s
        .ttft_p95_s
        .or(s.queue_time_s)
        .map(|t| t / p.latency_target_s);
    push("latency", latency, f.latency);
    out
}

/// Components that mean backlog: any one of them saturates a backend alone.
const BACKLOG: &[&str] = &["queue", "kv_cache", "latency"];

fn weighted_load(c: &[Component]) -> Option<f64> {
    let w: f64 = c.iter().map(|x| x.weight).sum();
    if w <= 0.0 {
        return None;
    }
    let mean = c.iter().map(|x| x.value * x.weight).sum::<f64>() / w;
    let top = c.iter().map(|x| x.weight).fold(0.0, f64::max);
    let backlog = c
        .iter()
        .filter(|x| BACKLOG.contains(&x.name.as_str()))
        .map(|x| x.value * x.weight / top)
        .fold(0.0, f64::max);
    Some(mean.max(backlog))
}

impl Scorer {
    /// Scores a pool. Returns a decision per input and, when the pool fails
    /// open, the warning to log.
    pub fn score(
        &mut self,
        p: &Policy,
        inputs: &[Input],
        now: Instant,
    ) -> (Vec<Decision>, Option<String>) {
        let stale_after = Duration::from_millis(p.stale_after_ms);
        struct Row {
            comps: Vec<Component>,
            load: f64,
            stale: Option<String>,
            tput: Option<f64>,
        }
        let rows: Vec<Row> = inputs
            .iter()
            .map(|i| {
                let stale = match i.last_ok {
                    Some(t) if now.saturating_duration_since(t) <= stale_after => None,
                    Some(t) => Some(format!(
                        "stale telemetry (last good scrape {:.1}s ago) counts as saturated",
                        now.saturating_duration_since(t).as_secs_f64()
                    )),
                    None => Some("no telemetry yet counts as saturated".to_string()),
                };
                let comps = i
                    .signals
                    .as_ref()
                    .map(|s| components(s, p))
                    .unwrap_or_default();
                let load = if stale.is_some() {
                    1.0
                } else {
                    weighted_load(&comps).unwrap_or(0.0)
                };
                let tput = i
                    .signals
                    .as_ref()
                    .and_then(|s| s.tokens_per_s)
                    .filter(|_| load >= 0.1 && stale.is_none())
                    .map(|t| t / load.max(0.05));
                Row {
                    comps,
                    load,
                    stale,
                    tput,
                }
            })
            .collect();
        // Throughput refinement against the pool median.
        let mut tputs: Vec<f64> = rows
            .iter()
            .filter_map(|r| r.tput)
            .filter(|t| *t > 0.0)
            .collect();
        tputs.sort_by(|a, b| a.total_cmp(b));
        let median = (tputs.len() >= 2).then(|| tputs[tputs.len() / 2]);
        let capacity: Vec<f64> = inputs
            .iter()
            .zip(&rows)
            .map(|(i, r)| {
                let refine = match (median, r.tput) {
                    (Some(m), Some(t)) if m > 0.0 => {
                        (t / m).clamp(0.5, 2.0).powf(p.throughput_trust)
                    }
                    _ => 1.0,
                };
                i.hint.max(0.0) * refine
            })
            .collect();
        let eligible: Vec<bool> = inputs
            .iter()
            .map(|i| i.down.is_none() && i.has_model != Some(false) && i.hint > 0.0)
            .collect();
        let mut raw: Vec<f64> = (0..inputs.len())
            .map(|k| {
                if eligible[k] {
                    capacity[k] * (1.0 - rows[k].load).max(0.0)
                } else {
                    0.0
                }
            })
            .collect();
        let mut warning = None;
        let mut fail_open = false;
        if !eligible.iter().any(|e| *e) && !inputs.is_empty() {
            fail_open = true;
            warning = Some(
                "EVERY backend of the pool is down: failing open on the capacity hints".to_string(),
            );
            raw = inputs
                .iter()
                .map(|i| {
                    if i.has_model != Some(false) {
                        i.hint.max(0.0)
                    } else {
                        0.0
                    }
                })
                .collect();
        } else if raw.iter().all(|r| *r <= 0.0) {
            warning = Some("every live backend is saturated: weighting by capacity".to_string());
            raw = (0..inputs.len())
                .map(|k| if eligible[k] { capacity[k] } else { 0.0 })
                .collect();
        }
        let max = raw.iter().cloned().fold(0.0, f64::max);
        let floor = SCALE * 0.02;
        let mut out = Vec::with_capacity(inputs.len());
        for (k, i) in inputs.iter().enumerate() {
            let m = self.mem.entry(i.addr).or_default();
            let mut notes = Vec::new();
            let mut target = if max > 0.0 { raw[k] / max * SCALE } else { 0.0 };
            let now_eligible = eligible[k] || fail_open;
            // Coming (back) into service from zero: ramp up.
            if now_eligible && !m.eligible {
                m.ramp_from = (p.slow_start_s > 0.0 && m.published <= 0.0).then_some(now);
            }
            if let Some(from) = m.ramp_from {
                let f =
                    (now.saturating_duration_since(from).as_secs_f64() / p.slow_start_s).min(1.0);
                if f >= 1.0 {
                    m.ramp_from = None;
                } else {
                    let f = 0.1 + 0.9 * f;
                    target *= f;
                    notes.push(format!("slow start {:.0}%", f * 100.0));
                }
            }
            m.eligible = now_eligible;
            let published;
            if !now_eligible {
                m.smoothed = 0.0;
                m.published = 0.0;
                published = 0.0;
            } else {
                m.smoothed += p.ewma_alpha * (target - m.smoothed);
                let old = m.published;
                let up = old * (1.0 + p.max_step) + floor;
                let down = old * (1.0 - p.max_step).max(0.0);
                let mut next = m.smoothed.clamp(down.min(up), up.max(down));
                if next != m.smoothed {
                    notes.push(format!("step-limited from {:.0}", m.smoothed));
                }
                if (next - old).abs() < p.hysteresis * old.max(floor) {
                    next = old;
                    if (m.smoothed - old).abs() > 0.5 {
                        notes.push("within hysteresis".into());
                    }
                }
                m.published = next;
                published = next;
            }
            let mut why = if let Some(d) = &i.down {
                format!("down: {d}")
            } else if i.has_model == Some(false) {
                "does not serve the VIP's model".to_string()
            } else if let Some(s) = &rows[k].stale {
                s.clone()
            } else {
                let parts: Vec<String> = rows[k]
                    .comps
                    .iter()
                    .map(|c| format!("{} {:.2}", c.name, c.value))
                    .collect();
                format!(
                    "load {:.2} ({}) -> headroom {:.2} x capacity {:.2} -> target {:.0}",
                    rows[k].load,
                    if parts.is_empty() {
                        "no signals".into()
                    } else {
                        parts.join(", ")
                    },
                    (1.0 - rows[k].load).max(0.0),
                    capacity[k],
                    target
                )
            };
            if fail_open {
                why = format!("failing open ({why})");
            }
            for n in notes {
                why.push_str("; ");
                why.push_str(&n);
            }
            out.push(Decision {
                addr: i.addr,
                weight: published.round() as u32,
                down: if fail_open { None } else { i.down.clone() },
                signals: i.signals.clone(),
                components: rows[k].comps.clone(),
                load: rows[k].load,
                capacity: capacity[k],
                target,
                smoothed: m.smoothed,
                why,
            });
        }
        self.mem.retain(|a, _| inputs.iter().any(|i| i.addr == *a));
        (out, warning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(addr: u8, queue: f64, kv: f64) -> Input {
        Input {
            addr: IpAddr::from([10, 0, 0, addr]),
            hint: 1.0,
            signals: Some(Signals {
                queue_waiting: Some(queue),
                kv_cache: Some(kv),
                ..Default::default()
            }),
            last_ok: Some(Instant::now()),
            down: None,
            has_model: None,
        }
    }

    fn run(s: &mut Scorer, p: &Policy, inputs: &[Input], ticks: usize) -> Vec<u32> {
        let mut w = vec![];
        for _ in 0..ticks {
            w = s
                .score(p, inputs, Instant::now())
                .0
                .iter()
                .map(|d| d.weight)
                .collect();
        }
        w
    }

    fn no_ramp() -> Policy {
        Policy {
            slow_start_s: 0.0,
            ..Policy::default()
        }
    }

    #[test]
    fn loaded_backend_gets_less() {
        let p = no_ramp();
        let mut s = Scorer::default();
        let w = run(&mut s, &p, &[input(1, 0.0, 0.2), input(2, 20.0, 0.95)], 12);
        assert!(w[0] > 900 && w[1] < 150, "{w:?}");
    }

    #[test]
    fn weights_do_not_oscillate_on_noise() {
        let p = no_ramp();
        let mut s = Scorer::default();
        run(&mut s, &p, &[input(1, 2.0, 0.5), input(2, 2.0, 0.5)], 10);
        let before = run(&mut s, &p, &[input(1, 2.0, 0.5), input(2, 2.0, 0.5)], 1);
        // +-2% noise stays within hysteresis.
        let after = run(&mut s, &p, &[input(1, 2.1, 0.51), input(2, 1.9, 0.49)], 1);
        assert_eq!(before, after);
    }

    #[test]
    fn steps_are_bounded() {
        // No smoothing, so only the step limit holds the weight back.
        let p = Policy {
            ewma_alpha: 1.0,
            ..no_ramp()
        };
        let mut s = Scorer::default();
        let w = run(&mut s, &p, &[input(1, 0.0, 0.0), input(2, 0.0, 0.0)], 30);
        assert!(w[0] == w[1] && w[0] >= 950, "{w:?}");
        let d = s
            .score(
                &p,
                &[input(1, 0.0, 0.0), input(2, 40.0, 1.0)],
                Instant::now(),
            )
            .0;
        assert!(
            d[1].weight * 2 >= w[1],
            "one step may at most halve: {}",
            d[1].weight
        );
        assert!(d[1].why.contains("step-limited"), "{}", d[1].why);
    }

    #[test]
    fn down_is_immediate_and_recovery_ramps() {
        let p = Policy {
            slow_start_s: 10.0,
            ..Policy::default()
        };
        let mut s = Scorer::default();
        let t0 = Instant::now();
        let mut a = input(1, 0.0, 0.1);
        let b = input(2, 0.0, 0.1);
        s.score(&p, &[a.clone(), b.clone()], t0);
        a.down = Some("scrape failed".into());
        let d = s.score(&p, &[a.clone(), b.clone()], t0).0;
        assert_eq!(d[0].weight, 0);
        assert!(d[0].why.starts_with("down: scrape failed"));
        a.down = None;
        let d = s.score(&p, &[a.clone(), b.clone()], t0).0;
        assert!(d[0].why.contains("slow start 10%"), "{}", d[0].why);
        let mid = s
            .score(&p, &[a.clone(), b.clone()], t0 + Duration::from_secs(5))
            .0;
        assert!(mid[0].why.contains("slow start 55%"), "{}", mid[0].why);
        let mut last = 0;
        for k in 0..20 {
            last = s
                .score(
                    &p,
                    &[a.clone(), b.clone()],
                    t0 + Duration::from_secs(11 + k),
                )
                .0[0]
                .weight;
        }
        assert!(last > 900, "{last}");
    }

    #[test]
    fn stale_counts_as_saturated_and_all_down_fails_open() {
        let p = no_ramp();
        let mut s = Scorer::default();
        let mut a = input(1, 0.0, 0.1);
        a.last_ok = Some(Instant::now() - Duration::from_secs(10));
        let b = input(2, 0.0, 0.1);
        let w = run(&mut s, &p, &[a.clone(), b.clone()], 10);
        assert_eq!(w[0], 0, "stale telemetry is not idle");
        let mut a = input(1, 0.0, 0.1);
        let mut b = input(2, 0.0, 0.1);
        a.down = Some("x".into());
        b.down = Some("y".into());
        let (d, warn) = s.score(&p, &[a, b], Instant::now());
        assert!(warn.unwrap().contains("failing open"));
        assert!(d.iter().all(|d| d.weight > 0 && d.down.is_none()), "{d:?}");
    }

    #[test]
    fn model_locality_and_capacity_hints() {
        let p = no_ramp();
        let mut s = Scorer::default();
        let mut a = input(1, 0.0, 0.0);
        a.hint = 3.0;
        let b = input(2, 0.0, 0.0);
        let mut c = input(3, 0.0, 0.0);
        c.has_model = Some(false);
        let w = run(&mut s, &p, &[a, b, c], 15);
        assert_eq!(w[2], 0);
        assert!((w[0] as f64 / w[1] as f64 - 3.0).abs() < 0.2, "{w:?}");
    }
}
