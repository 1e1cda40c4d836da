//! VIP lookup: the one-bit prefilter, then the VIP table.

use crate::maps::*;
use balancer_common::{
    VIP_PROBES, VIP_SLOT_EMPTY, VipMeta,
    hash::{vip_filter_bit, vip_key_tail, vip_slot_hash},
};

/// Whether the prefilter bit of an address is set.
#[inline(always)]
pub(crate) fn maybe_vip(first: u32, last: u32) -> bool {
    let bit = vip_filter_bit(first, last);
    let Some(filter) = VIP_FILTER.get(0) else {
        return false;
    };
    match filter.words.get((bit >> 6) as usize) {
        Some(w) => w & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

/// Looks up the VIP for (address, port, protocol), falling back to the
/// all-ports VIP of the address.
#[inline(always)]
pub(crate) fn lookup_vip(addr: [u32; 4], port: u16, proto: u8, family: u8) -> Option<VipMeta> {
    if let Some(v) = find(&addr, port, proto, family) {
        return Some(v);
    }
    if port == 0 {
        return None;
    }
    find(&addr, 0, proto, family)
}

/// Probes the VIP table from the key's home slot: at most [`VIP_PROBES`]
/// slots, stopping at the first never-used one.
#[inline(always)]
fn find(addr: &[u32; 4], port: u16, proto: u8, family: u8) -> Option<VipMeta> {
    // SAFETY: a plain read of a constant the loader froze.
    let mask = unsafe { core::ptr::read_volatile(&VIP_SLOT_MASK) };
    let mut i = vip_slot_hash(addr, vip_key_tail(port, proto, family));
    for _ in 0..VIP_PROBES {
        let slot = VIPS.get(i & mask)?;
        let k = &slot.key;
        if k.addr == *addr && k.port == port && k.proto == proto && k.family == family {
            return Some(slot.meta);
        }
        if k.family == VIP_SLOT_EMPTY {
            return None;
        }
        i = i.wrapping_add(1);
    }
    None
}
