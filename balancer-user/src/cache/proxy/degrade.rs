//! What a request that admission refused gets instead of its backend, in
//! order: a stale cache entry (`X-Cache: STALE`), when the route keeps them
//! and one exists; the route's fallback pool (`X-Balancer-Fallback`), when
//! its tier falls back; else 429 with `Retry-After`.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use hyper::{Response, body::Incoming, header::HeaderName, http::request::Parts};

use super::{
    PoolSource, Route, RouteConfig,
    response::{Body, X_CACHE, hit_response, set},
};
use crate::{
    cache::{Level, pick::Pick},
    route::{request, tier::Tier},
};

/// Names the fallback that answered (its model, or `pool`).
pub const X_BALANCER_FALLBACK: HeaderName = HeaderName::from_static("x-balancer-fallback");

/// A route's fallback route, set once the daemon has its pool.
pub(super) type FallbackRoute = OnceLock<Arc<Route>>;

impl Route {
    /// Gives the route its fallback pool (its `[route.fallback]`): a route
    /// of its own, cache-less, by least request, that never sheds.
    pub fn set_fallback(&self, pool: PoolSource) {
        if self.cfg.fallback.is_none() {
            return;
        }
        let cfg = RouteConfig {
            name: format!("{}.fallback", self.cfg.name),
            cache: false,
            pick: Pick::LeastRequest,
            shedding: None,
            fallback: None,
            tiers: Default::default(),
            ..self.cfg.clone()
        };
        let _ = self.fallback.set(Route::new(cfg, self.cache.clone(), pool));
    }

    /// What a refused request of `tier` may get before a 429: whether the
    /// route answers stale, and its fallback route if the tier falls back.
    fn ladder(&self, tier: Tier) -> (bool, Option<&Arc<Route>>) {
        let stale = self.cfg.cache && !self.cfg.stale.is_zero();
        let fallback = self.fallback.get().filter(|_| {
            self.cfg
                .fallback
                .as_ref()
                .is_some_and(|f| f.tiers[tier.index()])
        });
        (stale, fallback)
    }

    /// Answers a request of `tier` that admission refused.
    pub(super) async fn degrade(
        self: &Arc<Self>,
        parts: Parts,
        body: Incoming,
        tier: Tier,
        retry_after_s: u32,
    ) -> Response<Body> {
        let (stale, fallback) = self.ladder(tier);
        if !stale && fallback.is_none() {
            return self.refuse(tier, retry_after_s);
        }
        let (body, _budget) = match self.read_body(&parts, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        self.degrade_read(&parts, body, tier, retry_after_s).await
    }

    /// Answers a request of `tier` that admission or the queue refused,
    /// its body read.
    pub(super) async fn degrade_read(
        &self,
        parts: &Parts,
        body: Bytes,
        tier: Tier,
        retry_after_s: u32,
    ) -> Response<Body> {
        let (stale, fallback) = self.ladder(tier);
        if stale
            && let Ok(m) = self.classify(parts, &body)
            && let Some(e) =
                self.cache
                    .lookup_stale(&m.model, &m.key, self.cfg.stale.as_millis() as u64)
        {
            self.stale_counts.count(tier);
            let mut r = hit_response(&e, &m.key, Level::L1);
            set(r.headers_mut(), X_CACHE, "STALE");
            return r;
        }
        if let Some(fb) = fallback {
            self.fallback_counts.count(tier);
            let model = self.cfg.fallback.as_ref().and_then(|f| f.model.as_deref());
            let body = match model {
                Some(m) => request::with_field(&body, "model", m.into()).map_or(body, Bytes::from),
                None => body,
            };
            let mut r = fb.forward_streaming(parts, body, None, None).await;
            set(
                r.headers_mut(),
                X_BALANCER_FALLBACK,
                model.unwrap_or("pool"),
            );
            return r;
        }
        self.refuse(tier, retry_after_s)
    }

    /// The 429, counted.
    fn refuse(&self, tier: Tier, retry_after_s: u32) -> Response<Body> {
        self.shed_counts.count(tier);
        self.shed(tier, retry_after_s)
    }
}
