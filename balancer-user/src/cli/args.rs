//! The command line's clap types and value parsers, nothing else.
//!
//! Commands are split by where they run: [`LocalCmd`] without a daemon,
//! [`DaemonCmd`] through its admin API. [`Cmd`] flattens both into one list;
//! `display_order` keeps the help listing in the order users know.

use std::{net::IpAddr, path::PathBuf};

use balancer::{
    config::DEFAULT_SOCKET,
    lb::{MAX_AFFINITY_SECS, MAX_WEIGHT, Mode, Refusal, VipId, validate_affinity, validate_weight},
    net::MacAddr,
    route::tier::Tier,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The whole command line.
#[derive(Parser)]
#[command(
    name = "balancer",
    version,
    about = "XDP load balancer for AI inference fleets"
)]
pub struct Cli {
    /// Admin socket of the daemon.
    #[arg(long, global = true, env = "BALANCER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Output format.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Output {
    /// Aligned tables for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Every command: the two kinds side by side at the same level.
#[derive(Subcommand)]
pub enum Cmd {
    /// Commands that need no daemon.
    #[command(flatten)]
    Local(LocalCmd),
    /// Commands answered by the daemon.
    #[command(flatten)]
    Daemon(DaemonCmd),
}

/// Commands that run without a daemon.
#[derive(Subcommand)]
pub enum LocalCmd {
    /// Run the daemon: attach (or adopt) the data plane and serve the admin API.
    #[command(display_order = 0)]
    Run(RunArgs),
    /// Remove the data plane from an interface (traffic stops being balanced).
    #[command(display_order = 1)]
    Detach(DetachArgs),
    /// Run the exporter on a backend host: CPU, memory, network from /proc,
    /// GPUs through NVML when present (Prometheus format).
    #[command(display_order = 7)]
    Agent {
        /// Address to serve /metrics on.
        #[arg(long, default_value = "0.0.0.0:9101")]
        listen: std::net::SocketAddr,
        /// Print one scrape to stdout and exit.
        #[arg(long)]
        once: bool,
    },
    /// Emulate an inference server (OpenAI API, vLLM metrics) on a
    /// hardware class from a profile file: batching, KV cache, prefix cache.
    #[command(display_order = 10)]
    Emulate(EmulateArgs),
    /// Configuration files.
    #[command(subcommand, display_order = 9)]
    Config(ConfigCmd),
}

/// `balancer emulate`'s options.
#[derive(clap::Args)]
pub struct EmulateArgs {
    /// Profile file with the hardware classes (`[[class]]` tables).
    #[arg(long)]
    pub profile: std::path::PathBuf,
    /// The class to emulate, by name.
    #[arg(long)]
    pub class: String,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: std::net::SocketAddr,
    /// The model served (requests for any other get 404).
    #[arg(long, default_value = "test-model")]
    pub model: String,
    /// Name in answers and the `x-backend` header (default: the class).
    #[arg(long)]
    pub name: Option<String>,
    /// The profile's non-LLM models to serve, comma-separated (default:
    /// every one the class has a cost for; "" serves none).
    #[arg(long)]
    pub models: Option<String>,
    /// Speed factor: 0.5 runs every step twice as long.
    #[arg(long, default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,
    /// How queued requests are ordered, as vLLM's flag of the same name:
    /// `fcfs` refuses a request with a non-zero `priority`, `priority` runs
    /// lower numbers first.
    #[arg(long, value_enum, default_value_t = SchedulingPolicyArg::Fcfs)]
    pub scheduling_policy: SchedulingPolicyArg,
}

/// `--scheduling-policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedulingPolicyArg {
    /// First come, first served.
    Fcfs,
    /// By the request's `priority`, then arrival.
    Priority,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.001..=1000.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give a factor in 0.001..=1000")),
    }
}

/// Commands that talk to the daemon.
#[derive(Subcommand)]
pub enum DaemonCmd {
    /// Manage VIPs.
    #[command(subcommand, display_order = 2)]
    Vip(VipCmd),
    /// Manage backends.
    #[command(subcommand, display_order = 3)]
    Backend(BackendCmd),
    /// Daemon and data-plane status, with down backends and why.
    #[command(display_order = 4)]
    Status,
    /// Live traffic per VIP and backend, refreshed like top.
    #[command(display_order = 5)]
    Stats {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
        /// Print once and exit (rates are measured over one interval).
        #[arg(long)]
        once: bool,
    },
    /// Telemetry-driven weights: signals, load, score, weight, and why.
    #[command(display_order = 6)]
    Weights {
        /// Show every signal and the reasoning per backend.
        #[arg(long)]
        explain: bool,
    },
    /// The inference result cache.
    #[command(subcommand, display_order = 8)]
    Cache(CacheCmd),
    /// The L7 routes (listed after `cache`, whose name sorts first).
    #[command(subcommand, display_order = 8)]
    Route(RouteCmd),
}

/// `balancer route …`.
#[derive(Subcommand)]
pub enum RouteCmd {
    /// Requests per route and priority tier.
    Stats,
    /// Where `pick = "aware"` sent the last requests, and why.
    Explain {
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
    },
}

