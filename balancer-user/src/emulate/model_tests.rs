//! Non-LLM models: their profile tables, their queue, and their APIs
//! (KServe v2 tensors, OpenAI transcriptions) over loopback, bad input
//! included; and the base model's load time.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{
    adapters::Adapters,
    models::{Cost, Kind, ModelError, ModelSpec, Models},
    node::Node,
    profile::{Lora, Profile},
    server::{Emulator, Served, serve},
    server_tests::{body_json, call, call_raw, class},
};

fn spec(kind: Kind, base_ms: f64, per_unit_ms: f64, slots: u32, load_s: f64) -> ModelSpec {
    ModelSpec {
        name: "vision".into(),
        kind,
        source: "test".into(),
        elements_per_unit: 1000.0,
        max_units: 100.0,
        cost: vec![Cost {
            class: "t".into(),
            base_ms,
            per_unit_ms,
            slots,
            load_s,
        }],
    }
}

#[test]
fn bad_model_tables_are_refused_with_the_field() {
    let classes: BTreeSet<&str> = ["t"].into();
    let ok = spec(Kind::ImageClassification, 1.0, 2.0, 1, 0.0);
    assert!(ok.validate(&classes).is_ok());
    type Edit = fn(&mut ModelSpec);
    let cases: [(&str, Edit, &str); 7] = [
        ("no name", |m| m.name.clear(), "1-256 bytes"),
        (
            "zero elements",
            |m| m.elements_per_unit = 0.0,
            "elements_per_unit",
        ),
        ("NaN max", |m| m.max_units = f64::NAN, "max_units"),
        (
            "unknown class",
            |m| m.cost[0].class = "x".into(),
            "not defined",
        ),
        (
            "free",
            |m| {
                m.cost[0] = Cost {
                    base_ms: 0.0,
                    per_unit_ms: 0.0,
                    ..m.cost[0].clone()
                }
            },
            "not both 0",
        ),
        ("no slots", |m| m.cost[0].slots = 0, "slots"),
        ("no cost", |m| m.cost.clear(), "no cost entry"),
    ];
    for (what, edit, expect) in cases {
        let mut m = ok.clone();
        edit(&mut m);
        let e = m.validate(&classes).expect_err(what).to_string();
        assert!(e.contains(expect), "{what}: {e}");
    }
}

