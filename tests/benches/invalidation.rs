//! `cargo xtask bench invalidation`: how long an invalidation on one gateway
//! takes to empty another gateway's L1, over a real `redis-server`.
//!
//! Two cache-only gateways share one Redis. Each round fills an entry
//! through A, copies it into B's L1 (an L2 hit), invalidates it on A by
//! prefix, and polls B's admin API until B counts the invalidation.
//!
//! Baselines measured in the same run, on the same Redis:
//! - **pub/sub**: PUBLISH on one connection to delivery on a SUBSCRIBE
//!   connection, the bus's own floor;
//! - **poll**: one `cache stats` call on B's admin socket, the measuring
//!   loop's resolution.
//!
//! Prints p50, p99 and max of each, and propagation / pub/sub ratios.
//! Nothing passes or fails on speed. Options: `--rounds N` (default 200).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use balancer_tests::{
    cachebed::{Backend, GatewayPair, Redis, http},
    loadgen::percentile,
    patience,
};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

fn rounds() -> Result<usize> {
    let mut args = std::env::args().skip(1);
    let mut rounds = 200;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                let v = args.next().context("--rounds needs a number")?;
                rounds = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--rounds {v:?}: give a positive count"))?;
            }
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => bail!("unknown option {other:?} (options: --rounds N)"),
        }
    }
    Ok(rounds)
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg:12} [{bar:30}] {pos}/{len} {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// PUBLISH to delivery on another connection, `n` times.
async fn pubsub(redis: &Redis, n: usize) -> Result<Vec<Duration>> {
    let client = redis::Client::open(redis.url())?;
    let mut sub = client.get_async_pubsub().await?;
    sub.subscribe("bench-invalidation").await?;
    let mut messages = sub.on_message();
    let mut publish = client.get_multiplexed_async_connection().await?;
    let pb = bar(n, "pub/sub");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("bench-invalidation")
            .arg(i)
            .query_async(&mut publish)
            .await?;
        tokio::time::timeout(patience(Duration::from_secs(5)), messages.next())
            .await
            .context("a published message never arrived")?
            .context("the subscription ended")?;
        out.push(t0.elapsed());
        pb.inc(1);
    }
    pb.finish();
    Ok(out)
}

/// One round: fill through A, copy into B's L1, invalidate on A; how long
/// until B counts it, and how long B's stats call took meanwhile.
async fn round(pair: &GatewayPair, redis: &Redis, i: usize) -> Result<(Duration, Duration)> {
    let prompt = format!("round {i} document");
    let body = serde_json::json!({"model": "m", "input": prompt}).to_string();
    let post = |port: u16| {
        let body = body.clone();
        async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            http(addr, "POST", "/v1/embeddings", &body, &[]).await
        }
    };
    let keys = redis.dbsize()?;
    post(pair.pa).await?;
    redis.wait_write(keys, "A").await?;
    post(pair.pb).await?;
    let r = post(pair.pb).await?;
    if r.header("x-cache-source") != "l1" {
        bail!("round {i}: B did not copy the entry into its L1: {r:?}");
    }
    let b = pair.b.client();
    let before = b.cache_stats().await?.invalidated;
    let t0 = Instant::now();
    let reply = pair.a.invalidate_prefix("m", &prompt).await?;
    if !reply.broadcast {
        bail!("round {i}: the invalidation was not broadcast: {reply:?}");
    }
    let deadline = t0 + patience(Duration::from_secs(10));
    let mut poll = Duration::ZERO;
    loop {
        let p0 = Instant::now();
        let seen = b.cache_stats().await?.invalidated > before;
        poll = poll.max(p0.elapsed());
        if seen {
            return Ok((t0.elapsed(), poll));
        }
        if Instant::now() > deadline {
            bail!("round {i}: B never saw the invalidation");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn row(name: &str, v: &mut [Duration], base: Option<(f64, f64)>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99) = (ms(percentile(v, 0.50)), ms(percentile(v, 0.99)));
    let max = v.last().map_or(0.0, |d| ms(*d));
    let ratio = base.map_or(String::new(), |(b50, b99)| {
        format!(
            "{:>9.1}x {:>9.1}x",
            p50 / b50.max(1e-9),
            p99 / b99.max(1e-9)
        )
    });
    println!("{name:<34} {p50:>9.3} {p99:>9.3} {max:>9.3} {ratio}");
    (p50, p99)
}

fn main() -> Result<()> {
    let n = rounds()?;
    let redis = Redis::start()?;
    let backend = Backend::start("b", &["m"], 0.0)?;
    let pair = GatewayPair::start("inv", &redis, &backend)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (mut bus, mut took, mut polls) = rt.block_on(async {
        let bus = pubsub(&redis, n).await?;
        let pb = bar(n, "gateways");
        let (mut took, mut polls) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let (t, p) = round(&pair, &redis, i).await?;
            took.push(t);
            polls.push(p);
            pb.inc(1);
        }
        pb.finish();
        anyhow::Ok((bus, took, polls))
    })?;
    println!(
        "\ninvalidation propagation, {n} rounds (ms)\n{:<34} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "", "p50", "p99", "max", "p50/bus", "p99/bus"
    );
    let base = row("Redis PUBLISH -> SUBSCRIBE (bus)", &mut bus, None);
    row("B's stats call (slowest per round)", &mut polls, Some(base));
    row("invalidate on A -> gone from B's L1", &mut took, Some(base));
    Ok(())
}
