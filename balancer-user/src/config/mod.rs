//! The daemon's TOML configuration: parsing and validation.
//!
//! Every error names the file, line, column and field, and says what to write
//! instead. Validation is complete before anything touches the kernel, so a bad
//! file changes nothing.
//!
//! ```toml
//! [daemon]
//! iface = "eth0"                     # interface the balancer attaches to
//! xdp_mode = "driver"                # driver (falls back to generic) | generic
//! # netns = "gw"                     # run inside this named network namespace
//! socket = "/run/balancer/balancer.sock"
//! metrics = "127.0.0.1:9100"         # Prometheus endpoint; "" disables it
//! state_file = "/var/lib/balancer/state.json"
//!
//! [dataplane]                        # fixed when the program is loaded
//! ring_size = 65537
//! max_vips = 64
//! max_backends = 4096
//! max_flows = 786432
//! max_affinity = 262144
//! mtu = 1500
//! tunnel_src_v4 = "172.16.0.0/16"
//! tunnel_src_v6 = "fd00:ba1a::/96"
//!
//! [[vip]]
//! vip = "10.0.0.100:80/tcp"
//! mode = "tunnel"                    # tunnel | l2-dsr
//! # affinity_secs = 300              # client affinity
//! # tier = "critical"                # or "standard", "sheddable": XDP sheds new connections when saturated
//! # refuse = "rst"                   # a refused SYN gets a RST from XDP; or "drop"
//!
//! [[vip.backend]]
//! address = "10.0.1.10"
//! weight = 1
//! # mac = "02:00:00:00:00:10"        # static next hop; else resolved
//!
//! [cache]                            # the inference result cache
//! memory_mb = 256                    # L1 budget
//! # redis = "redis://127.0.0.1:6379"  # shared L2 and invalidation bus
//! # redis_timeout_ms = 100
//! # redis_prefix = "balancer"
//! [cache.models]                     # model versions (part of every key)
//! # "llama-3-8b" = "2024-06"
//!
//! [[route]]                        # an HTTP listener in front of a pool
//! name = "openai"                    # ([[cache_route]]: its deprecated name)
//! listen = "127.0.0.1:8080"
//! backends = ["10.0.1.10:8000"]      # or: vip = "10.0.0.100:80/tcp" and
//! # backend_port = 8000              #     the VIP's live pool and weights
//! ttl_secs = 300
//! max_object_bytes = 1048576         # larger responses are not stored
//! max_request_bytes = 1048576        # larger requests get 413
//! exclude_fields = ["user"]          # not part of the key
//! # deterministic = true             # cache generic paths without opt-in
//! # timeout_ms = 60000
//! # key_scope = "shared"             # or "per-credential", "require-auth"
//! # credential_headers = ["authorization", "x-api-key"]
//! # mark_down_after = 3              # failures in a row leave a backend out
//! # mark_down_ms = 10000             # for this long
//! # pick = "consistent-hash"         # or "round-robin", "least-request", "random", "aware"
//! # models_refresh_ms = 5000         # aware: how often to ask backends' /v1/models
//! # cold_start_ms = 60000            # aware: a backend without the model may load it, at this cost
//! # stale_secs = 0                   # a shed request may get an entry expired this long (X-Cache: STALE)
//! # [route.fallback]                 # where requests that would be shed go instead
//! # backends = ["10.0.2.10:8000"]    # or vip = ".." with backend_port
//! # model = "llama-3.2-1b"           # the model it serves, written into the request
//! # tiers = ["sheddable"]            # the tiers that fall back (never critical)
//! # cache = true                     # false: forward every request uncached
//! # default_tier = "standard"        # and the most a client no key names may claim
//! # priority_field = false           # pass the tier as vLLM's "priority"
//!
//! # max_in_flight = 64               # a backend's capacity: shed lower tiers past it
//! # [route.shed]                     # saturation where shedding starts and is total
//! # sheddable = [0.8, 1.0]
//! # standard = [1.0, 1.5]            # critical is never shed
//! # zone = "us-east-1a"              # aware: this gateway's zone, kept to until it saturates
//! # [route.zones]                    # each backend's zone, by address or address:port
//! # "us-east-1a" = ["10.0.1.1", "10.0.1.2"]
//! # "us-east-1b" = ["10.0.1.3"]
//! # [route.queue]                    # lower tiers wait for headroom (critical never does)
//! # max_waiting = 1024               # 0: no queue
//! # standard_wait_ms = 2000          # then degraded as if shed
//! # sheddable_wait_ms = 1000
//!
//! # [[route.tenant]]                 # a client known by its key
//! # name = "checkout"
//! # keys = ["sk-..."]                # bearer token or x-api-key value
//! # tier = "standard"                # without x-priority (default: default_tier)
//! # max_tier = "critical"            # the most x-priority may raise it to
//! ```
//!
//! Without `daemon.iface` the daemon runs no data plane: a cache-only
//! gateway, which needs at least one `[[route]]`.

