//! KServe's v2 inference protocol (Triton's too) for the non-LLM models.
//!
//! - `GET /v2/health/live`, `/v2/health/ready` (once every model is
//!   loaded, the base model too);
//! - `GET /v2/models/{m}` (metadata), `/v2/models/{m}/ready`;
//! - `POST /v2/models/{m}/infer`: JSON tensors (`data` holding every
//!   element), or Triton's binary extension (`Inference-Header-Content-Length`
//!   bytes of JSON, then each input's `binary_data_size` raw bytes).
//!
//! A request's size is its inputs' elements over the model's
//! `elements_per_unit`; the answer is one small FP32 tensor determined by
//! the model and the input's shape.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming};
use serde_json::{Value, json};

use super::{BODY_TIMEOUT, Body, Emulator, MAX_BODY, fnv};
use crate::emulate::models::ModelError;

/// Inputs in one request at most.
const MAX_INPUTS: usize = 64;
/// Dimensions of one input at most.
const MAX_DIMS: usize = 8;

/// Bytes per element of a KServe datatype (`BYTES`: variable, `None`).
fn element_bytes(datatype: &str) -> Option<Option<u64>> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => Some(1),
        "UINT16" | "INT16" | "FP16" | "BF16" => Some(2),
        "UINT32" | "INT32" | "FP32" => Some(4),
        "UINT64" | "INT64" | "FP64" => Some(8),
        "BYTES" => None,
        _ => return None,
    })
}

/// Leaves of a (possibly nested) JSON array, up to `cap` + 1.
fn leaves(v: &Value, cap: u64) -> u64 {
    fn walk(v: &Value, n: &mut u64, cap: u64) {
        if *n > cap {
            return;
        }
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, n, cap)),
            _ => *n += 1,
        }
    }
    let mut n = 0;
    walk(v, &mut n, cap);
    n
}

/// Elements of all inputs, checked against their data; `binary` is the
/// length of the bytes after the JSON header, if the request has them.
pub(super) fn elements(v: &Value, binary: Option<u64>) -> Result<u64, String> {
    let inputs = v
        .get("inputs")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty() && a.len() <= MAX_INPUTS)
        .ok_or(format!("inputs must be a list of 1-{MAX_INPUTS} tensors"))?;
    let mut total = 0u64;
    let mut binary_used = 0u64;
    for (i, t) in inputs.iter().enumerate() {
        let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
        let at = |m: &str| format!("inputs[{i}] ({name:?}): {m}");
        if name.is_empty() {
            return Err(at("name is missing"));
        }
        let datatype = t
            .get("datatype")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(size) = element_bytes(datatype) else {
            return Err(at(&format!(
                "datatype {datatype:?} is not a KServe v2 type"
            )));
        };
        let shape = t
            .get("shape")
            .and_then(Value::as_array)
            .filter(|s| s.len() <= MAX_DIMS)
            .ok_or(at(&format!(
                "shape must be a list of at most {MAX_DIMS} sizes"
            )))?;
        let mut n = 1u64;
        for d in shape {
            let d = d
                .as_u64()
                .ok_or(at("shape holds a size that is not a whole number"))?;
            n = n
                .checked_mul(d)
                .filter(|n| *n <= 1 << 40)
                .ok_or(at("shape has over 2^40 elements"))?;
        }
        let declared = t.pointer("/parameters/binary_data_size").map(Value::as_u64);
        match (declared, t.get("data")) {
            (Some(Some(bytes)), None) => {
                if binary.is_none() {
                    return Err(at(
                        "binary_data_size given, but no binary data follows the header",
                    ));
                }
                if let Some(s) = size
                    && bytes != n * s
                {
                    return Err(at(&format!(
                        "binary_data_size {bytes} does not match shape and datatype ({} bytes)",
                        n * s
                    )));
                }
                binary_used += bytes;
            }
            (None, Some(data)) => {
                let got = leaves(data, n);
                if got > n {
                    return Err(at(&format!(
                        "data holds more than the {n} elements of its shape"
                    )));
                }
                if got < n {
                    return Err(at(&format!("data holds {got} elements, its shape {n}")));
                }
            }
            _ => return Err(at("give either data or parameters.binary_data_size")),
        }
        total = total.saturating_add(n);
    }
    if let Some(b) = binary
        && b != binary_used
    {
        return Err(format!(
            "{b} bytes follow the header, the inputs declare {binary_used}"
        ));
    }
    Ok(total)
}

