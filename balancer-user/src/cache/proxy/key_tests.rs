//! What a key must hold and what an entry must never hold (issue 12, items
//! 3 and 4), end to end through a route on loopback.

use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use super::{testkit, *};

/// What the test backend answers, by path segment:
/// `/gzip/` sets `content-encoding: gzip`, `/cookie/` a `set-cookie`,
/// `/private/` `cache-control: private`, `/sse/` a `text/event-stream`
/// content type; `/auth/` answers 401 unless `authorization: Bearer good`.
/// A request with `x-test-gate` waits until the test adds a permit to the
/// gate. The body echoes the request's count, query and `accept-encoding`.
struct Backend {
    addr: SocketAddr,
    seen: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
}

async fn backend() -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (count, wait) = (seen.clone(), gate.clone());
    tokio::spawn(http::serve(l, http::Settings::new("backend"), move |req| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let wait = wait.clone();
        async move {
            if req.headers().contains_key("x-test-gate") {
                let _ = wait.acquire().await.map(|p| p.forget());
            }
            let path = req.uri().path().to_string();
            let h = |k: &str| {
                req.headers()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let body = serde_json::json!({
                "n": n,
                "query": req.uri().query().unwrap_or(""),
                "accept_encoding": h("accept-encoding"),
            });
            let refused = path.contains("/auth/") && h("authorization") != "Bearer good";
            let _ = req.into_body().collect().await;
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
            if refused {
                *r.status_mut() = StatusCode::UNAUTHORIZED;
            }
            let hs = r.headers_mut();
            for (seg, name, value) in [
                ("/gzip/", header::CONTENT_ENCODING, "gzip".to_string()),
                ("/cookie/", header::SET_COOKIE, format!("session={n}")),
                ("/private/", header::CACHE_CONTROL, "private".to_string()),
                ("/sse/", header::CONTENT_TYPE, "text/event-stream".into()),
            ] {
                if path.contains(seg) {
                    hs.insert(name, value.parse().unwrap());
                }
            }
            r
        }
    }));
    Backend { addr, seen, gate }
}

/// One POST's status, headers and body.
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: serde_json::Value,
}

