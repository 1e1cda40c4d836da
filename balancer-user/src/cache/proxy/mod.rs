//! The cache's HTTP side: one listener per route, each an OpenAI-compatible
//! (or generic JSON) reverse proxy in front of a pool of backends.
//!
//! Per request: read the body (413 over the route's limit), decide
//! cacheability ([`super::key::classify`]), then
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

mod flight;
mod forward;
mod response;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, http::request::Parts};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::net::TcpListener;

use crate::http;

use self::{
    flight::{Flight, Miss},
    response::{Body, X_BALANCER_CACHE, X_CACHE, X_CACHE_REASON, hit_response, json_error, set},
};
use super::{
    Cache, CacheError, Counter,
    key::{self, Key, OptIn},
    pick::Member,
};

/// A route's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Name (part of every key: routes never share entries).
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// How long entries live.
    pub ttl: Duration,
    /// Largest response body stored, bytes.
    pub max_object_bytes: u64,
    /// Largest request body accepted, bytes (413 above).
    pub max_request_bytes: u64,
    /// Top-level request fields left out of the key (e.g. `user`).
    pub exclude_fields: Vec<String>,
    /// Generic (non-OpenAI) paths are deterministic: cache them without the
    /// opt-in header.
    pub deterministic: bool,
    /// Backend timeout for one request.
    pub timeout: Duration,
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

/// One route's proxy.
pub struct Route {
    cfg: RouteConfig,
    cache: Arc<Cache>,
    pool: PoolSource,
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicU64>>>,
    flights: Mutex<HashMap<Key, Flight>>,
    client: Client<HttpConnector, Full<Bytes>>,
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
        Arc::new(Self {
            cfg,
            cache,
            pool,
            in_flight: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            client,
        })
    }

    /// The route's configuration.
    pub fn config(&self) -> &RouteConfig {
        &self.cfg
    }

    /// Serves connections until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let settings = http::Settings::new(format!("cache route {}", self.cfg.name)).nodelay();
        http::serve(listener, settings, move |req| {
            let route = self.clone();
            async move { route.handle(req).await }
        })
        .await
    }

    fn members(&self) -> Vec<Member> {
        let pool = (self.pool)();
        let mut counts = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        pool.into_iter()
            .map(|(addr, weight)| Member {
                addr,
                weight,
                in_flight: counts.entry(addr).or_default().clone(),
            })
            .collect()
    }

    /// Handles one request.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match self.read_body(&parts, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let m = match self.classify(&parts, &body) {
            Ok(m) => m,
            Err(why) => {
                self.cache.counters.bump(Counter::Bypasses);
                let mut r = self.forward_streaming(&parts, body, None).await;
                set(r.headers_mut(), X_CACHE, "BYPASS");
                set(r.headers_mut(), X_CACHE_REASON, why.label());
                return r;
            }
        };
        if let Some((e, level)) = self.cache.lookup(&m.model, &m.key).await {
            self.cache.count_hit(&e, level);
            return hit_response(&e, &m.key, level);
        }
        self.miss(parts, body, m).await
    }

    /// Reads the whole request body; 413 over the route's limit (declared
    /// or read), 400 when it cannot be read.
    async fn read_body(&self, parts: &Parts, body: Incoming) -> Result<Bytes, Response<Body>> {
        let limit = self.cfg.max_request_bytes;
        let too_large = || {
            self.cache.counters.bump(Counter::TooLarge);
            json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &format!(
                    "request body exceeds this route's limit of {limit} bytes (max_request_bytes of cache route {:?})",
                    self.cfg.name
                ),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        match http_body_util::Limited::new(body, limit as usize)
            .collect()
            .await
        {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("reading the request body: {e}"),
            )),
        }
    }

    /// Whether the request is cacheable, and if so its key (made with the
    /// model's current version).
    fn classify(&self, parts: &Parts, body: &Bytes) -> Result<Miss, key::Bypass> {
        if parts.method != Method::POST {
            return Err(key::Bypass::Method);
        }
        let path = parts.uri.path();
        let opt = OptIn::parse(
            parts
                .headers
                .get(X_BALANCER_CACHE)
                .and_then(|v| v.to_str().ok()),
        );
        let c = key::classify(
            path,
            body,
            &self.cfg.exclude_fields,
            opt,
            self.cfg.deterministic,
        )?;
        let version = self.cache.version(&c.model);
        Ok(Miss {
            key: key::key(&self.cfg.name, path, &c.model, &version, &c.canonical),
            model: c.model,
            prompt: c.prompt,
            version,
        })
    }
}

#[cfg(test)]
mod tests;
