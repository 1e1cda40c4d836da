//! Backend telemetry: what each inference server and host exporter reports,
//! turned into normalised load signals.
//!
//! - [`presets`]: metric names per server kind (vLLM, SGLang, TGI, Triton,
//!   DCGM exporter, node_exporter) and their units, read into one
//!   [`Reading`] per scrape;
//! - [`Signals::derive`]: counters become rates over the interval between two
//!   readings (a counter that went down was reset and counts from zero),
//!   histograms become quantiles of the interval's observations, and every
//!   signal is normalised to 0..1;
//! - [`scrape`]: concurrent HTTP scrapes with a timeout, a body-size cap and
//!   keep-alive;
//! - [`health`]: active TCP/HTTP health checks.

pub mod health;
pub mod presets;
pub mod scrape;

use std::{collections::BTreeSet, time::Instant};

use serde::{Deserialize, Serialize};

pub use presets::ServerKind;

/// Everything one scrape (of one or more endpoints of a backend) yielded, in
/// canonical units. `None` means the endpoint does not report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// When it was taken.
    pub at: Option<Instant>,
    /// Requests waiting in the server's queue.
    pub queue_waiting: Option<f64>,
    /// Requests running (in the batch).
    pub requests_running: Option<f64>,
    /// KV-cache (or token pool) use, 0..1.
    pub kv_cache: Option<f64>,
    /// GPU utilisation, 0..1 (mean over GPUs).
    pub gpu_util: Option<f64>,
    /// GPU memory used, bytes (sum over GPUs).
    pub gpu_mem_used: Option<f64>,
    /// GPU memory free, bytes.
    pub gpu_mem_free: Option<f64>,
    /// GPU power, watts.
    pub gpu_power_w: Option<f64>,
    /// Host memory available, bytes.
    pub mem_available: Option<f64>,
    /// Host memory total, bytes.
    pub mem_total: Option<f64>,
    /// Counter: CPU seconds idle (all CPUs).
    pub cpu_idle_s: Option<f64>,
    /// Counter: CPU seconds in all modes.
    pub cpu_total_s: Option<f64>,
    /// Counter: network bytes received and sent (not loopback).
    pub net_bytes: Option<f64>,
    /// Counter: TCP segments sent (node_exporter's netstat).
    pub tcp_out_segs: Option<f64>,
    /// Counter: TCP segments retransmitted.
    pub tcp_retrans_segs: Option<f64>,
    /// Counter: generated tokens.
    pub gen_tokens: Option<f64>,
    /// Counter: microseconds requests spent queued (Triton).
    pub queue_time_us: Option<f64>,
    /// Counter: requests completed (Triton).
    pub requests_done: Option<f64>,
    /// Cumulative time-to-first-token histogram: (upper bound s, count).
    pub ttft: Vec<(f64, f64)>,
    /// Models and adapters the server reports serving.
    pub models: Option<BTreeSet<String>>,
}

impl Reading {
    /// Whether it holds any load metric (models alone do not count): a
    /// scrape without one read an empty `/metrics`, a server of another
    /// kind, or metrics renamed since.
    pub fn has_signal(&self) -> bool {
        let gauges = [
            self.queue_waiting,
            self.requests_running,
            self.kv_cache,
            self.gpu_util,
            self.gpu_mem_used,
            self.gpu_mem_free,
            self.gpu_power_w,
            self.mem_available,
            self.mem_total,
            self.cpu_idle_s,
            self.cpu_total_s,
            self.net_bytes,
            self.tcp_out_segs,
            self.tcp_retrans_segs,
            self.gen_tokens,
            self.queue_time_us,
            self.requests_done,
        ];
        gauges.iter().any(Option::is_some) || !self.ttft.is_empty()
    }

    /// Merges another endpoint's reading of the same backend (first wins per
    /// field, so list the inference server before host exporters).
    pub fn merge(&mut self, o: Reading) {
        macro_rules! take {
            ($($f:ident),*) => {$( if self.$f.is_none() { self.$f = o.$f; } )*};
        }
        take!(
            queue_waiting,
            requests_running,
            kv_cache,
            gpu_util,
            gpu_mem_used,
            gpu_mem_free,
            gpu_power_w,
            mem_available,
            mem_total,
            cpu_idle_s,
            cpu_total_s,
            net_bytes,
            tcp_out_segs,
            tcp_retrans_segs,
            gen_tokens,
            queue_time_us,
            requests_done
        );
        if self.ttft.is_empty() {
            self.ttft = o.ttft;
        }
        match (&mut self.models, o.models) {
            (Some(a), Some(b)) => a.extend(b),
            (a @ None, b) => *a = b,
            _ => {}
        }
        if self.at.is_none() {
            self.at = o.at;
        }
    }
}

