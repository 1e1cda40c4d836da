//! A run's figures, their ratios to round-robin, and the table and JSON
//! they are written as.

use std::fmt::Write as _;

use serde::Serialize;

use super::{plan::Plan, run::Run, scenario::Scenario};

/// p50, p90, p99 of a sample, seconds (`None` when empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

fn quantiles(mut v: Vec<f64>) -> Quantiles {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        (!v.is_empty()).then(|| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1])
    };
    Quantiles {
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
    }
}

/// One tier's service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierFigures {
    /// The tier.
    pub tier: String,
    /// Requests of the tier.
    pub requests: usize,
    /// Share of them answered within both objectives.
    pub attainment: f64,
    /// Of them, shed by the gateway (429).
    pub shed: usize,
    /// Their p99 time to first token, of those answered, seconds.
    pub ttft_p99_s: Option<f64>,
}

/// One node's share of the work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeFigures {
    /// Name.
    pub node: String,
    /// Hardware class.
    pub class: String,
    /// Requests it answered.
    pub requests: usize,
    /// Seconds it was busy.
    pub busy_s: f64,
    /// Preemptions.
    pub preemptions: u64,
}

/// One non-LLM model's service (requests of the scenario's mix).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelFigures {
    /// The model.
    pub model: String,
    /// Its requests.
    pub requests: usize,
    /// End to end, answered ones.
    pub e2e: Quantiles,
    /// Failed or timed out.
    pub failed: usize,
}

/// Everything the bench reports for one strategy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// The strategy.
    pub strategy: String,
    /// Time to first token (LLM requests).
    pub ttft: Quantiles,
    /// End to end (LLM requests).
    pub e2e: Quantiles,
    /// The non-LLM models of the mix, by name.
    pub models: Vec<ModelFigures>,
    /// Per tier.
    pub tiers: Vec<TierFigures>,
    /// Output tokens a second of requests that met their tier's objectives.
    pub goodput_tps: f64,
    /// Requests shed by the gateway (429, with the scenario's `[route]`
    /// shedding).
    pub shed: usize,
    /// Requests that failed or timed out.
    pub failed: usize,
    /// Prompt tokens found in the nodes' prefix caches, of those looked up.
    pub prefix_hit_rate: f64,
    /// Node-seconds spent computing.
    pub busy_gpu_s: f64,
    /// Node-seconds provisioned (nodes x makespan).
    pub provisioned_gpu_s: f64,
    /// First send to last answer, seconds.
    pub makespan_s: f64,
    /// CPU-seconds the machine was busy during the run (every process).
    pub cpu_s: f64,
    /// The machine's cores.
    pub cores: usize,
    /// Per node.
    pub nodes: Vec<NodeFigures>,
    /// The first few errors, for a reader to see what failed.
    pub errors: Vec<String>,
    /// The gateway's cost model against what happened, when it predicted.
    pub prediction: Option<super::run::PredictionError>,
}

/// Works out a run's figures.
pub fn figures(s: &Scenario, plan: &Plan, run: &Run) -> Figures {
    let ok = |o: &&super::run::Outcome| o.error.is_none() && !o.shed;
    let llm = |o: &&super::run::Outcome| plan.requests[o.index].task.is_none();
    let ttft = quantiles(
        run.outcomes
            .iter()
            .filter(ok)
            .filter(llm)
            .filter_map(|o| o.ttft_s)
            .collect(),
    );
    let e2e = quantiles(
        run.outcomes
            .iter()
            .filter(ok)
            .filter(llm)
            .filter_map(|o| o.e2e_s)
            .collect(),
    );
    let models = s
        .workload
        .mix
        .iter()
        .map(|m| {
            let mine: Vec<_> = run
                .outcomes
                .iter()
                .filter(|o| {
                    plan.requests[o.index]
                        .task
                        .as_ref()
                        .is_some_and(|t| t.model == m.model)
                })
                .collect();
            ModelFigures {
                model: m.model.clone(),
                requests: mine.len(),
                e2e: quantiles(
                    mine.iter()
                        .copied()
                        .filter(ok)
                        .filter_map(|o| o.e2e_s)
                        .collect(),
                ),
                failed: mine.iter().filter(|o| o.error.is_some()).count(),
            }
        })
        .collect();
    let mut good_tokens = 0u64;
    let tiers = s
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mine: Vec<_> = run
                .outcomes
                .iter()
                .filter(|o| plan.requests[o.index].tier == i)
                .collect();
            let met: Vec<_> = mine
                .iter()
                .filter(|o| {
                    o.error.is_none()
                        && o.ttft_s.is_some_and(|x| x <= t.ttft_s)
                        && o.e2e_s.is_some_and(|x| x <= t.e2e_s)
                })
                .collect();
            good_tokens += met.iter().map(|o| o.tokens as u64).sum::<u64>();
            let answered = mine
                .iter()
                .filter(|o| o.error.is_none() && !o.shed)
                .filter_map(|o| o.ttft_s)
                .collect();
            TierFigures {
                tier: t.name.clone(),
                requests: mine.len(),
                attainment: met.len() as f64 / mine.len().max(1) as f64,
                shed: mine.iter().filter(|o| o.shed).count(),
                ttft_p99_s: quantiles(answered).p99,
            }
        })
        .collect();
    let (q, h): (u64, u64) = run
        .nodes
        .iter()
        .map(|(_, _, g)| (g.prefix_queries, g.prefix_hits))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let nodes = run
        .nodes
        .iter()
        .map(|(name, class, g)| NodeFigures {
            node: name.clone(),
            class: class.clone(),
            requests: run.outcomes.iter().filter(|o| &o.backend == name).count(),
            busy_s: g.busy_secs,
            preemptions: g.counters.preemptions,
        })
        .collect();
    let mut errors: Vec<String> = run
        .outcomes
        .iter()
        .filter_map(|o| o.error.clone())
        .collect();
    errors.dedup();
    errors.truncate(5);
    Figures {
        strategy: run.strategy.name().to_string(),
        ttft,
        e2e,
        models,
        tiers,
        goodput_tps: good_tokens as f64 / run.makespan_s.max(1e-9),
        shed: run.outcomes.iter().filter(|o| o.shed).count(),
        failed: run.outcomes.iter().filter(|o| o.error.is_some()).count(),
        prefix_hit_rate: h as f64 / q.max(1) as f64,
        busy_gpu_s: run.nodes.iter().map(|(_, _, g)| g.busy_secs).sum(),
        provisioned_gpu_s: run.nodes.len() as f64 * run.makespan_s,
        makespan_s: run.makespan_s,
        cpu_s: run.cpu_s,
        cores: run.cores,
        nodes,
        errors,
        prediction: run.prediction,
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3}"))
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    }
}