#[test]
fn a_profile_checks_its_models_and_selects_them_by_name() {
    let text = r#"
[[class]]
name = "t"
source = "s"
prefill_tokens_per_s = 1000
decode_ms_base = 10
decode_ms_per_seq = 0
kv_tokens = 4096
max_seqs = 4
load_s = 5

[[model]]
name = "resnet"
kind = "image-classification"
source = "s"
elements_per_unit = 3_000_000
cost = [{ class = "t", base_ms = 1, per_unit_ms = 2 }]
"#;
    let p = Profile::parse(text, "p.toml").unwrap();
    assert_eq!(p.classes[0].load_s, 5.0);
    assert_eq!(p.select_models(None, "t").unwrap().len(), 1);
    assert!(p.select_models(Some(""), "t").unwrap().is_empty());
    let e = p
        .select_models(Some("resnet,nope"), "t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"nope\" is not defined (there are: resnet)"),
        "{e}"
    );
    let e = p
        .select_models(Some("resnet"), "other")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no cost for class"), "{e}");
    for (bad, expect) in [
        (
            text.replace("image-classification", "poetry"),
            "unknown variant",
        ),
        (
            format!("{text}\n{}", &text[text.find("[[model]]").unwrap()..]),
            "defined twice",
        ),
        (text.replace("load_s = 5", "load_s = -1"), "load_s"),
    ] {
        let e = Profile::parse(&bad, "p.toml").unwrap_err().to_string();
        assert!(e.contains(expect), "{expect}: {e}");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_queue_for_the_slots_and_cost_grows_with_size() {
    let m = Models::new(&[spec(Kind::ImageClassification, 10.0, 5.0, 2, 0.0)], "t");
    let t0 = tokio::time::Instant::now();
    // Three requests of 2 units (20 ms each) on two slots: the third waits.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.serve("vision", 2.0, 1.0).await.unwrap();
            t0.elapsed()
        }));
    }
    tokio::task::yield_now().await;
    let g = &m.gauges()[0];
    assert_eq!((g.running, g.waiting), (2, 1));
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    done.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    assert!(ms(done[1]) < 30.0 && ms(done[2]) >= 40.0, "{done:?}");
    assert_eq!(
        done,
        [
            Duration::from_millis(20),
            Duration::from_millis(20),
            Duration::from_millis(40)
        ]
    );
    // Ten times the input: 10 + 5 x 20 ms.
    assert_eq!(m.serve("vision", 20.0, 1.0).await, Ok(0.11));
    // Half speed: twice as long.
    assert_eq!(m.serve("vision", 2.0, 0.5).await, Ok(0.04));
    let g = &m.gauges()[0];
    assert_eq!((g.requests, g.units, g.running, g.waiting), (5, 28.0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_model_refuses_while_loading_and_bad_sizes_always() {
    let m = Models::new(&[spec(Kind::Video, 1.0, 1.0, 1, 3.0)], "t");
    match m.serve("vision", 1.0, 1.0).await {
        Err(ModelError::Loading { left_s, .. }) => assert!((left_s - 3.0).abs() < 1e-6),
        other => panic!("{other:?}"),
    }
    assert!(!m.gauges()[0].loaded);
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(m.gauges()[0].loaded);
    assert!(m.serve("vision", 1.0, 1.0).await.is_ok());
    for units in [0.0, -1.0, f64::NAN, 101.0] {
        assert!(
            matches!(
                m.serve("vision", units, 1.0).await,
                Err(ModelError::Size { .. })
            ),
            "{units}"
        );
    }
    assert_eq!(
        m.serve("other", 1.0, 1.0).await,
        Err(ModelError::Unknown("other".into()))
    );
    // A node of a class without a cost serves nothing.
    assert!(
        Models::new(&[spec(Kind::Video, 1.0, 1.0, 1, 0.0)], "other")
            .spec("vision")
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_leaves_the_gauges_right() {
    let m = Models::new(&[spec(Kind::Recommendation, 1000.0, 0.0, 1, 0.0)], "t");
    let held = tokio::spawn({
        let m = m.clone();
        async move { m.serve("vision", 1.0, 1.0).await }
    });
    let waiter = tokio::spawn({
        let m = m.clone();
        async move { m.serve("vision", 1.0, 1.0).await }
    });
    tokio::task::yield_now().await;
    assert_eq!((m.gauges()[0].running, m.gauges()[0].waiting), (1, 1));
    waiter.abort();
    held.abort();
    let _ = (waiter.await, held.await);
    assert_eq!((m.gauges()[0].running, m.gauges()[0].waiting), (0, 0));
}

/// An emulator of the test class whose base model loads for `load_s`.
fn emulator(models: &[ModelSpec], load_s: f64) -> Arc<Emulator> {
    let mut c = class();
    c.load_s = load_s;
    let served = Served {
        name: "emu-1".into(),
        model: "m".into(),
    };
    Emulator::with_models(
        Node::spawn(c),
        served,
        Adapters::new(Lora::default()),
        Models::new(models, "t"),
    )
}

async fn start(models: Vec<ModelSpec>, load_s: f64) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, emulator(&models, load_s)));
    addr
}

fn speech() -> ModelSpec {
    ModelSpec {
        name: "whisper".into(),
        ..spec(Kind::SpeechRecognition, 1.0, 10.0, 1, 0.0)
    }
}

/// A silent 16 kHz mono 16-bit WAV of `secs`.
fn wav(secs: u32) -> Vec<u8> {
    let data = secs * 32_000;
    let mut w = b"RIFF".to_vec();
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt \x10\0\0\0\x01\0\x01\0");
    w.extend_from_slice(&16_000u32.to_le_bytes());
    w.extend_from_slice(&32_000u32.to_le_bytes());
    w.extend_from_slice(b"\x02\0\x10\0data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(44 + data as usize, 0);
    w
}

fn form(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        let file = if *name == "file" {
            "; filename=\"a.wav\""
        } else {
            ""
        };
        b.extend_from_slice(
            format!("--XX\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n")
                .as_bytes(),
        );
        b.extend_from_slice(value);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"--XX--\r\n");
    b
}

const FORM: &str = "Content-Type: multipart/form-data; boundary=XX";

#[tokio::test]
async fn kserve_v2_answers_json_and_binary_tensors() {
    let addr = start(vec![spec(Kind::ImageClassification, 1.0, 1.0, 1, 0.0)], 0.0).await;
    let body = json!({"id": "r1", "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}]});
    let (status, head, lines) =
        call(addr, "POST", "/v2/models/vision/infer", &body.to_string()).await;
    assert_eq!(status, 200, "{head}");
    let v = body_json(&lines);
    assert_eq!(
        (v["id"].clone(), v["model_name"].clone()),
        (json!("r1"), json!("vision"))
    );
    assert_eq!(v["outputs"][0]["shape"], json!([1, 8]));
    assert_eq!(v["parameters"]["units"], json!(0.006));
    // Triton's binary extension: a JSON header, then the bytes.
    let header = json!({"inputs": [{"name": "x", "shape": [1, 5000], "datatype": "UINT8", "parameters": {"binary_data_size": 5000}}]}).to_string();
    let mut raw = header.clone().into_bytes();
    raw.resize(header.len() + 5000, 0);
    let h = format!(
        "Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {}",
        header.len()
    );
    let (status, head, lines) = call_raw(addr, "POST", "/v2/models/vision/infer", &h, &raw).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body_json(&lines)["parameters"]["units"], json!(5.0));
    let (status, _, lines) = call(addr, "GET", "/v2/models/vision", "").await;
    assert_eq!(
        (status, body_json(&lines)["platform"].clone()),
        (200, json!("balancer-emulate/image-classification"))
    );
    for path in [
        "/v2/health/ready",
        "/v2/health/live",
        "/v2/models/vision/ready",
    ] {
        assert_eq!(call(addr, "GET", path, "").await.0, 200, "{path}");
    }
    let metrics = call(addr, "GET", "/metrics", "").await.2;
    let text: Vec<&str> = metrics.iter().map(|(_, l)| l.as_str()).collect();
    for want in [
        "emulator_model_requests_total{model_name=\"vision\",kind=\"image-classification\",unit=\"megapixels\"} 2",
        "emulator_model_input_units_total{model_name=\"vision\",kind=\"image-classification\",unit=\"megapixels\"} 5.006",
        "emulator_model_loaded{model_name=\"m\",kind=\"llm\"} 1",
    ] {
        assert!(text.contains(&want), "{want} in {text:?}");
    }
}

#[tokio::test]
async fn bad_tensor_requests_get_a_clear_400_or_404() {
    let addr = start(vec![spec(Kind::ImageClassification, 1.0, 1.0, 1, 0.0)], 0.0).await;
    let t = |shape: Value, data: Value| {
        json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]})
            .to_string()
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{".into(), 400, "invalid JSON"),
        ("no inputs", "{}".into(), 400, "inputs must be a list"),
        ("short data", t(json!([2, 2]), json!([1, 2, 3])), 400, "data holds 3 elements, its shape 4"),
        ("long data", t(json!([2]), json!([[1, 2], [3]])), 400, "more than the 2 elements"),
        ("negative size", t(json!([-1]), json!([1])), 400, "not a whole number"),
        ("huge shape", t(json!([1u64 << 30, 1u64 << 30]), json!([1])), 400, "over 2^40"),
        ("bad type", json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}).to_string(), 400, "not a KServe v2 type"),
        ("no data", json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}).to_string(), 400, "give either data"),
        ("binary without bytes", json!({"inputs": [{"name": "x", "shape": [4], "datatype": "UINT8", "parameters": {"binary_data_size": 4}}]}).to_string(), 400, "no binary data follows"),
        ("over max_units", t(json!([200_000]), json!([0])), 400, ""),
    ];
    for (what, body, status, expect) in cases {
        let (got, head, lines) = call(addr, "POST", "/v2/models/vision/infer", &body).await;
        let text: String = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(got, status, "{what}: {head}{text}");
        assert!(text.contains(expect), "{what}: {text}");
    }
    let (got, _, lines) = call(
        addr,
        "POST",
        "/v2/models/nope/infer",
        &t(json!([1]), json!([1])),
    )
    .await;
    assert_eq!(got, 404);
    assert!(
        body_json(&lines)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`nope` does not exist")
    );
    // A header length past the body, and a size that disagrees with the bytes.
    let header = json!({"inputs": [{"name": "x", "shape": [4], "datatype": "UINT8", "parameters": {"binary_data_size": 4}}]}).to_string();
    for (len, extra, expect) in [
        (header.len() + 99, 4, "exceeds the body"),
        (header.len(), 3, "3 bytes follow"),
    ] {
        let mut raw = header.clone().into_bytes();
        raw.resize(header.len() + extra, 0);
        let h = format!("Inference-Header-Content-Length: {len}");
        let (got, _, lines) = call_raw(addr, "POST", "/v2/models/vision/infer", &h, &raw).await;
        let text: String = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(got, 400, "{text}");
        assert!(text.contains(expect), "{expect}: {text}");
    }
}

