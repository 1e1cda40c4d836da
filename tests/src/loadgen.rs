//! Real TCP clients for the testbed: many short HTTP connections, or a set of
//! long-lived keep-alive connections that notice any reset or stall.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
    time::timeout,
};

use crate::{netns, patience};

/// Ends a load generator before its duration: the test stops the load once
/// the condition it waits for holds, however long that took. Clones share
/// the flag.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A flag not yet set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every generator holding this flag to finish its current request
    /// and stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// One HTTP/1.1 exchange on `stream`; returns the `x-backend` header.
async fn exchange(stream: &mut BufReader<TcpStream>, keep_alive: bool) -> Result<String> {
    exchange_req(stream, keep_alive, None).await
}

/// Like [`exchange`], with an optional JSON body POSTed to a path.
async fn exchange_req(
    stream: &mut BufReader<TcpStream>,
    keep_alive: bool,
    post: Option<(&str, &str)>,
) -> Result<String> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    let req = match post {
        None => format!("GET / HTTP/1.1\r\nHost: vip\r\nConnection: {conn}\r\n\r\n"),
        Some((path, body)) => format!(
            "POST {path} HTTP/1.1\r\nHost: vip\r\nConnection: {conn}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    };
    stream
        .get_mut()
        .write_all(req.as_bytes())
        .await
        .context("write")?;
    let mut line = String::new();
    stream.read_line(&mut line).await.context("read status")?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("bad status line {line:?}");
    }
    let mut backend = None;
    let mut length = 0usize;
    loop {
        line.clear();
        if stream.read_line(&mut line).await.context("read header")? == 0 {
            bail!("connection closed inside headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("x-backend") {
                backend = Some(v.to_string());
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.parse().context("content-length")?;
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.context("read body")?;
    backend.context("no x-backend header")
}

/// Outcome of [`short_connections`].
#[derive(Debug, Default, Clone)]
pub struct ShortResult {
    /// Answered requests.
    pub ok: u64,
    /// Failed requests, by error.
    pub errors: BTreeMap<String, u64>,
    /// Answers per backend name.
    pub per_backend: BTreeMap<String, u64>,
    /// Latency of each answered request (connect to last byte).
    pub latencies: Vec<Duration>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl ShortResult {
    /// Adds another run's counts and latencies (not its wall time).
    pub fn absorb(&mut self, r: ShortResult) {
        self.ok += r.ok;
        for (k, v) in r.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        for (k, v) in r.per_backend {
            *self.per_backend.entry(k).or_insert(0) += v;
        }
        self.latencies.extend(r.latencies);
    }

    /// Failed requests in all.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Opens `total` connections to `target` from namespace `ns`, `concurrency` at
/// a time, one request each.
pub fn short_connections(
    ns: &str,
    target: SocketAddr,
    total: u64,
    concurrency: usize,
) -> Result<ShortResult> {
    netns::run_in(ns, move || -> Result<ShortResult> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let sem = Arc::new(Semaphore::new(concurrency));
            let mut set = JoinSet::new();
            let start = Instant::now();
            for _ in 0..total {
                let permit = sem.clone().acquire_owned().await?;
                set.spawn(async move {
                    let t0 = Instant::now();
                    let r = timeout(patience(Duration::from_secs(10)), async {
                        let s = TcpStream::connect(target).await.context("connect")?;
                        s.set_nodelay(true)?;
                        let mut s = BufReader::new(s);
                        exchange(&mut s, false).await
                    })
                    .await;
                    drop(permit);
                    match r {
                        Ok(Ok(b)) => Ok((b, t0.elapsed())),
                        Ok(Err(e)) => Err(format!("{e:#}")),
                        Err(_) => Err("timeout".to_string()),
                    }
                });
            }
            let mut res = ShortResult::default();
            while let Some(r) = set.join_next().await {
                match r? {
                    Ok((b, lat)) => {
                        res.ok += 1;
                        *res.per_backend.entry(b).or_insert(0) += 1;
                        res.latencies.push(lat);
                    }
                    Err(e) => {
                        let key: String = e.chars().take(80).collect();
                        *res.errors.entry(key).or_insert(0) += 1;
                    }
                }
            }
            res.elapsed = start.elapsed();
            Ok(res)
        })
    })?
}

/// Runs `conns` keep-alive connections to `target` from `ns`, each sending
/// requests back to back for `duration`; every request's latency is kept.
pub fn keepalive(
    ns: &str,
    target: SocketAddr,
    conns: usize,
    duration: Duration,
) -> Result<ShortResult> {
    netns::run_in(ns, move || -> Result<ShortResult> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let start = Instant::now();
            let end = start + duration;
            let limit = patience(Duration::from_secs(5));
            let mut set = JoinSet::new();
            for _ in 0..conns {
                set.spawn(async move {
                    let mut res = ShortResult::default();
                    let s = match timeout(limit, TcpStream::connect(target)).await {
                        Ok(Ok(s)) => s,
                        _ => {
                            res.errors.insert("connect".into(), 1);
                            return res;
                        }
                    };
                    let _ = s.set_nodelay(true);
                    let mut s = BufReader::new(s);
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        match timeout(limit, exchange(&mut s, true)).await {
                            Ok(Ok(b)) => {
                                res.ok += 1;
                                *res.per_backend.entry(b).or_insert(0) += 1;
                                res.latencies.push(t0.elapsed());
                            }
                            Ok(Err(e)) => {
                                *res.errors.entry(format!("{e:#}")).or_insert(0) += 1;
                                break;
                            }
                            Err(_) => {
                                *res.errors.entry("timeout".into()).or_insert(0) += 1;
                                break;
                            }
                        }
                    }
                    res
                });
            }
            let mut total = ShortResult::default();
            while let Some(r) = set.join_next().await {
                total.absorb(r?);
            }
            total.elapsed = start.elapsed();
            Ok(total)
        })
    })?
}

