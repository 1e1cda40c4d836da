//! The API server: routes HTTP requests to a [`Handler`].

use std::{path::Path, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request as HttpRequest, Response, StatusCode, body::Incoming};
use serde::Serialize;
use tokio::net::UnixListener;

use super::{AddBackend, ApiError, MAX_BODY, Reply, Request, SetWeight, VipSet};
use crate::{
    http,
    lb::{Proto, VipId, VipSpec},
};

/// What the daemon implements. Called on a blocking thread: it may take locks
/// and sleep through ring grace periods.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, req: Request) -> Result<Reply, ApiError>;
}

/// Binds the socket (replacing a stale one) with owner-only permissions.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a killed daemon would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves until the process ends.
pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    http::serve(listener, http::Settings::new("admin socket"), move |req| {
        respond(handler.clone(), req)
    })
    .await
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(e: ApiError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &serde_json::json!({ "error": e.message }))
}

async fn respond(handler: Arc<dyn Handler>, req: HttpRequest<Incoming>) -> Response<Full<Bytes>> {
    let parsed = match parse(req).await {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let result = tokio::task::spawn_blocking(move || handler.handle(parsed)).await;
    match result {
        Ok(Ok(Reply::Status(s))) => json(StatusCode::OK, &s),
        Ok(Ok(Reply::Vips(v))) => json(StatusCode::OK, &v),
        Ok(Ok(Reply::Stats(s))) => json(StatusCode::OK, &s),
        Ok(Ok(Reply::Weights(w))) => json(StatusCode::OK, &w),
        Ok(Ok(Reply::Cache(c))) => json(StatusCode::OK, &c),
        Ok(Ok(Reply::Invalidated(r))) => json(StatusCode::OK, &r),
        Ok(Ok(Reply::Done)) => json(StatusCode::OK, &serde_json::json!({})),
        Ok(Err(e)) => error(e),
        Err(e) => error(ApiError {
            status: 500,
            message: format!("handler failed: {e}"),
        }),
    }
}

async fn body<T: serde::de::DeserializeOwned>(req: HttpRequest<Incoming>) -> Result<T, ApiError> {
    let collected = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError {
                    status: 413,
                    message: format!("request body larger than {MAX_BODY} bytes"),
                }
            } else {
                ApiError::bad_request(format!("reading request body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&collected)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn vip_from(segs: &[&str]) -> Result<VipId, ApiError> {
    let [addr, port, proto] = segs else {
        return Err(ApiError::bad_request(
            "expected /v1/vips/{addr}/{port}/{proto}",
        ));
    };
    let addr = addr
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{addr:?} is not an IP address")))?;
    let port = port
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{port:?} is not a port")))?;
    let proto: Proto = proto.parse().map_err(ApiError::bad_request)?;
    Ok(VipId { addr, port, proto })
}

async fn parse(req: HttpRequest<Incoming>) -> Result<Request, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || ApiError {
        status: 404,
        message: format!("no such endpoint: {} {path}", req.method()),
    };
    match (req.method().clone(), segs.as_slice()) {
        (Method::GET, ["v1", "status"]) => Ok(Request::Status),
        (Method::GET, ["v1", "stats"]) => Ok(Request::Stats),
        (Method::GET, ["v1", "weights"]) => Ok(Request::Weights),
        (Method::GET, ["v1", "vips"]) => Ok(Request::ListVips),
        (Method::GET, ["v1", "cache"]) => Ok(Request::CacheStats),
        (Method::POST, ["v1", "cache", "invalidate"]) => Ok(Request::CacheInvalidate(
            body::<super::InvalidateBody>(req)
                .await?
                .into_invalidation()?,
        )),
        (Method::POST, ["v1", "cache", "bump"]) => {
            let b = body::<super::BumpBody>(req).await?;
            if b.model.is_empty() {
                return Err(ApiError::bad_request("model must not be empty"));
            }
            Ok(Request::CacheBump(b.model))
        }
        (Method::POST, ["v1", "vips"]) => Ok(Request::AddVip(body::<VipSpec>(req).await?)),
        (Method::DELETE, ["v1", "vips", a, p, t]) => Ok(Request::RemoveVip(vip_from(&[a, p, t])?)),
        (Method::PATCH, ["v1", "vips", a, p, t]) => {
            let vip = vip_from(&[a, p, t])?;
            let set = body::<VipSet>(req).await?;
            set.validate()?;
            Ok(Request::SetVip(vip, set))
        }
        (Method::POST, ["v1", "vips", a, p, t, "backends"]) => {
            let vip = vip_from(&[a, p, t])?;
            Ok(Request::AddBackend(vip, body::<AddBackend>(req).await?))
        }
        (Method::DELETE, ["v1", "vips", a, p, t, "backends", b]) => Ok(Request::RemoveBackend(
            vip_from(&[a, p, t])?,
            backend_addr(b)?,
        )),
        (
            Method::POST,
            [
                "v1",
                "vips",
                a,
                p,
                t,
                "backends",
                b,
                action @ ("drain" | "undrain"),
            ],
        ) => Ok(Request::Drain(
            vip_from(&[a, p, t])?,
            backend_addr(b)?,
            *action == "drain",
        )),
        (Method::PUT, ["v1", "vips", a, p, t, "backends", b, "weight"]) => {
            let vip = vip_from(&[a, p, t])?;
            let addr = backend_addr(b)?;
            Ok(Request::SetWeight(
                vip,
                addr,
                body::<SetWeight>(req).await?.weight,
            ))
        }
        _ => Err(not_found()),
    }
}

fn backend_addr(s: &str) -> Result<std::net::IpAddr, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("{s:?} is not a backend address")))
}
