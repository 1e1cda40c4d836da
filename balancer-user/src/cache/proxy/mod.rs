//! The cache's HTTP side: one listener per route, each an OpenAI-compatible
//! (or generic JSON) reverse proxy in front of a pool of backends.
//!
//! Per request: decide its priority tier ([`crate::route::tier`]; named in
//! `X-Balancer-Tier`), shed it with 429 and `Retry-After` when the pool is
//! saturated and its tier yields ([`crate::route::admission`]), read the
//! body (413 over the route's limit), decide cacheability
//! ([`super::key::classify`]), then
//!
//! - **bypass**: forward as is and stream the answer back (SSE included);
//! - **hit** (L1, then L2): answer from the entry, `X-Cache: HIT` and `Age`;
//! - **miss**: join the request for the same key already in flight, or start
//!   one. The fetch runs in its own task, so a client that hangs up does not
//!   cancel it for the others; its backend is chosen by [`super::pick`]. A 2xx
//!   answer within the object size limit is stored; anything else is only
//!   relayed. A response over the limit streams through to the request that
//!   started the fetch, and the others forward on their own.
//!
//! This file takes a request in and decides hit, miss or bypass;
//! `flight.rs` runs misses (single flight, fill), `forward.rs` talks to
//! backends, `response.rs` builds what goes back.

mod body;
mod degrade;
mod flight;
mod forward;
mod health;
mod locality;
mod placement;
mod response;
mod waiting;

pub use health::MarkDown;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, http::request::Parts};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{net::TcpListener, sync::Semaphore};

use tracing::{debug, warn};

use crate::{
    http,
    route::{
        admission::{self, Admission, Verdict},
        latency::{Histogram, TierLatency},
        queue::Queue,
        tier::{self, Tier, TierCounts},
    },
};

use self::{
    flight::{Flight, Miss},
    response::{
        Body, X_BALANCER_CACHE, X_BALANCER_TIER, X_CACHE, X_CACHE_REASON, hit_response, json_error,
        set,
    },
};
use super::{
    Cache, CacheError, Counter,
    key::{self, Key, KeyScope, OptIn},
    pick::{Member, Pick},
};

/// A route's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Name (part of every key: routes never share entries).
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// How long entries live.
    pub ttl: Duration,
    /// How long past its TTL an entry may still answer a request that a
    /// saturated pool would shed (`X-Cache: STALE`; 0: never).
    pub stale: Duration,
    /// Largest response body stored, bytes.
    pub max_object_bytes: u64,
    /// Largest request body accepted, bytes (413 above).
    pub max_request_bytes: u64,
    /// Top-level request fields left out of the key (e.g. `user`).
    pub exclude_fields: Vec<String>,
    /// Generic (non-OpenAI) paths are deterministic: cache them without the
    /// opt-in header.
    pub deterministic: bool,
    /// Backend timeout for one request: for a miss, the whole exchange
    /// (headers and whole body); when streaming (bypass, oversized), until
    /// the response headers.
    pub timeout: Duration,
    /// How long a client has to send a request head (and the idle keep-alive
    /// limit); see [`http::Settings::header_timeout`].
    pub header_timeout: Duration,
    /// How long a client has to send a whole request body (408 past it).
    pub body_timeout: Duration,
    /// Most client connections served at once; see
    /// [`http::Settings::max_connections`].
    pub max_connections: usize,
    /// Most request body bytes buffered at once across the route (503 with
    /// `Retry-After` past it). A body of unknown length reserves
    /// `max_request_bytes`.
    pub body_budget_bytes: u64,
    /// Who shares entries.
    pub scope: KeyScope,
    /// The headers that carry a client's credentials, for `scope`
    /// (default `authorization` and `x-api-key`).
    pub credential_headers: Vec<header::HeaderName>,
    /// When a failing backend is left out, and for how long.
    pub mark_down: MarkDown,
    /// Which backend gets each request sent on (misses and bypasses).
    pub pick: Pick,
    /// How often `pick = "aware"` asks the backends which models they
    /// serve (`GET /v1/models`).
    pub models_refresh: Duration,
    /// What loading a model costs, where `pick = "aware"` may send a
    /// request to a backend that does not list it (`None`: never).
    pub cold_start: Option<Duration>,
    /// Whether the cache stage runs: when off, every request is forwarded
    /// (`X-Cache: BYPASS`, reason `cache-off`).
    pub cache: bool,
    /// How each request's priority tier is decided.
    pub tiers: crate::route::tier::TierPolicy,
    /// When lower tiers are shed (`None`: never).
    pub shedding: Option<crate::route::admission::Shedding>,
    /// Where requests that would be shed go instead, if anywhere.
    pub fallback: Option<Fallback>,
    /// The gateway's zone and its backends' (`pick = "aware"` keeps
    /// requests in the gateway's zone until it saturates).
    pub zones: Option<crate::route::zone::Zones>,
}

