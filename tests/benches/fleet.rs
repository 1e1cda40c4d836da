//! `cargo xtask bench fleet`: real LLM traffic replayed open-loop on an
//! emulated heterogeneous fleet, through each balancing strategy, on the
//! same arrivals.
//!
//! Options: `--scenario FILE` (repeatable; default every
//! `tests/scenarios/*.toml`), `--strategies a,b` (default all),
//! `--quick` (each run cut to 3 s of small requests: a smoke test of the
//! harness), `--out DIR` (default the workspace's `target/fleet`: one JSON
//! file per scenario), `--check [--check-requests N]` (first measure mean
//! waits against Erlang C and Pollaczek-Khinchine; alone, only that),
//! `--repeat N` (runs per strategy; prints how far their p99s lie apart,
//! and the table pools their requests).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use balancer_tests::fleet::{
    check, plan, plot, report,
    run::{self, Strategy},
    scenario::Scenario,
};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// `bench fleet`'s options.
#[derive(Parser)]
#[command(about = "Replays LLM traces on an emulated fleet through each balancing strategy")]
struct Args {
    /// A scenario file (repeatable); default: every tests/scenarios/*.toml.
    #[arg(long = "scenario", value_name = "FILE")]
    scenarios: Vec<PathBuf>,
    /// Strategies to compare, in order (the first is the ratios' base).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round-robin,least-request,random,aware,xdp-static,xdp-telemetry"
    )]
    strategies: Vec<String>,
    /// Run the strategies at once, each on its own fleet, from one start
    /// time (the same arrivals at the same instants; the machine's load is
    /// printed, so a reader can see it never was the bottleneck).
    #[arg(long)]
    parallel: bool,
    /// Cut each run to 3 s of small requests: checks the harness, measures
    /// nothing.
    #[arg(long)]
    quick: bool,
    /// First check the instrument: Poisson runs whose mean wait queueing
    /// theory knows (Erlang C, Pollaczek-Khinchine); exits 1 if the measured
    /// wait is 10% from the FIFO wait of the sample that ran.
    /// Alone, without --scenario, only the checks run.
    #[arg(long)]
    check: bool,
    /// Requests per check run.
    #[arg(long, default_value_t = 12_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    check_requests: u64,
    /// Where the JSON results go (default: the workspace's target/fleet).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Runs of each strategy: with 2 or more, the bench prints how far the
    /// runs' p99s lie apart (the table shows the first run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10))]
    repeat: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn scenario_files(args: &Args) -> Result<Vec<PathBuf>> {
    if !args.scenarios.is_empty() {
        return Ok(args.scenarios.clone());
    }
    let dir = balancer_tests::scenarios_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no scenario in {}", dir.display());
    }
    Ok(files)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let strategies: Vec<Strategy> = args
        .strategies
        .iter()
        .map(|s| Strategy::parse(s))
        .collect::<Result<_>>()?;
    // `--check` alone checks the instrument and nothing else.
    let files = if args.check && args.scenarios.is_empty() {
        Vec::new()
    } else {
        scenario_files(&args)?
    };
    // Every file is checked before anything runs.
    let mut scenarios = Vec::new();
    for f in &files {
        let mut s = Scenario::load(f)?;
        if args.quick {
            s = s.quick();
        }
        scenarios.push(s);
    }
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                tests
                    .parent()
                    .map_or(tests.clone(), |w| w.to_path_buf())
                    .join("target")
            })
            .join("fleet")
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "bench fleet: {} scenarios x {} strategies{}\n",
        scenarios.len(),
        strategies.len(),
        if args.quick {
            " (quick: 3 s each, not a measurement)"
        } else {
            ""
        }
    );
    if args.check {
        let bar = ProgressBar::new_spinner();
        bar.set_message("checking the instrument against queueing theory");
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let checks = rt.block_on(check::run_checks(args.check_requests as usize, 0.6, &bar))?;
        bar.finish_and_clear();
        let mut rows = vec![
            [
                "check",
                "requests",
                "service (configured)",
                "mean wait",
                "theory",
                "ratio",
                "FIFO on the sample",
                "ratio",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for c in &checks {
            rows.push(vec![
                c.name.clone(),
                c.requests.to_string(),
                format!(
                    "{:.1} ms ({:.1})",
                    c.service_s * 1e3,
                    c.configured_service_s * 1e3
                ),
                format!("{:.1} ms", c.measured_s * 1e3),
                format!("{:.1} ms", c.theory_s * 1e3),
                format!("{:.3}", c.ratio()),
                format!("{:.1} ms", c.sample_s * 1e3),
                format!("{:.3}", c.sample_ratio()),
            ]);
        }
        println!("{}", report::aligned(&rows));
        for c in &checks {
            let nodes: Vec<String> = c
                .nodes
                .iter()
                .map(|(n, busy)| format!("{n} requests, busy {:.0}%", 100.0 * busy))
                .collect();
            println!("  {}: {}", c.name, nodes.join("; "));
        }
        let off = |r: f64| (r - 1.0).abs() > 0.10;
        for c in checks
            .iter()
            .filter(|c| off(c.ratio()) && !off(c.sample_ratio()))
        {
            println!(
                "  note: {} sits {:.3} of theory but {:.3} of its own sample's FIFO wait: the sample, not the instrument, is off (queue waits average slowly; more --check-requests narrows it)",
                c.name,
                c.ratio(),
                c.sample_ratio()
            );
        }
        if let Some(c) = checks.iter().find(|c| off(c.sample_ratio())) {
            bail!(
                "the instrument is off: {} measured {:.3} of the FIFO wait its own sample implies ({:.3} of theory)",
                c.name,
                c.sample_ratio(),
                c.ratio()
            );
        }
    }
    for s in &scenarios {
        let plan = plan::plan(s)?;
        // runs[strategy][repeat]
        let mut runs: Vec<Vec<run::Run>> = vec![Vec::new(); strategies.len()];
        let bars = MultiProgress::new();
        for k in 0..args.repeat {
            let mut made = Vec::new();
            for st in &strategies {
                let bar = bars.add(ProgressBar::new(plan.requests.len() as u64));
                bar.set_style(
                    ProgressStyle::with_template("{msg:40} {bar:30} {pos}/{len} {elapsed}")
                        .context("style")?,
                );
                bar.set_message(format!(
                    "{} / {} ({}/{})",
                    s.name,
                    st.name(),
                    k + 1,
                    args.repeat
                ));
                made.push(bar);
            }
            if args.parallel {
                let done = rt.block_on(async {
                    let mut ready = Vec::new();
                    for st in &strategies {
                        ready.push(run::prepare(s, *st).await?);
                    }
                    let t0 = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
                    let sends = ready
                        .into_iter()
                        .zip(&made)
                        .map(|(p, bar)| p.send(s, &plan, t0, bar));
                    futures_util::future::join_all(sends)
                        .await
                        .into_iter()
                        .collect::<Result<Vec<_>>>()
                })?;
                for (i, r) in done.into_iter().enumerate() {
                    runs[i].push(r);
                }
            } else {
                for (i, st) in strategies.iter().enumerate() {
                    runs[i].push(rt.block_on(run::run(s, &plan, *st, &made[i]))?);
                }
            }
            for b in made {
                b.finish_and_clear();
            }
        }
        let mut all = Vec::new();
        let mut each = Vec::new();
        for r in &runs {
            let figures: Vec<_> = r.iter().map(|r| report::figures(s, &plan, r)).collect();
            if figures.len() > 1 {
                println!("  {}", report::spread(&figures));
            }
            let pooled = report::pool(r).context("a strategy without a run")?;
            all.push(report::figures(s, &plan, &pooled));
            each.push(figures);
        }
        if args.repeat > 1 {
            println!(
                "  the table pools the {} runs' requests: quantiles over all of them",
                args.repeat
            );
        }
        println!("{}", report::table(s, &plan, &all));
        if args.parallel {
            println!("  strategies ran at once, on their own fleets, from one start time");
        }
        for f in &all {
            let cores = f.cpu_s / f.makespan_s.max(1e-9);
            println!(
                "  {}: the machine was busy {:.1} CPU-s during the run, {:.2} of {} cores; per node: {}",
                f.strategy,
                f.cpu_s,
                cores,
                f.cores,
                f.nodes
                    .iter()
                    .map(|n| format!("{} {}", n.node, n.requests))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for e in &f.errors {
                println!("    error: {e}");
            }
        }
        let file = out.join(format!("{}.json", slug(&s.name)));
        let json = serde_json::json!({
            "scenario": s.name,
            "requests": plan.requests.len(),
            "duration_s": s.duration_s,
            "peak_to_average": {"target": s.shape.peak_to_average, "achieved": plan.achieved_par},
            "compression": plan.compression,
            "quick": args.quick,
            "strategies": all,
            "runs": if args.repeat > 1 { serde_json::json!(each) } else { serde_json::Value::Null },
        });
        std::fs::write(&file, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", file.display()))?;
        println!("  results: {}", file.display());
        let first: Vec<run::Run> = runs.iter().filter_map(|r| r.first().cloned()).collect();
        for png in plot::write(&out, &slug(&s.name), s, &plan, &first)? {
            println!("  plot: {}", png.display());
        }
        println!();
    }
    Ok(())
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}
