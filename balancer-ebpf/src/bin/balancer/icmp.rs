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

// reply_head makes room for its IP header by `size_of`: that must be the wire length.
const _: () = assert!(size_of::<Ipv4Hdr>() == IPV4_HLEN && size_of::<Ipv6Hdr>() == IPV6_HLEN);

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
    let quote = (pkt.ihl + 8) & 0x7f;
    let ip = ipv4_header(
        0,
        0,
        (IPV4_HLEN + ICMP_HLEN + quote) as u16,
        0,
        IPPROTO_ICMP,
        pkt.dst[0],
        pkt.src[0],
    );
    if let Err(c) = reply_head(ctx, l3, l3 + quote, ETH_P_IP, ip) {
        return drop(stats, c);
    }
    let icmp = IcmpHdr {
        kind: 3,
        code: 4,
        check: 0,
        // Two unused bytes, then the next-hop MTU; as a u32 on the wire.
        data: be32(mtu & 0xffff),
    };
    // ICMPv4 has no pseudo-header: the sum starts at 0.
    reply_icmp::<{ ICMP4_QUOTE_MAX / 2 }>(
        ctx,
        stats,
        l3 + IPV4_HLEN,
        icmp,
        0,
        Counter::IcmpTooBigV4,
    )
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
    // The packet is larger than the MTU (>= 1280), so it always has this much.
    // Checked before reply_head's read of L2: both fail with the same counter
    // and neither changes the packet, so the order does not show.
    let keep = l3 + ICMP6_QUOTE;
    if len(ctx) < keep {
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
    if let Err(c) = reply_head(ctx, l3, keep, ETH_P_IPV6, ip) {
        return drop(stats, c);
    }
    // IPv6 links carry at least 1280 bytes; never advertise less.
    let mtu = if mtu < 1280 { 1280 } else { mtu };
    let icmp = IcmpHdr {
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
    reply_icmp::<{ ICMP6_QUOTE / 2 }>(ctx, stats, l3 + IPV6_HLEN, icmp, sum, Counter::IcmpTooBigV6)
}

/// The steps both replies share, up to the ICMP header: trims the packet to
/// `keep` bytes (the end of the quote), grows the head by room for `ip` and
/// an ICMP header, writes Ethernet (and the VLAN tag) back with the MACs
/// swapped, then `ip` at `l3`. L2 is read before the head moves, since the
/// move invalidates it. On failure, the counter to drop with.
#[inline(always)]
fn reply_head<T: Copy>(
    ctx: &XdpContext,
    l3: usize,
    keep: usize,
    ethertype: u16,
    ip: T,
) -> Result<(), Counter> {
    let (eth, vlan) = read_l2(ctx, l3).ok_or(Counter::DropInternal)?;
    let cur = len(ctx);
    if cur > keep && adjust_tail(ctx, keep as i32 - cur as i32).is_none() {
        return Err(Counter::DropAdjustFailed);
    }
    if adjust_head(ctx, -((size_of::<T>() + ICMP_HLEN) as i32)).is_none() {
        return Err(Counter::DropAdjustFailed);
    }
    // Back to the client: its MAC becomes the destination.
    let back = EthHdr {
        dst: eth.src,
        src: eth.dst,
        ..eth
    };
    write_l2(ctx, back, vlan, ethertype).ok_or(Counter::DropInternal)?;
    write_at(ctx, l3, ip).ok_or(Counter::DropInternal)
}

/// The steps both replies share from the ICMP header on: sums `icmp` and the
/// quote behind it (at most `N` words) onto `sum` (the pseudo-header's share,
/// or 0), writes the header with that checksum at `off`, counts `counter` and
/// returns `XDP_TX`.
#[inline(always)]
fn reply_icmp<const N: usize>(
    ctx: &XdpContext,
    stats: &mut GlobalStats,
    off: usize,
    mut icmp: IcmpHdr,
    sum: u64,
    counter: Counter,
) -> u32 {
    let mut sum = csum::add32(sum, u32::from_ne_bytes([icmp.kind, icmp.code, 0, 0]));
    sum = csum::add32(sum, icmp.data);
    sum = sum_packet::<N>(ctx, off + ICMP_HLEN, sum);
    icmp.check = csum::fold(sum);
    if write_at(ctx, off, icmp).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    bump(stats, counter);
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
