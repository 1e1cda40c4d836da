//! The emulated server's HTTP face: the OpenAI-compatible API and vLLM's
//! metrics, over one [`Node`].
//!
//! - `POST /v1/completions`, `/v1/chat/completions`: the prompt is counted
//!   at four bytes a token and cut into blocks of `block_tokens` tokens,
//!   so equal text prefixes share cached blocks. Every request generates
//!   exactly `max_tokens` (or `max_completion_tokens`, default 16) tokens,
//!   as with `ignore_eos`. With `"stream": true` the answer is server-sent
//!   events, one token per event, in OpenAI's chunk format, the last chunk
//!   carrying `finish_reason` (and `usage` when `stream_options.include_usage`
//!   asks), then `data: [DONE]`.
//! - `POST /v1/embeddings`: one vector per input (a string, a list of
//!   strings, or token arrays), computed as one prefill-only request.
//! - `GET /v1/models` (the base model and the loaded LoRA adapters),
//!   `GET /health`, `GET /metrics` (vLLM's names).
//! - `POST /v1/load_lora_adapter`, `/v1/unload_lora_adapter` (vLLM's). A
//!   request whose `model` names an adapter waits for its load
//!   ([`Adapters`]); an unknown model is a 404.
//!
//! Answers are deterministic functions of model and prompt. A streaming
//! client that leaves an event unread for 30 s loses its stream.

use std::{convert::Infallible, fmt::Write as _, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, body::Incoming};
use serde_json::{Value, json};

mod audio;
mod kserve;

use super::{
    adapters::{AdapterError, Adapters},
    engine::Event,
    models::{ModelError, Models},
    node::Node,
    prefix::chain,
    profile::Lora,
    stats::Latencies,
};

/// Largest request body read.
pub const MAX_BODY: usize = 4 << 20;
/// How long a request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// vLLM's `priority` body field: an integer, 0 when absent.
fn priority(v: &Value) -> Result<i64, &'static str> {
    match v.get("priority") {
        None | Some(Value::Null) => Ok(0),
        Some(p) => p.as_i64().ok_or("priority must be an integer"),
    }
}

/// Largest `max_tokens` accepted.
pub const MAX_TOKENS: u64 = 32_768;

/// What one emulated server serves.
#[derive(Debug, Clone)]
pub struct Served {
    /// Name in answers and the `x-backend` header.
    pub name: String,
    /// The model it serves.
    pub model: String,
}

/// The server's state: its node, what it serves and its latency records.
pub struct Emulator {
    node: Arc<Node>,
    served: Served,
    latencies: Latencies,
    adapters: Arc<Adapters>,
    models: Arc<Models>,
    /// When the base model is loaded.
    ready_at: tokio::time::Instant,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

impl Emulator {
    /// An emulator over `node`, with no LoRA adapter.
    pub fn new(node: Arc<Node>, served: Served) -> Arc<Self> {
        Self::with_adapters(node, served, Adapters::new(Lora::default()))
    }

    /// An emulator over `node` that can load `adapters`.
    pub fn with_adapters(node: Arc<Node>, served: Served, adapters: Arc<Adapters>) -> Arc<Self> {
        Self::with_models(node, served, adapters, Models::none())
    }

    /// An emulator over `node` that can load `adapters` and serves the
    /// non-LLM `models` too. The base model loads for its class's `load_s`
    /// from now.
    pub fn with_models(
        node: Arc<Node>,
        served: Served,
        adapters: Arc<Adapters>,
        models: Arc<Models>,
    ) -> Arc<Self> {
        let load = Duration::from_secs_f64(node.class().load_s);
        Arc::new(Self {
            node,
            served,
            latencies: Latencies::default(),
            adapters,
            models,
            ready_at: tokio::time::Instant::now() + load,
        })
    }

    /// Seconds until the base model is loaded, if it is not yet.
    fn loading(&self) -> Option<f64> {
        let now = tokio::time::Instant::now();
        (now < self.ready_at).then(|| (self.ready_at - now).as_secs_f64())
    }

    /// 503 with `Retry-After`, for a model still loading.
    fn unavailable(&self, e: &ModelError, left_s: f64) -> Response<Body> {
        let mut r = self.error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("{}", left_s.ceil().max(1.0)))
        {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        r
    }

