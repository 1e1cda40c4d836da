//! A fleet-bench scenario: one TOML file naming the fleet, the workload,
//! the shape of its rate, the tiers and the duration.
//!
//! ```toml
//! name = "customer-service chatbot"
//! duration_s = 120             # replayed time (the trace is compressed)
//! seed = 1
//!
//! [fleet]
//! profile = "profiles/llama-3.1-8b.toml"   # relative to this file
//! model = "llama-3.1-8b"
//! nodes = [{ class = "h100", count = 1 }, { class = "l4", count = 3 }]
//!
//! [workload]
//! trace = "traces/arrivals/AzureLLMInferenceTrace_conv.csv"  # shared data, or relative to this file
//! mean_rps = 6.0
//! max_prompt_tokens = 8000     # longer prompts are cut
//! max_output_tokens = 1024     # and longer outputs
//!
//! [[workload.mix]]             # optional: non-LLM requests, a share of all
//! model = "resnet-50"          # a [[model]] of the profile
//! share = 0.2
//! units = [0.05, 2.0]          # input size, log-uniform (megapixels here)
//!
//! [shape]
//! peak_to_average = 10.0
//! curve = "diurnal"            # or "flat", or series = "traces/arrivals/nab-nyc_taxi.csv"
//! series_hours = 24            # the series window replayed (default 24)
//! bins = 60                    # the windows the ratio is measured over
//!
//! [[tier]]
//! name = "critical"
//! share = 0.2
//! ttft_s = 1.0
//! e2e_s = 20.0
//!
//! [route]                      # optional: settings of the gateway's [[route]]
//! default_tier = "critical"    # (L7 strategies): tiers, shedding, its queue
//! max_in_flight = 8
//! ```
//!
//! Each request carries its tier as `x-priority` when the tier is named
//! `critical`, `standard` or `sheddable`; a route that sheds answers 429,
//! counted as shed, not failed.
//!
//! Paths are tried relative to the scenario file first, then under the
//! shared data directory. Every value is checked; an error names the file
//! and the field.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use balancer::emulate::{models::ModelSpec, profile::Profile};
use serde::Deserialize;

/// A parsed, checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name, in tables and file names.
    pub name: String,
    /// Replayed duration, seconds.
    pub duration_s: f64,
    /// Seed of every random choice (tiers, synthetic arrivals).
    pub seed: u64,
    /// The fleet.
    pub fleet: Fleet,
    /// The workload.
    pub workload: Workload,
    /// The rate's shape.
    pub shape: Shape,
    /// The tiers, with shares summing to 1.
    pub tiers: Vec<Tier>,
    /// Settings added to the gateway's `[[route]]` (checked as the daemon
    /// would; empty when none).
    pub route: toml::Table,
}

/// Which nodes serve, and what they are.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The hardware classes.
    pub profile: Profile,
    /// The file they came from (`balancer emulate --profile`), if any.
    pub profile_path: Option<PathBuf>,
    /// The model every node serves.
    pub model: String,
    /// (class, count), in file order.
    pub nodes: Vec<(String, u32)>,
}

/// Where requests come from.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The trace file.
    pub trace: PathBuf,
    /// Mean request rate over the run.
    pub mean_rps: f64,
    /// Prompts are cut to this many tokens.
    pub max_prompt_tokens: u32,
    /// Outputs are cut to this many tokens.
    pub max_output_tokens: u32,
    /// Non-LLM requests mixed in; the rest of the shares are the trace's
    /// LLM requests.
    pub mix: Vec<Mix>,
}

/// Requests for one non-LLM model, a share of all the run sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// The profile's model.
    pub model: String,
    /// Speech goes to `/v1/audio/transcriptions`, the rest to KServe v2.
    pub speech: bool,
    /// Share of all requests.
    pub share: f64,
    /// Input size range, in the model's unit, drawn log-uniform.
    pub units: (f64, f64),
    /// Tensor elements per unit (one byte each in the bench's requests).
    pub elements_per_unit: f64,
}

/// Bytes of one request body at most: the emulator's cap.
pub const MAX_BODY: usize = balancer::emulate::server::MAX_BODY;

/// The rate curve's base shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Curve {
    /// Constant: the trace's own variation only.
    Flat,
    /// One smooth day over the run, peaking in its second half.
    Diurnal,
    /// A request-rate series (`timestamp,value` CSV), its first `hours`.
    Series {
        /// The series file.
        path: PathBuf,
        /// Hours of it replayed over the run.
        hours: f64,
    },
}

