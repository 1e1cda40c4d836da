//! The one API through which VIPs and backends are changed.
//!
//! [`LoadBalancer`] owns the data plane's maps and a model of what they should
//! hold: VIPs, each with its pool of backends, weights, drain state and next-hop
//! MAC. Every mutation validates its input first, then applies the change to the
//! maps in an order that keeps every packet on a consistent view:
//!
//! - a ring is rewritten only when its contents change, into the inactive half,
//!   then published with a single `VIPS` update (see [`crate::dataplane::maps::RingMap`]);
//! - a removed backend leaves the ring first; its slot is deactivated (which is
//!   what moves its established flows elsewhere) one grace period later, so no
//!   packet holding the old ring finds a dead slot;
//! - a drained backend (weight 0) leaves the ring but stays active, so its
//!   established connections stay put.
//!
//! Backend slots are per (VIP, backend) membership: removing a backend from one
//! VIP moves only that VIP's flows, even when the same server serves others.

mod error;
pub mod maglev;
mod reconcile;
mod settings;
mod snapshot;
mod spec;
mod types;
mod view;

pub use self::{
    error::LbError,
    settings::Settings,
    snapshot::{BackendRecord, Snapshot, SnapshotError, VipRecord},
    spec::{BackendSpec, VipSpec, validate_addr, validate_affinity, validate_weight},
    types::{BackendInfo, DownSource, Mode, Proto, VipId, VipInfo},
    view::{PoolView, Pools},
};

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use balancer_common::{
    BACKEND_F_ACTIVE, Backend, GlobalStats, RING_EMPTY, TrafficStats, VIP_F_AFFINITY, VipFilter,
    VipMeta,
};
use tracing::{debug, info};

use self::maglev::Member;
use crate::{
    dataplane::maps::BalancerMaps,
    net::{MacAddr, addr_words, family, words_addr},
};

type Result<T> = std::result::Result<T, LbError>;

/// How long after a ring flip the previous half may still be read by a packet
/// in flight. An XDP program runs for microseconds under RCU; 10 ms is far
/// beyond that and still invisible to an operator.
pub const GRACE: Duration = Duration::from_millis(10);

/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Longest accepted client-affinity timeout.
pub const MAX_AFFINITY_SECS: u32 = 7 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
struct BackendState {
    weight: u32,
    drained: bool,
    down: BTreeMap<DownSource, String>,
    mac: Option<MacAddr>,
    mac_static: bool,
    slot: u32,
    auto_weight: Option<u32>,
}

impl BackendState {
    fn effective_weight(&self) -> u32 {
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
}

#[derive(Debug, Clone)]
struct VipState {
    spec: VipSpec,
    index: u32,
    meta: VipMeta,
    backends: BTreeMap<IpAddr, BackendState>,
    last_flip: Option<Instant>,
    /// Ring slots per backend slot in the live ring, counted at each flip.
    counts: BTreeMap<u32, u64>,
}

/// The load balancer: validated changes to VIPs and backends, applied to the
/// data plane's maps.
pub struct LoadBalancer {
    maps: BalancerMaps,
    vips: BTreeMap<VipId, VipState>,
    settings: Settings,
    /// Bumped on every change to the persisted state.
    generation: u64,
    /// The read-only view, republished after every change.
    view: Arc<Pools>,
}

impl LoadBalancer {
    /// Wraps freshly created maps: writes default settings and no VIPs.
    pub fn new(maps: BalancerMaps, settings: Settings) -> Result<Self> {
        let mut lb = Self::empty(maps, settings);
        lb.set_settings(settings)?;
        lb.maps.filter.set(0, VipFilter::default())?;
        lb.publish();
        Ok(lb)
    }

    fn empty(maps: BalancerMaps, settings: Settings) -> Self {
        Self {
            maps,
            vips: BTreeMap::new(),
            settings,
            generation: 0,
            view: Arc::new(Pools::default()),
        }
    }