impl Emulator {
    /// Every `/v2/...` request.
    pub(super) async fn kserve(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
        match (req.method().as_str(), parts.as_slice()) {
            ("GET", ["health", "live"]) => self.json(StatusCode::OK, &json!({"live": true})),
            ("GET", ["health", "ready"]) => {
                // Ready to serve every model: the base one and the rest.
                let ready =
                    self.loading().is_none() && self.models.gauges().iter().all(|g| g.loaded);
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                self.json(status, &json!({"ready": ready}))
            }
            ("GET", ["models", m]) => match self.models.spec(m) {
                Some(spec) => self.json(
                    StatusCode::OK,
                    &json!({
                        "name": spec.name,
                        "versions": ["1"],
                        "platform": format!("balancer-emulate/{}", spec.kind.name()),
                        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}],
                        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 8]}],
                    }),
                ),
                None => self.refused(&ModelError::Unknown(m.to_string())),
            },
            ("GET", ["models", m, "ready"]) => {
                let g = self.models.gauges();
                match g.iter().find(|g| g.name == *m) {
                    Some(g) if g.loaded => self.json(StatusCode::OK, &json!({"ready": true})),
                    Some(_) => self.json(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false})),
                    None => self.refused(&ModelError::Unknown(m.to_string())),
                }
            }
            ("POST", ["models", m, "infer"]) => {
                let m = m.to_string();
                self.infer_tensor(&m, req).await
            }
            _ => self.error(StatusCode::NOT_FOUND, &format!("no route {path}")),
        }
    }

    async fn infer_tensor(&self, model: &str, req: Request<Incoming>) -> Response<Body> {
        let Some(spec) = self.models.spec(model) else {
            return self.refused(&ModelError::Unknown(model.to_string()));
        };
        let (per_unit, kind) = (spec.elements_per_unit, spec.kind);
        let header_len = match req.headers().get("inference-header-content-length") {
            None => None,
            Some(v) => match v.to_str().ok().and_then(|s| s.parse::<usize>().ok()) {
                Some(n) => Some(n),
                None => {
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "Inference-Header-Content-Length must be a byte count",
                    );
                }
            },
        };
        let body = match read_bytes(req).await {
            Ok(b) => b,
            Err((status, m)) => return self.error(status, &m),
        };
        let (json_part, binary) = match header_len {
            Some(n) if n > body.len() => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "Inference-Header-Content-Length {n} exceeds the body ({} bytes)",
                        body.len()
                    ),
                );
            }
            Some(n) => (body.slice(..n), Some((body.len() - n) as u64)),
            None => (body, None),
        };
        let v: Value = match serde_json::from_slice(&json_part) {
            Ok(v) => v,
            Err(e) => return self.error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
        };
        let n = match elements(&v, binary) {
            Ok(n) => n,
            Err(m) => return self.error(StatusCode::BAD_REQUEST, &m),
        };
        let units = n as f64 / per_unit;
        if let Err(e) = self.models.serve(model, units, self.node.speed()).await {
            return self.refused(&e);
        }
        let seed = fnv(format!("{model}\0{n}").as_bytes());
        let data: Vec<f64> = (0..8)
            .map(|k| ((seed >> (k * 8)) & 0xff) as f64 / 255.0)
            .collect();
        let mut answer = json!({
            "model_name": model,
            "model_version": "1",
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [1, 8], "data": data}],
            "parameters": {"kind": kind.name(), "units": units},
        });
        if let Some(id) = v.get("id") {
            answer["id"] = id.clone();
        }
        self.json(StatusCode::OK, &answer)
    }
}

/// A whole request body, within [`MAX_BODY`] and [`BODY_TIMEOUT`].
pub(super) async fn read_bytes(req: Request<Incoming>) -> Result<Bytes, (StatusCode, String)> {
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Err(_) => Err((StatusCode::REQUEST_TIMEOUT, "request body too slow".into())),
        Ok(Err(_)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes, or broken"),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}
