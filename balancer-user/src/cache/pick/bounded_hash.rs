//! Which backend serves a miss: consistent hashing with bounded loads
//! (Mirrokni, Thorup and Zadimoghaddam, 2018) over weighted rendezvous hashing.
//!
//! Each backend gets a score for the key, `-w / ln(u)` with `u` a uniform
//! hash of (key, backend): the highest score wins, and a backend's share of
//! keys is proportional to its weight (the control plane's current weight).
//! The same prompt keeps landing on the same backend, where its prefix
//! (KV) cache is warm, and adding or removing a backend only moves the keys it
//! wins or held. To keep hot keys from overloading their favourite, a backend
//! is skipped while its requests in flight reach `ceil(c × (in_flight + 1) ×
//! its weight share)`; the key then goes to its next choice. With `c > 1` some
//! backend is always under its bound.

use std::{net::SocketAddr, sync::atomic::Ordering};

use super::{Ask, Member, Selector};

/// The load bound's slack factor: a backend may carry 25% over its share.
pub const BALANCE: f64 = 1.25;

pub(super) fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: a cheap, well-distributed 64-bit hash.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn addr_hash(a: &SocketAddr) -> u64 {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v) => u32::from(v) as u128,
        std::net::IpAddr::V6(v) => u128::from(v),
    };
    mix((ip as u64) ^ mix((ip >> 64) as u64) ^ ((a.port() as u64) << 48))
}

fn score(key: u64, m: &Member) -> f64 {
    let h = mix(key ^ addr_hash(&m.addr));
    // u in (0, 1): 53 random bits, never 0.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(m.weight as f64) / u.ln()
}

/// Consistent hashing with bounded loads (`pick = "consistent-hash"`).
#[derive(Debug, Default)]
pub struct BoundedHash;

impl Selector for BoundedHash {
    fn select<'a>(&self, ask: &Ask<'_>, members: &'a [Member]) -> Option<&'a Member> {
        let key = ask.key;
        let total_w: f64 = members.iter().map(|m| m.weight as f64).sum();
        let load: u64 = members
            .iter()
            .map(|m| m.in_flight.load(Ordering::Relaxed))
            .sum();
        let mut order: Vec<(f64, &Member)> = members
            .iter()
            .filter(|m| m.weight > 0)
            .map(|m| (score(key, m), m))
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0));
        order
            .iter()
            .find(|(_, m)| {
                let cap = (BALANCE * (load + 1) as f64 * m.weight as f64 / total_w).ceil();
                (m.in_flight.load(Ordering::Relaxed) as f64) < cap
            })
            .or(order.first())
            .map(|(_, m)| *m)
    }
}

#[cfg(test)]
mod tests {
    use super::{super::pool, *};

    fn pick(key: u64, p: &[Member]) -> Option<(SocketAddr, super::super::InFlight)> {
        super::super::pick(&BoundedHash, key, p)
    }

    #[test]
    fn same_key_same_backend_and_shares_follow_weights() {
        let p = pool(&[100, 100, 200, 0]);
        let mut counts = [0u32; 4];
        for k in 0..40_000u64 {
            let (a, g) = pick(mix(k), &p).unwrap();
            drop(g);
            let (b, _g) = pick(mix(k), &p).unwrap();
            assert_eq!(a, b, "idle pool: deterministic");
            counts[(a
                .ip()
                .to_string()
                .rsplit('.')
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap())
                - 1] += 1;
        }
        assert_eq!(counts[3], 0, "weight 0 gets nothing");
        let share = counts[2] as f64 / 40_000.0;
        assert!((share - 0.5).abs() < 0.02, "weight 200 of 400: {share}");
    }

    #[test]
    fn removal_moves_only_the_removed_backends_keys() {
        let p = pool(&[100, 100, 100, 100]);
        let q: Vec<Member> = p[..3].to_vec();
        let mut moved = 0;
        for k in 0..10_000u64 {
            let (a, _) = pick(mix(k), &p).unwrap();
            let (b, _) = pick(mix(k), &q).unwrap();
            if a != b {
                assert_eq!(a, p[3].addr, "a key moved although its backend stayed");
                moved += 1;
            }
        }
        assert!((2_000..3_000).contains(&moved), "{moved}");
    }

    #[test]
    fn a_hot_key_spills_over_when_its_backend_is_full() {
        let p = pool(&[1, 1, 1, 1]);
        let mut guards = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let (a, g) = pick(7, &p).unwrap();
            seen.insert(a);
            guards.push(g);
        }
        assert_eq!(
            seen.len(),
            4,
            "40 concurrent copies spread over all backends"
        );
        let max = p
            .iter()
            .map(|m| m.in_flight.load(Ordering::Relaxed))
            .max()
            .unwrap();
        assert!(max <= (BALANCE * 40.0 / 4.0).ceil() as u64, "{max}");
        drop(guards);
        assert!(p.iter().all(|m| m.in_flight.load(Ordering::Relaxed) == 0));
        assert!(pick(1, &pool(&[0, 0])).is_none());
    }
}
