//! Tunnel encapsulation (IPIP, IP6IP6, 4in6, 6in4) for direct server return.

use crate::{icmp::*, maps::*, parse::Packet, stats::*};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{Backend, Counter, FAMILY_V4, FAMILY_V6, GlobalStats};
use balancer_ebpf::{
    csum,
    l2::{read_l2, write_l2},
    net::*,
    packet::{adjust_head, write_at},
};

/// Encapsulates towards the backend, or answers "too big".
#[inline(always)]
pub(crate) fn tunnel(
    ctx: &XdpContext,
    stats: &mut GlobalStats,
    pkt: &Packet,
    backend: &Backend,
    hash: u32,
) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return drop(stats, Counter::DropInternal);
    };
    let outer_v6 = backend.family == FAMILY_V6;
    let overhead = if outer_v6 { IPV6_HLEN } else { IPV4_HLEN } as u32;
    if cfg.mtu != 0 && pkt.l3_len + overhead > cfg.mtu {
        let adv = cfg.mtu - overhead;
        return if pkt.family == FAMILY_V4 {
            if pkt.df {
                icmp4_too_big(ctx, stats, pkt, adv)
            } else {
                drop(stats, Counter::DropTooBigNoDf)
            }
        } else {
            icmp6_too_big(ctx, stats, pkt, adv)
        };
    }

    // Everything we keep from the old headers, read before the head moves.
    let Some((eth, vlan)) = read_l2(ctx, pkt.l3) else {
        return drop(stats, Counter::DropInternal);
    };
    if adjust_head(ctx, -(overhead as i32)).is_none() {
        return drop(stats, Counter::DropAdjustFailed);
    }
    let inner_proto = if pkt.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let ethertype = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    let out = EthHdr {
        dst: mac_from_bytes(backend.next_hop_mac),
        src: eth.dst,
        ..eth
    };
    if write_l2(ctx, out, vlan, ethertype).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    let l3 = pkt.l3;
    if outer_v6 {
        let mut src = cfg.tunnel_src_v6;
        src[3] = (src[3] & !cfg.tunnel_src_v6_hashmask) | (hash & cfg.tunnel_src_v6_hashmask);
        let hdr = Ipv6Hdr {
            ver_tc_flow: be32((6 << 28) | ((pkt.tos as u32) << 20) | (hash & 0x000f_ffff)),
            payload_len: be16(pkt.l3_len as u16),
            nexthdr: inner_proto,
            hop_limit: 64,
            src,
            dst: backend.addr,
        };
        if write_at(ctx, l3, hdr).is_none() {
            return drop(stats, Counter::DropInternal);
        }
        bump(stats, Counter::TxTunnelV6);
    } else {
        let src =
            (cfg.tunnel_src_v4 & !cfg.tunnel_src_v4_hashmask) | (hash & cfg.tunnel_src_v4_hashmask);
        let (frag, id) = if pkt.df {
            (be16(IP_DF), 0)
        } else {
            (0, fragment_id(stats, hash))
        };
        let hdr = ipv4_header(
            pkt.tos,
            id,
            (pkt.l3_len + IPV4_HLEN as u32) as u16,
            frag,
            inner_proto,
            src,
            backend.addr[0],
        );
        if write_at(ctx, l3, hdr).is_none() {
            return drop(stats, Counter::DropInternal);
        }
        bump(stats, Counter::TxTunnelV4);
    }
    xdp_action::XDP_TX
}

/// The outer IPv4 identification of a packet routers may fragment (DF
/// clear): it must differ between datagrams, or fragments of different
/// packets would be reassembled together (RFC 6864). This CPU's count of
/// tunnelled packets changes on every packet; the flow hash keeps flows
/// apart across CPUs.
#[inline(always)]
fn fragment_id(stats: &GlobalStats, hash: u32) -> u16 {
    let n = stats
        .counters
        .get(Counter::TxTunnelV4 as usize)
        .copied()
        .unwrap_or(0);
    (n as u16) ^ ((hash >> 16) as u16)
}

/// Builds an IPv4 header (no options, TTL 64) with its checksum.
#[inline(always)]
pub(crate) fn ipv4_header(
    tos: u8,
    id: u16,
    tot_len: u16,
    frag_off_be: u16,
    proto: u8,
    src: u32,
    dst: u32,
) -> Ipv4Hdr {
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos,
        tot_len: be16(tot_len),
        id: be16(id),
        frag_off: frag_off_be,
        ttl: 64,
        proto,
        check: 0,
        src,
        dst,
    };
    // SAFETY: Ipv4Hdr is 20 bytes of plain data, 4-byte aligned.
    let words: &[u32; 5] = unsafe { &*(&hdr as *const Ipv4Hdr as *const [u32; 5]) };
    hdr.check = csum::ipv4_header(words);
    hdr
}
