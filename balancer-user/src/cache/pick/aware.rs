//! Request-aware (`pick = "aware"`): each backend's predicted cost for this
//! request, from the route's cost model ([`crate::route::cost`]).
//!
//! Candidates are the backends that list the request's model or adapter
//! (`/v1/models`, polled by the route), when any does: locality first. A
//! model no backend lists yet may go anywhere (the engine loads it). With
//! a cold-start cost (`cold_start_ms`), a backend that listed its models
//! without this one stays a candidate at that cost added to its
//! prediction, so a load happens only when every server is predicted
//! slower than loading; one whose models are unknown (still starting, or
//! loading) is not a candidate while another serves the model.
//!
//! With zones, candidates in the gateway's zone come next: while the best
//! of them is not saturated (by the terms below, against the best of all),
//! the others are left out, as Envoy's zone-aware routing keeps traffic in
//! its zone until it cannot take it.
//!
//! Among them, in order:
//! 1. **Sticky until saturated**: the backend holding the longest prefix
//!    of the prompt wins while it is not saturated: the uncached prefill
//!    waiting there is under [`STICKY_PREFILL_TOKENS`], its prediction is
//!    within [`STICKY_SLACK`] of the best one's, and its requests in flight
//!    are not out of balance with the least loaded backend's (as the SGLang
//!    router falls back to the shortest queue: more than
//!    [`IMBALANCE_REL`] times and [`IMBALANCE_ABS`] more);
//! 2. **a cacheable miss** keeps its key's backend ([`BoundedHash`]) on the
//!    same terms, so equal prompts meet at one backend;
//! 3. **exploring**: one light request in [`EXPLORE_EVERY`] goes to the
//!    idle candidate sent nothing for longest, once that is
//!    [`EXPLORE_AFTER`]: a backend the model stopped choosing (one slow
//!    answer, a path since mended) is never measured again otherwise;
//! 4. otherwise the earliest predicted first token, or for a heavy request
//!    the earliest predicted completion (which, under load, is the higher
//!    capacity class).
//!
//! Without a parsed request (a body that is not JSON) it falls back to
//! [`LeastRequest`]. Weights only exclude (0): the model learns speed from
//! answers, not from the control plane's scores.

use std::{sync::atomic::Ordering, time::Duration};

use super::{Ask, Member, Selector, bounded_hash::BoundedHash, least_request::LeastRequest};
use crate::route::{
    cost::{Prediction, Work},
    zone::Place,
};

/// Cost-model placement.
#[derive(Debug, Default)]
pub struct Aware;

/// Uncached prefill tokens waiting on a prefix holder past which it is
/// saturated and the request spreads.
pub const STICKY_PREFILL_TOKENS: u64 = 8192;
/// How much slower than the best a sticky choice may be predicted to be.
pub const STICKY_SLACK: f64 = 2.0;
/// In-flight imbalance past which stickiness yields: relative ...
pub const IMBALANCE_REL: f64 = 1.5;
/// ... and absolute.
pub const IMBALANCE_ABS: u64 = 8;

/// How long a candidate may be sent nothing before a light request goes
/// there to measure it again.
pub const EXPLORE_AFTER: Duration = Duration::from_secs(30);
/// At most one placement in this many explores (the route's requests so
/// far, counted over its pool).
pub const EXPLORE_EVERY: u64 = 16;

/// Why a backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It holds the longest prefix and is not saturated.
    Prefix,
    /// The request's cache key picks it and it is not saturated.
    Key,
    /// Earliest predicted first token.
    Fastest,
    /// A heavy request: earliest predicted completion.
    Earliest,
    /// Every server of the model is predicted slower than loading it here.
    Load,
    /// Idle and sent nothing for [`EXPLORE_AFTER`]: measured again.
    Explore,
}

impl Reason {
    /// The word `route explain` prints.
    pub fn label(self) -> &'static str {
        match self {
            Self::Prefix => "prefix",
            Self::Key => "key",
            Self::Fastest => "fastest",
            Self::Earliest => "earliest",
            Self::Load => "load",
            Self::Explore => "explore",
        }
    }
}

/// A placement and the prediction it rests on.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    /// The backend.
    pub member: &'a Member,
    /// Its predicted cost.
    pub prediction: Prediction,
    /// Why.
    pub reason: Reason,
    /// Backends it could go to (after locality).
    pub candidates: usize,
}

/// What is minimised: completion for heavy requests, first token else.
fn objective(work: &Work, p: &Prediction) -> f64 {
    if work.heavy { p.e2e_s } else { p.ttft_s }
}

