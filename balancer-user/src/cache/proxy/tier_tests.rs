//! Priority tiers through the proxy: the answer names the tier, the engine
//! is told it as vLLM's `priority` when the route says so, and a bad
//! `x-priority` is refused.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use http_body_util::BodyExt;

use super::{testkit, *};
use crate::route::tier::{Tenant, Tier, TierPolicy};

/// A backend that answers with the body it was sent.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(http::serve(
        l,
        http::Settings::new("echo"),
        |req| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(Full::new(body))
        },
    ));
    addr
}

pub(super) fn tiers(priority_field: bool) -> TierPolicy {
    TierPolicy {
        default: Tier::Standard,
        tenants: vec![Tenant {
            name: "checkout".into(),
            tier: Tier::Standard,
            max_tier: Tier::Critical,
        }],
        keys: HashMap::from([("sk-1".to_string(), 0)]),
        priority_field,
    }
}

/// Header names and values, as a table row gives them.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Status, `x-balancer-tier` and the body's `priority` (as the backend saw
/// it) of one sampled chat request with `headers`.
pub(super) async fn send(to: SocketAddr, headers: Headers<'_>) -> (u16, String, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::post(format!("http://{to}/v1/chat/completions"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = r#"{"model":"m","temperature":1,"priority":-5,"messages":[]}"#;
    let r = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = r.status().as_u16();
    let tier = r
        .headers()
        .get("x-balancer-tier")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    (status, tier, v["priority"].clone())
}

#[tokio::test]
async fn tiers_reach_the_answer_and_the_engine() {
    let b = echo().await;
    let cfg = RouteConfig {
        tiers: tiers(true),
        ..testkit::config()
    };
    let (r, _) = testkit::serve(cfg, vec![(b, 1)]).await;
    let table: &[(&str, Headers, &str, i64)] = &[
        ("no header: the default", &[], "standard", 1),
        (
            "an unknown client is capped",
            &[("x-priority", "critical")],
            "standard",
            1,
        ),
        (
            "a tenant may raise",
            &[("x-api-key", "sk-1"), ("x-priority", "critical")],
            "critical",
            0,
        ),
        ("anyone may lower", &[("x-priority", "-3")], "sheddable", 2),
    ];
    for (what, h, tier, priority) in table {
        let (status, t, p) = send(r, h).await;
        assert_eq!(
            (status, t.as_str(), p),
            (200, *tier, (*priority).into()),
            "{what}"
        );
    }
    let (status, t, _) = send(r, &[("x-priority", "urgent")]).await;
    assert_eq!(
        (status, t.as_str()),
        (400, ""),
        "an unreadable tier is refused"
    );
}

#[tokio::test]
async fn without_priority_field_the_body_is_untouched() {
    let b = echo().await;
    let cfg = RouteConfig {
        tiers: tiers(false),
        ..testkit::config()
    };
    let (r, _) = testkit::serve(cfg, vec![(b, 1)]).await;
    let (status, t, p) = send(r, &[("x-priority", "sheddable")]).await;
    assert_eq!((status, t.as_str(), p), (200, "sheddable", (-5).into()));
}

/// A backend that holds every request until `release` gets permits, and
/// counts those it holds.
pub(super) async fn holding() -> (SocketAddr, Arc<AtomicU64>, Arc<Semaphore>) {
    holding_if(|_| true).await
}

/// A backend that holds the requests whose body `hold` picks until
/// `release` gets a permit (counting them), and answers each with its body.
async fn holding_if(hold: fn(&[u8]) -> bool) -> (SocketAddr, Arc<AtomicU64>, Arc<Semaphore>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (held, release) = (Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
    let (h, r) = (held.clone(), release.clone());
    tokio::spawn(http::serve(l, http::Settings::new("hold"), move |req| {
        let (h, r) = (h.clone(), r.clone());
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if hold(&body) {
                h.fetch_add(1, Ordering::Relaxed);
                let _ = r.acquire().await;
            }
            Response::new(Full::new(body))
        }
    }));
    (addr, held, release)
}

#[tokio::test]
async fn a_saturated_pool_sheds_sheddable_with_retry_after_and_never_critical() {
    let (b, held, release) = holding().await;
    let cfg = RouteConfig {
        tiers: tiers(false),
        shedding: Some(crate::route::admission::Shedding::new(1)),
        ..testkit::config()
    };
    let (r, _) = testkit::serve(cfg, vec![(b, 1)]).await;
    // One standard request fills the pool's one slot.
    let first = tokio::spawn(send(r, &[]));
    let deadline = tokio::time::Instant::now() + crate::testutil::margin();
    while held.load(Ordering::Relaxed) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend never got the request"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Sheddable is shed outright at 100%, with a Retry-After of 1-60 s.
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::post(format!("http://{r}/v1/chat/completions"))
        .header("x-priority", "sheddable")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[]}"#,
        )))
        .unwrap();
    let shed = client.request(req).await.unwrap();
    assert_eq!(shed.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u32 = shed.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(shed.headers()["x-balancer-tier"], "sheddable");
    // Critical goes on, at any saturation.
    let critical = tokio::spawn(send(
        r,
        &[("x-api-key", "sk-1"), ("x-priority", "critical")],
    ));
    while held.load(Ordering::Relaxed) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "critical never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.add_permits(16);
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(critical.await.unwrap().1, "critical");
}

/// A backend that answers with its name.
async fn named(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(http::serve(
        l,
        http::Settings::new(name),
        move |req| async move {
            let _ = req.into_body().collect().await;
            Response::new(Full::new(Bytes::from_static(name.as_bytes())))
        },
    ));
    addr
}

