//! The one API through which VIPs and backends are changed.
//!
//! [`LoadBalancer`] owns the data plane's maps and a model of what they should
//! hold: VIPs, each with its pool of backends, weights, drain state and next-hop
//! MAC. Every mutation validates its input first, then applies the change to the
//! maps in an order that keeps every packet on a consistent view:
//!
//! - a ring is rewritten only when its contents change, into the inactive half,
//!   then published with a single `VIPS` update (see [`crate::dataplane::maps::RingMap`]);
//! - a removed backend leaves the ring first; its slot is deactivated (which is
//!   what moves its established flows elsewhere) one grace period later, so no
//!   packet holding the old ring finds a dead slot;
//! - a drained backend (weight 0) leaves the ring but stays active, so its
//!   established connections stay put.
//!
//! Backend slots are per (VIP, backend) membership: removing a backend from one
//! VIP moves only that VIP's flows, even when the same server serves others.

pub mod maglev;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use balancer_common::{
    BACKEND_F_ACTIVE, Backend, DataplaneConfig, ForwardMode, GlobalStats, PROTO_TCP, PROTO_UDP,
    RING_EMPTY, TrafficStats, VIP_F_AFFINITY, VipFilter, VipKey, VipMeta,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use self::maglev::{MaglevError, Member};
use crate::{
    dataplane::maps::{BalancerMaps, MapsError},
    net::{MacAddr, addr_words, family, words_addr},
};

/// How long after a ring flip the previous half may still be read by a packet
/// in flight. An XDP program runs for microseconds under RCU; 10 ms is far
/// beyond that and still invisible to an operator.
pub const GRACE: Duration = Duration::from_millis(10);

/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Longest accepted client-affinity timeout.
pub const MAX_AFFINITY_SECS: u32 = 7 * 24 * 3600;

/// Errors of the load-balancer API. Validation errors say what to change.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The VIP already exists.
    #[error("VIP {0} already exists")]
    VipExists(VipId),
    /// No such VIP.
    #[error("no VIP {0}; `balancer vip list` shows the configured ones")]
    NoSuchVip(VipId),
    /// The backend is already in the VIP's pool.
    #[error("backend {backend} is already in the pool of {vip}")]
    BackendExists {
        /// The VIP.
        vip: VipId,
        /// The backend address.
        backend: IpAddr,
    },
    /// The backend is not in the VIP's pool.
    #[error("backend {backend} is not in the pool of {vip}")]
    NoSuchBackend {
        /// The VIP.
        vip: VipId,
        /// The backend address.
        backend: IpAddr,
    },
    /// All VIP indexes are taken.
    #[error("all {0} VIP slots are in use; restart the data plane with a larger max_vips")]
    TooManyVips(u32),
    /// All backend slots are taken.
    #[error("all {0} backend slots are in use; restart the data plane with a larger max_backends")]
    TooManyBackends(u32),
    /// An address that cannot be a VIP or backend.
    #[error("{addr} cannot be {role}: {why}")]
    BadAddress {
        /// The address.
        addr: IpAddr,
        /// "a VIP" or "a backend".
        role: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A weight out of range.
    #[error("weight {0} out of range: use 0 to {MAX_WEIGHT} (0 drains)")]
    BadWeight(u32),
    /// An affinity timeout out of range.
    #[error("affinity timeout {0}s out of range: use 1 to {MAX_AFFINITY_SECS} seconds")]
    BadAffinityTimeout(u32),
    /// A data-plane setting out of range.
    #[error("invalid setting: {0}")]
    BadSetting(String),
    /// A map operation failed.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// Building a ring failed.
    #[error(transparent)]
    Maglev(#[from] MaglevError),
}

type Result<T> = std::result::Result<T, LbError>;

/// Transport protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("unknown protocol {s:?}: use tcp or udp")),
        }
    }
}

/// Identity of a VIP: address, port (0 = all ports) and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VipId {
    /// Address clients connect to.
    pub addr: IpAddr,
    /// Port; 0 means every port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
}

impl VipId {
    fn key(&self) -> VipKey {
        VipKey {
            addr: addr_words(self.addr),
            port: self.port.to_be(),
            proto: self.proto.number(),
            family: family(self.addr),
        }
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port == 0 {
            "*".to_string()
        } else {
            self.port.to_string()
        };
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{port}/{}", self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{port}/{}", self.proto),
        }
    }
}

