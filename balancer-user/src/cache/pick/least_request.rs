//! Least-request (`pick = "least-request"`): the backend with the fewest
//! requests in flight for its weight, as NGINX's `least_conn` compares
//! `conns / weight` over the whole pool.
//!
//! Ties go to the member sent the fewest requests so far for its weight
//! (weighted round-robin), so an idle pool rotates in proportion to the
//! weights instead of piling onto one member.

use std::sync::atomic::Ordering;

use super::{Ask, Member, Selector};

/// Fewest outstanding requests, weighted.
#[derive(Debug, Default)]
pub struct LeastRequest;

impl Selector for LeastRequest {
    fn select<'a>(&self, _ask: &Ask<'_>, members: &'a [Member]) -> Option<&'a Member> {
        let load = |m: &Member| {
            let w = m.weight as f64;
            (
                m.in_flight.load(Ordering::Relaxed) as f64 / w,
                (m.picked.load(Ordering::Relaxed) + 1) as f64 / w,
            )
        };
        members.iter().filter(|m| m.weight > 0).min_by(|a, b| {
            let (la, ta) = load(a);
            let (lb, tb) = load(b);
            la.total_cmp(&lb).then(ta.total_cmp(&tb))
        })
    }
}
