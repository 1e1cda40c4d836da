//! `pick = "aware"` through `balancer run`: a proxy-only gateway whose one
//! `[[route]]` places streamed completions by its cost model, in front of
//! emulated nodes of the bench's hardware classes
//! (`tests/scenarios/profiles/llama-3.1-8b.toml`) in this process.
//!
//! | test | shows |
//! |---|---|
//! | `requests_sharing_a_prefix_stick_to_one_backend_until_it_saturates` | on three equal nodes, requests that share a 2,000-token prefix sent one after another all reach one node; a burst of them at once spreads over several, the holder keeping a share; `balancer route explain` shows the last 32 placements with their reasons and the model's error |
//! | `requests_for_an_adapter_reach_only_the_backends_that_have_it` | with a LoRA adapter loaded on one of three nodes (vLLM's `/v1/load_lora_adapter`), once the route's `/v1/models` poll has seen it, every request naming the adapter reaches that node, and base-model requests still spread |
//! | `heavy_requests_land_on_the_big_class_under_load` | on one A100-class and two L4-class nodes, after light requests taught the model each node's speed, a burst of heavy requests (3,000-token prompts, 300 tokens out) all reach the A100, though each arrives while the others load it; the cost model's MAPE is printed |

use std::net::SocketAddr;

use anyhow::{Context, Result};
use balancer_tests::{
    cachebed::{Gateway, http},
    fleet::gateway,
};

/// The nodes of `classes` behind a route `name` with `pick = "aware"`.
async fn fleet_and_gateway(
    name: &str,
    classes: &[(&str, u32)],
) -> Result<(Gateway, SocketAddr, Vec<(SocketAddr, String)>)> {
    gateway::start(name, classes, "pick = \"aware\"\nmodels_refresh_ms = 200\n").await
}

/// A streamed completion of `prompt` asking `max_tokens`: the node that
/// answered.
async fn complete(route: SocketAddr, prompt: &str, max_tokens: u32) -> Result<String> {
    let body = serde_json::json!({
        "model": "llama-3.1-8b",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": true,
    })
    .to_string();
    let r = http(route, "POST", "/v1/completions", &body, &[]).await?;
    anyhow::ensure!(r.status == 200, "status {}: {}", r.status, r.body);
    anyhow::ensure!(
        r.body.contains("[DONE]"),
        "an unfinished stream: {}",
        r.body
    );
    r.headers
        .get("x-backend")
        .cloned()
        .context("no x-backend header")
}

/// `n` characters of text unique to `seed` from its first block on.
fn text(seed: usize, n: usize) -> String {
    let word = format!("w{seed} ");
    word.repeat(n / word.len() + 1)[..n].to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn requests_sharing_a_prefix_stick_to_one_backend_until_it_saturates() {
    runtime().block_on(async {
        let (g, route, _) = fleet_and_gateway("sticky", &[("a100", 3)]).await.unwrap();
        // A 2,000-token system prompt, then a question of 250 tokens.
        let shared = text(0, 8000);
        let ask = |i: usize| format!("{shared}{}", text(i, 1000));
        let mut seen = Vec::new();
        for i in 1..=8 {
            seen.push(complete(route, &ask(i), 4).await.unwrap());
        }
        assert!(
            seen.iter().all(|b| *b == seen[0]),
            "one after another, one node: {seen:?}"
        );
        // 30 at once, each decoding for seconds (so they overlap however
        // slowly this machine runs): the holder saturates (more than eight
        // in flight beyond the idle nodes) and the rest spread.
        let burst: Vec<_> = (100..130)
            .map(|i| {
                let prompt = ask(i);
                tokio::spawn(async move { complete(route, &prompt, 200).await })
            })
            .collect();
        let mut spread = Vec::new();
        for t in burst {
            spread.push(t.await.unwrap().unwrap());
        }
        let mut nodes = spread.clone();
        nodes.sort();
        nodes.dedup();
        assert!(nodes.len() >= 2, "a burst spreads: {spread:?}");
        let on_holder = spread.iter().filter(|b| **b == seen[0]).count();
        assert!(
            on_holder >= 3,
            "the holder still takes its share: {spread:?}"
        );

        // `route explain` shows the placements: the sequential ones by
        // prefix, with predicted and actual first-token times.
        let table = tokio::task::spawn_blocking(move || g.cli(&["route", "explain"]))
            .await
            .unwrap()
            .unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("route"), "{table}");
        assert!(table.contains(" prefix "), "{table}");
        assert!(
            lines
                .last()
                .is_some_and(|l| l.starts_with("sticky: cost model error (MAPE) so far: TTFT ")),
            "{table}"
        );
        assert_eq!(lines.len(), 2 + 32 + 1, "the last 32 placements: {table}");
    });
}

