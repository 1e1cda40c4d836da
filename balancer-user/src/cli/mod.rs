//! The command line. Everything but `run`, `detach` and `config check` talks to
//! a running daemon through [`balancer::api::client`].

mod table;

use std::{
    collections::HashMap,
    io::Write,
    net::IpAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use balancer::{
    api::{AddBackend, StatsReply, client::Client},
    config::{Config, DEFAULT_SOCKET},
    dataplane::{AttachMode, Dataplane, default_pin_dir},
    lb::{MAX_AFFINITY_SECS, MAX_WEIGHT, Mode, VipId, VipSpec},
    net::MacAddr,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use table::{Align, human, render};

#[derive(Parser)]
#[command(
    name = "balancer",
    version,
    about = "XDP load balancer for AI inference fleets"
)]
struct Cli {
    /// Admin socket of the daemon.
    #[arg(long, global = true, env = "BALANCER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned tables for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: attach (or adopt) the data plane and serve the admin API.
    Run(RunArgs),
    /// Remove the data plane from an interface (traffic stops being balanced).
    Detach(DetachArgs),
    /// Manage VIPs.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Manage backends.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Daemon and data-plane status, with down backends and why.
    Status,
    /// Live traffic per VIP and backend, refreshed like top.
    Stats {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
        /// Print once and exit (rates are measured over one interval).
        #[arg(long)]
        once: bool,
    },
    /// Telemetry-driven weights: signals, load, score, weight, and why.
    Weights {
        /// Show every signal and the reasoning per backend.
        #[arg(long)]
        explain: bool,
    },
    /// Run the exporter on a backend host: CPU, memory, network from /proc,
    /// GPUs through NVML when present (Prometheus format).
    Agent {
        /// Address to serve /metrics on.
        #[arg(long, default_value = "0.0.0.0:9101")]
        listen: std::net::SocketAddr,
        /// Print one scrape to stdout and exit.
        #[arg(long)]
        once: bool,
    },
    /// The inference result cache.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Hits, misses, bytes, evictions, GPU-seconds saved, L2 state, versions.
    Stats,
    /// Remove entries of a model here, in Redis and on every other gateway.
    Invalidate {
        /// The model.
        #[arg(long)]
        model: String,
        /// Only this entry (the `x-cache-key` response header).
        #[arg(long, conflicts_with = "prefix")]
        key: Option<String>,
        /// Only entries whose prompt text starts with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Give a model a new version: all its cached results become unreachable.
    BumpVersion {
        /// The model.
        model: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// Override `daemon.iface`.
    #[arg(long)]
    iface: Option<String>,
    /// Override `daemon.xdp_mode`.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeArg>,
    /// Override `daemon.netns`.
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    /// Native mode, falling back to generic.
    Driver,
    /// Generic (skb) mode.
    Generic,
}

#[derive(Args)]
struct DetachArgs {
    /// Take the interface and pin directory from this configuration.
    #[arg(long, short, conflicts_with_all = ["iface", "pin_dir"])]
    config: Option<PathBuf>,
    /// Interface.
    #[arg(long)]
    iface: Option<String>,
    /// Network namespace of the interface.
    #[arg(long)]
    netns: Option<String>,
    /// Pin directory.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum VipCmd {
    /// Add a VIP (its pool starts empty; its traffic is dropped until a backend is added).
    Add {
        /// ADDR:PORT[/tcp|udp]; PORT * or 0 for all ports; IPv6 in brackets.
        vip: VipId,
        /// Forwarding mode.
        #[arg(long, default_value = "tunnel")]
        mode: Mode,
        /// Client affinity: keep each client on one backend for this many seconds.
        #[arg(long, value_parser = parse_affinity)]
        affinity: Option<u32>,
    },
    /// Remove a VIP and its pool.
    Rm {
        /// The VIP.
        vip: VipId,
    },
    /// List VIPs.
    List,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Add a backend to a VIP's pool.
    Add {
        /// The VIP.
        vip: VipId,
        /// Backend address.
        addr: IpAddr,
        /// Weight.
        #[arg(long, default_value_t = 1, value_parser = parse_weight)]
        weight: u32,
        /// Static next-hop MAC (default: resolved from the neighbour table).
        #[arg(long)]
        mac: Option<MacAddr>,
    },
    /// Remove a backend; its connections move to the others.
    Rm {
        /// The VIP.
        vip: VipId,
        /// Backend address.
        addr: IpAddr,
    },
    /// Stop sending new connections; established ones stay.
    Drain {
        /// The VIP.
        vip: VipId,
        /// Backend address.
        addr: IpAddr,
    },
    /// Undo drain.
    Undrain {
        /// The VIP.
        vip: VipId,
        /// Backend address.
        addr: IpAddr,
    },
    /// Change a weight.
    SetWeight {
        /// The VIP.
        vip: VipId,
        /// Backend address.
        addr: IpAddr,
        /// New weight (0 drains).
        #[arg(value_parser = parse_weight)]
        weight: u32,
    },
    /// List backends (of one VIP, or all).
    List {
        /// Only this VIP.
        vip: Option<VipId>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file without touching anything.
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn parse_weight(s: &str) -> Result<u32, String> {
    let w: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number; use 0 to {MAX_WEIGHT}"))?;
    if w > MAX_WEIGHT {
        return Err(format!("{w} is too large; use 0 to {MAX_WEIGHT}"));
    }
    Ok(w)
}

fn parse_affinity(s: &str) -> Result<u32, String> {
    let t: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds; use 1 to {MAX_AFFINITY_SECS}"))?;
    if t == 0 || t > MAX_AFFINITY_SECS {
        return Err(format!("use 1 to {MAX_AFFINITY_SECS} seconds"));
    }
    Ok(t)
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: use seconds between 0.1 and 3600")),
    }
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run_daemon(args),
        Cmd::Detach(args) => detach(args),
        Cmd::Config(ConfigCmd::Check { file }) => config_check(&file, cli.output),
        Cmd::Agent { listen, once } => agent(listen, once),
        cmd => client_cmd(cmd, Client::new(&cli.socket), cli.output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BALANCER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_daemon(args: RunArgs) -> Result<()> {
    init_tracing();
    let mut cfg = Config::load(&args.config)?;
    let mut repin = false;
    if let Some(i) = args.iface {
        cfg.daemon.iface = Some(i);
        repin = true;
    }
    if let Some(ns) = args.netns {
        cfg.daemon.netns = Some(ns);
        repin = true;
    }
    if repin {
        cfg.daemon.pin_dir = default_pin_dir(
            cfg.daemon.iface.as_deref().unwrap_or("none"),
            cfg.daemon.netns.as_deref(),
        );
    }
    if let Some(m) = args.xdp_mode {
        cfg.daemon.xdp_mode = match m {
            XdpModeArg::Driver => AttachMode::Driver,
            XdpModeArg::Generic => AttachMode::Generic,
        };
    }
    balancer::daemon::run(cfg)
}

fn detach(args: DetachArgs) -> Result<()> {
    let dir = match (args.config, args.pin_dir, args.iface) {
        (Some(c), _, _) => {
            let cfg = Config::load(&c)?;
            if cfg.daemon.iface.is_none() {
                bail!("{} configures no data plane (no daemon.iface)", c.display());
            }
            cfg.daemon.pin_dir
        }
        (None, Some(d), _) => d,
        (None, None, Some(i)) => default_pin_dir(&i, args.netns.as_deref()),
        _ => bail!(
            "say which data plane: --config FILE, --iface IFACE [--netns NS] or --pin-dir DIR"
        ),
    };
    if !dir.join("link").exists() {
        bail!(
            "no balancer is attached there ({} has no pinned link)",
            dir.display()
        );
    }
    Dataplane::detach(&dir)?;
    println!("detached ({} removed)", dir.display());
    Ok(())
}

fn agent(listen: std::net::SocketAddr, once: bool) -> Result<()> {
    init_tracing();
    if once {
        let nvml = balancer::agent::nvml::Nvml::load();
        print!("{}", balancer::agent::render(nvml.as_ref())?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(balancer::agent::serve(listen))
        .with_context(|| format!("serving on {listen}"))
}

fn config_check(file: &std::path::Path, output: Output) -> Result<()> {
    let cfg = Config::load(file)?;
    let backends: usize = cfg.initial.vips.iter().map(|v| v.backends.len()).sum();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"ok": true, "vips": cfg.initial.vips.len(), "backends": backends, "cache_routes": cfg.cache_routes.len()})
        ),
        Output::Table => println!(
            "{}: ok ({} VIPs, {backends} backends, {} cache routes, {})",
            file.display(),
            cfg.initial.vips.len(),
            cfg.cache_routes.len(),
            match &cfg.daemon.iface {
                Some(i) => format!("interface {i}"),
                None => "no data plane (cache only)".into(),
            }
        ),
    }
    Ok(())
}

async fn cache_cmd(c: CacheCmd, client: &Client, output: Output) -> Result<()> {
    match c {
        CacheCmd::Stats => {
            let s = client.cache_stats().await?;
            if output == Output::Json {
                return print_json(&s);
            }
            let served = s.hits + s.hits_l2;
            let lookups = served + s.misses + s.coalesced;
            let pct = |n: u64| {
                if lookups == 0 {
                    "-".to_string()
                } else {
                    format!("{:.1}%", 100.0 * n as f64 / lookups as f64)
                }
            };
            let rows = vec![
                vec!["hits (L1)".into(), s.hits.to_string(), pct(s.hits)],
                vec!["hits (L2)".into(), s.hits_l2.to_string(), pct(s.hits_l2)],
                vec!["misses".into(), s.misses.to_string(), pct(s.misses)],
                vec![
                    "coalesced".into(),
                    s.coalesced.to_string(),
                    pct(s.coalesced),
                ],
                vec!["bypasses".into(), s.bypasses.to_string(), String::new()],
                vec![
                    "413 too large".into(),
                    s.too_large.to_string(),
                    String::new(),
                ],
                vec![
                    "not cacheable".into(),
                    s.uncacheable.to_string(),
                    String::new(),
                ],
                vec![
                    "backend errors".into(),
                    s.backend_errors.to_string(),
                    String::new(),
                ],
                vec!["stored".into(), s.stored.to_string(), String::new()],
                vec![
                    "refused (admission)".into(),
                    s.rejected.to_string(),
                    String::new(),
                ],
                vec!["evicted".into(), s.evictions.to_string(), String::new()],
                vec![
                    "invalidated".into(),
                    s.invalidated.to_string(),
                    String::new(),
                ],
                vec![
                    "bytes served".into(),
                    human(s.bytes_served as f64),
                    String::new(),
                ],
                vec![
                    "GPU-seconds saved".into(),
                    format!("{:.3}", s.gpu_seconds_saved),
                    String::new(),
                ],
                vec![
                    "L1 entries / bytes".into(),
                    format!("{} / {}", s.entries, human(s.bytes as f64)),
                    format!(
                        "{:.1}% of {}",
                        100.0 * s.bytes as f64 / s.budget.max(1) as f64,
                        human(s.budget as f64)
                    ),
                ],
            ];
            print!(
                "{}",
                render(
                    &[
                        ("", Align::Left),
                        ("count", Align::Right),
                        ("share", Align::Right)
                    ],
                    &rows
                )
            );
            match &s.l2 {
                Some(l) => println!(
                    "L2 {} {} (connects {}, errors {}, queued invalidations {})",
                    l.url,
                    if l.up { "up" } else { "DOWN: L1 only" },
                    l.connects,
                    l.errors,
                    l.pending
                ),
                None => println!("L2 none"),
            }
            for (m, v) in &s.versions {
                println!("model {m}: version {:?}", v);
            }
            Ok(())
        }
        CacheCmd::Invalidate { model, key, prefix } => {
            let r = client
                .cache_invalidate(&balancer::api::InvalidateBody { model, key, prefix })
                .await?;
            if output == Output::Json {
                return print_json(&r);
            }
            println!(
                "removed {} here, {} from Redis; {}",
                r.l1_removed,
                r.l2_removed,
                if r.broadcast {
                    "other gateways told"
                } else {
                    "Redis is down: queued for the other gateways"
                }
            );
            Ok(())
        }
        CacheCmd::BumpVersion { model } => {
            let r = client.cache_bump(&model).await?;
            if output == Output::Json {
                return print_json(&r);
            }
            println!(
                "{model} is now version {:?}; {} old entries purged here; {}",
                r.version,
                r.l1_removed,
                if r.broadcast {
                    "other gateways told"
                } else {
                    "Redis is down: queued for the other gateways"
                }
            );
            Ok(())
        }
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn client_cmd(cmd: Cmd, client: Client, output: Output) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let done = |what: String| -> Result<()> {
            match output {
                Output::Json => println!("{}", serde_json::json!({"ok": true})),
                Output::Table => println!("{what}"),
            }
            Ok(())
        };
        match cmd {
            Cmd::Vip(VipCmd::Add {
                vip,
                mode,
                affinity,
            }) => {
                client
                    .add_vip(&VipSpec {
                        id: vip,
                        mode,
                        affinity_secs: affinity,
                    })
                    .await?;
                done(format!("added VIP {vip}"))
            }
            Cmd::Vip(VipCmd::Rm { vip }) => {
                client.remove_vip(&vip).await?;
                done(format!("removed VIP {vip}"))
            }
            Cmd::Vip(VipCmd::List) => {
                let vips = client.vips().await?;
                if output == Output::Json {
                    return print_json(&vips);
                }
                let rows: Vec<Vec<String>> = vips
                    .iter()
                    .map(|v| {
                        vec![
                            v.spec.id.to_string(),
                            v.spec.mode.to_string(),
                            v.spec
                                .affinity_secs
                                .map(|s| format!("{s}s"))
                                .unwrap_or_else(|| "-".into()),
                            v.backends.len().to_string(),
                            v.backends
                                .iter()
                                .filter(|b| b.effective_weight > 0)
                                .count()
                                .to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &[
                            ("VIP", Align::Left),
                            ("MODE", Align::Left),
                            ("AFFINITY", Align::Right),
                            ("BACKENDS", Align::Right),
                            ("IN RING", Align::Right),
                        ],
                        &rows
                    )
                );
                Ok(())
            }
            Cmd::Backend(b) => backend_cmd(b, &client, output).await,
            Cmd::Status => {
                let s = client.status().await?;
                if output == Output::Json {
                    return print_json(&s);
                }
                println!(
                    "balancer {} on {}{}",
                    s.version,
                    s.iface.as_deref().unwrap_or("no interface (cache only)"),
                    s.netns.map(|n| format!(" (netns {n})")).unwrap_or_default()
                );
                for r in &s.cache_routes {
                    println!("  cache route {r}");
                }
                if s.iface.is_none() {
                    println!("  uptime      {}s", s.uptime_secs);
                    return Ok(());
                }
                println!(
                    "  data plane  {} ({}), pins {}",
                    if s.adopted { "adopted" } else { "attached" },
                    s.xdp_mode.unwrap_or_else(|| "mode unknown: adopted".into()),
                    s.pin_dir
                );
                println!("  uptime      {}s", s.uptime_secs);
                println!("  ring size   {}", s.ring_size);
                println!(
                    "  flow table  {} live of {} entries",
                    s.flow_table.1, s.flow_table.0
                );
                println!("  VIPs        {}, backends {}", s.vips, s.backends);
                if s.down.is_empty() {
                    println!("  down        none");
                } else {
                    println!("  down:");
                    for d in s.down {
                        println!("    {} {}: {}", d.vip, d.addr, d.reason);
                    }
                }
                Ok(())
            }
            Cmd::Stats { interval, once } => stats_loop(&client, output, interval, once).await,
            Cmd::Weights { explain } => weights(&client, output, explain).await,
            Cmd::Cache(c) => cache_cmd(c, &client, output).await,
            Cmd::Run(_) | Cmd::Detach(_) | Cmd::Config(_) | Cmd::Agent { .. } => {
                unreachable!("handled before")
            }
        }
    })
}

async fn backend_cmd(cmd: BackendCmd, client: &Client, output: Output) -> Result<()> {
    let done = |what: String| {
        match output {
            Output::Json => println!("{}", serde_json::json!({"ok": true})),
            Output::Table => println!("{what}"),
        }
        Ok(())
    };
    match cmd {
        BackendCmd::Add {
            vip,
            addr,
            weight,
            mac,
        } => {
            client
                .add_backend(&vip, &AddBackend { addr, weight, mac })
                .await?;
            done(format!("added {addr} (weight {weight}) to {vip}"))
        }
        BackendCmd::Rm { vip, addr } => {
            client.remove_backend(&vip, addr).await?;
            done(format!("removed {addr} from {vip}"))
        }
        BackendCmd::Drain { vip, addr } => {
            client.drain(&vip, addr, true).await?;
            done(format!(
                "draining {addr} in {vip}: established connections stay, new ones go elsewhere"
            ))
        }
        BackendCmd::Undrain { vip, addr } => {
            client.drain(&vip, addr, false).await?;
            done(format!("{addr} in {vip} takes new connections again"))
        }
        BackendCmd::SetWeight { vip, addr, weight } => {
            client.set_weight(&vip, addr, weight).await?;
            done(format!("{addr} in {vip}: weight {weight}"))
        }
        BackendCmd::List { vip } => {
            let mut vips = client.vips().await?;
            if let Some(v) = vip {
                vips.retain(|x| x.spec.id == v);
                if vips.is_empty() {
                    bail!("no VIP {v}; `balancer vip list` shows the configured ones");
                }
            }
            if output == Output::Json {
                return print_json(&vips);
            }
            let mut rows = Vec::new();
            for v in &vips {
                let m = v.backends.iter().map(|b| b.ring_slots).sum::<u64>().max(1);
                for b in &v.backends {
                    rows.push(vec![
                        v.spec.id.to_string(),
                        b.addr.to_string(),
                        b.weight.to_string(),
                        b.effective_weight.to_string(),
                        format!("{:.1}%", b.ring_slots as f64 * 100.0 / m as f64),
                        b.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                        if b.drained {
                            "drained".into()
                        } else {
                            b.down
                                .clone()
                                .map(|r| format!("down: {r}"))
                                .unwrap_or_else(|| "up".into())
                        },
                    ]);
                }
            }
            print!(
                "{}",
                render(
                    &[
                        ("VIP", Align::Left),
                        ("BACKEND", Align::Left),
                        ("WEIGHT", Align::Right),
                        ("IN RING", Align::Right),
                        ("SHARE", Align::Right),
                        ("NEXT HOP", Align::Left),
                        ("STATE", Align::Left),
                    ],
                    &rows
                )
            );
            Ok(())
        }
    }
}

async fn weights(client: &Client, output: Output, explain: bool) -> Result<()> {
    let w = client.weights().await?;
    if output == Output::Json {
        return print_json(&w);
    }
    if w.pools.is_empty() {
        println!("no pool has telemetry (add a [vip.telemetry] table to the configuration)");
        return Ok(());
    }
    let f = |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
    for p in &w.pools {
        println!(
            "{}{}",
            p.vip,
            p.warning
                .as_ref()
                .map(|x| format!("  !! {x}"))
                .unwrap_or_default()
        );
        let rows: Vec<Vec<String>> = p
            .decisions
            .iter()
            .map(|d| {
                let s = d.signals.clone().unwrap_or_default();
                vec![
                    d.addr.to_string(),
                    d.weight.to_string(),
                    format!("{:.2}", d.load),
                    format!("{:.2}", d.capacity),
                    f(s.queue_waiting, 0),
                    f(s.requests_running, 0),
                    f(s.kv_cache, 2),
                    f(s.gpu_util, 2),
                    f(s.cpu, 2),
                    f(s.ttft_p95_s.map(|t| t * 1e3), 0),
                    f(s.tokens_per_s, 0),
                    if d.down.is_some() {
                        "down".into()
                    } else {
                        "up".into()
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            render(
                &[
                    ("BACKEND", Align::Left),
                    ("WEIGHT", Align::Right),
                    ("LOAD", Align::Right),
                    ("CAPACITY", Align::Right),
                    ("QUEUE", Align::Right),
                    ("RUNNING", Align::Right),
                    ("KV", Align::Right),
                    ("GPU", Align::Right),
                    ("CPU", Align::Right),
                    ("TTFT P95 MS", Align::Right),
                    ("TOK/S", Align::Right),
                    ("STATE", Align::Left),
                ],
                &rows
            )
        );
        if explain {
            for d in &p.decisions {
                println!("  {}: {}", d.addr, d.why);
                for c in &d.components {
                    println!("      {:<9} {:.3} x {:.2}", c.name, c.value, c.weight);
                }
            }
        }
        println!();
    }
    println!(
        "last cycle: scrape + score {:.1} ms, apply {:.1} ms",
        w.cycle_ms, w.apply_ms
    );
    Ok(())
}

type Key = (String, String);

fn rates(prev: Option<&StatsReply>, cur: &StatsReply) -> HashMap<Key, (f64, f64, f64)> {
    let mut out = HashMap::new();
    let Some(p) = prev else { return out };
    let dt = (cur.at_ms.saturating_sub(p.at_ms)) as f64 / 1000.0;
    if dt <= 0.0 {
        return out;
    }
    let mut old = HashMap::new();
    for v in &p.vips {
        old.insert(
            (v.vip.to_string(), String::new()),
            (v.packets, v.bytes, v.new_flows),
        );
        for b in &v.backends {
            old.insert(
                (v.vip.to_string(), b.addr.to_string()),
                (b.packets, b.bytes, b.new_flows),
            );
        }
    }
    let mut put = |k: Key, n: (u64, u64, u64)| {
        if let Some(o) = old.get(&k) {
            out.insert(
                k,
                (
                    n.0.saturating_sub(o.0) as f64 / dt,
                    n.1.saturating_sub(o.1) as f64 * 8.0 / dt,
                    n.2.saturating_sub(o.2) as f64 / dt,
                ),
            );
        }
    };
    for v in &cur.vips {
        put(
            (v.vip.to_string(), String::new()),
            (v.packets, v.bytes, v.new_flows),
        );
        for b in &v.backends {
            put(
                (v.vip.to_string(), b.addr.to_string()),
                (b.packets, b.bytes, b.new_flows),
            );
        }
    }
    out
}

fn stats_table(cur: &StatsReply, r: &HashMap<Key, (f64, f64, f64)>) -> String {
    let mut rows = Vec::new();
    for v in &cur.vips {
        let vk = (v.vip.to_string(), String::new());
        let (pps, bps, nfs) = r.get(&vk).copied().unwrap_or_default();
        rows.push(vec![
            v.vip.to_string(),
            String::new(),
            String::new(),
            String::new(),
            human(pps),
            human(bps),
            human(nfs),
            human(v.packets as f64),
            human(v.new_flows as f64),
            String::new(),
        ]);
        let total_new: u64 = v.backends.iter().map(|b| b.new_flows).sum::<u64>().max(1);
        for b in &v.backends {
            let bk = (v.vip.to_string(), b.addr.to_string());
            let (pps, bps, nfs) = r.get(&bk).copied().unwrap_or_default();
            rows.push(vec![
                String::new(),
                b.addr.to_string(),
                format!("{}/{}", b.effective_weight, b.weight),
                format!("{:.1}%", b.new_flows as f64 * 100.0 / total_new as f64),
                human(pps),
                human(bps),
                human(nfs),
                human(b.packets as f64),
                human(b.new_flows as f64),
                b.down.clone().unwrap_or_default(),
            ]);
        }
    }
    render(
        &[
            ("VIP", Align::Left),
            ("BACKEND", Align::Left),
            ("WEIGHT", Align::Right),
            ("FLOW SHARE", Align::Right),
            ("PKT/S", Align::Right),
            ("BIT/S", Align::Right),
            ("FLOWS/S", Align::Right),
            ("PACKETS", Align::Right),
            ("FLOWS", Align::Right),
            ("DOWN", Align::Left),
        ],
        &rows,
    )
}

async fn stats_loop(client: &Client, output: Output, interval: f64, once: bool) -> Result<()> {
    let interval = Duration::from_secs_f64(interval);
    let mut prev: Option<StatsReply> = None;
    let started = Instant::now();
    loop {
        let cur = client.stats().await.context("reading stats")?;
        if once && prev.is_none() && output == Output::Table {
            // One interval to measure rates over.
            prev = Some(cur);
            tokio::time::sleep(interval).await;
            continue;
        }
        match output {
            Output::Json => println!("{}", serde_json::to_string(&cur)?),
            Output::Table => {
                let r = rates(prev.as_ref(), &cur);
                let mut out = String::new();
                if !once {
                    // Like top: redraw in place.
                    out.push_str("\x1b[2J\x1b[H");
                    out.push_str(&format!(
                        "balancer stats: every {:.1}s, {:.0}s elapsed (Ctrl-C quits)\n\n",
                        interval.as_secs_f64(),
                        started.elapsed().as_secs_f64()
                    ));
                }
                out.push_str(&stats_table(&cur, &r));
                let interesting: Vec<String> = cur
                    .global
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                out.push_str(&format!("\ndata path: {}\n", interesting.join(" ")));
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(out.as_bytes())?;
                stdout.flush()?;
            }
        }
        if once {
            return Ok(());
        }
        prev = Some(cur);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
