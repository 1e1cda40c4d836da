//! The emulated server over loopback: API shapes, streaming, metrics as
//! balancer's own telemetry reads them, and bad requests.

use std::{net::SocketAddr, time::Duration};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};

use super::{
    node::Node,
    profile::Class,
    server::{Emulator, Served, serve},
};
use crate::{
    control::{prom, telemetry::ServerKind, telemetry::presets},
    testutil::margin,
};

pub(super) fn class() -> Class {
    Class {
        name: "t".into(),
        source: "test".into(),
        prefill_tokens_per_s: 100_000.0,
        decode_ms_base: 20.0,
        decode_ms_per_seq: 0.0,
        kv_tokens: 4096,
        max_seqs: 4,
        block_tokens: 16,
        max_step_tokens: 4096,
        load_s: 0.0,
    }
}

async fn start() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = Served {
        name: "emu-1".into(),
        model: "m".into(),
    };
    tokio::spawn(serve(l, Emulator::new(Node::spawn(class()), served)));
    addr
}

/// One HTTP/1.0 exchange: the status, the head, and the body's lines, each
/// with the time since the request was sent.
pub(super) async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, Vec<(Duration, String)>) {
    call_raw(
        addr,
        method,
        path,
        "Content-Type: application/json",
        body.as_bytes(),
    )
    .await
}

/// [`call`] with any `headers` (CRLF-separated lines) and body bytes.
pub(super) async fn call_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, Vec<(Duration, String)>) {
    tokio::time::timeout(margin(), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.0\r\n{headers}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        s.write_all(&req).await.unwrap();
        let t0 = Instant::now();
        let (mut raw, mut lines) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 4096];
        let mut head_len = None;
        let mut seen = 0;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if head_len.is_none() {
                head_len = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
                seen = head_len.unwrap_or(0);
            }
            if head_len.is_some() {
                while let Some(p) = raw[seen..].iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&raw[seen..seen + p]).to_string();
                    lines.push((t0.elapsed(), line));
                    seen += p + 1;
                }
            }
        }
        let h = head_len.expect("a response head");
        if seen < raw.len() {
            lines.push((
                t0.elapsed(),
                String::from_utf8_lossy(&raw[seen..]).to_string(),
            ));
        }
        let head = String::from_utf8_lossy(&raw[..h]).to_string();
        let status = head[9..12].parse().unwrap();
        (status, head, lines)
    })
    .await
    .expect("the emulator answers")
}

pub(super) fn body_json(lines: &[(Duration, String)]) -> Value {
    let text: String = lines
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn a_completion_generates_exactly_max_tokens() {
    let addr = start().await;
    let body = json!({"model": "m", "prompt": "hello there", "max_tokens": 5}).to_string();
    let (status, head, lines) = call(addr, "POST", "/v1/completions", &body).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.to_lowercase().contains("x-backend: emu-1"), "{head}");
    let v = body_json(&lines);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["choices"][0]["text"].as_str().unwrap().len(), 20, "{v}");
    assert_eq!(v["object"], "text_completion");
}

#[tokio::test]
async fn a_stream_sends_one_event_a_token_over_time() {
    let addr = start().await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}})
    .to_string();
    let (status, head, lines) = call(addr, "POST", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let events: Vec<&(Duration, String)> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("data: "))
        .collect();
    assert_eq!(events.last().unwrap().1, "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, l)| serde_json::from_str(&l[6..]).unwrap())
        .collect();
    let content: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].is_string())
        .collect();
    assert_eq!(content.len(), 6, "{chunks:?}");
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[7]["usage"]["completion_tokens"], 6);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    // Five decode steps of 20 ms lie between the first token and the last:
    // a lower bound, which a slow machine only widens.
    let spread = events[5].0 - events[0].0;
    assert!(spread >= Duration::from_millis(90), "{spread:?}");
}

#[tokio::test]
async fn embeddings_answer_one_vector_per_input() {
    let addr = start().await;
    for (input, n) in [
        (json!("one"), 1),
        (json!(["a", "b", "c"]), 3),
        (json!([1, 2, 3]), 1),
    ] {
        let body = json!({"model": "m", "input": input}).to_string();
        let (status, _, lines) = call(addr, "POST", "/v1/embeddings", &body).await;
        assert_eq!(status, 200);
        let v = body_json(&lines);
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), n, "{v}");
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["index"], i);
            assert_eq!(d["embedding"].as_array().unwrap().len(), 8);
        }
    }
}

#[tokio::test]
async fn metrics_read_as_vllm_and_count_prefix_hits() {
    let addr = start().await;
    let prompt = "x".repeat(64 * 20);
    for _ in 0..2 {
        let body = json!({"model": "m", "prompt": prompt, "max_tokens": 2}).to_string();
        assert_eq!(call(addr, "POST", "/v1/completions", &body).await.0, 200);
    }
    let (status, _, lines) = call(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let e = prom::parse(&text, &prom::Limits::default()).unwrap();
    let r = presets::extract(ServerKind::Vllm, &e);
    assert_eq!(r.queue_waiting, Some(0.0), "{text}");
    assert_eq!(r.requests_running, Some(0.0));
    assert_eq!(r.gen_tokens, Some(4.0));
    assert!(!r.ttft.is_empty(), "{text}");
    // The second prompt found all 20 blocks but must compute its last token.
    assert!(
        text.contains("vllm:prefix_cache_queries_total{model_name=\"m\"} 640"),
        "{text}"
    );
    assert!(
        text.contains("vllm:prefix_cache_hits_total{model_name=\"m\"} 320"),
        "{text}"
    );
    assert!(
        text.contains("vllm:prompt_tokens_total{model_name=\"m\"} 321"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let addr = start().await;
    let long = "y".repeat(4 * 5000);
    let cases = [
        ("/v1/completions", "{".to_string(), 400, "invalid JSON"),
        (
            "/v1/completions",
            json!({"model": "other", "prompt": "a"}).to_string(),
            404,
            "the model `other` does not exist",
        ),
        (
            "/v1/completions",
            json!({"model": "m", "prompt": "a", "max_tokens": 0}).to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "m", "prompt": "a", "max_tokens": "9"}).to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "m"}).to_string(),
            400,
            "prompt is missing",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "prompt": "a"}).to_string(),
            400,
            "messages is missing",
        ),
        (
            "/v1/completions",
            json!({"model": "m", "prompt": long}).to_string(),
            400,
            "do not fit",
        ),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": []}).to_string(),
            400,
            "input must be",
        ),
        (
            "/v1/completions",
            json!({"model": "m", "prompt": "a", "priority": "high"}).to_string(),
            400,
            "priority must be an integer",
        ),
        (
            "/v1/completions",
            json!({"model": "m", "prompt": "a", "priority": 1}).to_string(),
            400,
            "priority scheduling is not enabled",
        ),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": "a", "priority": 2}).to_string(),
            400,
            "priority scheduling is not enabled",
        ),
        ("/v1/nothing", "{}".to_string(), 404, "no route"),
    ];
    for (path, body, want, text) in cases {
        let (status, _, lines) = call(addr, "POST", path, &body).await;
        let v = body_json(&lines);
        assert_eq!(status, want, "{path} {body}: {v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(text), "{path} {body}: {m}");
    }
}