#[test]
fn heavy_requests_land_on_the_big_class_under_load() {
    runtime().block_on(async {
        let (g, route, _) = fleet_and_gateway("heavy", &[("a100", 1), ("l4", 2)])
            .await
            .unwrap();
        // Light requests, a few at a time, teach the model each node's
        // speed (the first ones try every node). Their prompts and outputs
        // vary in length, as real traffic does, or the fit could not tell
        // a node's time per prompt token from its fixed overhead.
        for round in 0..8 {
            let wave: Vec<_> = (0..3)
                .map(|k| {
                    let n = round * 3 + k;
                    let prompt = text(n + 1000, [400, 1600, 4000][n % 3]);
                    let out = [8, 24][(n / 3) % 2];
                    tokio::spawn(async move { complete(route, &prompt, out).await })
                })
                .collect();
            for t in wave {
                t.await.unwrap().unwrap();
            }
        }
        // Six heavy requests at once: each sees the ones before it queued
        // on the A100 and still finishes there first.
        let heavy: Vec<_> = (0..6)
            .map(|k| {
                let prompt = text(5000 + k, 12_000);
                tokio::spawn(async move { complete(route, &prompt, 300).await })
            })
            .collect();
        let mut placed = Vec::new();
        for t in heavy {
            placed.push(t.await.unwrap().unwrap());
        }
        if !placed.iter().all(|b| b.starts_with("a100")) {
            let why = tokio::task::spawn_blocking(move || g.cli(&["route", "explain"]))
                .await
                .unwrap();
            panic!("heavy requests on the big class: {placed:?}\n{why:?}");
        }
    });
}

#[test]
fn requests_for_an_adapter_reach_only_the_backends_that_have_it() {
    runtime().block_on(async {
        let (_g, route, nodes) = fleet_and_gateway("adapters", &[("a100", 3)]).await.unwrap();
        let (with, name) = &nodes[1];
        let load = r#"{"lora_name":"sql-lora","lora_path":"/adapters/sql"}"#;
        let r = http(*with, "POST", "/v1/load_lora_adapter", load, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let ask = |model: &str, i: usize| {
            serde_json::json!({"model": model, "prompt": text(i, 400), "max_tokens": 2, "stream": true})
                .to_string()
        };
        let backend = |r: &balancer_tests::cachebed::Reply| {
            r.headers.get("x-backend").cloned()
        };
        // Until the route's poll has seen the adapter, a request may reach
        // a node without it (which refuses it).
        let limit = balancer_tests::patience(std::time::Duration::from_secs(10));
        let t0 = std::time::Instant::now();
        let mut in_a_row = 0;
        while in_a_row < 5 {
            assert!(t0.elapsed() < limit, "the route never learned where sql-lora is");
            let r = http(route, "POST", "/v1/completions", &ask("sql-lora", 0), &[]).await.unwrap();
            in_a_row = if r.status == 200 { in_a_row + 1 } else { 0 };
        }
        for i in 1..=20 {
            let r = http(route, "POST", "/v1/completions", &ask("sql-lora", i), &[]).await.unwrap();
            assert_eq!((r.status, backend(&r).as_ref()), (200, Some(name)), "request {i}: {}", r.body);
        }
        let mut base = std::collections::BTreeSet::new();
        for i in 0..12 {
            let fan: Vec<_> = (0..3)
                .map(|k| {
                    let body = ask("llama-3.1-8b", 100 + i * 3 + k);
                    tokio::spawn(async move { http(route, "POST", "/v1/completions", &body, &[]).await })
                })
                .collect();
            for t in fan {
                let r = t.await.unwrap().unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
                base.extend(backend(&r));
            }
        }
        assert!(base.len() >= 2, "base-model requests go to every node that serves it: {base:?}");
    });
}
