//! The admin API: JSON over HTTP/1.1 on a Unix socket.
//!
//! | method | path | body | reply |
//! |---|---|---|---|
//! | GET | `/v1/status` | | [`StatusReply`] |
//! | GET | `/v1/vips` | | `[VipInfo]` |
//! | POST | `/v1/vips` | [`VipSpec`] | `{}` |
//! | DELETE | `/v1/vips/{addr}/{port}/{proto}` | | `{}` |
//! | PATCH | `/v1/vips/{addr}/{port}/{proto}` | [`VipSet`] | `{}` |
//! | POST | `/v1/vips/{addr}/{port}/{proto}/backends` | [`AddBackend`] | `{}` |
//! | DELETE | `/v1/vips/{..}/backends/{addr}` | | `{}` |
//! | POST | `/v1/vips/{..}/backends/{addr}/drain` or `/undrain` | | `{}` |
//! | PUT | `/v1/vips/{..}/backends/{addr}/weight` | [`SetWeight`] | `{}` |
//! | GET | `/v1/stats` | | [`StatsReply`] |
//! | GET | `/v1/weights` | | [`WeightsReply`] |
//! | GET | `/v1/cache` | | [`CacheStats`] |
//! | POST | `/v1/cache/invalidate` | [`InvalidateBody`] | [`InvalidateReply`] |
//! | POST | `/v1/cache/bump` | [`BumpBody`] | [`InvalidateReply`] |
//!
//! Errors come back with a 4xx/5xx status and `{"error": "..."}`.

pub mod client;
pub mod server;

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    cache::{CacheStats, InvalidateReply, Invalidation},
    lb::{VipId, VipInfo, VipSpec},
    net::MacAddr,
};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Body of "add backend".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBackend {
    /// Backend address.
    pub addr: IpAddr,
    /// Weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Static next-hop MAC; resolved from the neighbour table if absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

fn one() -> u32 {
    1
}

/// Body of "set a VIP's tier or shedding".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSet {
    /// Its new tier.
    #[serde(default)]
    pub tier: Option<crate::route::tier::Tier>,
    /// Refuse this percentage of its new connections in XDP, 0 to 100
    /// (until telemetry, if the VIP has it, sets it again).
    #[serde(default)]
    pub shed_percent: Option<u8>,
    /// How its refused TCP connections are refused.
    #[serde(default)]
    pub refuse: Option<crate::lb::Refusal>,
}

impl VipSet {
    /// Checks the percentage, and that something is to change.
    pub fn validate(&self) -> Result<(), ApiError> {
        match self.shed_percent {
            Some(p) if p > 100 => Err(ApiError::bad_request(format!(
                "shed_percent {p}: use 0 to 100"
            ))),
            _ if self.tier.is_none() && self.shed_percent.is_none() && self.refuse.is_none() => {
                Err(ApiError::bad_request(
                    "give a tier, a shed_percent, a refuse or several",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Body of "set weight".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetWeight {
    /// The new weight.
    pub weight: u32,
}

/// A backend of a VIP and a reason: why it takes no new connections, or why
/// its telemetry is not understood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownBackend {
    /// Its VIP.
    pub vip: VipId,
    /// Its address.
    pub addr: IpAddr,
    /// Why.
    pub reason: String,
}

/// Reply of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Daemon version.
    pub version: String,
    /// Interface; `None`: no data plane (a cache-only gateway).
    pub iface: Option<String>,
    /// Network namespace, if any.
    pub netns: Option<String>,
    /// Pin directory.
    pub pin_dir: String,
    /// Attach mode, when this daemon attached (not adopted).
    pub xdp_mode: Option<String>,
    /// Whether the running data plane was adopted at start.
    pub adopted: bool,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Maglev ring size.
    pub ring_size: u32,
    /// Connection-table entries (capacity) and live ones.
    pub flow_table: (u64, u64),
    /// Number of VIPs.
    pub vips: usize,
    /// Number of backends (memberships).
    pub backends: usize,
    /// Backends that are down, with reasons.
    pub down: Vec<DownBackend>,
    /// Backends whose last scrape held no signal their kind is known by
    /// (empty `/metrics`, wrong `kind`): they count as saturated. The reason
    /// names the kind.
    #[serde(default)]
    pub unknown_telemetry: Vec<DownBackend>,
    /// Cache routes, as `name listen-address`.
    #[serde(default)]
    pub cache_routes: Vec<String>,
}

/// Counters of one backend in `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatsRow {
    /// Address.
    pub addr: IpAddr,
    /// Configured weight.
    pub weight: u32,
    /// Weight in the ring now.
    pub effective_weight: u32,
    /// Ring slots held.
    pub ring_slots: u64,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Connections placed.
    pub new_flows: u64,
    /// Why it is down, if it is.
    pub down: Option<String>,
    /// Its telemetry held no recognised signal (it counts as saturated).
    #[serde(default)]
    pub telemetry_unknown: bool,
}

/// Counters of one VIP in `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatsRow {
    /// The VIP.
    pub vip: VipId,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Connections placed.
    pub new_flows: u64,
    /// Its backends.
    pub backends: Vec<BackendStatsRow>,
}

/// Reply of `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Milliseconds since the Unix epoch when read.
    pub at_ms: u64,
    /// Global data-path counters by name.
    pub global: BTreeMap<String, u64>,
    /// Per VIP.
    pub vips: Vec<VipStatsRow>,
    /// The result cache, when the daemon runs one.
    #[serde(default)]
    pub cache: Option<CacheStats>,
    /// Per route.
    #[serde(default)]
    pub routes: Vec<RouteStatsRow>,
}

/// One route's counters in [`StatsReply`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteStatsRow {
    /// The route's name.
    pub route: String,
    /// Requests so far per priority tier (by its label).
    pub requests_by_tier: BTreeMap<String, u64>,
    /// Of them, those shed (429) per tier.
    #[serde(default)]
    pub shed_by_tier: BTreeMap<String, u64>,
    /// Of them, those answered from a stale cache entry instead.
    #[serde(default)]
    pub stale_by_tier: BTreeMap<String, u64>,
    /// Of them, those sent to the fallback pool instead.
    #[serde(default)]
    pub fallback_by_tier: BTreeMap<String, u64>,
    /// Of them, those that waited in the route's queue for headroom.
    #[serde(default)]
    pub queued_by_tier: BTreeMap<String, u64>,
    /// Time to the answer's headers per tier.
    #[serde(default)]
    pub latency_by_tier: BTreeMap<String, crate::route::latency::Histogram>,
    /// Its last placements by `pick = "aware"`, newest first.
    #[serde(default)]
    pub placements: Vec<crate::route::explain::Placement>,
    /// The cost model's mean absolute percentage error so far, on time to
    /// first token and end to end (fractions; `None` before any answer).
    #[serde(default)]
    pub prediction_mape: [Option<f64>; 2],
}

