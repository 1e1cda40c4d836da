//! The fleet bench's harness, run quick on every shipped scenario: the plan
//! is the same for every strategy, every request is answered with exactly
//! the tokens it asked for, and round-robin spreads requests evenly.

use std::path::PathBuf;

use balancer_tests::fleet::{
    plan, report,
    run::{self, Strategy},
    scenario::Scenario,
};
use indicatif::ProgressBar;

fn scenarios() -> Vec<PathBuf> {
    let dir = balancer_tests::scenarios_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no scenario in {}", dir.display());
    v
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_scenario_loads_and_plans_its_target_ratio() {
    for f in scenarios() {
        let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        let p = plan::plan(&s).unwrap();
        assert_eq!(p.requests.len(), s.requests(), "{}", f.display());
        // Arrivals are drawn from the trace, so the ratio is near the
        // target, not on it; the bench prints both.
        let r = p.achieved_par / s.shape.peak_to_average;
        assert!(
            (0.6..1.5).contains(&r),
            "{}: {} for {}",
            f.display(),
            p.achieved_par,
            s.shape.peak_to_average
        );
        assert!(p.requests.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        assert!(
            p.requests
                .iter()
                .all(|q| q.at_s >= 0.0 && q.at_s <= s.duration_s)
        );
    }
}

/// Every strategy, the L4 ones through the testbed's VIP and XDP.
#[test]
fn quick_runs_answer_every_request_in_full() {
    balancer_tests::require_root();
    let rt = runtime();
    let f = &scenarios()[0];
    let s = Scenario::load(f).unwrap().quick();
    let p = plan::plan(&s).unwrap();
    assert!(p.requests.len() >= 20, "{}", p.requests.len());
    for (name, st) in Strategy::ALL {
        let r = rt
            .block_on(run::run(&s, &p, st, &ProgressBar::hidden()))
            .unwrap();
        for o in &r.outcomes {
            assert_eq!(o.error, None, "{name}: request {}", o.index);
            assert_eq!(
                o.tokens, p.requests[o.index].output_tokens,
                "{name}: request {}",
                o.index
            );
            assert!(o.ttft_s.unwrap() <= o.e2e_s.unwrap());
        }
        let fig = report::figures(&s, &p, &r);
        assert_eq!(fig.failed, 0);
        assert!(
            fig.busy_gpu_s > 0.0 && fig.busy_gpu_s <= fig.provisioned_gpu_s,
            "{fig:?}"
        );
        let counts: Vec<usize> = fig.nodes.iter().map(|n| n.requests).collect();
        assert_eq!(
            counts.iter().sum::<usize>(),
            p.requests.len(),
            "{name}: {counts:?}"
        );
        if st == Strategy::L7(balancer::cache::pick::Pick::RoundRobin) {
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "round-robin: {counts:?}");
        }
        let table = report::table(&s, &p, &[fig]);
        assert!(table.contains(name), "{table}");
    }
}

/// `--parallel`: strategies prepared apart, then sent from one start time,
/// each on its own fleet; every request of each is answered.
#[test]
fn strategies_run_at_once_on_their_own_fleets() {
    balancer_tests::require_root();
    let rt = runtime();
    let s = Scenario::load(&scenarios()[0]).unwrap().quick();
    let p = plan::plan(&s).unwrap();
    let picked = ["least-request", "xdp-static"].map(|n| Strategy::parse(n).unwrap());
    let runs = rt.block_on(async {
        let mut ready = Vec::new();
        for st in picked {
            ready.push(run::prepare(&s, st).await.unwrap());
        }
        let t0 = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        let bar = ProgressBar::hidden();
        let sends = ready.into_iter().map(|r| r.send(&s, &p, t0, &bar));
        futures_util::future::join_all(sends).await
    });
    for (st, r) in picked.iter().zip(runs) {
        let r = r.unwrap();
        assert_eq!(r.strategy, *st);
        assert_eq!(r.outcomes.len(), p.requests.len());
        let names: Vec<&str> = r.nodes.iter().map(|n| n.0.as_str()).collect();
        for o in &r.outcomes {
            assert_eq!(o.error, None, "{}: request {}", st.name(), o.index);
            assert!(names.contains(&o.backend.as_str()), "{}", o.backend);
        }
        // Every node's own metrics saw the requests the clients say it answered.
        let answered: u64 = r.nodes.iter().map(|n| n.2.counters.finished).sum();
        assert_eq!(answered as usize, p.requests.len(), "{}", st.name());
    }
}

/// A mixed workload (vision, speech, recommendation, forecasting, video
/// beside the LLM): every request of every kind is answered, through the
/// gateway's route and through XDP alike.
#[test]
fn a_mixed_workload_is_answered_through_l7_and_l4() {
    balancer_tests::require_root();
    let rt = runtime();
    let f = balancer_tests::scenarios_dir().join("10-mixed-platform.toml");
    let s = Scenario::load(&f).unwrap().quick();
    let p = plan::plan(&s).unwrap();
    let tasks = p.requests.iter().filter(|r| r.task.is_some()).count();
    assert!(
        tasks >= 5 && tasks < p.requests.len(),
        "{tasks} of {}",
        p.requests.len()
    );
    for name in ["least-request", "xdp-static"] {
        let st = Strategy::parse(name).unwrap();
        let r = rt
            .block_on(run::run(&s, &p, st, &ProgressBar::hidden()))
            .unwrap();
        let names: Vec<&str> = r.nodes.iter().map(|n| n.0.as_str()).collect();
        for o in &r.outcomes {
            let q = &p.requests[o.index];
            assert_eq!(o.error, None, "{name}: request {} ({:?})", o.index, q.task);
            assert_eq!(o.tokens, q.output_tokens, "{name}: request {}", o.index);
            assert!(names.contains(&o.backend.as_str()), "{}", o.backend);
        }
        // Only LLM requests count in vLLM's own success counter.
        let answered: u64 = r.nodes.iter().map(|n| n.2.counters.finished).sum();
        assert_eq!(answered as usize, p.requests.len() - tasks, "{name}");
        // Each model's latency has its own row; TTFT is the LLM requests'.
        let fig = report::figures(&s, &p, &r);
        let planned = |m: &str| {
            p.requests
                .iter()
                .filter(|q| q.task.as_ref().is_some_and(|t| t.model == m))
                .count()
        };
        for m in &fig.models {
            assert_eq!(
                (m.requests, m.failed),
                (planned(&m.model), 0),
                "{}",
                m.model
            );
        }
        assert!(fig.busy_gpu_s > 0.0);
        let table = report::table(&s, &p, &[fig]);
        assert!(
            table.contains("the other models' e2e p50/p99") && table.contains("whisper-large-v3"),
            "{table}"
        );
    }
}
