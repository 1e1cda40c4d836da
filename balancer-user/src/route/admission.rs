//! Admission: when a route's pool is saturated, lower tiers are shed
//! gradually, with a probability that rises with the overload (as Netflix's
//! and the SRE book's load shedding do), and told when to come back.
//!
//! Saturation is the pool's requests in flight and waiting in its queue
//! ([`super::queue`]) over its capacity (`max_in_flight` a live backend). Each sheddable tier has a curve: no
//! shedding up to `start`, all of it from `full`, linear between.
//! `critical` is never shed, and the configuration keeps `standard`'s curve
//! above `sheddable`'s, so a tier is shed only once every tier below it is.
//!
//! `Retry-After` is the time the pool needs to drain to where the tier is
//! admitted again: the excess in flight over the rate the route has been
//! admitting requests at (in a saturated pool, about the rate they finish).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use super::{queue::QueueSettings, tier::Tier};

/// A tier's shedding curve, in units of saturation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Curve {
    /// Below this, nothing is shed.
    pub start: f64,
    /// From this, everything is.
    pub full: f64,
}

impl Curve {
    /// The share of requests shed at `saturation`.
    pub fn probability(&self, saturation: f64) -> f64 {
        ((saturation - self.start) / (self.full - self.start)).clamp(0.0, 1.0)
    }
}

/// A route's shedding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shedding {
    /// Requests in flight a live backend can take: the pool's capacity is
    /// this times its live backends.
    pub max_in_flight: u32,
    /// `sheddable`'s curve.
    pub sheddable: Curve,
    /// `standard`'s curve.
    pub standard: Curve,
    /// Where lower tiers wait while the pool has no headroom (`None`: they
    /// are sent on at once, to wait in the engines' queues).
    pub queue: Option<QueueSettings>,
}

impl Shedding {
    /// The defaults for a pool of `max_in_flight` a backend: sheddable
    /// requests go between 80% and 100% of capacity, standard ones between
    /// 100% and 150% (requests waiting in the queue count), and lower tiers
    /// wait in the queue's defaults.
    pub fn new(max_in_flight: u32) -> Self {
        Self {
            max_in_flight,
            sheddable: Curve {
                start: 0.8,
                full: 1.0,
            },
            standard: Curve {
                start: 1.0,
                full: 1.5,
            },
            queue: Some(QueueSettings::default()),
        }
    }

