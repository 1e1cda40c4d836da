//! `cargo xtask bench churn`: does ring churn in the control plane slow the
//! cache's hit path or its bypass path?
//!
//! A namespace testbed (one client, `--backends` emulated backends), a daemon
//! with the testbed VIP and a `[[route]]` on that VIP's live pool. After
//! warming `KEYS` embedding requests (checked to be hits), the same load runs
//! in two phases, alternating for `--rounds`:
//!
//! - **quiet**: `--conns` keep-alive connections asking for cached entries
//!   (hit latency p50/p99/p99.9) and `--bypass-conns` asking with
//!   `x-balancer-cache: bypass` (forwarded to the pool: throughput);
//! - **churn**: the same, while the admin API sets the first backend's weight
//!   to 1 and 2 in turn, `--rate` times a second; every change rebuilds the
//!   VIP's Maglev ring.
//!
//! Prints a table of both phases with churn/quiet ratios and the ring
//! rewrites per second actually achieved. Nothing passes or fails on speed:
//! the baseline is the quiet phase of the same run, on the same two cores as
//! the daemon, the backends and this load generator.
//!
//! Options: `--seconds S` per phase and round (default 5), `--conns N` hit
//! connections (default 16), `--bypass-conns N` (default: `--conns`),
//! `--rate HZ` weight changes per second (default 20), `--rounds N` (default
//! 1), `--backends N` (default 3).

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use balancer::lb::VipId;
use balancer_tests::{
    cachebed::http,
    loadgen::percentile,
    netns, require_root,
    testbed::{GW_ADDR, Spec, Testbed, VIP, VIP_PORT},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};

/// Distinct cached requests the hit load cycles through.
const KEYS: usize = 64;
/// Where the cache route listens (in the gateway namespace).
const ROUTE_PORT: u16 = 8080;
const MODEL: &str = "test-model";

const USAGE: &str = "options: --seconds S (per phase, > 0; default 5), --conns N (hit connections, \
     1..=1024; default 16), --bypass-conns N (0..=1024; default --conns), --rate HZ (weight \
     changes per second, 0 < HZ <= 1000; default 20), --rounds N (1..=100; default 1), \
     --backends N (2..=16; default 3)";

#[derive(Debug, Clone)]
struct Args {
    seconds: f64,
    conns: usize,
    bypass_conns: usize,
    rate: f64,
    rounds: usize,
    backends: usize,
}

fn parse_args(raw: &[String]) -> Result<Args> {
    fn value<T: std::str::FromStr>(
        it: &mut std::slice::Iter<'_, String>,
        name: &str,
        ok: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let v = it
            .next()
            .with_context(|| format!("{name} needs a value; {USAGE}"))?;
        match v.parse::<T>() {
            Ok(x) if ok(&x) => Ok(x),
            _ => bail!("{name} {v:?} is out of range or not a number; {USAGE}"),
        }
    }
    let mut a = Args {
        seconds: 5.0,
        conns: 16,
        bypass_conns: usize::MAX,
        rate: 20.0,
        rounds: 1,
        backends: 3,
    };
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => {
                a.seconds = value(&mut it, flag, |s: &f64| s.is_finite() && *s > 0.0)?;
            }
            "--conns" => a.conns = value(&mut it, flag, |n: &usize| (1..=1024).contains(n))?,
            "--bypass-conns" => a.bypass_conns = value(&mut it, flag, |n: &usize| *n <= 1024)?,
            "--rate" => {
                a.rate = value(&mut it, flag, |r: &f64| {
                    r.is_finite() && *r > 0.0 && *r <= 1000.0
                })?;
            }
            "--rounds" => a.rounds = value(&mut it, flag, |n: &usize| (1..=100).contains(n))?,
            "--backends" => a.backends = value(&mut it, flag, |n: &usize| (2..=16).contains(n))?,
            // `cargo bench` passes this to every harness-less bench.
            "--bench" => {}
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if a.bypass_conns == usize::MAX {
        a.bypass_conns = a.conns;
    }
    Ok(a)
}

fn hit_bodies() -> Vec<Bytes> {
    (0..KEYS)
        .map(|i| {
            Bytes::from(
                serde_json::json!({"model": MODEL, "input": format!("cached document {i} of the churn bench")})
                    .to_string(),
            )
        })
        .collect()
}

fn bypass_body(i: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({"model": MODEL, "input": format!("uncached request {i}")}).to_string(),
    )
}

/// What one phase's load saw.
#[derive(Default)]
struct Load {
    hit_lat: Vec<Duration>,
    bypass_lat: Vec<Duration>,
    /// Failed requests and connections.
    errors: u64,
    /// Answers with the wrong `x-cache` (a miss on the hit load, say).
    wrong: u64,
    elapsed: Duration,
}