    /// The answer to a refused model request.
    fn refused(&self, e: &ModelError) -> Response<Body> {
        match e {
            ModelError::Unknown(_) => self.json(
                StatusCode::NOT_FOUND,
                &json!({"error": {"message": e.to_string(), "type": "NotFoundError", "code": 404, "param": "model"}}),
            ),
            ModelError::Loading { left_s, .. } => self.unavailable(e, *left_s),
            ModelError::Size { .. } => self.error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn json(&self, status: StatusCode, v: &Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-backend", &self.served.name)
            .body(full(v.to_string()))
            .unwrap_or_else(|_| Response::new(full("")))
    }

    fn error(&self, status: StatusCode, message: &str) -> Response<Body> {
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        self.json(
            status,
            &json!({"error": {"message": message, "type": kind, "code": status.as_u16()}}),
        )
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path.starts_with("/v2/") {
            return self.kserve(req).await;
        }
        match (req.method().as_str(), path.as_str()) {
            ("GET", "/health") => match self.loading() {
                None => self.json(StatusCode::OK, &json!({})),
                Some(left_s) => self.unavailable(
                    &ModelError::Loading {
                        model: self.served.model.clone(),
                        left_s,
                    },
                    left_s,
                ),
            },
            ("POST", "/v1/audio/transcriptions") => self.transcribe(req).await,
            ("GET", "/metrics") => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(full(self.metrics()))
                .unwrap_or_else(|_| Response::new(full(""))),
            ("GET", "/v1/models") => self.models(),
            ("POST", "/v1/load_lora_adapter" | "/v1/unload_lora_adapter") => {
                match read_json(req).await {
                    Ok(v) => self.lora_admin(&path, &v).await,
                    Err((status, m)) => self.error(status, &m),
                }
            }
            ("POST", "/v1/completions" | "/v1/chat/completions" | "/v1/embeddings") => {
                match read_json(req).await {
                    Ok(v) => self.infer(&path, v).await,
                    Err((status, m)) => self.error(status, &m),
                }
            }
            _ => self.error(StatusCode::NOT_FOUND, &format!("no route {path}")),
        }
    }

    /// The base model and the loaded adapters, as vLLM lists them.
    fn models(&self) -> Response<Body> {
        let base = &self.served.model;
        let mut data = vec![
            json!({"id": base, "object": "model", "owned_by": "balancer-emulate", "root": base, "parent": null}),
        ];
        for a in self.adapters.gauges().loaded {
            data.push(json!({"id": a, "object": "model", "owned_by": "balancer-emulate", "root": a, "parent": base}));
        }
        for m in self.models.gauges() {
            data.push(json!({"id": m.name, "object": "model", "owned_by": "balancer-emulate", "root": m.name, "parent": null}));
        }
        self.json(StatusCode::OK, &json!({"object": "list", "data": data}))
    }

    /// vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`.
    async fn lora_admin(&self, path: &str, v: &Value) -> Response<Body> {
        let Some(name) = v.get("lora_name").and_then(Value::as_str) else {
            return self.error(StatusCode::BAD_REQUEST, "lora_name is missing");
        };
        let done = if path == "/v1/load_lora_adapter" {
            if v.get("lora_path").and_then(Value::as_str).is_none() {
                return self.error(StatusCode::BAD_REQUEST, "lora_path is missing");
            }
            self.adapters.load_by_api(name).await
        } else {
            self.adapters.unload(name)
        };
        match done {
            Ok(()) => Response::builder()
                .header("x-backend", &self.served.name)
                .body(full(format!("Success: LoRA adapter '{name}' done")))
                .unwrap_or_else(|_| Response::new(full(""))),
            Err(e @ AdapterError::NotLoaded(_)) => {
                self.error(StatusCode::NOT_FOUND, &e.to_string())
            }
            Err(e) => self.error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }

    async fn infer(self: Arc<Self>, path: &str, v: Value) -> Response<Body> {
        let model = v.get("model").and_then(Value::as_str).unwrap_or_default();
        if let Some(left_s) = self.loading() {
            let e = ModelError::Loading {
                model: self.served.model.clone(),
                left_s,
            };
            return self.unavailable(&e, left_s);
        }
        if model != self.served.model {
            // An adapter: wait for its load (the wait counts in latency).
            if let Err(e) = self.adapters.acquire(model).await {
                return self.json(
                    StatusCode::NOT_FOUND,
                    &json!({"error": {"message": e.to_string(), "type": "NotFoundError", "code": 404, "param": "model"}}),
                );
            }
        }
        let bt = self.node.class().block_tokens as usize;
        if path == "/v1/embeddings" {
            return self.embed(&v, bt).await;
        }
        let max = v
            .get("max_completion_tokens")
            .or_else(|| v.get("max_tokens"))
            .map_or(Some(16), Value::as_u64);
        let max = match max {
            Some(m) if (1..=MAX_TOKENS).contains(&m) => m as u32,
            _ => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    &format!("max_tokens must be an integer in 1..={MAX_TOKENS}"),
                );
            }
        };
        let chat = path == "/v1/chat/completions";
        let prompt = if chat {
            v.get("messages").map(Value::to_string)
        } else {
            v.get("prompt").map(|p| match p {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        let Some(prompt) = prompt.filter(|p| !p.is_empty()) else {
            let field = if chat { "messages" } else { "prompt" };
            return self.error(StatusCode::BAD_REQUEST, &format!("{field} is missing"));
        };
        let priority = match priority(&v) {
            Ok(p) => p,
            Err(msg) => return self.error(StatusCode::BAD_REQUEST, msg),
        };
        let (tokens, blocks) = tokenize(&prompt, bt);
        let rx = match self.node.submit(tokens, max, blocks, priority) {
            Ok(rx) => rx,
            Err(e) => return self.error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let seed = fnv(format!("{model}\0{prompt}").as_bytes());
        let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let usage = json!({"prompt_tokens": tokens, "completion_tokens": max, "total_tokens": tokens + max});
        let reply = Reply {
            id: format!("cmpl-{seed:016x}"),
            model: model.to_string(),
            chat,
            seed,
            usage,
            include_usage: v
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        if stream {
            return self.stream(rx, reply);
        }
        let t0 = tokio::time::Instant::now();
        let mut rx = rx;
        let mut words = Vec::new();
        while let Some(e) = rx.recv().await {
            match e {
                Event::First(_) => {
                    self.latencies.ttft.observe(t0.elapsed().as_secs_f64());
                    words.push(word(seed, 0));
                }
                Event::Token(_) => words.push(word(seed, words.len() as u64)),
                Event::Done(_) => break,
                Event::Preempted(_) => {}
            }
        }
        self.latencies.e2e.observe(t0.elapsed().as_secs_f64());
        let text = words.join("");
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "length", "logprobs": null})
        };
        self.json(
            StatusCode::OK,
            &json!({
                "id": reply.id,
                "object": if chat { "chat.completion" } else { "text_completion" },
                "created": 0,
                "model": reply.model,
                "choices": [choice],
                "usage": reply.usage,
            }),
        )
    }

    fn stream(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
        reply: Reply,
    ) -> Response<Body> {
        let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(64);
        let me = self.clone();
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            let mut n = 0u64;
            while let Some(e) = rx.recv().await {
                match e {
                    Event::First(_) | Event::Token(_) => {
                        if n == 0 {
                            me.latencies.ttft.observe(t0.elapsed().as_secs_f64());
                        }
                        let chunk = reply.chunk(Some(&word(reply.seed, n)), None);
                        n += 1;
                        if !send(&tx, sse(&chunk)).await {
                            break;
                        }
                    }
                    Event::Done(_) => break,
                    Event::Preempted(_) => {}
                }
            }
            me.latencies.e2e.observe(t0.elapsed().as_secs_f64());
            let _ = send(&tx, sse(&reply.chunk(None, Some("length")))).await;
            if reply.include_usage {
                let mut u = reply.chunk(None, None);
                u["choices"] = json!([]);
                u["usage"] = reply.usage.clone();
                let _ = send(&tx, sse(&u)).await;
            }
            let _ = send(&tx, Bytes::from_static(b"data: [DONE]\n\n")).await;
        });
        let body = futures_util::stream::unfold(out, |mut out| async move {
            out.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), out))
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .header("x-backend", &self.served.name)
            .body(StreamBody::new(body).boxed())
            .unwrap_or_else(|_| Response::new(full("")))
    }

