//! The gateway-side queue: when a route's pool has no headroom, requests
//! of the lower tiers wait here instead of piling onto the engines, and
//! bind to a backend late, when one finishes a request (the pick happens
//! after the wait, on the pool as it is then).
//!
//! - **Order**: the highest tier first; within a tier, tenants take turns
//!   (round robin), and each tenant's requests go in arrival order, which
//!   is deadline order since a tier has one deadline.
//! - **Deadline**: a tier's longest wait (its TTFT objective). A request
//!   still waiting then leaves the queue and is degraded like a shed one.
//! - **Forecast**: given the rate slots are expected to free (from the cost
//!   model: each backend's slots over its predicted time for the request),
//!   a request whose turn is forecast past its deadline is degraded at
//!   once, instead of waiting to find out.
//! - **`critical` never waits**: it always takes a slot at once, so the
//!   queue can only slow the tiers below it.
//!
//! Slots are counted here, not read off the backends: a request holds its
//! [`Slot`] for as long as its backend works on it, and dropping the slot
//! hands it to the next waiter directly, so two waiters never race for one
//! slot. The lock is held by request tasks only, for a few pointer moves.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;

use super::tier::{Tier, TierCounts};

/// A route's queue settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most requests waiting at once (past it, a request is degraded at
    /// once).
    pub max_waiting: usize,
    /// How long a `standard` request may wait.
    pub standard_wait: Duration,
    /// How long a `sheddable` one may.
    pub sheddable_wait: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_waiting: 1024,
            standard_wait: Duration::from_secs(2),
            sheddable_wait: Duration::from_secs(1),
        }
    }
}

impl QueueSettings {
    /// How long a request of `tier` may wait (`None`: it never does).
    pub fn wait(&self, tier: Tier) -> Option<Duration> {
        match tier {
            Tier::Critical => None,
            Tier::Standard => Some(self.standard_wait),
            Tier::Sheddable => Some(self.sheddable_wait),
        }
    }
}

/// Why a request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full.
    Full,
    /// Its tier's deadline passed while it waited.
    Expired,
    /// Its turn was forecast past its tier's deadline.
    Forecast,
}

/// One waiting request: where its slot is sent.
#[derive(Debug)]
struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

/// A tier's line: tenants in turn order, each with its requests in
/// arrival order.
#[derive(Debug, Default)]
struct Lane {
    tenants: VecDeque<(String, VecDeque<Waiter>)>,
}

impl Lane {
    fn push(&mut self, tenant: &str, w: Waiter) {
        match self.tenants.iter_mut().find(|(t, _)| t == tenant) {
            Some((_, q)) => q.push_back(w),
            None => self
                .tenants
                .push_back((tenant.to_owned(), VecDeque::from([w]))),
        }
    }

    /// The next waiter: the front tenant's first, after which that tenant
    /// goes to the back of the turn order.
    fn pop(&mut self) -> Option<Waiter> {
        let (tenant, mut q) = self.tenants.pop_front()?;
        let w = q.pop_front();
        if !q.is_empty() {
            self.tenants.push_back((tenant, q));
        }
        w
    }

    /// Takes waiter `id` out, if it is still here.
    fn remove(&mut self, id: u64) -> bool {
        for i in 0..self.tenants.len() {
            let q = &mut self.tenants[i].1;
            if let Some(at) = q.iter().position(|w| w.id == id) {
                q.remove(at);
                if q.is_empty() {
                    self.tenants.remove(i);
                }
                return true;
            }
        }
        false
    }
}

#[derive(Debug, Default)]
struct State {
    /// Slots held.
    busy: usize,
    /// Slots there are (the pool's capacity when last asked).
    capacity: usize,
    /// Requests waiting, in all lanes.
    waiting: usize,
    /// One lane per tier, in [`Tier::index`] order.
    lanes: [Lane; 3],
    next_id: u64,
}

impl State {
    /// Whether a request of `tier` may take a free slot now: one is free,
    /// and nobody of its tier or above is waiting for it.
    fn free_for(&self, tier: Tier) -> bool {
        self.busy < self.capacity
            && self.lanes[..=tier.index()]
                .iter()
                .all(|l| l.tenants.is_empty())
    }

    /// Hands free slots to waiters, best tier first.
    fn grant(&mut self) {
        while self.busy < self.capacity && self.waiting > 0 {
            let Some(w) = self.lanes.iter_mut().find_map(Lane::pop) else {
                self.waiting = 0;
                return;
            };
            self.waiting -= 1;
            // A waiter that gave up (its client left) is skipped.
            if w.grant.send(()).is_ok() {
                self.busy += 1;
            }
        }
    }
}

/// A route's queue.
#[derive(Debug)]
pub struct Queue {
    settings: QueueSettings,
    state: Mutex<State>,
    /// Requests that waited, per tier.
    queued: TierCounts,
}

