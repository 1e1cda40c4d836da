//! `cargo xtask bench control`: the telemetry control loop for 1000 backends.
//!
//! One VIP with 1000 backends, each exporting vLLM metrics (the real vLLM
//! fixture, with per-backend queue values) from its own loopback address,
//! served in-process. Measured in the same run:
//!
//! - the cycle: scrape all 1000 endpoints (keep-alive), parse, derive, score,
//!   and rebuild and publish the ring into the kernel maps (M = 65537);
//! - the time from a metric change on one backend to the ring swap that
//!   reflects it, with the loop ticking every second as the daemon does.
//!
//! Options: `--backends N` (default 1000), `--cycles N` (default 10),
//! `--changes N` (default 5).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use balancer::{
    control::autoweight::Autoweight,
    control::autoweight::{BackendTelemetry, PoolTelemetry},
    control::scoring::ScoringPolicy,
    control::telemetry::{ServerKind, scrape::ScrapeLimits},
    dataplane::{Dataplane, LoadOptions},
    lb::{BackendSpec, DataplaneSettings, LoadBalancer, Mode, VipId, VipSpec},
    net::MacAddr,
};
use balancer_tests::{require_root, shared_data};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn args() -> Result<(usize, usize, usize)> {
    let (mut n, mut cycles, mut changes) = (1000usize, 10usize, 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} N"))?
                .parse()
                .with_context(|| format!("{name} N"))
        };
        match a.as_str() {
            "--backends" => n = num("--backends")?,
            "--cycles" => cycles = num("--cycles")?,
            "--changes" => changes = num("--changes")?,
            "--bench" => {}
            other => bail!("unknown argument {other:?}; use --backends, --cycles, --changes"),
        }
    }
    if !(2..=60_000).contains(&n) {
        bail!("--backends: use 2 to 60000");
    }
    Ok((n, cycles.max(1), changes.max(1)))
}