/// Where `work` goes among `members` (weight above 0), and why.
pub fn choose<'a>(ask: &Ask<'_>, work: &Work, members: &'a [Member]) -> Option<Choice<'a>> {
    let serves = |m: &Member| m.models.as_ref().is_some_and(|s| s.contains(&work.model));
    let local = !work.model.is_empty() && members.iter().any(|m| m.weight > 0 && serves(m));
    // What sending here costs beyond the prediction: 0 for a server (or
    // any backend, without locality), the load for one that listed other
    // models, and no candidate at all otherwise.
    let extra = |m: &Member| match (local, serves(m), &m.models) {
        (false, _, _) | (true, true, _) => Some(0.0),
        (true, false, Some(_)) => ask.cold_start_s,
        (true, false, None) => None,
    };
    let mut scored: Vec<(&Member, Prediction)> = members
        .iter()
        .filter(|m| m.weight > 0)
        .filter_map(|m| {
            let add = extra(m)?;
            let mut p = m.cost.predict(work, m.in_flight.load(Ordering::Relaxed));
            p.ttft_s += add;
            p.e2e_s += add;
            Some((m, p))
        })
        .collect();
    let load = |m: &Member| m.in_flight.load(Ordering::Relaxed);
    // In the gateway's zone while its best is not saturated.
    let home = |m: &Member| m.place == Place::Local;
    if scored.iter().any(|(m, _)| home(m)) && scored.iter().any(|(m, _)| !home(m)) {
        let least = scored.iter().map(|(m, _)| load(m)).min().unwrap_or(0);
        let all = scored
            .iter()
            .map(|(_, p)| objective(work, p))
            .min_by(f64::total_cmp)
            .unwrap_or(f64::INFINITY);
        let fits = scored
            .iter()
            .filter(|(m, _)| home(m))
            .min_by(|a, b| objective(work, &a.1).total_cmp(&objective(work, &b.1)))
            .is_some_and(|(m, p)| unsaturated(work, load(m), least, p, all));
        if fits {
            scored.retain(|(m, _)| home(m));
        }
    }
    // Ties (an idle pool of equal priors) rotate by requests sent so far.
    let order = |a: &&(&Member, Prediction), b: &&(&Member, Prediction)| {
        objective(work, &a.1)
            .total_cmp(&objective(work, &b.1))
            .then_with(|| {
                let turn = |m: &Member| m.picked.load(Ordering::Relaxed);
                turn(a.0).cmp(&turn(b.0))
            })
    };
    let mut best = scored.iter().min_by(order)?;
    let least = scored.iter().map(|(m, _)| load(m)).min().unwrap_or(0);
    let best_objective = objective(work, &best.1);
    let unsaturated =
        |m: &Member, p: &Prediction| unsaturated(work, load(m), least, p, best_objective);
    let holder = scored
        .iter()
        .filter(|(_, p)| p.matched_blocks > 0)
        .max_by(|a, b| {
            a.1.matched_blocks
                .cmp(&b.1.matched_blocks)
                .then(objective(work, &b.1).total_cmp(&objective(work, &a.1)))
        });
    if let Some((m, p)) = holder {
        if unsaturated(m, p) && (!local || serves(m)) {
            return Some(Choice {
                member: m,
                prediction: *p,
                reason: Reason::Prefix,
                candidates: scored.len(),
            });
        }
        // A saturated holder spreads its prefix: the best of the others.
        if best.0.addr == m.addr
            && let Some(other) = scored
                .iter()
                .filter(|(o, _)| o.addr != m.addr)
                .min_by(order)
        {
            best = other;
        }
    }
    if ask.affine
        && let Some(k) = BoundedHash.select(ask, members)
        && let Some((m, p)) = scored.iter().find(|(m, _)| m.addr == k.addr)
        && (!local || serves(m))
        && unsaturated(m, p)
    {
        return Some(Choice {
            member: m,
            prediction: *p,
            reason: Reason::Key,
            candidates: scored.len(),
        });
    }
    if !work.heavy
        && let Some((m, p)) = stale(members, &scored, |m| !local || serves(m))
    {
        return Some(Choice {
            member: m,
            prediction: *p,
            reason: Reason::Explore,
            candidates: scored.len(),
        });
    }
    Some(Choice {
        member: best.0,
        prediction: best.1,
        reason: if local && !serves(best.0) {
            Reason::Load
        } else if work.heavy {
            Reason::Earliest
        } else {
            Reason::Fastest
        },
        candidates: scored.len(),
    })
}

/// The idle candidate (one that `eligible` admits) sent nothing for
/// longest, past [`EXPLORE_AFTER`], on one placement in [`EXPLORE_EVERY`].
fn stale<'s, 'a>(
    members: &[Member],
    scored: &'s [(&'a Member, Prediction)],
    eligible: impl Fn(&Member) -> bool,
) -> Option<&'s (&'a Member, Prediction)> {
    let sent: u64 = members
        .iter()
        .map(|m| m.picked.load(Ordering::Relaxed))
        .sum();
    if !sent.is_multiple_of(EXPLORE_EVERY) {
        return None;
    }
    scored
        .iter()
        .filter(|(m, _)| eligible(m) && m.in_flight.load(Ordering::Relaxed) == 0)
        .map(|c| (c, c.0.cost.unsent_for()))
        .filter(|(_, idle)| *idle >= EXPLORE_AFTER)
        .max_by_key(|(_, idle)| *idle)
        .map(|(c, _)| c)
}

/// Whether a backend with `in_flight` requests and prediction `p` may keep
/// a request it is preferred for (prefix, key or zone): its load is not out
/// of balance with the least loaded candidate's, its uncached prefill
/// waiting is under [`STICKY_PREFILL_TOKENS`], and its objective is within
/// [`STICKY_SLACK`] of the best one's.
fn unsaturated(work: &Work, in_flight: u64, least: u64, p: &Prediction, best: f64) -> bool {
    let balanced =
        in_flight <= least + IMBALANCE_ABS || (in_flight as f64) <= least as f64 * IMBALANCE_REL;
    balanced
        && p.prefill_ahead <= STICKY_PREFILL_TOKENS
        && objective(work, p) <= STICKY_SLACK * best
}

impl Selector for Aware {
    fn select<'a>(&self, ask: &Ask<'_>, members: &'a [Member]) -> Option<&'a Member> {
        match ask.work {
            Some(w) => choose(ask, w, members).map(|c| c.member),
            None => LeastRequest.select(ask, members),
        }
    }
}

#[cfg(test)]
mod tests;
