//! Sending a request to a backend of the route's pool, and forwarding
//! without the cache.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::{Request, Response, StatusCode, body::Incoming, http::request::Parts};
use tracing::debug;

use super::{
    Route,
    response::{Body, X_BALANCER_CACHE, copy_headers, json_error},
};
use crate::{
    cache::{
        Counter,
        key::{self, Key},
        pick,
    },
    route::cost::{Dispatch, Work},
};

/// A request sent: counted in flight, and followed by the cost model when
/// it has a cost, until dropped.
pub(super) struct Sent {
    _in_flight: pick::InFlight,
    /// The cost model's follower.
    pub(super) dispatch: Option<Dispatch>,
}

impl Route {
    /// Counts a backend that failed or timed out.
    pub(super) fn backend_error(&self) {
        self.cache.counters.bump(Counter::BackendErrors);
    }

    /// Sends the request to a backend of the pool (503 when none has
    /// weight). The guard counts it in flight until dropped. With `retry`
    /// (a miss: the request is cacheable, so repeatable), a backend that
    /// cannot be connected to is left out and the key's next choice tried
    /// once, so a dead backend in a static pool does not fail its share of
    /// keys. `work` is the request's cost, when the route places by cost.
    pub(super) async fn send(
        &self,
        parts: &Parts,
        body: Bytes,
        hash: u64,
        retry: bool,
        work: Option<&Work>,
    ) -> Result<(Response<Incoming>, Sent), (StatusCode, String)> {
        let mut members = self.members();
        let mut retry = retry;
        let ask = pick::Ask {
            key: hash,
            work,
            // A miss (the only retried request) is cacheable.
            affine: retry,
            cold_start_s: self.cfg.cold_start.map(|d| d.as_secs_f64()),
        };
        loop {
            // `aware` is asked directly: its reason goes to `route explain`.
            let chosen = match (self.cfg.pick, work) {
                (pick::Pick::Aware, Some(w)) => pick::aware::choose(&ask, w, &members)
                    .map(|c| (c.member, pick::take(c.member), Some(c))),
                _ => pick::pick_for(self.cfg.pick.selector(), &ask, &members)
                    .map(|(m, g)| (m, g, None)),
            };
            let Some((m, guard, choice)) = chosen else {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cache route {:?} has no backend with weight", self.cfg.name),
                ));
            };
            let addr = m.addr;
            let mut sent_as = Sent {
                dispatch: work.map(|w| self.dispatch(m, w, choice.as_ref())),
                _in_flight: guard,
            };
            let sent = self.send_to(addr, parts, body.clone()).await;
            // A bad request path is the client's fault, not the backend's.
            if !matches!(sent, Err(Failure::Path(_))) {
                self.record(addr, sent.is_ok());
            }
            match sent {
                Ok(r) => {
                    if let Some(d) = &mut sent_as.dispatch {
                        d.answered(r.status().is_success());
                    }
                    return Ok((r, sent_as));
                }
                Err(Failure::Connect(e)) if retry && members.len() > 1 => {
                    debug!(route = %self.cfg.name, backend = %addr, error = %e, "connect failed; trying the next choice");
                    self.backend_error();
                    members.retain(|m| m.addr != addr);
                    retry = false;
                }
                Err(f) => {
                    self.backend_error();
                    return Err(f.answer(addr, self.cfg.timeout));
                }
            }
        }
    }

    /// Sends the request to `addr`, waiting for its response headers up to
    /// the route's timeout.
    async fn send_to(
        &self,
        addr: SocketAddr,
        parts: &Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, Failure> {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = format!("http://{addr}{pq}")
            .parse()
            .map_err(|e| Failure::Path(format!("{e}")))?;
        copy_headers(&parts.headers, req.headers_mut());
        req.headers_mut().remove(X_BALANCER_CACHE);
        match tokio::time::timeout(self.cfg.timeout, self.client.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) if e.is_connect() => Err(Failure::Connect(e.to_string())),
            Ok(Err(e)) => Err(Failure::Other(e.to_string())),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// The key that picks a bypassing request's backend: its path and
    /// body as the client sent them (before the tier is written into it,
    /// so one request goes to one backend whatever its tier).
    pub(super) fn bypass_key(&self, parts: &Parts, body: &[u8]) -> Key {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        key::key(&self.cfg.name, target, "", "", b"", body)
    }

    /// Forwards without the cache, streaming the response back. `k` picks
    /// the backend when the request has a key (otherwise its path and body
    /// do); `work` is its cost, when the route places by cost.
    pub(super) async fn forward_streaming(
        &self,
        parts: &Parts,
        body: Bytes,
        k: Option<Key>,
        work: Option<&Work>,
    ) -> Response<Body> {
        let hash = k.unwrap_or_else(|| self.bypass_key(parts, &body)).short();
        match self.send(parts, body, hash, false, work).await {
            Ok((resp, mut sent)) => {
                let (p, b) = resp.into_parts();
                // The in-flight count lasts as long as the body streams, and
                // the cost model sees each chunk (the first is the first
                // token).
                let stream = BodyStream::new(b).map(move |f| {
                    // The whole `sent`, not only the field used: a closure
                    // capturing `sent.dispatch` alone would drop the
                    // in-flight count here and now.
                    let sent = &mut sent;
                    if let (Ok(frame), Some(d)) = (&f, &mut sent.dispatch)
                        && let Some(data) = frame.data_ref()
                    {
                        d.chunk(data);
                    }
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
}

/// Why a backend did not answer.
enum Failure {
    /// The request path does not make a URI.
    Path(String),
    /// No connection (the request was never sent).
    Connect(String),
    /// The exchange failed.
    Other(String),
    /// No response headers within the route's timeout.
    Timeout,
}

impl Failure {
    /// The status and message for the client.
    fn answer(self, addr: SocketAddr, timeout: std::time::Duration) -> (StatusCode, String) {
        match self {
            Failure::Path(e) => (StatusCode::BAD_REQUEST, format!("bad request path: {e}")),
            Failure::Connect(e) | Failure::Other(e) => {
                (StatusCode::BAD_GATEWAY, format!("backend {addr}: {e}"))
            }
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("backend {addr} did not answer within {timeout:?}"),
            ),
        }
    }
}

/// A copy of a request's head (`Parts` is not `Clone`), for the fetch task.
pub(super) fn clone_parts(p: &Parts) -> Parts {
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
