//! The scorer's behaviour over many ticks: load, stability, recovery, fail-open.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{Input, Scorer, ScoringPolicy};
use crate::control::telemetry::Signals;

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
        unknown: None,
    }
}

fn run(s: &mut Scorer, p: &ScoringPolicy, inputs: &[Input], ticks: usize) -> Vec<u32> {
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

fn no_ramp() -> ScoringPolicy {
    ScoringPolicy {
        slow_start_s: 0.0,
        ..ScoringPolicy::default()
    }
}

#[test]
fn loaded_backend_gets_less() {
    let p = no_ramp();
    let mut s = Scorer::default();
    let w = run(&mut s, &p, &[input(1, 0.0, 0.2), input(2, 20.0, 0.95)], 12);
    assert!(w[0] > 900 && w[1] < 150, "{w:?}");
}

/// A backend whose TCP path retransmits 3% of its segments (past the 2%
/// target) is saturated by that alone, however idle it is otherwise; a
/// trace of loss (0.1%) costs little.
#[test]
fn a_lossy_path_loses_its_share() {
    let p = no_ramp();
    let mut s = Scorer::default();
    let with_loss = |addr, share| {
        let mut i = input(addr, 0.0, 0.2);
        if let Some(sig) = &mut i.signals {
            sig.tcp_retrans = Some(share);
        }
        i
    };
    let w = run(&mut s, &p, &[with_loss(1, 0.001), with_loss(2, 0.03)], 12);
    assert!(w[0] > 900 && w[1] < 100, "{w:?}");
    let mut s = Scorer::default();
    let w = run(&mut s, &p, &[with_loss(1, 0.001), input(2, 0.0, 0.2)], 12);
    assert!(w[0] > 900, "{w:?}");
    // A clean path does not dilute the load: a busy backend with no
    // retransmits weighs what it weighed without the figure.
    let busy = |addr, share: Option<f64>| {
        let mut i = input(addr, 6.0, 0.6);
        if let Some(sig) = &mut i.signals {
            sig.tcp_retrans = share;
        }
        i
    };
    let (mut a, mut b) = (Scorer::default(), Scorer::default());
    let without = run(&mut a, &p, &[busy(1, None), input(2, 0.0, 0.1)], 12);
    let with = run(&mut b, &p, &[busy(1, Some(0.0)), input(2, 0.0, 0.1)], 12);
    assert_eq!(without, with);
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
    let p = ScoringPolicy {
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
    let p = ScoringPolicy {
        slow_start_s: 10.0,
        ..ScoringPolicy::default()
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

/// A backend whose scrape succeeded but held no recognised signal (empty
/// `/metrics`, wrong kind) is not idle: it never out-weighs a healthy one,
/// nor its hint's share, and its why says so by name.
#[test]
fn no_recognised_signal_counts_as_saturated() {
    let p = no_ramp();
    // Scraped by the autoweighter: no recognised metric of its kind.
    let mut a = input(1, 0.0, 0.0);
    a.signals = Some(Signals::default());
    a.unknown = Some("no recognised signal (kind vllm)".into());
    a.hint = 3.0;
    // Signals, but none the formula uses (the scorer finds out itself).
    let mut c = input(3, 0.0, 0.0);
    c.signals = Some(Signals::default());
    let b = input(2, 0.5, 0.1);
    let mut s = Scorer::default();
    let inputs = [a.clone(), b.clone(), c.clone()];
    run(&mut s, &p, &inputs, 10);
    let (d, _) = s.score(&p, &inputs, Instant::now());
    let total: u32 = d.iter().map(|d| d.weight).sum();
    let share = |w: u32| w as f64 / total.max(1) as f64;
    assert!(d[0].weight <= d[1].weight, "{d:?}");
    assert!(d[2].weight <= d[1].weight, "{d:?}");
    assert!(share(d[0].weight) <= 3.0 / 5.0 + 1e-9, "{d:?}");
    assert!(share(d[2].weight) <= 1.0 / 5.0 + 1e-9, "{d:?}");
    assert_eq!(d[0].load, 1.0);
    assert!(d[0].unknown && d[2].unknown && !d[1].unknown);
    assert!(
        d[0].why
            .contains("no recognised signal (kind vllm): treated as saturated"),
        "{}",
        d[0].why
    );
    assert!(d[2].why.contains("treated as saturated"), "{}", d[2].why);
    // Alone in its pool with another unknown one, it keeps its hint's share.
    let mut s = Scorer::default();
    let w = run(&mut s, &p, &[a, c], 10);
    assert!((w[0] as f64 / w[1] as f64 - 3.0).abs() < 0.2, "{w:?}");
}

/// A backend without endpoints has nothing to recognise: it weighs on its
/// hint as before, not as unknown.
#[test]
fn no_endpoints_is_not_unknown() {
    let p = no_ramp();
    let mut a = input(1, 0.0, 0.0);
    a.signals = None;
    let mut s = Scorer::default();
    let (d, _) = s.score(&p, &[a], Instant::now());
    assert!(!d[0].unknown && d[0].load == 0.0, "{d:?}");
}