#[tokio::test]
async fn transcriptions_cost_their_audio_seconds() {
    let addr = start(vec![speech(), spec(Kind::Video, 1.0, 1.0, 1, 0.0)], 0.0).await;
    let body = form(&[("model", b"whisper"), ("file", &wav(3))]);
    let (status, head, lines) =
        call_raw(addr, "POST", "/v1/audio/transcriptions", FORM, &body).await;
    assert_eq!(status, 200, "{head}");
    let v = body_json(&lines);
    assert_eq!(v["usage"]["seconds"], 3);
    assert_eq!(v["text"].as_str().unwrap().split(' ').count(), 6, "{v}");
    let body = form(&[
        ("model", b"whisper"),
        ("response_format", b"verbose_json"),
        ("file", &wav(2)),
    ]);
    let v = body_json(
        &call_raw(addr, "POST", "/v1/audio/transcriptions", FORM, &body)
            .await
            .2,
    );
    assert_eq!(v["duration"], 2.0);
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "not a form",
            b"{}".to_vec(),
            "Content-Type: application/json",
            400,
            "multipart/form-data",
        ),
        (
            "no file",
            form(&[("model", b"whisper")]),
            FORM,
            400,
            "no file",
        ),
        (
            "no model",
            form(&[("file", &wav(1))]),
            FORM,
            400,
            "no model",
        ),
        (
            "not a WAV",
            form(&[("model", b"whisper"), ("file", b"ID3 mp3 bytes")]),
            FORM,
            400,
            "WAV",
        ),
        (
            "a cut WAV",
            form(&[("model", b"whisper"), ("file", &wav(1)[..20])]),
            FORM,
            400,
            "cut",
        ),
        (
            "not speech",
            form(&[("model", b"vision"), ("file", &wav(1))]),
            FORM,
            400,
            "not speech-recognition",
        ),
        (
            "unknown",
            form(&[("model", b"nope"), ("file", &wav(1))]),
            FORM,
            404,
            "does not exist",
        ),
        (
            "bad format",
            form(&[
                ("model", b"whisper"),
                ("response_format", b"srt"),
                ("file", &wav(1)),
            ]),
            FORM,
            400,
            "response_format",
        ),
    ];
    for (what, body, headers, status, expect) in cases {
        let (got, head, lines) =
            call_raw(addr, "POST", "/v1/audio/transcriptions", headers, &body).await;
        let text: String = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(got, status, "{what}: {head}{text}");
        assert!(text.contains(expect), "{what}: {text}");
    }
}