/// The aligned table of every strategy, with ratios to the first
/// (round-robin when it ran).
pub fn table(s: &Scenario, plan: &Plan, all: &[Figures]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}: {} requests over {:.0} s (trace time x{:.2}), peak/average {:.1} (target {:.1})",
        s.name,
        plan.requests.len(),
        s.duration_s,
        plan.compression,
        plan.achieved_par,
        s.shape.peak_to_average
    );
    let base = all.first();
    let mut header = vec![
        "strategy".to_string(),
        "TTFT p50".into(),
        "p90".into(),
        "p99".into(),
        "e2e p50".into(),
        "p90".into(),
        "p99".into(),
    ];
    for t in &s.tiers {
        header.push(format!("SLO {}", t.name));
    }
    header.extend(
        [
            "goodput tok/s",
            "shed",
            "failed",
            "prefix hit",
            "busy/prov GPU-s",
            "p99 TTFT vs first",
            "goodput vs first",
        ]
        .map(String::from),
    );
    let mut rows = vec![header];
    for f in all {
        let mut r = vec![
            f.strategy.clone(),
            secs(f.ttft.p50),
            secs(f.ttft.p90),
            secs(f.ttft.p99),
            secs(f.e2e.p50),
            secs(f.e2e.p90),
            secs(f.e2e.p99),
        ];
        for t in &f.tiers {
            r.push(if t.requests == 0 {
                "-".into()
            } else {
                format!("{:.1}%", 100.0 * t.attainment)
            });
        }
        r.push(format!("{:.0}", f.goodput_tps));
        r.push(f.shed.to_string());
        r.push(f.failed.to_string());
        r.push(format!("{:.1}%", 100.0 * f.prefix_hit_rate));
        r.push(format!("{:.0}/{:.0}", f.busy_gpu_s, f.provisioned_gpu_s));
        r.push(ratio(f.ttft.p99, base.and_then(|b| b.ttft.p99)));
        r.push(ratio(Some(f.goodput_tps), base.map(|b| b.goodput_tps)));
        rows.push(r);
    }
    o.push_str(&aligned(&rows));
    o.push_str("  per tier, p99 TTFT s of those answered (and shed, when any):\n");
    let mut header = vec!["strategy".to_string()];
    header.extend(s.tiers.iter().map(|t| t.name.clone()));
    let mut rows = vec![header];
    for f in all {
        let mut r = vec![f.strategy.clone()];
        for t in &f.tiers {
            let shed = if t.shed > 0 {
                format!(" ({} shed)", t.shed)
            } else {
                String::new()
            };
            r.push(format!("{}{shed}", secs(t.ttft_p99_s)));
        }
        rows.push(r);
    }
    o.push_str(&aligned(&rows));
    if all.iter().any(|f| !f.models.is_empty()) {
        o.push_str(
            "  TTFT and e2e above are the LLM requests'; the other models' e2e p50/p99, s:\n",
        );
        let mut header = vec!["model".to_string(), "requests".into()];
        header.extend(all.iter().map(|f| f.strategy.clone()));
        let mut rows = vec![header];
        for (i, m) in all[0].models.iter().enumerate() {
            let mut r = vec![m.model.clone(), m.requests.to_string()];
            for f in all {
                r.push(f.models.get(i).map_or("-".into(), |x| {
                    let failed = if x.failed > 0 {
                        format!(" ({} failed)", x.failed)
                    } else {
                        String::new()
                    };
                    format!("{}/{}{failed}", secs(x.e2e.p50), secs(x.e2e.p99))
                }));
            }
            rows.push(r);
        }
        o.push_str(&aligned(&rows));
    }
    for f in all {
        if let Some(p) = &f.prediction {
            let _ = writeln!(
                o,
                "  {}'s cost model: TTFT MAPE {:.1}% over {} predictions, end to end {:.1}% over {}",
                f.strategy,
                100.0 * p.ttft_mape,
                p.ttft_n,
                100.0 * p.e2e_mape,
                p.e2e_n
            );
        }
    }
    o
}

