//! One strategy's run: a fresh fleet, a gateway in front of it, and the
//! plan's requests sent open-loop, each at its time, streaming.
//!
//! Every run starts from a fresh fleet (empty queues and prefix caches), so
//! strategies do not inherit each other's state.
//! - The L7 strategies are the gateway's own cache route
//!   (`balancer::cache::proxy::Route`, configured through the daemon's TOML
//!   parser, as a user would) with `pick` set to the strategy, over nodes in
//!   this process; streaming requests bypass the cache, so only the pick is
//!   measured.
//! - The L4 strategies ([`l4`]) send from client namespaces to the VIP,
//!   through the daemon's XDP program, to `balancer emulate` processes in
//!   backend namespaces.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use balancer::{
    cache::{Cache, Settings, pick::Pick, proxy},
    config::Config,
    emulate::{
        adapters::Adapters,
        models::{ModelSpec, Models},
        node::{Gauges, Node},
        server::{self, Emulator, Served},
    },
};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use indicatif::ProgressBar;
use tokio::{net::TcpListener, time::Instant};

use super::{
    l4::{self, L4Fleet, Weights},
    plan::{Plan, Planned},
    request::{self, Outgoing},
    scenario::Scenario,
    via::{self, Via},
};
use crate::netns;

/// A balancing strategy the bench compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// A cache route with this `pick`, on the gateway's route listener.
    L7(Pick),
    /// The VIP through the daemon's XDP program, weighted so.
    L4(Weights),
}

impl Strategy {
    /// Every strategy, by name.
    pub const ALL: [(&'static str, Strategy); 6] = [
        ("round-robin", Strategy::L7(Pick::RoundRobin)),
        ("least-request", Strategy::L7(Pick::LeastRequest)),
        ("random", Strategy::L7(Pick::Random)),
        ("aware", Strategy::L7(Pick::Aware)),
        ("xdp-static", Strategy::L4(Weights::Static)),
        ("xdp-telemetry", Strategy::L4(Weights::Telemetry)),
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
    /// Shed by the gateway: 429 (with `Retry-After`), not a failure.
    pub shed: bool,
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
    /// CPU-seconds the whole machine was busy during the run (the bench,
    /// the emulators and the daemon; with strategies run at once, all of
    /// theirs).
    pub cpu_s: f64,
    /// The machine's cores.
    pub cores: usize,
    /// The gateway's cost model against what happened (L7 routes).
    pub prediction: Option<PredictionError>,
}

/// How far a route's cost model predicted from what it then observed.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct PredictionError {
    /// Time-to-first-token predictions compared.
    pub ttft_n: u64,
    /// Their mean absolute percentage error, a fraction.
    pub ttft_mape: f64,
    /// End-to-end predictions compared.
    pub e2e_n: u64,
    /// Their MAPE.
    pub e2e_mape: f64,
}

impl PredictionError {
    /// The route's figures (`None` before any prediction was compared).
    fn of(route: &proxy::Route) -> Option<Self> {
        let [(tn, tm), (en, em)] = route.prediction_error();
        (tn + en > 0).then(|| Self {
            ttft_n: tn,
            ttft_mape: tm.unwrap_or(0.0),
            e2e_n: en,
            e2e_mape: em.unwrap_or(0.0),
        })
    }