/// The rate's shape.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Target peak-to-average ratio of the arrival rate.
    pub peak_to_average: f64,
    /// Base curve, sharpened until it has that ratio.
    pub curve: Curve,
    /// Windows the ratio is measured over.
    pub bins: usize,
}

/// A priority tier and its service-level objectives.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    /// `critical`, `standard`, `sheddable`, ...
    pub name: String,
    /// Share of requests.
    pub share: f64,
    /// Time-to-first-token objective, seconds.
    pub ttft_s: f64,
    /// End-to-end objective, seconds.
    pub e2e_s: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    duration_s: f64,
    #[serde(default = "one")]
    seed: u64,
    fleet: RawFleet,
    workload: RawWorkload,
    shape: RawShape,
    tier: Vec<RawTier>,
    #[serde(default)]
    route: toml::Table,
}

fn one() -> u64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    profile: String,
    model: String,
    nodes: Vec<RawNodes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodes {
    class: String,
    count: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    trace: String,
    mean_rps: f64,
    #[serde(default = "default_prompt")]
    max_prompt_tokens: u32,
    #[serde(default = "default_output")]
    max_output_tokens: u32,
    #[serde(default)]
    mix: Vec<RawMix>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMix {
    model: String,
    share: f64,
    units: [f64; 2],
}

fn default_prompt() -> u32 {
    8192
}

fn default_output() -> u32 {
    1024
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShape {
    peak_to_average: f64,
    curve: Option<String>,
    series: Option<String>,
    series_hours: Option<f64>,
    #[serde(default = "default_bins")]
    bins: usize,
}

fn default_bins() -> usize {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    share: f64,
    ttft_s: f64,
    e2e_s: f64,
}

/// Keys of the gateway's route the bench sets itself: a scenario that sets
/// one is refused rather than silently overridden.
pub const BENCH_ROUTE_KEYS: [&str; 10] = [
    "name",
    "listen",
    "backends",
    "vip",
    "backend_port",
    "pick",
    "cache",
    "timeout_ms",
    "max_connections",
    "max_request_bytes",
];

/// The daemon's configuration of one route over `backends` with `pick`:
/// the bench's own keys, then `extra`'s.
pub fn route_config(pick: &str, backends: &[String], extra: &toml::Table) -> String {
    let mut r = extra.clone();
    let mut set = |k: &str, v: toml::Value| {
        r.insert(k.into(), v);
    };
    set("name", "fleet".into());
    set("listen", "127.0.0.1:0".into());
    set(
        "backends",
        toml::Value::Array(backends.iter().map(|b| b.as_str().into()).collect()),
    );
    // The emulator's cap: the mix is checked against it, so no body the
    // bench sends is refused at the gateway.
    set("max_request_bytes", (MAX_BODY as i64).into());
    set("timeout_ms", 600_000.into());
    set("max_connections", 65_536.into());
    set("cache", false.into());
    set("pick", pick.into());
    let mut top = toml::Table::new();
    let mut daemon = toml::Table::new();
    daemon.insert("socket".into(), "/nonexistent/fleet.sock".into());
    top.insert("daemon".into(), daemon.into());
    top.insert(
        "route".into(),
        toml::Value::Array(vec![toml::Value::Table(r)]),
    );
    toml::to_string(&top).unwrap_or_default()
}

/// `[route]`'s settings, checked as the daemon checks them.
fn check_route(extra: &toml::Table) -> Result<()> {
    if let Some(k) = BENCH_ROUTE_KEYS.iter().find(|k| extra.contains_key(**k)) {
        bail!("route.{k}: the bench sets it (leave it out)");
    }
    let text = route_config("aware", &["127.0.0.1:1".into()], extra);
    balancer::config::Config::parse(Path::new("scenario [route]"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// `rel` relative to `dir`, else under the shared data directory.
fn locate(dir: &Path, rel: &str, what: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    let local = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    };
    if local.exists() {
        return Ok(local);
    }
    if let Some(base) = crate::shared_data_dir() {
        let shared = base.join(rel);
        if shared.exists() {
            return Ok(shared);
        }
    }
    bail!("{what} {rel:?}: not found beside the scenario nor under the shared data")
}

/// Checks the mix: known models that every node's class serves, shares
/// summing to at most 1, sizes the model takes and that fit a body.
fn mix(raw: &[RawMix], profile: &Profile, nodes: &[(String, u32)]) -> Result<Vec<Mix>> {
    use balancer::emulate::models::Kind;
    ensure!(raw.len() <= 16, "workload.mix: at most 16 entries");
    let mut out: Vec<Mix> = Vec::new();
    for m in raw {
        let what = format!("workload.mix {:?}", m.model);
        let spec = profile
            .models
            .iter()
            .find(|s| s.name == m.model)
            .with_context(|| format!("{what}: the profile has no [[model]] of that name"))?;
        ensure!(
            out.iter().all(|x| x.model != m.model),
            "{what}: given twice"
        );
        for (class, _) in nodes {
            ensure!(
                spec.cost_on(class).is_some(),
                "{what}: class {class:?} of the fleet does not serve it (no cost entry)"
            );
        }
        in_range(&format!("{what} share"), m.share, 1e-6, 1.0)?;
        let [lo, hi] = m.units;
        in_range(&format!("{what} units[0]"), lo, 1e-6, spec.max_units)?;
        in_range(&format!("{what} units[1]"), hi, lo, spec.max_units)?;
        let speech = spec.kind == Kind::SpeechRecognition;
        // 16-bit mono at 16 kHz, or a byte an element.
        let bytes = if speech {
            hi * 32_000.0
        } else {
            hi * spec.elements_per_unit
        };
        ensure!(
            bytes + 4096.0 <= MAX_BODY as f64,
            "{what}: the largest input makes a {bytes:.0}-byte body; the emulator takes {MAX_BODY}"
        );
        out.push(Mix {
            model: m.model.clone(),
            speech,
            share: m.share,
            units: (lo, hi),
            elements_per_unit: spec.elements_per_unit,
        });
    }
    let sum: f64 = out.iter().map(|m| m.share).sum();
    ensure!(
        sum <= 1.0 + 1e-9,
        "workload.mix shares sum to {sum}, over 1"
    );
    Ok(out)
}

fn in_range(what: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    ensure!(
        v.is_finite() && v >= lo && v <= hi,
        "{what} = {v}: use {lo} to {hi}"
    );
    Ok(())
}

impl Scenario {
    /// Reads and checks a scenario file (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading scenario {}", path.display()))?
            .len();
        ensure!(
            len <= 1 << 20,
            "scenario {}: {len} bytes, at most 1 MiB",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and checks a scenario whose relative paths start at `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<Self> {
        let raw: Raw = toml::from_str(text)?;
        ensure!(
            !raw.name.is_empty() && raw.name.len() <= 80,
            "name: 1 to 80 bytes"
        );
        in_range("duration_s", raw.duration_s, 1.0, 86_400.0)?;
        let profile_path = locate(dir, &raw.fleet.profile, "fleet.profile")?;
        let profile = Profile::load(&profile_path)?;
        ensure!(
            !raw.fleet.nodes.is_empty(),
            "fleet.nodes: name at least one class"
        );
        let mut nodes = Vec::new();
        let mut total = 0u32;
        for n in &raw.fleet.nodes {
            ensure!(
                profile.class(&n.class).is_some(),
                "fleet.nodes: no class {:?} in {}",
                n.class,
                profile_path.display()
            );
            ensure!(
                (1..=64).contains(&n.count),
                "fleet.nodes: count {} of {:?}: use 1 to 64",
                n.count,
                n.class
            );
            total += n.count;
            nodes.push((n.class.clone(), n.count));
        }
        ensure!(total <= 64, "fleet.nodes: {total} nodes, at most 64");
        ensure!(!raw.fleet.model.is_empty(), "fleet.model: name the model");
        let w = &raw.workload;
        in_range("workload.mean_rps", w.mean_rps, 0.01, 10_000.0)?;
        ensure!(
            (1..=1 << 20).contains(&w.max_prompt_tokens),
            "workload.max_prompt_tokens: use 1 to 1048576"
        );
        ensure!(
            (1..=32_768).contains(&w.max_output_tokens),
            "workload.max_output_tokens: use 1 to 32768"
        );
        let smallest = nodes
            .iter()
            .filter_map(|(c, _)| profile.class(c))
            .map(|c| c.kv_tokens as u64)
            .min()
            .unwrap_or(0);
        ensure!(
            (w.max_prompt_tokens as u64 + w.max_output_tokens as u64) <= smallest,
            "workload: max_prompt_tokens + max_output_tokens = {} exceed the smallest node's KV cache ({smallest} tokens)",
            w.max_prompt_tokens as u64 + w.max_output_tokens as u64
        );
        let workload = Workload {
            trace: locate(dir, &w.trace, "workload.trace")?,
            mean_rps: w.mean_rps,
            max_prompt_tokens: w.max_prompt_tokens,
            max_output_tokens: w.max_output_tokens,
            mix: mix(&w.mix, &profile, &nodes)?,
        };
        let s = &raw.shape;
        in_range("shape.peak_to_average", s.peak_to_average, 1.0, 100.0)?;
        ensure!((4..=10_000).contains(&s.bins), "shape.bins: use 4 to 10000");
        ensure!(
            s.peak_to_average <= s.bins as f64,
            "shape.peak_to_average {} cannot exceed shape.bins ({})",
            s.peak_to_average,
            s.bins
        );
        let curve = match (&s.curve, &s.series) {
            (Some(_), Some(_)) => bail!("shape: give curve or series, not both"),
            (None, None) => Curve::Diurnal,
            (Some(c), None) => match c.as_str() {
                "flat" => Curve::Flat,
                "diurnal" => Curve::Diurnal,
                other => {
                    bail!("shape.curve = {other:?}: use \"flat\" or \"diurnal\" (or series = FILE)")
                }
            },
            (None, Some(f)) => {
                let hours = s.series_hours.unwrap_or(24.0);
                in_range("shape.series_hours", hours, 0.1, 24.0 * 366.0)?;
                Curve::Series {
                    path: locate(dir, f, "shape.series")?,
                    hours,
                }
            }
        };
        ensure!(
            curve != Curve::Flat || s.peak_to_average == 1.0,
            "shape: a flat curve has a peak-to-average ratio of 1, not {}; use curve = \"diurnal\" or a series",
            s.peak_to_average
        );
        ensure!(!raw.tier.is_empty(), "tier: give at least one [[tier]]");
        let mut tiers = Vec::new();
        for t in &raw.tier {
            ensure!(!t.name.is_empty(), "tier.name: give a name");
            ensure!(
                tiers.iter().all(|x: &Tier| x.name != t.name),
                "tier {:?} is given twice",
                t.name
            );
            in_range(&format!("tier {:?} share", t.name), t.share, 0.0, 1.0)?;
            in_range(
                &format!("tier {:?} ttft_s", t.name),
                t.ttft_s,
                0.001,
                3600.0,
            )?;
            in_range(
                &format!("tier {:?} e2e_s", t.name),
                t.e2e_s,
                t.ttft_s,
                36_000.0,
            )?;
            tiers.push(Tier {
                name: t.name.clone(),
                share: t.share,
                ttft_s: t.ttft_s,
                e2e_s: t.e2e_s,
            });
        }
        let sum: f64 = tiers.iter().map(|t| t.share).sum();
        ensure!((sum - 1.0).abs() < 1e-6, "tier shares sum to {sum}, not 1");
        check_route(&raw.route)?;
        Ok(Self {
            name: raw.name,
            duration_s: raw.duration_s,
            seed: raw.seed,
            fleet: Fleet {
                profile,
                profile_path: Some(profile_path),
                model: raw.fleet.model,
                nodes,
            },
            workload,
            shape: Shape {
                peak_to_average: s.peak_to_average,
                curve,
                bins: s.bins,
            },
            tiers,
            route: raw.route,
        })
    }

    /// The scenario cut to a smoke test of the harness: 3 s, at least 8
    /// requests a second, prompts of at most 1,024 and outputs of at most
    /// 16 tokens (so even a CPU node answers within seconds).
    pub fn quick(mut self) -> Self {
        self.duration_s = self.duration_s.min(3.0);
        self.workload.mean_rps = self.workload.mean_rps.max(8.0);
        self.workload.max_prompt_tokens = self.workload.max_prompt_tokens.min(1024);
        self.workload.max_output_tokens = self.workload.max_output_tokens.min(16);
        self
    }

    /// The profile's models the mix uses: the only ones the fleet's nodes
    /// serve (and wait to load).
    pub fn mixed_models(&self) -> Vec<ModelSpec> {
        self.fleet
            .profile
            .models
            .iter()
            .filter(|m| self.workload.mix.iter().any(|x| x.model == m.name))
            .cloned()
            .collect()
    }

    /// Requests the run sends: the mean rate over the duration.
    pub fn requests(&self) -> usize {
        (self.workload.mean_rps * self.duration_s).round().max(1.0) as usize
    }
}
