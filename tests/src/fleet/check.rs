//! Is the instrument honest? Two runs whose answer queueing theory knows,
//! measured through the same harness (open-loop client, gateway route,
//! emulated nodes, real timers) as every scenario.
//!
//! - **Erlang C.** One node with `c` batch slots, one decode step of fixed
//!   length whatever the batch, and exponentially distributed output
//!   lengths: `c` parallel servers behind one FIFO queue with exponential
//!   service, M/M/c. Poisson arrivals; the mean wait must match Erlang C.
//! - **A fleet of identical fixed-service backends.** `c` nodes of one slot,
//!   every request the same length, routed at random: each node is M/D/1
//!   (Poisson splitting), so the mean wait must match Pollaczek-Khinchine,
//!   `rho S / (2 (1 - rho))` — half of what Erlang C would say for
//!   exponential service, which is why Erlang C is not the reference here.
//!
//! The wait is a request's time to first token less that of an unqueued
//! one: the 10th percentile of the run, since most requests (60-70% at the
//! load run here) find a free slot. That takes off the HTTP path and the
//! step that computes the first token, and nothing else. What remains
//! unmodelled: a request that finds a free slot while the node is mid-step
//! waits for the step's end (half a 10 ms step on average, in the M/M/c
//! run only; a one-slot node is either idle or has no free slot).

use anyhow::Result;
use balancer::{
    cache::pick::Pick,
    emulate::profile::{Class, Profile},
};
use indicatif::ProgressBar;

use super::{
    plan::{Plan, Planned, Rng},
    run::{self, Strategy},
    scenario::{Curve, Fleet, Scenario, Shape, Tier, Workload},
};

/// One check's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was run.
    pub name: String,
    /// Mean wait measured, seconds.
    pub measured_s: f64,
    /// Mean wait theory predicts, seconds.
    pub theory_s: f64,
    /// Requests measured.
    pub requests: usize,
    /// Mean service time measured (first token to last), seconds.
    pub service_s: f64,
    /// Mean service time the model is configured for, seconds.
    pub configured_service_s: f64,
}

impl Check {
    /// Measured over theory.
    pub fn ratio(&self) -> f64 {
        self.measured_s / self.theory_s
    }
}

/// One decode step, seconds.
const STEP_S: f64 = 0.010;

fn class(slots: u32) -> Class {
    Class {
        name: "queue".into(),
        source: "a synthetic node: one 10 ms step whatever the batch".into(),
        prefill_tokens_per_s: 1e9,
        decode_ms_base: STEP_S * 1e3,
        decode_ms_per_seq: 0.0,
        kv_tokens: 1 << 24,
        max_seqs: slots,
        block_tokens: 16,
        max_step_tokens: 1 << 20,
    }
}

fn scenario(nodes: u32, slots: u32) -> Scenario {
    Scenario {
        name: "queueing check".into(),
        duration_s: 1.0,
        seed: 1,
        fleet: Fleet {
            profile: Profile {
                classes: vec![class(slots)],
            },
            model: "m".into(),
            nodes: vec![("queue".into(), nodes)],
        },
        workload: Workload {
            trace: Default::default(),
            mean_rps: 1.0,
            max_prompt_tokens: 1,
            max_output_tokens: 1 << 15,
        },
        shape: Shape {
            peak_to_average: 1.0,
            curve: Curve::Flat,
            bins: 4,
        },
        tiers: vec![Tier {
            name: "all".into(),
            share: 1.0,
            ttft_s: 3600.0,
            e2e_s: 3600.0,
        }],
    }
}

/// Poisson arrivals at `rate`, each with `tokens()` output tokens.
fn poisson(n: usize, rate: f64, seed: u64, mut tokens: impl FnMut(&mut Rng) -> u32) -> Plan {
    let mut rng = Rng::new(seed);
    let mut t = 0.0;
    let requests = (0..n)
        .map(|index| {
            t += -(1.0 - rng.f64()).ln() / rate;
            Planned {
                index,
                at_s: t,
                tier: 0,
                prompt_tokens: 1,
                output_tokens: tokens(&mut rng),
                blocks: vec![(1 << 63) | index as u64],
            }
        })
        .collect();
    Plan {
        requests,
        achieved_par: 1.0,
        compression: 1.0,
    }
}