impl Load {
    fn absorb(&mut self, o: Load) {
        self.hit_lat.extend(o.hit_lat);
        self.bypass_lat.extend(o.bypass_lat);
        self.errors += o.errors;
        self.wrong += o.wrong;
        self.elapsed += o.elapsed;
    }
}

/// One keep-alive connection sending requests back to back until `end`;
/// reconnects after an error. `bypass` selects the uncacheable load.
async fn connection(target: SocketAddr, c: usize, bypass: bool, end: Instant) -> Load {
    let bodies = hit_bodies();
    let mut out = Load::default();
    let mut i = c as u64;
    'conn: while Instant::now() < end {
        let Ok(stream) = tokio::net::TcpStream::connect(target).await else {
            out.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut send, conn)) = http1::handshake(TokioIo::new(stream)).await else {
            out.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < end {
            i += 1;
            let mut req = hyper::Request::post("/v1/embeddings")
                .header("host", "bench")
                .header("content-type", "application/json");
            let body = if bypass {
                req = req.header("x-balancer-cache", "bypass");
                // Distinct inputs, so nothing downstream can coalesce them.
                bypass_body((i << 16) | c as u64)
            } else {
                bodies[i as usize % bodies.len()].clone()
            };
            let req = req.body(Full::new(body)).expect("request");
            let t0 = Instant::now();
            let resp = match send.send_request(req).await {
                Ok(r) => r,
                Err(_) => {
                    out.errors += 1;
                    continue 'conn;
                }
            };
            let status = resp.status();
            let cache = resp
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if resp.into_body().collect().await.is_err() {
                out.errors += 1;
                continue 'conn;
            }
            let lat = t0.elapsed();
            if status != 200 {
                out.errors += 1;
                continue;
            }
            let expected = if bypass { "BYPASS" } else { "HIT" };
            if cache != expected {
                out.wrong += 1;
            }
            if bypass {
                out.bypass_lat.push(lat);
            } else {
                out.hit_lat.push(lat);
            }
        }
    }
    out
}

/// Runs the hit and bypass load from the client namespace for `dur`, on a
/// thread of its own; join it for the result.
fn start_load(
    ns: &str,
    conns: usize,
    bypass_conns: usize,
    dur: Duration,
) -> std::thread::JoinHandle<Result<Load>> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<Load> {
        netns::enter(&ns)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let target = SocketAddr::from((GW_ADDR, ROUTE_PORT));
        rt.block_on(async move {
            let start = Instant::now();
            let end = start + dur;
            let mut set = tokio::task::JoinSet::new();
            for c in 0..conns {
                set.spawn(connection(target, c, false, end));
            }
            for c in 0..bypass_conns {
                set.spawn(connection(target, c, true, end));
            }
            let mut total = Load::default();
            while let Some(r) = set.join_next().await {
                total.absorb(r?);
            }
            total.elapsed = start.elapsed();
            Ok(total)
        })
    })
}

/// What the control-plane writer achieved.
#[derive(Default)]
struct Churn {
    ok: u64,
    errors: u64,
    /// Admin API round trips of the weight changes.
    lat: Vec<Duration>,
    elapsed: Duration,
    first_error: Option<String>,
}

impl Churn {
    fn absorb(&mut self, o: Churn) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.lat.extend(o.lat);
        self.elapsed += o.elapsed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Sets `backend`'s weight to 1 and 2 in turn, `rate` times a second, until
/// `stop`. Leaves it at 1.
fn start_churn(
    client: balancer::api::client::Client,
    vip: VipId,
    backend: std::net::IpAddr,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Churn>> {
    std::thread::spawn(move || -> Result<Churn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut out = Churn::default();
            let period = Duration::from_secs_f64(1.0 / rate);
            let start = Instant::now();
            // The first change one period in: `rate` changes in a second.
            let mut tick = tokio::time::interval_at((start + period).into(), period);
            // A slow change does not earn a burst of catch-up changes: the
            // achieved rate is what the control plane sustains.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut weight = 1;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                weight = 3 - weight;
                let t0 = Instant::now();
                match client.set_weight(&vip, backend, weight).await {
                    Ok(()) => {
                        out.ok += 1;
                        out.lat.push(t0.elapsed());
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out.elapsed = start.elapsed();
            if weight != 1 {
                client
                    .set_weight(&vip, backend, 1)
                    .await
                    .context("restoring the weight")?;
            }
            Ok(out)
        })
    })
}

/// Sends every hit body once, then checks each is answered from cache.
fn warm(ns: &str) -> Result<()> {
    let target = SocketAddr::from((GW_ADDR, ROUTE_PORT));
    netns::run_in(ns, move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            for pass in 0..2 {
                for b in hit_bodies() {
                    let body = String::from_utf8_lossy(&b).into_owned();
                    let r = http(target, "POST", "/v1/embeddings", &body, &[]).await?;
                    if r.status != 200 {
                        bail!("warming: {} {}", r.status, r.body);
                    }
                    if pass == 1 && r.cache() != "HIT" {
                        bail!("not a cache hit after warming: x-cache {:?}", r.cache());
                    }
                }
            }
            Ok(())
        })
    })?
}

