//! Changing a VIP's pool: adding and removing backends, and the operator's
//! and the control loops' changes to one (weight, drain, down, automatic
//! weight), each followed by one ring rebuild.

use std::net::IpAddr;

use tracing::info;

use super::{
    BackendSpec, DownSource, LbError, LoadBalancer, Result, VipId, ring, state::BackendState,
    validate_weight,
};

impl LoadBalancer {
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
        st.backends
            .insert(spec.addr, BackendState::new(&spec, slot));
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
        ring::wait_grace();
        self.deactivate_slot(b.slot)?;
        info!(slot = b.slot, "backend removed");
        Ok(())
    }

    /// A backend's state, or [`LbError::NoSuchVip`] / [`LbError::NoSuchBackend`].
    pub(super) fn backend_mut(&mut self, vip: &VipId, addr: IpAddr) -> Result<&mut BackendState> {
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
    pub(super) fn update_backend(
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
        self.update_backend(vip, addr, |b| b.set_down(source, reason))
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
                b.set_down(DownSource::Health, down.clone());
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
}