/// Mean time from first token to last: the service after admission.
fn mean_service(run: &run::Run) -> f64 {
    let v: Vec<f64> = run
        .outcomes
        .iter()
        .filter_map(|o| Some(o.e2e_s? - o.ttft_s?))
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn mean_wait(run: &run::Run) -> f64 {
    let mut ttft: Vec<f64> = run.outcomes.iter().filter_map(|o| o.ttft_s).collect();
    ttft.sort_by(f64::total_cmp);
    let Some(&unqueued) = ttft.get(ttft.len() / 10) else {
        return f64::NAN;
    };
    ttft.iter().map(|t| (t - unqueued).max(0.0)).sum::<f64>() / ttft.len() as f64
}

/// Erlang C's mean wait for `c` servers at offered load `a = lambda / mu`.
pub fn erlang_c_wait(c: u32, lambda: f64, mu: f64) -> f64 {
    let a = lambda / mu;
    let rho = a / c as f64;
    // sum_{k<c} a^k / k!, and a^c / c!, computed as running terms.
    let (mut sum, mut term) = (0.0, 1.0);
    for k in 0..c {
        sum += term;
        term *= a / (k + 1) as f64;
    }
    let top = term / (1.0 - rho);
    let p_wait = top / (sum + top);
    p_wait / (c as f64 * mu - lambda)
}

/// Runs both checks with `n` requests each at utilisation `rho`.
pub async fn run_checks(n: usize, rho: f64, bar: &ProgressBar) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    // M/M/c: 4 slots, mean service 20 steps (0.2 s), one node.
    let (c, mean_tokens) = (4u32, 20.0);
    let mu = 1.0 / (mean_tokens * STEP_S);
    let lambda = rho * c as f64 * mu;
    let plan = poisson(n, lambda, 7, |rng| {
        // Geometric with mean 20: the discrete exponential.
        let p = 1.0 / mean_tokens;
        ((1.0 - rng.f64()).ln() / (1.0 - p).ln()).floor() as u32 + 1
    });
    let s = scenario(1, c);
    let r = run::run(&s, &plan, Strategy::L7(Pick::RoundRobin), bar).await?;
    out.push(Check {
        name: format!("M/M/{c} (one node, {c} slots), rho {rho}: Erlang C"),
        measured_s: mean_wait(&r),
        theory_s: erlang_c_wait(c, lambda, mu),
        requests: n,
        service_s: mean_service(&r),
        configured_service_s: (mean_tokens - 1.0) * STEP_S,
    });
    // M/D/1 per node: 4 nodes of one slot, 20 steps each, random routing.
    let (nodes, tokens) = (4u32, 20u32);
    let service = tokens as f64 * STEP_S;
    let lambda = rho * nodes as f64 / service;
    let plan = poisson(n, lambda, 11, |_| tokens);
    let s = scenario(nodes, 1);
    let r = run::run(&s, &plan, Strategy::L7(Pick::Random), bar).await?;
    out.push(Check {
        name: format!("{nodes} x M/D/1 (random routing), rho {rho}: Pollaczek-Khinchine"),
        measured_s: mean_wait(&r),
        theory_s: rho * service / (2.0 * (1.0 - rho)),
        requests: n,
        service_s: mean_service(&r),
        configured_service_s: (tokens - 1) as f64 * STEP_S,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_matches_known_values() {
        // One server: M/M/1's rho / (mu - lambda).
        let w = erlang_c_wait(1, 0.5, 1.0);
        assert!((w - 1.0).abs() < 1e-12, "{w}");
        // c = 2, a = 1: P(wait) = 1/3, Wq = 1/3 / (2 - 1).
        let w = erlang_c_wait(2, 1.0, 1.0);
        assert!((w - 1.0 / 3.0).abs() < 1e-12, "{w}");
    }
}
