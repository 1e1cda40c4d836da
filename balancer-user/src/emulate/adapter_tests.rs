//! LoRA adapters over the API: loaded on first use, least recently used
//! evicted, vLLM's load/unload endpoints, metrics, and bad input.

use std::{net::SocketAddr, time::Duration};

use serde_json::json;
use tokio::net::TcpListener;

use super::{
    adapters::Adapters,
    node::Node,
    profile::{Adapter, Lora, Profile},
    server::{Emulator, Served, serve},
    server_tests::{body_json, call, class},
};

/// Load time of the profile's adapters: long enough to measure as a lower
/// bound, which holds however slow the machine is.
const LOAD: Duration = Duration::from_millis(300);

async fn start() -> SocketAddr {
    let lora = Lora {
        max_loras: 1,
        default_load_s: 0.0,
        adapters: ["sql", "chat"]
            .map(|n| Adapter {
                name: n.into(),
                load_s: LOAD.as_secs_f64(),
            })
            .to_vec(),
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = Served {
        name: "emu-1".into(),
        model: "m".into(),
    };
    let emu = Emulator::with_adapters(Node::spawn(class()), served, Adapters::new(lora));
    tokio::spawn(serve(l, emu));
    addr
}

async fn complete(addr: SocketAddr, model: &str) -> (u16, Duration) {
    let body = json!({"model": model, "prompt": "hello there", "max_tokens": 2}).to_string();
    let t0 = tokio::time::Instant::now();
    let (status, _, _) = call(addr, "POST", "/v1/completions", &body).await;
    (status, t0.elapsed())
}

async fn listed(addr: SocketAddr) -> Vec<(String, Option<String>)> {
    let (status, _, lines) = call(addr, "GET", "/v1/models", "").await;
    assert_eq!(status, 200);
    body_json(&lines)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let parent = m["parent"].as_str().map(String::from);
            (m["id"].as_str().unwrap().to_string(), parent)
        })
        .collect()
}

async fn metric(addr: SocketAddr, name: &str) -> String {
    let (_, _, lines) = call(addr, "GET", "/metrics", "").await;
    lines
        .into_iter()
        .map(|l| l.1)
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test]
async fn an_adapter_loads_on_first_use_and_the_least_recent_is_evicted() {
    let addr = start().await;
    assert_eq!(listed(addr).await, vec![("m".to_string(), None)]);
    // Two requests at once for an unloaded adapter share one load.
    let (a, b) = tokio::join!(complete(addr, "sql"), complete(addr, "sql"));
    assert_eq!((a.0, b.0), (200, 200));
    assert!(a.1 >= LOAD && b.1 >= LOAD, "{a:?} {b:?}");
    assert!(
        metric(addr, "emulator_lora_loads_total")
            .await
            .ends_with(" 1")
    );
    let parent = Some("m".to_string());
    assert_eq!(
        listed(addr).await,
        vec![("m".into(), None), ("sql".into(), parent.clone())]
    );
    // Loaded: no wait (the base model never waits either).
    assert_eq!(complete(addr, "sql").await.0, 200);
    // max_loras = 1: loading "chat" evicts "sql".
    assert_eq!(complete(addr, "chat").await.0, 200);
    assert_eq!(
        listed(addr).await,
        vec![("m".into(), None), ("chat".into(), parent)]
    );
    let info = metric(addr, "vllm:lora_requests_info").await;
    assert!(
        info.contains("running_lora_adapters=\"chat\"") && info.contains("max_lora=\"1\""),
        "{info}"
    );
    assert!(
        metric(addr, "emulator_lora_loads_total")
            .await
            .ends_with(" 2")
    );
    let secs = metric(addr, "emulator_lora_load_seconds_total").await;
    let secs: f64 = secs.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((secs - 2.0 * LOAD.as_secs_f64()).abs() < 1e-9, "{secs}");
}

#[tokio::test]
async fn an_unknown_model_is_a_404_naming_it() {
    let addr = start().await;
    let body = json!({"model": "nope", "prompt": "x", "max_tokens": 1}).to_string();
    let (status, _, lines) = call(addr, "POST", "/v1/completions", &body).await;
    assert_eq!(status, 404);
    let v = body_json(&lines);
    assert_eq!(v["error"]["message"], "the model `nope` does not exist");
    assert_eq!(v["error"]["param"], "model");
}

#[tokio::test]
async fn vllms_load_and_unload_endpoints() {
    let addr = start().await;
    let load = |name: &str| json!({"lora_name": name, "lora_path": "/adapters/x"}).to_string();
    let (status, _, _) = call(addr, "POST", "/v1/load_lora_adapter", &load("new")).await;
    assert_eq!(status, 200);
    assert!(listed(addr).await.iter().any(|m| m.0 == "new"));
    // Once known through the API, requests may name it.
    assert_eq!(complete(addr, "new").await.0, 200);
    let unload = json!({"lora_name": "new"}).to_string();
    let (status, _, _) = call(addr, "POST", "/v1/unload_lora_adapter", &unload).await;
    assert_eq!(status, 200);
    assert!(!listed(addr).await.iter().any(|m| m.0 == "new"));
    let (status, _, lines) = call(addr, "POST", "/v1/unload_lora_adapter", &unload).await;
    assert_eq!(status, 404);
    assert!(
        body_json(&lines)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not loaded")
    );
    for (body, why) in [
        (json!({"lora_path": "/x"}), "lora_name is missing"),
        (json!({"lora_name": "x"}), "lora_path is missing"),
        (json!({"lora_name": "", "lora_path": "/x"}), "1-256 bytes"),
    ] {
        let (status, _, lines) =
            call(addr, "POST", "/v1/load_lora_adapter", &body.to_string()).await;
        assert_eq!(status, 400, "{body}");
        let m = body_json(&lines)["error"]["message"].to_string();
        assert!(m.contains(why), "{m}");
    }
    let (status, _, _) = call(addr, "POST", "/v1/load_lora_adapter", "{not json").await;
    assert_eq!(status, 400);
}

#[test]
fn lora_settings_out_of_range_are_refused_by_name() {
    let class = "[[class]]\nname = \"c\"\nsource = \"s\"\nprefill_tokens_per_s = 1000\ndecode_ms_base = 10\ndecode_ms_per_seq = 0\nkv_tokens = 1024\nmax_seqs = 4\n";
    let ok =
        format!("{class}\n[lora]\nmax_loras = 2\n\n[[lora.adapter]]\nname = \"a\"\nload_s = 1.5\n");
    let p = Profile::parse(&ok, "p.toml").unwrap();
    assert_eq!((p.lora.max_loras, p.lora.adapters[0].load_s), (2, 1.5));
    assert_eq!(
        Profile::parse(class, "p.toml").unwrap().lora,
        Lora::default()
    );
    for (lora, why) in [
        ("[lora]\nmax_loras = 0\n", "max_loras 0"),
        ("[lora]\ndefault_load_s = -1\n", "default_load_s -1"),
        (
            "[[lora.adapter]]\nname = \"a\"\nload_s = 5000\n",
            "load_s 5000",
        ),
        (
            "[[lora.adapter]]\nname = \"a\"\nload_s = 1\n[[lora.adapter]]\nname = \"a\"\nload_s = 2\n",
            "defined twice",
        ),
        ("[[lora.adapter]]\nname = \"\"\nload_s = 1\n", "1-256 bytes"),
        ("[lora]\nmax_lora = 2\n", "unknown field"),
    ] {
        let e = Profile::parse(&format!("{class}\n{lora}"), "p.toml").unwrap_err();
        assert!(e.to_string().contains(why), "{lora}: {e}");
    }
}
