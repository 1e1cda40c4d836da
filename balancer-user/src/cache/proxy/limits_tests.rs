//! The route's limits on slow clients and slow backends, in one process on
//! loopback ports the kernel picks.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use http_body_util::BodyExt;

use super::{testkit, *};
use crate::testutil::margin;

const CHAT: &str = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;

/// A route in front of `backend`, with the test's changes to its config.
async fn route(backend: SocketAddr, tune: impl FnOnce(&mut RouteConfig)) -> SocketAddr {
    let mut cfg = testkit::config();
    cfg.exclude_fields = vec![];
    tune(&mut cfg);
    testkit::serve(cfg, vec![(backend, 1)]).await.0
}

/// A backend that reads a request, sends a head promising `len` bytes, then
/// one byte every `every`.
async fn trickler(len: usize, every: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..len {
                    tokio::time::sleep(every).await;
                    if s.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A backend that answers `{}` at once.
async fn quick() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(http::serve(
        l,
        http::Settings::new("backend"),
        |req| async {
            let _ = req.into_body().collect().await;
            Response::new(Full::new(Bytes::from_static(b"{}")))
        },
    ));
    addr
}

/// A connection that sent a chat request's head declaring `len` body bytes,
/// and a few of them, then stalled.
async fn stalled_body(to: SocketAddr, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(to).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n{{\"model\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Status and headers of one chat POST.
async fn post(to: SocketAddr, body: &str) -> Response<Incoming> {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::post(format!("http://{to}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    client.request(req).await.unwrap()
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_after_the_body_deadline() {
    let r = route(quick().await, |c| c.body_timeout = Duration::from_secs(1)).await;
    let mut s = stalled_body(r, 200).await;
    let mut out = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(1) + margin(), s.read(&mut out))
        .await
        .expect("a stalled request body was never answered")
        .unwrap();
    assert!(out[..n].starts_with(b"HTTP/1.1 408"), "{:?}", &out[..n]);
}

#[tokio::test]
async fn past_the_body_budget_a_request_gets_503() {
    let r = route(quick().await, |c| c.body_budget_bytes = 256).await;
    // Holds 200 of the route's 256 bytes while it stalls.
    let held = stalled_body(r, 200).await;
    let mut refused = None;
    for _ in 0..300 {
        let resp = post(r, CHAT).await;
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(resp);
            break;
        }
        // The stalled request may not have been read yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = refused.expect("a request past the body budget was served");
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    // Once the stalled client is gone its bytes are free again.
    drop(held);
    let served = async {
        while post(r, CHAT).await.status() != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(tokio::time::timeout(margin(), served).await.is_ok());
}

#[tokio::test]
async fn a_trickling_backend_gets_every_waiter_a_504() {
    // 100 bytes at one a second against a 3 s timeout: no single frame is
    // late, the whole is.
    let b = trickler(100, Duration::from_secs(1)).await;
    let r = route(b, |c| c.timeout = Duration::from_secs(3)).await;
    let both = futures_util::future::join(post(r, CHAT), post(r, CHAT));
    let (a, b) = tokio::time::timeout(Duration::from_secs(3) + margin(), both)
        .await
        .expect("a trickling backend held the requests past the route's timeout");
    assert_eq!(a.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(b.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn a_miss_for_a_dead_backend_goes_to_the_next_choice() {
    // An address nothing listens on: connections to it are refused.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let live = quick().await;
    let (r, _) = testkit::serve(testkit::config(), vec![(dead, 1), (live, 1)]).await;
    // Twenty keys: about half of them prefer the dead backend.
    for i in 0..20 {
        let body = CHAT.replace("hi", &format!("hi {i}"));
        assert_eq!(post(r, &body).await.status(), StatusCode::OK, "key {i}");
    }
}

#[tokio::test]
async fn a_backend_that_keeps_failing_is_marked_down() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let live = quick().await;
    let mut cfg = testkit::config();
    // Long enough that it cannot end during the test, however slow.
    cfg.mark_down.cooldown = Duration::from_secs(3600);
    let after = cfg.mark_down.after;
    let (r, cache) = testkit::serve(cfg, vec![(dead, 1), (live, 1)]).await;
    // Forty keys: about half prefer the dead backend, but only the first
    // `after` of those try it before it is left out.
    for i in 0..40 {
        let body = CHAT.replace("hi", &format!("hi {i}"));
        assert_eq!(post(r, &body).await.status(), StatusCode::OK, "key {i}");
    }
    let s = cache.stats();
    assert_eq!(
        (s.backend_errors, s.marked_down),
        (u64::from(after), 1),
        "{s:?}"
    );
}
