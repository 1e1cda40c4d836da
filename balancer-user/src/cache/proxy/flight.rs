//! Misses: one backend fetch per key however many identical requests wait
//! on it (single flight), and the fill of L1 and L2 with its answer.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::{
    HeaderMap, Response, StatusCode,
    body::{Frame, Incoming},
    header,
    http::{request::Parts, response},
};
use tokio::sync::watch;

use super::{
    Route,
    forward::clone_parts,
    response::{Body, X_CACHE, X_CACHE_KEY, copy_headers, full, json_error, set},
};
use crate::cache::{
    Counter,
    key::{Key, KeyScope},
    now_ms,
    store::Entry,
};

/// What a finished fetch hands to everyone waiting on it.
pub(super) enum Outcome {
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

impl Outcome {
    /// Whether the answer belongs to the client that started the fetch and
    /// must not be shared with the others: it sets a cookie, or it is about
    /// that client's credentials or quota (401, 403, 407, 429).
    fn personal(&self) -> bool {
        match self {
            Self::Done {
                status, headers, ..
            }
            | Self::Stream {
                status, headers, ..
            } => personal(*status, headers),
            Self::Failed(..) => false,
        }
    }
}

/// See [`Outcome::personal`].
fn personal(status: StatusCode, headers: &HeaderMap) -> bool {
    headers.contains_key(header::SET_COOKIE) || matches!(status.as_u16(), 401 | 403 | 407 | 429)
}

/// Where the requests waiting on a fetch get its outcome.
pub(super) type Flight = watch::Receiver<Option<Arc<Outcome>>>;

/// A cacheable request that missed: its key and what its entry records.
pub(super) struct Miss {
    /// The key.
    pub(super) key: Key,
    /// The request's model.
    pub(super) model: String,
    /// Its prompt text (for prefix invalidation).
    pub(super) prompt: String,
    /// The model version the key was made with.
    pub(super) version: String,
    /// Its cost, when the route places by cost.
    pub(super) work: Option<crate::route::cost::Work>,
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

impl Route {
    /// Answers a miss: joins the fetch of the same key in flight, or starts
    /// it.
    pub(super) async fn miss(
        self: &Arc<Self>,
        parts: Parts,
        body: Bytes,
        m: Miss,
    ) -> Response<Body> {
        let k = m.key;
        let (mut rx, leader) = self.join_or_start(&parts, &body, m);
        self.cache.counters.bump(if leader {
            Counter::Misses
        } else {
            Counter::Coalesced
        });
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(outcome) if !leader && outcome.personal() => {
                // Another client's cookie or refusal is not ours: ask alone.
                let mut r = self.forward_streaming(&parts, body, Some(k), None).await;
                set(r.headers_mut(), X_CACHE, "MISS");
                r
            }
            Some(outcome) => self.relay(&outcome, parts, body, k).await,
            None => json_error(
                StatusCode::BAD_GATEWAY,
                "backend_error",
                "the backend request was abandoned",
            ),
        }
    }

    /// The flight for the miss's key, and whether this request started it.
    fn join_or_start(self: &Arc<Self>, parts: &Parts, body: &Bytes, m: Miss) -> (Flight, bool) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = flights.get(&m.key) {
            return (rx.clone(), false);
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(m.key, rx.clone());
        let route = self.clone();
        let mut parts = clone_parts(parts);
        // An entry is replayed to clients whatever they accept: ask for the
        // body as it is (`store` refuses an encoded one).
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            header::HeaderValue::from_static("identity"),
        );
        let body = body.clone();
        tokio::spawn(async move {
            // However the fetch ends, the flight ends with it: a stale entry
            // would make every later miss of this key wait on a dead channel.
            let _done = FlightDone(route.clone(), m.key);
            let out = route.fetch(&parts, body, m).await;
            let _ = tx.send(Some(Arc::new(out)));
        });
        (rx, true)
    }