impl Reply {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn reason(&self) -> &str {
        self.headers
            .get("x-cache-reason")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

const EMBED: &str = r#"{"model":"m","input":"hi"}"#;

async fn post(to: SocketAddr, target: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req =
        Request::post(format!("http://{to}{target}")).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let r = client.request(req).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn route(b: &Backend, tune: impl FnOnce(&mut RouteConfig)) -> (SocketAddr, Arc<Cache>) {
    let mut cfg = testkit::config();
    tune(&mut cfg);
    testkit::serve(cfg, vec![(b.addr, 1)]).await
}

#[tokio::test]
async fn the_query_string_is_part_of_the_key() {
    let b = backend().await;
    let (r, _) = route(&b, |_| {}).await;
    let path = "/v1/embeddings";
    let three = post(r, &format!("{path}?top_n=3"), EMBED, &[]).await;
    assert_eq!(
        (three.x_cache(), &three.body["query"]),
        ("MISS", &"top_n=3".into())
    );
    let fifty = post(r, &format!("{path}?top_n=50"), EMBED, &[]).await;
    assert_eq!(
        fifty.x_cache(),
        "MISS",
        "?top_n=50 was answered with ?top_n=3's entry"
    );
    assert_eq!(fifty.body["query"], "top_n=50");
    let again = post(r, &format!("{path}?top_n=3"), EMBED, &[]).await;
    assert_eq!(
        (again.x_cache(), &again.body["query"]),
        ("HIT", &"top_n=3".into())
    );
}

#[tokio::test]
async fn what_may_not_be_replayed_to_anyone_is_never_stored() {
    let b = backend().await;
    let (r, cache) = route(&b, |_| {}).await;
    let gzip = [("accept-encoding", "gzip")];
    // A miss asks for the plain body, whatever the client accepts.
    let plain = post(r, "/v1/embeddings", EMBED, &gzip).await;
    assert_eq!(plain.body["accept_encoding"], "identity");
    // {description, path}: answers that a second client must not get.
    for (what, path) in [
        ("an encoded body", "/gzip/v1/embeddings"),
        ("a cookie", "/cookie/v1/embeddings"),
        ("a private answer", "/private/v1/embeddings"),
        ("a stream of events", "/sse/v1/embeddings"),
    ] {
        let first = post(r, path, EMBED, &gzip).await;
        assert_eq!((first.status, first.x_cache()), (200, "MISS"), "{what}");
        let second = post(r, path, EMBED, &[]).await;
        assert_eq!(second.x_cache(), "MISS", "{what} was stored and replayed");
        assert_ne!(first.body["n"], second.body["n"], "{what}");
    }
    assert_eq!(cache.stats().stored, 1);
}

/// Polls `f` until it holds; panics with `what` past the test margin.
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let poll = async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(crate::testutil::margin(), poll)
        .await
        .is_err()
    {
        panic!("{what}");
    }
}

/// Starts a miss with the leader's headers that the backend holds, joins a
/// second client with the waiter's headers to it, then lets the backend
/// answer. Both replies.
async fn coalesced_pair(
    path: &str,
    leader: &'static [(&'static str, &'static str)],
    waiter: &'static [(&'static str, &'static str)],
) -> (Reply, Reply) {
    let b = backend().await;
    let (r, cache) = route(&b, |_| {}).await;
    let path = path.to_string();
    let first = tokio::spawn({
        let path = path.clone();
        async move { post(r, &path, EMBED, leader).await }
    });
    let seen = b.seen.clone();
    wait_until("the backend never got the first request", || {
        seen.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = tokio::spawn(async move { post(r, &path, EMBED, waiter).await });
    wait_until("the second request never joined the first", || {
        cache.stats().coalesced == 1
    })
    .await;
    // The leader's answer, then (if the waiter asks alone) the waiter's.
    b.gate.add_permits(2);
    (first.await.unwrap(), second.await.unwrap())
}

#[tokio::test]
async fn a_coalesced_waiter_never_gets_another_clients_refusal_or_cookie() {
    const GATED_BAD: &[(&str, &str)] = &[("x-test-gate", "1"), ("authorization", "Bearer bad")];
    const GOOD: &[(&str, &str)] = &[("authorization", "Bearer good")];
    let (a, b) = coalesced_pair("/auth/v1/embeddings", GATED_BAD, GOOD).await;
    assert_eq!(a.status, 401);
    assert_eq!(b.status, 200, "the waiter got the leader's 401");

    const GATED: &[(&str, &str)] = &[("x-test-gate", "1")];
    let (a, b) = coalesced_pair("/cookie/v1/embeddings", GATED, &[]).await;
    let cookie = |r: &Reply| r.headers.get(header::SET_COOKIE).cloned();
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 200);
    assert!(cookie(&a).is_some());
    assert_ne!(cookie(&a), cookie(&b), "the waiter got the leader's cookie");
}

#[tokio::test]
async fn a_truthy_stream_or_an_event_stream_accept_bypasses() {
    let b = backend().await;
    let (r, _) = route(&b, |_| {}).await;
    for body in [
        r#"{"model":"m","input":"x","stream":"true"}"#,
        r#"{"model":"m","input":"x","stream":1}"#,
    ] {
        let a = post(r, "/v1/embeddings", body, &[]).await;
        assert_eq!((a.x_cache(), a.reason()), ("BYPASS", "streaming"), "{body}");
    }
    let sse = [("accept", "text/event-stream")];
    let a = post(r, "/v1/embeddings", EMBED, &sse).await;
    assert_eq!((a.x_cache(), a.reason()), ("BYPASS", "streaming"));
}

/// One request of a scope's sequence: its headers, and the `X-Cache` it
/// must get.
type Step<'a> = (&'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn key_scopes_decide_who_shares_an_entry() {
    let b = backend().await;
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];
    // {scope, requests in order with the X-Cache each must get}.
    let table: [(KeyScope, &[Step]); 3] = [
        (
            KeyScope::Shared,
            &[(&alice, "MISS"), (&bob, "HIT"), (&[], "HIT")],
        ),
        (
            KeyScope::PerCredential,
            &[
                (&alice, "MISS"),
                (&alice, "HIT"),
                (&bob, "MISS"),
                (&[], "MISS"),
                (&[], "HIT"),
            ],
        ),
        (
            KeyScope::RequireAuth,
            &[
                (&[], "BYPASS"),
                (&alice, "MISS"),
                (&bob, "HIT"),
                (&[], "BYPASS"),
            ],
        ),
    ];
    for (scope, steps) in table {
        let (r, _) = route(&b, |c| c.scope = scope).await;
        for (i, (headers, want)) in steps.iter().enumerate() {
            let got = post(r, "/v1/embeddings", EMBED, headers).await;
            assert_eq!(got.x_cache(), *want, "{scope:?} step {i}");
            if *want == "BYPASS" {
                assert_eq!(got.reason(), "no-credentials");
            }
        }
    }
}
