//! The accept loop: serving, the header deadline and the connection cap.

use super::*;
use crate::testutil::margin;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What a stalled client sends before it goes quiet (the reproducer).
const STALLED_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";

/// A listener answering each request with its path, with `settings`.
async fn start(settings: Settings) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(serve(l, settings, |req| async move {
        let path = req.uri().path().to_string();
        let _ = req.into_body().collect().await;
        Response::new(Full::new(Bytes::from(path)))
    }));
    (addr, task)
}

/// One `GET path` on its own connection; the whole answer.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Connections that sent half a request head and stalled.
async fn stalled(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(STALLED_HEAD).await.unwrap();
        socks.push(s);
    }
    socks
}

/// Reads until the server closes (EOF or reset).
async fn until_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[tokio::test]
async fn serves_each_connection() {
    let (addr, task) = start(Settings::new("test").nodelay()).await;
    for path in ["/a", "/b"] {
        let out = get(addr, path).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with(path), "{out}");
    }
    task.abort();
}

/// The reproducer: 2,000 sockets that sent half a head and stalled.
/// Each holds two descriptors in this process (both ends), 4,000 in all;
/// the test raises its soft `RLIMIT_NOFILE` to the hard limit and uses as
/// many as that allows, up to 2,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_closed_after_the_header_deadline() {
    let n = crate::http::raise_nofile().saturating_sub(1024).min(4000) as usize / 2;
    let mut settings = Settings::new("test");
    settings.header_timeout = Duration::from_secs(1);
    settings.max_connections = 4096;
    let (addr, task) = start(settings).await;
    let mut socks = stalled(addr, n).await;
    // Meanwhile a normal client is answered.
    let out = get(addr, "/ok").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let all = futures_util::future::join_all(socks.iter_mut().map(until_closed));
    assert!(
        tokio::time::timeout(Duration::from_secs(1) + margin(), all)
            .await
            .is_ok(),
        "{n} stalled connections were not all closed past the header deadline"
    );
    task.abort();
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let mut settings = Settings::new("test");
    settings.header_timeout = Duration::from_secs(1);
    let (addr, task) = start(settings).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(
        tokio::time::timeout(Duration::from_secs(1) + margin(), until_closed(&mut s))
            .await
            .is_ok(),
        "an idle kept-alive connection stayed open"
    );
    task.abort();
}

#[tokio::test]
async fn past_the_cap_a_connection_gets_a_canned_503() {
    let mut settings = Settings::new("test");
    settings.header_timeout = Duration::from_secs(1);
    settings.max_connections = 2;
    let (addr, task) = start(settings).await;
    let mut socks = stalled(addr, 2).await;
    // Accepted after the two (the accept queue is FIFO), so past the cap.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(margin(), s.read_to_end(&mut out))
        .await
        .expect("the connection past the cap got no answer")
        .unwrap();
    assert_eq!(out, OVERLOADED);
    // Once the stalled ones are gone, their slots serve again.
    for s in &mut socks {
        tokio::time::timeout(Duration::from_secs(1) + margin(), until_closed(s))
            .await
            .unwrap();
    }
    let out = get(addr, "/ok").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    task.abort();
}

#[test]
fn aborted_connections_do_not_pause_the_loop() {
    assert!(is_connection_error(
        &io::ErrorKind::ConnectionAborted.into()
    ));
    assert!(!is_connection_error(&io::Error::from_raw_os_error(
        libc::EMFILE
    )));
}
