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
//! [[cache_route]]
//! name = "openai"
//! listen = "127.0.0.1:8080"
//! backends = ["10.0.1.10:8000"]      # or: vip = "10.0.0.100:80/tcp" and
//! # backend_port = 8000              #     the VIP's live pool and weights
//! ttl_secs = 300
//! max_object_bytes = 1048576         # larger responses are not stored
//! max_request_bytes = 1048576        # larger requests get 413
//! exclude_fields = ["user"]          # not part of the key
//! # deterministic = true             # cache generic paths without opt-in
//! # timeout_ms = 60000
//! ```
//!
//! Without `daemon.iface` the daemon runs no data plane: a cache-only
//! gateway, which needs at least one `[[cache_route]]`.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    control::autoweight::{BackendTelemetry, PoolTelemetry},
    control::scoring::Policy,
    control::telemetry::{ServerKind, health::Check, scrape::ScrapeLimits},
    dataplane::{AttachMode, LoadOptions},
    lb::{
        BackendRecord, BackendSpec, LbError, Mode, Settings, Snapshot, VipId, VipRecord, VipSpec,
    },
    net::MacAddr,
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
    policy: Policy,
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

impl RawTelemetry {
    fn validate(raw: &Spanned<Self>, cx: &Ctx<'_>, i: usize) -> Result<PoolTelemetry, ConfigError> {
        let t = raw.get_ref();
        let field = |f: &str| format!("vip[{i}].telemetry.{f}");
        let interval = t.interval_ms.unwrap_or(1000);
        if !(100..=60_000).contains(&interval) {
            return cx.err(
                raw.span(),
                field("interval_ms"),
                format!("{interval}: use 100 to 60000"),
            );
        }
        let timeout = t.timeout_ms.unwrap_or(interval.min(1000) * 4 / 5);
        if timeout == 0 || timeout > interval {
            return cx.err(
                raw.span(),
                field("timeout_ms"),
                format!("{timeout}: use 1 to interval_ms ({interval})"),
            );
        }
        let max_body = t.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if !(1024..=64 * 1024 * 1024).contains(&max_body) {
            return cx.err(raw.span(), field("max_body_bytes"), "use 1024 to 67108864");
        }
        let (fall, rise) = (t.fall.unwrap_or(3), t.rise.unwrap_or(2));
        if !(1..=100).contains(&fall) || !(1..=100).contains(&rise) {
            return cx.err(raw.span(), field("fall"), "fall and rise: use 1 to 100");
        }
        if let Err(e) = t.policy.check() {
            return cx.err(raw.span(), field("policy"), e);
        }
        Ok(PoolTelemetry {
            interval: Duration::from_millis(interval),
            limits: ScrapeLimits {
                timeout: Duration::from_millis(timeout),
                max_body,
            },
            fall,
            rise,
            model: t.model.clone(),
            health: t.health.clone(),
            policy: t.policy,
            backends: BTreeMap::new(),
        })
    }
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
    /// Cache routes (none: no proxy).
    pub cache_routes: Vec<CacheRoute>,
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

/// One `[[cache_route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRoute {
    /// The proxy's settings.
    pub route: crate::cache::proxy::RouteConfig,
    /// Its backends.
    pub pool: CachePool,
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

/// Parses `a.b.c.d/len` or `a:b::/len`.
fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = s.split_once('/')?;
    Some((a.parse().ok()?, l.parse().ok()?))
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

