//! The selectors side by side: shares follow weights, weight 0 gets
//! nothing, and each one's own rule holds.

use std::{collections::HashMap, net::SocketAddr, sync::atomic::Ordering};

use super::{InFlight, Pick, pick, pool};

fn shares(p: Pick, weights: &[u32], n: u64, hold: bool) -> Vec<f64> {
    let members = pool(weights);
    let mut counts: HashMap<SocketAddr, u64> = HashMap::new();
    let mut held: Vec<InFlight> = Vec::new();
    for k in 0..n {
        let (a, g) = pick(
            p.selector(),
            k.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            &members,
        )
        .unwrap();
        *counts.entry(a).or_default() += 1;
        if hold {
            held.push(g);
        }
    }
    members
        .iter()
        .map(|m| counts.get(&m.addr).copied().unwrap_or(0) as f64 / n as f64)
        .collect()
}

#[test]
fn every_selector_follows_weights_and_skips_weight_zero() {
    for (word, p) in Pick::ALL {
        let s = shares(p, &[1, 1, 2, 0], 20_000, false);
        assert_eq!(s[3], 0.0, "{word}: weight 0 got requests");
        assert!((s[2] - 0.5).abs() < 0.03, "{word}: weight 2 of 4 got {s:?}");
        assert!(pick(p.selector(), 1, &pool(&[0, 0])).is_none(), "{word}");
        assert_eq!(Pick::parse(word), Some(p));
        assert_eq!(p.label(), word);
    }
    assert_eq!(Pick::parse("fastest"), None);
    assert_eq!(Pick::default(), Pick::ConsistentHash);
}

#[test]
fn round_robin_rotates_exactly() {
    let members = pool(&[1, 1, 1]);
    let order: Vec<SocketAddr> = (0..6)
        .map(|k| pick(Pick::RoundRobin.selector(), k, &members).unwrap().0)
        .collect();
    assert_eq!(order[..3], order[3..]);
    assert_eq!(
        order[..3],
        [members[0].addr, members[1].addr, members[2].addr]
    );
    // Weights 2:1 interleave rather than run: never three in a row.
    let members = pool(&[2, 1]);
    let order: Vec<SocketAddr> = (0..9)
        .map(|k| pick(Pick::RoundRobin.selector(), k, &members).unwrap().0)
        .collect();
    assert!(
        order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{order:?}"
    );
}

#[test]
fn least_request_fills_the_emptiest_backend() {
    let members = pool(&[1, 1, 1]);
    // Two requests stuck on the first backend, one on the second.
    members[0].in_flight.store(2, Ordering::Relaxed);
    members[1].in_flight.store(1, Ordering::Relaxed);
    let (a, _g) = pick(Pick::LeastRequest.selector(), 0, &members).unwrap();
    assert_eq!(a, members[2].addr);
    // Held requests spread evenly: no backend more than one above another.
    let s = shares(Pick::LeastRequest, &[1, 1, 1, 1], 400, true);
    assert!(s.iter().all(|x| (x - 0.25).abs() < 0.01), "{s:?}");
}

#[test]
fn random_repeats_its_draws_from_one_seed() {
    use super::random::{Stream, choose};
    let members = pool(&[1, 2, 1]);
    // A stream of the test's own: other tests draw from the process's.
    let draw = |seed| -> Vec<SocketAddr> {
        let stream = Stream::seeded(seed);
        (0..200)
            .map(|_| choose(stream.next(), &members).unwrap().addr)
            .collect()
    };
    assert_eq!(draw(42), draw(42), "one seed, two different sequences");
    assert_ne!(draw(43), draw(42), "another seed, the same sequence");
}

#[test]
fn random_is_not_a_rotation() {
    let members = pool(&[1, 1]);
    let order: Vec<SocketAddr> = (0..64)
        .map(|k| pick(Pick::Random.selector(), k, &members).unwrap().0)
        .collect();
    let alternations = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        alternations < 63,
        "a strict alternation is round-robin, not random"
    );
}
