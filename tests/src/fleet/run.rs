//! One strategy's run: a fresh fleet, a gateway in front of it, and the
//! plan's requests sent open-loop, each at its time, streaming.
//!
//! Every run starts from a fresh fleet (empty queues and prefix caches), so
//! strategies do not inherit each other's state. The L7 strategies are the
//! gateway's own cache route (`balancer::cache::proxy::Route`, configured
//! through the daemon's TOML parser, as a user would) with `pick` set to
//! the strategy; streaming requests bypass the cache, so only the pick is
//! measured.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use balancer::{
    cache::{Cache, Settings, pick::Pick, proxy},
    config::Config,
    emulate::{
        node::{Gauges, Node},
        server::{self, Emulator, Served},
    },
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use indicatif::ProgressBar;
use tokio::{net::TcpListener, time::Instant};

use super::{
    plan::{Plan, Planned, prompt_text},
    scenario::Scenario,
};

/// A balancing strategy the bench compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// A cache route with this `pick`.
    L7(Pick),
}

impl Strategy {
    /// Every strategy, by name.
    pub const ALL: [(&'static str, Strategy); 3] = [
        ("round-robin", Strategy::L7(Pick::RoundRobin)),
        ("least-request", Strategy::L7(Pick::LeastRequest)),
        ("random", Strategy::L7(Pick::Random)),
    ];

    /// The strategy `name` names.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .with_context(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!("strategy {name:?}: use {}", names.join(", "))
            })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("?", |(n, _)| n)
    }
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Its plan index.
    pub index: usize,
    /// When it was sent, seconds from the start.
    pub sent_s: f64,
    /// Time to its first token, seconds.
    pub ttft_s: Option<f64>,
    /// Time to its last byte, seconds.
    pub e2e_s: Option<f64>,
    /// Tokens received.
    pub tokens: u32,
    /// The node that answered (`x-backend`).
    pub backend: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// One run's raw results.
#[derive(Debug, Clone)]
pub struct Run {
    /// The strategy.
    pub strategy: Strategy,
    /// Per request, in plan order.
    pub outcomes: Vec<Outcome>,
    /// Per node: name, class, and its gauges at the end.
    pub nodes: Vec<(String, String, Gauges)>,
    /// Seconds from the first send to the last answer.
    pub makespan_s: f64,
    /// CPU seconds this process used during the run.
    pub cpu_s: f64,
}

/// How long a request may take before it counts as failed, past the
/// slowest tier's end-to-end objective.
pub const GRACE: Duration = Duration::from_secs(60);

/// Starts one emulated node per fleet entry; their addresses, names and
/// handles.
async fn start_fleet(s: &Scenario) -> Result<Vec<(SocketAddr, String, String, Arc<Node>)>> {
    let mut out = Vec::new();
    for (class, count) in &s.fleet.nodes {
        let c = s
            .fleet
            .profile
            .class(class)
            .with_context(|| format!("no class {class}"))?
            .clone();
        for i in 0..*count {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            let name = format!("{class}-{}", i + 1);
            let node = Node::spawn(c.clone());
            let emu = Emulator::new(
                node.clone(),
                Served {
                    name: name.clone(),
                    model: s.fleet.model.clone(),
                },
            );
            tokio::spawn(server::serve(l, emu));
            out.push((addr, name, class.clone(), node));
        }
    }
    Ok(out)
}

/// A cache route over `backends` with `pick`, configured as a user would.
async fn start_route(pick: Pick, backends: &[SocketAddr]) -> Result<SocketAddr> {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let toml = format!(
        "[daemon]\nsocket = \"/nonexistent/fleet.sock\"\n\n[[cache_route]]\nname = \"fleet\"\nlisten = \"127.0.0.1:0\"\nbackends = [{}]\nmax_request_bytes = 8388608\ntimeout_ms = 600000\nmax_connections = 65536\npick = \"{}\"\n",
        list.join(", "),
        pick.label()
    );
    let cfg = Config::parse(Path::new("fleet-gateway.toml"), &toml)
        .map_err(|e| anyhow::anyhow!("the bench's gateway config: {e}"))?;
    let r = cfg.cache_routes[0].route.clone();
    let l = proxy::bind(&r).await?;
    let addr = l.local_addr()?;
    let cache = Cache::new(Settings::default())?;
    let pool: Vec<(SocketAddr, u32)> = backends.iter().map(|a| (*a, 1)).collect();
    let source: proxy::PoolSource = Arc::new(move || pool.clone());
    tokio::spawn(proxy::Route::new(r, cache, source).serve(l));
    Ok(addr)
}

fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
    if r != 0 {
        return 0.0;
    }
    // SAFETY: filled above.
    let u = unsafe { u.assume_init() };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Runs `plan` through `strategy` on a fresh fleet.
pub async fn run(s: &Scenario, plan: &Plan, strategy: Strategy, bar: &ProgressBar) -> Result<Run> {
    let fleet = start_fleet(s).await?;
    let addrs: Vec<SocketAddr> = fleet.iter().map(|f| f.0).collect();
    let target = match strategy {
        Strategy::L7(pick) => start_route(pick, &addrs).await?,
    };
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(conn);
    let slowest = s.tiers.iter().map(|t| t.e2e_s).fold(0.0, f64::max);
    let limit = Duration::from_secs_f64(slowest) + GRACE;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::with_capacity(plan.requests.len());
    for p in &plan.requests {
        let body = serde_json::json!({
            "model": s.fleet.model,
            "prompt": prompt_text(p),
            "max_tokens": p.output_tokens,
            "stream": true,
        })
        .to_string();
        let client = client.clone();
        let at = t0 + Duration::from_secs_f64(p.at_s);
        let p = p.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let o = send(&client, target, &p, body, t0, limit).await;
            bar.inc(1);
            o
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.context("a request task panicked")?);
    }
    let makespan_s = outcomes
        .iter()
        .map(|o| o.sent_s + o.e2e_s.unwrap_or(0.0))
        .fold(0.0, f64::max);
    let cpu_s = cpu_seconds() - cpu0;
    let nodes = fleet
        .iter()
        .map(|(_, name, class, node)| (name.clone(), class.clone(), node.gauges()))
        .collect();
    Ok(Run {
        strategy,
        outcomes,
        nodes,
        makespan_s,
        cpu_s,
    })
}

/// Sends one request and reads its stream, within `limit`.
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: SocketAddr,
    p: &Planned,
    body: String,
    t0: Instant,
    limit: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut o = Outcome {
        index: p.index,
        sent_s: start.saturating_duration_since(t0).as_secs_f64(),
        ttft_s: None,
        e2e_s: None,
        tokens: 0,
        backend: String::new(),
        error: None,
    };
    let exchange = async {
        let req = Request::post(format!("http://{target}/v1/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = client.request(req).await?;
        o.backend = resp
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let status = resp.status();
        let mut body = resp.into_body();
        // Bytes after the last newline: an event split across frames.
        let mut buf: Vec<u8> = Vec::new();
        let mut done = false;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            if !status.is_success() {
                if buf.len() > 4096 {
                    break;
                }
                continue;
            }
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
                if buf.len() > 1 << 20 {
                    bail!("an event over 1 MiB");
                }
                continue;
            };
            // Each event holds one token; count those that carry text.
            for line in String::from_utf8_lossy(&buf[..end]).lines() {
                if line == "data: [DONE]" {
                    done = true;
                } else if line.starts_with("data: {") && !line.contains("\"text\":\"\"") {
                    if o.tokens == 0 {
                        o.ttft_s = Some(start.elapsed().as_secs_f64());
                    }
                    o.tokens += 1;
                }
            }
            buf.drain(..=end);
        }
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&buf));
        }
        if !done {
            bail!("the stream ended without [DONE]");
        }
        Ok::<_, anyhow::Error>(())
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(())) => o.e2e_s = Some(start.elapsed().as_secs_f64()),
        Ok(Err(e)) => o.error = Some(format!("{e:#}")),
        Err(_) => o.error = Some(format!("no answer within {limit:?}")),
    }
    o
}