/// Shows a phase's progress until `dur` has passed.
fn progress(label: &str, dur: Duration) -> Result<()> {
    let total_ms = dur.as_millis() as u64;
    let pb = ProgressBar::new(total_ms.max(1));
    pb.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:30}] {msg}").context("progress style")?,
    );
    pb.set_prefix(label.to_string());
    let start = Instant::now();
    while start.elapsed() < dur {
        let el = start.elapsed();
        pb.set_position(el.as_millis() as u64);
        pb.set_message(format!(
            "{:.1} / {:.1} s",
            el.as_secs_f64(),
            dur.as_secs_f64()
        ));
        std::thread::sleep(Duration::from_millis(100).min(dur.saturating_sub(el)));
    }
    pb.finish_and_clear();
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Summary figures of one phase.
struct Figures {
    hit_p50: f64,
    hit_p99: f64,
    hit_p999: f64,
    hit_rps: f64,
    bypass_rps: f64,
    bypass_p50: f64,
    bypass_p99: f64,
    errors: u64,
    wrong: u64,
    rewrites_per_s: f64,
    set_p50: Option<f64>,
    set_p99: Option<f64>,
}

fn figures(mut l: Load, c: Option<Churn>) -> Figures {
    let secs = l.elapsed.as_secs_f64().max(1e-9);
    let (rewrites_per_s, set_p50, set_p99) = match c {
        Some(mut c) => (
            c.ok as f64 / c.elapsed.as_secs_f64().max(1e-9),
            (!c.lat.is_empty()).then(|| ms(percentile(&mut c.lat, 0.50))),
            (!c.lat.is_empty()).then(|| ms(percentile(&mut c.lat, 0.99))),
        ),
        None => (0.0, None, None),
    };
    Figures {
        hit_p50: ms(percentile(&mut l.hit_lat, 0.50)),
        hit_p99: ms(percentile(&mut l.hit_lat, 0.99)),
        hit_p999: ms(percentile(&mut l.hit_lat, 0.999)),
        hit_rps: l.hit_lat.len() as f64 / secs,
        bypass_rps: l.bypass_lat.len() as f64 / secs,
        bypass_p50: ms(percentile(&mut l.bypass_lat, 0.50)),
        bypass_p99: ms(percentile(&mut l.bypass_lat, 0.99)),
        errors: l.errors,
        wrong: l.wrong,
        rewrites_per_s,
        set_p50,
        set_p99,
    }
}