impl FromStr for VipId {
    type Err = String;

    /// Parses `ADDR:PORT/PROTO`, `[V6ADDR]:PORT/PROTO`; PORT may be `*` or 0
    /// for all ports; `/PROTO` defaults to tcp.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let hint = "expected ADDR:PORT[/tcp|udp], e.g. 10.0.0.1:80/tcp or [2001:db8::1]:443";
        let (hostport, proto) = match s.rsplit_once('/') {
            Some((h, p)) => (h, p.parse()?),
            None => (s, Proto::Tcp),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: missing port; {hint}"))?;
        let host = match (host.strip_prefix('['), host.strip_suffix(']')) {
            (Some(h), Some(_)) => &h[..h.len() - 1],
            (None, None) if !host.contains(':') => host,
            _ => return Err(format!("{s:?}: write IPv6 addresses in brackets; {hint}")),
        };
        let addr: IpAddr = host
            .parse()
            .map_err(|_| format!("{s:?}: {host:?} is not an IP address; {hint}"))?;
        let port = if port == "*" {
            0
        } else {
            port.parse()
                .map_err(|_| format!("{s:?}: {port:?} is not a port (0-65535 or *); {hint}"))?
        };
        Ok(VipId { addr, port, proto })
    }
}

/// Everything needed to create a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSpec {
    /// Identity.
    pub id: VipId,
    /// Forwarding mode.
    pub mode: Mode,
    /// Client affinity timeout in seconds; `None` balances per connection.
    pub affinity_secs: Option<u32>,
}

/// Forwarding mode, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// IPIP / IP6IP6 tunnel with direct server return.
    #[default]
    Tunnel,
    /// L2 direct server return (MAC rewrite only).
    L2Dsr,
}

impl Mode {
    fn wire(self) -> ForwardMode {
        match self {
            Mode::Tunnel => ForwardMode::Tunnel,
            Mode::L2Dsr => ForwardMode::L2Dsr,
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "tunnel" | "ipip" => Ok(Mode::Tunnel),
            "l2-dsr" | "l2dsr" | "dsr" => Ok(Mode::L2Dsr),
            _ => Err(format!("unknown mode {s:?}: use tunnel or l2-dsr")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Tunnel => "tunnel",
            Mode::L2Dsr => "l2-dsr",
        })
    }
}

/// Everything needed to add a backend to a VIP's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    /// Tunnel destination / server address.
    pub addr: IpAddr,
    /// Relative weight (0 drains).
    pub weight: u32,
    /// Next-hop MAC; `None` until resolved (the backend is down meanwhile).
    pub mac: Option<MacAddr>,
}

/// State of one backend in one pool, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Address.
    pub addr: IpAddr,
    /// Configured weight.
    pub weight: u32,
    /// Weight in the ring now (0 when drained or down).
    pub effective_weight: u32,
    /// Drained by the operator.
    pub drained: bool,
    /// Why the backend is down, if it is.
    pub down: Option<String>,
    /// Next-hop MAC.
    pub mac: Option<MacAddr>,
    /// Slot index in the maps.
    pub slot: u32,
    /// Ring slots held now.
    pub ring_slots: u64,
}

/// State of one VIP, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipInfo {
    /// The VIP's configuration.
    pub spec: VipSpec,
    /// Index in the maps.
    pub index: u32,
    /// Its pool.
    pub backends: Vec<BackendInfo>,
}

/// Data-plane settings (`CONFIG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// L3 MTU towards backends; 0 disables the "too big" check.
    pub mtu: u32,
    /// IPv4 tunnel source prefix: host bits come from the flow hash.
    pub tunnel_src_v4: Ipv4Addr,
    /// Prefix length of `tunnel_src_v4` (8 to 32).
    pub tunnel_src_v4_len: u8,
    /// IPv6 tunnel source prefix.
    pub tunnel_src_v6: Ipv6Addr,
    /// Prefix length of `tunnel_src_v6` (64 to 128; at most the last 32 bits vary).
    pub tunnel_src_v6_len: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mtu: 1500,
            tunnel_src_v4: Ipv4Addr::new(172, 16, 0, 0),
            tunnel_src_v4_len: 16,
            tunnel_src_v6: Ipv6Addr::new(0xfd00, 0xba1a, 0, 0, 0, 0, 0, 0),
            tunnel_src_v6_len: 96,
        }
    }
}