#[tokio::test]
async fn models_answer_503_while_loading() {
    // Loads far longer than any test runs, so no answer depends on speed.
    let addr = start(vec![spec(Kind::TimeSeries, 1.0, 1.0, 1, 3600.0)], 3600.0).await;
    let completion = json!({"model": "m", "prompt": "hi", "max_tokens": 1}).to_string();
    let tensor = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
        .to_string();
    let (status, head, lines) = call(addr, "POST", "/v1/completions", &completion).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_lowercase().contains("retry-after: 3600"), "{head}");
    assert!(
        body_json(&lines)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`m` is loading")
    );
    for (method, path, body) in [
        ("GET", "/health", ""),
        ("GET", "/v2/health/ready", ""),
        ("GET", "/v2/models/vision/ready", ""),
        ("POST", "/v2/models/vision/infer", tensor.as_str()),
    ] {
        assert_eq!(call(addr, method, path, body).await.0, 503, "{path}");
    }
    assert_eq!(call(addr, "GET", "/v2/health/live", "").await.0, 200);
}

#[tokio::test(start_paused = true)]
async fn the_base_model_is_loaded_after_its_load_time() {
    let emu = emulator(&[spec(Kind::Video, 1.0, 1.0, 1, 3.0)], 2.0);
    let loaded = |emu: &Emulator| {
        let m = emu.metrics();
        let flag = |model: &str| {
            let start = format!("emulator_model_loaded{{model_name=\"{model}\"");
            m.lines()
                .any(|l| l.starts_with(&start) && l.ends_with(" 1"))
        };
        (flag("m"), flag("vision"))
    };
    assert_eq!(loaded(&emu), (false, false));
    tokio::time::advance(Duration::from_millis(2001)).await;
    assert_eq!(loaded(&emu), (true, false));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(loaded(&emu), (true, true));
}
