//! `decap`: strips the balancer's tunnel header on backend hosts whose kernel has
//! no ipip / ip6_tunnel module.
//!
//! An IPv4 or IPv6 packet carrying IPv4 (protocol 4) or IPv6 (41) whose inner
//! destination is a configured VIP (`DECAP_VIPS`) loses its outer header and
//! passes to the stack, which then delivers it to the server bound to the VIP.
//! Everything else passes untouched. Outer fragments pass too: the kernel
//! reassembles them (and, lacking a tunnel module, drops them).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use balancer_common::{
    AddrKey, Counter, DECAP_MAX_SOURCES, FAMILY_V4, FAMILY_V6, GlobalStats, SourcePrefix,
};
use balancer_ebpf::{
    l2::write_l2,
    net::*,
    packet::{adjust_head, read_at},
};

#[map]
static DECAP_VIPS: HashMap<AddrKey, u32> = HashMap::with_max_entries(1024, 0);

/// Outer sources tunnelled packets are accepted from; the first element
/// with family 0 ends the list, so an empty list accepts nothing.
#[map]
static DECAP_SOURCES: Array<SourcePrefix> = Array::with_max_entries(DECAP_MAX_SOURCES, 0);

#[map]
static DECAP_STATS: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    let (action, counter) = process(&ctx);
    if let Some(stats) = DECAP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, this CPU only.
        let stats = unsafe { &mut *stats };
        if let Some(v) = stats.counters.get_mut(counter as usize) {
            *v += 1;
        }
    }
    action
}

/// Whether a tunnel's outer source lies in one of the allowed prefixes.
#[inline(always)]
fn allowed_source(family: u32, src: &[u32; 4]) -> bool {
    for i in 0..DECAP_MAX_SOURCES {
        let Some(p) = DECAP_SOURCES.get(i) else {
            return false;
        };
        if p.family == 0 {
            return false;
        }
        if p.contains(family, src) {
            return true;
        }
    }
    false
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Counter) {
    const PASS: u32 = xdp_action::XDP_PASS;
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return (PASS, Counter::PassMalformed);
    };
    let mut proto = eth.proto;
    let mut l3 = ETH_HLEN;
    let mut vlan = None;
    if proto == be16(ETH_P_8021Q) || proto == be16(ETH_P_8021AD) {
        let Some(tag) = read_at::<VlanHdr>(ctx, ETH_HLEN) else {
            return (PASS, Counter::PassMalformed);
        };
        proto = tag.proto;
        vlan = Some(tag);
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    // Outer header length and the protocol it carries.
    let (outer_len, inner, outer_family, outer_src) = if proto == be16(ETH_P_IP) {
        let Some(ip) = read_at::<Ipv4Hdr>(ctx, l3) else {
            return (PASS, Counter::PassMalformed);
        };
        let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
        if ip.version_ihl >> 4 != 4 || ihl < IPV4_HLEN {
            return (PASS, Counter::PassMalformed);
        }
        if u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0 {
            return (PASS, Counter::PassFragment);
        }
        (ihl, ip.proto, FAMILY_V4 as u32, [ip.src, 0, 0, 0])
    } else if proto == be16(ETH_P_IPV6) {
        let Some(ip) = read_at::<Ipv6Hdr>(ctx, l3) else {
            return (PASS, Counter::PassMalformed);
        };
        (IPV6_HLEN, ip.nexthdr, FAMILY_V6 as u32, ip.src)
    } else {
        return (PASS, Counter::PassNonIp);
    };
    let inner_off = l3 + outer_len;
    let (key, ethertype) = match inner {
        IPPROTO_IPIP => {
            let Some(ip) = read_at::<Ipv4Hdr>(ctx, inner_off) else {
                return (PASS, Counter::PassMalformed);
            };
            (
                AddrKey {
                    addr: [ip.dst, 0, 0, 0],
                    family: FAMILY_V4 as u32,
                },
                ETH_P_IP,
            )
        }
        IPPROTO_IPV6 => {
            let Some(ip) = read_at::<Ipv6Hdr>(ctx, inner_off) else {
                return (PASS, Counter::PassMalformed);
            };
            (
                AddrKey {
                    addr: ip.dst,
                    family: FAMILY_V6 as u32,
                },
                ETH_P_IPV6,
            )
        }
        _ => return (PASS, Counter::PassNotVip),
    };
    // SAFETY: existence check only.
    if unsafe { DECAP_VIPS.get(key) }.is_none() {
        return (PASS, Counter::DecapPassNotVip);
    }
    if !allowed_source(outer_family, &outer_src) {
        return (xdp_action::XDP_DROP, Counter::DropDecapSource);
    }
    if adjust_head(ctx, outer_len as i32).is_none() {
        return (PASS, Counter::DropAdjustFailed);
    }
    // The MACs stay; the tag (if any) or Ethernet now names the inner header.
    let written = write_l2(ctx, eth, vlan, ethertype);
    match written {
        Some(()) => (PASS, Counter::DecapOk),
        // The head already moved: the frame is garbage now.
        None => (xdp_action::XDP_DROP, Counter::DropInternal),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
