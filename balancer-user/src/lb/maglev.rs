//! Weighted Maglev consistent hashing.
//!
//! Builds the lookup table ("ring") of M slots, each naming a backend, that the
//! data path indexes with a flow hash. The table is:
//!
//! - **deterministic across gateways**: members are sorted by a stable id and
//!   every hash has a fixed seed, so the same members and weights give the same
//!   table on every host (gateways behind ECMP agree on every flow);
//! - **weighted at every fill round**: each member earns credit equal to its
//!   weight each round and claims one slot per `max_weight` of credit, so the
//!   fill interleaves members in weight proportion throughout (Maglev v1 applies
//!   weights only in the first round, which skews shares and disruption);
//! - **exactly apportioned**: each member's slot count is fixed up front by
//!   largest-remainder apportionment of M by weight, so every member gets
//!   `floor` or `ceil` of `M * w / W` slots.
//!
//! M must be prime so every member's permutation visits all slots.

use std::collections::{BTreeMap, HashSet};

use balancer_common::RING_EMPTY;

/// Errors building a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The ring size is not a prime, so permutations would not cover it.
    #[error("ring size {0} is not prime; use a prime such as 65537, 131071 or 262139")]
    NotPrime(u32),
    /// Too many members for the ring size (each needs room to be balanced).
    #[error("{members} backends do not fit a ring of {ring_size} slots; use a larger ring size")]
    TooManyMembers {
        /// Members with non-zero weight.
        members: usize,
        /// The ring size.
        ring_size: u32,
    },
    /// Two members share a stable id.
    #[error("duplicate backend id {0:?}")]
    DuplicateId(String),
    /// A member uses the reserved slot value.
    #[error("slot value {0:#x} is reserved for empty slots")]
    ReservedValue(u32),
}

/// One backend as Maglev sees it: a member of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingMember {
    /// Stable identity (for example the backend address), hashed to place the
    /// member's permutation. The same id gives the same placement everywhere.
    pub id: String,
    /// Relative weight; 0 keeps the member out of the ring (drained).
    pub weight: u32,
    /// Value stored in the member's slots (its backend index in the maps).
    pub value: u32,
}

/// Whether `n` is prime (trial division; ring sizes are small).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

