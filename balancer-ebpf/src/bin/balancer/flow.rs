//! Placing a packet on a backend: the connection table, the Maglev ring and
//! client affinity.

use crate::{encap::tunnel, l2::l2_dsr, maps::*, parse::Packet, rst::refuse, stats::*};
use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_ktime_get_ns, programs::XdpContext};
use balancer_common::{
    AffinityKey, AffinityValue, BACKEND_F_ACTIVE, Backend, Counter, ForwardMode, GlobalStats,
    RING_EMPTY, VIP_F_AFFINITY, VIP_F_SHED_RST, VipMeta, flow_entry, flow_entry_backend,
    flow_entry_epoch,
    hash::{FlowHash, client_hash, ring_slot},
    ring_base, shed_draw,
};
use balancer_ebpf::{
    flowtable::{self, Found},
    packet::{adjust_tail, len},
};

/// Picks the backend on the VIP's live ring for `hash`.
#[inline(always)]
pub(crate) fn ring_pick(vip: &VipMeta, hash: u32) -> Result<(u32, Backend), Counter> {
    // SAFETY: a plain read of a constant the loader froze.
    let m = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    let Some(base) = ring_base(vip.index, vip.ring_gen & 1, m) else {
        return Err(Counter::DropInternal);
    };
    let slot = base.wrapping_add(ring_slot(hash, m));
    let Some(&pair) = RINGS.get(slot >> 1) else {
        return Err(Counter::DropInternal);
    };
    let idx = (pair >> ((slot & 1) * 32)) as u32;
    if idx == RING_EMPTY {
        return Err(Counter::DropNoBackend);
    }
    match BACKENDS.get(idx) {
        Some(b) if b.flags & BACKEND_F_ACTIVE != 0 => Ok((idx, *b)),
        _ => Err(Counter::DropInternal),
    }
}

/// A backend from a table entry, if its slot still holds the same backend
/// (compared on the low 16 epoch bits the connection table keeps).
#[inline(always)]
pub(crate) fn live_backend(idx: u32, epoch: u32) -> Option<Backend> {
    match BACKENDS.get(idx) {
        Some(b) if b.flags & BACKEND_F_ACTIVE != 0 && (b.epoch ^ epoch) & 0xffff == 0 => Some(*b),
        _ => None,
    }
}

/// Places a new connection of an affinity VIP: the client's remembered backend
/// while its entry lives, else the ring by client hash.
#[inline(always)]
pub(crate) fn affinity_pick(
    stats: &mut GlobalStats,
    vip: &VipMeta,
    client: [u32; 4],
) -> Result<(u32, Backend), Counter> {
    let key = AffinityKey {
        addr: client,
        vip_index: vip.index,
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let ttl = vip.affinity_timeout_secs as u64 * NS_PER_SEC;
    if let Some(entry) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a successful lookup; a racing writer can
        // at worst make us use a value as old as the one we replace.
        let entry = unsafe { &mut *entry };
        if entry.expires_ns > now
            && let Some(b) = live_backend(entry.backend, entry.epoch)
        {
            entry.expires_ns = now + ttl;
            bump(stats, Counter::AffinityHit);
            return Ok((entry.backend, b));
        }
    }
    bump(stats, Counter::AffinityMiss);
    let (idx, b) = ring_pick(vip, client_hash(&client))?;
    let value = AffinityValue {
        backend: idx,
        epoch: b.epoch,
        expires_ns: now + ttl,
    };
    let _ = AFFINITY.insert(key, value, 0);
    Ok((idx, b))
}

#[inline(always)]
pub(crate) fn balance(
    ctx: &XdpContext,
    stats: &mut GlobalStats,
    vip: &VipMeta,
    pkt: &Packet,
    hash: FlowHash,
) -> u32 {
    // SAFETY: a plain read of a constant the loader froze.
    let mask = unsafe { core::ptr::read_volatile(&FLOW_SET_MASK) };
    let Some(set) = FLOWS.get_ptr_mut(hash.ring() & mask) else {
        return drop(stats, Counter::DropInternal);
    };
    // SAFETY: the pointer comes from a successful lookup of our own array; see
    // balancer_ebpf::flowtable for how concurrent writers are tolerated.
    let set = unsafe { &mut *set };
    let now = flowtable::now();
    let tag = hash.tag();
    let mut new_flow = false;
    let mut chosen: Option<(u32, Backend)> = None;
    let way = match flowtable::lookup(set, tag, now) {
        Found::Hit { way, entry } => {
            let idx = flow_entry_backend(entry);
            match live_backend(idx, flow_entry_epoch(entry)) {
                Some(b) => {
                    bump(stats, Counter::LruHit);
                    chosen = Some((idx, b));
                }
                None => bump(stats, Counter::LruStale),
            }
            way
        }
        Found::Miss { victim } => {
            bump(stats, Counter::LruMiss);
            if pkt.tcp_non_syn {
                bump(stats, Counter::LruMissTcpNonSyn);
            }
            victim
        }
    };
    let (idx, backend) = match chosen {
        Some(c) => c,
        None => {
            // A shed tier refuses new connections only: a TCP segment that
            // is not a SYN belongs to a connection already placed (its
            // table entry was lost), and keeps going.
            // SAFETY: helper without arguments (called only on a shed VIP).
            if !pkt.tcp_non_syn
                && vip.shed_share != 0
                && shed_draw(vip.shed_share, hash.ring(), unsafe { bpf_ktime_get_ns() })
            {
                if pkt.tcp && vip.flags & VIP_F_SHED_RST != 0 {
                    return refuse(ctx, stats, pkt);
                }
                return drop(stats, Counter::DropShed);
            }
            let picked = if vip.flags & VIP_F_AFFINITY != 0 {
                affinity_pick(stats, vip, pkt.src)
            } else {
                ring_pick(vip, hash.ring())
            };
            let (idx, b) = match picked {
                Ok(p) => p,
                Err(c) => return drop(stats, c),
            };
            flowtable::store(set, way, flow_entry(tag, idx, b.epoch), now);
            new_flow = true;
            (idx, b)
        }
    };

    // Bytes after the IP packet (Ethernet padding, or junk) must not travel
    // to the backend: trim the frame to the IP length first.
    let end = pkt.l3 + pkt.l3_len as usize;
    let cur = len(ctx);
    if cur > end && adjust_tail(ctx, end as i32 - cur as i32).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    let action = match ForwardMode::from_u8(vip.mode) {
        Some(ForwardMode::L2Dsr) => l2_dsr(ctx, stats, &backend),
        Some(ForwardMode::Tunnel) => tunnel(ctx, stats, pkt, &backend, hash.ring()),
        None => drop(stats, Counter::DropInternal),
    };
    if action == xdp_action::XDP_TX {
        account(vip.index, idx, pkt.l3_len as u64, new_flow);
    }
    action
}
