//! Per-CPU counters: the global counter array and per-VIP / per-backend traffic.

use crate::maps::*;
use aya_ebpf::bindings::xdp_action;
use balancer_common::{Counter, GlobalStats};

#[inline(always)]
pub(crate) fn bump(stats: &mut GlobalStats, c: Counter) {
    if let Some(v) = stats.counters.get_mut(c as usize) {
        *v += 1;
    }
}

#[inline(always)]
pub(crate) fn pass(stats: &mut GlobalStats, c: Counter) -> u32 {
    bump(stats, c);
    xdp_action::XDP_PASS
}

#[inline(always)]
pub(crate) fn drop(stats: &mut GlobalStats, c: Counter) -> u32 {
    bump(stats, c);
    xdp_action::XDP_DROP
}

#[inline(always)]
pub(crate) fn account(vip_index: u32, backend: u32, bytes: u64, new_flow: bool) {
    let nf = new_flow as u64;
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_index) {
        // SAFETY: per-CPU value, this CPU only.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        s.new_flows += nf;
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as above.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        s.new_flows += nf;
    }
}
