//! What the proxy sends back: the body type, the `X-Cache` headers, error
//! bodies in OpenAI's shape, hits, and the headers copied between client
//! and backend.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};

use crate::cache::{Level, key::Key, now_ms, store::Entry};

/// The response body type: whole (hits, errors) or streamed (bypasses).
pub(super) type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// A whole body.
pub(super) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// `HIT`, `MISS` or `BYPASS`.
pub(super) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The entry's key, for targeted invalidation.
pub(super) const X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");
/// Where a hit came from: `l1` or `l2`.
const X_CACHE_SOURCE: HeaderName = HeaderName::from_static("x-cache-source");
/// Why a request bypassed the cache.
pub(super) const X_CACHE_REASON: HeaderName = HeaderName::from_static("x-cache-reason");
/// The client's opt-in (never forwarded to the backend).
pub(super) const X_BALANCER_CACHE: &str = "x-balancer-cache";
/// The priority tier the route gave the request.
pub(super) const X_BALANCER_TIER: HeaderName = HeaderName::from_static("x-balancer-tier");

/// An error in OpenAI's shape: `{"error": {"message", "type"}}`.
pub(super) fn json_error(status: StatusCode, kind: &str, msg: &str) -> Response<Body> {
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

/// Copies end-to-end headers (hyper sets framing and `host` itself).
pub(super) fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !is_hop_by_hop(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// Sets a header, skipping values that are not valid header text.
pub(super) fn set(h: &mut HeaderMap, k: HeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(k, v);
    }
}

/// The answer from a cached entry, with its key, source and `Age`.
pub(super) fn hit_response(e: &Entry, k: &Key, level: Level) -> Response<Body> {
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
