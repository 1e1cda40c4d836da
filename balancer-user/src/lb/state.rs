//! The engine's model of each VIP and backend: what the maps should hold,
//! and how it reads as a report ([`VipInfo`]) and as a record to persist
//! ([`VipRecord`]).

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use balancer_common::VipMeta;

use super::{BackendInfo, BackendRecord, BackendSpec, DownSource, VipInfo, VipRecord, VipSpec};
use crate::net::MacAddr;

/// One backend in one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BackendState {
    pub(super) weight: u32,
    pub(super) drained: bool,
    pub(super) down: BTreeMap<DownSource, String>,
    pub(super) mac: Option<MacAddr>,
    pub(super) mac_static: bool,
    pub(super) slot: u32,
    pub(super) auto_weight: Option<u32>,
}

impl BackendState {
    /// A backend just added in `slot`: up, undrained, its MAC static if the
    /// spec names one.
    pub(super) fn new(spec: &BackendSpec, slot: u32) -> Self {
        Self {
            weight: spec.weight,
            drained: false,
            down: BTreeMap::new(),
            mac: spec.mac,
            mac_static: spec.mac.is_some(),
            slot,
            auto_weight: None,
        }
    }

    /// A backend as persisted; down state is not persisted, the loops find
    /// it again.
    pub(super) fn from_record(b: &BackendRecord) -> Self {
        Self {
            weight: b.weight,
            drained: b.drained,
            down: BTreeMap::new(),
            mac: b.mac,
            mac_static: b.mac_static,
            slot: b.slot,
            auto_weight: b.auto_weight,
        }
    }

    /// Marks it down for `source` with `reason`, or clears `source` with
    /// `None`; it stays down while any source says so.
    pub(super) fn set_down(&mut self, source: DownSource, reason: Option<String>) {
        match reason {
            Some(r) => {
                self.down.insert(source, r);
            }
            None => {
                self.down.remove(&source);
            }
        }
    }

    /// Its weight in the ring: 0 while drained, down or without a next hop.
    pub(super) fn effective_weight(&self) -> u32 {
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

    fn record(&self, addr: IpAddr) -> BackendRecord {
        BackendRecord {
            addr,
            weight: self.weight,
            drained: self.drained,
            mac: self.mac,
            mac_static: self.mac_static,
            slot: self.slot,
            auto_weight: self.auto_weight,
        }
    }

    fn info(&self, addr: IpAddr, ring_slots: u64) -> BackendInfo {
        BackendInfo {
            addr,
            weight: self.weight,
            effective_weight: self.effective_weight(),
            drained: self.drained,
            down: self.down_reason(),
            mac: self.mac,
            slot: self.slot,
            ring_slots,
        }
    }
}

/// One VIP with its pool.
#[derive(Debug, Clone)]
pub(super) struct VipState {
    pub(super) spec: VipSpec,
    pub(super) index: u32,
    pub(super) meta: VipMeta,
    pub(super) backends: BTreeMap<IpAddr, BackendState>,
    pub(super) last_flip: Option<Instant>,
    /// Ring slots per backend slot in the live ring, counted at each flip.
    pub(super) counts: BTreeMap<u32, u64>,
}

impl VipState {
    /// A VIP at `index` whose ring has not flipped in this process.
    pub(super) fn new(
        spec: VipSpec,
        index: u32,
        meta: VipMeta,
        backends: BTreeMap<IpAddr, BackendState>,
    ) -> Self {
        Self {
            spec,
            index,
            meta,
            backends,
            last_flip: None,
            counts: BTreeMap::new(),
        }
    }

    /// The VIP as persisted.
    pub(super) fn record(&self) -> VipRecord {
        VipRecord {
            spec: self.spec.clone(),
            index: self.index,
            backends: self
                .backends
                .iter()
                .map(|(addr, b)| b.record(*addr))
                .collect(),
        }
    }

    /// The VIP as reported.
    pub(super) fn info(&self) -> VipInfo {
        VipInfo {
            spec: self.spec.clone(),
            index: self.index,
            backends: self
                .backends
                .iter()
                .map(|(addr, b)| b.info(*addr, self.counts.get(&b.slot).copied().unwrap_or(0)))
                .collect(),
            shed_share: self.meta.shed_share,
        }
    }
}
