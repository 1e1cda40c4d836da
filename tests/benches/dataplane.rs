//! `cargo xtask bench dataplane`: nanoseconds per packet of each data-path
//! path through `BPF_PROG_TEST_RUN`, against a bare `XDP_PASS` and a MAC-swap
//! `XDP_TX` program measured in the same run.
//!
//! Paths that rewrite the packet (encapsulation, decapsulation) run behind the
//! `bench_wrapper` program, which restores the input before every repeat and
//! tail-calls the path; its own cost (restore + tail call, measured against the
//! MAC-swap program in the same run) is subtracted. Every path's counters must
//! rise by exactly the repeat count, or the bench fails: the figure is only
//! reported if the path measured is the path that ran.
//!
//! Beside the nanoseconds it prints the eBPF instructions each path executes,
//! counted by replaying the path in the `bpfvm` interpreter (see `insns.rs`):
//! a figure that does not change with the CPU.
//!
//! Options: `--repeat N` (default 1,000,000), `--rounds N` (default 5),
//! `--max-flows N`, `--paths-only` (skip the connection-table comparison).

use std::{net::IpAddr, process::ExitCode};

use anyhow::{Context, bail, ensure};
use aya::programs::Xdp;
use balancer::{
    dataplane::decap::Decap,
    dataplane::{Dataplane, LoadOptions, objects},
    lb::{BackendSpec, DataplaneSettings, LoadBalancer, Mode, Refusal, VipId, VipSpec},
    net::{MacAddr, addr_words},
};
use balancer_common::{AffinityKey, AffinityValue, Counter, GlobalStats};
use balancer_tests::{
    bench::{BenchObject, min_median, pin_to_cpu, time},
    pkt::{self, Flow},
    require_root,
    xdp::{DROP, PASS, TX},
};
use indicatif::{ProgressBar, ProgressStyle};

#[path = "dataplane/insns.rs"]
mod insns;

/// What a path's instruction count replays: object, entry, loaded program, frame.
type Replay<'a> = (&'a [u8], &'a str, &'a Xdp, &'a [u8]);

struct Path {
    name: &'static str,
    /// Subtract the wrapper's calibrated cost.
    wrapped: bool,
    /// Target ratio to MAC swap, if any.
    target: Option<f64>,
    wall: Vec<f64>,
    kernel: Vec<f64>,
}

/// Command-line options.
struct Args {
    repeat: u32,
    rounds: usize,
    max_flows: Option<u32>,
    /// Skip the connection-table design comparison (the slow part).
    paths_only: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut repeat = 1_000_000u32;
    let mut paths_only = false;
    let mut rounds = 5usize;
    let mut max_flows = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => {
                repeat = args
                    .next()
                    .context("--repeat N")?
                    .parse()
                    .context("--repeat N")?
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .context("--rounds N")?
                    .parse()
                    .context("--rounds N")?
            }
            "--max-flows" => {
                max_flows = Some(
                    args.next()
                        .context("--max-flows N")?
                        .parse()
                        .context("--max-flows N")?,
                )
            }
            "--paths-only" => paths_only = true,
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}; use --repeat N, --rounds N, --max-flows N, --paths-only"
            ),
        }
    }
    ensure!(repeat >= 1, "--repeat must be at least 1");
    ensure!(rounds >= 1, "--rounds must be at least 1");
    Ok(Args {
        repeat,
        rounds,
        max_flows,
        paths_only,
    })
}

