//! `VIPS`: the VIP table, an array laid out here as an open-addressing hash
//! table with linear probing (see `balancer_common::VipSlot` for why, and for
//! what concurrent readers may see).
//!
//! The layout rules, which the data path's `find` relies on:
//! - a VIP lies at most [`VIP_PROBES`] - 1 slots after its home slot
//!   ([`vip_slot_hash`] masked to the table), and every slot between its home
//!   and itself is occupied or removed, never empty;
//! - removing a VIP marks its slot removed, so probes for VIPs behind it go on;
//!   an insert reuses the first removed or empty slot of its probe sequence.

use std::collections::BTreeMap;

use aya::maps::Map;
use balancer_common::{
    VIP_PROBES, VIP_SLOT_EMPTY, VIP_SLOT_REMOVED, VipKey, VipMeta, VipSlot,
    hash::{vip_key_tail, vip_slot_hash},
};

use super::{MapsError, ShadowArray, error::Result};

/// `VIPS` with its shadow.
pub struct VipMap {
    slots: ShadowArray<VipSlot>,
    /// Slot of each VIP, ordered by key bytes (the iteration order).
    index: BTreeMap<[u8; size_of::<VipKey>()], u32>,
    max: u32,
}

impl VipMap {
    /// Wraps the array, reading back the VIPs it already holds (pins).
    pub(super) fn new(map: Map, max_vips: u32) -> Result<Self> {
        let slots = ShadowArray::new("VIPS", map)?;
        let n = slots.len();
        if !n.is_power_of_two() {
            return Err(MapsError::Layout {
                name: "VIPS",
                what: "slot count (not a power of two)",
                got: n,
                want: balancer_common::vip_table_slots(max_vips),
            });
        }
        let mut me = Self {
            slots,
            index: BTreeMap::new(),
            max: max_vips,
        };
        for i in 0..n {
            if let Some(s) = me.slots.get(i)
                && occupied(s)
            {
                me.index.insert(bytes(&s.key), i);
            }
        }
        Ok(me)
    }

    /// Inserts or replaces a VIP. Replacing writes the slot in place, and only
    /// the changed bytes of `meta` differ, which is how the ring generation
    /// flips under concurrent readers.
    pub fn insert(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        let at = match self.index.get(&bytes(key)) {
            Some(&i) => i,
            None => {
                if self.index.len() as u32 >= self.max {
                    return Err(MapsError::VipTableFull {
                        vips: self.index.len() as u32,
                    });
                }
                self.free_slot(key)?
            }
        };
        self.slots.set(
            at,
            VipSlot {
                key: *key,
                meta: *meta,
            },
        )?;
        self.index.insert(bytes(key), at);
        Ok(())
    }

    /// Removes a VIP (its slot is marked removed). Removing an absent VIP is
    /// not an error.
    pub fn remove(&mut self, key: &VipKey) -> Result<()> {
        let Some(&at) = self.index.get(&bytes(key)) else {
            return Ok(());
        };
        let mut gone = VipSlot::default();
        gone.key.family = VIP_SLOT_REMOVED;
        self.slots.set(at, gone)?;
        self.index.remove(&bytes(key));
        Ok(())
    }

    /// The shadow's entry for a VIP.
    pub fn get(&self, key: &VipKey) -> Option<&VipMeta> {
        let at = *self.index.get(&bytes(key))?;
        self.slots.get(at).map(|s| &s.meta)
    }

    /// All VIPs in the shadow, ordered by key bytes.
    pub fn iter(&self) -> impl Iterator<Item = (VipKey, VipMeta)> + '_ {
        self.index
            .values()
            .filter_map(|&i| self.slots.get(i).map(|s| (s.key, s.meta)))
    }

    /// One raw slot of the table, as the data path reads it.
    pub fn slot(&self, i: u32) -> Option<&VipSlot> {
        self.slots.get(i)
    }

    /// Most VIPs the table takes.
    pub fn capacity(&self) -> u32 {
        self.max
    }

    /// The first removed or empty slot of `key`'s probe sequence.
    fn free_slot(&self, key: &VipKey) -> Result<u32> {
        let mask = self.slots.len() - 1;
        let home = home(key);
        (0..VIP_PROBES)
            .map(|p| home.wrapping_add(p) & mask)
            .find(|&i| self.slots.get(i).is_some_and(|s| !occupied(s)))
            .ok_or(MapsError::VipTableFull {
                vips: self.index.len() as u32,
            })
    }

    pub(super) fn verify(&self, out: &mut Vec<String>) -> Result<()> {
        self.slots.verify(out)?;
        // Every VIP must be reachable by the data path's probe.
        let mask = self.slots.len() - 1;
        for (k, &at) in &self.index {
            let key: VipKey = bytemuck::pod_read_unaligned(k);
            let home = home(&key);
            let reachable = (0..VIP_PROBES)
                .map(|p| home.wrapping_add(p) & mask)
                .take_while(|&i| {
                    self.slots
                        .get(i)
                        .is_some_and(|s| s.key.family != VIP_SLOT_EMPTY)
                })
                .any(|i| i == at);
            if !reachable {
                out.push(format!("VIPS[{at}]: not reachable from its home slot"));
            }
        }
        Ok(())
    }
}

/// Home slot hash of a key (unmasked), as the data path computes it.
fn home(key: &VipKey) -> u32 {
    vip_slot_hash(&key.addr, vip_key_tail(key.port, key.proto, key.family))
}

fn occupied(s: &VipSlot) -> bool {
    s.key.family != VIP_SLOT_EMPTY && s.key.family != VIP_SLOT_REMOVED
}

fn bytes(key: &VipKey) -> [u8; size_of::<VipKey>()] {
    let mut b = [0u8; size_of::<VipKey>()];
    b.copy_from_slice(bytemuck::bytes_of(key));
    b
}
