//! The API client the CLI uses.

use std::{net::IpAddr, path::PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use super::{AddBackend, SetWeight, StatsReply, StatusReply, WeightsReply, vip_path};
use crate::lb::{VipId, VipInfo, VipSpec};

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the socket.
    #[error(
        "cannot reach the daemon at {path}: {source}; is `balancer run` running? (--socket picks another)"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to the daemon: {0}")]
    Http(String),
    /// The daemon refused the request.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's explanation.
        message: String,
    },
}

/// A client of one daemon's admin socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "balancer")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Http(format!("bad reply: {e}")))
    }

    fn body<T: Serialize>(v: &T) -> Option<Vec<u8>> {
        serde_json::to_vec(v).ok()
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        self.call(Method::GET, "/v1/status", None).await
    }

    /// `GET /v1/vips`.
    pub async fn vips(&self) -> Result<Vec<VipInfo>, ClientError> {
        self.call(Method::GET, "/v1/vips", None).await
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<StatsReply, ClientError> {
        self.call(Method::GET, "/v1/stats", None).await
    }

    /// `GET /v1/weights`.
    pub async fn weights(&self) -> Result<WeightsReply, ClientError> {
        self.call(Method::GET, "/v1/weights", None).await
    }

    /// `GET /v1/cache`.
    pub async fn cache_stats(&self) -> Result<crate::cache::CacheStats, ClientError> {
        self.call(Method::GET, "/v1/cache", None).await
    }

    /// Invalidates cache entries.
    pub async fn cache_invalidate(
        &self,
        b: &super::InvalidateBody,
    ) -> Result<crate::cache::InvalidateReply, ClientError> {
        self.call(Method::POST, "/v1/cache/invalidate", Self::body(b))
            .await
    }

    /// Replaces a model's cache version.
    pub async fn cache_bump(
        &self,
        model: &str,
    ) -> Result<crate::cache::InvalidateReply, ClientError> {
        let b = super::BumpBody {
            model: model.to_string(),
        };
        self.call(Method::POST, "/v1/cache/bump", Self::body(&b))
            .await
    }

    /// Adds a VIP.
    pub async fn add_vip(&self, spec: &VipSpec) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/vips", Self::body(spec))
            .await
            .map(|_| ())
    }

    /// Removes a VIP.
    pub async fn remove_vip(&self, id: &VipId) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/v1/vips/{}", vip_path(id)), None)
            .await
            .map(|_| ())
    }

    /// Sets a VIP's tier or shedding.
    pub async fn set_vip(&self, id: &VipId, set: &super::VipSet) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(
            Method::PATCH,
            &format!("/v1/vips/{}", vip_path(id)),
            Self::body(set),
        )
        .await
        .map(|_| ())
    }

    /// Adds a backend.
    pub async fn add_backend(&self, vip: &VipId, b: &AddBackend) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(
            Method::POST,
            &format!("/v1/vips/{}/backends", vip_path(vip)),
            Self::body(b),
        )
        .await
        .map(|_| ())
    }

    /// Removes a backend.
    pub async fn remove_backend(&self, vip: &VipId, addr: IpAddr) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(
            Method::DELETE,
            &format!("/v1/vips/{}/backends/{addr}", vip_path(vip)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Drains (or undrains) a backend.
    pub async fn drain(&self, vip: &VipId, addr: IpAddr, drain: bool) -> Result<(), ClientError> {
        let action = if drain { "drain" } else { "undrain" };
        self.call::<serde_json::Value>(
            Method::POST,
            &format!("/v1/vips/{}/backends/{addr}/{action}", vip_path(vip)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Sets a backend's weight.
    pub async fn set_weight(
        &self,
        vip: &VipId,
        addr: IpAddr,
        weight: u32,
    ) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(
            Method::PUT,
            &format!("/v1/vips/{}/backends/{addr}/weight", vip_path(vip)),
            Self::body(&SetWeight { weight }),
        )
        .await
        .map(|_| ())
    }
}