mod cache;
mod daemon;
mod dataplane;
mod route;
#[cfg(test)]
mod tests;
mod vips;

pub use daemon::{validate_iface, validate_netns, validate_pin_dir};

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    control::{autoweight::PoolTelemetry, scoring::ScoringPolicy, telemetry::health::Check},
    dataplane::{AttachMode, LoadOptions},
    lb::{Snapshot, VipId},
};

/// A configuration error, located in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub col: Option<usize>,
    /// The field, as a path like `vip[0].backend[1].weight`.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let (Some(l), Some(c)) = (self.line, self.col) {
            write!(f, ":{l}:{c}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    vip: Vec<RawVip>,
    cache: Option<RawCache>,
    #[serde(default)]
    route: Vec<RawCacheRoute>,
    /// The deprecated name of `route`.
    #[serde(default)]
    cache_route: Vec<RawCacheRoute>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    memory_mb: Option<Spanned<u64>>,
    shards: Option<Spanned<usize>>,
    redis: Option<Spanned<String>>,
    redis_timeout_ms: Option<Spanned<u64>>,
    redis_prefix: Option<Spanned<String>>,
    #[serde(default)]
    models: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheRoute {
    name: Option<Spanned<String>>,
    listen: Spanned<String>,
    backends: Option<Spanned<Vec<String>>>,
    vip: Option<Spanned<String>>,
    backend_port: Option<Spanned<u16>>,
    ttl_secs: Option<Spanned<u64>>,
    max_object_bytes: Option<Spanned<u64>>,
    max_request_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    exclude_fields: Option<Vec<String>>,
    deterministic: Option<bool>,
    timeout_ms: Option<Spanned<u64>>,
    header_timeout_ms: Option<Spanned<u64>>,
    body_timeout_ms: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    body_budget_bytes: Option<Spanned<u64>>,
    key_scope: Option<Spanned<String>>,
    credential_headers: Option<Spanned<Vec<String>>>,
    mark_down_after: Option<Spanned<u64>>,
    mark_down_ms: Option<Spanned<u64>>,
    models_refresh_ms: Option<Spanned<u64>>,
    cold_start_ms: Option<Spanned<u64>>,
    stale_secs: Option<Spanned<u64>>,
    pick: Option<Spanned<String>>,
    cache: Option<bool>,
    default_tier: Option<Spanned<String>>,
    priority_field: Option<bool>,
    #[serde(default)]
    tenant: Vec<RawTenant>,
    max_in_flight: Option<Spanned<u64>>,
    shed: Option<Spanned<RawShed>>,
    queue: Option<Spanned<RawQueue>>,
    zone: Option<Spanned<String>>,
    zones: Option<Spanned<std::collections::BTreeMap<String, Vec<String>>>>,
    fallback: Option<Spanned<RawFallback>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    backends: Option<Spanned<Vec<String>>>,
    vip: Option<Spanned<String>>,
    backend_port: Option<Spanned<u16>>,
    model: Option<Spanned<String>>,
    tiers: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    max_waiting: Option<u64>,
    standard_wait_ms: Option<u64>,
    sheddable_wait_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShed {
    sheddable: Option<[f64; 2]>,
    standard: Option<[f64; 2]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
    /// Any value, checked by hand: a type error from serde would quote the
    /// value, a secret, in the message.
    keys: Spanned<toml::Value>,
    tier: Option<Spanned<String>>,
    max_tier: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    iface: Option<Spanned<String>>,
    xdp_mode: Option<Spanned<String>>,
    netns: Option<Spanned<String>>,
    pin_dir: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    state_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    ring_size: Option<Spanned<u32>>,
    max_vips: Option<Spanned<u32>>,
    max_backends: Option<Spanned<u32>>,
    max_flows: Option<Spanned<u32>>,
    max_affinity: Option<Spanned<u32>>,
    mtu: Option<Spanned<u32>>,
    tunnel_src_v4: Option<Spanned<String>>,
    tunnel_src_v6: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    vip: Spanned<String>,
    mode: Option<Spanned<String>>,
    affinity_secs: Option<Spanned<u32>>,
    tier: Option<Spanned<String>>,
    refuse: Option<Spanned<String>>,
    telemetry: Option<Spanned<RawTelemetry>>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    fall: Option<u32>,
    rise: Option<u32>,
    model: Option<String>,
    health: Option<Check>,
    #[serde(default)]
    policy: ScoringPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    kind: Spanned<String>,
    url: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<u32>>,
    mac: Option<Spanned<String>>,
    #[serde(default)]
    metrics: Vec<RawEndpoint>,
    models: Option<Vec<String>>,
    models_url: Option<Spanned<String>>,
}

/// Daemon settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Interface to attach to; `None`: no data plane (a cache-only gateway).
    pub iface: Option<String>,
    /// Attach mode.
    pub xdp_mode: AttachMode,
    /// Named network namespace to run in.
    pub netns: Option<String>,
    /// Pin directory (default: `/sys/fs/bpf/balancer[/<netns>]/<iface>`).
    pub pin_dir: PathBuf,
    /// Admin API socket.
    pub socket: PathBuf,
    /// Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Where runtime changes are persisted.
    pub state_file: PathBuf,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Daemon settings.
    pub daemon: DaemonConfig,
    /// Map sizes.
    pub load: LoadOptions,
    /// Initial VIPs and data-plane settings, used when no state file exists.
    pub initial: Snapshot,
    /// Telemetry-driven weights, per VIP that has a `[vip.telemetry]` table.
    pub telemetry: BTreeMap<VipId, PoolTelemetry>,
    /// Cache settings.
    pub cache: crate::cache::Settings,
    /// Routes (none: no proxy).
    pub cache_routes: Vec<CacheRoute>,
    /// What the file should change but still works (deprecated names), one
    /// line each, naming the file and line: the daemon logs them and
    /// `config check` prints them.
    pub warnings: Vec<String>,
}

/// Where a cache route's misses go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachePool {
    /// A fixed list, equal weights.
    Static(Vec<SocketAddr>),
    /// The live pool of a VIP (its backends' current weights), on `port`.
    Vip {
        /// The VIP.
        vip: VipId,
        /// The backends' HTTP port.
        port: u16,
    },
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRoute {
    /// The proxy's settings.
    pub route: crate::cache::proxy::RouteConfig,
    /// Its backends.
    pub pool: CachePool,
    /// The fallback pool's backends, when the route has one.
    pub fallback_pool: Option<CachePool>,
}

/// Default admin socket.
pub const DEFAULT_SOCKET: &str = "/run/balancer/balancer.sock";
/// Default state file.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/balancer/state.json";

struct Ctx<'a> {
    path: &'a Path,
    src: &'a str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        let (line, col) = line_col(self.src, span.start);
        Err(ConfigError {
            path: self.path.to_path_buf(),
            line: Some(line),
            col: Some(col),
            field: field.into(),
            message: message.into(),
        })
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            col: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &src)
    }

    /// Validates configuration text; `path` only labels errors.
    pub fn parse(path: &Path, src: &str) -> Result<Self, ConfigError> {
        let cx = Ctx { path, src };
        let raw: RawConfig = toml::from_str(src).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(src, s.start)).unzip();
            // Name the key on the offending line, when there is one.
            let field = line
                .and_then(|l| src.lines().nth(l - 1))
                .and_then(|text| text.split_once('='))
                .map(|(k, _)| k.trim().to_string())
                .filter(|k| !k.is_empty() && !k.starts_with('['))
                .unwrap_or_default();
            ConfigError {
                path: path.to_path_buf(),
                line,
                col,
                field,
                message: e.message().trim().to_string(),
            }
        })?;

        let daemon = daemon::parse(&raw, &cx)?;
        let (load, settings) = dataplane::parse(&raw.dataplane, &cx)?;
        let (vips, telemetry) = vips::parse(&raw, &cx, &load)?;
        let mut cache = cache::parse(&raw, &cx)?;
        let (cache_routes, warnings) = route::parse(&raw, &cx)?;
        // The L1 keeps expired entries as long as any route may answer
        // from them.
        cache.stale_ms = cache_routes
            .iter()
            .map(|r| r.route.stale.as_millis() as u64)
            .max()
            .unwrap_or(0);
        Ok(Config {
            cache,
            cache_routes,
            warnings,
            daemon,
            load,
            initial: Snapshot { settings, vips },
            telemetry,
        })
    }
}
