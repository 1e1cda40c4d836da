//! Round-robin (`pick = "round-robin"`): each backend in turn, in
//! proportion to its weight, blind to load.
//!
//! The member with the fewest requests sent so far for its weight goes
//! next (ties to the first in pool order). With equal weights that is plain
//! rotation; with weights 2:1 the first gets two of every three, spread out
//! rather than in runs. Counts are the route's, so a backend that joins
//! starts at 0 and catches up first, as a new member of a rotation would.

use std::sync::atomic::Ordering;

use super::{Ask, Member, Selector};

/// Weighted round-robin.
#[derive(Debug, Default)]
pub struct RoundRobin;

impl Selector for RoundRobin {
    fn select<'a>(&self, _ask: &Ask<'_>, members: &'a [Member]) -> Option<&'a Member> {
        members.iter().filter(|m| m.weight > 0).min_by(|a, b| {
            let turn = |m: &Member| (m.picked.load(Ordering::Relaxed) + 1) as f64 / m.weight as f64;
            turn(a).total_cmp(&turn(b))
        })
    }
}