        // [daemon]
        let d = &raw.daemon;
        let iface = match &d.iface {
            Some(s) if s.get_ref().is_empty() || s.get_ref().len() > 15 => {
                return cx.err(
                    s.span(),
                    "daemon.iface",
                    "an interface name of 1 to 15 characters, e.g. \"eth0\"",
                );
            }
            Some(s) => Some(s.get_ref().clone()),
            None if !raw.cache_route.is_empty() => None,
            None => {
                return Err(ConfigError {
                    path: path.to_path_buf(),
                    line: None,
                    col: None,
                    field: "daemon.iface".into(),
                    message: "missing: name the interface to attach to, e.g. iface = \"eth0\" (or configure a [[cache_route]] for a cache-only gateway)"
                        .into(),
                });
            }
        };
        let xdp_mode = match &d.xdp_mode {
            None => AttachMode::Driver,
            Some(s) => match s.get_ref().as_str() {
                "driver" | "native" => AttachMode::Driver,
                "generic" | "skb" => AttachMode::Generic,
                other => {
                    return cx.err(
                        s.span(),
                        "daemon.xdp_mode",
                        format!("{other:?}: use \"driver\" or \"generic\""),
                    );
                }
            },
        };
        let netns = d.netns.as_ref().map(|s| s.get_ref().clone());
        let pin_dir = match &d.pin_dir {
            Some(s) => PathBuf::from(s.get_ref()),
            None => crate::dataplane::default_pin_dir(
                iface.as_deref().unwrap_or("none"),
                netns.as_deref(),
            ),
        };
        let socket = d
            .socket
            .as_ref()
            .map(|s| PathBuf::from(s.get_ref()))
            .unwrap_or_else(|| DEFAULT_SOCKET.into());
        let metrics = match &d.metrics {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            Some(s) if s.get_ref().is_empty() => None,
            Some(s) => match s.get_ref().parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    return cx.err(
                        s.span(),
                        "daemon.metrics",
                        "an address and port like \"127.0.0.1:9100\", or \"\" to disable",
                    );
                }
            },
        };
        let state_file = d
            .state_file
            .as_ref()
            .map(|s| PathBuf::from(s.get_ref()))
            .unwrap_or_else(|| DEFAULT_STATE_FILE.into());

        // [dataplane]
        let p = &raw.dataplane;
        let mut load = LoadOptions::default();
        let mut settings = Settings::default();
        let pick = |v: &Option<Spanned<u32>>, default: u32| {
            v.as_ref().map(|s| *s.get_ref()).unwrap_or(default)
        };
        load.ring_size = pick(&p.ring_size, load.ring_size);
        load.max_vips = pick(&p.max_vips, load.max_vips);
        load.max_backends = pick(&p.max_backends, load.max_backends);
        load.max_flows = pick(&p.max_flows, load.max_flows);
        load.max_affinity = pick(&p.max_affinity, load.max_affinity);
        if let Err(e) = load.validate() {
            let span = [
                &p.ring_size,
                &p.max_vips,
                &p.max_backends,
                &p.max_flows,
                &p.max_affinity,
            ]
            .iter()
            .filter_map(|s| s.as_ref().map(|s| s.span()))
            .next()
            .unwrap_or(0..0);
            return cx.err(span, "dataplane", e.to_string());
        }
        settings.mtu = pick(&p.mtu, settings.mtu);
        if let Some(s) = &p.tunnel_src_v4 {
            match parse_prefix(s.get_ref()) {
                Some((IpAddr::V4(a), l)) => {
                    settings.tunnel_src_v4 = a;
                    settings.tunnel_src_v4_len = l;
                }
                _ => {
                    return cx.err(
                        s.span(),
                        "dataplane.tunnel_src_v4",
                        "an IPv4 prefix like \"172.16.0.0/16\"",
                    );
                }
            }
        }
        if let Some(s) = &p.tunnel_src_v6 {
            match parse_prefix(s.get_ref()) {
                Some((IpAddr::V6(a), l)) => {
                    settings.tunnel_src_v6 = a;
                    settings.tunnel_src_v6_len = l;
                }
                _ => {
                    return cx.err(
                        s.span(),
                        "dataplane.tunnel_src_v6",
                        "an IPv6 prefix like \"fd00:ba1a::/96\"",
                    );
                }
            }
        }
        if let Err(e) = settings.validate() {
            let (span, field) = match e.field() {
                Some("mtu") => (p.mtu.as_ref().map(|s| s.span()), "dataplane.mtu"),
                Some("tunnel_src_v4") => (
                    p.tunnel_src_v4.as_ref().map(|s| s.span()),
                    "dataplane.tunnel_src_v4",
                ),
                _ => (
                    p.tunnel_src_v6.as_ref().map(|s| s.span()),
                    "dataplane.tunnel_src_v6",
                ),
            };
            return cx.err(span.unwrap_or(0..0), field, e.to_string());
        }

        // [[vip]]
        let mut vips: Vec<VipRecord> = Vec::new();
        let mut telemetry = BTreeMap::new();
        let mut next_slot = 0u32;
        for (i, v) in raw.vip.iter().enumerate() {
            let field = |f: &str| format!("vip[{i}].{f}");
            let id: VipId = match v.vip.get_ref().parse() {
                Ok(id) => id,
                Err(e) => return cx.err(v.vip.span(), field("vip"), e),
            };
            if vips.iter().any(|r| r.spec.id == id) {
                return cx.err(
                    v.vip.span(),
                    field("vip"),
                    format!("{id} is configured twice"),
                );
            }
            let mode = match &v.mode {
                None => Mode::Tunnel,
                Some(s) => match s.get_ref().parse() {
                    Ok(m) => m,
                    Err(e) => return cx.err(s.span(), field("mode"), e),
                },
            };
            let spec = VipSpec {
                id,
                mode,
                affinity_secs: v.affinity_secs.as_ref().map(|a| *a.get_ref()),
            };
            // The engine's own rules, reported against the key that broke one.
            if let Err(e) = spec.validate() {
                let span = match (e.field(), &v.affinity_secs) {
                    (Some("affinity_secs"), Some(a)) => a.span(),
                    _ => v.vip.span(),
                };
                return cx.err(span, field(e.field().unwrap_or("vip")), e.to_string());
            }
            let mut pool = match &v.telemetry {
                None => None,
                Some(t) => Some(RawTelemetry::validate(t, &cx, i)?),
            };
            let mut backends: Vec<BackendRecord> = Vec::new();
            for (j, b) in v.backend.iter().enumerate() {
                let bfield = |f: &str| format!("vip[{i}].backend[{j}].{f}");
                let addr: IpAddr = match b.address.get_ref().parse() {
                    Ok(a) => a,
                    Err(_) => return cx.err(b.address.span(), bfield("address"), "an IP address like \"10.0.1.10\" (no port: backends listen on the VIP's port)"),
                };
                if backends.iter().any(|r| r.addr == addr) {
                    return cx.err(
                        b.address.span(),
                        bfield("address"),
                        format!("{addr} is listed twice in this pool"),
                    );
                }
                let weight = b.weight.as_ref().map(|w| *w.get_ref()).unwrap_or(1);
                let mac = match &b.mac {
                    None => None,
                    Some(m) => match m.get_ref().parse::<MacAddr>() {
                        Ok(mac) => Some(mac),
                        Err(e) => return cx.err(m.span(), bfield("mac"), e.to_string()),
                    },
                };
                if let Err(e) = (BackendSpec { addr, weight, mac }).validate(&spec) {
                    let span = match (&e, &b.weight) {
                        (LbError::BadWeight(_), Some(w)) => w.span(),
                        _ => b.address.span(),
                    };
                    return cx.err(span, bfield(e.field().unwrap_or("address")), e.to_string());
                }
                backends.push(BackendRecord {
                    addr,
                    weight,
                    drained: false,
                    mac,
                    mac_static: mac.is_some(),
                    slot: next_slot,
                    auto_weight: None,
                });
                if let Some(t) = &mut pool {
                    let mut endpoints = Vec::new();
                    for (k, m) in b.metrics.iter().enumerate() {
                        let kind: ServerKind = match m.kind.get_ref().parse() {
                            Ok(k) => k,
                            Err(e) => {
                                return cx.err(
                                    m.kind.span(),
                                    bfield(&format!("metrics[{k}].kind")),
                                    e,
                                );
                            }
                        };
                        let url = m.url.get_ref();
                        if !url.starts_with("http://") || url.len() <= "http://".len() {
                            return cx.err(
                                m.url.span(),
                                bfield(&format!("metrics[{k}].url")),
                                "an http:// URL like \"http://10.0.1.10:8000/metrics\"",
                            );
                        }
                        endpoints.push((kind, url.clone()));
                    }
                    if let Some(u) = &b.models_url
                        && !u.get_ref().starts_with("http://")
                    {
                        return cx.err(
                            u.span(),
                            bfield("models_url"),
                            "an http:// URL like \"http://10.0.1.10:8000/v1/models\"",
                        );
                    }
                    t.backends.insert(
                        addr,
                        BackendTelemetry {
                            endpoints,
                            models: b.models.clone().map(|m| m.into_iter().collect()),
                            models_url: b.models_url.as_ref().map(|u| u.get_ref().clone()),
                        },
                    );
                } else if !b.metrics.is_empty() || b.models.is_some() || b.models_url.is_some() {
                    let span = b
                        .metrics
                        .first()
                        .map(|m| m.url.span())
                        .unwrap_or(b.address.span());
                    return cx.err(
                        span,
                        bfield("metrics"),
                        "metrics and models need a [vip.telemetry] table on the VIP",
                    );
                }
                next_slot += 1;
            }
            if let Some(p) = pool {
                telemetry.insert(id, p);
            }
            vips.push(VipRecord {
                spec,
                index: i as u32,
                backends,
            });
        }
        if vips.len() as u32 > load.max_vips {
            return cx.err(
                0..0,
                "vip",
                format!("{} VIPs but max_vips = {}", vips.len(), load.max_vips),
            );
        }
        if next_slot > load.max_backends {
            return cx.err(
                0..0,
                "vip.backend",
                format!(
                    "{next_slot} backends but max_backends = {}",
                    load.max_backends
                ),
            );
        }
        let (cache, cache_routes) = validate_cache(&raw, &cx)?;
        Ok(Config {
            cache,
            cache_routes,
            daemon: DaemonConfig {
                iface,
                xdp_mode,
                netns,
                pin_dir,
                socket,
                metrics,
                state_file,
            },
            load,
            initial: Snapshot { settings, vips },
            telemetry,
        })
    }
}

