//! The read-only pool view: what the cache routes, the API and the metrics
//! read instead of locking the engine.
//!
//! After every change the engine builds a new [`PoolView`] and swaps it in
//! ([`arc_swap::ArcSwap`]). A reader takes the current one in a few atomic
//! operations, never waits for a writer, and never sees a half-applied
//! change. Slot counts are computed once per ring flip, not per read, so no
//! reader's work grows with the ring size.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;

use super::{VipId, VipInfo};

/// The pools as of one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    /// Bumped on every change to what the engine persists; equal generations
    /// mean equal state.
    pub generation: u64,
    /// Every VIP with its pool, in VIP order.
    pub vips: Vec<VipInfo>,
}

impl PoolView {
    /// One VIP.
    pub fn vip(&self, id: &VipId) -> Option<&VipInfo> {
        self.vips.iter().find(|v| v.spec.id == *id)
    }

    /// Each VIP's pool as (address, configured weight), for telemetry.
    pub fn members(&self) -> BTreeMap<VipId, Vec<(IpAddr, u32)>> {
        self.vips
            .iter()
            .map(|v| {
                (
                    v.spec.id,
                    v.backends.iter().map(|b| (b.addr, b.weight)).collect(),
                )
            })
            .collect()
    }

    /// The backends of a VIP that take new requests, with their weights in
    /// the ring now: not drained, not down.
    pub fn serving(&self, id: &VipId) -> Vec<(IpAddr, u32)> {
        self.vip(id)
            .map(|v| {
                v.backends
                    .iter()
                    .filter(|b| b.down.is_none() && !b.drained)
                    .map(|b| (b.addr, b.effective_weight))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The published view, shared by the engine (the only writer) and readers.
#[derive(Debug, Default)]
pub struct Pools(ArcSwap<PoolView>);

impl Pools {
    /// The current view.
    pub fn load(&self) -> Arc<PoolView> {
        self.0.load_full()
    }

    pub(super) fn store(&self, view: PoolView) {
        self.0.store(Arc::new(view));
    }
}
