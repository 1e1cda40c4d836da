//! Adding and removing VIPs: their index, their `VIPS` entry and their bit in
//! the `VIP_FILTER` prefilter.

use std::collections::BTreeMap;

use balancer_common::{RING_EMPTY, VIP_F_AFFINITY, VIP_F_SHED_RST, VipFilter, VipMeta};
use tracing::{info, warn};

use super::{LbError, LoadBalancer, Result, VipId, VipSpec, ring, state::VipState};

impl LoadBalancer {
    /// Creates a VIP with an empty pool (its traffic is dropped, counted as
    /// `drop_no_backend`, until a backend is added).
    #[tracing::instrument(skip(self), fields(vip = %spec.id))]
    pub fn add_vip(&mut self, spec: VipSpec) -> Result<()> {
        spec.validate()?;
        if self.vips.contains_key(&spec.id) {
            return Err(LbError::VipExists(spec.id));
        }
        let index = self.free_index()?;
        let m = self.maps.rings.ring_size();
        let empty = vec![RING_EMPTY; m as usize];
        self.maps.rings.write(index, 0, &empty)?;
        self.maps.rings.write(index, 1, &empty)?;
        self.maps.stats.reset_vip(index)?;
        let meta = VipMeta {
            index,
            flags: vip_flags(&spec),
            mode: spec.mode.wire() as u8,
            ring_gen: 0,
            affinity_timeout_secs: spec.affinity_secs.unwrap_or(0),
            shed_share: 0,
            _pad: [0; 2],
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
        self.vips
            .insert(spec.id, VipState::new(spec, index, meta, BTreeMap::new()));
        self.changed();
        Ok(())
    }

    /// The lowest VIP index no VIP holds.
    fn free_index(&self) -> Result<u32> {
        let max = self.maps.sizes.max_vips.min(self.maps.vips.capacity());
        let used: Vec<u32> = self.vips.values().map(|v| v.index).collect();
        (0..max)
            .find(|i| !used.contains(i))
            .ok_or(LbError::TooManyVips(max))
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
        self.changed();
        // The VIP is gone from the data path and the model: every cleanup
        // step runs even if one fails, so no slot or ring stays held. The
        // first failure is returned (and each one logged).
        let mut first = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                warn!(error = %e, "cleaning up after a removed VIP");
                first.get_or_insert(e);
            }
        };
        note(self.rebuild_filter());
        ring::wait_grace();
        for slot in slots {
            note(self.deactivate_slot(slot));
        }
        self.maps.rings.forget(index);
        info!("VIP removed");
        first.map_or(Ok(()), Err)
    }

    /// Rewrites `VIP_FILTER` from the VIPs the engine holds.
    pub(super) fn rebuild_filter(&mut self) -> Result<()> {
        let mut f = VipFilter::default();
        for id in self.vips.keys() {
            let k = id.key();
            f.insert(&k.addr, k.family);
        }
        self.maps.filter.set(0, f)?;
        Ok(())
    }

    /// A VIP's state, or [`LbError::NoSuchVip`].
    pub(super) fn vip_mut(&mut self, id: &VipId) -> Result<&mut VipState> {
        self.vips.get_mut(id).ok_or(LbError::NoSuchVip(*id))
    }
}

/// The data path's flags for `spec`.
pub(super) fn vip_flags(spec: &VipSpec) -> u16 {
    let mut f = 0;
    if spec.affinity_secs.is_some() {
        f |= VIP_F_AFFINITY;
    }
    if spec.refuse == super::Refusal::Rst {
        f |= VIP_F_SHED_RST;
    }
    f
}
