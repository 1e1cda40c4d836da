//! `cargo xtask bench proxy`: the cache's hit path against nginx's
//! `proxy_cache` (configured to cache POST by body) on this machine, same
//! backend, same requests, same number of workers (2).
//!
//! For each proxy: warm 64 distinct embedding requests (checked to be hits),
//! then
//!
//! - **latency**: one keep-alive connection, requests back to back; p50 and
//!   p99 (a hit never reaches the backend, so this is the latency the proxy
//!   adds), and the backend directly for reference;
//! - **throughput**: 32 keep-alive connections for `--seconds` (default 5),
//!   requests/s and p99.
//!
//! Then the **routing overhead**: three cache-less routes over the same
//! four backends, `pick = "round-robin"`, `"least-request"` and `"aware"`
//! (which parses each body, predicts every backend's cost and learns from
//! each answer), each at 1 and 32 connections, in mirrored order against
//! drift; what each adds to p99 over round-robin, and its requests/s
//! against round-robin's.
//!
//! Last, the routing **decision alone**, in this process: `aware`'s work
//! per request against round-robin's choice, p50/p99/p99.9
//! ([`decision`]).
//!
//! Prints the figures and the ratios. The load generator runs in this
//! process, on the same two cores as the proxies.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use balancer_tests::{
    cachebed::{Backend, Gateway, free_port, http},
    loadgen::percentile,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

#[path = "proxy/decision.rs"]
mod decision;

const KEYS: usize = 64;

fn bodies() -> Vec<String> {
    (0..KEYS)
        .map(|i| {
            serde_json::json!({"model": "m", "input": format!("document number {i} of the benchmark corpus")})
                .to_string()
        })
        .collect()
}

struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers. SIGKILL would orphan them,
        // still serving the port.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx(listen: u16, backend: SocketAddr) -> Result<Nginx> {
    let bin = Path::new("/usr/sbin/nginx");
    if !bin.exists() {
        bail!("nginx is not installed (apt-get install nginx; `cargo xtask setup` does)");
    }
    let dir = std::env::temp_dir().join(format!("balancer-bench-nginx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cache"))?;
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes 2;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # The body must be in memory for $request_body to be part of the key.
    client_body_buffer_size 1m;
    client_body_in_single_buffer on;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=inference:64m max_size=1g inactive=60m use_temp_path=off;
    upstream backend {{ server {backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{listen};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache inference;
            proxy_cache_methods POST;
            proxy_cache_key "$request_uri|$request_body";
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nginx")?;
    Ok(Nginx { child, dir })
}

async fn wait_port(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nothing listens on {addr}")
}

/// Warms every key and checks the proxy then answers it from cache.
async fn warm(addr: SocketAddr, hit_header: &str) -> Result<()> {
    for b in bodies() {
        http(addr, "POST", "/v1/embeddings", &b, &[]).await?;
    }
    for b in bodies() {
        let r = http(addr, "POST", "/v1/embeddings", &b, &[]).await?;
        if r.status != 200 || r.header(hit_header) != "HIT" {
            bail!(
                "{addr}: not a cache hit after warming ({} {hit_header}={:?})",
                r.status,
                r.header(hit_header)
            );
        }
    }
    Ok(())
}

#[derive(Default)]
struct Run {
    ok: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// `conns` keep-alive connections cycling through the bodies for `dur`.
async fn load(addr: SocketAddr, conns: usize, dur: Duration) -> Result<Run> {
    let bodies: Vec<Bytes> = bodies().into_iter().map(Bytes::from).collect();
    let start = Instant::now();
    let end = start + dur;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..conns {
        let bodies = bodies.clone();
        set.spawn(async move {
            let mut run = Run::default();
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                run.errors += 1;
                return run;
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut send, conn)) = http1::handshake(TokioIo::new(stream)).await else {
                run.errors += 1;
                return run;
            };
            tokio::spawn(conn);
            let mut i = c;
            while Instant::now() < end {
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let req = hyper::Request::post("/v1/embeddings")
                    .header("host", "bench")
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("request");
                let t0 = Instant::now();
                match send.send_request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        if resp.into_body().collect().await.is_ok() {
                            run.ok += 1;
                            run.latencies.push(t0.elapsed());
                        } else {
                            run.errors += 1;
                        }
                    }
                    _ => {
                        run.errors += 1;
                        break;
                    }
                }
            }
            run
        });
    }
    let mut total = Run::default();
    while let Some(r) = set.join_next().await {
        let r = r?;
        total.ok += r.ok;
        total.errors += r.errors;
        total.latencies.extend(r.latencies);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `bench proxy`'s options.
#[derive(clap::Parser)]
#[command(about = "The cache's hit path against nginx proxy_cache")]
struct Args {
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    seconds: f64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 3600.0 => Ok(f),
        _ => Err(format!("{s:?}: give seconds in (0, 3600]")),
    }
}