fn validate_cache(
    raw: &RawConfig,
    cx: &Ctx<'_>,
) -> Result<(crate::cache::Settings, Vec<CacheRoute>), ConfigError> {
    use crate::cache::{Settings as CacheSettings, l2::RedisSettings, proxy::RouteConfig};
    let mut settings = CacheSettings::default();
    if let Some(c) = &raw.cache {
        if let Some(m) = &c.memory_mb {
            if !(1..=1 << 20).contains(m.get_ref()) {
                return cx.err(m.span(), "cache.memory_mb", "use 1 to 1048576 (MiB)");
            }
            settings.memory_bytes = *m.get_ref() << 20;
        }
        if let Some(n) = &c.shards {
            if !(1..=1024).contains(n.get_ref()) {
                return cx.err(n.span(), "cache.shards", "use 1 to 1024");
            }
            settings.shards = *n.get_ref();
        }
        let timeout = match &c.redis_timeout_ms {
            Some(t) if !(1..=10_000).contains(t.get_ref()) => {
                return cx.err(t.span(), "cache.redis_timeout_ms", "use 1 to 10000");
            }
            Some(t) => Duration::from_millis(*t.get_ref()),
            None => Duration::from_millis(100),
        };
        let prefix = match &c.redis_prefix {
            Some(p) if p.get_ref().is_empty() || p.get_ref().contains(char::is_whitespace) => {
                return cx.err(
                    p.span(),
                    "cache.redis_prefix",
                    "a non-empty word without spaces",
                );
            }
            Some(p) => p.get_ref().clone(),
            None => "balancer".into(),
        };
        if let Some(u) = &c.redis {
            let url = u.get_ref();
            if !(url.starts_with("redis://") || url.starts_with("unix://"))
                || redis::Client::open(url.as_str()).is_err()
            {
                return cx.err(
                    u.span(),
                    "cache.redis",
                    "a URL like \"redis://127.0.0.1:6379\" or \"unix:///run/redis.sock\"",
                );
            }
            settings.redis = Some(RedisSettings {
                url: url.clone(),
                timeout,
                prefix,
            });
        }
        settings.versions = c.models.clone();
    }
    let mut routes: Vec<CacheRoute> = Vec::new();
    for (i, r) in raw.cache_route.iter().enumerate() {
        let field = |f: &str| format!("cache_route[{i}].{f}");
        let name = r
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| format!("route{i}"));
        if name.is_empty() || routes.iter().any(|x| x.route.name == name) {
            let span = r.name.as_ref().map(|n| n.span()).unwrap_or(r.listen.span());
            return cx.err(
                span,
                field("name"),
                format!("{name:?}: names must be unique and non-empty"),
            );
        }
        let listen: SocketAddr = match r.listen.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                return cx.err(
                    r.listen.span(),
                    field("listen"),
                    "an address and port like \"127.0.0.1:8080\"",
                );
            }
        };
        if routes.iter().any(|x| x.route.listen == listen) {
            return cx.err(
                r.listen.span(),
                field("listen"),
                format!("{listen} is used by another route"),
            );
        }
        let pool = match (&r.backends, &r.vip) {
            (Some(b), None) => {
                let mut addrs = Vec::new();
                for a in b.get_ref() {
                    match a.parse::<SocketAddr>() {
                        Ok(x) => addrs.push(x),
                        Err(_) => {
                            return cx.err(
                                b.span(),
                                field("backends"),
                                format!("{a:?}: use \"address:port\" like \"10.0.1.10:8000\""),
                            );
                        }
                    }
                }
                if addrs.is_empty() {
                    return cx.err(b.span(), field("backends"), "list at least one backend");
                }
                CachePool::Static(addrs)
            }
            (None, Some(v)) => {
                let vip: VipId = match v.get_ref().parse() {
                    Ok(id) => id,
                    Err(e) => return cx.err(v.span(), field("vip"), e),
                };
                let Some(port) = &r.backend_port else {
                    return cx.err(
                        v.span(),
                        field("backend_port"),
                        "missing: the port the VIP's backends serve HTTP on",
                    );
                };
                CachePool::Vip {
                    vip,
                    port: *port.get_ref(),
                }
            }
            _ => {
                return cx.err(
                    r.listen.span(),
                    field("backends"),
                    "give exactly one of backends = [..] or vip = \"..\" (with backend_port)",
                );
            }
        };
        let ranged = |v: &Option<Spanned<u64>>, f: &str, default: u64, lo: u64, hi: u64| match v {
            None => Ok(default),
            Some(x) if (lo..=hi).contains(x.get_ref()) => Ok(*x.get_ref()),
            Some(x) => cx.err(x.span(), field(f), format!("use {lo} to {hi}")),
        };
        let ttl = ranged(&r.ttl_secs, "ttl_secs", 300, 1, 7 * 86_400)?;
        let max_object = ranged(
            &r.max_object_bytes,
            "max_object_bytes",
            1 << 20,
            1,
            64 << 20,
        )?;
        let max_request = ranged(
            &r.max_request_bytes,
            "max_request_bytes",
            1 << 20,
            1,
            64 << 20,
        )?;
        let timeout = ranged(&r.timeout_ms, "timeout_ms", 60_000, 1, 600_000)?;
        routes.push(CacheRoute {
            route: RouteConfig {
                name,
                listen,
                ttl: Duration::from_secs(ttl),
                max_object_bytes: max_object,
                max_request_bytes: max_request,
                exclude_fields: r
                    .exclude_fields
                    .clone()
                    .unwrap_or_else(|| vec!["user".into()]),
                deterministic: r.deterministic.unwrap_or(false),
                timeout: Duration::from_millis(timeout),
            },
            pool,
        });
    }
    if raw.cache.is_some() && routes.is_empty() {
        return cx.err(
            0..0,
            "cache",
            "a [cache] table without any [[cache_route]] caches nothing",
        );
    }
    Ok((settings, routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), src)
    }

    const GOOD: &str = r#"