/// Sends OpenAI completion requests (one connection each) from `ns` for
/// `duration` or until `stop`, `concurrency` at a time.
pub fn completions(
    ns: &str,
    target: SocketAddr,
    duration: Duration,
    concurrency: usize,
    model: &str,
    max_tokens: u32,
    stop: &Stop,
) -> Result<ShortResult> {
    let stop = stop.clone();
    let body = format!(
        "{{\"model\":\"{model}\",\"prompt\":\"hello from the load generator\",\"max_tokens\":{max_tokens}}}"
    );
    netns::run_in(ns, move || -> Result<ShortResult> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let start = Instant::now();
            let end = start + duration;
            let body = Arc::new(body);
            let mut set = JoinSet::new();
            for _ in 0..concurrency {
                let body = body.clone();
                let stop = stop.clone();
                set.spawn(async move {
                    let mut res = ShortResult::default();
                    while Instant::now() < end && !stop.is_stopped() {
                        let t0 = Instant::now();
                        let r = timeout(patience(Duration::from_secs(20)), async {
                            let s = TcpStream::connect(target).await.context("connect")?;
                            s.set_nodelay(true)?;
                            let mut s = BufReader::new(s);
                            exchange_req(&mut s, false, Some(("/v1/completions", &body))).await
                        })
                        .await;
                        match r {
                            Ok(Ok(b)) => {
                                res.ok += 1;
                                *res.per_backend.entry(b).or_insert(0) += 1;
                                res.latencies.push(t0.elapsed());
                            }
                            Ok(Err(e)) => {
                                *res.errors
                                    .entry(format!("{e:#}").chars().take(80).collect())
                                    .or_insert(0) += 1
                            }
                            Err(_) => *res.errors.entry("timeout".into()).or_insert(0) += 1,
                        }
                    }
                    res
                });
            }
            let mut total = ShortResult::default();
            while let Some(r) = set.join_next().await {
                total.absorb(r?);
            }
            total.elapsed = start.elapsed();
            Ok(total)
        })
    })?
}

/// Like [`short_connections`], but for `duration` instead of a count.
pub fn short_for(
    ns: &str,
    target: SocketAddr,
    duration: Duration,
    concurrency: usize,
) -> Result<ShortResult> {
    let start = Instant::now();
    let mut total = ShortResult::default();
    while start.elapsed() < duration {
        total.absorb(short_connections(ns, target, 500, concurrency)?);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// What one long-lived connection saw.
#[derive(Debug, Clone)]
pub struct LongResult {
    /// Requests answered.
    pub requests: u64,
    /// The first error, if the connection failed (reset, close, stall).
    pub error: Option<String>,
    /// Every backend that answered (more than one means the flow moved).
    pub backends: Vec<String>,
}

/// Keeps `conns` keep-alive connections to `target` busy for `duration` or
/// until `stop`, one request per connection every `interval`. A request
/// taking longer than `stall` counts as a stall.
pub fn long_lived(
    ns: &str,
    target: SocketAddr,
    conns: usize,
    duration: Duration,
    interval: Duration,
    stall: Duration,
    stop: &Stop,
) -> std::thread::JoinHandle<Result<Vec<LongResult>>> {
    let ns = ns.to_string();
    let stop = stop.clone();
    std::thread::spawn(move || {
        netns::enter(&ns)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut set = JoinSet::new();
            for _ in 0..conns {
                let stop = stop.clone();
                set.spawn(async move {
                    let mut res = LongResult {
                        requests: 0,
                        error: None,
                        backends: Vec::new(),
                    };
                    let s = match timeout(stall, TcpStream::connect(target)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            res.error = Some(format!("connect: {e}"));
                            return res;
                        }
                        Err(_) => {
                            res.error = Some("connect stalled".into());
                            return res;
                        }
                    };
                    let _ = s.set_nodelay(true);
                    let mut s = BufReader::new(s);
                    let end = Instant::now() + duration;
                    while Instant::now() < end && !stop.is_stopped() {
                        match timeout(stall, exchange(&mut s, true)).await {
                            Ok(Ok(b)) => {
                                res.requests += 1;
                                if !res.backends.contains(&b) {
                                    res.backends.push(b);
                                }
                            }
                            Ok(Err(e)) => {
                                res.error = Some(format!("{e:#}"));
                                return res;
                            }
                            Err(_) => {
                                res.error = Some(format!("stalled > {stall:?}"));
                                return res;
                            }
                        }
                        tokio::time::sleep(interval).await;
                    }
                    res
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r?);
            }
            Ok(out)
        })
    })
}

/// Percentile `p` (0 to 1) of latencies, sorted in place.
pub fn percentile(lat: &mut [Duration], p: f64) -> Duration {
    if lat.is_empty() {
        return Duration::ZERO;
    }
    lat.sort();
    let i = ((lat.len() - 1) as f64 * p).round() as usize;
    lat[i.min(lat.len() - 1)]
}
