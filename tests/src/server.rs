//! The testbed's backend: an emulated inference server.
//!
//! It speaks the OpenAI-compatible API (`/v1/completions`,
//! `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`) and models a GPU:
//! `slots` sequences run at once (the batch); more wait in a queue. A request's
//! prefill takes `prefill_us_per_token` per prompt token, then each output
//! token takes `decode_ms_per_token`, slowed by `batch_penalty` per other
//! running sequence, everything divided by `speed`. KV cache holds
//! `kv_tokens` tokens; a running request holds prompt + output tokens.
//! `/metrics` reports this state under vLLM's metric names (`/metrics/empty`
//! answers 200 with no samples, for scrape tests). Results are
//! deterministic functions of (model, prompt), so caches can check them.
//!
//! `GET /admin/stats` counts inference calls received (the cache suites use it).
//! `GET /` answers at once with the server's name (the L4 suites use it), and
//! `POST /admin/config` changes `speed`, `phantom_waiting` (requests reported as
//! queued, to fill the queue on demand) and `fail` (answer 500) at runtime.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, body::Frame, body::Incoming, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Semaphore};

/// How the emulated GPU behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmulatorConfig {
    /// Name in responses and the `x-backend` header.
    pub name: String,
    /// Models (and adapters) served.
    pub models: Vec<String>,
    /// Sequences in the batch at once.
    pub slots: usize,
    /// Prefill cost per prompt token, microseconds.
    pub prefill_us_per_token: f64,
    /// Decode cost per output token, milliseconds.
    pub decode_ms_per_token: f64,
    /// Relative slowdown per other running sequence.
    pub batch_penalty: f64,
    /// Speed factor: 0.25 is four times slower.
    pub speed: f64,
    /// KV-cache capacity in tokens.
    pub kv_tokens: f64,
    /// Delay before answering `GET /` (the L4 suites), milliseconds.
    pub root_delay_ms: u64,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            name: "backend".into(),
            models: vec!["test-model".into()],
            slots: 8,
            prefill_us_per_token: 20.0,
            decode_ms_per_token: 1.0,
            batch_penalty: 0.05,
            speed: 1.0,
            kv_tokens: 16_384.0,
            root_delay_ms: 0,
        }
    }
}

/// Runtime changes through `POST /admin/config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// New speed factor.
    pub speed: Option<f64>,
    /// Requests to report as waiting on top of the real queue.
    pub phantom_waiting: Option<u64>,
    /// Answer inference requests with HTTP 500.
    pub fail: Option<bool>,
}

const TTFT_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

struct State {
    cfg: Mutex<EmulatorConfig>,
    slots: Arc<Semaphore>,
    waiting: AtomicU64,
    running: AtomicU64,
    phantom_waiting: AtomicU64,
    fail: std::sync::atomic::AtomicBool,
    kv_in_use: AtomicU64,
    prompt_tokens: AtomicU64,
    gen_tokens: AtomicU64,
    requests: AtomicU64,
    /// Inference requests received, failed ones included.
    calls: AtomicU64,
    ttft: Mutex<Vec<u64>>,
    ttft_sum: Mutex<f64>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

fn json(status: StatusCode, v: &serde_json::Value, name: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-backend", name)
        .body(full(v.to_string()))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn error(status: StatusCode, msg: &str, name: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": {"message": msg, "type": "invalid_request_error"}}),
        name,
    )
}

/// FNV-1a, for deterministic outputs.
fn fnv(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn prompt_text(v: &serde_json::Value) -> String {
    if let Some(p) = v.get("prompt") {
        return match p {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    }
    if let Some(m) = v.get("messages") {
        return m.to_string();
    }
    v.get("input").map(|i| i.to_string()).unwrap_or_default()
}

/// Serves until the process ends.
pub async fn serve(listen: SocketAddr, cfg: EmulatorConfig) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    serve_on(listener, cfg).await
}

/// Serves on a bound listener until the process ends.
pub async fn serve_on(listener: TcpListener, cfg: EmulatorConfig) -> Result<()> {
    let state = Arc::new(State {
        slots: Arc::new(Semaphore::new(cfg.slots.max(1))),
        cfg: Mutex::new(cfg),
        waiting: AtomicU64::new(0),
        running: AtomicU64::new(0),
        phantom_waiting: AtomicU64::new(0),
        fail: std::sync::atomic::AtomicBool::new(false),
        kv_in_use: AtomicU64::new(0),
        prompt_tokens: AtomicU64::new(0),
        gen_tokens: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        ttft: Mutex::new(vec![0; TTFT_BOUNDS.len() + 1]),
        ttft_sum: Mutex::new(0.0),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn cfg(state: &State) -> EmulatorConfig {
    state.cfg.lock().map(|c| c.clone()).unwrap_or_default()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let c = cfg(&state);
    let name = c.name.clone();
    let path = req.uri().path().to_string();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/") => {
            if c.root_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(c.root_delay_ms)).await;
            }
            Response::builder()
                .header("x-backend", &name)
                .body(full(format!("{name}\n")))
                .unwrap_or_else(|_| Response::new(full("")))
        }
        ("GET", "/health") => Response::new(full("ok\n")),
        ("GET", "/admin/stats") => json(
            StatusCode::OK,
            &serde_json::json!({
                "calls": state.calls.load(Ordering::Relaxed),
                "completed": state.requests.load(Ordering::Relaxed),
            }),
            &name,
        ),
        ("GET", "/metrics") => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(full(metrics(&state, &c)))
            .unwrap_or_else(|_| Response::new(full(""))),
        ("GET", "/metrics/empty") => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(full(""))
            .unwrap_or_else(|_| Response::new(full(""))),
        ("GET", "/v1/models") => {
            let data: Vec<_> = c
                .models
                .iter()
                .map(|m| serde_json::json!({"id": m, "object": "model", "owned_by": "emulator"}))
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"object": "list", "data": data}),
                &name,
            )
        }
        ("POST", "/admin/config") => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(StatusCode::BAD_REQUEST, "body too large", &name),
            };
            match serde_json::from_slice::<AdminConfig>(&body) {
                Ok(a) => {
                    if let Some(s) = a.speed
                        && let Ok(mut c) = state.cfg.lock()
                    {
                        c.speed = s.max(0.001);
                    }
                    if let Some(p) = a.phantom_waiting {
                        state.phantom_waiting.store(p, Ordering::Relaxed);
                    }
                    if let Some(f) = a.fail {
                        state.fail.store(f, Ordering::Relaxed);
                    }
                    json(StatusCode::OK, &serde_json::json!({}), &name)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string(), &name),
            }
        }
        ("POST", "/v1/completions" | "/v1/chat/completions" | "/v1/embeddings") => {
            state.calls.fetch_add(1, Ordering::Relaxed);
            infer(state, req, c, path).await
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no route {path}"), &name),
    }
}

