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

mod flows;
mod mmap;
mod rings;
mod vips;

use std::{
    mem::size_of,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use balancer_common::{
    AffinityKey, AffinityValue, Backend, DataplaneConfig, FlowBucket, GlobalStats, TrafficStats,
    VipFilter, VipSlot,
};
pub use flows::FlowTable;
pub use rings::RingMap;
pub use vips::VipMap;

/// Errors opening or using the maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// A map the program needs is neither in the object nor pinned.
    #[error("map {name} is missing (looked in {place})")]
    Missing {
        /// Map name.
        name: &'static str,
        /// The object or pin directory searched.
        place: String,
    },
    /// The kernel refused a map operation.
    #[error("map {name}: {source}")]
    Kernel {
        /// Map name.
        name: &'static str,
        /// The underlying error.
        #[source]
        source: MapError,
    },
    /// A pinned map's shape differs from this build's: it was created by an
    /// incompatible version of the program.
    #[error(
        "pinned map {name} has {what} {got}, this build expects {want}; \
         detach the old data plane (`balancer detach`) before starting this version"
    )]
    Layout {
        /// Map name.
        name: &'static str,
        /// Which property differs.
        what: &'static str,
        /// Found in the kernel.
        got: u32,
        /// Expected by this build.
        want: u32,
    },
    /// Mapping the rings into memory failed.
    #[error("mmap of RINGS: {0}")]
    Mmap(#[source] nix::Error),
    /// An index beyond a map's size.
    #[error("{name} index {index} out of range (size {size})")]
    OutOfRange {
        /// Map name.
        name: &'static str,
        /// The index asked for.
        index: u32,
        /// Map size.
        size: u32,
    },
    /// No free `VIPS` slot within probe reach of a new VIP's home slot, or the
    /// table holds as many VIPs as it may.
    #[error("VIP table full ({vips} VIPs): raise max_vips")]
    VipTableFull {
        /// VIPs in the table.
        vips: u32,
    },
    /// Counting CPUs for per-CPU values failed.
    #[error("counting possible CPUs: {0}")]
    Cpus(String),
}

type Result<T> = std::result::Result<T, MapsError>;

fn kernel(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Kernel { name, source }
}

/// Where the maps come from.
pub enum MapSource<'a> {
    /// A freshly loaded object (maps are taken out of it).
    Object(&'a mut Ebpf),
    /// A directory of pins left by an earlier daemon.
    Pins(&'a Path),
}

impl MapSource<'_> {
    fn take(&mut self, name: &'static str) -> Result<Map> {
        match self {
            MapSource::Object(ebpf) => ebpf.take_map(name).ok_or_else(|| MapsError::Missing {
                name,
                place: "the eBPF object".into(),
            }),
            MapSource::Pins(dir) => {
                let path: PathBuf = dir.join(name);
                if !path.exists() {
                    return Err(MapsError::Missing {
                        name,
                        place: dir.display().to_string(),
                    });
                }
                let data = MapData::from_pin(&path).map_err(kernel(name))?;
                Map::from_map_data(data).map_err(kernel(name))
            }
        }
    }
}

/// Checks a map's key and value sizes against this build's types.
fn check_layout(name: &'static str, data: &MapData, key: usize, value: usize) -> Result<u32> {
    let info = data.info().map_err(kernel(name))?;
    for (what, got, want) in [
        ("key size", info.key_size(), key as u32),
        ("value size", info.value_size(), value as u32),
    ] {
        if got != want {
            return Err(MapsError::Layout {
                name,
                what,
                got,
                want,
            });
        }
    }
    Ok(info.max_entries())
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
        Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    }
}

/// Takes a map, checks its layout and returns it with its size.
fn open(
    src: &mut MapSource<'_>,
    name: &'static str,
    key: usize,
    value: usize,
) -> Result<(Map, u32)> {
    let map = src.take(name)?;
    let size = check_layout(name, map_data(&map), key, value)?;
    Ok((map, size))
}

/// An array map with a full shadow (`BACKENDS`, `CONFIG`, `VIP_FILTER`).
pub struct ShadowArray<T: aya::Pod + PartialEq + Default> {
    name: &'static str,
    map: Array<MapData, T>,
    shadow: Vec<T>,
}

