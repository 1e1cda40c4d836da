//! The inference result cache, end to end: `balancer run` as a cache-only
//! gateway in front of emulated backends on loopback, with a real
//! `redis-server` as the shared L2.
//!
//! | test | shows |
//! |---|---|
//! | `canonical_requests_share_an_entry` | key order, whitespace, excluded fields and `0` vs `0.0` hit; other prompts miss |
//! | `no_hit_crosses_model_version_or_route` | model, version bump and route each separate entries |
//! | `single_flight_under_100_concurrent_identical_requests` | one backend call for 100 concurrent misses |
//! | `entries_expire_after_their_ttl` | TTL |
//! | `oversize_requests_get_413` | 413 with a message naming the limit; the backend never sees it |
//! | `malformed_json_and_streams_pass_through_uncached` | BYPASS, relayed as is, never stored |
//! | `server_errors_are_never_cached` | 5xx relayed, not stored; the next success is |
//! | `two_gateways_share_redis_and_invalidations` | L2 hits across gateways; an invalidation on one reaches the other's L1 (how fast: `bench invalidation`); bump-version propagates |
//! | `redis_outage_degrades_to_l1_and_recovers_without_stale_hits` | kill -9 Redis mid-run: no client errors; restart: resync, no stale hit |

use std::time::{Duration, Instant};