/// Normalised signals of one backend over the last interval. Every load
/// component is 0 (idle) to 1 (saturated); `None` when not reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Requests waiting (raw).
    pub queue_waiting: Option<f64>,
    /// Requests running (raw).
    pub requests_running: Option<f64>,
    /// KV-cache use, 0..1.
    pub kv_cache: Option<f64>,
    /// GPU utilisation, 0..1.
    pub gpu_util: Option<f64>,
    /// GPU memory use, 0..1.
    pub gpu_mem: Option<f64>,
    /// GPU power, watts (informative).
    pub gpu_power_w: Option<f64>,
    /// CPU utilisation, 0..1.
    pub cpu: Option<f64>,
    /// Host memory use, 0..1.
    pub mem: Option<f64>,
    /// Network, bytes per second.
    pub net_bps: Option<f64>,
    /// Share of the TCP segments sent over the interval that were
    /// retransmissions, 0..1: a lossy path delays every answer.
    pub tcp_retrans: Option<f64>,
    /// Tokens generated per second.
    pub tokens_per_s: Option<f64>,
    /// 95th percentile time to first token over the interval, seconds.
    pub ttft_p95_s: Option<f64>,
    /// Mean queue time over the interval, seconds (Triton).
    pub queue_time_s: Option<f64>,
}

/// Rate of a counter between two readings; a decrease is a reset, after which
/// the counter counted up from 0.
pub fn counter_rate(prev: Option<f64>, cur: Option<f64>, secs: f64) -> Option<f64> {
    let (p, c) = (prev?, cur?);
    if secs <= 0.0 || !p.is_finite() || !c.is_finite() {
        return None;
    }
    let delta = if c >= p { c - p } else { c };
    Some(delta / secs)
}

fn counter_delta(prev: Option<f64>, cur: Option<f64>) -> Option<f64> {
    let (p, c) = (prev?, cur?);
    Some(if c >= p { c - p } else { c })
}

fn unit(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite()).map(|x| x.clamp(0.0, 1.0))
}

