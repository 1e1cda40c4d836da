//! Refusing a new TCP connection from XDP: the client's SYN becomes a RST
//! from the VIP, sent back with `XDP_TX`. As RFC 9293 (3.10.7.1) asks of a
//! reply to a segment without ACK, it carries sequence 0 and acknowledges
//! the SYN and any data with it, so the client's stack takes it as
//! "connection refused" at once.

use crate::{encap::ipv4_header, parse::Packet, stats::*};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{Counter, FAMILY_V4, GlobalStats};
use balancer_ebpf::{
    csum,
    l2::{read_l2, write_l2},
    net::*,
    packet::{adjust_tail, len, read_at, write_at},
};

/// Turns the SYN in `pkt` into a RST back to the client and returns
/// `XDP_TX` (counted as `tx_shed_rst`), or drops it when the packet cannot
/// be rewritten.
#[inline(always)]
pub(crate) fn refuse(ctx: &XdpContext, stats: &mut GlobalStats, pkt: &Packet) -> u32 {
    match rewrite(ctx, pkt) {
        Ok(()) => {
            bump(stats, Counter::TxShedRst);
            xdp_action::XDP_TX
        }
        Err(c) => drop(stats, c),
    }
}

#[inline(always)]
fn rewrite(ctx: &XdpContext, pkt: &Packet) -> Result<(), Counter> {
    // The SYN's header is read before the tail moves (which may cut its
    // options); L2 after, which also gives the verifier fresh bounds checks
    // (before the move, LLVM would reuse the parser's, on registers the
    // verifier no longer trusts).
    let syn = read_at::<TcpHdr>(ctx, pkt.l4).ok_or(Counter::DropInternal)?;
    // The SYN's sequence space: itself, and any data it carries (the
    // parser made sure the fixed header lies inside the IP packet).
    let doff = ((u16::from_be(syn.off_flags) >> 12) as usize) * 4;
    let ip_end = pkt.l3 + pkt.l3_len as usize;
    let data = ip_end.saturating_sub(pkt.l4 + doff) as u32;
    let ack = u32::from_be(syn.seq).wrapping_add(1).wrapping_add(data);
    let v4 = pkt.family == FAMILY_V4;
    let hlen = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    // The reply is its IP header and a bare TCP header: never longer than
    // the SYN (whose IP options, extension headers or TCP options go).
    let end = pkt.l3 + hlen + TCP_HLEN;
    let cur = len(ctx);
    if cur < end {
        return Err(Counter::DropInternal);
    }
    if cur > end && adjust_tail(ctx, end as i32 - cur as i32).is_none() {
        return Err(Counter::DropAdjustFailed);
    }
    let (eth, vlan) = read_l2(ctx, pkt.l3).ok_or(Counter::DropInternal)?;
    let back = EthHdr {
        dst: eth.src,
        src: eth.dst,
        ..eth
    };
    let mut tcp = TcpHdr {
        sport: syn.dport,
        dport: syn.sport,
        seq: 0,
        ack: be32(ack),
        off_flags: be16((5 << 12) | (TCP_RST | TCP_ACK) as u16),
        window: 0,
        check: 0,
        urg: 0,
    };
    // The pseudo-header's share: addresses, protocol and TCP length.
    let mut sum = 0u64;
    if v4 {
        sum = csum::add32(sum, pkt.dst[0]);
        sum = csum::add32(sum, pkt.src[0]);
        sum = csum::add32(sum, be32(((IPPROTO_TCP as u32) << 16) | TCP_HLEN as u32));
    } else {
        for i in 0..4 {
            sum = csum::add32(sum, pkt.dst[i]);
            sum = csum::add32(sum, pkt.src[i]);
        }
        sum = csum::add32(sum, be32(TCP_HLEN as u32));
        sum = csum::add32(sum, be32(IPPROTO_TCP as u32));
    }
    // SAFETY: TcpHdr is 20 bytes of plain data, 4-byte aligned.
    let words: &[u32; 5] = unsafe { &*(&tcp as *const TcpHdr as *const [u32; 5]) };
    for w in words {
        sum = csum::add32(sum, *w);
    }
    tcp.check = csum::fold(sum);
    if v4 {
        write_l2(ctx, back, vlan, ETH_P_IP).ok_or(Counter::DropInternal)?;
        let ip = ipv4_header(
            0,
            0,
            (IPV4_HLEN + TCP_HLEN) as u16,
            be16(IP_DF),
            IPPROTO_TCP,
            pkt.dst[0],
            pkt.src[0],
        );
        write_at(ctx, pkt.l3, ip).ok_or(Counter::DropInternal)?;
    } else {
        write_l2(ctx, back, vlan, ETH_P_IPV6).ok_or(Counter::DropInternal)?;
        let ip = Ipv6Hdr {
            ver_tc_flow: be32(6 << 28),
            payload_len: be16(TCP_HLEN as u16),
            nexthdr: IPPROTO_TCP,
            hop_limit: 64,
            src: pkt.dst,
            dst: pkt.src,
        };
        write_at(ctx, pkt.l3, ip).ok_or(Counter::DropInternal)?;
    }
    write_at(ctx, pkt.l3 + hlen, tcp).ok_or(Counter::DropInternal)
}
