//! Which models each backend serves, for `pick = "aware"`: the route polls
//! every backend's OpenAI-compatible `GET /v1/models` (vLLM lists its base
//! model and its loaded LoRA adapters there; SGLang and TGI list their
//! model) every `models_refresh_ms`, and publishes the answers as one
//! immutable table the request path reads without a lock.
//!
//! The time each answer takes is the backend's network round trip for the
//! cost model (a probe, as a health check's RTT).
//!
//! A backend that stops answering keeps what it last listed (a slow poll is
//! not a model unloaded); one that never answered is unknown, and the pick
//! treats unknown backends as serving everything.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, header};
use tracing::debug;

use super::Route;

/// Largest `/v1/models` answer read.
pub const MAX_MODELS_BYTES: usize = 1 << 20;
/// Most model names kept of one backend.
pub const MAX_MODELS: usize = 4096;

/// The models each backend listed last.
pub(super) type Served = HashMap<SocketAddr, Arc<BTreeSet<String>>>;

/// The route's table of served models.
#[derive(Debug, Default)]
pub(super) struct Locality {
    pub(super) served: ArcSwap<Served>,
}

/// The model ids of an OpenAI `/v1/models` answer.
pub fn parse_models(body: &[u8]) -> Result<BTreeSet<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let data = v
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or("no \"data\" list")?;
    Ok(data
        .iter()
        .filter_map(|m| m.get("id")?.as_str())
        .take(MAX_MODELS)
        .map(str::to_string)
        .collect())
}

impl Route {
    /// Polls the pool's models until the process ends.
    pub(super) async fn watch_models(self: Arc<Self>) {
        loop {
            self.poll_models().await;
            tokio::time::sleep(self.cfg.models_refresh).await;
        }
    }

    /// Asks every backend of the pool, at once, and publishes the table.
    /// Each answer's round trip is the network signal the cost model adds
    /// to that backend's predictions.
    pub(super) async fn poll_models(&self) {
        let pool: Vec<SocketAddr> = (self.pool)().into_iter().map(|(a, _)| a).collect();
        let timed = |a: SocketAddr| async move {
            let t = Instant::now();
            let got = self.models_of(a).await;
            (got, t.elapsed())
        };
        let answers = join_all(pool.iter().map(|a| timed(*a))).await;
        let old = self.locality.served.load();
        let mut next = Served::new();
        for (addr, (got, took)) in pool.into_iter().zip(answers) {
            match got {
                Ok(m) => {
                    self.tracked(addr).cost.observe_rtt(took.as_secs_f64());
                    next.insert(addr, Arc::new(m));
                }
                Err(e) => {
                    debug!(route = %self.cfg.name, backend = %addr, error = %e, "polling /v1/models");
                    if let Some(m) = old.get(&addr) {
                        next.insert(addr, m.clone());
                    }
                }
            }
        }
        self.locality.served.store(Arc::new(next));
    }

    /// One backend's models, within the refresh interval (at most 2 s).
    async fn models_of(&self, addr: SocketAddr) -> Result<BTreeSet<String>, String> {
        let req = Request::get(format!("http://{addr}/v1/models"))
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let deadline = self.cfg.models_refresh.min(Duration::from_secs(2));
        let exchange = async {
            let r = self.client.request(req).await.map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("status {}", r.status()));
            }
            let body = Limited::new(r.into_body(), MAX_MODELS_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            parse_models(&body)
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| format!("no answer within {deadline:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_lists_parse_and_bad_ones_are_refused() {
        let ok = br#"{"object":"list","data":[{"id":"llama"},{"id":"sql-lora","parent":"llama"},{"x":1}]}"#;
        let m = parse_models(ok).unwrap();
        assert_eq!(m.into_iter().collect::<Vec<_>>(), ["llama", "sql-lora"]);
        for bad in [&b"nope"[..], br#"{"data":3}"#, br#"[]"#] {
            assert!(
                parse_models(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