/// Repeated runs of one strategy as one: every run's requests in one
/// sample (so quantiles are over all of them), their times and node
/// counters summed. `None` for no run.
pub fn pool(runs: &[Run]) -> Option<Run> {
    let first = runs.first()?;
    let mut out = first.clone();
    for r in &runs[1..] {
        out.outcomes.extend(r.outcomes.iter().cloned());
        out.makespan_s += r.makespan_s;
        out.cpu_s += r.cpu_s;
        out.prediction = match (out.prediction, r.prediction) {
            (Some(a), Some(b)) => Some(a.merge(b)),
            (a, b) => a.or(b),
        };
        for (name, _, g) in &r.nodes {
            if let Some((_, _, p)) = out.nodes.iter_mut().find(|n| &n.0 == name) {
                p.counters.prompt_tokens += g.counters.prompt_tokens;
                p.counters.generation_tokens += g.counters.generation_tokens;
                p.counters.finished += g.counters.finished;
                p.counters.preemptions += g.counters.preemptions;
                p.prefix_queries += g.prefix_queries;
                p.prefix_hits += g.prefix_hits;
                p.busy_secs += g.busy_secs;
            }
        }
    }
    Some(out)
}

/// How far repeated runs of one strategy lie apart: p99 TTFT and e2e of
/// each run, and the largest over the smallest.
pub fn spread(runs: &[Figures]) -> String {
    let list = |get: fn(&Figures) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(get).collect();
        let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
        let each: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
        format!("{} s (max/min {:.2}x)", each.join(", "), hi / lo)
    };
    format!(
        "{} repeated: p99 TTFT {}; p99 e2e {}",
        runs.first().map_or("", |f| f.strategy.as_str()),
        list(|f| f.ttft.p99),
        list(|f| f.e2e.p99)
    )
}

/// Rows as columns padded to their widest cell; the first column left.
pub fn aligned(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut o = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, x)| {
                if c == 0 {
                    format!("{x:<w$}", w = width[c])
                } else {
                    format!("{x:>w$}", w = width[c])
                }
            })
            .collect();
        let _ = writeln!(o, "{}", cells.join("  ").trim_end());
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let q = quantiles((1..=100).map(f64::from).collect());
        assert_eq!((q.p50, q.p90, q.p99), (Some(50.0), Some(90.0), Some(99.0)));
        assert_eq!(quantiles(vec![]).p50, None);
    }

    fn run(ttfts: &[f64], busy: f64) -> Run {
        use balancer::emulate::node::Gauges;
        Run {
            strategy: super::super::run::Strategy::ALL[0].1,
            outcomes: ttfts
                .iter()
                .enumerate()
                .map(|(i, t)| super::super::run::Outcome {
                    index: i,
                    sent_s: 0.0,
                    ttft_s: Some(*t),
                    e2e_s: Some(*t),
                    tokens: 1,
                    backend: "n".into(),
                    error: None,
                    shed: false,
                })
                .collect(),
            nodes: vec![(
                "n".into(),
                "l4".into(),
                Gauges {
                    busy_secs: busy,
                    ..Gauges::default()
                },
            )],
            makespan_s: 10.0,
            cpu_s: 1.0,
            cores: 2,
            prediction: None,
        }
    }

    #[test]
    fn pooled_runs_are_one_sample() {
        let a = run(&[1.0, 2.0], 3.0);
        let b = run(&[3.0, 4.0], 4.0);
        let p = pool(&[a, b]).unwrap();
        let t: Vec<f64> = p.outcomes.iter().filter_map(|o| o.ttft_s).collect();
        assert_eq!(t, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            (p.makespan_s, p.cpu_s, p.nodes[0].2.busy_secs),
            (20.0, 2.0, 7.0)
        );
        assert_eq!(quantiles(t).p99, Some(4.0));
        assert!(pool(&[]).is_none());
    }

    #[test]
    fn tables_align() {
        let t = aligned(&[
            vec!["a".into(), "1".into()],
            vec!["long".into(), "22".into()],
        ]);
        assert_eq!(t, "a      1\nlong  22\n");
    }
}
