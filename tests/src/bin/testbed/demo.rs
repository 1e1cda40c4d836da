//! The demo behind `cargo xtask demo`: a gateway balancing live HTTP traffic
//! from a client over three backends weighted 1:1:2, with the data path's own
//! counters printed every second.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use balancer::{
    dataplane::{AttachMode, Dataplane, LoadOptions},
    lb::{BackendSpec, LoadBalancer, Mode, Proto, Settings, VipId, VipSpec},
};
use balancer_tests::{
    loadgen::{self, ShortResult},
    netns, signals,
    testbed::{BACKEND_MTU, Spec, Testbed, VIP, VIP_PORT},
};

const WEIGHTS: [u32; 3] = [1, 1, 2];

pub fn run(duration: Duration) -> Result<()> {
    signals::install();
    let exe = std::env::current_exe().context("own path")?;
    println!("building a testbed: 1 client, 3 backends, 1 gateway, in network namespaces ...");
    let tb = Testbed::up(Spec::unique(1, WEIGHTS.len(), exe))?;
    let pins = tb.gateway_pins();
    let opts = LoadOptions {
        max_vips: 4,
        max_flows: 65_536,
        ..LoadOptions::default()
    };
    let dp = netns::run_in(&tb.gateway.ns, move || {
        Dataplane::attach("eth0", AttachMode::Driver, &opts, &pins)
    })??;
    let mode = dp
        .programs
        .attachment()
        .and_then(|a| a.mode)
        .map(|m| format!("{m:?}"))
        .unwrap_or_default();
    let _programs = dp.programs;
    let mut lb = LoadBalancer::new(
        dp.maps,
        Settings {
            mtu: BACKEND_MTU,
            ..Settings::default()
        },
    )?;
    let vip = VipId {
        addr: VIP.into(),
        port: VIP_PORT,
        proto: Proto::Tcp,
    };
    lb.add_vip(VipSpec {
        id: vip,
        mode: Mode::Tunnel,
        affinity_secs: None,
    })?;
    for (b, w) in tb.backends.iter().zip(WEIGHTS) {
        lb.add_backend(
            &vip,
            BackendSpec {
                addr: b.addr.into(),
                weight: w,
                mac: Some(b.mac),
            },
        )?;
    }
    println!(
        "balancer attached to {}:eth0 ({mode} mode); VIP {vip} -> {}",
        tb.gateway.ns,
        tb.backends
            .iter()
            .zip(WEIGHTS)
            .map(|(b, w)| format!("{} {} (weight {w})", b.name, b.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "sending HTTP requests from {} to {} for {duration:?} ...\n",
        tb.clients[0].name,
        tb.vip()
    );

    let total = Arc::new(Mutex::new(ShortResult::default()));
    let deadline = Instant::now() + duration;
    let load = {
        let total = total.clone();
        let ns = tb.clients[0].ns.clone();
        let target = tb.vip();
        std::thread::spawn(move || -> Result<()> {
            while Instant::now() < deadline && !signals::stop_requested() {
                let r = loadgen::short_connections(&ns, target, 200, 16)?;
                let mut t = total.lock().map_err(|_| anyhow::anyhow!("lock"))?;
                t.ok += r.ok;
                for (k, v) in r.errors {
                    *t.errors.entry(k).or_insert(0) += v;
                }
                for (k, v) in r.per_backend {
                    *t.per_backend.entry(k).or_insert(0) += v;
                }
                t.latencies.extend(r.latencies);
            }
            Ok(())
        })
    };
    let start = Instant::now();
    while Instant::now() < deadline && !signals::stop_requested() {
        std::thread::sleep(Duration::from_secs(1));
        print_table(&lb, &vip, &tb, &total, start.elapsed())?;
    }
    load.join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    print_table(&lb, &vip, &tb, &total, start.elapsed())?;

    let t = total.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let sum_w: u32 = WEIGHTS.iter().sum();
    println!("\nanswers per backend against weight share:");
    for (b, w) in tb.backends.iter().zip(WEIGHTS) {
        let got = *t.per_backend.get(&b.name).unwrap_or(&0) as f64 / t.ok.max(1) as f64;
        println!(
            "  {:<4} {:>6.1}%   (weight share {:>5.1}%)",
            b.name,
            got * 100.0,
            w as f64 * 100.0 / sum_w as f64
        );
    }
    let mut lat = t.latencies.clone();
    println!(
        "{} requests answered, {} failed; p50 {:?}, p99 {:?}",
        t.ok,
        t.failed(),
        loadgen::percentile(&mut lat, 0.5),
        loadgen::percentile(&mut lat, 0.99)
    );
    let g = lb.global_stats()?;
    let interesting: BTreeMap<&str, u64> = balancer_common::Counter::ALL
        .iter()
        .map(|c| (c.name(), g.get(*c)))
        .filter(|(_, v)| *v > 0)
        .collect();
    println!("data-path counters: {interesting:?}");
    println!("tearing the testbed down.");
    drop(tb);
    Ok(())
}

fn print_table(
    lb: &LoadBalancer,
    vip: &VipId,
    tb: &Testbed,
    total: &Mutex<ShortResult>,
    elapsed: Duration,
) -> Result<()> {
    let answered = total
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .per_backend
        .clone();
    println!(
        "t={:>4.1}s  {:<4} {:>6} {:>9} {:>11} {:>11} {:>9}",
        elapsed.as_secs_f64(),
        "",
        "weight",
        "packets",
        "bytes",
        "new flows",
        "answers"
    );
    for (b, w) in tb.backends.iter().zip(WEIGHTS) {
        let s = lb.backend_stats(vip, b.addr.into())?;
        println!(
            "         {:<4} {:>6} {:>9} {:>11} {:>11} {:>9}",
            b.name,
            w,
            s.packets,
            s.bytes,
            s.new_flows,
            answered.get(&b.name).unwrap_or(&0)
        );
    }
    Ok(())
}