fn delta(before: &GlobalStats, after: &GlobalStats, c: Counter) -> u64 {
    after.get(c) - before.get(c)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench dataplane failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    require_root();
    let Args {
        repeat,
        rounds,
        max_flows,
        paths_only,
    } = parse_args()?;
    // Count CPUs before pinning narrows what this thread may use.
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    pin_to_cpu(cpus - 1)?;

    // The balancer with realistic table sizes.
    let mut opts = LoadOptions {
        max_vips: 8,
        ..LoadOptions::default()
    };
    if let Some(n) = max_flows {
        opts.max_flows = n;
    }
    let dp = Dataplane::load(&opts).context("loading the balancer")?;
    let programs = dp.programs;
    let mut lb = LoadBalancer::new(dp.maps, DataplaneSettings::default())?;
    let vip: VipId = "10.100.0.1:80/tcp".parse().unwrap();
    let aff: VipId = "10.100.0.5:80/tcp".parse().unwrap();
    // Two VIPs that refuse every new connection: one drops the SYN, one
    // answers it with a RST.
    let shed_drop: VipId = "10.100.0.6:80/tcp".parse().unwrap();
    let shed_rst: VipId = "10.100.0.7:80/tcp".parse().unwrap();
    for (id, affinity, refuse) in [
        (vip, None, Refusal::Drop),
        (aff, Some(3600), Refusal::Drop),
        (shed_drop, None, Refusal::Drop),
        (shed_rst, None, Refusal::Rst),
    ] {
        lb.add_vip(VipSpec {
            id,
            mode: Mode::Tunnel,
            affinity_secs: affinity,
            refuse,
            tier: Default::default(),
        })?;
        for i in 0..8u8 {
            lb.add_backend(
                &id,
                BackendSpec {
                    addr: IpAddr::from([10, 0, 0, 10 + i]),
                    weight: 1,
                    mac: Some(MacAddr([2, 0xbb, 0, 0, 0, i])),
                },
            )?;
        }
    }
    for id in [shed_drop, shed_rst] {
        lb.set_shed(&id, balancer_common::SHED_ALL)?;
    }
    let balancer = programs.program().context("balancer program")?;
    let bal_fd = balancer.fd()?;

    let mut decap = Decap::load().context("loading decap")?;
    decap.add_vip("10.100.0.1".parse().unwrap())?;
    decap.allow_source("172.16.0.0".parse()?, 16)?;
    let decap_prog = decap.program().context("decap program")?;
    let decap_fd = decap_prog.fd()?;

    let mut bench = BenchObject::load().context("loading the bench object")?;
    let macswap_fd = bench.program("bench_macswap").fd()?.try_clone()?;

    // Packets: at least 64 bytes so the wrapper can restore its head.
    let est = Flow::tcp("192.0.2.10", 40000, "10.100.0.1", 80)
        .ack()
        .payload(80);
    let est_frame = est.frame();
    let new_flow = Flow::tcp("192.0.2.10", 1, "10.100.0.1", 80).payload(80);
    let new_frame = new_flow.frame();
    let aff_flow = Flow::tcp("192.0.3.0", 1, "10.100.0.5", 80).payload(80);
    let aff_frame = aff_flow.frame();
    let drop_frame = Flow::tcp("192.0.2.10", 1, "10.100.0.6", 80)
        .payload(80)
        .frame();
    let rst_frame = Flow::tcp("192.0.2.10", 1, "10.100.0.7", 80)
        .payload(80)
        .frame();
    let nonvip = Flow::tcp("192.0.2.10", 40000, "10.200.0.1", 80)
        .payload(80)
        .frame();
    let tunnelled = pkt::tunnelled(
        &est_frame,
        "172.16.0.1".parse().unwrap(),
        "10.0.0.10".parse().unwrap(),
        [2, 0xbb, 0, 0, 0, 0],
    );
    // Rotation offsets: TCP source port and the last two bytes of the IPv4 source.
    let rotate = Some((14 + 20, 14 + 14));

    // Seed: the established flow exists; the affinity clients the rotation will
    // produce (low 16 bits of the source = counter >> 16) are pinned.
    let (a, _) = balancer_tests::xdp::run(balancer, &est_frame)?;
    ensure!(a == TX, "seeding the established flow: action {a}");
    let ring = lb.ring(&aff)?;
    let info = lb.vip(&aff)?;
    let slot = ring[0];
    let epoch = lb.maps().backends.get(slot).context("backend slot")?.epoch;
    // Five rotating runs per round (calibration, new flow, affinity and
    // the two shed paths) advance the counter by `repeat` each.
    let client_max = ((repeat as u64 * 5 * (rounds as u64 + 1)) >> 16) + 16;
    for c in 0..client_max.min(65_535) {
        // The rotation writes counter >> 16 over the last two address bytes.
        let addr = [192u8, 0, (c >> 8) as u8, c as u8];
        let key = AffinityKey {
            addr: addr_words(IpAddr::from(addr)),
            vip_index: info.index,
        };
        lb.maps_mut().affinity.insert(
            &key,
            &AffinityValue {
                backend: slot,
                epoch,
                expires_ns: u64::MAX / 2,
            },
        )?;
    }

    let mut paths = vec![
        Path {
            name: "xdp_pass (floor)",
            wrapped: false,
            target: None,
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "macswap_tx (baseline)",
            wrapped: false,
            target: None,
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "wrapper+macswap (calibration)",
            wrapped: false,
            target: None,
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "wrapper+macswap rotating (calibration)",
            wrapped: false,
            target: None,
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "non-VIP pass",
            wrapped: false,
            target: Some(1.5),
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "established flow",
            wrapped: true,
            target: Some(3.3),
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "new flow (ring + LRU insert + encap)",
            wrapped: true,
            target: Some(7.0),
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "affinity (new flow, client pinned)",
            wrapped: true,
            target: None,
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "decap",
            wrapped: true,
            target: None,
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "shed new flow: drop",
            wrapped: true,
            target: None,
            wall: vec![],
            kernel: vec![],
        },
        Path {
            name: "shed new flow: RST (XDP_TX)",
            wrapped: true,
            target: None,
            wall: vec![],
            kernel: vec![],
        },
    ];

    let pb = ProgressBar::new((rounds * paths.len()) as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    pb.set_prefix("dataplane");
    for round in 0..rounds {
        for (i, path) in paths.iter_mut().enumerate() {
            pb.set_message(format!("round {} {}", round + 1, path.name));
            if i == 5 {
                // Touch the flow first: the previous round's new flows may have
                // evicted it, as they would any idle connection.
                balancer_tests::xdp::run(balancer, &est_frame)?;
            }
            let before = lb.global_stats()?;
            let before_decap = decap.stats()?;
            let t = match i {
                0 => time(bench.program("bench_pass"), &est_frame, repeat)?,
                1 => time(bench.program("bench_macswap"), &est_frame, repeat)?,
                2 => {
                    bench.wrap(&macswap_fd, &est_frame, None)?;
                    time(bench.program("bench_wrapper"), &est_frame, repeat)?
                }
                3 => {
                    bench.wrap(&macswap_fd, &new_frame, rotate)?;
                    time(bench.program("bench_wrapper"), &new_frame, repeat)?
                }
                4 => time(balancer, &nonvip, repeat)?,
                5 => {
                    bench.wrap(bal_fd, &est_frame, None)?;
                    time(bench.program("bench_wrapper"), &est_frame, repeat)?
                }
                6 => {
                    bench.wrap(bal_fd, &new_frame, rotate)?;
                    time(bench.program("bench_wrapper"), &new_frame, repeat)?
                }
                7 => {
                    bench.wrap(bal_fd, &aff_frame, rotate)?;
                    time(bench.program("bench_wrapper"), &aff_frame, repeat)?
                }
                8 => {
                    bench.wrap(decap_fd, &tunnelled, None)?;
                    time(bench.program("bench_wrapper"), &tunnelled, repeat)?
                }
                9 => {
                    bench.wrap(bal_fd, &drop_frame, rotate)?;
                    time(bench.program("bench_wrapper"), &drop_frame, repeat)?
                }
                _ => {
                    bench.wrap_tail(bal_fd, &rst_frame, rotate)?;
                    time(bench.program("bench_wrapper"), &rst_frame, repeat)?
                }
            };
            let after = lb.global_stats()?;
            let after_decap = decap.stats()?;
            if std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!(
                    "{}: hit +{} miss +{} occupancy {}",
                    path.name,
                    delta(&before, &after, Counter::LruHit),
                    delta(&before, &after, Counter::LruMiss),
                    lb.maps().flows.occupancy().0
                );
            }
            let r = repeat as u64;
            // Proof that the intended path ran on every repeat.
            let (ok, what) = match i {
                0 => (t.action == PASS, "action XDP_PASS".to_string()),
                1..=3 => (t.action == TX, "action XDP_TX".to_string()),
                4 => (
                    delta(&before, &after, Counter::PassNotVip) == r,
                    "pass_not_vip += repeat".into(),
                ),
                5 => (
                    delta(&before, &after, Counter::LruHit) == r
                        && delta(&before, &after, Counter::TxTunnelV4) == r,
                    "lru_hit and tx_tunnel_v4 += repeat".into(),
                ),
                6 => (
                    delta(&before, &after, Counter::LruMiss) == r
                        && delta(&before, &after, Counter::TxTunnelV4) == r,
                    "lru_miss and tx_tunnel_v4 += repeat".into(),
                ),
                7 => (
                    delta(&before, &after, Counter::AffinityHit) == r
                        && delta(&before, &after, Counter::LruMiss) == r,
                    "affinity_hit and lru_miss += repeat".into(),
                ),
                8 => (
                    delta(&before_decap, &after_decap, Counter::DecapOk) == r,
                    "decap_ok += repeat".into(),
                ),
                9 => (
                    t.action == DROP && delta(&before, &after, Counter::DropShed) == r,
                    "action XDP_DROP and drop_shed += repeat".into(),
                ),
                _ => (
                    t.action == TX && delta(&before, &after, Counter::TxShedRst) == r,
                    "action XDP_TX and tx_shed_rst += repeat".into(),
                ),
            };
            ensure!(
                ok,
                "{}: path check failed (expected {what}); action {}, lru_hit +{}, lru_miss +{}, affinity_hit +{}, pass_not_vip +{}",
                path.name,
                t.action,
                delta(&before, &after, Counter::LruHit),
                delta(&before, &after, Counter::LruMiss),
                delta(&before, &after, Counter::AffinityHit),
                delta(&before, &after, Counter::PassNotVip),
            );
            path.wall.push(t.wall_ns);
            path.kernel.push(t.kernel_ns);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();

    // Instruction counts. The new-flow and affinity paths replay flows the
    // kernel has never seen (the affinity client is one the seeding pinned).
    let fresh = Flow::tcp("198.51.100.1", 12345, "10.100.0.1", 80)
        .payload(80)
        .frame();
    let fresh_aff = Flow::tcp("192.0.0.1", 12345, "10.100.0.5", 80)
        .payload(80)
        .frame();
    let fixture = est_frame.clone();
    let replays: [Option<Replay>; 11] = [
        Some((
            objects::BENCH,
            "bench_pass",
            bench.program("bench_pass"),
            &fixture,
        )),
        Some((
            objects::BENCH,
            "bench_macswap",
            bench.program("bench_macswap"),
            &fixture,
        )),
        None,
        None,
        Some((objects::BALANCER, "balancer", balancer, &nonvip)),
        Some((objects::BALANCER, "balancer", balancer, &est_frame)),
        Some((objects::BALANCER, "balancer", balancer, &fresh)),
        Some((objects::BALANCER, "balancer", balancer, &fresh_aff)),
        Some((objects::DECAP, "decap", decap_prog, &tunnelled)),
        Some((objects::BALANCER, "balancer", balancer, &drop_frame)),
        Some((objects::BALANCER, "balancer", balancer, &rst_frame)),
    ];
    let mut counts = Vec::new();
    for (r, p) in replays.iter().zip(&paths) {
        counts.push(match r {
            Some((obj, entry, prog, frame)) => {
                Some(insns::count(obj, entry, prog, frame).with_context(|| p.name.to_string())?)
            }
            None => None,
        });
    }

    // Figures are the kernel's own nanoseconds per run (BPF_PROG_TEST_RUN's
    // duration: time inside the run loop, whole nanoseconds). The wall clock
    // around the syscall is shown too; it also counts time the CPU spent on
    // other work.
    let (swap, _) = min_median(&paths[1].kernel);
    let (cal, _) = min_median(&paths[2].kernel);
    let (cal_rot, _) = min_median(&paths[3].kernel);
    let overhead = (cal - swap).max(0.0);
    let overhead_rot = (cal_rot - swap).max(0.0);

    println!(
        "\nbench dataplane: {rounds} alternating rounds x {repeat} repeats per path, one CPU, \
         BPF_PROG_TEST_RUN; connection table {} sets ({} MiB)",
        opts.flow_sets(),
        (opts.flow_sets() as u64 * 64) >> 20
    );
    println!(
        "wrapper cost subtracted from wrapped paths: {overhead:.0} ns (fixed flow), {overhead_rot:.0} ns (rotating)\n"
    );
    println!(
        "{:<40} {:>8} {:>10} {:>8} {:>10} {:>6} {:>8}  verdict",
        "path", "min ns", "median ns", "wall ns", "x macswap", "insns", "target"
    );
    println!("{}", "-".repeat(105));
    let mut misses = Vec::new();
    for (i, (p, n)) in paths.iter().zip(&counts).enumerate() {
        let insns = n.map(|n| n.to_string()).unwrap_or_default();
        let sub = if !p.wrapped {
            0.0
        } else if matches!(i, 6 | 7 | 9 | 10) {
            overhead_rot
        } else {
            overhead
        };
        let (min, med) = min_median(&p.kernel);
        let (wmin, _) = min_median(&p.wall);
        let (min, med, wmin) = (min - sub, med - sub, wmin - sub);
        let ratio = min / swap;
        let (target, verdict) = match p.target {
            Some(t) if ratio <= t => (format!("<= {t}"), "ok"),
            Some(t) => {
                misses.push(p.name);
                (format!("<= {t}"), "MISSED")
            }
            None => (String::new(), ""),
        };
        println!(
            "{:<40} {:>8.0} {:>10.0} {:>8.1} {:>10.2} {:>6} {:>8}  {}",
            p.name, min, med, wmin, ratio, insns, target, verdict
        );
    }
    if !paths_only {
        lru_flavours(&bench, repeat, cpus)?;
    }
    if !misses.is_empty() {
        println!("\ntargets missed: {}", misses.join(", "));
    }
    Ok(())
}

/// Connection-table design: a miss + insert into a kernel LRU hash with one
/// shared LRU list, with per-CPU lists (`BPF_F_NO_COMMON_LRU`), and into our
/// set-associative table, on one CPU and on every CPU at once, in steady state
/// (tables full, every insert evicts).
fn lru_flavours(bench: &BenchObject, repeat: u32, cpus: usize) -> anyhow::Result<()> {
    let input = Flow::tcp("192.0.2.10", 1, "10.100.0.1", 80)
        .payload(80)
        .frame();
    println!(
        "\nconnection table (miss + insert, ns per insert, 1M-entry class, steady state, min of 3):"
    );
    println!(
        "{:<34} {:>8} {:>22}",
        "design",
        "1 CPU",
        format!("{cpus} CPUs concurrently")
    );
    for (name, label) in [
        ("bench_lru_shared", "kernel LRU hash, shared list"),
        ("bench_lru_percpu", "kernel LRU hash, per-CPU lists"),
        ("bench_table", "set-associative table (ours)"),
    ] {
        let prog = bench.program(name);
        // Fill the table first so every measured insert evicts.
        time(prog, &input, 1 << 21)?;
        let mut single = f64::MAX;
        let mut multi = f64::MAX;
        for _ in 0..3 {
            single = single.min(time(prog, &input, repeat)?.wall_ns);
            let results: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..cpus)
                    .map(|cpu| {
                        let input = &input;
                        s.spawn(move || -> anyhow::Result<f64> {
                            pin_to_cpu(cpu)?;
                            Ok(time(prog, input, repeat)?.wall_ns)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("thread"))
                    .collect::<anyhow::Result<Vec<_>>>()
            })?;
            let worst = results.iter().cloned().fold(0.0, f64::max);
            multi = multi.min(worst);
        }
        println!("{label:<34} {single:>8.1} {multi:>22.1}");
    }
    Ok(())
}
