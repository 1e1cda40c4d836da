//! The demo behind `cargo xtask demo`: `balancer run` on the gateway of a
//! namespace testbed, HTTP clients hammering the VIP, and `balancer stats`
//! showing the distribution; halfway through, a weight changes live.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use balancer_tests::{
    loadgen::{self, ShortResult},
    signals,
    testbed::{Spec, Testbed, balancer_cli},
};

const WEIGHTS: [u32; 3] = [1, 1, 2];

fn cli(tb: &Testbed, args: &[&str]) -> Result<String> {
    balancer_cli(&tb.socket(), args)
}

pub fn run(duration: Duration) -> Result<()> {
    signals::install();
    let exe = std::env::current_exe().context("own path")?;
    println!(
        "== building a testbed: 2 clients, 3 backends, 1 gateway, each in its own network namespace"
    );
    let mut tb = Testbed::up(Spec::unique(2, WEIGHTS.len(), exe))?;
    let config = tb.config(&tb.vip_toml(&WEIGHTS, None));
    println!(
        "== starting `balancer run` on {}:eth0 with:\n{}",
        tb.gateway.ns,
        indent(&config)
    );
    tb.start_daemon(&config)?;
    print!("{}", indent(&cli(&tb, &["status"])?));
    println!(
        "\n== {} clients send HTTP requests to {} for {duration:?}",
        tb.clients.len(),
        tb.vip()
    );

    let total = Arc::new(Mutex::new(ShortResult::default()));
    let deadline = Instant::now() + duration;
    let loads: Vec<_> = tb
        .clients
        .iter()
        .map(|c| {
            let total = total.clone();
            let ns = c.ns.clone();
            let target = tb.vip();
            std::thread::spawn(move || -> Result<()> {
                while Instant::now() < deadline && !signals::stop_requested() {
                    let r = loadgen::short_connections(&ns, target, 200, 8)?;
                    total.lock().map_err(|_| anyhow::anyhow!("lock"))?.absorb(r);
                }
                Ok(())
            })
        })
        .collect();

    let vip = format!("{}/tcp", tb.vip());
    let b1 = tb.backends[0].addr.to_string();
    let start = Instant::now();
    let mut changed = false;
    while Instant::now() < deadline && !signals::stop_requested() {
        let out = cli(&tb, &["stats", "--once", "--interval", "1"])?;
        println!(
            "\n-- t={:.0}s  $ balancer stats --once",
            start.elapsed().as_secs_f64()
        );
        print!("{}", indent(&out));
        if !changed && start.elapsed() >= duration / 2 {
            println!("\n-- $ balancer backend set-weight {vip} {b1} 4");
            print!(
                "{}",
                indent(&cli(&tb, &["backend", "set-weight", &vip, &b1, "4"])?)
            );
            changed = true;
        }
    }
    for l in loads {
        l.join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    }

    println!("\n-- $ balancer backend list");
    print!("{}", indent(&cli(&tb, &["backend", "list"])?));
    let t = total.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let mut lat = t.latencies.clone();
    println!(
        "\n== {} requests answered, {} failed; p50 {:?}, p99 {:?}",
        t.ok,
        t.failed(),
        loadgen::percentile(&mut lat, 0.5),
        loadgen::percentile(&mut lat, 0.99)
    );
    println!(
        "   answers per backend (weights were 1:1:2, then b1 went to 4): {:?}",
        t.per_backend
    );
    println!("== tearing the testbed down");
    drop(tb);
    if t.failed() > 0 {
        bail!("{} requests failed: {:?}", t.failed(), t.errors);
    }
    if t.ok == 0 {
        bail!("no request was answered");
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}
