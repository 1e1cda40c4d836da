//! The program's maps and the globals the loader sets.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use balancer_common::{
    AffinityKey, AffinityValue, Backend, DEFAULT_FLOW_SETS, DEFAULT_MAX_AFFINITY,
    DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, DataplaneConfig, FlowBucket,
    GlobalStats, TrafficStats, VipFilter, VipSlot, vip_table_slots,
};

/// Maglev ring size M, set by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
pub(crate) static RING_SIZE: u32 = DEFAULT_RING_SIZE;

/// Number of connection-table sets minus one (a power of two minus one), set
/// by the loader.
#[unsafe(no_mangle)]
pub(crate) static FLOW_SET_MASK: u32 = DEFAULT_FLOW_SETS - 1;

/// Number of `VIPS` slots minus one (a power of two minus one), set by the
/// loader.
#[unsafe(no_mangle)]
pub(crate) static VIP_SLOT_MASK: u32 = vip_table_slots(DEFAULT_MAX_VIPS) - 1;

/// The VIP table: open addressing laid out by the control plane (see
/// `balancer_common::VipSlot`).
#[map]
pub(crate) static VIPS: Array<VipSlot> =
    Array::with_max_entries(vip_table_slots(DEFAULT_MAX_VIPS), 0);

#[map]
pub(crate) static VIP_FILTER: Array<VipFilter> = Array::with_max_entries(1, 0);

/// Flat double-buffered rings, two `u32` slots per element; sized
/// `max_vips * RING_SIZE` elements at load time. Mmapable so the control plane
/// writes a whole ring with one memcpy.
#[map]
pub(crate) static RINGS: Array<u64> =
    Array::with_max_entries(DEFAULT_MAX_VIPS * DEFAULT_RING_SIZE, BPF_F_MMAPABLE);

#[map]
pub(crate) static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Connection table: one shared set-associative table, sized at load time (see
/// `balancer_ebpf::flowtable` and docs/architecture.md for why not an LRU map).
#[map]
pub(crate) static FLOWS: Array<FlowBucket> =
    Array::with_max_entries(DEFAULT_FLOW_SETS, BPF_F_MMAPABLE);

#[map]
pub(crate) static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_AFFINITY, 0);

#[map]
pub(crate) static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static STATS: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static VIP_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub(crate) static BACKEND_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

pub(crate) const NS_PER_SEC: u64 = 1_000_000_000;
