//! Is the instrument honest? Two runs whose answer queueing theory knows,
//! measured through the same harness (open-loop client, gateway route,
//! emulated nodes, real timers) as every scenario.
//!
//! - **Erlang C.** Nodes with `c` batch slots, one decode step of fixed
//!   length whatever the batch, and exponentially distributed output
//!   lengths: each node is `c` parallel servers behind one FIFO queue with
//!   exponential service, M/M/c. The mean wait must match Erlang C.
//! - **A fleet of identical fixed-service backends.** Nodes of one slot,
//!   every request the same length, routed at random: each node is M/D/1
//!   (Poisson splitting), so the mean wait must match Pollaczek-Khinchine,
//!   `rho S / (2 (1 - rho))` — half of what Erlang C would say for
//!   exponential service, which is why Erlang C is not the reference here.
//!
//! Theory takes what the run had: the plan's arrival rate, the service time
//! measured (first token to last), and for random routing each node's own
//! share of the arrivals (the split is uneven, and waits are convex in the
//! load).
//!
//! The wait is a request's time to first token less that of an unqueued
//! one: the 10th percentile of the run, since most requests (60-70% at the
//! load run here) find a free slot. That takes off the HTTP path and the
//! step that computes the first token, and nothing else. What remains
//! unmodelled: a request that finds a free slot while the node is mid-step
//! waits for the step's end (half a 10 ms step on average, in the M/M/c
//! run only, against waits near 100 ms; a one-slot node is either idle or
//! has no free slot).
//!
//! Queue waits average slowly: a sample of a few thousand requests can sit
//! 20% from the expectation (measured here: the live node matched the
//! FIFO recursion on its own sample within 3% while the sample sat 22%
//! above Pollaczek-Khinchine). So each check also reports the wait that
//! FIFO service implies for the very sample that ran (Kiefer-Wolfowitz on
//! the actual send and service times), which isolates the instrument from
//! sampling noise. Each check runs several independent nodes behind
//! random routing (Poisson splitting keeps each one M/M/c or M/D/1), so
//! the default 12,000 requests average over many independent queues.

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
    /// Mean wait a FIFO queue would give this very sample (its send and
    /// service times), seconds.
    pub sample_s: f64,
    /// Requests measured.
    pub requests: usize,
    /// Mean service time measured (first token to last), seconds.
    pub service_s: f64,
    /// Mean service time the model is configured for, seconds.
    pub configured_service_s: f64,
    /// Per node: requests answered and the fraction of the run it was busy.
    pub nodes: Vec<(usize, f64)>,
}

fn per_node(run: &run::Run) -> Vec<(usize, f64)> {
    run.nodes
        .iter()
        .map(|(name, _, g)| {
            let n = run.outcomes.iter().filter(|o| &o.backend == name).count();
            (n, g.busy_secs / run.makespan_s.max(1e-9))
        })
        .collect()
}

impl Check {
    /// Measured over theory.
    pub fn ratio(&self) -> f64 {
        self.measured_s / self.theory_s
    }

    /// Measured over what the sample implies.
    pub fn sample_ratio(&self) -> f64 {
        self.measured_s / self.sample_s
    }
}

/// One decode step, seconds: long against the timer's 1 ms grain and the
/// scheduling jitter of a loaded machine (2 ms steps, tried, ran 10% long
/// while the VM suite shared the cores).
const STEP_S: f64 = 0.010;

fn class(slots: u32) -> Class {
    Class {
        name: "queue".into(),
        source: "a synthetic node: one 2 ms step whatever the batch".into(),
        prefill_tokens_per_s: 1e9,
        decode_ms_base: STEP_S * 1e3,
        decode_ms_per_seq: 0.0,
        kv_tokens: 1 << 24,
        max_seqs: slots,
        block_tokens: 16,
        max_step_tokens: 1 << 20,
        load_s: 0.0,
    }
}