/// A route's fallback: a pool (a smaller model, say) for the requests of
/// some tiers that a saturated pool would shed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Per tier (by [`Tier::index`]): whether it falls back.
    pub tiers: [bool; 3],
    /// The model the fallback pool serves, written into the request's
    /// `model` field (`None`: the request is sent as it is).
    pub model: Option<String>,
}

/// Binds a route's listener (before the route exists: a daemon binds every
/// listener before it touches anything else).
pub async fn bind(cfg: &RouteConfig) -> Result<TcpListener, CacheError> {
    TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| CacheError::Bind {
            route: cfg.name.clone(),
            addr: cfg.listen,
            message: e.to_string(),
        })
}

/// The route's pool: backend addresses and current weights.
pub type PoolSource = Arc<dyn Fn() -> Vec<(SocketAddr, u32)> + Send + Sync>;

/// A route's requests per tier ([`Tier::ALL`]'s order), and what
/// admission did with those it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierTotals {
    /// Requests.
    pub requests: [u64; 3],
    /// Shed with 429.
    pub shed: [u64; 3],
    /// Answered from a stale entry.
    pub stale: [u64; 3],
    /// Sent to the fallback pool.
    pub fallback: [u64; 3],
    /// Made to wait in the route's queue (admitted in the end or not).
    pub queued: [u64; 3],
}

/// A backend the route has sent to: its requests in flight and health.
#[derive(Debug, Default)]
struct Tracked {
    in_flight: Arc<AtomicU64>,
    picked: Arc<AtomicU64>,
    passive: health::Passive,
    cost: Arc<crate::route::cost::Backend>,
}

/// One route's proxy.
pub struct Route {
    cfg: RouteConfig,
    cache: Arc<Cache>,
    pool: PoolSource,
    /// What the route knows of each backend it has sent to.
    backends: Mutex<HashMap<SocketAddr, Arc<Tracked>>>,
    /// The passive health checks' clock.
    born: Instant,
    flights: Mutex<HashMap<Key, Flight>>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The body budget, one permit a byte.
    budget: Arc<Semaphore>,
    /// Requests per priority tier.
    tier_counts: TierCounts,
    /// Of them, those shed (429).
    shed_counts: TierCounts,
    /// Those answered from a stale entry instead.
    stale_counts: TierCounts,
    /// Those sent to the fallback pool instead.
    fallback_counts: TierCounts,
    /// The fallback pool's route, once set.
    fallback: degrade::FallbackRoute,
    /// Shedding's state.
    admission: Admission,
    /// Where lower tiers wait for headroom, if they do.
    queue: Option<Arc<Queue>>,
    /// Answer times per tier.
    latency: TierLatency,
    /// The cost model's.
    placement: placement::Placement,
    /// The models each backend serves (`pick = "aware"`).
    locality: locality::Locality,
}

impl Route {
    /// A route over `cache`, sending misses to `pool`.
    pub fn new(cfg: RouteConfig, cache: Arc<Cache>, pool: PoolSource) -> Arc<Self> {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        let cfg_budget = cfg.body_budget_bytes;
        let cfg_shedding = cfg.shedding;
        Arc::new(Self {
            cfg,
            cache,
            pool,
            backends: Mutex::new(HashMap::new()),
            born: Instant::now(),
            flights: Mutex::new(HashMap::new()),
            client,
            budget: Arc::new(Semaphore::new(
                cfg_budget.min(Semaphore::MAX_PERMITS as u64) as usize,
            )),
            tier_counts: TierCounts::default(),
            shed_counts: TierCounts::default(),
            stale_counts: TierCounts::default(),
            fallback_counts: TierCounts::default(),
            fallback: degrade::FallbackRoute::new(),
            admission: Admission::new(cfg_shedding),
            queue: cfg_shedding.and_then(|s| s.queue).map(Queue::new),
            latency: TierLatency::default(),
            placement: placement::Placement::default(),
            locality: locality::Locality::default(),
        })
    }

    /// The route's configuration.
    pub fn config(&self) -> &RouteConfig {
        &self.cfg
    }