const SEED_OFFSET: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// FNV-1a over the id, then a splitmix64 finaliser: fixed, portable, and well
/// mixed in every bit.
fn hash64(id: &str, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds a ring of `ring_size` slots. Members with weight 0 get no slot; with
/// no weighted member every slot is [`RING_EMPTY`].
pub fn build(members: &[RingMember], ring_size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(ring_size) {
        return Err(MaglevError::NotPrime(ring_size));
    }
    let mut seen = HashSet::new();
    for m in members {
        if !seen.insert(m.id.as_str()) {
            return Err(MaglevError::DuplicateId(m.id.clone()));
        }
        if m.value == RING_EMPTY {
            return Err(MaglevError::ReservedValue(m.value));
        }
    }
    let mut live: Vec<&RingMember> = members.iter().filter(|m| m.weight > 0).collect();
    live.sort_by(|a, b| a.id.cmp(&b.id));
    let m = ring_size as u64;
    let mut table = vec![RING_EMPTY; ring_size as usize];
    if live.is_empty() {
        return Ok(table);
    }
    if live.len() as u64 > m {
        return Err(MaglevError::TooManyMembers {
            members: live.len(),
            ring_size,
        });
    }

    let quotas = apportion(&live, m);
    let w_max = live.iter().map(|x| x.weight as u64).max().unwrap_or(1);
    let mut pos: Vec<u64> = live
        .iter()
        .map(|x| hash64(&x.id, SEED_OFFSET) % m)
        .collect();
    let skip: Vec<u64> = live
        .iter()
        .map(|x| hash64(&x.id, SEED_SKIP) % (m - 1) + 1)
        .collect();
    let mut credit = vec![0u64; live.len()];
    let mut count = vec![0u64; live.len()];
    let mut filled = 0u64;
    while filled < m {
        for i in 0..live.len() {
            if count[i] == quotas[i] {
                continue;
            }
            credit[i] += live[i].weight as u64;
            while credit[i] >= w_max && count[i] < quotas[i] {
                credit[i] -= w_max;
                // Walk the member's permutation to its next free slot.
                loop {
                    let c = pos[i] as usize;
                    pos[i] = (pos[i] + skip[i]) % m;
                    if table[c] == RING_EMPTY {
                        table[c] = live[i].value;
                        count[i] += 1;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    Ok(table)
}

/// Largest-remainder apportionment of `m` slots by weight. Ties go to the
/// member that sorts first, so the result is deterministic.
fn apportion(live: &[&RingMember], m: u64) -> Vec<u64> {
    let total: u128 = live.iter().map(|x| x.weight as u128).sum();
    let mut quotas = Vec::with_capacity(live.len());
    let mut rems = Vec::with_capacity(live.len());
    for (i, x) in live.iter().enumerate() {
        let num = m as u128 * x.weight as u128;
        quotas.push((num / total) as u64);
        rems.push((num % total, i));
    }
    let left = m - quotas.iter().sum::<u64>();
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take(left as usize) {
        quotas[i] += 1;
    }
    quotas
}

/// Number of slots per value.
pub fn slot_counts(table: &[u32]) -> BTreeMap<u32, u64> {
    let mut counts = BTreeMap::new();
    for &v in table {
        *counts.entry(v).or_insert(0) += 1;
    }
    counts
}

/// Fraction of slots whose value differs between two tables of equal size.
pub fn disruption(old: &[u32], new: &[u32]) -> f64 {
    let moved = old.iter().zip(new).filter(|(a, b)| a != b).count();
    moved as f64 / old.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<RingMember> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| RingMember {
                id: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                weight: w,
                value: i as u32,
            })
            .collect()
    }

    /// Largest relative deviation of a member's share from its weight share.
    fn max_share_error(table: &[u32], ms: &[RingMember]) -> f64 {
        let counts = slot_counts(table);
        let total_w: f64 = ms.iter().map(|m| m.weight as f64).sum();
        ms.iter()
            .filter(|m| m.weight > 0)
            .map(|m| {
                let want = m.weight as f64 / total_w;
                let got = *counts.get(&m.value).unwrap_or(&0) as f64 / table.len() as f64;
                ((got - want) / want).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(13) && is_prime(2));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(0) && !is_prime(65535));
        assert_eq!(build(&members(&[1]), 100), Err(MaglevError::NotPrime(100)));
    }

    #[test]
    fn empty_pool_is_all_empty() {
        let t = build(&members(&[0, 0]), 13).unwrap();
        assert!(t.iter().all(|&v| v == RING_EMPTY));
    }

    #[test]
    fn balance_within_one_percent_when_m_exceeds_100n() {
        let m = 65537;
        // Equal weights, N up to M/100.
        for n in [1usize, 2, 3, 10, 100, 655] {
            let ms = members(&vec![1; n]);
            let t = build(&ms, m).unwrap();
            let err = max_share_error(&t, &ms);
            assert!(err <= 0.01, "n={n}: share error {err}");
        }
        // Mixed weights 1..=4 over 100 backends: every ideal share > 100 slots.
        let ms = members(&(0..100).map(|i| 1 + i % 4).collect::<Vec<_>>());
        let t = build(&ms, m).unwrap();
        let err = max_share_error(&t, &ms);
        assert!(err <= 0.01, "mixed: share error {err}");
    }

    #[test]
    fn deterministic_and_order_independent() {
        let ms = members(&[3, 1, 2, 5]);
        let mut rev = ms.clone();
        rev.reverse();
        assert_eq!(build(&ms, 65537).unwrap(), build(&rev, 65537).unwrap());
    }

    #[test]
    fn weights_apply_at_every_round() {
        // In any prefix of the fill, the heavy member claims about 3x the slots
        // of the light one; check on a small ring by counting slots filled in
        // the first 1000 claims via a ring that only has room for them.
        let ms = members(&[3, 1]);
        let t = build(&ms, 1009).unwrap();
        let c = slot_counts(&t);
        assert_eq!(c[&0] + c[&1], 1009);
        assert!((c[&0] as i64 - 757).abs() <= 1, "{c:?}");
    }

    #[test]
    fn disruption_close_to_ideal() {
        let m = 65537;
        for n in [5usize, 10, 50] {
            let ms = members(&vec![1; n]);
            let base = build(&ms, m).unwrap();
            // Remove one: ideal 1/n of slots move (those of the removed one).
            let removed = build(&ms[1..], m).unwrap();
            let d = disruption(&base, &removed);
            let ideal = 1.0 / n as f64;
            assert!(d <= ideal * 1.6, "remove n={n}: {d} vs {ideal}");
            // Add one: ideal 1/(n+1).
            let more = members(&vec![1; n + 1]);
            let added = build(&more, m).unwrap();
            let d = disruption(&base, &added);
            let ideal = 1.0 / (n + 1) as f64;
            assert!(d <= ideal * 1.6, "add n={n}: {d} vs {ideal}");
        }
    }

    #[test]
    fn errors_are_reported() {
        let mut ms = members(&[1, 1]);
        ms[1].id = ms[0].id.clone();
        assert!(matches!(build(&ms, 13), Err(MaglevError::DuplicateId(_))));
        let mut ms = members(&[1]);
        ms[0].value = RING_EMPTY;
        assert!(matches!(build(&ms, 13), Err(MaglevError::ReservedValue(_))));
        assert!(matches!(
            build(&members(&[1; 20]), 13),
            Err(MaglevError::TooManyMembers { .. })
        ));
    }
}