use balancer_tests::{
    cachebed::{Backend, Gateway, GatewayPair, Redis, Reply, free_port, http, route_toml},
    loadgen::Stop,
    patience,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn completion(model: &str, prompt: &str, max_tokens: u32) -> String {
    serde_json::json!({"model": model, "prompt": prompt, "temperature": 0, "max_tokens": max_tokens})
        .to_string()
}

fn embedding(model: &str, input: &str) -> String {
    serde_json::json!({"model": model, "input": input}).to_string()
}

async fn post(port: u16, path: &str, body: &str) -> Reply {
    http(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        "POST",
        path,
        body,
        &[],
    )
    .await
    .expect("request")
}

#[test]
fn canonical_requests_share_an_entry() {
    let rt = rt();
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let port = free_port().unwrap();
    let _g = Gateway::start("canon", &route_toml("r", port, &b, "")).unwrap();
    rt.block_on(async {
        let first = post(
            port,
            "/v1/embeddings",
            r#"{"model":"m","input":"hello","user":"alice"}"#,
        )
        .await;
        assert_eq!((first.status, first.cache()), (200, "MISS"), "{first:?}");
        // Same request: keys reordered, whitespace, another user.
        let same = post(
            port,
            "/v1/embeddings",
            "{ \"input\" : \"hello\" ,\n  \"user\": \"bob\", \"model\": \"m\" }",
        )
        .await;
        assert_eq!(same.cache(), "HIT", "{same:?}");
        assert_eq!(same.body, first.body, "a hit returns the stored answer");
        assert!(
            same.header("age").parse::<u64>().is_ok(),
            "Age header: {same:?}"
        );
        assert_eq!(same.header("x-cache-key"), first.header("x-cache-key"));
        // 0 and 0.0 are the same temperature.
        let c1 = post(
            port,
            "/v1/completions",
            r#"{"model":"m","prompt":"p","temperature":0,"max_tokens":3}"#,
        )
        .await;
        let c2 = post(
            port,
            "/v1/completions",
            r#"{"max_tokens":3.0,"temperature":0.0,"prompt":"p","model":"m"}"#,
        )
        .await;
        assert_eq!((c1.cache(), c2.cache()), ("MISS", "HIT"));
        // Anything that changes the result changes the key.
        for (path, body) in [
            ("/v1/embeddings", r#"{"model":"m","input":"hello!"}"#),
            (
                "/v1/completions",
                r#"{"model":"m","prompt":"p","temperature":0,"max_tokens":4}"#,
            ),
        ] {
            let r = post(port, path, body).await;
            assert_eq!(r.cache(), "MISS", "{body}: {r:?}");
        }
        // Sampled generation is never cached.
        let sampled = post(
            port,
            "/v1/completions",
            r#"{"model":"m","prompt":"p","max_tokens":3}"#,
        )
        .await;
        assert_eq!((sampled.status, sampled.cache()), (200, "BYPASS"));
        assert_eq!(sampled.header("x-cache-reason"), "sampling");
        let again = post(
            port,
            "/v1/completions",
            r#"{"model":"m","prompt":"p","max_tokens":3}"#,
        )
        .await;
        assert_eq!(again.cache(), "BYPASS");
    });
}

#[test]
fn no_hit_crosses_model_version_or_route() {
    let rt = rt();
    let b = Backend::start("b", &["m1", "m2"], 0.2).unwrap();
    let (p1, p2) = (free_port().unwrap(), free_port().unwrap());
    let cfg = format!(
        "[cache.models]\nm1 = \"v1\"\n\n{}{}",
        route_toml("one", p1, &b, ""),
        route_toml("two", p2, &b, "")
    );
    let g = Gateway::start("cross", &cfg).unwrap();
    rt.block_on(async {
        let body = embedding("m1", "same text");
        assert_eq!(post(p1, "/v1/embeddings", &body).await.cache(), "MISS");
        assert_eq!(post(p1, "/v1/embeddings", &body).await.cache(), "HIT");
        // Another route.
        assert_eq!(post(p2, "/v1/embeddings", &body).await.cache(), "MISS");
        // Another model, same input.
        let other = post(p1, "/v1/embeddings", &embedding("m2", "same text")).await;
        assert_eq!(other.cache(), "MISS");
        assert_ne!(other.body, post(p1, "/v1/embeddings", &body).await.body);
        // Another path on the same route.
        let chat = serde_json::json!({"model": "m1", "messages": [{"role": "user", "content": "same text"}], "temperature": 0, "max_tokens": 2}).to_string();
        assert_eq!(post(p1, "/v1/chat/completions", &chat).await.cache(), "MISS");
    });
    // A new version makes every old entry of the model unreachable at once.
    let out = g.cli(&["cache", "bump-version", "m1"]).unwrap();
    assert!(out.contains("m1 is now version"), "{out}");
    rt.block_on(async {
        let body = embedding("m1", "same text");
        assert_eq!(post(p1, "/v1/embeddings", &body).await.cache(), "MISS");
        assert_eq!(post(p1, "/v1/embeddings", &body).await.cache(), "HIT");
        // m2 was not bumped.
        assert_eq!(
            post(p1, "/v1/embeddings", &embedding("m2", "same text"))
                .await
                .cache(),
            "HIT"
        );
    });
    let stats = g.cli(&["cache", "stats"]).unwrap();
    assert!(stats.contains("model m1: version \"v1+"), "{stats}");
}

#[test]
fn single_flight_under_100_concurrent_identical_requests() {
    let rt = rt();
    // 200 tokens at 1 ms: the backend takes ~200 ms, so all 100 overlap.
    let b = Backend::start("b", &["m"], 1.0).unwrap();
    let port = free_port().unwrap();
    let g = Gateway::start("flight", &route_toml("r", port, &b, "")).unwrap();
    rt.block_on(async {
        let before = b.calls().await.unwrap();
        let body = completion("m", "the one prompt", 200);
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let body = body.clone();
                tokio::spawn(async move { post(port, "/v1/completions", &body).await })
            })
            .collect();
        let mut replies = Vec::new();
        for t in tasks {
            replies.push(t.await.unwrap());
        }
        assert!(replies.iter().all(|r| r.status == 200), "all succeed");
        assert!(
            replies.iter().all(|r| r.body == replies[0].body),
            "all get the same answer"
        );
        let calls = b.calls().await.unwrap() - before;
        assert_eq!(
            calls, 1,
            "100 concurrent identical misses made {calls} backend calls"
        );
        assert_eq!(post(port, "/v1/completions", &body).await.cache(), "HIT");
    });
    let s = rt.block_on(g.client().cache_stats()).unwrap();
    assert_eq!(s.misses + s.coalesced + s.hits, 101, "{s:?}");
    assert_eq!(s.misses, 1, "{s:?}");
    assert!(
        s.gpu_seconds_saved > 0.1,
        "the hit saved the backend time: {s:?}"
    );
}

#[test]
fn entries_expire_after_their_ttl() {
    let rt = rt();
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let port = free_port().unwrap();
    // 1 s, longer on slow machines: the hits below must come within it.
    let ttl = patience(Duration::from_secs(1)).as_secs_f64().ceil() as u64;
    let _g = Gateway::start(
        "ttl",
        &route_toml("r", port, &b, &format!("ttl_secs = {ttl}")),
    )
    .unwrap();
    rt.block_on(async {
        let body = embedding("m", "short-lived");
        assert_eq!(post(port, "/v1/embeddings", &body).await.cache(), "MISS");
        assert_eq!(post(port, "/v1/embeddings", &body).await.cache(), "HIT");
        tokio::time::sleep(Duration::from_secs(ttl) + Duration::from_millis(100)).await;
        assert_eq!(post(port, "/v1/embeddings", &body).await.cache(), "MISS");
        assert_eq!(post(port, "/v1/embeddings", &body).await.cache(), "HIT");
    });
}