#[tokio::test]
async fn a_request_goes_to_one_backend_whatever_its_tier() {
    // The tier written into the body must not move the key-affine pick.
    let pool = vec![(named("a").await, 1), (named("b").await, 1)];
    let cfg = RouteConfig {
        tiers: tiers(true),
        ..testkit::config()
    };
    let (r, _) = testkit::serve(cfg, pool).await;
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let answer = |prompt: usize, headers: Headers<'static>| {
        let client = client.clone();
        async move {
            let body = format!(r#"{{"model":"m","temperature":1,"prompt":"p{prompt}"}}"#);
            let mut req = Request::post(format!("http://{r}/v1/completions"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = client
                .request(req.body(Full::new(Bytes::from(body))).unwrap())
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    };
    for prompt in 0..8 {
        let low = answer(prompt, &[("x-priority", "sheddable")]).await;
        let high = answer(prompt, &[("x-api-key", "sk-1"), ("x-priority", "critical")]).await;
        assert_eq!(low, high, "prompt {prompt}");
    }
}

/// A backend that holds the requests whose body says "hold".
async fn holding_some() -> (SocketAddr, Arc<AtomicU64>, Arc<Semaphore>) {
    holding_if(|b| b.windows(4).any(|w| w == b"hold")).await
}

#[tokio::test]
async fn a_refused_request_gets_a_stale_entry_then_the_fallback_then_429() {
    let (b, held, release) = holding_some().await;
    let small = echo().await;
    let cfg = RouteConfig {
        tiers: tiers(false),
        ttl: Duration::from_millis(1),
        stale: Duration::from_secs(600),
        shedding: Some(crate::route::admission::Shedding::new(1)),
        fallback: Some(Fallback {
            tiers: [false, false, true],
            model: Some("small".into()),
        }),
        ..testkit::config()
    };
    let l = bind(&cfg).await.unwrap();
    let r = l.local_addr().unwrap();
    let cache = Cache::new(crate::cache::Settings {
        stale_ms: 600_000,
        ..Default::default()
    })
    .unwrap();
    let route = Route::new(cfg, cache, Arc::new(move || vec![(b, 1)]));
    route.set_fallback(Arc::new(move || vec![(small, 1)]));
    tokio::spawn(route.clone().serve(l));
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let ask = |prompt: &'static str, temperature: u32, priority: &'static str| {
        let client = client.clone();
        async move {
            let body =
                format!(r#"{{"model":"m","temperature":{temperature},"prompt":"{prompt}"}}"#);
            let req = Request::post(format!("http://{r}/v1/completions"))
                .header("x-priority", priority)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let h = |k: &str| {
                resp.headers()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let (status, cache, fallback) = (
                resp.status().as_u16(),
                h("x-cache"),
                h("x-balancer-fallback"),
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            (
                status,
                cache,
                fallback,
                v["model"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    // An entry, expired at once (1 ms TTL) but kept for 600 s.
    assert_eq!(ask("kept", 0, "standard").await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // One held request saturates the pool (max_in_flight = 1).
    let holder = tokio::spawn(ask("hold", 1, "standard"));
    let deadline = tokio::time::Instant::now() + crate::testutil::margin();
    while held.load(Ordering::Relaxed) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend never got the request"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // (what, prompt, temperature, (status, x-cache, x-balancer-fallback, model answered)).
    type Row<'a> = (&'a str, &'a str, u32, (u16, &'a str, &'a str, &'a str));
    let table: &[Row] = &[
        (
            "a cached request: its stale entry",
            "kept",
            0,
            (200, "STALE", "", "m"),
        ),
        (
            "nothing cached: the fallback, with its model",
            "other",
            0,
            (200, "", "small", "small"),
        ),
        (
            "not cacheable: the fallback",
            "kept",
            1,
            (200, "", "small", "small"),
        ),
    ];
    for (what, prompt, temperature, want) in table {
        let got = ask(prompt, *temperature, "sheddable").await;
        assert_eq!(
            (got.0, got.1.as_str(), got.2.as_str(), got.3.as_str()),
            *want,
            "{what}"
        );
    }
    let t = route.tier_counts();
    assert_eq!((t.stale[2], t.fallback[2], t.shed[2]), (1, 2, 0));
    release.add_permits(1);
    assert_eq!(holder.await.unwrap().0, 200);
}

#[tokio::test]
async fn without_stale_or_fallback_a_refused_request_gets_429() {
    let (b, held, release) = holding_some().await;
    let cfg = RouteConfig {
        tiers: tiers(false),
        shedding: Some(crate::route::admission::Shedding::new(1)),
        fallback: Some(Fallback {
            tiers: [false, false, true],
            model: None,
        }),
        ..testkit::config()
    };
    // A fallback configured but never given its pool: still 429.
    let (r, _) = testkit::serve(cfg, vec![(b, 1)]).await;
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let post = |body: &'static str, priority: &'static str| {
        Request::post(format!("http://{r}/v1/completions"))
            .header("x-priority", priority)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let holder = tokio::spawn(client.request(post(r#"{"prompt":"hold"}"#, "standard")));
    let deadline = tokio::time::Instant::now() + crate::testutil::margin();
    while held.load(Ordering::Relaxed) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend never got the request"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shed = client
        .request(post(r#"{"prompt":"x"}"#, "sheddable"))
        .await
        .unwrap();
    assert_eq!(shed.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(shed.headers().get("retry-after").is_some());
    release.add_permits(1);
    holder.await.unwrap().unwrap();
}