/// `balancer cache …`.
#[derive(Subcommand)]
pub enum CacheCmd {
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

/// `balancer run`.
#[derive(Args)]
pub struct RunArgs {
    /// Configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override `daemon.iface`.
    #[arg(long, value_parser = parse_iface)]
    pub iface: Option<String>,
    /// Override `daemon.xdp_mode`.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Override `daemon.netns`.
    #[arg(long, value_parser = parse_netns)]
    pub netns: Option<String>,
}

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum XdpModeArg {
    /// Native mode, falling back to generic.
    Driver,
    /// Generic (skb) mode.
    Generic,
}

/// `balancer detach`.
#[derive(Args)]
pub struct DetachArgs {
    /// Take the interface and pin directory from this configuration.
    #[arg(long, short, conflicts_with_all = ["iface", "pin_dir"])]
    pub config: Option<PathBuf>,
    /// Interface.
    #[arg(long, value_parser = parse_iface)]
    pub iface: Option<String>,
    /// Network namespace of the interface.
    #[arg(long, value_parser = parse_netns)]
    pub netns: Option<String>,
    /// Pin directory.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

/// `balancer vip …`.
#[derive(Subcommand)]
pub enum VipCmd {
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
        /// Priority tier: how soon XDP sheds its new connections when its
        /// pool saturates (critical, the default, never).
        #[arg(long, default_value = "critical", value_parser = parse_tier)]
        tier: Tier,
        /// How a refused TCP connection is refused: drop its SYN, or
        /// answer it with a RST from XDP (UDP is always dropped).
        #[arg(long, default_value = "rst")]
        refuse: Refusal,
    },
    /// Change a VIP's tier or how it refuses, or refuse a share of its new
    /// connections now.
    Set {
        /// The VIP.
        vip: VipId,
        /// New tier.
        #[arg(long, value_parser = parse_tier)]
        tier: Option<Tier>,
        /// Refuse this percentage (0-100) of its new connections in XDP
        /// (telemetry, if the VIP has it, sets it again at its next reading).
        #[arg(long, value_parser = parse_percent)]
        shed: Option<u8>,
        /// How refused TCP connections are refused: drop or rst.
        #[arg(long)]
        refuse: Option<Refusal>,
    },
    /// Remove a VIP and its pool.
    Rm {
        /// The VIP.
        vip: VipId,
    },
    /// List VIPs.
    List,
}

/// `balancer backend …`.
#[derive(Subcommand)]
pub enum BackendCmd {
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

/// `balancer config …`.
#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Validate a configuration file without touching anything.
    Check {
        /// The file.
        file: PathBuf,
    },
}

// The engine's validators: the CLI, the API and the configuration accept
// exactly the same values.
fn parse_iface(s: &str) -> Result<String, String> {
    balancer::config::validate_iface(s).map(|()| s.to_string())
}

fn parse_netns(s: &str) -> Result<String, String> {
    balancer::config::validate_netns(s).map(|()| s.to_string())
}

fn parse_weight(s: &str) -> Result<u32, String> {
    let w: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number; use 0 to {MAX_WEIGHT}"))?;
    validate_weight(w).map_err(|e| e.to_string())
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    Tier::WORDS
        .iter()
        .find(|(w, _)| *w == s)
        .map(|(_, t)| *t)
        .ok_or_else(|| format!("{s:?}: use critical, standard or sheddable"))
}

fn parse_percent(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(v) if v <= 100 => Ok(v),
        _ => Err(format!("{s:?}: use a percentage from 0 to 100")),
    }
}

fn parse_affinity(s: &str) -> Result<u32, String> {
    let t: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds; use 1 to {MAX_AFFINITY_SECS}"))?;
    validate_affinity(t).map_err(|e| e.to_string())
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: use seconds between 0.1 and 3600")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn detach_and_run_refuse_names_that_escape_the_pin_directory() {
        for argv in [
            vec!["balancer", "detach", "--iface", ".."],
            vec!["balancer", "detach", "--iface", "eth0", "--netns", "../x"],
            vec!["balancer", "run", "-c", "b.toml", "--iface", "a/b"],
            vec!["balancer", "run", "-c", "b.toml", "--netns", ".."],
        ] {
            let e = Cli::try_parse_from(&argv).err().map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("invalid value")), "{argv:?}");
        }
        assert!(Cli::try_parse_from(["balancer", "detach", "--iface", "eth0"]).is_ok());
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_keep_their_order() {
        let cmd = Cli::command();
        let mut subs: Vec<_> = cmd
            .get_subcommands()
            .map(|s| (s.get_display_order(), s.get_name().to_string()))
            .collect();
        subs.sort();
        let names: Vec<_> = subs.into_iter().map(|(_, n)| n).collect();
        let want = [
            "run", "detach", "vip", "backend", "status", "stats", "weights", "agent", "cache",
            "route", "config", "emulate",
        ];
        assert_eq!(names, want);
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_weight("0"), Ok(0));
        assert!(parse_weight(&(MAX_WEIGHT + 1).to_string()).is_err());
        assert!(parse_weight("x").is_err());
        assert!(parse_affinity("0").is_err());
        assert_eq!(parse_affinity("60"), Ok(60));
        assert!(parse_interval("0.05").is_err());
        assert_eq!(parse_interval("2"), Ok(2.0));
    }
}
