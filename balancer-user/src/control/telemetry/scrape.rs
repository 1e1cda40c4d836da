//! Scraping `/metrics` endpoints: one shared keep-alive client, a timeout for
//! the whole exchange, a cap on the body, strict parsing. A slow, huge or
//! broken endpoint costs its own backend a failed scrape and nothing else.

use std::{collections::BTreeSet, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, Uri};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::{Reading, ServerKind, presets};
use crate::control::prom::{self, ParseError};

/// Errors of one scrape, each with what the operator can check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    /// The URL cannot be used.
    #[error("bad URL {0:?}: use http://host:port/path")]
    Url(String),
    /// Connecting or exchanging failed.
    #[error("request failed: {0}")]
    Http(String),
    /// The endpoint answered with an error status.
    #[error("endpoint answered HTTP {0}")]
    Status(u16),
    /// The body exceeded the cap.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The exchange took too long.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The body is not UTF-8.
    #[error("body is not UTF-8 text")]
    NotUtf8,
    /// The body is not the exposition format.
    #[error("not Prometheus text format: {0}")]
    Parse(ParseError),
}

/// Limits of every scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeLimits {
    /// Whole exchange, connect to last byte.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_body: usize,
}

impl Default for ScrapeLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(800),
            max_body: 4 * 1024 * 1024,
        }
    }
}

/// A scraper with a connection pool shared by every endpoint.
#[derive(Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Scraper {
    fn default() -> Self {
        Self::new()
    }
}

impl Scraper {
    /// A new scraper (must be used inside a tokio runtime).
    pub fn new() -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(conn);
        Self { client }
    }

    /// Fetches a URL's body as text, within the limits.
    pub async fn fetch(&self, url: &str, limits: &ScrapeLimits) -> Result<String, ScrapeError> {
        let uri: Uri = url.parse().map_err(|_| ScrapeError::Url(url.to_string()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ScrapeError::Url(url.to_string()));
        }
        let req = Request::get(uri)
            .header("accept", "text/plain;version=0.0.4")
            .body(Empty::new())
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ScrapeError::Http(format!("{e:#}")))?;
            if !resp.status().is_success() {
                return Err(ScrapeError::Status(resp.status().as_u16()));
            }
            let body = Limited::new(resp.into_body(), limits.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ScrapeError::TooLarge(limits.max_body)
                    } else {
                        ScrapeError::Http(e.to_string())
                    }
                })?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::NotUtf8)
        };
        tokio::time::timeout(limits.timeout, work)
            .await
            .map_err(|_| ScrapeError::Timeout(limits.timeout))?
    }

    /// Scrapes and reads one endpoint of `kind`.
    pub async fn scrape(
        &self,
        url: &str,
        kind: ServerKind,
        limits: &ScrapeLimits,
    ) -> Result<Reading, ScrapeError> {
        let text = self.fetch(url, limits).await?;
        let at = std::time::Instant::now();
        let exp = prom::parse(&text, &prom::Limits::default()).map_err(ScrapeError::Parse)?;
        let mut r = presets::extract(kind, &exp);
        r.at = Some(at);
        Ok(r)
    }

    /// The models an OpenAI-compatible server lists at `url` (`/v1/models`).
    pub async fn models(
        &self,
        url: &str,
        limits: &ScrapeLimits,
    ) -> Result<BTreeSet<String>, ScrapeError> {
        let text = self.fetch(url, limits).await?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ScrapeError::Http(format!("bad /v1/models JSON: {e}")))?;
        Ok(v.get("data")
            .and_then(|d| d.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.get("id").and_then(|i| i.as_str()).map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }
}