#[test]
fn oversize_requests_get_413() {
    let rt = rt();
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let port = free_port().unwrap();
    let _g = Gateway::start(
        "big",
        &route_toml("r", port, &b, "max_request_bytes = 1024"),
    )
    .unwrap();
    rt.block_on(async {
        let before = b.calls().await.unwrap();
        let big = embedding("m", &"x".repeat(2000));
        let r = post(port, "/v1/embeddings", &big).await;
        assert_eq!(r.status, 413, "{r:?}");
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("a JSON error body");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("1024 bytes") && msg.contains("max_request_bytes"),
            "{msg}"
        );
        assert_eq!(b.calls().await.unwrap(), before, "the backend never saw it");
        // Just under the limit is fine.
        let ok = embedding("m", &"x".repeat(900));
        assert_eq!(post(port, "/v1/embeddings", &ok).await.status, 200);
    });
}

#[test]
fn malformed_json_and_streams_pass_through_uncached() {
    let rt = rt();
    let b = Backend::start("b", &["m"], 0.5).unwrap();
    let port = free_port().unwrap();
    let g = Gateway::start("bypass", &route_toml("r", port, &b, "")).unwrap();
    rt.block_on(async {
        let before = b.calls().await.unwrap();
        for _ in 0..2 {
            let r = post(port, "/v1/embeddings", "{\"model\": \"m\", \"input\": ").await;
            assert_eq!((r.status, r.cache()), (400, "BYPASS"), "{r:?}");
            assert_eq!(r.header("x-cache-reason"), "not-json");
            assert!(r.body.contains("invalid JSON"), "the backend's own error: {r:?}");
        }
        assert_eq!(b.calls().await.unwrap() - before, 2, "each went to the backend");
        // Server-sent events stream through untouched.
        let stream = serde_json::json!({"model": "m", "prompt": "s", "temperature": 0, "max_tokens": 5, "stream": true}).to_string();
        let r = post(port, "/v1/completions", &stream).await;
        assert_eq!((r.status, r.cache()), (200, "BYPASS"));
        assert_eq!(r.header("content-type"), "text/event-stream");
        assert_eq!(r.body.matches("data: ").count(), 6, "5 tokens and [DONE]: {}", r.body);
        assert!(r.body.ends_with("data: [DONE]\n\n"));
    });
    let s = rt.block_on(g.client().cache_stats()).unwrap();
    assert_eq!((s.bypasses, s.stored), (3, 0), "{s:?}");
}

#[test]
fn server_errors_are_never_cached() {
    let rt = rt();
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let port = free_port().unwrap();
    let _g = Gateway::start("5xx", &route_toml("r", port, &b, "")).unwrap();
    rt.block_on(async {
        let body = embedding("m", "flaky");
        b.fail(true).await.unwrap();
        let before = b.calls().await.unwrap();
        for _ in 0..2 {
            let r = post(port, "/v1/embeddings", &body).await;
            assert_eq!((r.status, r.cache()), (500, "MISS"), "{r:?}");
        }
        assert_eq!(
            b.calls().await.unwrap() - before,
            2,
            "the 500 was not stored"
        );
        b.fail(false).await.unwrap();
        assert_eq!(post(port, "/v1/embeddings", &body).await.status, 200);
        let r = post(port, "/v1/embeddings", &body).await;
        assert_eq!((r.status, r.cache()), (200, "HIT"));
    });
}

