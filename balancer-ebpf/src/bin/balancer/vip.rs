//! VIP lookup: the one-bit prefilter, then the VIP table.

use crate::maps::*;
use balancer_common::{VipKey, VipMeta, hash::vip_filter_bit};

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
    let mut key = VipKey {
        addr,
        port,
        proto,
        family,
    };
    // SAFETY: hash-map values are copied out at once.
    if let Some(v) = unsafe { VIPS.get(key) } {
        return Some(*v);
    }
    if port == 0 {
        return None;
    }
    key.port = 0;
    unsafe { VIPS.get(key) }.copied()
}