    /// Turns a fetch's outcome into this request's response.
    async fn relay(&self, outcome: &Outcome, parts: Parts, body: Bytes, k: Key) -> Response<Body> {
        match outcome {
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
                let mut r = match rest {
                    Some(rest) => {
                        let head = futures_util::stream::once({
                            let head = head.clone();
                            async move { Ok::<_, hyper::Error>(Frame::data(head)) }
                        });
                        let body = StreamBody::new(head.chain(BodyStream::new(rest)));
                        let mut r = Response::new(body.boxed_unsync());
                        *r.status_mut() = *status;
                        copy_headers(headers, r.headers_mut());
                        r
                    }
                    // Someone else streams the original: fetch our own copy.
                    None => self.forward_streaming(&parts, body, Some(k), None).await,
                };
                set(r.headers_mut(), X_CACHE, "MISS");
                r
            }
            Outcome::Failed(status, msg) => json_error(*status, "backend_error", msg),
        }
    }

    /// The single fetch behind a miss. The route's timeout bounds the whole
    /// exchange, headers and body: a backend that trickles its answer would
    /// otherwise hold every request coalesced on the key.
    async fn fetch(&self, parts: &Parts, body: Bytes, m: Miss) -> Outcome {
        let t0 = Instant::now();
        let exchange = async {
            let (resp, guard) = (self
                .send(parts, body, m.key.short(), true, m.work.as_ref())
                .await)
                .map_err(|(s, msg)| Outcome::Failed(s, msg))?;
            let (p, b) = resp.into_parts();
            Ok::<_, Outcome>((self.read_capped(p, b).await?, guard))
        };
        let ((p, body), _guard) = match tokio::time::timeout(self.cfg.timeout, exchange).await {
            Ok(Ok(read)) => read,
            Ok(Err(out)) => return out,
            Err(_) => {
                self.backend_error();
                return Outcome::Failed(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the backend did not finish its answer within {:?} (timeout_ms of cache route {:?})",
                        self.cfg.timeout, self.cfg.name
                    ),
                );
            }
        };
        self.store(&p, &body, t0.elapsed().as_secs_f64(), m);
        Outcome::Done {
            status: p.status,
            headers: p.headers,
            body,
        }
    }

    /// Reads the backend's body up to the object size limit. Over it, or on
    /// failure, the outcome is ready as it is (`Err`).
    async fn read_capped(
        &self,
        p: response::Parts,
        mut b: Incoming,
    ) -> Result<(response::Parts, Bytes), Outcome> {
        let mut buf = BytesMut::new();
        let limit = self.cfg.max_object_bytes as usize;
        loop {
            match tokio::time::timeout(self.cfg.timeout, b.frame()).await {
                Ok(Some(Ok(f))) => {
                    let Ok(d) = f.into_data() else { continue };
                    buf.extend_from_slice(&d);
                    if buf.len() > limit {
                        self.cache.counters.bump(Counter::Uncacheable);
                        return Err(Outcome::Stream {
                            status: p.status,
                            headers: p.headers,
                            head: buf.freeze(),
                            rest: Mutex::new(Some(b)),
                        });
                    }
                }
                Ok(None) => return Ok((p, buf.freeze())),
                Ok(Some(Err(e))) => {
                    self.backend_error();
                    return Err(Outcome::Failed(
                        StatusCode::BAD_GATEWAY,
                        format!("backend response broke off: {e}"),
                    ));
                }
                Err(_) => {
                    self.backend_error();
                    return Err(Outcome::Failed(
                        StatusCode::GATEWAY_TIMEOUT,
                        "backend response stalled".into(),
                    ));
                }
            }
        }
    }

    /// Fills the cache with a 2xx answer that anyone may be given; counts
    /// anything else as uncacheable.
    fn store(&self, p: &response::Parts, body: &Bytes, cost_s: f64, m: Miss) {
        if !self.storable(p) {
            self.cache.counters.bump(Counter::Uncacheable);
            return;
        }
        let now = now_ms();
        let content_type = p
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.cache.fill(
            m.key,
            Arc::new(Entry {
                status: p.status.as_u16(),
                content_type,
                body: body.clone(),
                created_ms: now,
                expires_ms: now + self.cfg.ttl.as_millis() as u64,
                cost_s,
                model: m.model,
                version: m.version,
                prompt: m.prompt,
            }),
        );
    }

    /// Whether an answer may be stored and replayed: a 2xx, not `no-store`
    /// (nor `private`, unless entries are per credential), no cookie, an
    /// unencoded body (the entry keeps no `Content-Encoding`, and a client
    /// may not accept it), and not a stream of events.
    fn storable(&self, p: &response::Parts) -> bool {
        let h = &p.headers;
        let text = |n: header::HeaderName| {
            h.get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",")
                .to_ascii_lowercase()
        };
        let cc = text(header::CACHE_CONTROL);
        let private = cc.contains("private") && self.cfg.scope != KeyScope::PerCredential;
        let encoded = text(header::CONTENT_ENCODING)
            .split(',')
            .any(|e| !matches!(e.trim(), "" | "identity"));
        p.status.is_success()
            && !cc.contains("no-store")
            && !private
            && !personal(p.status, h)
            && !encoded
            && !text(header::CONTENT_TYPE).starts_with("text/event-stream")
    }
}