/// Serves `/metrics` for every backend address on one port; backend `i`'s
/// queue is `queues[i]`.
async fn exporters(port: u16, template: String, queues: Arc<Vec<AtomicU64>>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let local = s.local_addr().ok();
            let template = template.clone();
            let queues = queues.clone();
            tokio::spawn(async move {
                let idx = match local.map(|a| a.ip()) {
                    Some(IpAddr::V4(ip)) => {
                        let o = ip.octets();
                        o[2] as usize * 250 + o[3] as usize - 1
                    }
                    _ => 0,
                };
                let svc = service_fn(move |_req| {
                    let q = queues
                        .get(idx)
                        .map(|q| q.load(Ordering::Relaxed))
                        .unwrap_or(0);
                    let body = template.replacen(
                        "vllm:num_requests_waiting{model_name=\"facebook/opt-125m\"} 0.0",
                        &format!(
                            "vllm:num_requests_waiting{{model_name=\"facebook/opt-125m\"}} {q}"
                        ),
                        1,
                    );
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench control failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.0), p(0.5), p(1.0))
}

fn run() -> Result<()> {
    require_root();
    let (n, cycles, changes) = args()?;
    let template =
        std::fs::read_to_string(shared_data("prometheus/vllm-metrics-datadog-fixture.txt"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let port = 19_000 + (std::process::id() % 1000) as u16;
    let queues: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    rt.block_on(exporters(port, template.clone(), queues.clone()))?;

    let opts = LoadOptions {
        max_vips: 4,
        max_backends: (n as u32 + 16).next_power_of_two(),
        max_flows: 1024,
        max_affinity: 1024,
        ..LoadOptions::default()
    };
    let dp = Dataplane::load(&opts).context("loading the data plane")?;
    let _programs = dp.programs;
    let mut lb = LoadBalancer::new(dp.maps, DataplaneSettings::default())?;
    let vip: VipId = "10.100.0.1:80/tcp".parse().unwrap();
    lb.add_vip(VipSpec {
        id: vip,
        mode: Mode::Tunnel,
        affinity_secs: None,
        refuse: Default::default(),
        tier: Default::default(),
    })?;
    let mut backends = BTreeMap::new();
    for i in 0..n {
        let addr = IpAddr::from(backend_ip(i));
        lb.add_backend(
            &vip,
            BackendSpec {
                addr,
                weight: 1,
                mac: Some(MacAddr([2, 0, 0, 0, (i >> 8) as u8, i as u8])),
            },
        )?;
        backends.insert(
            addr,
            BackendTelemetry {
                endpoints: vec![(
                    ServerKind::Vllm,
                    format!("http://{}:{port}/metrics", backend_ip(i)),
                )],
                models: None,
                models_url: None,
            },
        );
    }
    let pool = PoolTelemetry {
        interval: Duration::from_secs(1),
        limits: ScrapeLimits {
            timeout: Duration::from_millis(800),
            max_body: 4 * 1024 * 1024,
        },
        fall: 3,
        rise: 2,
        model: None,
        health: None,
        policy: ScoringPolicy {
            slow_start_s: 0.0,
            ..ScoringPolicy::default()
        },
        backends,
    };
    let mut auto = rt.block_on(async { Autoweight::new(&BTreeMap::from([(vip, pool)])) });
    eprintln!(
        "bench control: {n} backends, {} kB of metrics each, ring M = {}",
        template.len() / 1024,
        lb.maps().sizes.ring_size
    );

    // Warm-up: connections opened, weights settled.
    for _ in 0..3 {
        let members = lb.view().load().members();
        let d = rt.block_on(auto.tick_all(&members));
        for (v, ds) in d {
            let items: Vec<_> = ds
                .iter()
                .map(|x| (x.addr, x.weight, x.down.clone()))
                .collect();
            lb.apply_auto_weights(&v, &items)?;
        }
    }
    let (mut scrape_ms, mut apply_ms, mut total_ms) = (vec![], vec![], vec![]);
    for c in 0..cycles {
        // Vary the metrics so every cycle rebuilds the ring.
        for (i, q) in queues.iter().enumerate() {
            q.store(((i + c) % 7) as u64 * 3, Ordering::Relaxed);
        }
        let t0 = Instant::now();
        let members = lb.view().load().members();
        let d = rt.block_on(auto.tick_all(&members));
        let scraped = t0.elapsed();
        let failed: usize = d
            .iter()
            .map(|(_, ds)| ds.iter().filter(|x| x.down.is_some()).count())
            .sum();
        let t1 = Instant::now();
        for (v, ds) in d {
            let items: Vec<_> = ds
                .iter()
                .map(|x| (x.addr, x.weight, x.down.clone()))
                .collect();
            lb.apply_auto_weights(&v, &items)?;
        }
        let applied = t1.elapsed();
        if failed > 0 {
            bail!("{failed} backends failed their scrape in cycle {c}");
        }
        scrape_ms.push(scraped.as_secs_f64() * 1e3);
        apply_ms.push(applied.as_secs_f64() * 1e3);
        total_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }

    // Metric change to ring swap, with the loop ticking every second.
    let b0 = IpAddr::from(backend_ip(0));
    let slots_of = |lb: &LoadBalancer| -> u64 {
        lb.vip(&vip)
            .map(|v| {
                v.backends
                    .iter()
                    .find(|b| b.addr == b0)
                    .map(|b| b.ring_slots)
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    for q in queues.iter() {
        q.store(0, Ordering::Relaxed);
    }
    let mut latencies = Vec::new();
    let mut next_tick = Instant::now();
    for k in 0..changes {
        // Settle at an idle b0.
        for q in queues.iter() {
            q.store(0, Ordering::Relaxed);
        }
        let mut settle = 0;
        while settle < 8 {
            std::thread::sleep(next_tick.saturating_duration_since(Instant::now()));
            next_tick += Duration::from_secs(1);
            let members = lb.view().load().members();
            for (v, ds) in rt.block_on(auto.tick_all(&members)) {
                let items: Vec<_> = ds
                    .iter()
                    .map(|x| (x.addr, x.weight, x.down.clone()))
                    .collect();
                lb.apply_auto_weights(&v, &items)?;
            }
            settle += 1;
        }
        let before = slots_of(&lb);
        // The change lands at a random point of the tick.
        std::thread::sleep(Duration::from_millis(137 * (k as u64 + 1) % 1000));
        let changed = Instant::now();
        queues[0].store(60, Ordering::Relaxed);
        loop {
            std::thread::sleep(next_tick.saturating_duration_since(Instant::now()));
            next_tick += Duration::from_secs(1);
            let members = lb.view().load().members();
            for (v, ds) in rt.block_on(auto.tick_all(&members)) {
                let items: Vec<_> = ds
                    .iter()
                    .map(|x| (x.addr, x.weight, x.down.clone()))
                    .collect();
                lb.apply_auto_weights(&v, &items)?;
            }
            if slots_of(&lb) * 3 < before * 2 {
                latencies.push(changed.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if changed.elapsed() > Duration::from_secs(10) {
                bail!("the ring did not follow the change within 10 s");
            }
        }
    }

    let (smin, smed, smax) = stats(&mut scrape_ms);
    let (amin, amed, amax) = stats(&mut apply_ms);
    let (tmin, tmed, tmax) = stats(&mut total_ms);
    let (lmin, lmed, lmax) = stats(&mut latencies);
    println!("\nbench control: {n} backends, {cycles} cycles, 2 CPUs (exporters share them)\n");
    println!(
        "{:<44} {:>9} {:>9} {:>9}",
        "", "min ms", "median ms", "max ms"
    );
    println!(
        "{:<44} {smin:>9.1} {smed:>9.1} {smax:>9.1}",
        "scrape + parse + score (all backends)"
    );
    println!(
        "{:<44} {amin:>9.1} {amed:>9.1} {amax:>9.1}",
        "ring rebuild + publish to the kernel"
    );
    println!("{:<44} {tmin:>9.1} {tmed:>9.1} {tmax:>9.1}", "whole cycle");
    println!(
        "{:<44} {:>9.0}% of the 1 s interval (median)",
        "",
        tmed / 10.0
    );
    println!(
        "{:<44} {lmin:>9.0} {lmed:>9.0} {lmax:>9.0}",
        "metric change -> ring swap (1 s ticks)"
    );
    if tmed >= 1000.0 {
        bail!("the cycle does not fit the 1 s interval");
    }
    Ok(())
}