impl<T: aya::Pod + PartialEq + Default> ShadowArray<T> {
    pub(super) fn new(name: &'static str, map: Map) -> Result<Self> {
        let map: Array<MapData, T> = Array::try_from(map).map_err(kernel(name))?;
        let len = map.len();
        let mut a = Self {
            name,
            map,
            shadow: Vec::with_capacity(len as usize),
        };
        for i in 0..len {
            let v = a.map.get(&i, 0).map_err(kernel(name))?;
            a.shadow.push(v);
        }
        Ok(a)
    }

    /// Writes one element.
    pub fn set(&mut self, index: u32, value: T) -> Result<()> {
        let size = self.len();
        let slot = self
            .shadow
            .get_mut(index as usize)
            .ok_or(MapsError::OutOfRange {
                name: self.name,
                index,
                size,
            })?;
        self.map.set(index, value, 0).map_err(kernel(self.name))?;
        *slot = value;
        Ok(())
    }

    /// The shadow's element.
    pub fn get(&self, index: u32) -> Option<&T> {
        self.shadow.get(index as usize)
    }

    /// Number of elements.
    pub fn len(&self) -> u32 {
        self.shadow.len() as u32
    }

    /// Whether the array has no elements (never, for our maps).
    pub fn is_empty(&self) -> bool {
        self.shadow.is_empty()
    }

    pub(super) fn verify(&self, out: &mut Vec<String>) -> Result<()> {
        for (i, want) in self.shadow.iter().enumerate() {
            let got = self.map.get(&(i as u32), 0).map_err(kernel(self.name))?;
            if got != *want {
                out.push(format!("{}[{i}]: kernel and shadow differ", self.name));
            }
        }
        Ok(())
    }
}

/// A data-path-written LRU table (`AFFINITY`): tests and benchmarks may seed
/// and delete entries.
pub struct LruTable<K: aya::Pod, V: aya::Pod> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
    capacity: u32,
}

impl<K: aya::Pod, V: aya::Pod> LruTable<K, V> {
    /// Looks up an entry.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(kernel(self.name)(e)),
        }
    }

    /// Inserts an entry (tests and benchmarks seed tables this way).
    pub fn insert(&mut self, key: &K, value: &V) -> Result<()> {
        self.map.insert(key, value, 0).map_err(kernel(self.name))
    }

    /// Deletes an entry; absent entries are fine.
    pub fn remove(&mut self, key: &K) -> Result<()> {
        match self.map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(kernel(self.name)(e)),
        }
    }

    /// Number of live entries (walks the table).
    pub fn count(&self) -> usize {
        self.map.keys().filter(|k| k.is_ok()).count()
    }

    /// All entries (walks the table).
    pub fn entries(&self) -> Vec<(K, V)> {
        self.map.iter().filter_map(|e| e.ok()).collect()
    }

    /// Table capacity.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// Per-CPU statistics maps.
///
/// Shared (behind an `Arc`) between the engine, which resets a VIP's or a
/// slot's counters when it hands the index out, and the readers (API,
/// metrics). Each map sits behind its own leaf lock, held only for one
/// syscall, so a reader never waits for the control plane's work.
pub struct StatsMaps {
    global: Mutex<PerCpuArray<MapData, GlobalStats>>,
    vip: Mutex<PerCpuArray<MapData, TrafficStats>>,
    backend: Mutex<PerCpuArray<MapData, TrafficStats>>,
    cpus: usize,
}

type PerCpu<V> = Mutex<PerCpuArray<MapData, V>>;