    /// Serves connections until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut settings = http::Settings::new(format!("cache route {}", self.cfg.name)).nodelay();
        settings.header_timeout = self.cfg.header_timeout;
        settings.max_connections = self.cfg.max_connections;
        if self.cfg.pick == Pick::Aware {
            tokio::spawn(self.clone().watch_models());
        }
        http::serve(listener, settings, move |req| {
            let route = self.clone();
            async move { route.handle(req).await }
        })
        .await
    }

    /// The pool as `pick` sees it: a backend marked down has no weight,
    /// unless every backend is down (trying one beats refusing all).
    fn members(&self) -> Vec<Member> {
        let pool = (self.pool)();
        let now = self.clock_ms();
        let served = self.locality.served.load();
        let mut known = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        // Forget backends that left the pool once nothing is in flight there.
        known.retain(|a, t| {
            pool.iter().any(|(p, _)| p == a) || t.in_flight.load(Ordering::Relaxed) > 0
        });
        let mut members: Vec<(Member, bool)> = pool
            .into_iter()
            .map(|(addr, weight)| {
                let t = known.entry(addr).or_default();
                let m = Member {
                    addr,
                    weight,
                    in_flight: t.in_flight.clone(),
                    picked: t.picked.clone(),
                    cost: t.cost.clone(),
                    models: served.get(&addr).cloned(),
                    place: self
                        .cfg
                        .zones
                        .as_ref()
                        .map_or(crate::route::zone::Place::Unknown, |z| z.place(addr)),
                };
                (m, t.passive.is_down(now))
            })
            .collect();
        if members.iter().any(|(m, down)| !down && m.weight > 0) {
            for (m, down) in &mut members {
                if *down {
                    m.weight = 0;
                }
            }
        }
        members.into_iter().map(|(m, _)| m).collect()
    }

    /// Milliseconds since the route started (monotonic).
    fn clock_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// What the route knows of `addr`, made known if it was not.
    fn tracked(&self, addr: SocketAddr) -> Arc<Tracked> {
        let mut known = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        known.entry(addr).or_default().clone()
    }

    /// Records how a request to `addr` went, for passive health.
    fn record(&self, addr: SocketAddr, ok: bool) {
        let t = {
            let known = self.backends.lock().unwrap_or_else(|e| e.into_inner());
            known.get(&addr).cloned()
        };
        let Some(t) = t else { return };
        if ok {
            t.passive.ok();
        } else if t.passive.fail(self.cfg.mark_down, self.clock_ms()) {
            self.cache.counters.bump(Counter::MarkedDown);
            warn!(route = %self.cfg.name, backend = %addr, failures = self.cfg.mark_down.after,
                cooldown = ?self.cfg.mark_down.cooldown, "backend marked down");
        }
    }

    /// Handles one request: decides its tier (400 when `x-priority` is
    /// unreadable), serves it, and names the tier in the answer.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let arrived = Instant::now();
        let (parts, body) = req.into_parts();
        let (tier, tenant) = match self.cfg.tiers.decide(&parts.headers) {
            Ok(d) => {
                if d.capped {
                    debug!(route = %self.cfg.name, tenant = d.tenant.map(|t| t.name.as_str()),
                        tier = %d.tier, "x-priority asked above the client's max tier");
                }
                (d.tier, d.tenant.map_or("", |t| t.name.as_str()))
            }
            Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_priority", &e.to_string()),
        };
        self.tier_counts.count(tier);
        let (verdict, capacity) = self.admit(tier);
        let mut r = match verdict {
            Verdict::Admit => {
                let a = waiting::Admitted {
                    tier,
                    tenant,
                    capacity,
                };
                self.serve_request(parts, body, a).await
            }
            Verdict::Shed { retry_after_s } => self.degrade(parts, body, tier, retry_after_s).await,
        };
        set(r.headers_mut(), X_BALANCER_TIER, tier.label());
        self.latency.record(tier, arrived.elapsed());
        r
    }

    /// Answer times per tier ([`Tier::ALL`]'s order).
    pub fn latency(&self) -> [Histogram; 3] {
        self.latency.snapshot()
    }

    /// Requests so far per tier, and of them those shed, answered stale
    /// and sent to the fallback pool.
    pub fn tier_counts(&self) -> TierTotals {
        TierTotals {
            requests: self.tier_counts.snapshot(),
            shed: self.shed_counts.snapshot(),
            stale: self.stale_counts.snapshot(),
            fallback: self.fallback_counts.snapshot(),
            queued: self.queue.as_ref().map_or([0; 3], |q| q.queued()),
        }
    }

    /// Whether a request of `tier` goes on, from the pool's requests in
    /// flight and waiting against its capacity; and that capacity (slots).
    fn admit(&self, tier: Tier) -> (Verdict, usize) {
        let Some(s) = &self.cfg.shedding else {
            return (Verdict::Admit, 0);
        };
        let members = self.members();
        let live = members.iter().filter(|m| m.weight > 0);
        let in_flight: u64 = live
            .clone()
            .map(|m| m.in_flight.load(Ordering::Relaxed))
            .sum();
        let waiting = self.queue.as_ref().map_or(0, |q| q.waiting()) as u64;
        let live = live.count();
        let verdict = self
            .admission
            .decide(tier, in_flight + waiting, live, admission::draw());
        (verdict, s.max_in_flight as usize * live.max(1))
    }

    /// The 429 of a shed request.
    fn shed(&self, tier: Tier, retry_after_s: u32) -> Response<Body> {
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "shed",
            &format!(
                "route {:?} is saturated and sheds {tier} requests; retry after {retry_after_s} s",
                self.cfg.name
            ),
        );
        set(
            r.headers_mut(),
            header::RETRY_AFTER,
            &retry_after_s.to_string(),
        );
        r
    }

    /// The body a backend is sent: with the tier as vLLM's `priority` when
    /// the route passes it on.
    fn for_engine(&self, body: Bytes, tier: Tier) -> Bytes {
        if !self.cfg.tiers.priority_field {
            return body;
        }
        tier::with_priority(&body, tier).map_or(body, Bytes::from)
    }

    /// Reads, classifies and answers one admitted request; one for a
    /// backend first takes a slot of the route's queue (a refused one is
    /// degraded).
    async fn serve_request(
        self: &Arc<Self>,
        parts: Parts,
        body: Incoming,
        a: waiting::Admitted<'_>,
    ) -> Response<Body> {
        let tier = a.tier;
        // The reservation lasts as long as the body is ours to buffer.
        let (body, _budget) = match self.read_body(&parts, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let work = self.work(&body);
        let mut m = match self.classify(&parts, &body) {
            Ok(m) => m,
            Err(why) => {
                self.cache.counters.bump(Counter::Bypasses);
                let slot = match self.take_slot(&a, work.as_ref()).await {
                    Ok(s) => s,
                    Err(retry) => return self.degrade_read(&parts, body, tier, retry).await,
                };
                let k = self.bypass_key(&parts, &body);
                let body = self.for_engine(body, tier);
                let mut r = self
                    .forward_streaming(&parts, body, Some(k), work.as_ref())
                    .await;
                set(r.headers_mut(), X_CACHE, "BYPASS");
                set(r.headers_mut(), X_CACHE_REASON, why.label());
                return waiting::hold(r, slot);
            }
        };
        if let Some((e, level)) = self.cache.lookup(&m.model, &m.key).await {
            self.cache.count_hit(&e, level);
            return hit_response(&e, &m.key, level);
        }
        let slot = match self.take_slot(&a, work.as_ref()).await {
            Ok(s) => s,
            Err(retry) => return self.degrade_read(&parts, body, tier, retry).await,
        };
        let body = self.for_engine(body, tier);
        m.work = work;
        waiting::hold(self.miss(parts, body, m).await, slot)
    }

    /// Whether the request is cacheable, and if so its key (made with the
    /// model's current version and the route's key scope).
    fn classify(&self, parts: &Parts, body: &Bytes) -> Result<Miss, key::Bypass> {
        if !self.cfg.cache {
            return Err(key::Bypass::Off);
        }
        if parts.method != Method::POST {
            return Err(key::Bypass::Method);
        }
        if accepts_only_events(&parts.headers) {
            return Err(key::Bypass::Streaming);
        }
        let path = parts.uri.path();
        let opt = OptIn::parse(
            parts
                .headers
                .get(X_BALANCER_CACHE)
                .and_then(|v| v.to_str().ok()),
        );
        let credential = self.cfg.scope.credential(
            self.cfg
                .credential_headers
                .iter()
                .filter_map(|h| Some((h.as_str(), parts.headers.get(h)?.as_bytes()))),
        )?;
        let c = key::classify(
            path,
            body,
            &self.cfg.exclude_fields,
            opt,
            self.cfg.deterministic,
        )?;
        let version = self.cache.version(&c.model);
        // The backend is sent the query string too: `?top_n=3` and
        // `?top_n=50` are different answers.
        let target = parts.uri.path_and_query().map_or(path, |p| p.as_str());
        Ok(Miss {
            key: key::key(
                &self.cfg.name,
                target,
                &c.model,
                &version,
                &credential,
                &c.canonical,
            ),
            model: c.model,
            prompt: c.prompt,
            version,
            work: None,
        })
    }
}

/// Whether the client asks for server-sent events and nothing else (a
/// backend may stream on `Accept` alone).
fn accepts_only_events(h: &hyper::HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod limits_tests;

#[cfg(test)]
mod testkit;

#[cfg(test)]
mod key_tests;

#[cfg(test)]
mod tier_tests;

#[cfg(test)]
mod queue_tests;
