//! `cargo xtask bench maglev`: time to build a weighted Maglev ring of
//! M = 65537 slots for 10, 100 and 1000 backends, and the disruption each
//! change causes against the ideal.

use std::time::Instant;

use balancer::lb::maglev::{RingMember, build, disruption};

const M: u32 = 65_537;
const ROUNDS: usize = 7;

fn members(n: usize, weight: impl Fn(usize) -> u32) -> Vec<RingMember> {
    (0..n)
        .map(|i| RingMember {
            id: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            weight: weight(i),
            value: i as u32,
        })
        .collect()
}

fn time_build(ms: &[RingMember]) -> (f64, f64) {
    let mut t: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t0 = Instant::now();
            let r = build(ms, M).expect("build");
            std::hint::black_box(r);
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    (t[0], t[ROUNDS / 2])
}

fn main() {
    println!("bench maglev: ring of M = {M} slots, {ROUNDS} builds each, min and median\n");
    println!(
        "{:>6}  {:<14} {:>9} {:>11}   {:>10} {:>10} {:>12}",
        "N", "weights", "min ms", "median ms", "add/ideal", "rm/ideal", "reweight"
    );
    for n in [10usize, 100, 1000] {
        for (label, w) in [
            ("equal", Box::new(|_| 1u32) as Box<dyn Fn(usize) -> u32>),
            ("mixed 1..=8", Box::new(|i| 1 + (i % 8) as u32)),
        ] {
            let ms = members(n, &w);
            let (min, med) = time_build(&ms);
            let base = build(&ms, M).expect("build");
            let ideal_add = 1.0 / (n + 1) as f64;
            let ideal_rm = 1.0 / n as f64;
            let mut more = members(n + 1, &w);
            more[n].weight = w(n);
            let added = disruption(&base, &build(&more, M).expect("build"));
            let removed = disruption(&base, &build(&ms[1..], M).expect("build"));
            let mut rw = ms.clone();
            rw[0].weight *= 2;
            let reweighted = disruption(&base, &build(&rw, M).expect("build"));
            println!(
                "{n:>6}  {label:<14} {min:>9.2} {med:>11.2}   {:>10.2} {:>10.2} {:>11.4}%",
                added / ideal_add,
                removed / ideal_rm,
                reweighted * 100.0
            );
        }
    }
    println!("\nadd/ideal and rm/ideal: fraction of slots that changed owner, over the ideal 1/N");
    println!("reweight: slots that moved when one backend's weight doubled");
}