    /// Two runs' figures as one, each MAPE weighted by its count.
    pub fn merge(self, o: Self) -> Self {
        let mean = |a: f64, n: u64, b: f64, m: u64| {
            if n + m == 0 {
                0.0
            } else {
                (a * n as f64 + b * m as f64) / (n + m) as f64
            }
        };
        Self {
            ttft_n: self.ttft_n + o.ttft_n,
            ttft_mape: mean(self.ttft_mape, self.ttft_n, o.ttft_mape, o.ttft_n),
            e2e_n: self.e2e_n + o.e2e_n,
            e2e_mape: mean(self.e2e_mape, self.e2e_n, o.e2e_mape, o.e2e_n),
        }
    }
}

/// How long a request may take before it counts as failed, past the
/// slowest tier's end-to-end objective.
pub const GRACE: Duration = Duration::from_secs(60);

/// Nodes running in this process, each with its address, name and class.
pub type LocalFleet = Vec<(SocketAddr, String, String)>;

/// Starts one emulated node per fleet entry, in this process.
async fn start_fleet(s: &Scenario) -> Result<LocalFleet> {
    start_nodes(&s.fleet, &s.mixed_models()).await
}

/// Starts `fleet`'s nodes in this process, each serving its model and the
/// non-LLM `mixed` ones, named `{class}-{n}`.
pub async fn start_nodes(
    fleet: &super::scenario::Fleet,
    mixed: &[ModelSpec],
) -> Result<LocalFleet> {
    let mut out = Vec::new();
    for (class, count) in &fleet.nodes {
        let c = fleet
            .profile
            .class(class)
            .with_context(|| format!("no class {class}"))?
            .clone();
        for i in 0..*count {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            let name = format!("{class}-{}", i + 1);
            let node = Node::spawn(c.clone());
            let emu = Emulator::with_models(
                node,
                Served {
                    name: name.clone(),
                    model: fleet.model.clone(),
                },
                Adapters::new(fleet.profile.lora.clone()),
                Models::new(mixed, class),
            );
            tokio::spawn(server::serve(l, emu));
            out.push((addr, name, class.clone()));
        }
    }
    Ok(out)
}

/// A route over `backends` with `pick`, configured as a user would. Its
/// cache stage is off: the L7 strategies differ from the L4 ones in the pick
/// alone, never by an answer the backends did not compute.
async fn start_route(
    pick: Pick,
    backends: &[SocketAddr],
    extra: &toml::Table,
) -> Result<(SocketAddr, Arc<proxy::Route>)> {
    let list: Vec<String> = backends.iter().map(|a| a.to_string()).collect();
    let toml = super::scenario::route_config(pick.label(), &list, extra);
    let cfg = Config::parse(Path::new("fleet-gateway.toml"), &toml)
        .map_err(|e| anyhow::anyhow!("the bench's gateway config: {e}"))?;
    let r = cfg.cache_routes[0].route.clone();
    let l = proxy::bind(&r).await?;
    let addr = l.local_addr()?;
    let cache = Cache::new(Settings::default())?;
    let pool: Vec<(SocketAddr, u32)> = backends.iter().map(|a| (*a, 1)).collect();
    let source: proxy::PoolSource = Arc::new(move || pool.clone());
    let route = proxy::Route::new(r, cache, source);
    tokio::spawn(route.clone().serve(l));
    Ok((addr, route))
}

/// Busy CPU-seconds of the whole machine so far (`/proc/stat`): the
/// emulators and the daemon run in other processes.
fn machine_cpu() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...; USER_HZ is 100.
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// How long a fresh fleet may take to load its models: the slowest load
/// of those the scenario uses, and a margin for a loaded machine.
fn load_limit(s: &Scenario) -> Duration {
    let slowest = s
        .fleet
        .profile
        .classes
        .iter()
        .map(|c| c.load_s)
        .chain(
            s.mixed_models()
                .iter()
                .flat_map(|m| m.cost.iter().map(|c| c.load_s)),
        )
        .fold(0.0, f64::max);
    Duration::from_secs_f64(slowest) + crate::patience(Duration::from_secs(30))
}

/// Where one strategy's fleet runs.
enum Backends {
    /// In this process, behind an in-process route.
    Local(LocalFleet, Arc<proxy::Route>),
    /// In a testbed, behind the daemon's XDP program.
    Testbed(Box<L4Fleet>),
}

impl Backends {
    /// The in-process route in front of a local fleet.
    fn route(&self) -> Option<&Arc<proxy::Route>> {
        match self {
            Backends::Local(_, r) => Some(r),
            Backends::Testbed(_) => None,
        }
    }
}

/// A strategy's fleet and gateway, up and idle, waiting for [`Prepared::send`].
pub struct Prepared {
    strategy: Strategy,
    target: SocketAddr,
    backends: Backends,
}

/// Starts a fresh fleet and the gateway `strategy` needs in front of it.
pub async fn prepare(s: &Scenario, strategy: Strategy) -> Result<Prepared> {
    let (target, backends) = match strategy {
        Strategy::L7(pick) => {
            if pick == Pick::Random {
                // The same draws each run, as the arrivals are the same.
                balancer::cache::pick::random::reseed(s.seed);
            }
            let fleet = start_fleet(s).await?;
            let addrs: Vec<SocketAddr> = fleet.iter().map(|f| f.0).collect();
            let (wait, limit) = (addrs.clone(), load_limit(s));
            tokio::task::spawn_blocking(move || l4::wait_ready(&wait, limit))
                .await
                .context("waiting for the nodes panicked")??;
            let (target, route) = start_route(pick, &addrs, &s.route).await?;
            (target, Backends::Local(fleet, route))
        }
        Strategy::L4(weights) => {
            let s = s.clone();
            let f = tokio::task::spawn_blocking(move || {
                let f = l4::start(&s, weights)?;
                f.wait_ready(load_limit(&s))?;
                Ok::<_, anyhow::Error>(f)
            })
            .await
            .context("the testbed's setup panicked")??;
            (f.target(), Backends::Testbed(Box::new(f)))
        }
    };
    Ok(Prepared {
        strategy,
        target,
        backends,
    })
}

/// Runs `plan` through `strategy` on a fresh fleet.
pub async fn run(s: &Scenario, plan: &Plan, strategy: Strategy, bar: &ProgressBar) -> Result<Run> {
    let p = prepare(s, strategy).await?;
    p.send(s, plan, Instant::now() + Duration::from_millis(200), bar)
        .await
}

/// One sender's share of the plan.
type Share = Vec<Planned>;

impl Prepared {
    /// Sends `plan` open-loop, request `i` at `t0 + at_s`, and waits for
    /// every answer (or its deadline).
    pub async fn send(
        self,
        s: &Scenario,
        plan: &Plan,
        t0: Instant,
        bar: &ProgressBar,
    ) -> Result<Run> {
        let slowest = s.tiers.iter().map(|t| t.e2e_s).fold(0.0, f64::max);
        let limit = Duration::from_secs_f64(slowest) + GRACE;
        let requests = plan.requests.iter().cloned();
        let scenario = Arc::new(s.clone());
        let cpu0 = machine_cpu();
        let mut outcomes = match &self.backends {
            Backends::Local(..) => {
                // Keep-alive to the route, as a gateway's clients would.
                send_share(
                    self.target,
                    scenario,
                    requests.collect(),
                    false,
                    t0,
                    limit,
                    bar.clone(),
                )
                .await
            }
            Backends::Testbed(f) => {
                // From every client namespace in turn; a connection per
                // request, so XDP steers each one (kept-alive connections
                // would pin whole streams of requests to one node), from a
                // source port the plan fixes (see `via`).
                let ns = f.client_namespaces();
                let mut shares: Vec<Share> = vec![Vec::new(); ns.len()];
                for (i, r) in requests.enumerate() {
                    shares[i % ns.len()].push(r);
                }
                via::check_plan(shares.iter().map(Vec::len).sum())?;
                let mut threads = Vec::new();
                for (ns, share) in ns.into_iter().zip(shares) {
                    let (target, bar, s) = (self.target, bar.clone(), scenario.clone());
                    threads.push(tokio::task::spawn_blocking(move || {
                        netns::run_in(&ns, move || -> Result<Vec<Outcome>> {
                            let rt = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()?;
                            Ok(rt.block_on(send_share(target, s, share, true, t0, limit, bar)))
                        })
                    }));
                }
                let mut all = Vec::new();
                for t in threads {
                    all.extend(t.await.context("a client thread panicked")???);
                }
                all
            }
        };
        outcomes.sort_by_key(|o| o.index);
        let cpu1 = machine_cpu();
        let makespan_s = outcomes
            .iter()
            .map(|o| o.sent_s + o.e2e_s.unwrap_or(0.0))
            .fold(0.0, f64::max);
        let prediction = self.backends.route().and_then(|r| PredictionError::of(r));
        let nodes = match self.backends {
            // Read as the L4 fleet's are: from each node's /metrics.
            Backends::Local(fleet, _) => tokio::task::spawn_blocking(move || {
                fleet
                    .iter()
                    .map(|(addr, name, class)| {
                        let text = l4::get(*addr, "/metrics")
                            .with_context(|| format!("reading {name}'s /metrics"))?;
                        Ok((name.clone(), class.clone(), l4::parse_gauges(&text)))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await
            .context("reading the nodes' metrics panicked")??,
            Backends::Testbed(f) => tokio::task::spawn_blocking(move || f.gauges())
                .await
                .context("reading the nodes' metrics panicked")??,
        };
        Ok(Run {
            strategy: self.strategy,
            outcomes,
            nodes,
            makespan_s,
            cpu_s: cpu1 - cpu0,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prediction,
        })
    }
}

/// Sends `share` to `target` open-loop and collects the outcomes: over
/// kept-alive connections, or with `fixed_ports` a connection per request
/// from its own source port ([`Via`]).
async fn send_share(
    target: SocketAddr,
    s: Arc<Scenario>,
    share: Share,
    fixed_ports: bool,
    t0: Instant,
    limit: Duration,
    bar: ProgressBar,
) -> Vec<Outcome> {
    let via = if fixed_ports {
        Via::FixedPorts
    } else {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        Via::Pool(
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .build(conn),
        )
    };
    let mut tasks = Vec::with_capacity(share.len());
    for p in share {
        let index = p.index;
        let via = via.clone();
        let at = t0 + Duration::from_secs_f64(p.at_s);
        let (bar, s) = (bar.clone(), s.clone());
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let out = request::outgoing(&s, &p);
            let o = send(&via, target, &p, out, t0, limit).await;
            bar.inc(1);
            o
        });
        tasks.push((index, task));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (index, t) in tasks {
        out.push(t.await.unwrap_or_else(|e| Outcome {
            index,
            sent_s: 0.0,
            ttft_s: None,
            e2e_s: None,
            tokens: 0,
            backend: String::new(),
            error: Some(format!("the request task failed: {e}")),
            shed: false,
        }));
    }
    out
}

/// Sends one request and reads its stream, within `limit`.
async fn send(
    via: &Via,
    target: SocketAddr,
    p: &Planned,
    out: Outgoing,
    t0: Instant,
    limit: Duration,
) -> Outcome {
    let stream = out.stream;
    let start = Instant::now();
    let mut o = Outcome {
        index: p.index,
        sent_s: start.saturating_duration_since(t0).as_secs_f64(),
        ttft_s: None,
        e2e_s: None,
        tokens: 0,
        backend: String::new(),
        error: None,
        shed: false,
    };
    let exchange = async {
        let mut req = Request::post(format!("http://{target}{}", out.path))
            .header("content-type", &out.content_type)
            // Every request is its own: none may be a cache hit.
            .header("x-balancer-cache", "bypass");
        for (k, v) in &out.headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(out.body))?;
        let resp = via.request(target, p.index, req).await?;
        o.backend = resp
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let status = resp.status();
        let retry_after = resp.headers().contains_key("retry-after");
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
            if !stream {
                if buf.len() > 16 << 20 {
                    bail!("an answer over 16 MiB");
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
        if status == hyper::StatusCode::TOO_MANY_REQUESTS && retry_after {
            o.shed = true;
            return Ok(());
        }
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&buf));
        }
        if !stream {
            // A whole answer: its first byte is its last.
            let v: serde_json::Value =
                serde_json::from_slice(&buf).context("an answer that is not JSON")?;
            o.tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as u32;
            done = true;
        }
        if !done {
            bail!("the stream ended without [DONE]");
        }
        Ok::<_, anyhow::Error>(())
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(())) if o.shed => {}
        Ok(Ok(())) => {
            let e2e = start.elapsed().as_secs_f64();
            o.e2e_s = Some(e2e);
            o.ttft_s = o.ttft_s.or(Some(e2e));
        }
        Ok(Err(e)) => o.error = Some(format!("{e:#}")),
        Err(_) => o.error = Some(format!("no answer within {limit:?}")),
    }
    o
}