async fn infer(
    state: Arc<State>,
    req: Request<Incoming>,
    c: EmulatorConfig,
    path: String,
) -> Response<Body> {
    let name = c.name.clone();
    let body = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than 1 MiB",
                &name,
            );
        }
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON: {e}"),
                &name,
            );
        }
    };
    let model = v
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    if !c.models.contains(&model) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("model {model:?} is not served here"),
            &name,
        );
    }
    if state.fail.load(Ordering::Relaxed) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "emulated failure", &name);
    }
    let embeddings = path == "/v1/embeddings";
    let prompt = prompt_text(&v);
    let prompt_tokens = (prompt.len() as f64 / 4.0).ceil().max(1.0);
    let max_tokens = if embeddings {
        0.0
    } else {
        v.get("max_tokens")
            .and_then(|m| m.as_f64())
            .unwrap_or(16.0)
            .clamp(1.0, 4096.0)
    };
    let stream = v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false) && !embeddings;
    let t0 = Instant::now();
    state.waiting.fetch_add(1, Ordering::Relaxed);
    let permit = state.slots.clone().acquire_owned().await;
    state.waiting.fetch_sub(1, Ordering::Relaxed);
    let running = state.running.fetch_add(1, Ordering::Relaxed) + 1;
    let kv = (prompt_tokens + max_tokens) as u64;
    state.kv_in_use.fetch_add(kv, Ordering::Relaxed);
    let speed = c.speed.max(0.001);
    let prefill = Duration::from_secs_f64(prompt_tokens * c.prefill_us_per_token / 1e6 / speed);
    tokio::time::sleep(prefill).await;
    let ttft = t0.elapsed().as_secs_f64();
    if let Ok(mut h) = state.ttft.lock() {
        let i = TTFT_BOUNDS
            .iter()
            .position(|b| ttft <= *b)
            .unwrap_or(TTFT_BOUNDS.len());
        h[i] += 1;
    }
    if let Ok(mut s) = state.ttft_sum.lock() {
        *s += ttft;
    }
    let per_token = Duration::from_secs_f64(
        c.decode_ms_per_token / 1e3 * (1.0 + c.batch_penalty * (running.saturating_sub(1)) as f64)
            / speed,
    );
    let seed = fnv(format!("{model}\0{prompt}").as_bytes());
    let words: Vec<String> = (0..max_tokens as u64)
        .map(|i| format!("w{:x}", (seed ^ i.wrapping_mul(0x9e37_79b9)) & 0xfff))
        .collect();
    let done = {
        let state = state.clone();
        move || {
            state.running.fetch_sub(1, Ordering::Relaxed);
            state.kv_in_use.fetch_sub(kv, Ordering::Relaxed);
            state
                .prompt_tokens
                .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
            state
                .gen_tokens
                .fetch_add(max_tokens as u64, Ordering::Relaxed);
            state.requests.fetch_add(1, Ordering::Relaxed);
        }
    };
    let usage = serde_json::json!({
        "prompt_tokens": prompt_tokens as u64,
        "completion_tokens": max_tokens as u64,
        "total_tokens": (prompt_tokens + max_tokens) as u64,
    });
    if embeddings {
        drop(permit);
        done();
        let vec: Vec<f64> = (0..8)
            .map(|i| ((seed >> (i * 8)) & 0xff) as f64 / 255.0)
            .collect();
        return json(
            StatusCode::OK,
            &serde_json::json!({"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": vec}], "usage": usage}),
            &name,
        );
    }
    let chat = path == "/v1/chat/completions";
    if stream {
        // Server-sent events, one token per event, as vLLM streams.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let model2 = model.clone();
        tokio::spawn(async move {
            let _permit = permit;
            for w in &words {
                tokio::time::sleep(per_token).await;
                let chunk = if chat {
                    serde_json::json!({"object": "chat.completion.chunk", "model": model2, "choices": [{"index": 0, "delta": {"content": format!("{w} ")}}]})
                } else {
                    serde_json::json!({"object": "text_completion", "model": model2, "choices": [{"index": 0, "text": format!("{w} ")}]})
                };
                if tx
                    .send(Bytes::from(format!("data: {chunk}\n\n")))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            done();
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("x-backend", &name)
            .body(StreamBody::new(stream).boxed())
            .unwrap_or_else(|_| Response::new(full("")));
    }
    tokio::time::sleep(per_token * words.len() as u32).await;
    drop(permit);
    done();
    let text = words.join(" ");
    let choice = if chat {
        serde_json::json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
    } else {
        serde_json::json!({"index": 0, "text": text, "finish_reason": "length"})
    };
    json(
        StatusCode::OK,
        &serde_json::json!({
            "id": format!("cmpl-{seed:016x}"),
            "object": if chat { "chat.completion" } else { "text_completion" },
            "model": model,
            "choices": [choice],
            "usage": usage,
        }),
        &name,
    )
}

fn metrics(state: &State, c: &EmulatorConfig) -> String {
    let mut o = String::new();
    let model = c.models.first().cloned().unwrap_or_default();
    let lbl = format!("model_name=\"{model}\"");
    let waiting =
        state.waiting.load(Ordering::Relaxed) + state.phantom_waiting.load(Ordering::Relaxed);
    let running = state.running.load(Ordering::Relaxed);
    let kv = (state.kv_in_use.load(Ordering::Relaxed) as f64 / c.kv_tokens).min(1.0);
    let mut g = |n: &str, t: &str, v: f64| {
        let _ = writeln!(o, "# TYPE {n} {t}\n{n}{{{lbl}}} {v}");
    };
    g("vllm:num_requests_waiting", "gauge", waiting as f64);
    g("vllm:num_requests_running", "gauge", running as f64);
    g("vllm:kv_cache_usage_perc", "gauge", kv);
    g("vllm:gpu_cache_usage_perc", "gauge", kv);
    g(
        "vllm:generation_tokens_total",
        "counter",
        state.gen_tokens.load(Ordering::Relaxed) as f64,
    );
    g(
        "vllm:prompt_tokens_total",
        "counter",
        state.prompt_tokens.load(Ordering::Relaxed) as f64,
    );
    g(
        "vllm:request_success_total",
        "counter",
        state.requests.load(Ordering::Relaxed) as f64,
    );
    let adapters: Vec<&str> = c.models.iter().skip(1).map(String::as_str).collect();
    let _ = writeln!(
        o,
        "# TYPE vllm:lora_requests_info gauge\nvllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"\"}} 1",
        adapters.len(),
        adapters.join(",")
    );
    let _ = writeln!(o, "# TYPE vllm:time_to_first_token_seconds histogram");
    let counts = state.ttft.lock().map(|h| h.clone()).unwrap_or_default();
    let mut cum = 0u64;
    for (i, b) in TTFT_BOUNDS.iter().enumerate() {
        cum += counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "vllm:time_to_first_token_seconds_bucket{{le=\"{b}\",{lbl}}} {cum}"
        );
    }
    cum += counts.last().copied().unwrap_or(0);
    let _ = writeln!(
        o,
        "vllm:time_to_first_token_seconds_bucket{{le=\"+Inf\",{lbl}}} {cum}"
    );
    let _ = writeln!(o, "vllm:time_to_first_token_seconds_count{{{lbl}}} {cum}");
    let sum = state.ttft_sum.lock().map(|s| *s).unwrap_or(0.0);
    let _ = writeln!(o, "vllm:time_to_first_token_seconds_sum{{{lbl}}} {sum}");
    o
}

/// Sends a JSON body to an emulator's admin endpoint (tests).
pub fn admin_body(a: &AdminConfig) -> String {
    serde_json::to_string(a).unwrap_or_default()
}

/// Per-backend answer counts, as the load generators report them.
pub type Answers = BTreeMap<String, u64>;
