//! Which backend of a route's pool gets a request: one file per selection
//! algorithm behind [`Selector`], chosen per route by `pick` ([`Pick`]).
//!
//! - [`bounded_hash`] (`consistent-hash`, the default): the same prompt
//!   goes to the same backend, within a load bound;
//! - [`round_robin`]: each backend in turn, in proportion to its weight;
//! - [`least_request`]: the fewest requests in flight for its weight;
//! - [`random`]: weighted at random;
//! - [`aware`]: the earliest predicted first token (or completion, for a
//!   heavy request) by the route's cost model, sticky to the backend
//!   holding the request's prompt prefix until that backend saturates.
//!
//! Every selector skips backends of weight 0 and sees the same pool, so the
//! fleet bench can compare them on one workload.

pub mod aware;
pub mod bounded_hash;
pub mod least_request;
pub mod random;
pub mod round_robin;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// One backend of a pool.
#[derive(Debug, Clone)]
pub struct Member {
    /// Where to send requests.
    pub addr: SocketAddr,
    /// Current weight (0: receives nothing).
    pub weight: u32,
    /// Requests in flight, shared with the guard that counts them.
    pub in_flight: Arc<AtomicU64>,
    /// Requests sent to it so far (round-robin's turn).
    pub picked: Arc<AtomicU64>,
    /// What the route's cost model learned of it.
    pub cost: Arc<crate::route::cost::Backend>,
    /// The models and adapters it listed last (`None`: unknown).
    pub models: Option<Arc<std::collections::BTreeSet<String>>>,
    /// Whether it is in the gateway's zone.
    pub place: crate::route::zone::Place,
}

/// What a selector knows of the request it places.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The request's key hash (its cache key, or its path and body).
    pub key: u64,
    /// Its cost, when the route parsed it (`pick = "aware"`).
    pub work: Option<&'a crate::route::cost::Work>,
    /// A cacheable miss: equal keys should meet at one backend.
    pub affine: bool,
    /// What loading the model costs, seconds, where `aware` may send a
    /// request to a backend that would have to load it (`None`: never).
    pub cold_start_s: Option<f64>,
}

impl Ask<'_> {
    /// A request known by its key alone.
    pub fn key(key: u64) -> Self {
        Self {
            key,
            work: None,
            affine: false,
            cold_start_s: None,
        }
    }
}

/// Counts a request in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A selection algorithm.
pub trait Selector: Send + Sync {
    /// The member for the request `ask`, among those of weight above 0;
    /// `None` when there is none.
    fn select<'a>(&self, ask: &Ask<'_>, members: &'a [Member]) -> Option<&'a Member>;
}

/// A route's `pick` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pick {
    /// [`bounded_hash::BoundedHash`].
    #[default]
    ConsistentHash,
    /// [`round_robin::RoundRobin`].
    RoundRobin,
    /// [`least_request::LeastRequest`].
    LeastRequest,
    /// [`random::Random`].
    Random,
    /// [`aware::Aware`].
    Aware,
}

impl Pick {
    /// Every setting, with its configuration word.
    pub const ALL: [(&'static str, Self); 5] = [
        ("consistent-hash", Self::ConsistentHash),
        ("round-robin", Self::RoundRobin),
        ("least-request", Self::LeastRequest),
        ("random", Self::Random),
        ("aware", Self::Aware),
    ];

    /// The configuration word.
    pub fn label(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("consistent-hash", |(l, _)| l)
    }

    /// The setting a configuration word names.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.iter().find(|(l, _)| *l == word).map(|(_, p)| *p)
    }

    /// Its algorithm.
    pub fn selector(self) -> &'static dyn Selector {
        match self {
            Self::ConsistentHash => &bounded_hash::BoundedHash,
            Self::RoundRobin => &round_robin::RoundRobin,
            Self::LeastRequest => &least_request::LeastRequest,
            Self::Random => &random::Random,
            Self::Aware => &aware::Aware,
        }
    }
}

/// Picks the backend for `key` with `selector` and counts the request
/// against it; `None` when no backend has weight.
pub fn pick(
    selector: &dyn Selector,
    key: u64,
    members: &[Member],
) -> Option<(SocketAddr, InFlight)> {
    pick_for(selector, &Ask::key(key), members).map(|(m, g)| (m.addr, g))
}

/// Picks the member for `ask` with `selector` and counts the request
/// against it; `None` when no backend has weight.
pub fn pick_for<'a>(
    selector: &dyn Selector,
    ask: &Ask<'_>,
    members: &'a [Member],
) -> Option<(&'a Member, InFlight)> {
    if members.iter().all(|m| m.weight == 0) {
        return None;
    }
    let chosen = selector.select(ask, members)?;
    Some((chosen, take(chosen)))
}

/// Counts a request sent to `m`, in flight until the guard drops.
pub fn take(m: &Member) -> InFlight {
    m.in_flight.fetch_add(1, Ordering::Relaxed);
    m.picked.fetch_add(1, Ordering::Relaxed);
    InFlight(m.in_flight.clone())
}

/// A pool of `weights` at 10.0.0.1, 10.0.0.2, ... for the selectors' tests.
#[cfg(test)]
pub(crate) fn pool(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Member {
            addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000)),
            weight: *w,
            in_flight: Arc::default(),
            picked: Arc::default(),
            cost: Arc::default(),
            models: None,
            place: crate::route::zone::Place::Unknown,
        })
        .collect()
}

#[cfg(test)]
mod tests;
