//! Rebuilding the engine from a snapshot, over fresh maps or over a running
//! data plane's pinned ones.

use std::collections::{BTreeMap, BTreeSet};

use balancer_common::{BACKEND_F_ACTIVE, VipFilter, VipKey};

use super::{
    BackendRecord, BackendSpec, LoadBalancer, Result, Snapshot, VipRecord,
    ring::live_half,
    state::{BackendState, VipState},
};
use crate::{dataplane::maps::BalancerMaps, net::words_addr};

impl LoadBalancer {
    /// Rebuilds the load balancer from a snapshot.
    ///
    /// The snapshot is validated whole first, so a bad one changes nothing.
    /// With `adopted` maps (a running data plane found pinned), entries that
    /// match the snapshot (same VIP index, same backend in the same slot) are
    /// kept as they are, live ring halves included, so traffic is not
    /// disturbed; anything else is repaired towards the snapshot: missing
    /// VIPs and backends are added, kernel entries the snapshot does not know
    /// are removed. With fresh maps the snapshot is applied from scratch.
    pub fn restore(maps: BalancerMaps, snapshot: &Snapshot, adopted: bool) -> Result<Self> {
        if let Err(e) = snapshot.validate() {
            return Err(*e.error);
        }
        let mut lb = Self::empty(maps, snapshot.settings);
        lb.set_settings(snapshot.settings)?;
        if !adopted {
            lb.maps.filter.set(0, VipFilter::default())?;
        }
        let mut kept_slots = BTreeSet::new();
        if adopted {
            for rec in &snapshot.vips {
                lb.adopt_vip(rec, &mut kept_slots)?;
            }
        }
        lb.remove_strays(snapshot, &kept_slots)?;
        lb.add_missing(snapshot)?;
        lb.changed();
        Ok(lb)
    }

    /// Keeps a live VIP that matches its record, with the backends that sit
    /// in their recorded slots; a VIP at another index is removed, to be
    /// started over.
    fn adopt_vip(&mut self, rec: &VipRecord, kept_slots: &mut BTreeSet<u32>) -> Result<()> {
        let key = rec.spec.id.key();
        let Some(meta) = self.maps.vips.get(&key).copied() else {
            return Ok(());
        };
        if meta.index != rec.index {
            self.maps.vips.remove(&key)?;
            return Ok(());
        }
        self.maps.rings.adopt(meta.index, live_half(&meta))?;
        // The record's settings win over the kernel's flags (a daemon of
        // another version may have left other ones).
        let mut meta = meta;
        let flags = super::vips::vip_flags(&rec.spec);
        if meta.flags != flags {
            meta.flags = flags;
            self.maps.vips.insert(&key, &meta)?;
        }
        let mut backends = BTreeMap::new();
        for b in &rec.backends {
            // Backends that don't match are added afresh later.
            if self.slot_holds(b) && kept_slots.insert(b.slot) {
                backends.insert(b.addr, BackendState::from_record(b));
            }
        }
        self.vips.insert(
            rec.spec.id,
            VipState::new(rec.spec.clone(), meta.index, meta, backends),
        );
        Ok(())
    }

    /// True if the kernel's slot is active and holds the recorded backend.
    fn slot_holds(&self, b: &BackendRecord) -> bool {
        let k = self.maps.backends.get(b.slot).copied().unwrap_or_default();
        k.flags & BACKEND_F_ACTIVE != 0 && words_addr(k.addr, k.family) == Some(b.addr)
    }

    /// Removes kernel VIPs the snapshot does not know and deactivates slots
    /// nobody owns.
    fn remove_strays(&mut self, snapshot: &Snapshot, kept_slots: &BTreeSet<u32>) -> Result<()> {
        let stray: Vec<VipKey> = self
            .maps
            .vips
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !snapshot.vips.iter().any(|r| r.spec.id.key() == *k))
            .collect();
        for k in stray {
            self.maps.vips.remove(&k)?;
        }
        self.rebuild_filter()?;
        for slot in 0..self.maps.backends.len() {
            let active = self
                .maps
                .backends
                .get(slot)
                .is_some_and(|b| b.flags & BACKEND_F_ACTIVE != 0);
            if active && !kept_slots.contains(&slot) {
                self.deactivate_slot(slot)?;
            }
        }
        Ok(())
    }

    /// Adds what is missing, then brings every ring in line (a no-op flip is
    /// skipped, so an intact adopted ring stays exactly as it was).
    fn add_missing(&mut self, snapshot: &Snapshot) -> Result<()> {
        for rec in &snapshot.vips {
            if !self.vips.contains_key(&rec.spec.id) {
                self.add_vip(rec.spec.clone())?;
            }
        }
        for rec in &snapshot.vips {
            let id = &rec.spec.id;
            for b in &rec.backends {
                let present = self
                    .vips
                    .get(id)
                    .is_some_and(|v| v.backends.contains_key(&b.addr));
                if present {
                    continue;
                }
                let spec = BackendSpec {
                    addr: b.addr,
                    weight: b.weight,
                    mac: b.mac,
                };
                self.add_backend(id, spec)?;
                let st = self.backend_mut(id, b.addr)?;
                st.drained = b.drained;
                st.mac_static = b.mac_static;
            }
            self.sync_ring(id)?;
        }
        Ok(())
    }
}
