//! Packet parsing: Ethernet, one VLAN tag, IPv4 or IPv6 with extension
//! headers, and the L4 ports, up to the VIP lookup.

use crate::{flow::balance, stats::*, vip::*};
use aya_ebpf::programs::XdpContext;
use balancer_common::{
    Counter, FAMILY_V4, FAMILY_V6, GlobalStats,
    hash::{flow_hash_v4, flow_hash_v6},
};
use balancer_ebpf::{
    net::*,
    packet::{MAX_HDR_OFFSET, len, read_at},
};

/// What the parser learned about a packet addressed to a VIP.
pub(crate) struct Packet {
    /// Offset of the L3 header (14, or 18 behind a VLAN tag).
    pub(crate) l3: usize,
    /// Client address words.
    pub(crate) src: [u32; 4],
    /// VIP address words.
    pub(crate) dst: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub(crate) family: u8,
    /// L3 length (IPv4 total length / IPv6 payload + 40).
    pub(crate) l3_len: u32,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub(crate) tos: u8,
    /// IPv4 DF flag (always true for IPv6, which routers never fragment).
    pub(crate) df: bool,
    /// TCP segment without SYN.
    pub(crate) tcp_non_syn: bool,
    /// IPv4 header length, for building ICMP errors.
    pub(crate) ihl: usize,
    /// Offset of the L4 header.
    pub(crate) l4: usize,
    /// TCP (else UDP).
    pub(crate) tcp: bool,
}

#[inline(always)]
pub(crate) fn process(ctx: &XdpContext, stats: &mut GlobalStats) -> u32 {
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return pass(stats, Counter::PassMalformed);
    };
    let mut proto = eth.proto;
    let mut l3 = ETH_HLEN;
    if proto == be16(ETH_P_8021Q) || proto == be16(ETH_P_8021AD) {
        let Some(vlan) = read_at::<VlanHdr>(ctx, ETH_HLEN) else {
            return pass(stats, Counter::PassMalformed);
        };
        proto = vlan.proto;
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    if proto == be16(ETH_P_IP) {
        process_v4(ctx, stats, l3)
    } else if proto == be16(ETH_P_IPV6) {
        process_v6(ctx, stats, l3)
    } else {
        pass(stats, Counter::PassNonIp)
    }
}

#[inline(always)]
pub(crate) fn process_v4(ctx: &XdpContext, stats: &mut GlobalStats, l3: usize) -> u32 {
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, l3) else {
        return pass(stats, Counter::PassMalformed);
    };
    if ip.version_ihl >> 4 != 4 {
        return pass(stats, Counter::PassMalformed);
    }
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return pass(stats, Counter::PassMalformed);
    }
    if !maybe_vip(ip.dst, ip.dst) {
        return pass(stats, Counter::PassNotVip);
    }
    // The header must not claim more than the frame holds (Ethernet padding
    // may make the frame longer, never shorter).
    let tot_len = u16::from_be(ip.tot_len) as usize;
    if tot_len < ihl || l3 + tot_len > len(ctx) {
        return pass(stats, Counter::PassMalformed);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return pass(stats, Counter::PassNonL4);
    }
    let dst = [ip.dst, 0, 0, 0];
    let frag = u16::from_be(ip.frag_off);
    if frag & IP_OFFSET != 0 {
        // A later fragment: no ports. Only an all-ports VIP can claim it.
        return match lookup_vip(dst, 0, ip.proto, FAMILY_V4) {
            Some(_) => drop(stats, Counter::DropFragment),
            None => pass(stats, Counter::PassFragment),
        };
    }
    let l4 = l3 + ihl;
    // The whole L4 header must lie inside the IP packet: bytes beyond its
    // total length are Ethernet padding, not ports or flags.
    if tot_len < ihl + l4_header_len(ip.proto) {
        return pass(stats, Counter::PassMalformed);
    }
    let Some(ports) = read_at::<u32>(ctx, l4) else {
        return pass(stats, Counter::PassMalformed);
    };
    let dport = (ports >> 16) as u16; // the second pair of bytes on the wire
    let Some(vip) = lookup_vip(dst, dport, ip.proto, FAMILY_V4) else {
        return pass(stats, Counter::PassNotVip);
    };
    if frag & IP_MF != 0 {
        return drop(stats, Counter::DropFragment);
    }
    let tcp_non_syn = if ip.proto == IPPROTO_TCP {
        match read_at::<u8>(ctx, l4 + 13) {
            Some(flags) => flags & TCP_SYN == 0,
            None => return pass(stats, Counter::PassMalformed),
        }
    } else {
        false
    };
    let pkt = Packet {
        l3,
        src: [ip.src, 0, 0, 0],
        dst,
        family: FAMILY_V4,
        l3_len: tot_len as u32,
        tos: ip.tos,
        df: frag & IP_DF != 0,
        tcp_non_syn,
        ihl,
        l4,
        tcp: ip.proto == IPPROTO_TCP,
    };
    let hash = flow_hash_v4(ip.src, ip.dst, ports, ip.proto);
    balance(ctx, stats, &vip, &pkt, hash)
}

