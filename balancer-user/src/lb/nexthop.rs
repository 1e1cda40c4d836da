//! Next hops: which backends need their MAC resolved, and applying what the
//! resolver found. A backend without a next hop is down; established flows
//! keep their slot when only its MAC changes.

use std::net::IpAddr;

use super::{DownSource, LoadBalancer, Result, VipId};
use crate::net::MacAddr;

impl LoadBalancer {
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
                b.set_down(DownSource::NextHop, down);
            })?;
        }
        Ok(())
    }
}
