//! What a planned request looks like on the wire.
//!
//! - LLM requests: `POST /v1/completions`, streamed, with the plan's prompt;
//! - speech: `POST /v1/audio/transcriptions`, a multipart form holding a
//!   silent 16 kHz mono 16-bit WAV of the planned seconds;
//! - every other non-LLM model: `POST /v2/models/{m}/infer` in Triton's
//!   binary extension, one UINT8 tensor of the planned elements after the
//!   JSON header, so a large image costs bytes, not JSON text.
//!
//! Bodies are built when a request is sent, not planned ahead, so a run's
//! memory does not grow with its images.

use bytes::Bytes;

use super::{
    plan::{Planned, Task, prompt_text},
    scenario::Scenario,
};

/// One request ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The path.
    pub path: String,
    /// `content-type`.
    pub content_type: String,
    /// Further headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Bytes,
    /// Whether the answer streams (SSE).
    pub stream: bool,
}

/// The form boundary: hex digits never occur in it twice in a row.
const BOUNDARY: &str = "balancer-fleet-bench-boundary-x7q";

/// The request for `p`.
pub fn outgoing(s: &Scenario, p: &Planned) -> Outgoing {
    match &p.task {
        None => {
            let body = serde_json::json!({
                "model": s.fleet.model,
                "prompt": prompt_text(p),
                "max_tokens": p.output_tokens,
                "stream": true,
            });
            // The tier as the gateway reads it, when it is one of its words.
            let tier = s.tiers.get(p.tier).map(|t| t.name.as_str());
            let headers = match tier {
                Some(t @ ("critical" | "standard" | "sheddable")) => {
                    vec![("x-priority", t.to_string())]
                }
                _ => Vec::new(),
            };
            Outgoing {
                path: "/v1/completions".into(),
                content_type: "application/json".into(),
                headers,
                body: Bytes::from(body.to_string()),
                stream: true,
            }
        }
        Some(t) if t.speech => transcription(t),
        Some(t) => tensor(t, p.index),
    }
}

/// A silent WAV of `secs` seconds: 16 kHz, mono, 16-bit.
pub fn wav(secs: f64) -> Vec<u8> {
    let rate = 16_000u32;
    let data = ((secs * rate as f64).round() as u32).saturating_mul(2);
    let mut w = Vec::with_capacity(44 + data as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36u32.saturating_add(data)).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes()); // byte rate
    w.extend_from_slice(&2u16.to_le_bytes()); // block align
    w.extend_from_slice(&16u16.to_le_bytes()); // bits
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(44 + data as usize, 0);
    w
}

fn transcription(t: &Task) -> Outgoing {
    let mut b = Vec::new();
    let field = |b: &mut Vec<u8>, name: &str, value: &str| {
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    field(&mut b, "model", &t.model);
    field(&mut b, "response_format", "json");
    b.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
            .as_bytes(),
    );
    b.extend_from_slice(&wav(t.units));
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Outgoing {
        path: "/v1/audio/transcriptions".into(),
        content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
        headers: Vec::new(),
        body: Bytes::from(b),
        stream: false,
    }
}

fn tensor(t: &Task, index: usize) -> Outgoing {
    let header = serde_json::json!({
        "id": index.to_string(),
        "inputs": [{
            "name": "input",
            "shape": [1, t.elements],
            "datatype": "UINT8",
            "parameters": {"binary_data_size": t.elements},
        }],
    })
    .to_string();
    let mut b = Vec::with_capacity(header.len() + t.elements as usize);
    b.extend_from_slice(header.as_bytes());
    b.resize(header.len() + t.elements as usize, 0);
    Outgoing {
        path: format!("/v2/models/{}/infer", t.model),
        content_type: "application/octet-stream".into(),
        headers: vec![("inference-header-content-length", header.len().to_string())],
        body: Bytes::from(b),
        stream: false,
    }
}

#[cfg(test)]
mod tests {
    use balancer::emulate::{
        adapters::Adapters,
        models::Models,
        node::Node,
        server::{Emulator, Served, serve},
    };
    use http_body_util::{BodyExt, Full};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    use super::*;
    use crate::fleet::plan::Planned;

    fn planned(task: Option<Task>) -> Planned {
        Planned {
            index: 7,
            at_s: 0.0,
            tier: 0,
            prompt_tokens: if task.is_none() { 40 } else { 0 },
            output_tokens: if task.is_none() { 3 } else { 0 },
            blocks: Vec::new(),
            task,
        }
    }

    #[test]
    fn a_wav_lasts_its_seconds() {
        let w = wav(1.5);
        assert_eq!(w.len(), 44 + 48_000);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes([w[4], w[5], w[6], w[7]]) as usize,
            w.len() - 8
        );
        assert_eq!(&w[36..40], b"data");
    }

    /// Every kind of request the bench sends is one the emulator accepts,
    /// sized as planned.
    #[tokio::test]
    async fn the_emulator_accepts_every_request_kind() {
        let f = crate::scenarios_dir().join("10-mixed-platform.toml");
        let s = Scenario::load(&f).unwrap();
        let mut profile = s.fleet.profile.clone();
        // Loaded from the start.
        for m in &mut profile.models {
            m.cost.iter_mut().for_each(|c| c.load_s = 0.0);
        }
        let class = profile.class("h100").unwrap().clone();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let emu = Emulator::with_models(
            Node::spawn(class),
            Served {
                name: "n".into(),
                model: s.fleet.model.clone(),
            },
            Adapters::new(profile.lora.clone()),
            Models::new(&profile.models, "h100"),
        );
        tokio::spawn(serve(l, emu));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let task = |model: &str, speech: bool, units: f64, elements: u64| {
            Some(Task {
                model: model.into(),
                speech,
                units,
                elements,
            })
        };
        let cases = [
            ("llm", planned(None), "data: [DONE]"),
            (
                "speech",
                planned(task("whisper-large-v3", true, 2.5, 0)),
                "\"seconds\":3",
            ),
            (
                "image",
                planned(task("resnet-50", false, 0.5, 1_500_000)),
                "\"units\":0.5",
            ),
            (
                "video",
                planned(task("videomae-base", false, 8.0, 8 * 150_528)),
                "\"units\":8.0",
            ),
        ];
        for (what, p, expect) in cases {
            let out = outgoing(&s, &p);
            let mut req = hyper::Request::post(format!("http://{addr}{}", out.path))
                .header("content-type", &out.content_type);
            for (k, v) in &out.headers {
                req = req.header(*k, v);
            }
            let resp = client
                .request(req.body(Full::new(out.body)).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&body);
            assert_eq!(status, 200, "{what}: {text}");
            assert!(text.contains(expect), "{what}: {text}");
        }
    }
}
