//! The one accept loop: accept, pause briefly after a failed accept, and
//! serve each connection with hyper's HTTP/1 on its own task.
//!
//! A failed accept is usually the process (`EMFILE`, `ENFILE`) or the kernel
//! (`ENOBUFS`, `ENOMEM`) out of something: retrying at once would spin a core
//! and flood the log until it clears, so the loop pauses, doubling the pause
//! while failures go on. A connection the peer aborted before we took it is
//! not the listener's problem and is retried at once.
//!
//! Every connection has a header read deadline (hyper's own, which also
//! bounds how long a kept-alive connection may wait idle for its next
//! request), and the listener serves at most `max_connections` at once; see
//! [`Settings::max_connections`] for what happens past the cap.
//!
//! The loop runs until its task is dropped. The daemon stops by ending its
//! runtime, which drops the loops and every open connection with them (no
//! draining).

use std::{convert::Infallible, future::Future, io, sync::Arc, time::Duration};

use hyper::{
    Request, Response,
    body::{Body, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};
use tracing::{debug, warn};

/// How a listener serves: socket options, accept backoff, the header
/// deadline and the connection cap.
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
    /// How long a client has to send a request's whole head, counted from
    /// when the connection starts waiting for it: after accepting, and again
    /// after each answer on a kept-alive connection (so it is also the idle
    /// keep-alive limit). Past it the connection is closed without an answer.
    pub header_timeout: Duration,
    /// Most connections served at once. Past the cap a new connection is
    /// accepted, sent [`OVERLOADED`] (`503` with `Retry-After: 1`) and
    /// closed, without reading from it.
    ///
    /// Why not answer 503 after reading the request: that needs the request,
    /// which is exactly what a slow client withholds, so each would still tie
    /// up a task until its header deadline. Why not stop accepting: the
    /// connections would wait in the kernel's backlog, where a client sees
    /// only a hanging connect (and the backlog fills for everyone). A canned
    /// answer costs one small write and no parse, and a client learns at once
    /// to come back.
    pub max_connections: usize,
}

/// What a connection past [`Settings::max_connections`] is sent.
pub const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// How long writing [`OVERLOADED`] may take (it fits any socket buffer: this
/// only bounds a peer that shrank its window to nothing).
const OVERLOADED_WRITE: Duration = Duration::from_secs(1);

impl Settings {
    /// Defaults for a listener called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            nodelay: false,
            accept_backoff: Duration::from_millis(50),
            accept_backoff_max: Duration::from_secs(1),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
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
    let slots = Arc::new(Semaphore::new(
        settings.max_connections.min(Semaphore::MAX_PERMITS),
    ));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(turn_away(stream, settings.name.clone()));
            continue;
        };
        let handler = handler.clone();
        let name = settings.name.clone();
        let header_timeout = settings.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let answer = handler(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(listener = %name, error = %e, "connection ended");
            }
        });
    }
}

/// Sends a connection past the cap [`OVERLOADED`] and closes it.
async fn turn_away<S: AsyncWrite + Unpin>(mut stream: S, name: String) {
    debug!(listener = %name, "at the connection cap; answering 503");
    let _ = tokio::time::timeout(OVERLOADED_WRITE, async {
        stream.write_all(OVERLOADED).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests;