impl Signals {
    /// Derives the interval's signals from the previous and the current
    /// reading (gauges from the current one alone).
    pub fn derive(prev: Option<&Reading>, cur: &Reading) -> Self {
        let secs = match (prev.and_then(|p| p.at), cur.at) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let gpu_mem = match (cur.gpu_mem_used, cur.gpu_mem_free) {
            (Some(u), Some(f)) if u + f > 0.0 => Some(u / (u + f)),
            _ => None,
        };
        let mem = match (cur.mem_available, cur.mem_total) {
            (Some(a), Some(t)) if t > 0.0 => Some(1.0 - a / t),
            _ => None,
        };
        let (cpu, net_bps, tcp_retrans, tokens_per_s, ttft_p95_s, queue_time_s) = match prev {
            Some(p) if secs > 0.0 => {
                let cpu = match (
                    counter_delta(p.cpu_idle_s, cur.cpu_idle_s),
                    counter_delta(p.cpu_total_s, cur.cpu_total_s),
                ) {
                    (Some(i), Some(t)) if t > 0.0 => Some(1.0 - i / t),
                    _ => None,
                };
                let ttft = if cur.ttft.len() == p.ttft.len() && !cur.ttft.is_empty() {
                    // This interval's observations: per-bucket deltas.
                    let d: Vec<(f64, f64)> = cur
                        .ttft
                        .iter()
                        .zip(&p.ttft)
                        .map(|(c, o)| (c.0, if c.1 >= o.1 { c.1 - o.1 } else { c.1 }))
                        .collect();
                    crate::control::prom::histogram_quantile(0.95, &d)
                } else {
                    None
                };
                let qt = match (
                    counter_delta(p.queue_time_us, cur.queue_time_us),
                    counter_delta(p.requests_done, cur.requests_done),
                ) {
                    (Some(q), Some(n)) if n > 0.0 => Some(q / n / 1e6),
                    _ => None,
                };
                // An interval that sent nothing says nothing of loss.
                let retrans = match (
                    counter_delta(p.tcp_retrans_segs, cur.tcp_retrans_segs),
                    counter_delta(p.tcp_out_segs, cur.tcp_out_segs),
                ) {
                    (Some(r), Some(o)) if o > 0.0 => Some(r / o),
                    _ => None,
                };
                (
                    cpu,
                    counter_rate(p.net_bytes, cur.net_bytes, secs),
                    retrans,
                    counter_rate(p.gen_tokens, cur.gen_tokens, secs),
                    ttft,
                    qt,
                )
            }
            _ => (None, None, None, None, None, None),
        };
        Signals {
            queue_waiting: cur.queue_waiting.filter(|v| v.is_finite() && *v >= 0.0),
            requests_running: cur.requests_running.filter(|v| v.is_finite() && *v >= 0.0),
            kv_cache: unit(cur.kv_cache),
            gpu_util: unit(cur.gpu_util),
            gpu_mem: unit(gpu_mem),
            gpu_power_w: cur.gpu_power_w.filter(|v| v.is_finite()),
            cpu: unit(cpu),
            mem: unit(mem),
            net_bps: net_bps.filter(|v| v.is_finite()),
            tcp_retrans: unit(tcp_retrans),
            tokens_per_s: tokens_per_s.filter(|v| v.is_finite()),
            ttft_p95_s: ttft_p95_s.filter(|v| v.is_finite()),
            queue_time_s: queue_time_s.filter(|v| v.is_finite()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counters_become_rates_with_resets() {
        assert_eq!(counter_rate(Some(10.0), Some(30.0), 2.0), Some(10.0));
        // Reset: the counter restarted and reached 6.
        assert_eq!(counter_rate(Some(100.0), Some(6.0), 2.0), Some(3.0));
        assert_eq!(counter_rate(None, Some(6.0), 2.0), None);
        assert_eq!(counter_rate(Some(1.0), Some(6.0), 0.0), None);
    }

    #[test]
    fn derive_uses_interval_deltas() {
        let t0 = Instant::now();
        let prev = Reading {
            at: Some(t0),
            cpu_idle_s: Some(100.0),
            cpu_total_s: Some(200.0),
            gen_tokens: Some(1000.0),
            ttft: vec![(0.1, 10.0), (1.0, 20.0), (f64::INFINITY, 20.0)],
            ..Default::default()
        };
        let cur = Reading {
            at: Some(t0 + Duration::from_secs(2)),
            cpu_idle_s: Some(101.0),
            cpu_total_s: Some(204.0),
            gen_tokens: Some(1400.0),
            ttft: vec![(0.1, 10.0), (1.0, 40.0), (f64::INFINITY, 40.0)],
            kv_cache: Some(1.7),
            mem_available: Some(25.0),
            mem_total: Some(100.0),
            ..Default::default()
        };
        let s = Signals::derive(Some(&prev), &cur);
        assert_eq!(s.cpu, Some(0.75));
        assert_eq!(s.tokens_per_s, Some(200.0));
        assert_eq!(s.kv_cache, Some(1.0), "clamped");
        assert_eq!(s.mem, Some(0.75));
        assert_eq!(s.tcp_retrans, None, "no TCP counters, no loss figure");
        // All 20 new observations fell in (0.1, 1.0]: p95 = 0.1 + 0.9 * 19/20.
        let p95 = s.ttft_p95_s.unwrap();
        assert!((p95 - 0.955).abs() < 1e-9, "{p95}");
    }

    #[test]
    fn retransmits_are_a_share_of_segments_sent_in_the_interval() {
        let t0 = Instant::now();
        let at = |secs, out, retrans| Reading {
            at: Some(t0 + Duration::from_secs(secs)),
            tcp_out_segs: Some(out),
            tcp_retrans_segs: Some(retrans),
            ..Default::default()
        };
        let share = |a: &Reading, b: &Reading| Signals::derive(Some(a), b).tcp_retrans;
        // 30 of 1,000 segments sent this interval: 3%, whatever came before.
        assert_eq!(
            share(&at(0, 1e6, 9e4), &at(2, 1e6 + 1000.0, 9e4 + 30.0)),
            Some(0.03)
        );
        // Nothing sent: no figure, not "no loss".
        assert_eq!(share(&at(0, 5.0, 1.0), &at(2, 5.0, 1.0)), None);
        // A reset (reboot) counts from 0.
        assert_eq!(share(&at(0, 1e6, 50.0), &at(2, 200.0, 2.0)), Some(0.01));
    }
}