    async fn embed(&self, v: &Value, bt: usize) -> Response<Body> {
        let inputs: Vec<String> = match v.get("input") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => {
                vec![Value::Array(a.clone()).to_string()]
            }
            Some(Value::Array(a)) if !a.is_empty() && a.len() <= 2048 => a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            _ => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "input must be a string, or a list of 1-2048 strings or token arrays",
                );
            }
        };
        let counted: Vec<(u32, Vec<u64>)> = inputs.iter().map(|s| tokenize(s, bt)).collect();
        let tokens: u32 = counted.iter().map(|(t, _)| *t).sum();
        let blocks = counted.into_iter().flat_map(|(_, b)| b).collect();
        let priority = match priority(v) {
            Ok(p) => p,
            Err(msg) => return self.error(StatusCode::BAD_REQUEST, msg),
        };
        let t0 = tokio::time::Instant::now();
        let mut rx = match self.node.submit(tokens.max(1), 0, blocks, priority) {
            Ok(rx) => rx,
            Err(e) => return self.error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        while let Some(e) = rx.recv().await {
            if matches!(e, Event::Done(_)) {
                break;
            }
        }
        self.latencies.e2e.observe(t0.elapsed().as_secs_f64());
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let seed = fnv(s.as_bytes());
                let e: Vec<f64> = (0..8)
                    .map(|k| ((seed >> (k * 8)) & 0xff) as f64 / 255.0)
                    .collect();
                json!({"object": "embedding", "index": i, "embedding": e})
            })
            .collect();
        self.json(
            StatusCode::OK,
            &json!({"object": "list", "model": self.served.model, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        )
    }

    /// The metrics text, under vLLM's names.
    pub fn metrics(&self) -> String {
        let g = self.node.gauges();
        let lbl = format!("model_name=\"{}\"", self.served.model.replace('"', ""));
        let mut o = String::new();
        let mut one = |name: &str, kind: &str, v: f64| {
            let _ = writeln!(o, "# TYPE {name} {kind}\n{name}{{{lbl}}} {v}");
        };
        one("vllm:num_requests_waiting", "gauge", g.waiting as f64);
        one("vllm:num_requests_running", "gauge", g.running as f64);
        one("vllm:kv_cache_usage_perc", "gauge", g.kv_usage);
        one("vllm:gpu_cache_usage_perc", "gauge", g.kv_usage);
        let c = g.counters;
        one(
            "vllm:prompt_tokens_total",
            "counter",
            c.prompt_tokens as f64,
        );
        one(
            "vllm:generation_tokens_total",
            "counter",
            c.generation_tokens as f64,
        );
        one("vllm:request_success_total", "counter", c.finished as f64);
        one(
            "vllm:num_preemptions_total",
            "counter",
            c.preemptions as f64,
        );
        one(
            "vllm:prefix_cache_queries_total",
            "counter",
            g.prefix_queries as f64,
        );
        one(
            "vllm:prefix_cache_hits_total",
            "counter",
            g.prefix_hits as f64,
        );
        one("emulator_busy_seconds_total", "counter", g.busy_secs);
        let a = self.adapters.gauges();
        one("emulator_lora_loads_total", "counter", a.loads as f64);
        one("emulator_lora_load_seconds_total", "counter", a.load_secs);
        let _ = writeln!(
            o,
            "# TYPE emulator_model_loaded gauge\nemulator_model_loaded{{{lbl},kind=\"llm\"}} {}",
            u8::from(self.loading().is_none())
        );
        super::models::render(&self.models.gauges(), &mut o);
        self.latencies
            .ttft
            .render(&mut o, "vllm:time_to_first_token_seconds", &lbl);
        self.latencies
            .e2e
            .render(&mut o, "vllm:e2e_request_latency_seconds", &lbl);
        // vLLM's: the loaded adapters are listed as running.
        let _ = writeln!(
            o,
            "# TYPE vllm:lora_requests_info gauge\nvllm:lora_requests_info{{running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\",max_lora=\"{}\"}} 1",
            a.loaded.join(","),
            a.loading.join(","),
            a.max_loras
        );
        o
    }
}