#[test]
fn two_gateways_share_redis_and_invalidations() {
    let rt = rt();
    let redis = Redis::start().unwrap();
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let GatewayPair {
        a: ga,
        pa,
        b: gb,
        pb,
    } = GatewayPair::start("g", &redis, &b).unwrap();
    rt.block_on(async {
        let body = embedding("m", "shared");
        let keys = redis.dbsize().unwrap();
        assert_eq!(post(pa, "/v1/embeddings", &body).await.cache(), "MISS");
        redis.wait_write(keys, "A").await.unwrap();
        let r = post(pb, "/v1/embeddings", &body).await;
        assert_eq!(
            (r.cache(), r.header("x-cache-source")),
            ("HIT", "l2"),
            "{r:?}"
        );
        let r = post(pb, "/v1/embeddings", &body).await;
        assert_eq!(r.header("x-cache-source"), "l1", "copied into B's L1");

        // Invalidate on A; B must drop its L1 copy. How fast is a figure of
        // `cargo xtask bench invalidation`, not a pass condition here.
        let seen_before = gb.client().cache_stats().await.unwrap().invalidated;
        let t0 = Instant::now();
        let reply = ga.invalidate_prefix("m", "sha").await.unwrap();
        assert!(
            reply.broadcast && reply.l1_removed == 1 && reply.l2_removed == 1,
            "{reply:?}"
        );
        loop {
            if gb.client().cache_stats().await.unwrap().invalidated > seen_before {
                break;
            }
            assert!(
                t0.elapsed() < patience(Duration::from_secs(10)),
                "B never saw the invalidation"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        eprintln!("invalidation on A seen by B after {:?}", t0.elapsed());
        let keys = redis.dbsize().unwrap();
        assert_eq!(post(pb, "/v1/embeddings", &body).await.cache(), "MISS");

        // A version bump on B reaches A. First A hits B's new L2 copy.
        redis.wait_write(keys, "B").await.unwrap();
        assert_eq!(post(pa, "/v1/embeddings", &body).await.cache(), "HIT");
        let bumped = gb.client().cache_bump("m").await.unwrap();
        let deadline = Instant::now() + patience(Duration::from_secs(2));
        loop {
            let s = ga.client().cache_stats().await.unwrap();
            if s.versions.get("m") == Some(&bumped.version) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "A never adopted {}: {s:?}",
                bumped.version
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(post(pa, "/v1/embeddings", &body).await.cache(), "MISS");
    });
}

#[test]
fn a_gateway_that_missed_a_broadcast_flushes_its_l1_when_it_reconnects() {
    let rt = rt();
    let redis = Redis::start().unwrap();
    // A logs in as its own Redis user, so that it alone can be shut out.
    redis
        .command("ACL SETUSER gwa on >secret ~* &* +@all")
        .unwrap();
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let (pa, pb) = (free_port().unwrap(), free_port().unwrap());
    let a_cfg = redis
        .cache_toml()
        .replace("redis://", "redis://gwa:secret@");
    let ga = Gateway::start("fa", &(a_cfg + &route_toml("r", pa, &b, ""))).unwrap();
    let gb = Gateway::start("fb", &(redis.cache_toml() + &route_toml("r", pb, &b, ""))).unwrap();
    rt.block_on(async {
        ga.wait_l2(true).await.unwrap();
        gb.wait_l2(true).await.unwrap();
        let body = embedding("m", "flush me");
        let keys = redis.dbsize().unwrap();
        assert_eq!(post(pa, "/v1/embeddings", &body).await.cache(), "MISS");
        assert_eq!(post(pa, "/v1/embeddings", &body).await.cache(), "HIT");
        // The L2 write is asynchronous: wait until the entry is in Redis.
        redis.wait_write(keys, "A").await.unwrap();
        let seen_before = ga.client().cache_stats().await.unwrap().invalidated;

        // Shut A out (it cannot log in again) and drop its connections;
        // B invalidates while A is away, so the broadcast never reaches A.
        redis.command("ACL SETUSER gwa off").unwrap();
        redis.command("CLIENT KILL USER gwa").unwrap();
        ga.wait_l2(false).await.unwrap();
        let reply = gb.invalidate_prefix("m", "flush").await.unwrap();
        assert!(reply.broadcast && reply.l2_removed == 1, "{reply:?}");

        // Let A back in: once reconnected, its L1 must be empty.
        redis.command("ACL SETUSER gwa on").unwrap();
        ga.wait_l2(true).await.unwrap();
        let s = ga.client().cache_stats().await.unwrap();
        assert_eq!(
            s.invalidated, seen_before,
            "the broadcast reached A: the flush was not exercised"
        );
        assert_eq!(s.entries, 0, "A kept its stale L1 copy: {s:?}");
        assert_eq!(post(pa, "/v1/embeddings", &body).await.cache(), "MISS");
    });
}

#[test]
fn redis_outage_degrades_to_l1_and_recovers_without_stale_hits() {
    let rt = rt();
    let mut redis = Redis::start().unwrap();
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let GatewayPair {
        a: ga,
        pa,
        b: gb,
        pb,
    } = GatewayPair::start("o", &redis, &b).unwrap();
    rt.block_on(async {
        let warm: Vec<String> = (0..20)
            .map(|i| embedding("m", &format!("doc {i}")))
            .collect();
        for body in &warm {
            post(pa, "/v1/embeddings", body).await;
            post(pb, "/v1/embeddings", body).await;
        }
        // Clients keep going while Redis dies and comes back, however long
        // that takes; they are stopped once both gateways are back on it (the
        // cap only bounds a failed run).
        let stop = Stop::new();
        let load = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut errors = 0;
                let mut n = 0;
                let deadline = Instant::now() + patience(Duration::from_secs(60));
                while Instant::now() < deadline && !stop.is_stopped() {
                    for (i, port) in [pa, pb].into_iter().enumerate() {
                        // doc 0 stays out: the final check must see only what the
                        // invalidation left.
                        let body = embedding("m", &format!("doc {}", (n + i) % 29 + 1));
                        let r = post(port, "/v1/embeddings", &body).await;
                        if r.status != 200 {
                            errors += 1;
                        }
                        n += 1;
                    }
                }
                (n, errors)
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.kill();
        ga.wait_l2(false).await.unwrap();
        gb.wait_l2(false).await.unwrap();
        // While Redis is down, A invalidates doc 0: queued for the others.
        let reply = ga.invalidate_prefix("m", "doc 0").await.unwrap();
        assert!(!reply.broadcast, "nothing to broadcast on: {reply:?}");
        assert_eq!(
            ga.client().cache_stats().await.unwrap().l2.unwrap().pending,
            1
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.restart().unwrap();
        ga.wait_l2(true).await.unwrap();
        gb.wait_l2(true).await.unwrap();
        stop.stop();
        let (n, errors) = load.await.unwrap();
        assert_eq!(
            errors, 0,
            "{errors} of {n} requests failed during the outage"
        );
        assert_eq!(
            ga.client().cache_stats().await.unwrap().l2.unwrap().pending,
            0
        );
        // B had doc 0 in L1 all along; it must not serve it now.
        let r = post(pb, "/v1/embeddings", &embedding("m", "doc 0")).await;
        assert_eq!(
            (r.status, r.cache()),
            (200, "MISS"),
            "stale hit after recovery: {r:?}"
        );
    });
    let s = rt.block_on(gb.client().cache_stats()).unwrap();
    assert!(s.l2.unwrap().connects >= 2, "B reconnected by itself");
}

/// The L2 counters of a gateway: (up, connects, errors).
async fn l2_state(g: &Gateway) -> (bool, u64, u64) {
    let s = g.client().cache_stats().await.unwrap();
    let l = s.l2.expect("an L2 is configured");
    (l.up, l.connects, l.errors)
}

/// Issue 12, item 5: a full Redis (maxmemory reached, noeviction) refuses
/// writes with an error reply while the connection is fine. That is not
/// losing Redis: no gateway reconnects, and no L1 is flushed. (Before, every
/// refused write marked the L2 down, and the reconnect's resync flushed L1.)
#[test]
fn a_full_redis_refuses_writes_without_flushing_l1() {
    let rt = rt();
    let redis = Redis::start().unwrap();
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let GatewayPair {
        a: ga,
        pa,
        b: gb,
        pb,
    } = GatewayPair::start("g", &redis, &b).unwrap();
    rt.block_on(async {
        let kept = embedding("m", "kept");
        assert_eq!(post(pa, "/v1/embeddings", &kept).await.cache(), "MISS");
        assert_eq!(
            post(pa, "/v1/embeddings", &kept)
                .await
                .header("x-cache-source"),
            "l1"
        );
        // Full: any write that may grow memory is refused with OOM.
        redis
            .command("CONFIG SET maxmemory-policy noeviction")
            .unwrap();
        redis.command("CONFIG SET maxmemory 1").unwrap();
        let (_, a_connects, a_errors) = l2_state(&ga).await;
        let (_, b_connects, b_errors) = l2_state(&gb).await;
        for i in 0..20 {
            let r = post(pb, "/v1/embeddings", &embedding("m", &format!("b{i}"))).await;
            assert_eq!(r.cache(), "MISS", "{r:?}");
            let r = post(pa, "/v1/embeddings", &embedding("m", &format!("a{i}"))).await;
            assert_eq!(r.cache(), "MISS", "{r:?}");
        }
        // The refused writes are counted (they run after the answer).
        let deadline = Instant::now() + patience(Duration::from_secs(5));
        loop {
            let (a, b) = (l2_state(&ga).await, l2_state(&gb).await);
            if a.2 > a_errors && b.2 > b_errors {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "refused writes not counted: A {a:?}, B {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A reconnect followed a failure within ~100 ms before; allow far more.
        tokio::time::sleep(patience(Duration::from_millis(500))).await;
        for (g, connects, who) in [(&ga, a_connects, "A"), (&gb, b_connects, "B")] {
            let (up, now, _) = l2_state(g).await;
            assert!(up, "{who}: the L2 was marked down");
            assert_eq!(now, connects, "{who} reconnected to a Redis that was fine");
        }
        let r = post(pa, "/v1/embeddings", &kept).await;
        assert_eq!(
            r.header("x-cache-source"),
            "l1",
            "A's L1 was flushed: {r:?}"
        );
    });
}
