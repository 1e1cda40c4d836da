//! Ring rebuilds, flips and grace periods.
//!
//! A VIP's ring is rebuilt from its pool, written into the inactive half and
//! published with one `VIPS` update that flips the VIP's ring generation. A
//! packet may still be reading the previous half for a moment after a flip,
//! so that half is not rewritten, and a slot that left it is not deactivated,
//! until [`GRACE`] has passed.

use std::{
    thread,
    time::{Duration, Instant},
};

use balancer_common::VipMeta;
use tracing::debug;

use super::{
    LbError, LoadBalancer, Result, VipId,
    maglev::{self, RingMember},
};

/// How long after a ring flip the previous half may still be read by a packet
/// in flight. An XDP program runs for microseconds under RCU; 10 ms is far
/// beyond that and still invisible to an operator.
pub const GRACE: Duration = Duration::from_millis(10);

/// The half of a VIP's ring the data path reads now.
pub(super) fn live_half(meta: &VipMeta) -> u8 {
    meta.ring_gen & 1
}

/// Waits one whole grace period: after it no packet holds a ring as it was
/// before the last flip.
pub(super) fn wait_grace() {
    thread::sleep(GRACE);
}

/// Waits out what is left of the grace period of the flip at `last_flip`,
/// before the half it retired is written again.
fn wait_since(last_flip: Option<Instant>) {
    if let Some(t) = last_flip {
        let since = t.elapsed();
        if since < GRACE {
            thread::sleep(GRACE - since);
        }
    }
}

impl LoadBalancer {
    /// Rebuilds a VIP's ring from its pool and publishes it if it changed.
    pub(super) fn sync_ring(&mut self, id: &VipId) -> Result<()> {
        let m = self.maps.rings.ring_size();
        let st = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        let members: Vec<RingMember> = st
            .backends
            .iter()
            .map(|(addr, b)| RingMember {
                id: addr.to_string(),
                weight: b.effective_weight(),
                value: b.slot,
            })
            .collect();
        let table = maglev::build(&members, m)?;
        let live = live_half(&st.meta);
        if self.maps.rings.shadow(st.index, live) == Some(table.as_slice()) {
            debug!("ring unchanged");
            if st.counts.is_empty() {
                // An adopted ring: count it once.
                self.vip_mut(id)?.counts = maglev::slot_counts(&table);
            }
            return Ok(());
        }
        wait_since(st.last_flip);
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

    /// The live ring of a VIP (slot values are backend slots).
    pub fn ring(&self, id: &VipId) -> Result<Vec<u32>> {
        let st = self.vips.get(id).ok_or(LbError::NoSuchVip(*id))?;
        Ok(self.maps.rings.read(st.index, live_half(&st.meta))?)
    }
}
