//! Step 1, load: a backend's signals as normalised components, combined
//! into one load figure, with staleness and observed throughput.

use std::time::{Duration, Instant};

use super::{Component, Input, ScoringPolicy};
use crate::control::telemetry::Signals;

/// `1 - e^(-x/scale)`: 0 when idle, 63% at `scale`, towards 1 beyond.
fn sat(x: f64, scale: f64) -> f64 {
    1.0 - (-x / scale).exp()
}

/// Load components of a backend's signals under `p`.
pub fn components(s: &Signals, p: &ScoringPolicy) -> Vec<Component> {
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
    push(
        "retrans",
        s.tcp_retrans.map(|r| r / p.retrans_target),
        f.retrans,
    );
    out
}

/// Components that mean backlog (or, for retransmits, a path that delays
/// every answer): any one of them saturates a backend alone.
const BACKLOG: &[&str] = &["queue", "kv_cache", "latency", "retrans"];

/// Components that only ever saturate, never enter the mean: a clean path
/// (no retransmits) says nothing of how loaded a backend is, and must not
/// dilute the signals that do.
const BACKLOG_ONLY: &[&str] = &["retrans"];

fn weighted_load(c: &[Component]) -> Option<f64> {
    let only = |x: &Component| BACKLOG_ONLY.contains(&x.name.as_str());
    let load: Vec<&Component> = c.iter().filter(|x| !only(x)).collect();
    let w: f64 = load.iter().map(|x| x.weight).sum();
    let top = load.iter().map(|x| x.weight).fold(0.0, f64::max);
    let mean = (w > 0.0).then(|| load.iter().map(|x| x.value * x.weight).sum::<f64>() / w);
    // A backlog-only component alone is no load signal.
    let mean = mean?;
    let backlog = c
        .iter()
        .filter(|x| BACKLOG.contains(&x.name.as_str()))
        .map(|x| x.value * (x.weight / top).min(1.0))
        .fold(0.0, f64::max);
    Some(mean.max(backlog))
}

/// Whether a scraped backend's telemetry is unknown: its scrape held no
/// recognised metric, or none of the formula's components. Sets `why`. A
/// backend with signals `None` has no endpoints (or no scrape yet, which is
/// stale) and is not unknown.
fn unknown_why(i: &Input, comps: &[Component], why: &mut Option<String>) -> bool {
    let reason = match (&i.unknown, &i.signals) {
        (Some(u), _) => u.clone(),
        (None, Some(_)) if weighted_load(comps).is_none() => {
            "no load signal the formula uses".to_string()
        }
        _ => return false,
    };
    *why = Some(format!("{reason}: treated as saturated"));
    true
}

/// What the scorer works out about one backend before comparing it with
/// the rest of its pool.
pub(super) struct Row {
    /// Load components used.
    pub(super) comps: Vec<Component>,
    /// Load 0..1 (1 when stale).
    pub(super) load: f64,
    /// Why the telemetry counts as saturated, if it is stale or unknown.
    pub(super) stale: Option<String>,
    /// Scraped, but with no recognised signal: counted as saturated.
    pub(super) unknown: bool,
    /// Tokens per second per unit of load, when loaded enough to tell.
    pub(super) tput: Option<f64>,
    /// Capacity (hint x refinement), set in step 2.
    pub(super) capacity: f64,
    /// Up, with the VIP's model, and with a positive hint.
    pub(super) eligible: bool,
}

impl Row {
    /// Step 1 for one backend; capacity is left at 0 for step 2.
    pub(super) fn new(i: &Input, p: &ScoringPolicy, now: Instant) -> Self {
        let stale_after = Duration::from_millis(p.stale_after_ms);
        let mut stale = match i.last_ok {
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
        let unknown = stale.is_none() && unknown_why(i, &comps, &mut stale);
        // Stale and unknown both leave `stale` set, and load at 1; what is
        // left without components has no endpoints, and weights on its hint.
        let load = match stale {
            Some(_) => 1.0,
            None => weighted_load(&comps).unwrap_or(0.0),
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
            unknown,
            tput,
            capacity: 0.0,
            eligible: i.down.is_none() && i.has_model != Some(false) && i.hint > 0.0,
        }
    }
}