    /// `tier`'s curve (`None`: never shed).
    pub fn curve(&self, tier: Tier) -> Option<Curve> {
        match tier {
            Tier::Critical => None,
            Tier::Standard => Some(self.standard),
            Tier::Sheddable => Some(self.sheddable),
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Send it on.
    Admit,
    /// Refuse it (429), asking the client to retry after this many seconds.
    Shed {
        /// Whole seconds, 1 to [`MAX_RETRY_AFTER_S`].
        retry_after_s: u32,
    },
}

/// A uniform draw in [0, 1) for [`Admission::decide`]: a splitmix64
/// stream per thread, apart from `pick = "random"`'s seeded one so that
/// shedding never shifts a reproducible pick.
pub fn draw() -> f64 {
    use std::{cell::Cell, hash::BuildHasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().hash_one(0u64));
    }
    let x = STATE.with(|s| {
        let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(v);
        v
    });
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The longest `Retry-After` given.
pub const MAX_RETRY_AFTER_S: u32 = 60;

/// A route's admission: its settings and the rate it has been admitting.
#[derive(Debug)]
pub struct Admission {
    shedding: Option<Shedding>,
    born: Instant,
    /// The current whole second since `born`, and the admissions counted in
    /// it and in the one before (packed: second << 32 | count).
    now: AtomicU64,
    last: AtomicU64,
}

impl Admission {
    /// An admission that sheds by `shedding` (`None`: admits everything).
    pub fn new(shedding: Option<Shedding>) -> Self {
        Self {
            shedding,
            born: Instant::now(),
            now: AtomicU64::new(0),
            last: AtomicU64::new(0),
        }
    }

    /// The verdict on a request of `tier` when the pool has `in_flight`
    /// requests on `live` backends; `draw` is uniform in [0, 1).
    pub fn decide(&self, tier: Tier, in_flight: u64, live: usize, draw: f64) -> Verdict {
        let Some(s) = &self.shedding else {
            return Verdict::Admit;
        };
        let capacity = (s.max_in_flight as u64 * live as u64).max(1) as f64;
        let saturation = in_flight as f64 / capacity;
        let Some(curve) = s.curve(tier) else {
            self.count();
            return Verdict::Admit;
        };
        if draw >= curve.probability(saturation) {
            self.count();
            return Verdict::Admit;
        }
        let excess = in_flight as f64 - curve.start * capacity;
        Verdict::Shed {
            retry_after_s: self.drain_s(excess),
        }
    }

    /// Whole seconds for `backlog` requests to drain at the rate the route
    /// has been admitting (at least 1/s), within 1 to [`MAX_RETRY_AFTER_S`]:
    /// the `Retry-After` of a request refused behind them.
    pub fn drain_s(&self, backlog: f64) -> u32 {
        let s = backlog / self.rate().max(1.0);
        (s.ceil() as u32).clamp(1, MAX_RETRY_AFTER_S)
    }

    /// Counts one admission in the current second.
    fn count(&self) {
        let sec = self.born.elapsed().as_secs();
        let cur = self.now.load(Ordering::Relaxed);
        if cur >> 32 == sec {
            self.now.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A new second: the old one becomes `last` (if it was the one just
        // before; an idle gap means a rate of 0). Racing writers may lose a
        // count at the turn, which a rate estimate does not miss.
        let prev = if cur >> 32 == sec.wrapping_sub(1) {
            cur
        } else {
            0
        };
        self.last.store(prev, Ordering::Relaxed);
        self.now.store((sec << 32) | 1, Ordering::Relaxed);
    }

    /// Admissions a second: the last whole second's, or the current one's
    /// so far when that is more.
    pub fn rate(&self) -> f64 {
        let sec = self.born.elapsed().as_secs();
        let cur = self.now.load(Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        let count = |packed: u64, at: u64| {
            if packed >> 32 == at {
                (packed & 0xffff_ffff) as f64
            } else {
                0.0
            }
        };
        let before = if cur >> 32 == sec {
            count(last, sec.wrapping_sub(1))
        } else {
            count(cur, sec.wrapping_sub(1))
        };
        before.max(count(cur, sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_in_flight: u32) -> Admission {
        Admission::new(Some(Shedding::new(max_in_flight)))
    }

    #[test]
    fn lower_tiers_go_first_and_critical_never() {
        let a = admission(10);
        // {description, tier, in flight on 2 backends (capacity 20), draw, shed?}
        let cases = [
            ("idle pool", Tier::Sheddable, 0, 0.0, false),
            ("sheddable below 80%", Tier::Sheddable, 15, 0.0, false),
            (
                "sheddable half-way up its curve, lucky",
                Tier::Sheddable,
                18,
                0.6,
                false,
            ),
            (
                "sheddable half-way up its curve, unlucky",
                Tier::Sheddable,
                18,
                0.4,
                true,
            ),
            (
                "sheddable at capacity: all of it",
                Tier::Sheddable,
                20,
                0.999,
                true,
            ),
            (
                "standard at capacity: none yet",
                Tier::Standard,
                20,
                0.0,
                false,
            ),
            ("standard at 125%: half", Tier::Standard, 25, 0.4, true),
            ("standard at 150%: all", Tier::Standard, 30, 0.999, true),
            ("critical at 500%", Tier::Critical, 100, 0.0, false),
        ];
        for (what, tier, in_flight, draw, shed) in cases {
            let v = a.decide(tier, in_flight, 2, draw);
            assert_eq!(matches!(v, Verdict::Shed { .. }), shed, "{what}: {v:?}");
        }
    }

    #[test]
    fn draws_are_uniform_enough() {
        let n = 100_000;
        let v: Vec<f64> = (0..n).map(|_| draw()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let below = v.iter().filter(|x| **x < 0.25).count() as f64 / n as f64;
        assert!((0.24..0.26).contains(&below), "{below}");
    }

    #[test]
    fn without_settings_everything_is_admitted() {
        let a = Admission::new(None);
        assert_eq!(a.decide(Tier::Sheddable, 1_000_000, 1, 0.0), Verdict::Admit);
    }

    #[test]
    fn retry_after_is_the_drain_time_within_bounds() {
        let a = admission(10);
        // Nothing admitted yet: a rate of at least 1/s is assumed.
        // 20 in flight, sheddable admitted again below 16: 4 over, 4 s.
        assert_eq!(
            a.decide(Tier::Sheddable, 20, 2, 0.0),
            Verdict::Shed { retry_after_s: 4 }
        );
        for _ in 0..8 {
            assert_eq!(a.decide(Tier::Critical, 0, 2, 0.0), Verdict::Admit);
        }
        // Now 8 a second (at least 4, should a second turn between the
        // admissions): 4 over drains within a second.
        assert!(a.rate() >= 4.0, "{}", a.rate());
        assert_eq!(
            a.decide(Tier::Sheddable, 20, 2, 0.0),
            Verdict::Shed { retry_after_s: 1 }
        );
        // A huge excess is capped.
        assert_eq!(
            a.decide(Tier::Standard, 1_000_000, 1, 0.0),
            Verdict::Shed {
                retry_after_s: MAX_RETRY_AFTER_S
            }
        );
    }

    #[test]
    fn a_pool_with_no_live_backend_counts_as_one() {
        // No division by zero: capacity is at least 1.
        let a = admission(4);
        assert!(matches!(
            a.decide(Tier::Sheddable, 3, 0, 0.0),
            Verdict::Shed { .. }
        ));
    }
}
