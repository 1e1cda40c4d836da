//! The one accept loop: accept, pause briefly after a failed accept, and
//! serve each connection with hyper's HTTP/1 on its own task.
//!
//! A failed accept is usually the process (`EMFILE`, `ENFILE`) or the kernel
//! (`ENOBUFS`, `ENOMEM`) out of something: retrying at once would spin a core
//! and flood the log until it clears, so the loop pauses, doubling the pause
//! while failures go on. A connection the peer aborted before we took it is
//! not the listener's problem and is retried at once.
//!
//! The loop runs until its task is dropped. The daemon stops by ending its
//! runtime, which drops the loops and every open connection with them (no
//! draining).

use std::{convert::Infallible, future::Future, io, time::Duration};

use hyper::{
    Request, Response,
    body::{Body, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
};
use tracing::{debug, warn};

/// How a listener serves. The hardening work adds its header and body
/// deadlines and connection caps here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// What the logs call the listener (`cache route chat`, `metrics`, ...).
    pub name: String,
    /// Sets `TCP_NODELAY` on accepted TCP connections (the proxy relays
    /// small frames, e.g. SSE events, that must not wait for Nagle).
    pub nodelay: bool,
    /// The pause after a failed accept; it doubles while accepts fail.
    pub accept_backoff: Duration,
    /// The longest pause.
    pub accept_backoff_max: Duration,
}

impl Settings {
    /// Defaults for a listener called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            nodelay: false,
            accept_backoff: Duration::from_millis(50),
            accept_backoff_max: Duration::from_secs(1),
        }
    }

    /// The same with `TCP_NODELAY` on.
    pub fn nodelay(mut self) -> Self {
        self.nodelay = true;
        self
    }
}

/// A listening socket the loop accepts from.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Applies the settings' socket options to a new connection.
    fn configure(&self, _stream: &Self::Stream, _settings: &Settings) {}
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<Self::Stream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }

    fn configure(&self, stream: &Self::Stream, settings: &Settings) {
        if settings.nodelay {
            // Only latency is at stake: serve the connection either way.
            let _ = stream.set_nodelay(true);
        }
    }
}

impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<Self::Stream> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Whether a failed accept concerns only the connection it would have
/// returned (the listener is fine: try again at once).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Accepts connections on `listener` until the task is dropped, answering
/// each request with `handler`.
pub async fn serve<L, H, F, B>(listener: L, settings: Settings, handler: H)
where
    L: Listener,
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut pause = settings.accept_backoff;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) if is_connection_error(&e) => {
                debug!(listener = %settings.name, error = %e, "connection aborted before accept");
                continue;
            }
            Err(e) => {
                warn!(listener = %settings.name, error = %e, ?pause, "accept failed; pausing");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(settings.accept_backoff_max);
                continue;
            }
        };
        pause = settings.accept_backoff;
        listener.configure(&stream, &settings);
        let handler = handler.clone();
        let name = settings.name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let answer = handler(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(listener = %name, error = %e, "connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_each_connection() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(serve(
            l,
            Settings::new("test").nodelay(),
            |req| async move {
                let path = req.uri().path().to_string();
                let _ = req.into_body().collect().await;
                Response::new(Full::new(Bytes::from(path)))
            },
        ));
        for path in ["/a", "/b"] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            assert!(out.ends_with(path), "{out}");
        }
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
}