/// What every chunk or answer of one request repeats.
struct Reply {
    id: String,
    model: String,
    chat: bool,
    seed: u64,
    usage: Value,
    include_usage: bool,
}

impl Reply {
    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        let choice = if self.chat {
            let delta = text.map_or(json!({}), |t| json!({"content": t}));
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null})
        };
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": 0,
            "model": self.model,
            "choices": [choice],
        })
    }
}

/// How long a streaming client may leave an event unread before the
/// stream is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Queues one event for the client; false when it went away or stopped
/// reading for [`WRITE_TIMEOUT`].
async fn send(tx: &tokio::sync::mpsc::Sender<Bytes>, b: Bytes) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, tx.send(b)).await,
        Ok(Ok(()))
    )
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The `n`th generated token of a reply: four bytes, as counted.
fn word(seed: u64, n: u64) -> String {
    format!(" {:03x}", (seed ^ n.wrapping_mul(0x9e37_79b9)) & 0xfff)
}

/// Tokens (four bytes each, at least one) and chained full blocks.
pub fn tokenize(text: &str, block_tokens: usize) -> (u32, Vec<u64>) {
    let b = text.as_bytes();
    let tokens = b.len().div_ceil(4).clamp(1, u32::MAX as usize) as u32;
    let per_block = block_tokens * 4;
    let full = b.len() / per_block;
    (
        tokens,
        chain((0..full).map(|i| fnv(&b[i * per_block..(i + 1) * per_block]))),
    )
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn read_json(req: Request<Incoming>) -> Result<Value, (StatusCode, String)> {
    let bytes = kserve::read_bytes(req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

/// Serves `emu` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, emu: Arc<Emulator>) {
    let settings = crate::http::Settings::new(format!("emulate {}", emu.served.name)).nodelay();
    crate::http::serve(listener, settings, move |req| emu.clone().handle(req)).await;
}
