//! What the engine reports: VIPs with their pools, map entries, and the
//! data path's counters.

use std::net::IpAddr;

use balancer_common::{GlobalStats, TrafficStats, VipMeta};

use super::{LbError, LoadBalancer, Result, VipId, VipInfo, state::VipState};
use crate::net::words_addr;

impl LoadBalancer {
    /// All VIPs with their pools.
    pub fn vips(&self) -> Vec<VipInfo> {
        self.vips.values().map(VipState::info).collect()
    }

    /// One VIP with its pool.
    pub fn vip(&self, id: &VipId) -> Result<VipInfo> {
        self.vips
            .get(id)
            .map(VipState::info)
            .ok_or(LbError::NoSuchVip(*id))
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