fn main() -> Result<()> {
    let seconds = <Args as clap::Parser>::parse().seconds;
    let backend = Backend::start("backend", &["m"], 0.1)?;
    let pool: Vec<Backend> = (0..4)
        .map(|i| Backend::start(&format!("pool-{i}"), &["m"], 0.1))
        .collect::<Result<_>>()?;
    let list: Vec<String> = pool.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let (p_ours, p_nginx) = (free_port()?, free_port()?);
    let (p_rr, p_lr, p_aware) = (free_port()?, free_port()?, free_port()?);
    let bypass = |name: &str, port: u16, pick: &str| {
        format!(
            "\n[[route]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [{}]\ncache = false\npick = \"{pick}\"\n",
            list.join(", ")
        )
    };
    let _gw = Gateway::start(
        "bench",
        &format!(
            "[cache]\nmemory_mb = 256\n\n[[route]]\nname = \"bench\"\nlisten = \"127.0.0.1:{p_ours}\"\nbackends = [\"{}\"]\nttl_secs = 600\n{}{}{}",
            backend.addr,
            bypass("rr", p_rr, "round-robin"),
            bypass("lr", p_lr, "least-request"),
            bypass("aware", p_aware, "aware"),
        ),
    )?;
    let _ng = nginx(p_nginx, backend.addr)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ours = SocketAddr::from(([127, 0, 0, 1], p_ours));
    let theirs = SocketAddr::from(([127, 0, 0, 1], p_nginx));
    let rr = SocketAddr::from(([127, 0, 0, 1], p_rr));
    let lr = SocketAddr::from(([127, 0, 0, 1], p_lr));
    let aware = SocketAddr::from(([127, 0, 0, 1], p_aware));
    rt.block_on(async {
        wait_port(theirs).await?;
        warm(ours, "x-cache").await?;
        warm(theirs, "x-cache").await?;
        println!(
            "bench proxy: cache hits of {KEYS} distinct POST /v1/embeddings bodies, 2 workers each, load generator on the same 2 cores\n"
        );
        println!(
            "{:<30} {:>10} {:>9} {:>9} {:>9}",
            "", "req/s", "p50 ms", "p99 ms", "errors"
        );
        let lat = Duration::from_secs_f64((seconds / 2.0).max(1.0));
        let thr = Duration::from_secs_f64(seconds);
        let mut results = Vec::new();
        for (name, addr, conns, dur) in [
            ("backend direct, 1 conn", backend.addr, 1, lat),
            ("balancer hit, 1 conn", ours, 1, lat),
            ("nginx proxy_cache hit, 1 conn", theirs, 1, lat),
            ("balancer hit, 32 conns", ours, 32, thr),
            ("nginx proxy_cache hit, 32 conns", theirs, 32, thr),
            // A-B-C-C-B-A, so that drift over the run (the backends'
            // state, the machine's) weighs on all alike.
            ("bypass round-robin, 1 conn", rr, 1, lat),
            ("bypass least-request, 1 conn", lr, 1, lat),
            ("bypass aware, 1 conn", aware, 1, lat),
            ("bypass aware, 1 conn (again)", aware, 1, lat),
            ("bypass least-request, 1 conn (again)", lr, 1, lat),
            ("bypass round-robin, 1 conn (again)", rr, 1, lat),
            ("bypass round-robin, 32 conns", rr, 32, thr),
            ("bypass least-request, 32 conns", lr, 32, thr),
            ("bypass aware, 32 conns", aware, 32, thr),
            ("bypass aware, 32 conns (again)", aware, 32, thr),
            ("bypass least-request, 32 conns (again)", lr, 32, thr),
            ("bypass round-robin, 32 conns (again)", rr, 32, thr),
        ] {
            let mut r = load(addr, conns, dur).await?;
            let rps = r.ok as f64 / r.elapsed.as_secs_f64();
            let p50 = percentile(&mut r.latencies, 0.50);
            let p99 = percentile(&mut r.latencies, 0.99);
            println!(
                "{name:<30} {rps:>10.0} {:>9.3} {:>9.3} {:>9}",
                ms(p50),
                ms(p99),
                r.errors
            );
            results.push((rps, p50, p99));
        }
        println!();
        println!(
            "latency a hit adds (all of it is proxy time: no backend), p99 at 1 conn: balancer {:.3} ms, nginx {:.3} ms",
            ms(results[1].2),
            ms(results[2].2)
        );
        println!(
            "balancer / nginx: throughput at 32 conns {:.2}x; p99 at 1 conn {:.2}x, at 32 conns {:.2}x (lower is better)",
            results[3].0 / results[4].0,
            ms(results[1].2) / ms(results[2].2),
            ms(results[3].2) / ms(results[4].2)
        );
        // Rows 5-10 and 11-16: round-robin, least-request, aware, aware,
        // least-request, round-robin.
        let mean = |a: usize, b: usize, f: fn(&(f64, Duration, Duration)) -> f64| {
            (f(&results[a]) + f(&results[b])) / 2.0
        };
        let p99 = |r: &(f64, Duration, Duration)| r.2.as_secs_f64() * 1e6;
        let rps = |r: &(f64, Duration, Duration)| r.0;
        for (name, one, many) in [("least-request", (6, 9), (12, 15)), ("aware", (7, 8), (13, 14))] {
            println!(
                "routing overhead of {name} over round-robin (the same 4 backends, each measured twice, in mirrored order): p99 at 1 conn {:+.0} us, at 32 conns {:+.0} us; requests/s at 32 conns {:.2}x",
                mean(one.0, one.1, p99) - mean(5, 10, p99),
                mean(many.0, many.1, p99) - mean(11, 16, p99),
                mean(many.0, many.1, rps) / mean(11, 16, rps)
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;
    decision::run(200_000);
    Ok(())
}