/// A slot: the right to have one request on the pool, given back (to the
/// next waiter) when dropped.
#[derive(Debug)]
pub struct Slot {
    queue: Arc<Queue>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.queue.lock();
        s.busy = s.busy.saturating_sub(1);
        s.grant();
    }
}

impl Queue {
    /// An empty queue.
    pub fn new(settings: QueueSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            state: Mutex::new(State::default()),
            queued: TierCounts::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Whether a request of `tier` would wait now, on a pool of `capacity`
    /// slots (a hint: the answer may change before it enters).
    pub fn would_wait(&self, tier: Tier, capacity: usize) -> bool {
        let mut s = self.lock();
        s.capacity = capacity.max(1);
        self.settings.wait(tier).is_some() && !s.free_for(tier)
    }

    /// Requests that had to wait so far, per tier ([`Tier::ALL`]'s order),
    /// whether or not they got a slot in the end.
    pub fn queued(&self) -> [u64; 3] {
        self.queued.snapshot()
    }

    /// A slot for a request of `tenant` at `tier`, on a pool of `capacity`
    /// slots: at once when one is free and nobody of its tier or above is
    /// ahead (always, for `critical`), else when one is handed on, or
    /// refused when the queue is full, when slots freeing at `drain_per_s`
    /// (if known) would reach it only past its tier's deadline, or when the
    /// deadline passes first.
    pub async fn enter(
        self: &Arc<Self>,
        tier: Tier,
        tenant: &str,
        capacity: usize,
        drain_per_s: Option<f64>,
    ) -> Result<Slot, Refused> {
        let (id, granted, wait) = {
            let mut s = self.lock();
            s.capacity = capacity.max(1);
            // More slots may have appeared (a backend joined).
            s.grant();
            let wait = match self.settings.wait(tier) {
                Some(w) if !s.free_for(tier) => w,
                _ => {
                    s.busy += 1;
                    return Ok(Slot {
                        queue: self.clone(),
                    });
                }
            };
            if s.waiting >= self.settings.max_waiting {
                return Err(Refused::Full);
            }
            // Those ahead: everyone waiting at its tier or above.
            let ahead: usize = s.lanes[..=tier.index()]
                .iter()
                .flat_map(|l| l.tenants.iter())
                .map(|(_, q)| q.len())
                .sum();
            if let Some(rate) = drain_per_s.filter(|r| r.is_finite() && *r > 0.0)
                && (ahead + 1) as f64 / rate > wait.as_secs_f64()
            {
                return Err(Refused::Forecast);
            }
            let (tx, rx) = oneshot::channel();
            let id = s.next_id;
            s.next_id = s.next_id.wrapping_add(1);
            s.lanes[tier.index()].push(tenant, Waiter { id, grant: tx });
            s.waiting += 1;
            self.queued.count(tier);
            (id, rx, wait)
        };
        // The receiver lives in `leave`, so that a client leaving mid-wait
        // (this future dropped) takes its place out, or gives on a slot it
        // was handed, under the lock.
        let mut leave = Leave {
            queue: self,
            tier,
            id,
            granted: Some(granted),
        };
        let Some(rx) = leave.granted.as_mut() else {
            return Err(Refused::Expired);
        };
        let got = tokio::time::timeout(wait, rx).await;
        let slot = || Slot {
            queue: self.clone(),
        };
        match got {
            Ok(Ok(())) => {
                leave.granted = None;
                Ok(slot())
            }
            // The sender went without a grant: cannot happen (only a grant
            // takes a waiter out of line, and it sends first).
            Ok(Err(_)) => {
                leave.granted = None;
                Err(Refused::Expired)
            }
            Err(_) => {
                // Under the lock, with the receiver still held: a grant is
                // either not made yet (and now never will be) or received.
                let mut s = self.lock();
                let rx = leave.granted.take();
                if s.lanes[tier.index()].remove(id) {
                    s.waiting -= 1;
                    return Err(Refused::Expired);
                }
                drop(s);
                match rx.map(|mut r| r.try_recv()) {
                    Some(Ok(())) => Ok(slot()),
                    _ => Err(Refused::Expired),
                }
            }
        }
    }
}

/// Takes a waiter that stopped waiting (its future dropped) out of line.
struct Leave<'a> {
    queue: &'a Arc<Queue>,
    tier: Tier,
    id: u64,
    /// Where its slot arrives; `None` once the wait is over.
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.granted.take() else {
            return;
        };
        let mut s = self.queue.lock();
        if s.lanes[self.tier.index()].remove(self.id) {
            s.waiting -= 1;
        } else if rx.try_recv().is_ok() {
            // Granted already, to a request that is gone: give it on.
            s.busy = s.busy.saturating_sub(1);
            s.grant();
        }
    }
}

#[cfg(test)]
mod tests;
