//! Layer 2 across a move of the packet head: the Ethernet header and the
//! optional 802.1Q/802.1ad tag are read before `bpf_xdp_adjust_head` and
//! written back at the new packet start, with the ethertype of what now
//! follows.
//!
//! Used by the balancer (encapsulation, ICMP replies) and by `decap`.

use aya_ebpf::programs::XdpContext;

use crate::{
    net::*,
    packet::{read_at, write_at},
};

/// Reads the Ethernet header and, when the L3 header starts behind one, the
/// VLAN tag: what must survive a move of the packet head.
#[inline(always)]
pub fn read_l2(ctx: &XdpContext, l3: usize) -> Option<(EthHdr, Option<VlanHdr>)> {
    let eth = read_at::<EthHdr>(ctx, 0)?;
    let vlan = if l3 > ETH_HLEN {
        Some(read_at::<VlanHdr>(ctx, ETH_HLEN)?)
    } else {
        None
    };
    Some((eth, vlan))
}

/// Writes `eth` (and the VLAN tag, if the packet had one) at the packet
/// start. `ethertype` (host order) names the L3 header behind: the tag
/// carries it if there is one, and Ethernet then keeps `eth.proto` (the
/// TPID); untagged, Ethernet carries it. Returns `None` if the packet is too
/// short.
///
/// Takes the whole Ethernet header, not its two MACs: a caller that keeps
/// them (`decap`) then copies the header as it is, where MACs passed apart
/// had LLVM split it into pieces (32 more instructions on decap's path).
#[inline(always)]
pub fn write_l2(
    ctx: &XdpContext,
    eth: EthHdr,
    vlan: Option<VlanHdr>,
    ethertype: u16,
) -> Option<()> {
    match vlan {
        Some(tag) => {
            write_at(ctx, 0, eth)?;
            write_at(
                ctx,
                ETH_HLEN,
                VlanHdr {
                    tci: tag.tci,
                    proto: be16(ethertype),
                },
            )
        }
        None => write_at(
            ctx,
            0,
            EthHdr {
                proto: be16(ethertype),
                ..eth
            },
        ),
    }
}