[daemon]
iface = "eth0"
metrics = ""

[dataplane]
mtu = 1600
tunnel_src_v4 = "10.255.0.0/16"

[[vip]]
vip = "10.0.0.100:80/tcp"
affinity_secs = 60

[[vip.backend]]
address = "10.0.1.10"
weight = 3

[[vip.backend]]
address = "10.0.1.11"
mac = "02:00:00:00:00:11"

[[vip]]
vip = "[2001:db8::1]:443/tcp"
mode = "l2-dsr"
"#;

    #[test]
    fn good_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.daemon.iface.as_deref(), Some("eth0"));
        assert_eq!(c.daemon.metrics, None);
        assert_eq!(c.initial.settings.mtu, 1600);
        assert_eq!(c.initial.vips.len(), 2);
        let v = &c.initial.vips[0];
        assert_eq!(v.spec.affinity_secs, Some(60));
        assert_eq!(v.backends[0].weight, 3);
        assert_eq!(v.backends[1].weight, 1);
        assert!(v.backends[1].mac_static);
        assert_eq!(c.initial.vips[1].spec.mode, Mode::L2Dsr);
    }

    #[test]
    fn errors_name_line_and_field() {
        let cases = [
            (
                GOOD.replace("weight = 3", "weight = 3000000"),
                16,
                "vip[0].backend[0].weight",
                "out of range",
            ),
            (
                GOOD.replace("\"10.0.1.11\"", "\"10.0.1.300\""),
                19,
                "vip[0].backend[1].address",
                "IP address",
            ),
            (
                GOOD.replace("l2-dsr", "magic"),
                24,
                "vip[1].mode",
                "tunnel or l2-dsr",
            ),
            (
                GOOD.replace("10.0.0.100:80/tcp", "10.0.0.100/tcp"),
                11,
                "vip[0].vip",
                "missing port",
            ),
            (
                GOOD.replace("02:00:00:00:00:11", "02:00"),
                20,
                "vip[0].backend[1].mac",
                "six hex bytes",
            ),
            (
                GOOD.replace("affinity_secs = 60", "affinity_secs = 0"),
                12,
                "vip[0].affinity_secs",
                "1 to",
            ),
            (
                GOOD.replace("mtu = 1600", "mtu = 100"),
                7,
                "dataplane.mtu",
                "mtu 100",
            ),
            (
                GOOD.replace("\"10.255.0.0/16\"", "\"10.255.0.0\""),
                8,
                "dataplane.tunnel_src_v4",
                "prefix",
            ),
            (
                GOOD.replace("\"10.255.0.0/16\"", "\"10.255.0.0/40\""),
                8,
                "dataplane.tunnel_src_v4",
                "/40",
            ),
            (
                GOOD.replace("\"10.0.1.10\"", "\"10.0.1.11\""),
                19,
                "vip[0].backend[1].address",
                "twice",
            ),
        ];
        for (src, line, field, msg) in cases {
            let e = parse(&src).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (Some(line), field), "{e}");
            assert!(e.message.contains(msg), "{e}");
            assert!(e.to_string().starts_with(&format!("t.toml:{line}:")), "{e}");
        }
    }

    /// Rules that only the engine enforced once (a `0.0.0.0` VIP passed
    /// `config check`, then failed after attaching) now fail here, with the
    /// engine's own message, at the right key.
    #[test]
    fn config_check_applies_the_engines_rules() {
        let cases = [
            (
                "0.0.0.0 VIP",
                GOOD.replace("10.0.0.100:80", "0.0.0.0:80"),
                11,
                "vip[0].vip",
                "unspecified",
            ),
            (
                "[::] VIP",
                GOOD.replace("[2001:db8::1]:443", "[::]:443"),
                23,
                "vip[1].vip",
                "unspecified",
            ),
            (
                "multicast VIP",
                GOOD.replace("10.0.0.100:80", "239.1.1.1:80"),
                11,
                "vip[0].vip",
                "multicast",
            ),
            (
                "broadcast VIP",
                GOOD.replace("10.0.0.100:80", "255.255.255.255:80"),
                11,
                "vip[0].vip",
                "broadcast",
            ),
            (
                "broadcast backend",
                GOOD.replace("\"10.0.1.10\"", "\"255.255.255.255\""),
                15,
                "vip[0].backend[0].address",
                "broadcast",
            ),
            (
                "affinity beyond a week",
                GOOD.replace("affinity_secs = 60", "affinity_secs = 604801"),
                12,
                "vip[0].affinity_secs",
                "out of range",
            ),
            (
                "L2 DSR backend in the other family",
                GOOD.replace(
                    "mode = \"l2-dsr\"",
                    "mode = \"l2-dsr\"\n[[vip.backend]]\naddress = \"10.0.1.12\"",
                ),
                26,
                "vip[1].backend[0].address",
                "address family",
            ),
        ];
        for (what, src, line, field, msg) in cases {
            let e = parse(&src).unwrap_err();
            assert_eq!(
                (e.line, e.field.as_str()),
                (Some(line), field),
                "{what}: {e}"
            );
            assert!(e.message.contains(msg), "{what}: {e}");
        }
    }

    #[test]
    fn syntax_and_unknown_fields() {
        let e = parse("[daemon]\niface = \"eth0\"\nifase = \"x\"\n").unwrap_err();
        assert_eq!(e.field, "ifase");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse("[daemon\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        let e = parse("[dataplane]\nring_size = 100\n[daemon]\niface=\"x\"\n").unwrap_err();
        assert!(e.message.contains("not a prime"), "{e}");
        let e = parse("").unwrap_err();
        assert!(e.message.contains("missing"), "{e}");
    }

    #[test]
    fn cache_routes() {
        let c = parse(
            "[cache]\nmemory_mb = 64\nredis = \"redis://127.0.0.1:6390\"\n[cache.models]\nm = \"v2\"\n\
             [[cache_route]]\nname = \"a\"\nlisten = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9000\"]\n\
             ttl_secs = 5\n",
        )
        .unwrap();
        assert_eq!(c.daemon.iface, None, "cache-only gateway");
        assert_eq!(c.cache.memory_bytes, 64 << 20);
        assert_eq!(c.cache.versions.get("m").map(String::as_str), Some("v2"));
        assert_eq!(c.cache_routes[0].route.ttl, Duration::from_secs(5));
        assert_eq!(
            c.cache_routes[0].route.exclude_fields,
            vec!["user".to_string()]
        );
        let vip = parse(
            "[daemon]\niface = \"eth0\"\n[[cache_route]]\nlisten = \"127.0.0.1:1\"\nvip = \"10.0.0.1:80/tcp\"\nbackend_port = 8000\n",
        )
        .unwrap();
        assert!(matches!(
            vip.cache_routes[0].pool,
            CachePool::Vip { port: 8000, .. }
        ));
        for (src, field, says) in [
            (
                "[[cache_route]]\nlisten = \"nope\"\nbackends = [\"127.0.0.1:1\"]\n",
                "cache_route[0].listen",
                "address and port",
            ),
            (
                "[[cache_route]]\nlisten = \"127.0.0.1:1\"\n",
                "cache_route[0].backends",
                "exactly one",
            ),
            (
                "[[cache_route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"10.0.0.1\"]\n",
                "cache_route[0].backends",
                "address:port",
            ),
            (
                "[[cache_route]]\nlisten = \"127.0.0.1:1\"\nvip = \"10.0.0.1:80/tcp\"\n",
                "cache_route[0].backend_port",
                "missing",
            ),
            (
                "[[cache_route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\nttl_secs = 0\n",
                "cache_route[0].ttl_secs",
                "use 1 to",
            ),
            (
                "[cache]\nredis = \"http://x\"\n[[cache_route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n",
                "cache.redis",
                "redis://",
            ),
            (
                "[cache]\nmemory_mb = 1\n[daemon]\niface = \"eth0\"\n",
                "cache",
                "caches nothing",
            ),
            (
                "[[cache_route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n[[cache_route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n",
                "cache_route[1].listen",
                "used by another",
            ),
        ] {
            let e = parse(src).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(says), "{e}");
        }
    }
}
