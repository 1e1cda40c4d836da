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

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{net::TcpListener, sync::watch};

use crate::http;

use super::{
    Cache, CacheError, Counter, Level,
    key::{self, Key, OptIn},
    now_ms,
    pick::{self, Member},
    store::Entry,
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

/// The response body type.
type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Header names.
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");
const X_CACHE_SOURCE: HeaderName = HeaderName::from_static("x-cache-source");
const X_CACHE_REASON: HeaderName = HeaderName::from_static("x-cache-reason");
const X_BALANCER_CACHE: &str = "x-balancer-cache";

/// What a finished fetch hands to everyone waiting on it.
enum Outcome {
    /// The whole response (cached or not).
    Done {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// Too big to share: the starter streams it, the others forward alone.
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        head: Bytes,
        rest: Mutex<Option<Incoming>>,
    },
    /// The backend could not be reached (status and message for the client).
    Failed(StatusCode, String),
}

type Flight = watch::Receiver<Option<Arc<Outcome>>>;

/// One route's proxy.
pub struct Route {
    cfg: RouteConfig,
    cache: Arc<Cache>,
    pool: PoolSource,
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicU64>>>,
    flights: Mutex<HashMap<Key, Flight>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn json_error(status: StatusCode, kind: &str, msg: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"message": msg, "type": kind}}).to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn is_hop_by_hop(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "host"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !is_hop_by_hop(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

fn set(h: &mut HeaderMap, k: HeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(k, v);
    }
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
            return too_large();
        }
        let body = match http_body_util::Limited::new(body, limit as usize)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("reading the request body: {e}"),
                );
            }
        };
        let path = parts.uri.path().to_string();
        let opt = OptIn::parse(
            parts
                .headers
                .get(X_BALANCER_CACHE)
                .and_then(|v| v.to_str().ok()),
        );
        let classified = if parts.method != Method::POST {
            Err(key::Bypass::Method)
        } else {
            key::classify(
                &path,
                &body,
                &self.cfg.exclude_fields,
                opt,
                self.cfg.deterministic,
            )
        };
        let c = match classified {
            Ok(c) => c,
            Err(why) => {
                self.cache.counters.bump(Counter::Bypasses);
                let mut r = self.forward_streaming(&parts, body, None).await;
                set(r.headers_mut(), X_CACHE, "BYPASS");
                set(r.headers_mut(), X_CACHE_REASON, why.label());
                return r;
            }
        };
        let version = self.cache.version(&c.model);
        let k = key::key(&self.cfg.name, &path, &c.model, &version, &c.canonical);
        if let Some((e, level)) = self.cache.lookup(&c.model, &k).await {
            self.cache.count_hit(&e, level);
            return hit_response(&e, &k, level);
        }
        self.miss(parts, body, k, c.model, c.prompt, version).await
    }

    async fn miss(
        self: &Arc<Self>,
        parts: hyper::http::request::Parts,
        body: Bytes,
        k: Key,
        model: String,
        prompt: String,
        version: String,
    ) -> Response<Body> {
        let (mut rx, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&k) {
                Some(rx) => (rx.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(k, rx.clone());
                    let route = self.clone();
                    let parts = clone_parts(&parts);
                    let body = body.clone();
                    tokio::spawn(async move {
                        // However the fetch ends, the flight ends with it:
                        // a stale entry would make every later miss of
                        // this key wait on a dead channel.
                        let _done = FlightDone(route.clone(), k);
                        let out = route.fetch(&parts, body, k, model, prompt, version).await;
                        let _ = tx.send(Some(Arc::new(out)));
                    });
                    (rx, true)
                }
            }
        };
        self.cache.counters.bump(if leader {
            Counter::Misses
        } else {
            Counter::Coalesced
        });
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        let Some(outcome) = outcome else {
            return json_error(
                StatusCode::BAD_GATEWAY,
                "backend_error",
                "the backend request was abandoned",
            );
        };
        match &*outcome {
            Outcome::Done {
                status,
                headers,
                body,
            } => {
                let mut r = Response::new(full(body.clone()));
                *r.status_mut() = *status;
                copy_headers(headers, r.headers_mut());
                set(r.headers_mut(), X_CACHE, "MISS");
                set(r.headers_mut(), X_CACHE_KEY, &k.to_string());
                r
            }
            Outcome::Stream {
                status,
                headers,
                head,
                rest,
            } => {
                let rest = rest.lock().ok().and_then(|mut r| r.take());
                match rest {
                    Some(rest) => {
                        let head = futures_util::stream::once({
                            let head = head.clone();
                            async move { Ok::<_, hyper::Error>(Frame::data(head)) }
                        });
                        let body = StreamBody::new(head.chain(BodyStream::new(rest)));
                        let mut r = Response::new(body.boxed_unsync());
                        *r.status_mut() = *status;
                        copy_headers(headers, r.headers_mut());
                        set(r.headers_mut(), X_CACHE, "MISS");
                        r
                    }
                    None => {
                        // Someone else streams the original: fetch our own copy.
                        let mut r = self.forward_streaming(&parts, body, Some(k)).await;
                        set(r.headers_mut(), X_CACHE, "MISS");
                        r
                    }
                }
            }
            Outcome::Failed(status, msg) => json_error(*status, "backend_error", msg),
        }
    }

    fn backend_error(&self) {
        self.cache.counters.bump(Counter::BackendErrors);
    }

    /// Sends the request to a backend of the pool (503 when none has
    /// weight).
    async fn send(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
        hash: u64,
    ) -> Result<(Response<Incoming>, pick::InFlight), (StatusCode, String)> {
        let members = self.members();
        let Some((addr, guard)) = pick::pick(hash, &members) else {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cache route {:?} has no backend with weight", self.cfg.name),
            ));
        };
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = match format!("http://{addr}{pq}").parse() {
            Ok(u) => u,
            Err(e) => return Err((StatusCode::BAD_REQUEST, format!("bad request path: {e}"))),
        };
        copy_headers(&parts.headers, req.headers_mut());
        req.headers_mut().remove(X_BALANCER_CACHE);
        match tokio::time::timeout(self.cfg.timeout, self.client.request(req)).await {
            Ok(Ok(r)) => Ok((r, guard)),
            Ok(Err(e)) => {
                self.backend_error();
                Err((StatusCode::BAD_GATEWAY, format!("backend {addr}: {e}")))
            }
            Err(_) => {
                self.backend_error();
                Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "backend {addr} did not answer within {:?}",
                        self.cfg.timeout
                    ),
                ))
            }
        }
    }

    /// Forwards without the cache, streaming the response back.
    async fn forward_streaming(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
        k: Option<Key>,
    ) -> Response<Body> {
        let hash = k
            .map(|k| k.short())
            .unwrap_or_else(|| key::key(&self.cfg.name, parts.uri.path(), "", "", &body).short());
        match self.send(parts, body, hash).await {
            Ok((resp, guard)) => {
                let (p, b) = resp.into_parts();
                // The in-flight count lasts as long as the body streams.
                let stream = BodyStream::new(b).map(move |f| {
                    let _ = &guard;
                    f
                });
                let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
                *r.status_mut() = p.status;
                copy_headers(&p.headers, r.headers_mut());
                r
            }
            Err((status, msg)) => json_error(status, "backend_error", &msg),
        }
    }

    /// The single fetch behind a miss.
    async fn fetch(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
        k: Key,
        model: String,
        prompt: String,
        version: String,
    ) -> Outcome {
        let t0 = Instant::now();
        let (resp, _guard) = match self.send(parts, body, k.short()).await {
            Ok(r) => r,
            Err((s, m)) => return Outcome::Failed(s, m),
        };
        let (p, mut b) = resp.into_parts();
        let mut buf = BytesMut::new();
        let limit = self.cfg.max_object_bytes as usize;
        loop {
            let next = tokio::time::timeout(self.cfg.timeout, b.frame()).await;
            match next {
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        buf.extend_from_slice(&d);
                        if buf.len() > limit {
                            self.cache.counters.bump(Counter::Uncacheable);
                            return Outcome::Stream {
                                status: p.status,
                                headers: p.headers,
                                head: buf.freeze(),
                                rest: Mutex::new(Some(b)),
                            };
                        }
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    self.backend_error();
                    return Outcome::Failed(
                        StatusCode::BAD_GATEWAY,
                        format!("backend response broke off: {e}"),
                    );
                }
                Err(_) => {
                    self.backend_error();
                    return Outcome::Failed(
                        StatusCode::GATEWAY_TIMEOUT,
                        "backend response stalled".into(),
                    );
                }
            }
        }
        let cost = t0.elapsed().as_secs_f64();
        let body = buf.freeze();
        let no_store = p
            .headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("no-store"));
        if p.status.is_success() && !no_store {
            let now = now_ms();
            self.cache.fill(
                k,
                Arc::new(Entry {
                    status: p.status.as_u16(),
                    content_type: p
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                    body: body.clone(),
                    created_ms: now,
                    expires_ms: now + self.cfg.ttl.as_millis() as u64,
                    cost_s: cost,
                    model,
                    version,
                    prompt,
                }),
            );
        } else {
            self.cache.counters.bump(Counter::Uncacheable);
        }
        Outcome::Done {
            status: p.status,
            headers: p.headers,
            body,
        }
    }
}

/// Removes a key's flight when dropped.
struct FlightDone(Arc<Route>, Key);

impl Drop for FlightDone {
    fn drop(&mut self) {
        self.0
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

fn clone_parts(p: &hyper::http::request::Parts) -> hyper::http::request::Parts {
    let mut b = Request::builder()
        .method(p.method.clone())
        .uri(p.uri.clone())
        .version(p.version);
    if let Some(h) = b.headers_mut() {
        *h = p.headers.clone();
    }
    b.body(())
        .map(|r| r.into_parts().0)
        .unwrap_or_else(|_| Request::new(()).into_parts().0)
}

fn hit_response(e: &Entry, k: &Key, level: Level) -> Response<Body> {
    let mut r = Response::new(full(e.body.clone()));
    *r.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    if let Some(ct) = &e.content_type {
        set(h, header::CONTENT_TYPE, ct);
    }
    set(h, X_CACHE, "HIT");
    set(h, X_CACHE_KEY, &k.to_string());
    set(
        h,
        X_CACHE_SOURCE,
        match level {
            Level::L1 => "l1",
            Level::L2 => "l2",
        },
    );
    let age = now_ms().saturating_sub(e.created_ms) / 1000;
    set(h, header::AGE, &age.to_string());
    r
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
