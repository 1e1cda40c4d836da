//! Waiting for headroom: an admitted request of a lower tier takes a slot
//! of the route's queue ([`crate::route::queue`]) before it goes to a
//! backend, so it binds to one late, when the pool has room; the slot is
//! held for as long as the backend works on the request (its whole answer,
//! streamed or not). With a cost (`pick = "aware"`), a request whose turn
//! is forecast past its tier's deadline is degraded at once.

use http_body_util::BodyExt;
use hyper::Response;

use std::sync::atomic::Ordering;

use super::{Route, response::Body};
use crate::route::{cost::Work, queue::Slot, tier::Tier};

/// What admission let through: the request's tier, its tenant (whose turn
/// it waits for) and the pool's capacity when it was admitted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Admitted<'a> {
    /// Its tier.
    pub tier: Tier,
    /// Its tenant's name (`""`: a client no key names).
    pub tenant: &'a str,
    /// Slots on the pool: `max_in_flight` per live backend.
    pub capacity: usize,
}

impl Route {
    /// A slot for the request, at once or after a wait (`None`: the route
    /// has no queue), or the `Retry-After` of a refusal: the queue was full
    /// or the tier's wait ran out, and the request is degraded as a shed
    /// one would be.
    pub(super) async fn take_slot(
        &self,
        a: &Admitted<'_>,
        work: Option<&Work>,
    ) -> Result<Option<Slot>, u32> {
        let Some(q) = &self.queue else {
            return Ok(None);
        };
        // The forecast costs a prediction per backend: only for a wait.
        let drain = if q.would_wait(a.tier, a.capacity) {
            work.and_then(|w| self.drain_rate(w))
        } else {
            None
        };
        match q.enter(a.tier, a.tenant, a.capacity, drain).await {
            Ok(slot) => Ok(Some(slot)),
            Err(_) => Err(self.admission.drain_s(q.waiting() as f64 + 1.0)),
        }
    }

    /// Slots the pool is forecast to free a second, from the cost model:
    /// each live backend's `max_in_flight` over its predicted end-to-end
    /// time for a request like `work` (`None` without shedding settings or
    /// any live backend).
    fn drain_rate(&self, work: &Work) -> Option<f64> {
        let per = self.cfg.shedding.as_ref()?.max_in_flight as f64;
        let rate: f64 = self
            .members()
            .iter()
            .filter(|m| m.weight > 0)
            .map(|m| {
                let p = m.cost.predict(work, m.in_flight.load(Ordering::Relaxed));
                per / p.e2e_s.max(1e-3)
            })
            .sum();
        (rate > 0.0).then_some(rate)
    }
}

/// `r` with `slot` held until its body has been sent (or dropped).
pub(super) fn hold(r: Response<Body>, slot: Option<Slot>) -> Response<Body> {
    let Some(slot) = slot else {
        return r;
    };
    r.map(|b| {
        b.map_frame(move |f| {
            // Named, so the closure owns the slot (a bare `let _ = &slot`
            // would not capture it).
            let _held = &slot;
            f
        })
        .boxed_unsync()
    })
}