    /// The state to persist.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            settings: self.settings,
            vips: self
                .vips
                .values()
                .map(|v| VipRecord {
                    spec: v.spec.clone(),
                    index: v.index,
                    backends: v
                        .backends
                        .iter()
                        .map(|(addr, b)| BackendRecord {
                            addr: *addr,
                            weight: b.weight,
                            drained: b.drained,
                            mac: b.mac,
                            mac_static: b.mac_static,
                            slot: b.slot,
                            auto_weight: b.auto_weight,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The maps (for statistics and inspection).
    pub fn maps(&self) -> &BalancerMaps {
        &self.maps
    }

    /// Mutable maps (tests seed the connection tables through this).
    pub fn maps_mut(&mut self) -> &mut BalancerMaps {
        &mut self.maps
    }

    /// Current settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Applies data-plane settings.
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        let cfg = settings.validate()?;
        self.maps.config.set(0, cfg)?;
        if self.settings != settings {
            self.settings = settings;
            self.changed();
        }
        Ok(())
    }

    /// The read-only view, for readers that must not wait for this engine.
    pub fn view(&self) -> Arc<Pools> {
        self.view.clone()
    }

    /// The generation of the persisted state: it changes whenever
    /// [`Self::snapshot`] would.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a change and republishes the view. Called after every change
    /// to the state (ring flips included), never while a change is half done.
    fn changed(&mut self) {
        self.generation += 1;
        self.publish();
    }

    fn publish(&self) {
        self.view.store(PoolView {
            generation: self.generation,
            vips: self.vips.values().map(|v| self.vip_info(v)).collect(),
        });
    }

    /// Creates a VIP with an empty pool (its traffic is dropped, counted as
    /// `drop_no_backend`, until a backend is added).
    #[tracing::instrument(skip(self), fields(vip = %spec.id))]
    pub fn add_vip(&mut self, spec: VipSpec) -> Result<()> {
        spec.validate()?;
        if self.vips.contains_key(&spec.id) {
            return Err(LbError::VipExists(spec.id));
        }
        let max = self.maps.sizes.max_vips.min(self.maps.vips.capacity());
        let used: Vec<u32> = self.vips.values().map(|v| v.index).collect();
        let index = (0..max)
            .find(|i| !used.contains(i))
            .ok_or(LbError::TooManyVips(max))?;
        let m = self.maps.rings.ring_size();
        let empty = vec![RING_EMPTY; m as usize];
        self.maps.rings.write(index, 0, &empty)?;
        self.maps.rings.write(index, 1, &empty)?;
        self.maps.stats.reset_vip(index)?;
        let meta = VipMeta {
            index,
            flags: if spec.affinity_secs.is_some() {
                VIP_F_AFFINITY
            } else {
                0
            },
            mode: spec.mode.wire() as u8,
            ring_gen: 0,
            affinity_timeout_secs: spec.affinity_secs.unwrap_or(0),
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
        self.vips.insert(
            spec.id,
            VipState {
                spec,
                index,
                meta,
                backends: BTreeMap::new(),
                last_flip: None,
                counts: BTreeMap::new(),
            },
        );
        self.changed();
        Ok(())
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
        self.rebuild_filter()?;
        thread::sleep(GRACE);
        for slot in slots {
            self.deactivate_slot(slot)?;
        }
        self.maps.rings.forget(index);
        info!("VIP removed");
        Ok(())
    }

    fn rebuild_filter(&mut self) -> Result<()> {
        let mut f = VipFilter::default();
        for id in self.vips.keys() {
            let k = id.key();
            f.insert(&k.addr, k.family);
        }
        self.maps.filter.set(0, f)?;
        Ok(())
    }

    fn vip_mut(&mut self, id: &VipId) -> Result<&mut VipState> {
        self.vips.get_mut(id).ok_or(LbError::NoSuchVip(*id))
    }

    fn free_slot(&self) -> Result<u32> {
        let max = self.maps.backends.len();
        (0..max)
            .find(|&i| {
                self.maps
                    .backends
                    .get(i)
                    .is_some_and(|b| b.flags & BACKEND_F_ACTIVE == 0)
            })
            .ok_or(LbError::TooManyBackends(max))
    }

    fn write_slot(
        &mut self,
        slot: u32,
        addr: IpAddr,
        mac: Option<MacAddr>,
        new_epoch: bool,
    ) -> Result<()> {
        let old = self.maps.backends.get(slot).copied().unwrap_or_default();
        let entry = Backend {
            addr: addr_words(addr),
            next_hop_mac: mac.unwrap_or_default().0,
            family: family(addr),
            flags: BACKEND_F_ACTIVE,
            epoch: if new_epoch {
                old.epoch.wrapping_add(1)
            } else {
                old.epoch
            },
        };
        self.maps.backends.set(slot, entry)?;
        Ok(())
    }

    fn deactivate_slot(&mut self, slot: u32) -> Result<()> {
        let mut b = self.maps.backends.get(slot).copied().unwrap_or_default();
        b.flags &= !BACKEND_F_ACTIVE;
        self.maps.backends.set(slot, b)?;
        Ok(())
    }

    /// Adds a backend to a VIP's pool.
    #[tracing::instrument(skip(self), fields(vip = %vip, backend = %spec.addr))]
    pub fn add_backend(&mut self, vip: &VipId, spec: BackendSpec) -> Result<()> {
        let state = self.vips.get(vip).ok_or(LbError::NoSuchVip(*vip))?;
        spec.validate(&state.spec)?;
        if state.backends.contains_key(&spec.addr) {
            return Err(LbError::BackendExists {
                vip: *vip,
                backend: spec.addr,
            });
        }
        let slot = self.free_slot()?;
        self.maps.stats.reset_backend(slot)?;
        self.write_slot(slot, spec.addr, spec.mac, true)?;
        let st = self.vip_mut(vip)?;
        st.backends.insert(
            spec.addr,
            BackendState {
                weight: spec.weight,
                drained: false,
                down: BTreeMap::new(),
                mac: spec.mac,
                mac_static: spec.mac.is_some(),
                slot,
                auto_weight: None,
            },
        );
        if let Err(e) = self.sync_ring(vip) {
            // Undo: the backend never became visible in a ring.
            if let Ok(st) = self.vip_mut(vip) {
                st.backends.remove(&spec.addr);
            }
            let _ = self.deactivate_slot(slot);
            return Err(e);
        }
        self.changed();
        info!(slot, weight = spec.weight, "backend added");
        Ok(())
    }

    /// Removes a backend from a VIP's pool. Its established flows move to the
    /// remaining backends.
    #[tracing::instrument(skip(self), fields(vip = %vip, backend = %addr))]
    pub fn remove_backend(&mut self, vip: &VipId, addr: IpAddr) -> Result<()> {
        let st = self.vip_mut(vip)?;
        let b = st.backends.remove(&addr).ok_or(LbError::NoSuchBackend {
            vip: *vip,
            backend: addr,
        })?;
        if let Err(e) = self.sync_ring(vip) {
            if let Ok(st) = self.vip_mut(vip) {
                st.backends.insert(addr, b);
            }
            return Err(e);
        }
        self.changed();
        // Packets that read the old ring may still name the slot; let them pass.
        thread::sleep(GRACE);
        self.deactivate_slot(b.slot)?;
        info!(slot = b.slot, "backend removed");
        Ok(())
    }

    fn backend_mut(&mut self, vip: &VipId, addr: IpAddr) -> Result<&mut BackendState> {
        self.vip_mut(vip)?
            .backends
            .get_mut(&addr)
            .ok_or(LbError::NoSuchBackend {
                vip: *vip,
                backend: addr,
            })
    }

    /// Applies `change` to a backend and resyncs the ring; restores the old
    /// state if the ring cannot be written.
    fn update_backend(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        change: impl FnOnce(&mut BackendState),
    ) -> Result<()> {
        let b = self.backend_mut(vip, addr)?;
        let before = b.clone();
        change(b);
        if *b == before {
            return Ok(());
        }
        if let Err(e) = self.sync_ring(vip) {
            if let Ok(b) = self.backend_mut(vip, addr) {
                *b = before;
            }
            return Err(e);
        }
        self.changed();
        Ok(())
    }

    /// Sets a backend's weight. 0 is the same as draining.
    #[tracing::instrument(skip(self), fields(vip = %vip, backend = %addr))]
    pub fn set_weight(&mut self, vip: &VipId, addr: IpAddr, weight: u32) -> Result<()> {
        validate_weight(weight)?;
        self.update_backend(vip, addr, |b| b.weight = weight)
    }

    /// Drains a backend: no new connections; established ones stay.
    pub fn drain(&mut self, vip: &VipId, addr: IpAddr) -> Result<()> {
        self.update_backend(vip, addr, |b| b.drained = true)
    }

    /// Undoes [`Self::drain`].
    pub fn undrain(&mut self, vip: &VipId, addr: IpAddr) -> Result<()> {
        self.update_backend(vip, addr, |b| b.drained = false)
    }

    /// Marks a backend down for `source` (with the reason shown in status),
    /// or clears that source with `None`. Down backends take no new
    /// connections; established ones stay.
    pub fn set_down(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        source: DownSource,
        reason: Option<String>,
    ) -> Result<()> {
        let b = self.backend_mut(vip, addr)?;
        if b.down.get(&source) == reason.as_ref() {
            return Ok(());
        }
        self.update_backend(vip, addr, |b| match reason {
            Some(r) => {
                b.down.insert(source, r);
            }
            None => {
                b.down.remove(&source);
            }
        })
    }

    /// Applies telemetry's decisions to a pool in one ring rebuild: each
    /// `(address, weight, down reason)` sets the backend's automatic weight and
    /// its health state. Unknown addresses are skipped.
    pub fn apply_auto_weights(
        &mut self,
        vip: &VipId,
        decisions: &[(IpAddr, u32, Option<String>)],
    ) -> Result<()> {
        let st = self.vip_mut(vip)?;
        let before: Vec<(IpAddr, BackendState)> =
            st.backends.iter().map(|(a, b)| (*a, b.clone())).collect();
        for (addr, w, down) in decisions {
            if let Some(b) = st.backends.get_mut(addr) {
                b.auto_weight = Some(*w);
                match down {
                    Some(r) => {
                        b.down.insert(DownSource::Health, r.clone());
                    }
                    None => {
                        b.down.remove(&DownSource::Health);
                    }
                }
            }
        }
        if st
            .backends
            .iter()
            .map(|(a, b)| (*a, b))
            .eq(before.iter().map(|(a, b)| (*a, b)))
        {
            return Ok(());
        }
        if let Err(e) = self.sync_ring(vip) {
            if let Ok(st) = self.vip_mut(vip) {
                st.backends = before.into_iter().collect();
            }
            return Err(e);
        }
        self.changed();
        Ok(())
    }

    /// Addresses of every backend whose next hop must be resolved (no
    /// configured MAC), each once.
    pub fn resolvable_backends(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .vips
            .values()
            .flat_map(|st| {
                st.backends
                    .iter()
                    .filter(|(_, b)| !b.mac_static)
                    .map(|(a, _)| *a)
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Sets the resolved next-hop MAC (`None`: unresolved, with `reason`) of a
    /// backend address in every pool it is in, unless its MAC is configured.
    /// Established flows keep their slot; only the MAC changes.
    pub fn set_next_hop(
        &mut self,
        addr: IpAddr,
        mac: Option<MacAddr>,
        reason: Option<String>,
    ) -> Result<()> {
        let ids: Vec<VipId> = self
            .vips
            .iter()
            .filter(|(_, v)| v.backends.get(&addr).is_some_and(|b| !b.mac_static))
            .map(|(k, _)| *k)
            .collect();
        for id in ids {
            let b = self.backend_mut(&id, addr)?;
            let (slot, old) = (b.slot, b.mac);
            let unchanged = match mac {
                Some(m) => old == Some(m) && !b.down.contains_key(&DownSource::NextHop),
                None => b.down.get(&DownSource::NextHop) == reason.as_ref(),
            };
            if unchanged {
                continue;
            }
            if old != mac
                && let Some(m) = mac
            {
                self.write_slot(slot, addr, Some(m), false)?;
            }
            let down = if mac.is_some() { None } else { reason.clone() };
            self.update_backend(&id, addr, |b| {
                if mac.is_some() {
                    b.mac = mac;
                }
                match down {
                    Some(r) => {
                        b.down.insert(DownSource::NextHop, r);
                    }
                    None => {
                        b.down.remove(&DownSource::NextHop);
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Rebuilds a VIP's ring from its pool and publishes it if it changed.
    fn sync_ring(&mut self, id: &VipId) -> Result<()> {
        let m = self.maps.rings.ring_size();
        let st = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        let members: Vec<Member> = st
            .backends
            .iter()
            .map(|(addr, b)| Member {
                id: addr.to_string(),
                weight: b.effective_weight(),
                value: b.slot,
            })
            .collect();
        let table = maglev::build(&members, m)?;
        let live = st.meta.ring_gen & 1;
        if self.maps.rings.shadow(st.index, live) == Some(table.as_slice()) {
            debug!("ring unchanged");
            if st.counts.is_empty() {
                // An adopted ring: count it once.
                self.vip_mut(id)?.counts = maglev::slot_counts(&table);
            }
            return Ok(());
        }
        if let Some(t) = st.last_flip {
            let since = t.elapsed();
            if since < GRACE {
                thread::sleep(GRACE - since);
            }
        }
        let index = st.index;
        let mut meta = st.meta;
        let next = live ^ 1;
        self.maps.rings.write(index, next, &table)?;
        meta.ring_gen = next;
        self.maps.vips.insert(&id.key(), &meta)?;
        let st = self.vip_mut(id)?;
        st.meta = meta;
        st.last_flip = Some(Instant::now());
        st.counts = maglev::slot_counts(&table);
        debug!(generation = next, "ring published");
        Ok(())
    }

    /// All VIPs with their pools.
    pub fn vips(&self) -> Vec<VipInfo> {
        self.vips.values().map(|v| self.vip_info(v)).collect()
    }

    /// One VIP with its pool.
    pub fn vip(&self, id: &VipId) -> Result<VipInfo> {
        self.vips
            .get(id)
            .map(|v| self.vip_info(v))
            .ok_or(LbError::NoSuchVip(*id))
    }

    fn vip_info(&self, v: &VipState) -> VipInfo {
        let counts = &v.counts;
        VipInfo {
            spec: v.spec.clone(),
            index: v.index,
            backends: v
                .backends
                .iter()
                .map(|(addr, b)| BackendInfo {
                    addr: *addr,
                    weight: b.weight,
                    effective_weight: b.effective_weight(),
                    drained: b.drained,
                    down: b.down_reason(),
                    mac: b.mac,
                    slot: b.slot,
                    ring_slots: counts.get(&b.slot).copied().unwrap_or(0),
                })
                .collect(),
        }
    }

    /// The live ring of a VIP (slot values are backend slots).
    pub fn ring(&self, id: &VipId) -> Result<Vec<u32>> {
        let st = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        Ok(self.maps.rings.read(st.index, st.meta.ring_gen & 1)?)
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
