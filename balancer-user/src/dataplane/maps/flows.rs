//! `FLOWS`: the connection table, read through shared memory for inspection.
//! Only the data path writes it.

use aya::maps::MapData;
use balancer_common::{FLOW_WAYS, FlowBucket, flow_entry_backend};

use super::{Result, mmap::Mmap};

/// Read-only view of the connection table.
pub struct FlowTable {
    mem: Mmap,
    sets: u32,
}

impl FlowTable {
    pub(super) fn new(map: MapData, sets: u32) -> Result<Self> {
        let mem = Mmap::new(map, "FLOWS", sets as usize * size_of::<FlowBucket>())?;
        Ok(Self { mem, sets })
    }

    /// Number of sets.
    pub fn sets(&self) -> u32 {
        self.sets
    }

    /// Total entries (sets x ways).
    pub fn capacity(&self) -> u64 {
        self.sets as u64 * FLOW_WAYS as u64
    }

    /// Copies one set out of shared memory.
    fn set(&self, i: u32) -> FlowBucket {
        // SAFETY: i < sets, so the set lies inside the mapping; sets are
        // 64-byte aligned in a page-aligned mapping; entries are read as a
        // volatile copy because the data path writes concurrently.
        unsafe { self.mem.ptr::<FlowBucket>().add(i as usize).read_volatile() }
    }

    /// One set, as the data path sees it now (None past the end).
    pub fn bucket(&self, i: u32) -> Option<FlowBucket> {
        (i < self.sets).then(|| self.set(i))
    }

    /// Live entries and, per backend slot, how many entries point at it.
    pub fn occupancy(&self) -> (u64, std::collections::BTreeMap<u32, u64>) {
        let mut total = 0;
        let mut per = std::collections::BTreeMap::new();
        for i in 0..self.sets {
            for e in self.set(i).entries {
                if e != 0 {
                    total += 1;
                    *per.entry(flow_entry_backend(e)).or_insert(0) += 1;
                }
            }
        }
        (total, per)
    }
}