impl Settings {
    /// Checks the settings without applying them.
    pub fn check(&self) -> Result<()> {
        self.validate().map(|_| ())
    }

    fn validate(&self) -> Result<DataplaneConfig> {
        if self.mtu != 0 && !(576..=65_535).contains(&self.mtu) {
            return Err(LbError::BadSetting(format!(
                "mtu {} out of range: use 576 to 65535, or 0 to disable the check",
                self.mtu
            )));
        }
        if !(8..=32).contains(&self.tunnel_src_v4_len) {
            return Err(LbError::BadSetting(format!(
                "tunnel_src_v4 prefix length /{} out of range: use /8 to /32",
                self.tunnel_src_v4_len
            )));
        }
        if !(64..=128).contains(&self.tunnel_src_v6_len) {
            return Err(LbError::BadSetting(format!(
                "tunnel_src_v6 prefix length /{} out of range: use /64 to /128",
                self.tunnel_src_v6_len
            )));
        }
        let host4: u32 = if self.tunnel_src_v4_len == 32 {
            0
        } else {
            u32::MAX >> self.tunnel_src_v4_len
        };
        let bits6 = (128 - self.tunnel_src_v6_len as u32).min(32);
        let host6: u32 = if bits6 == 0 {
            0
        } else {
            u32::MAX >> (32 - bits6)
        };
        let v6 = addr_words(IpAddr::V6(self.tunnel_src_v6));
        Ok(DataplaneConfig {
            tunnel_src_v4: u32::from_ne_bytes(self.tunnel_src_v4.octets()),
            tunnel_src_v4_hashmask: u32::from_ne_bytes(host4.to_be_bytes()),
            tunnel_src_v6: v6,
            tunnel_src_v6_hashmask: u32::from_ne_bytes(host6.to_be_bytes()),
            mtu: self.mtu,
        })
    }
}

/// Who marked a backend down. A backend is down while any source says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownSource {
    /// Next-hop resolution (no neighbour entry).
    NextHop,
    /// Health checks or telemetry.
    Health,
}

#[derive(Debug, Clone)]
struct BackendState {
    weight: u32,
    drained: bool,
    down: BTreeMap<DownSource, String>,
    mac: Option<MacAddr>,
    mac_static: bool,
    slot: u32,
    auto_weight: Option<u32>,
}

impl BackendState {
    fn effective_weight(&self) -> u32 {
        if self.drained || !self.down.is_empty() || self.mac.is_none() {
            0
        } else {
            self.auto_weight.unwrap_or(self.weight)
        }
    }

    fn down_reason(&self) -> Option<String> {
        if !self.down.is_empty() {
            return Some(self.down.values().cloned().collect::<Vec<_>>().join("; "));
        }
        self.mac
            .is_none()
            .then(|| "next hop unresolved".to_string())
    }
}

/// A backend as persisted in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// Address.
    pub addr: IpAddr,
    /// Configured weight.
    pub weight: u32,
    /// Drained by the operator.
    #[serde(default)]
    pub drained: bool,
    /// Next-hop MAC last known.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The MAC was configured, not resolved.
    #[serde(default)]
    pub mac_static: bool,
    /// Weight set by telemetry (overrides `weight` in the ring while set).
    #[serde(default)]
    pub auto_weight: Option<u32>,
    /// Slot in the maps (used to match the running data plane on adoption).
    pub slot: u32,
}

/// A VIP as persisted in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRecord {
    /// Its configuration.
    pub spec: VipSpec,
    /// Index in the maps.
    pub index: u32,
    /// Its pool.
    pub backends: Vec<BackendRecord>,
}

/// Everything the control plane must remember across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Data-plane settings.
    pub settings: Settings,
    /// VIPs with their pools.
    pub vips: Vec<VipRecord>,
}

#[derive(Debug, Clone)]
struct VipState {
    spec: VipSpec,
    index: u32,
    meta: VipMeta,
    backends: BTreeMap<IpAddr, BackendState>,
    last_flip: Option<Instant>,
}

/// The load balancer: validated changes to VIPs and backends, applied to the
/// data plane's maps.
pub struct LoadBalancer {
    maps: BalancerMaps,
    vips: BTreeMap<VipId, VipState>,
    settings: Settings,
}

fn check_addr(addr: IpAddr, role: &'static str) -> Result<()> {
    let bad = |why| Err(LbError::BadAddress { addr, role, why });
    if addr.is_unspecified() {
        return bad("it is unspecified");
    }
    if addr.is_multicast() {
        return bad("it is multicast");
    }
    if let IpAddr::V4(a) = addr
        && a.is_broadcast()
    {
        return bad("it is the broadcast address");
    }
    Ok(())
}

