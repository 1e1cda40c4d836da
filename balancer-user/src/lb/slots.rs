//! Backend slots in `BACKENDS`: one per (VIP, backend) membership, handed out
//! on add and deactivated (which moves the slot's established flows) once no
//! ring names it.

use std::net::IpAddr;

use balancer_common::{BACKEND_F_ACTIVE, Backend};

use super::{LbError, LoadBalancer, Result};
use crate::net::{MacAddr, addr_words, family};

impl LoadBalancer {
    /// The lowest inactive slot.
    pub(super) fn free_slot(&self) -> Result<u32> {
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

    /// Writes an active slot. A new epoch (the slot given to a new backend)
    /// makes connection-table entries of its earlier occupant stale.
    pub(super) fn write_slot(
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

    /// Marks a slot inactive: its established flows move elsewhere.
    pub(super) fn deactivate_slot(&mut self, slot: u32) -> Result<()> {
        let mut b = self.maps.backends.get(slot).copied().unwrap_or_default();
        b.flags &= !BACKEND_F_ACTIVE;
        self.maps.backends.set(slot, b)?;
        Ok(())
    }
}
