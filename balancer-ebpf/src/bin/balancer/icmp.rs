//! ICMP "fragmentation needed" and ICMPv6 "packet too big" replies.

use crate::{encap::ipv4_header, parse::Packet, stats::*};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{Counter, GlobalStats};
use balancer_ebpf::{
    csum,
    l2::{read_l2, write_l2},
    net::*,
    packet::{adjust_head, adjust_tail, len, read_at, write_at},
};

/// Most bytes of the offending packet quoted in an ICMP error.
pub(crate) const ICMP4_QUOTE_MAX: usize = 60 + 8;
pub(crate) const ICMP6_QUOTE: usize = 128;

/// Turns the packet into ICMP "fragmentation needed" back to the client and
/// returns `XDP_TX`. The reply quotes the client's IP header and 8 bytes, as
/// RFC 792 asks, and comes from the VIP.
#[inline(always)]
pub(crate) fn icmp4_too_big(
    ctx: &XdpContext,
    stats: &mut GlobalStats,
    pkt: &Packet,
    mtu: u32,
) -> u32 {
    let l3 = pkt.l3;
    let Some((eth, vlan)) = read_l2(ctx, l3) else {
        return drop(stats, Counter::DropInternal);
    };
    let quote = (pkt.ihl + 8) & 0x7f;
    let keep = l3 + quote;
    let cur = len(ctx);
    if cur > keep && adjust_tail(ctx, keep as i32 - cur as i32).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    if adjust_head(ctx, -((IPV4_HLEN + ICMP_HLEN) as i32)).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    // Back to the client: its MAC becomes the destination.
    let back = EthHdr {
        dst: eth.src,
        src: eth.dst,
        ..eth
    };
    if write_l2(ctx, back, vlan, ETH_P_IP).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    let ip = ipv4_header(
        0,
        0,
        (IPV4_HLEN + ICMP_HLEN + quote) as u16,
        0,
        IPPROTO_ICMP,
        pkt.dst[0],
        pkt.src[0],
    );
    if write_at(ctx, l3, ip).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    let mut icmp = IcmpHdr {
        kind: 3,
        code: 4,
        check: 0,
        // Two unused bytes, then the next-hop MTU; as a u32 on the wire.
        data: be32(mtu & 0xffff),
    };
    let icmp_off = l3 + IPV4_HLEN;
    let mut sum = csum::add32(0, u32::from_ne_bytes([icmp.kind, icmp.code, 0, 0]));
    sum = csum::add32(sum, icmp.data);
    sum = sum_packet::<{ ICMP4_QUOTE_MAX / 2 }>(ctx, icmp_off + ICMP_HLEN, sum);
    icmp.check = csum::fold(sum);
    if write_at(ctx, icmp_off, icmp).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    bump(stats, Counter::IcmpTooBigV4);
    xdp_action::XDP_TX
}

/// Turns the packet into ICMPv6 "packet too big" back to the client.
#[inline(always)]
pub(crate) fn icmp6_too_big(
    ctx: &XdpContext,
    stats: &mut GlobalStats,
    pkt: &Packet,
    mtu: u32,
) -> u32 {
    let l3 = pkt.l3;
    let Some((eth, vlan)) = read_l2(ctx, l3) else {
        return drop(stats, Counter::DropInternal);
    };
    // The packet is larger than the MTU (>= 1280), so it always has this much.
    let keep = l3 + ICMP6_QUOTE;
    let cur = len(ctx);
    if cur < keep {
        return drop(stats, Counter::DropInternal);
    }
    if cur > keep && adjust_tail(ctx, keep as i32 - cur as i32).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    if adjust_head(ctx, -((IPV6_HLEN + ICMP_HLEN) as i32)).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    // Back to the client: its MAC becomes the destination.
    let back = EthHdr {
        dst: eth.src,
        src: eth.dst,
        ..eth
    };
    if write_l2(ctx, back, vlan, ETH_P_IPV6).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    let plen = (ICMP_HLEN + ICMP6_QUOTE) as u32;
    let ip = Ipv6Hdr {
        ver_tc_flow: be32(6 << 28),
        payload_len: be16(plen as u16),
        nexthdr: IPPROTO_ICMPV6,
        hop_limit: 64,
        src: pkt.dst,
        dst: pkt.src,
    };
    if write_at(ctx, l3, ip).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    // IPv6 links carry at least 1280 bytes; never advertise less.
    let mtu = if mtu < 1280 { 1280 } else { mtu };
    let mut icmp = IcmpHdr {
        kind: 2,
        code: 0,
        check: 0,
        data: be32(mtu),
    };
    // Pseudo-header: source, destination, upper-layer length, next header.
    let mut sum = 0u64;
    for i in 0..4 {
        sum = csum::add32(sum, ip.src[i]);
        sum = csum::add32(sum, ip.dst[i]);
    }
    sum = csum::add32(sum, be32(plen));
    sum = csum::add32(sum, be32(IPPROTO_ICMPV6 as u32));
    sum = csum::add32(sum, u32::from_ne_bytes([icmp.kind, icmp.code, 0, 0]));
    sum = csum::add32(sum, icmp.data);
    let icmp_off = l3 + IPV6_HLEN;
    sum = sum_packet::<{ ICMP6_QUOTE / 2 }>(ctx, icmp_off + ICMP_HLEN, sum);
    icmp.check = csum::fold(sum);
    if write_at(ctx, icmp_off, icmp).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    bump(stats, Counter::IcmpTooBigV6);
    xdp_action::XDP_TX
}

/// Adds the 16-bit words from `off` to the end of the packet (at most `N`).
#[inline(always)]
pub(crate) fn sum_packet<const N: usize>(ctx: &XdpContext, off: usize, mut sum: u64) -> u64 {
    let mut pos = off;
    for _ in 0..N {
        match read_at::<u16>(ctx, pos) {
            Some(w) => sum += w as u64,
            None => break,
        }
        pos += 2;
    }
    sum
}