/// Body of `POST /v1/cache/invalidate`: a model, and at most one of a key
/// or a prompt prefix (neither: the whole model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateBody {
    /// The model.
    pub model: String,
    /// One entry's key (the `x-cache-key` header).
    #[serde(default)]
    pub key: Option<String>,
    /// Entries whose prompt starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
}

impl InvalidateBody {
    /// The invalidation it asks for.
    pub fn into_invalidation(self) -> Result<Invalidation, ApiError> {
        if self.model.is_empty() {
            return Err(ApiError::bad_request("model must not be empty"));
        }
        match (self.key, self.prefix) {
            (Some(_), Some(_)) => Err(ApiError::bad_request("give a key or a prefix, not both")),
            (Some(key), None) => Ok(Invalidation::Key {
                model: self.model,
                key,
            }),
            (None, Some(prefix)) if prefix.is_empty() => Err(ApiError::bad_request(
                "an empty prefix would match everything: invalidate the model instead",
            )),
            (None, Some(prefix)) => Ok(Invalidation::Prefix {
                model: self.model,
                prefix,
            }),
            (None, None) => Ok(Invalidation::Model { model: self.model }),
        }
    }
}

/// Body of `POST /v1/cache/bump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BumpBody {
    /// The model whose version to replace.
    pub model: String,
}

/// Reply of `GET /v1/weights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsReply {
    /// Milliseconds the last scrape-and-score cycle took.
    pub cycle_ms: f64,
    /// Milliseconds applying its decisions (ring rebuilds) took.
    pub apply_ms: f64,
    /// Pools with telemetry.
    pub pools: Vec<crate::control::autoweight::PoolReport>,
}

/// A request, as the daemon's handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Status.
    Status,
    /// List VIPs.
    ListVips,
    /// Add a VIP.
    AddVip(VipSpec),
    /// Remove a VIP.
    RemoveVip(VipId),
    /// Set a VIP's tier or shedding.
    SetVip(VipId, VipSet),
    /// Add a backend.
    AddBackend(VipId, AddBackend),
    /// Remove a backend.
    RemoveBackend(VipId, IpAddr),
    /// Drain (true) or undrain (false).
    Drain(VipId, IpAddr, bool),
    /// Set a weight.
    SetWeight(VipId, IpAddr, u32),
    /// Counters.
    Stats,
    /// Telemetry-driven weights with explanations.
    Weights,
    /// Cache counters.
    CacheStats,
    /// Invalidate cache entries.
    CacheInvalidate(Invalidation),
    /// Replace a model's version.
    CacheBump(String),
}

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To [`Request::Status`].
    Status(StatusReply),
    /// To [`Request::ListVips`].
    Vips(Vec<VipInfo>),
    /// To [`Request::Stats`].
    Stats(StatsReply),
    /// To [`Request::Weights`].
    Weights(WeightsReply),
    /// To [`Request::CacheStats`].
    Cache(CacheStats),
    /// To [`Request::CacheInvalidate`] and [`Request::CacheBump`].
    Invalidated(InvalidateReply),
    /// A change was applied.
    Done,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for the operator.
    pub message: String,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is wrong; the message says what to change.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404: no such VIP or backend.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 409: the request conflicts with the daemon's state or role.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }

    /// 500: the daemon failed; retrying will not help.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }

    /// 503: a dependency (Redis, say) is unavailable; retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
}

/// The path segment form of a VIP: `addr/port/proto`.
pub fn vip_path(id: &VipId) -> String {
    format!("{}/{}/{}", id.addr, id.port, id.proto)
}
