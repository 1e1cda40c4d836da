//! A cache route on a VIP's live pool, in the namespace testbed: misses
//! spread over the backends by the control plane's weights, a drained
//! backend gets none, and the same prompt keeps its backend.

use std::{collections::BTreeMap, net::SocketAddr};

use balancer_tests::{
    cachebed::http,
    netns, require_root,
    testbed::{GW_ADDR, Spec, Testbed},
};

const ROUTE_PORT: u16 = 8080;

/// Inference calls each backend has seen, read from the gateway.
fn calls(tb: &Testbed) -> BTreeMap<String, u64> {
    let addrs: Vec<SocketAddr> = tb
        .backends
        .iter()
        .map(|b| SocketAddr::from((b.addr, 80)))
        .collect();
    netns::run_in(&tb.gateway.ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = BTreeMap::new();
            for a in addrs {
                let r = http(a, "GET", "/admin/stats", "", &[]).await.unwrap();
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                out.insert(a.ip().to_string(), v["calls"].as_u64().unwrap());
            }
            out
        })
    })
    .unwrap()
}

/// Sends embedding requests for `inputs` from the client namespace; returns
/// the `X-Cache` of each.
fn send(tb: &Testbed, inputs: Vec<String>) -> Vec<String> {
    let target = SocketAddr::from((GW_ADDR, ROUTE_PORT));
    netns::run_in(&tb.clients[0].ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            for i in inputs {
                let body = serde_json::json!({"model": "test-model", "input": i}).to_string();
                let r = http(target, "POST", "/v1/embeddings", &body, &[])
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{r:?}");
                out.push(r.cache().to_string());
            }
            out
        })
    })
    .unwrap()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> Vec<u64> {
    after.iter().map(|(k, v)| v - before[k]).collect()
}

#[test]
fn misses_follow_the_control_planes_weights() {
    require_root();
    let mut tb = Testbed::up(Spec::unique(
        1,
        3,
        balancer_tests::testbed_bin(env!("CARGO_BIN_EXE_testbed")),
    ))
    .expect("testbed");
    let vip = tb.vip_toml(&[1, 1, 2], None);
    let route = format!(
        "[[route]]\nname = \"pool\"\nlisten = \"{GW_ADDR}:{ROUTE_PORT}\"\nvip = \"{}:{}/tcp\"\nbackend_port = 80\n",
        balancer_tests::testbed::VIP,
        balancer_tests::testbed::VIP_PORT
    );
    let cfg = tb.config(&format!("{vip}\n{route}"));
    tb.start_daemon(&cfg).unwrap();

    // 400 distinct prompts: shares follow the weights 1:1:2.
    let before = calls(&tb);
    let inputs: Vec<String> = (0..400).map(|i| format!("prompt {i}")).collect();
    assert!(send(&tb, inputs.clone()).iter().all(|c| c == "MISS"));
    let d = delta(&calls(&tb), &before);
    assert_eq!(d.iter().sum::<u64>(), 400, "{d:?}");
    let heavy = tb.backends[2].addr.to_string();
    let heavy_i = calls(&tb).keys().position(|k| *k == heavy).unwrap();
    let share = d[heavy_i] as f64 / 400.0;
    assert!(
        (0.4..0.6).contains(&share),
        "weight 2 of 4 got {share}: {d:?}"
    );
    assert!(
        d.iter().all(|n| *n >= 60),
        "every backend takes its share: {d:?}"
    );
    // Cached now.
    assert!(send(&tb, inputs[..20].to_vec()).iter().all(|c| c == "HIT"));

    // Drain the heavy backend: new misses avoid it.
    let client = tb.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vip = balancer::lb::VipId {
        addr: balancer_tests::testbed::VIP.into(),
        port: balancer_tests::testbed::VIP_PORT,
        proto: balancer::lb::Proto::Tcp,
    };
    rt.block_on(client.drain(&vip, tb.backends[2].addr.into(), true))
        .unwrap();
    let before = calls(&tb);
    let fresh: Vec<String> = (0..100).map(|i| format!("fresh {i}")).collect();
    assert!(send(&tb, fresh).iter().all(|c| c == "MISS"));
    let d = delta(&calls(&tb), &before);
    assert_eq!(d[heavy_i], 0, "a drained backend got misses: {d:?}");
    assert_eq!(d.iter().sum::<u64>(), 100);
}