fn scenario(nodes: u32, slots: u32) -> Scenario {
    Scenario {
        route: Default::default(),
        name: "queueing check".into(),
        duration_s: 1.0,
        seed: 1,
        fleet: Fleet {
            profile: Profile {
                classes: vec![class(slots)],
                lora: Default::default(),
                models: Vec::new(),
            },
            profile_path: None,
            model: "m".into(),
            nodes: vec![("queue".into(), nodes)],
        },
        workload: Workload {
            trace: Default::default(),
            mean_rps: 1.0,
            max_prompt_tokens: 1,
            max_output_tokens: 1 << 15,
            mix: Vec::new(),
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
                task: None,
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

/// The FIFO wait each request of `run` would have had with `servers`
/// servers, given its actual send time and service time (Kiefer-Wolfowitz;
/// Lindley's recursion for one server), averaged: the queueing the sample
/// itself implies, free of sampling noise.
fn sample_wait(outcomes: &[&run::Outcome], servers: usize, extra: f64) -> f64 {
    let mut jobs: Vec<(f64, f64)> = outcomes
        .iter()
        .filter_map(|o| Some((o.sent_s, o.e2e_s? - o.ttft_s? + extra)))
        .collect();
    jobs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut free = vec![0.0f64; servers.max(1)];
    let mut total = 0.0;
    for (at, service) in &jobs {
        // The server that frees first takes the next request in line.
        let (i, f) = free
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let start = f.max(*at);
        total += start - at;
        free[i] = start + service;
    }
    total / jobs.len().max(1) as f64
}

/// How output lengths are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Service {
    /// Geometric with this mean: the discrete exponential (M/M/c).
    Exponential(f64),
    /// Always this many tokens (M/D/1).
    Fixed(u32),
}

/// `nodes` nodes of `slots` slots behind random routing, Poisson arrivals
/// at utilisation `rho`: each node is its own M/M/c or M/D/1 queue (Poisson
/// splitting), so averaging over several nodes gives more independent
/// samples in the same time.
async fn check(
    nodes: u32,
    slots: u32,
    service: Service,
    rho: f64,
    n: usize,
    seed: u64,
    bar: &ProgressBar,
) -> Result<Check> {
    let steps = match service {
        Service::Exponential(mean) => mean,
        Service::Fixed(t) => t as f64 - 1.0,
    };
    let lambda = rho * (nodes * slots) as f64 / (steps * STEP_S);
    let plan = poisson(n, lambda, seed, |rng| match service {
        Service::Exponential(mean) => {
            let p = 1.0 / mean;
            ((1.0 - rng.f64()).ln() / (1.0 - p).ln()).floor() as u32 + 1
        }
        Service::Fixed(t) => t,
    });
    let s = scenario(nodes, slots);
    let r = run::run(&s, &plan, Strategy::L7(Pick::Random), bar).await?;
    // Theory from what the run had: each node's own arrival rate (the
    // random split is uneven, and waits are convex in the load) and the
    // service time measured. A slot is held from the step that computes a
    // request's first token: with other sequences decoding, that step is a
    // full one, so it is part of the service; alone on an idle one-slot
    // node it is a prefill of one token, which takes no time.
    let extra = if slots > 1 { STEP_S } else { 0.0 };
    let service_s = mean_service(&r) + extra;
    let span = plan.requests.last().map_or(1.0, |p| p.at_s);
    let (mut theory, mut sample) = (0.0, 0.0);
    for (name, _, _) in &r.nodes {
        let mine: Vec<&run::Outcome> = r.outcomes.iter().filter(|o| &o.backend == name).collect();
        let k = mine.len() as f64;
        let lambda_i = k / span;
        theory += k * match service {
            Service::Exponential(_) => erlang_c_wait(slots, lambda_i, 1.0 / service_s),
            Service::Fixed(_) => {
                let rho_i = lambda_i * service_s;
                rho_i * service_s / (2.0 * (1.0 - rho_i))
            }
        };
        sample += k * sample_wait(&mine, slots as usize, extra);
    }
    let (queue, reference) = match service {
        Service::Exponential(_) => (format!("M/M/{slots}"), "Erlang C"),
        Service::Fixed(_) => ("M/D/1".to_string(), "Pollaczek-Khinchine"),
    };
    Ok(Check {
        name: format!("{nodes} x {queue} (random routing), rho {rho}: {reference}"),
        measured_s: mean_wait(&r),
        theory_s: theory / n as f64,
        sample_s: sample / n as f64,
        requests: n,
        service_s,
        configured_service_s: steps * STEP_S,
        nodes: per_node(&r),
    })
}

/// Runs both checks with `n` requests each at utilisation `rho`: eight
/// M/M/4 nodes with a mean of 60 steps a request (long against the half
/// step a request that finds a free slot mid-step waits, which theory
/// leaves out), and sixteen M/D/1 nodes of 19 steps.
pub async fn run_checks(n: usize, rho: f64, bar: &ProgressBar) -> Result<Vec<Check>> {
    Ok(vec![
        check(8, 4, Service::Exponential(60.0), rho, n, 7, bar).await?,
        check(16, 1, Service::Fixed(20), rho, n, 11, bar).await?,
    ])
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
