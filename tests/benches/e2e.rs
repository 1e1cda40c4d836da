//! `cargo xtask bench e2e`: HTTP through the balancer, directly to one
//! backend, and through HAProxy in TCP mode, on the same namespace testbed in
//! the same run, alternating, with new connections per request and with
//! keep-alive connections.
//!
//! Options: `--seconds N` per measurement (default 4), `--rounds N` (default
//! 3), `--conns N` concurrent clients (default 32).

use std::{
    net::SocketAddr,
    process::{Child, Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use balancer_tests::{
    loadgen::{self, ShortResult},
    require_root,
    testbed::{GW_ADDR, Spec, Testbed},
};

struct Target {
    name: &'static str,
    addr: SocketAddr,
    rps: [Vec<f64>; 2],
    lat: [Vec<Duration>; 2],
    failed: u64,
}

fn args() -> Result<(u64, usize, usize)> {
    let (mut secs, mut rounds, mut conns) = (4u64, 3usize, 32usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{name} N"))?
                .parse()
                .with_context(|| format!("{name} N"))
        };
        match a.as_str() {
            "--seconds" => secs = num("--seconds")?,
            "--rounds" => rounds = num("--rounds")? as usize,
            "--conns" => conns = num("--conns")? as usize,
            "--bench" => {}
            other => bail!("unknown argument {other:?}; use --seconds, --rounds, --conns"),
        }
    }
    Ok((secs.max(1), rounds.max(1), conns.max(1)))
}

fn haproxy(tb: &Testbed) -> Result<Child> {
    let mut cfg = String::from(
        "global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
    );
    cfg.push_str(&format!("frontend fe\n  bind {GW_ADDR}:8080\n  default_backend be\nbackend be\n  balance roundrobin\n"));
    for b in &tb.backends {
        cfg.push_str(&format!("  server {} {}:80\n", b.name, b.addr));
    }
    let path = tb.dir().join("haproxy.cfg");
    std::fs::create_dir_all(tb.dir())?;
    std::fs::write(&path, cfg)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &tb.gateway.ns, "haproxy", "-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy (apt-get install haproxy; cargo xtask setup does)")?;
    Ok(child)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench e2e failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    require_root();
    let (secs, rounds, conns) = args()?;
    let server = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("testbed"))
        .context("locating the testbed binary")?;
    let mut tb = Testbed::up(Spec::unique(1, 3, server))?;
    let cfg = tb.config(&tb.vip_toml(&[1, 1, 1], None));
    tb.start_daemon(&cfg)?;
    let mut hp = haproxy(&tb)?;
    std::thread::sleep(Duration::from_millis(500));

    let mut targets = vec![
        Target {
            name: "direct to one backend",
            addr: SocketAddr::from((tb.backends[0].addr, 80)),
            rps: Default::default(),
            lat: Default::default(),
            failed: 0,
        },
        Target {
            name: "balancer (XDP, IPIP, DSR)",
            addr: tb.vip(),
            rps: Default::default(),
            lat: Default::default(),
            failed: 0,
        },
        Target {
            name: "HAProxy 2.6, TCP mode",
            addr: SocketAddr::from((GW_ADDR, 8080)),
            rps: Default::default(),
            lat: Default::default(),
            failed: 0,
        },
    ];
    let ns = tb.clients[0].ns.clone();
    let d = Duration::from_secs(secs);
    eprintln!(
        "bench e2e: {rounds} rounds x {} targets x 2 modes x {secs}s, {conns} concurrent clients",
        targets.len()
    );
    for round in 0..rounds {
        for t in targets.iter_mut() {
            for (mode, r) in [
                (0, loadgen::short_for(&ns, t.addr, d, conns)?),
                (1, loadgen::keepalive(&ns, t.addr, conns, d)?),
            ] {
                let r: ShortResult = r;
                t.rps[mode].push(r.ok as f64 / r.elapsed.as_secs_f64());
                t.failed += r.failed();
                t.lat[mode].extend(r.latencies);
            }
            eprintln!("  round {} {}: done", round + 1, t.name);
        }
    }
    let _ = hp.kill();
    let _ = hp.wait();

    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (mode, title) in [
        (0, "new connection per request"),
        (1, "keep-alive connections"),
    ] {
        let base_rps = median(&targets[0].rps[mode]);
        let mut base_lat = targets[0].lat[mode].clone();
        let base_p99 = loadgen::percentile(&mut base_lat, 0.99);
        println!("\n{title} ({conns} clients, median of {rounds} x {secs}s):");
        println!(
            "{:<28} {:>10} {:>9} {:>9} {:>12} {:>12}",
            "target", "req/s", "p50 ms", "p99 ms", "req/s ratio", "p99 ratio"
        );
        for t in &targets {
            let mut lat = t.lat[mode].clone();
            let p50 = loadgen::percentile(&mut lat, 0.5);
            let p99 = loadgen::percentile(&mut lat, 0.99);
            let rps = median(&t.rps[mode]);
            println!(
                "{:<28} {:>10.0} {:>9.2} {:>9.2} {:>12.2} {:>12.2}",
                t.name,
                rps,
                ms(p50),
                ms(p99),
                rps / base_rps,
                ms(p99) / ms(base_p99)
            );
        }
        let bal = median(&targets[1].rps[mode]);
        let hap = median(&targets[2].rps[mode]);
        println!("balancer / HAProxy throughput: {:.2}x", bal / hap);
    }
    println!("\nratios are against the direct path; every process shares the same 2 CPUs");
    let failed: u64 = targets.iter().map(|t| t.failed).sum();
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok(())
}