impl LoadBalancer {
    /// Wraps freshly created maps: writes default settings and no VIPs.
    pub fn new(maps: BalancerMaps, settings: Settings) -> Result<Self> {
        let mut lb = Self {
            maps,
            vips: BTreeMap::new(),
            settings,
        };
        lb.set_settings(settings)?;
        lb.maps.filter.set(0, VipFilter::default())?;
        Ok(lb)
    }

    /// Rebuilds the load balancer from a snapshot.
    ///
    /// With `adopted` maps (a running data plane found pinned), entries that
    /// match the snapshot (same VIP index, same backend in the same slot) are
    /// kept as they are, live ring halves included, so traffic is not
    /// disturbed; anything else is repaired towards the snapshot: missing
    /// VIPs and backends are added, kernel entries the snapshot does not know
    /// are removed. With fresh maps the snapshot is applied from scratch.
    pub fn restore(maps: BalancerMaps, snapshot: &Snapshot, adopted: bool) -> Result<Self> {
        let mut lb = Self {
            maps,
            vips: BTreeMap::new(),
            settings: snapshot.settings,
        };
        lb.set_settings(snapshot.settings)?;
        if !adopted {
            lb.maps.filter.set(0, VipFilter::default())?;
        }
        let mut kept_slots = std::collections::BTreeSet::new();
        for rec in &snapshot.vips {
            let key = rec.spec.id.key();
            let live = if adopted {
                lb.maps.vips.get(&key).copied()
            } else {
                None
            };
            match live {
                Some(meta) if meta.index == rec.index => {
                    lb.maps.rings.adopt(meta.index, meta.ring_gen & 1)?;
                    let mut backends = BTreeMap::new();
                    for b in &rec.backends {
                        let k = lb.maps.backends.get(b.slot).copied().unwrap_or_default();
                        let same = k.flags & BACKEND_F_ACTIVE != 0
                            && words_addr(k.addr, k.family) == Some(b.addr)
                            && !kept_slots.contains(&b.slot);
                        // Backends that don't match are added afresh below.
                        if same {
                            kept_slots.insert(b.slot);
                            backends.insert(
                                b.addr,
                                BackendState {
                                    weight: b.weight,
                                    drained: b.drained,
                                    down: BTreeMap::new(),
                                    mac: b.mac,
                                    mac_static: b.mac_static,
                                    slot: b.slot,
                                    auto_weight: b.auto_weight,
                                },
                            );
                        }
                    }
                    lb.vips.insert(
                        rec.spec.id,
                        VipState {
                            spec: rec.spec.clone(),
                            index: meta.index,
                            meta,
                            backends,
                            last_flip: None,
                        },
                    );
                }
                Some(_) => {
                    // Same address, other index: start it over below.
                    lb.maps.vips.remove(&key)?;
                }
                None => {}
            }
        }
        // Kernel VIPs the snapshot does not know, and slots nobody owns.
        let stray: Vec<VipKey> = lb
            .maps
            .vips
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !snapshot.vips.iter().any(|r| r.spec.id.key() == *k))
            .collect();
        for k in stray {
            lb.maps.vips.remove(&k)?;
        }
        lb.rebuild_filter()?;
        for slot in 0..lb.maps.backends.len() {
            let active = lb
                .maps
                .backends
                .get(slot)
                .is_some_and(|b| b.flags & BACKEND_F_ACTIVE != 0);
            if active && !kept_slots.contains(&slot) {
                lb.deactivate_slot(slot)?;
            }
        }
        // Add what is missing, then bring every ring in line (a no-op flip is
        // skipped, so an intact adopted ring stays exactly as it was).
        for rec in &snapshot.vips {
            if !lb.vips.contains_key(&rec.spec.id) {
                lb.add_vip(rec.spec.clone())?;
            }
        }
        for rec in &snapshot.vips {
            for b in &rec.backends {
                if !lb
                    .vips
                    .get(&rec.spec.id)
                    .is_some_and(|v| v.backends.contains_key(&b.addr))
                {
                    lb.add_backend(
                        &rec.spec.id,
                        BackendSpec {
                            addr: b.addr,
                            weight: b.weight,
                            mac: b.mac,
                        },
                    )?;
                    let st = lb.backend_mut(&rec.spec.id, b.addr)?;
                    st.drained = b.drained;
                    st.mac_static = b.mac_static;
                }
            }
            lb.sync_ring(&rec.spec.id)?;
        }
        Ok(lb)
    }

    /// The state to persist.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            settings: self.settings,
            vips: self
                .vips
                .values()
                .map(|v| VipRecord {
                    spec: v.spec.clone(),
                    index: v.index,
                    backends: v
                        .backends
                        .iter()
                        .map(|(addr, b)| BackendRecord {
                            addr: *addr,
                            weight: b.weight,
                            drained: b.drained,
                            mac: b.mac,
                            mac_static: b.mac_static,
                            slot: b.slot,
                            auto_weight: b.auto_weight,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The maps (for statistics and inspection).
    pub fn maps(&self) -> &BalancerMaps {
        &self.maps
    }

    /// Mutable maps (tests seed the connection tables through this).
    pub fn maps_mut(&mut self) -> &mut BalancerMaps {
        &mut self.maps
    }

    /// Current settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Applies data-plane settings.
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        let cfg = settings.validate()?;
        self.maps.config.set(0, cfg)?;
        self.settings = settings;
        Ok(())
    }

    /// Creates a VIP with an empty pool (its traffic is dropped, counted as
    /// `drop_no_backend`, until a backend is added).
    #[tracing::instrument(skip(self), fields(vip = %spec.id))]
    pub fn add_vip(&mut self, spec: VipSpec) -> Result<()> {
        check_addr(spec.id.addr, "a VIP")?;
        if self.vips.contains_key(&spec.id) {
            return Err(LbError::VipExists(spec.id));
        }
        if let Some(t) = spec.affinity_secs
            && (t == 0 || t > MAX_AFFINITY_SECS)
        {
            return Err(LbError::BadAffinityTimeout(t));
        }
        let max = self.maps.sizes.max_vips.min(self.maps.vips.capacity());
        let used: Vec<u32> = self.vips.values().map(|v| v.index).collect();
        let index = (0..max)
            .find(|i| !used.contains(i))
            .ok_or(LbError::TooManyVips(max))?;
        let m = self.maps.rings.ring_size();
        let empty = vec![RING_EMPTY; m as usize];
        self.maps.rings.write(index, 0, &empty)?;
        self.maps.rings.write(index, 1, &empty)?;
        self.maps.stats.reset_vip(index)?;
        let meta = VipMeta {
            index,
            flags: if spec.affinity_secs.is_some() {
                VIP_F_AFFINITY
            } else {
                0
            },
            mode: spec.mode.wire() as u8,
            ring_gen: 0,
            affinity_timeout_secs: spec.affinity_secs.unwrap_or(0),
        };
        let key = spec.id.key();
        self.maps.vips.insert(&key, &meta)?;
        // The VIP is live once its filter bit is set.
        let mut filter = self.maps.filter.get(0).copied().unwrap_or_default();
        filter.insert(&key.addr, key.family);
        if let Err(e) = self.maps.filter.set(0, filter) {
            let _ = self.maps.vips.remove(&key);
            return Err(e.into());
        }
        info!(index, "VIP added");
        self.vips.insert(
            spec.id,
            VipState {
                spec,
                index,
                meta,
                backends: BTreeMap::new(),
                last_flip: None,
            },
        );
        Ok(())
    }

    /// Removes a VIP and its pool. Its traffic passes to the kernel at once.
    #[tracing::instrument(skip(self), fields(vip = %id))]
    pub fn remove_vip(&mut self, id: &VipId) -> Result<()> {
        let state = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        let key = id.key();
        self.maps.vips.remove(&key)?;
        let slots: Vec<u32> = state.backends.values().map(|b| b.slot).collect();
        let index = state.index;
        self.vips.remove(id);
        self.rebuild_filter()?;
        thread::sleep(GRACE);
        for slot in slots {
            self.deactivate_slot(slot)?;
        }
        self.maps.rings.forget(index);
        info!("VIP removed");
        Ok(())
    }

    fn rebuild_filter(&mut self) -> Result<()> {
        let mut f = VipFilter::default();
        for id in self.vips.keys() {
            let k = id.key();
            f.insert(&k.addr, k.family);
        }
        self.maps.filter.set(0, f)?;
        Ok(())
    }

    fn vip_mut(&mut self, id: &VipId) -> Result<&mut VipState> {
        self.vips.get_mut(id).ok_or(LbError::NoSuchVip(*id))
    }

    fn free_slot(&self) -> Result<u32> {
        let max = self.maps.backends.len();
        (0..max)
            .find(|&i| {
                self.maps
                    .backends
                    .get(i)
                    .is_some_and(|b| b.flags & BACKEND_F_ACTIVE == 0)
            })
            .ok_or(LbError::TooManyBackends(max))
    }

    fn write_slot(
        &mut self,
        slot: u32,
        addr: IpAddr,
        mac: Option<MacAddr>,
        new_epoch: bool,
    ) -> Result<()> {
        let old = self.maps.backends.get(slot).copied().unwrap_or_default();
        let entry = Backend {
            addr: addr_words(addr),
            next_hop_mac: mac.unwrap_or_default().0,
            family: family(addr),
            flags: BACKEND_F_ACTIVE,
            epoch: if new_epoch {
                old.epoch.wrapping_add(1)
            } else {
                old.epoch
            },
        };
        self.maps.backends.set(slot, entry)?;
        Ok(())
    }

    fn deactivate_slot(&mut self, slot: u32) -> Result<()> {
        let mut b = self.maps.backends.get(slot).copied().unwrap_or_default();
        b.flags &= !BACKEND_F_ACTIVE;
        self.maps.backends.set(slot, b)?;
        Ok(())
    }

    /// Adds a backend to a VIP's pool.
    #[tracing::instrument(skip(self), fields(vip = %vip, backend = %spec.addr))]
    pub fn add_backend(&mut self, vip: &VipId, spec: BackendSpec) -> Result<()> {
        check_addr(spec.addr, "a backend")?;
        if spec.weight > MAX_WEIGHT {
            return Err(LbError::BadWeight(spec.weight));
        }
        let state = self.vips.get(vip).ok_or(LbError::NoSuchVip(*vip))?;
        if state.backends.contains_key(&spec.addr) {
            return Err(LbError::BackendExists {
                vip: *vip,
                backend: spec.addr,
            });
        }
        if state.spec.mode == Mode::L2Dsr && family(spec.addr) != family(vip.addr) {
            return Err(LbError::BadAddress {
                addr: spec.addr,
                role: "a backend",
                why: "L2 DSR needs the backend in the VIP's address family",
            });
        }
        let slot = self.free_slot()?;
        self.maps.stats.reset_backend(slot)?;
        self.write_slot(slot, spec.addr, spec.mac, true)?;
        let st = self.vip_mut(vip)?;
        st.backends.insert(
            spec.addr,
            BackendState {
                weight: spec.weight,
                drained: false,
                down: BTreeMap::new(),
                mac: spec.mac,
                mac_static: spec.mac.is_some(),
                slot,
                auto_weight: None,
            },
        );
        if let Err(e) = self.sync_ring(vip) {
            // Undo: the backend never became visible in a ring.
            if let Ok(st) = self.vip_mut(vip) {
                st.backends.remove(&spec.addr);
            }
            let _ = self.deactivate_slot(slot);
            return Err(e);
        }
        info!(slot, weight = spec.weight, "backend added");
        Ok(())
    }

    /// Removes a backend from a VIP's pool. Its established flows move to the
    /// remaining backends.
    #[tracing::instrument(skip(self), fields(vip = %vip, backend = %addr))]
    pub fn remove_backend(&mut self, vip: &VipId, addr: IpAddr) -> Result<()> {
        let st = self.vip_mut(vip)?;
        let b = st.backends.remove(&addr).ok_or(LbError::NoSuchBackend {
            vip: *vip,
            backend: addr,
        })?;
        if let Err(e) = self.sync_ring(vip) {
            if let Ok(st) = self.vip_mut(vip) {
                st.backends.insert(addr, b);
            }
            return Err(e);
        }
        // Packets that read the old ring may still name the slot; let them pass.
        thread::sleep(GRACE);
        self.deactivate_slot(b.slot)?;
        info!(slot = b.slot, "backend removed");
        Ok(())
    }

    fn backend_mut(&mut self, vip: &VipId, addr: IpAddr) -> Result<&mut BackendState> {
        self.vip_mut(vip)?
            .backends
            .get_mut(&addr)
            .ok_or(LbError::NoSuchBackend {
                vip: *vip,
                backend: addr,
            })
    }

    /// Applies `change` to a backend and resyncs the ring; restores the old
    /// state if the ring cannot be written.
    fn update_backend(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        change: impl FnOnce(&mut BackendState),
    ) -> Result<()> {
        let b = self.backend_mut(vip, addr)?;
        let before = b.clone();
        change(b);
        if let Err(e) = self.sync_ring(vip) {
            if let Ok(b) = self.backend_mut(vip, addr) {
                *b = before;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Sets a backend's weight. 0 is the same as draining.
    #[tracing::instrument(skip(self), fields(vip = %vip, backend = %addr))]
    pub fn set_weight(&mut self, vip: &VipId, addr: IpAddr, weight: u32) -> Result<()> {
        if weight > MAX_WEIGHT {
            return Err(LbError::BadWeight(weight));
        }
        self.update_backend(vip, addr, |b| b.weight = weight)
    }

    /// Drains a backend: no new connections; established ones stay.
    pub fn drain(&mut self, vip: &VipId, addr: IpAddr) -> Result<()> {
        self.update_backend(vip, addr, |b| b.drained = true)
    }

    /// Undoes [`Self::drain`].
    pub fn undrain(&mut self, vip: &VipId, addr: IpAddr) -> Result<()> {
        self.update_backend(vip, addr, |b| b.drained = false)
    }

    /// Marks a backend down for `source` (with the reason shown in status),
    /// or clears that source with `None`. Down backends take no new
    /// connections; established ones stay.
    pub fn set_down(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        source: DownSource,
        reason: Option<String>,
    ) -> Result<()> {
        let b = self.backend_mut(vip, addr)?;
        if b.down.get(&source) == reason.as_ref() {
            return Ok(());
        }
        self.update_backend(vip, addr, |b| match reason {
            Some(r) => {
                b.down.insert(source, r);
            }
            None => {
                b.down.remove(&source);
            }
        })
    }

    /// Applies telemetry's decisions to a pool in one ring rebuild: each
    /// `(address, weight, down reason)` sets the backend's automatic weight and
    /// its health state. Unknown addresses are skipped.
    pub fn apply_auto_weights(
        &mut self,
        vip: &VipId,
        decisions: &[(IpAddr, u32, Option<String>)],
    ) -> Result<()> {
        let st = self.vip_mut(vip)?;
        let before: Vec<(IpAddr, BackendState)> =
            st.backends.iter().map(|(a, b)| (*a, b.clone())).collect();
        for (addr, w, down) in decisions {
            if let Some(b) = st.backends.get_mut(addr) {
                b.auto_weight = Some(*w);
                match down {
                    Some(r) => {
                        b.down.insert(DownSource::Health, r.clone());
                    }
                    None => {
                        b.down.remove(&DownSource::Health);
                    }
                }
            }
        }
        if let Err(e) = self.sync_ring(vip) {
            if let Ok(st) = self.vip_mut(vip) {
                st.backends = before.into_iter().collect();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Each VIP's pool as (address, configured weight), for telemetry.
    pub fn pools(&self) -> BTreeMap<VipId, Vec<(IpAddr, u32)>> {
        self.vips
            .iter()
            .map(|(id, v)| {
                (
                    *id,
                    v.backends.iter().map(|(a, b)| (*a, b.weight)).collect(),
                )
            })
            .collect()
    }

    /// Addresses of every backend whose next hop must be resolved (no
    /// configured MAC), each once.
    pub fn resolvable_backends(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .vips
            .values()
            .flat_map(|st| {
                st.backends
                    .iter()
                    .filter(|(_, b)| !b.mac_static)
                    .map(|(a, _)| *a)
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Sets the resolved next-hop MAC (`None`: unresolved, with `reason`) of a
    /// backend address in every pool it is in, unless its MAC is configured.
    /// Established flows keep their slot; only the MAC changes.
    pub fn set_next_hop(
        &mut self,
        addr: IpAddr,
        mac: Option<MacAddr>,
        reason: Option<String>,
    ) -> Result<()> {
        let ids: Vec<VipId> = self
            .vips
            .iter()
            .filter(|(_, v)| v.backends.get(&addr).is_some_and(|b| !b.mac_static))
            .map(|(k, _)| *k)
            .collect();
        for id in ids {
            let b = self.backend_mut(&id, addr)?;
            let (slot, old) = (b.slot, b.mac);
            let unchanged = match mac {
                Some(m) => old == Some(m) && !b.down.contains_key(&DownSource::NextHop),
                None => b.down.get(&DownSource::NextHop) == reason.as_ref(),
            };
            if unchanged {
                continue;
            }
            if old != mac
                && let Some(m) = mac
            {
                self.write_slot(slot, addr, Some(m), false)?;
            }
            let down = if mac.is_some() { None } else { reason.clone() };
            self.update_backend(&id, addr, |b| {
                if mac.is_some() {
                    b.mac = mac;
                }
                match down {
                    Some(r) => {
                        b.down.insert(DownSource::NextHop, r);
                    }
                    None => {
                        b.down.remove(&DownSource::NextHop);
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Rebuilds a VIP's ring from its pool and publishes it if it changed.
    fn sync_ring(&mut self, id: &VipId) -> Result<()> {
        let m = self.maps.rings.ring_size();
        let st = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        let members: Vec<Member> = st
            .backends
            .iter()
            .map(|(addr, b)| Member {
                id: addr.to_string(),
                weight: b.effective_weight(),
                value: b.slot,
            })
            .collect();
        let table = maglev::build(&members, m)?;
        let live = st.meta.ring_gen & 1;
        if self.maps.rings.shadow(st.index, live) == Some(table.as_slice()) {
            debug!("ring unchanged");
            return Ok(());
        }
        if let Some(t) = st.last_flip {
            let since = t.elapsed();
            if since < GRACE {
                thread::sleep(GRACE - since);
            }
        }
        let index = st.index;
        let mut meta = st.meta;
        let next = live ^ 1;
        self.maps.rings.write(index, next, &table)?;
        meta.ring_gen = next;
        self.maps.vips.insert(&id.key(), &meta)?;
        let st = self.vip_mut(id)?;
        st.meta = meta;
        st.last_flip = Some(Instant::now());
        debug!(generation = next, "ring published");
        Ok(())
    }

    /// All VIPs with their pools.
    pub fn vips(&self) -> Vec<VipInfo> {
        self.vips.values().map(|v| self.vip_info(v)).collect()
    }

    /// One VIP with its pool.
    pub fn vip(&self, id: &VipId) -> Result<VipInfo> {
        self.vips
            .get(id)
            .map(|v| self.vip_info(v))
            .ok_or(LbError::NoSuchVip(*id))
    }

    fn vip_info(&self, v: &VipState) -> VipInfo {
        let ring = self.maps.rings.shadow(v.index, v.meta.ring_gen & 1);
        let counts = ring.map(maglev::slot_counts).unwrap_or_default();
        VipInfo {
            spec: v.spec.clone(),
            index: v.index,
            backends: v
                .backends
                .iter()
                .map(|(addr, b)| BackendInfo {
                    addr: *addr,
                    weight: b.weight,
                    effective_weight: b.effective_weight(),
                    drained: b.drained,
                    down: b.down_reason(),
                    mac: b.mac,
                    slot: b.slot,
                    ring_slots: counts.get(&b.slot).copied().unwrap_or(0),
                })
                .collect(),
        }
    }

    /// The live ring of a VIP (slot values are backend slots).
    pub fn ring(&self, id: &VipId) -> Result<Vec<u32>> {
        let st = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        Ok(self.maps.rings.read(st.index, st.meta.ring_gen & 1)?)
    }

    /// The map entry of a VIP (tests check the generation flips).
    pub fn vip_meta(&self, id: &VipId) -> Result<VipMeta> {
        Ok(self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?.meta)
    }

    /// Global data-path counters.
    pub fn global_stats(&self) -> Result<GlobalStats> {
        Ok(self.maps.stats.global()?)
    }

    /// A VIP's counters.
    pub fn vip_stats(&self, id: &VipId) -> Result<TrafficStats> {
        let st = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        Ok(self.maps.stats.vip(st.index)?)
    }

    /// A backend's counters within a VIP's pool.
    pub fn backend_stats(&self, id: &VipId, addr: IpAddr) -> Result<TrafficStats> {
        let st = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        let b = st.backends.get(&addr).ok_or(LbError::NoSuchBackend {
            vip: *id,
            backend: addr,
        })?;
        Ok(self.maps.stats.backend(b.slot)?)
    }

    /// Backend address of a slot (for reports).
    pub fn slot_addr(&self, slot: u32) -> Option<IpAddr> {
        let b = self.maps.backends.get(slot)?;
        words_addr(b.addr, b.family)
    }
}
