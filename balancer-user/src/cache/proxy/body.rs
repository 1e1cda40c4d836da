//! A request's body: read whole within the route's deadline and size
//! limit, holding its share of the route's body budget.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Response, StatusCode, body::Incoming, header, http::request::Parts};
use tokio::sync::OwnedSemaphorePermit;

use super::{
    Route,
    response::{Body, json_error, set},
};
use crate::cache::Counter;

impl Route {
    /// Reads the whole request body within the body deadline, holding its
    /// share of the route's body budget; 413 over the route's limit
    /// (declared or read), 408 past the deadline, 503 when the budget is
    /// spent, 400 when it cannot be read.
    pub(super) async fn read_body(
        &self,
        parts: &Parts,
        body: Incoming,
    ) -> Result<(Bytes, OwnedSemaphorePermit), Response<Body>> {
        let limit = self.cfg.max_request_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(self.too_large());
        }
        let Some(permit) = self.reserve(declared.unwrap_or(limit)) else {
            return Err(self.overloaded());
        };
        let read = http_body_util::Limited::new(body, limit as usize).collect();
        match tokio::time::timeout(self.cfg.body_timeout, read).await {
            Ok(Ok(b)) => Ok((b.to_bytes(), permit)),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(self.too_large()),
            Ok(Err(e)) => Err(json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("reading the request body: {e}"),
            )),
            Err(_) => Err(json_error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &format!(
                    "the request body did not arrive within {:?} (body_timeout_ms of cache route {:?})",
                    self.cfg.body_timeout, self.cfg.name
                ),
            )),
        }
    }

    /// The 413 answer.
    fn too_large(&self) -> Response<Body> {
        self.cache.counters.bump(Counter::TooLarge);
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            &format!(
                "request body exceeds this route's limit of {} bytes (max_request_bytes of cache route {:?})",
                self.cfg.max_request_bytes, self.cfg.name
            ),
        )
    }

    /// Takes `bytes` of the body budget, if that many are free.
    fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        // Bodies are capped far below 4 GiB (max_request_bytes).
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.budget.clone().try_acquire_many_owned(n).ok()
    }

    /// The 503 that says the body budget is spent.
    fn overloaded(&self) -> Response<Body> {
        let mut r = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            &format!(
                "cache route {:?} is buffering as many request bytes as it may (body_budget_bytes); retry shortly",
                self.cfg.name
            ),
        );
        set(r.headers_mut(), header::RETRY_AFTER, "1");
        r
    }
}
