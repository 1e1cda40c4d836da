//! Typed handles on the balancer's BPF maps, each with a userspace shadow.
//!
//! Every map the control plane writes (`VIPS`, `VIP_FILTER`, `RINGS`, `BACKENDS`,
//! `CONFIG`) is wrapped with a shadow copy: a write goes to the kernel first and
//! to the shadow only when the kernel accepted it, so the shadow never claims
//! more than the kernel holds. [`BalancerMaps::verify`] compares both sides.
//! The connection and affinity tables are written by the data path; they are
//! exposed read/delete-only. Statistics are per-CPU and summed on read.
//!
//! Maps come either from a freshly loaded object or from pins left by an earlier
//! daemon ([`MapSource`]); in the second case the shadows are read back from the
//! kernel and every map's key and value sizes are checked against this build.

mod array;
mod error;
mod flows;
mod lru;
mod mmap;
mod rings;
mod source;
mod stats;
mod vips;

use std::{mem::size_of, sync::Arc};

use aya::maps::{Map, MapData};
use balancer_common::{
    AffinityKey, AffinityValue, Backend, DataplaneConfig, FlowBucket, GlobalStats, TrafficStats,
    VipFilter, VipSlot,
};

pub use self::{
    array::ShadowArray, error::MapsError, flows::FlowTable, lru::LruTable, rings::RingMap,
    source::MapSource, stats::StatsMaps, vips::VipMap,
};
use self::{
    error::{Result, kernel},
    source::open,
};

/// Sizes of the maps, as created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Maglev ring size M.
    pub ring_size: u32,
    /// VIP capacity.
    pub max_vips: u32,
    /// Backend slots.
    pub max_backends: u32,
    /// Connection-table sets.
    pub flow_sets: u32,
    /// Affinity-table capacity.
    pub max_affinity: u32,
}

/// All maps of the `balancer` program.
pub struct BalancerMaps {
    /// `VIPS`.
    pub vips: VipMap,
    /// `VIP_FILTER` (one element).
    pub filter: ShadowArray<VipFilter>,
    /// `RINGS`, memory-mapped.
    pub rings: RingMap,
    /// `BACKENDS`.
    pub backends: ShadowArray<Backend>,
    /// `CONFIG` (one element).
    pub config: ShadowArray<DataplaneConfig>,
    /// `FLOWS`, the connection table (read-only view, shared with readers).
    pub flows: Arc<FlowTable>,
    /// `AFFINITY`.
    pub affinity: LruTable<AffinityKey, AffinityValue>,
    /// Counters (shared with readers).
    pub stats: Arc<StatsMaps>,
    /// Sizes as created.
    pub sizes: MapSizes,
}

/// Names of every map, for pinning.
pub const MAP_NAMES: &[&str] = &[
    "VIPS",
    "VIP_FILTER",
    "RINGS",
    "BACKENDS",
    "FLOWS",
    "AFFINITY",
    "CONFIG",
    "STATS",
    "VIP_STATS",
    "BACKEND_STATS",
];

impl BalancerMaps {
    /// Opens every map from `src`. With pins, shadows are read back from the
    /// kernel and layouts checked.
    pub fn open(mut src: MapSource<'_>) -> Result<Self> {
        let src = &mut src;
        let (vips, _) = open(src, "VIPS", 4, size_of::<VipSlot>())?;
        let (filter, _) = open(src, "VIP_FILTER", 4, size_of::<VipFilter>())?;
        let (rings, rings_entries) = open(src, "RINGS", 4, 8)?;
        let (backends, max_backends) = open(src, "BACKENDS", 4, size_of::<Backend>())?;
        let (flows, flow_sets) = open(src, "FLOWS", 4, size_of::<FlowBucket>())?;
        let (affinity, max_affinity) = open(
            src,
            "AFFINITY",
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
        )?;
        let (config, _) = open(src, "CONFIG", 4, size_of::<DataplaneConfig>())?;
        let (stats, _) = open(src, "STATS", 4, size_of::<GlobalStats>())?;
        let (vip_stats, max_vips) = open(src, "VIP_STATS", 4, size_of::<TrafficStats>())?;
        let (backend_stats, _) = open(src, "BACKEND_STATS", 4, size_of::<TrafficStats>())?;
        let vips = VipMap::new(vips, max_vips)?;

        let sizes = MapSizes {
            ring_size: ring_size(rings_entries, max_vips)?,
            max_vips,
            max_backends,
            flow_sets,
            max_affinity,
        };
        // RINGS has two ring slots per element.
        let rings = RingMap::new(
            array_data("RINGS", rings)?,
            sizes.ring_size,
            rings_entries * 2,
        )?;
        Ok(Self {
            vips,
            filter: ShadowArray::new("VIP_FILTER", filter)?,
            rings,
            backends: ShadowArray::new("BACKENDS", backends)?,
            config: ShadowArray::new("CONFIG", config)?,
            flows: Arc::new(FlowTable::new(array_data("FLOWS", flows)?, flow_sets)?),
            affinity: LruTable::new("AFFINITY", affinity, max_affinity)?,
            stats: Arc::new(StatsMaps::new(stats, vip_stats, backend_stats)?),
            sizes,
        })
    }

    /// Compares every shadow with the kernel; returns the differences found.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.vips.verify(&mut out)?;
        self.filter.verify(&mut out)?;
        self.backends.verify(&mut out)?;
        self.config.verify(&mut out)?;
        self.rings.verify(&mut out);
        Ok(out)
    }
}

/// The ring size M: `RINGS` holds `max_vips` x 2 halves x M slots, two slots
/// an element, so its element count is `max_vips` x M.
fn ring_size(rings_entries: u32, max_vips: u32) -> Result<u32> {
    if max_vips == 0 || !rings_entries.is_multiple_of(max_vips) {
        return Err(MapsError::Layout {
            name: "RINGS",
            what: "element count not a multiple of VIP_STATS entries",
            got: rings_entries,
            want: max_vips,
        });
    }
    Ok(rings_entries / max_vips)
}

/// The data of a map that must be a plain array (it is memory-mapped).
fn array_data(name: &'static str, map: Map) -> Result<MapData> {
    match map {
        Map::Array(data) => Ok(data),
        _ => Err(MapsError::Layout {
            name,
            what: "map type",
            got: 0,
            want: 2,
        }),
    }
}
