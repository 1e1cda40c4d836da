//! The proxy end to end in one process: a backend and a route on loopback
//! ports the kernel picks.

use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt;

use super::{testkit, *};
use crate::cache::CacheStats;

/// A backend that answers `{"n": <requests so far>}`, with the status the
/// request's path asks for (`/status/500/...`), and counts what it is sent.
async fn backend() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    tokio::spawn(http::serve(l, http::Settings::new("backend"), move |req| {
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let status = req
                .uri()
                .path()
                .strip_prefix("/status/")
                .and_then(|s| s.split('/').next()?.parse().ok())
                .unwrap_or(200);
            let _ = req.into_body().collect().await;
            let mut r = Response::new(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        }
    }));
    (addr, seen)
}

async fn route(backend: SocketAddr) -> (SocketAddr, Arc<Cache>) {
    testkit::serve(testkit::config(), vec![(backend, 1)]).await
}

/// Status, `x-cache` and body of one POST.
async fn post(to: SocketAddr, path: &str, body: &str) -> (u16, String, String) {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::post(format!("http://{to}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let r = client.request(req).await.unwrap();
    let status = r.status().as_u16();
    let x = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, x, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn miss_hit_bypass_and_limits() {
    let (b, seen) = backend().await;
    let (r, cache) = route(b).await;
    let chat = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
    let path = "/v1/chat/completions";
    assert_eq!(
        post(r, path, chat).await,
        (200, "MISS".into(), r#"{"n":1}"#.into())
    );
    assert_eq!(
        post(r, path, chat).await,
        (200, "HIT".into(), r#"{"n":1}"#.into())
    );
    let sampled = chat.replace("\"temperature\":0", "\"temperature\":1");
    assert_eq!(
        post(r, path, &sampled).await,
        (200, "BYPASS".into(), r#"{"n":2}"#.into())
    );
    let big = format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(300));
    assert_eq!(post(r, path, &big).await.0, 413);
    // A non-2xx answer is relayed, not stored.
    assert_eq!(post(r, "/status/500/completions", chat).await.0, 500);
    assert_eq!(post(r, "/status/500/completions", chat).await.1, "MISS");
    assert_eq!(seen.load(Ordering::Relaxed), 4);
    let s: CacheStats = cache.stats();
    let got = (
        s.hits,
        s.misses,
        s.bypasses,
        s.too_large,
        s.uncacheable,
        s.stored,
    );
    assert_eq!(got, (1, 3, 1, 1, 2, 1));
}

/// The route's `pick` decides where requests go: round-robin spreads
/// repeated identical bypasses evenly, where consistent hashing sends them
/// all to the key's backend.
#[tokio::test]
async fn the_routes_pick_setting_chooses_the_backend() {
    for (pick, want) in [
        (Pick::RoundRobin, [10, 10, 10]),
        (Pick::ConsistentHash, [30, 0, 0]),
    ] {
        let mut backends = Vec::new();
        for _ in 0..3 {
            backends.push(backend().await);
        }
        let mut cfg = testkit::config();
        cfg.pick = pick;
        let pool = backends.iter().map(|(a, _)| (*a, 1)).collect();
        let (to, _) = testkit::serve(cfg, pool).await;
        for _ in 0..30 {
            let (status, x, _) =
                post(to, "/v1/chat/completions", r#"{"model":"m","stream":true}"#).await;
            assert_eq!((status, x.as_str()), (200, "BYPASS"));
        }
        let mut got: Vec<u64> = backends
            .iter()
            .map(|(_, n)| n.load(Ordering::Relaxed))
            .collect();
        got.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(got, want, "{pick:?}");
    }
}

#[tokio::test]
async fn a_route_without_its_cache_stage_forwards_everything() {
    let (b, seen) = backend().await;
    let cfg = RouteConfig {
        cache: false,
        ..testkit::config()
    };
    let (r, cache) = testkit::serve(cfg, vec![(b, 1)]).await;
    let chat = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
    // A request the cache stage would store goes to the backend each time.
    for n in 1..=2 {
        let (status, x, body) = post(r, "/v1/chat/completions", chat).await;
        assert_eq!(
            (status, x.as_str(), body),
            (200, "BYPASS", format!("{{\"n\":{n}}}"))
        );
    }
    assert_eq!(seen.load(Ordering::Relaxed), 2);
    assert_eq!(cache.stats().entries, 0, "nothing stored");
}

#[tokio::test]
async fn a_streamed_answer_counts_in_flight_until_its_body_ends() {
    // A backend that sends one chunk and then holds its stream open.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = l.local_addr().unwrap();
    tokio::spawn(http::serve(l, http::Settings::new("held"), |_req| async {
        let first = futures_util::stream::once(async {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                b"data: {}\n\n",
            )))
        });
        let held = futures_util::StreamExt::chain(first, futures_util::stream::pending());
        Response::new(http_body_util::StreamBody::new(held))
    }));
    for pick in [Pick::LeastRequest, Pick::Aware] {
        let cfg = RouteConfig {
            cache: false,
            pick,
            ..testkit::config()
        };
        let l = bind(&cfg).await.unwrap();
        let addr = l.local_addr().unwrap();
        let pool: PoolSource = Arc::new(move || vec![(b, 1)]);
        let route = Route::new(
            cfg,
            Cache::new(crate::cache::Settings::default()).unwrap(),
            pool,
        );
        tokio::spawn(route.clone().serve(l));
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let req = Request::post(format!("http://{addr}/v1/completions"))
            .body(Full::new(Bytes::from_static(
                br#"{"model":"m","prompt":"hi","stream":true}"#,
            )))
            .unwrap();
        let r = client.request(req).await.unwrap();
        let mut body = r.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        let in_flight = |route: &Route| -> u64 {
            route
                .members()
                .iter()
                .map(|m| m.in_flight.load(Ordering::Relaxed))
                .sum()
        };
        assert_eq!(in_flight(&route), 1, "{pick:?}: the stream is still going");
        drop(body);
        let deadline = tokio::time::Instant::now() + crate::testutil::margin();
        while in_flight(&route) != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{pick:?}: never released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
