//! The per-CPU counters (`STATS`, `VIP_STATS`, `BACKEND_STATS`), summed on
//! read.

use std::sync::{Mutex, MutexGuard};

use aya::{
    maps::{Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use balancer_common::{GlobalStats, TrafficStats};

use super::{MapsError, Result, kernel};

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

fn leaf<'a, V: aya::Pod>(m: &'a PerCpu<V>) -> MutexGuard<'a, PerCpuArray<MapData, V>> {
    // The guarded value is a map handle: a panic elsewhere cannot leave it
    // half-updated, so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatsMaps {
    /// Wraps `STATS`, `VIP_STATS` and `BACKEND_STATS`.
    pub(super) fn new(global: Map, vip: Map, backend: Map) -> Result<Self> {
        let cpus = nr_cpus().map_err(|(_, e)| MapsError::Cpus(e.to_string()))?;
        Ok(Self {
            global: Mutex::new(PerCpuArray::try_from(global).map_err(kernel("STATS"))?),
            vip: Mutex::new(PerCpuArray::try_from(vip).map_err(kernel("VIP_STATS"))?),
            backend: Mutex::new(PerCpuArray::try_from(backend).map_err(kernel("BACKEND_STATS"))?),
            cpus,
        })
    }

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