fn print_table(q: &Figures, c: &Figures, a: &Args) {
    let ratio = |q: f64, c: f64| {
        if q > 0.0 {
            format!("{:.2}x", c / q)
        } else {
            "-".into()
        }
    };
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut num = |name: &str, q: f64, c: f64, prec: usize| {
        rows.push((
            name.into(),
            format!("{q:.prec$}"),
            format!("{c:.prec$}"),
            ratio(q, c),
        ));
    };
    num("hit p50, ms", q.hit_p50, c.hit_p50, 3);
    num("hit p99, ms", q.hit_p99, c.hit_p99, 3);
    num("hit p99.9, ms", q.hit_p999, c.hit_p999, 3);
    num("hit req/s", q.hit_rps, c.hit_rps, 0);
    if a.bypass_conns > 0 {
        num("bypass req/s", q.bypass_rps, c.bypass_rps, 0);
        num("bypass p50, ms", q.bypass_p50, c.bypass_p50, 3);
        num("bypass p99, ms", q.bypass_p99, c.bypass_p99, 3);
    }
    rows.push((
        "ring rewrites/s".into(),
        format!("{:.1}", q.rewrites_per_s),
        format!("{:.1}", c.rewrites_per_s),
        format!("(asked {:.0})", a.rate),
    ));
    rows.push((
        "set weight p50, ms".into(),
        opt(q.set_p50),
        opt(c.set_p50),
        String::new(),
    ));
    rows.push((
        "set weight p99, ms".into(),
        opt(q.set_p99),
        opt(c.set_p99),
        String::new(),
    ));
    rows.push((
        "errors / wrong x-cache".into(),
        format!("{} / {}", q.errors, q.wrong),
        format!("{} / {}", c.errors, c.wrong),
        String::new(),
    ));
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
    let w = rows
        .iter()
        .flat_map(|r| [r.1.len(), r.2.len(), r.3.len()])
        .max()
        .unwrap_or(5)
        .max(11);
    println!(
        "{:<w0$}  {:>w$}  {:>w$}  {:>w$}",
        "metric", "quiet", "churn", "churn/quiet"
    );
    for (n, qv, cv, r) in &rows {
        println!("{n:<w0$}  {qv:>w$}  {cv:>w$}  {r:>w$}");
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench churn failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let a = parse_args(&raw)?;
    require_root();
    let mut tb = Testbed::up(Spec::unique(
        1,
        a.backends,
        balancer_tests::testbed_bin(env!("CARGO_BIN_EXE_testbed")),
    ))?;
    let weights = vec![1; a.backends];
    let route = format!(
        "[cache]\nmemory_mb = 64\n\n[[route]]\nname = \"churn\"\nlisten = \"{GW_ADDR}:{ROUTE_PORT}\"\nvip = \"{VIP}:{VIP_PORT}/tcp\"\nbackend_port = {VIP_PORT}\nttl_secs = 3600\n"
    );
    let cfg = tb.config(&format!("{}\n{route}", tb.vip_toml(&weights, None)));
    tb.start_daemon(&cfg)?;
    let vip: VipId = format!("{VIP}:{VIP_PORT}/tcp")
        .parse()
        .map_err(|e| anyhow::anyhow!("VIP id: {e}"))?;
    let churned = tb.backends[0].addr;
    let ns = tb.clients[0].ns.clone();

    warm(&ns)?;
    let dur = Duration::from_secs_f64(a.seconds);
    println!(
        "bench churn: {} backends behind a cache route on the VIP's live pool; {} hit + {} bypass \
         keep-alive connections; {} round(s) of {:.1} s quiet, then {:.1} s with backend {churned}'s \
         weight set to 1 and 2 in turn {:.0} times a second (each change rebuilds the Maglev ring)\n",
        a.backends, a.conns, a.bypass_conns, a.rounds, a.seconds, a.seconds, a.rate
    );
    // Unmeasured: connections, caches and the allocator settle.
    let warmup = Duration::from_secs_f64(a.seconds.min(1.0));
    let h = start_load(&ns, a.conns, a.bypass_conns, warmup);
    progress("warm-up", warmup)?;
    h.join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;

    let (mut quiet, mut churn, mut writes) = (Load::default(), Load::default(), Churn::default());
    for round in 1..=a.rounds {
        let tag = |p: &str| {
            if a.rounds > 1 {
                format!("{p} {round}/{}", a.rounds)
            } else {
                p.to_string()
            }
        };
        let h = start_load(&ns, a.conns, a.bypass_conns, dur);
        progress(&tag("quiet"), dur)?;
        quiet.absorb(
            h.join()
                .map_err(|_| anyhow::anyhow!("load thread panicked"))??,
        );

        let stop = Arc::new(AtomicBool::new(false));
        let w = start_churn(tb.client(), vip, churned.into(), a.rate, stop.clone());
        let h = start_load(&ns, a.conns, a.bypass_conns, dur);
        progress(&tag("churn"), dur)?;
        let l = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        stop.store(true, Ordering::Relaxed);
        churn.absorb(l);
        writes.absorb(
            w.join()
                .map_err(|_| anyhow::anyhow!("churn thread panicked"))??,
        );
    }
    if writes.ok == 0 {
        bail!(
            "no weight change succeeded ({} failed: {})",
            writes.errors,
            writes.first_error.unwrap_or_default()
        );
    }
    if quiet.hit_lat.is_empty() || churn.hit_lat.is_empty() {
        bail!(
            "no hit answered (errors: quiet {}, churn {})",
            quiet.errors,
            churn.errors
        );
    }
    let write_errors = writes.errors;
    let first_error = writes.first_error.take();
    let q = figures(quiet, None);
    let c = figures(churn, Some(writes));
    print_table(&q, &c, &a);
    if write_errors > 0 {
        println!(
            "\n{write_errors} weight changes failed (first: {})",
            first_error.unwrap_or_default()
        );
    }
    println!(
        "\nratios are churn / quiet from this run: above 1 is slower for latencies, below 1 is \
         less throughput; every process shares the same CPUs"
    );
    Ok(())
}