#[inline(always)]
pub(crate) fn process_v6(ctx: &XdpContext, stats: &mut GlobalStats, l3: usize) -> u32 {
    let Some(ip) = read_at::<Ipv6Hdr>(ctx, l3) else {
        return pass(stats, Counter::PassMalformed);
    };
    if u32::from_be(ip.ver_tc_flow) >> 28 != 6 {
        return pass(stats, Counter::PassMalformed);
    }
    if !maybe_vip(ip.dst[0], ip.dst[3]) {
        return pass(stats, Counter::PassNotVip);
    }
    if l3 + IPV6_HLEN + u16::from_be(ip.payload_len) as usize > len(ctx) {
        return pass(stats, Counter::PassMalformed);
    }
    let mut nexthdr = ip.nexthdr;
    let mut off = l3 + IPV6_HLEN;
    let mut fragment = false;
    let mut later_fragment = false;
    // Walk at most three extension headers; real traffic to a VIP carries none.
    for _ in 0..3 {
        match nexthdr {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = read_at::<Ipv6ExtHdr>(ctx, off) else {
                    return pass(stats, Counter::PassMalformed);
                };
                nexthdr = ext.nexthdr;
                off += (ext.len as usize + 1) * 8;
                if off > MAX_HDR_OFFSET {
                    return pass(stats, Counter::PassMalformed);
                }
            }
            IPPROTO_FRAGMENT => {
                let Some(fh) = read_at::<Ipv6FragHdr>(ctx, off) else {
                    return pass(stats, Counter::PassMalformed);
                };
                nexthdr = fh.nexthdr;
                off += 8;
                if off > MAX_HDR_OFFSET {
                    return pass(stats, Counter::PassMalformed);
                }
                let fo = u16::from_be(fh.frag_off);
                // Offset 0 without M is an atomic fragment: a whole packet.
                if fo & 0xfff9 != 0 {
                    fragment = true;
                    later_fragment = fo & 0xfff8 != 0;
                }
            }
            _ => break,
        }
    }
    if nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP {
        return match nexthdr {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT | 50 | 51 => {
                pass(stats, Counter::PassIpv6Ext)
            }
            _ => pass(stats, Counter::PassNonL4),
        };
    }
    if later_fragment {
        return match lookup_vip(ip.dst, 0, nexthdr, FAMILY_V6) {
            Some(_) => drop(stats, Counter::DropFragment),
            None => pass(stats, Counter::PassFragment),
        };
    }
    // The L4 header must lie inside the payload the IPv6 header declares. This
    // also refuses jumbograms (payload length 0, the real length in a
    // hop-by-hop option), which we do not balance.
    if off + l4_header_len(nexthdr) > l3 + IPV6_HLEN + u16::from_be(ip.payload_len) as usize {
        return pass(stats, Counter::PassMalformed);
    }
    let Some(ports) = read_at::<u32>(ctx, off) else {
        return pass(stats, Counter::PassMalformed);
    };
    let dport = (ports >> 16) as u16;
    let Some(vip) = lookup_vip(ip.dst, dport, nexthdr, FAMILY_V6) else {
        return pass(
            stats,
            if fragment {
                Counter::PassFragment
            } else {
                Counter::PassNotVip
            },
        );
    };
    if fragment {
        return drop(stats, Counter::DropFragment);
    }
    let tcp_non_syn = if nexthdr == IPPROTO_TCP {
        match read_at::<u8>(ctx, off + 13) {
            Some(flags) => flags & TCP_SYN == 0,
            None => return pass(stats, Counter::PassMalformed),
        }
    } else {
        false
    };
    let vtf = u32::from_be(ip.ver_tc_flow);
    let pkt = Packet {
        l3,
        src: ip.src,
        dst: ip.dst,
        family: FAMILY_V6,
        l3_len: u16::from_be(ip.payload_len) as u32 + IPV6_HLEN as u32,
        tos: (vtf >> 20) as u8,
        df: true,
        tcp_non_syn,
        ihl: IPV6_HLEN,
        l4: off,
        tcp: nexthdr == IPPROTO_TCP,
    };
    let hash = flow_hash_v6(&ip.src, &ip.dst, ports, nexthdr);
    balance(ctx, stats, &vip, &pkt, hash)
}

/// Bytes of the L4 header the balancer needs whole: TCP's fixed header (its
/// flags decide SYN), UDP's header.
#[inline(always)]
fn l4_header_len(proto: u8) -> usize {
    if proto == IPPROTO_TCP { 20 } else { 8 }
}