fn leaf<'a, V: aya::Pod>(m: &'a PerCpu<V>) -> std::sync::MutexGuard<'a, PerCpuArray<MapData, V>> {
    // The guarded value is a map handle: a panic elsewhere cannot leave it
    // half-updated, so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatsMaps {
    /// Global counters summed over CPUs.
    pub fn global(&self) -> Result<GlobalStats> {
        let v = leaf(&self.global).get(&0, 0).map_err(kernel("STATS"))?;
        let mut sum = GlobalStats::default();
        for s in v.iter() {
            sum.add(s);
        }
        Ok(sum)
    }

    fn traffic(map: &PerCpu<TrafficStats>, name: &'static str, index: u32) -> Result<TrafficStats> {
        let v = leaf(map).get(&index, 0).map_err(kernel(name))?;
        let mut sum = TrafficStats::default();
        for s in v.iter() {
            sum.add(s);
        }
        Ok(sum)
    }

    /// One VIP's counters summed over CPUs.
    pub fn vip(&self, index: u32) -> Result<TrafficStats> {
        Self::traffic(&self.vip, "VIP_STATS", index)
    }

    /// One backend slot's counters summed over CPUs.
    pub fn backend(&self, index: u32) -> Result<TrafficStats> {
        Self::traffic(&self.backend, "BACKEND_STATS", index)
    }

    fn zeroes(&self) -> Result<PerCpuValues<TrafficStats>> {
        PerCpuValues::try_from(vec![TrafficStats::default(); self.cpus])
            .map_err(|e| MapsError::Cpus(e.to_string()))
    }

    /// Resets a VIP index's counters (when the index is given to a new VIP).
    pub fn reset_vip(&self, index: u32) -> Result<()> {
        let z = self.zeroes()?;
        leaf(&self.vip)
            .set(index, z, 0)
            .map_err(kernel("VIP_STATS"))
    }

    /// Resets a backend slot's counters (when the slot is reused).
    pub fn reset_backend(&self, index: u32) -> Result<()> {
        let z = self.zeroes()?;
        leaf(&self.backend)
            .set(index, z, 0)
            .map_err(kernel("BACKEND_STATS"))
    }
}

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
        let (vips, _) = open(&mut src, "VIPS", 4, size_of::<VipSlot>())?;
        let (filter, _) = open(&mut src, "VIP_FILTER", 4, size_of::<VipFilter>())?;
        let (rings, rings_entries) = open(&mut src, "RINGS", 4, 8)?;
        let (backends, max_backends) = open(&mut src, "BACKENDS", 4, size_of::<Backend>())?;
        let (flows, flow_sets) = open(&mut src, "FLOWS", 4, size_of::<FlowBucket>())?;
        let (affinity, max_affinity) = open(
            &mut src,
            "AFFINITY",
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
        )?;
        let (config, _) = open(&mut src, "CONFIG", 4, size_of::<DataplaneConfig>())?;
        let (stats, _) = open(&mut src, "STATS", 4, size_of::<GlobalStats>())?;
        let (vip_stats, max_vips) = open(&mut src, "VIP_STATS", 4, size_of::<TrafficStats>())?;
        let (backend_stats, _) = open(&mut src, "BACKEND_STATS", 4, size_of::<TrafficStats>())?;

        // RINGS holds max_vips x 2 halves x M slots, two slots per element.
        if max_vips == 0 || rings_entries % max_vips != 0 {
            return Err(MapsError::Layout {
                name: "RINGS",
                what: "element count not a multiple of VIP_STATS entries",
                got: rings_entries,
                want: max_vips,
            });
        }
        let rings_len = rings_entries * 2;
        let sizes = MapSizes {
            ring_size: rings_entries / max_vips,
            max_vips,
            max_backends,
            flow_sets,
            max_affinity,
        };
        let rings = match rings {
            Map::Array(data) => RingMap::new(data, sizes.ring_size, rings_len)?,
            _ => {
                return Err(MapsError::Layout {
                    name: "RINGS",
                    what: "map type",
                    got: 0,
                    want: 2,
                });
            }
        };
        let cpus = nr_cpus().map_err(|(_, e)| MapsError::Cpus(e.to_string()))?;
        let maps = Self {
            vips: VipMap::new(vips, max_vips)?,
            filter: ShadowArray::new("VIP_FILTER", filter)?,
            rings,
            backends: ShadowArray::new("BACKENDS", backends)?,
            config: ShadowArray::new("CONFIG", config)?,
            flows: match flows {
                Map::Array(data) => Arc::new(FlowTable::new(data, flow_sets)?),
                _ => {
                    return Err(MapsError::Layout {
                        name: "FLOWS",
                        what: "map type",
                        got: 0,
                        want: 2,
                    });
                }
            },
            affinity: LruTable {
                name: "AFFINITY",
                map: HashMap::try_from(affinity).map_err(kernel("AFFINITY"))?,
                capacity: max_affinity,
            },
            stats: Arc::new(StatsMaps {
                global: Mutex::new(PerCpuArray::try_from(stats).map_err(kernel("STATS"))?),
                vip: Mutex::new(PerCpuArray::try_from(vip_stats).map_err(kernel("VIP_STATS"))?),
                backend: Mutex::new(
                    PerCpuArray::try_from(backend_stats).map_err(kernel("BACKEND_STATS"))?,
                ),
                cpus,
            }),
            sizes,
        };
        Ok(maps)
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
