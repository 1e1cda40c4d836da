//! Layer 2: MAC rewrite for L2 DSR, and keeping Ethernet/VLAN across a move of
//! the packet head.

use crate::stats::*;
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{Backend, Counter, GlobalStats};
use balancer_ebpf::{
    net::*,
    packet::{read_at, write_at},
};

/// L2 DSR: new destination MAC, our MAC as source.
#[inline(always)]
pub(crate) fn l2_dsr(ctx: &XdpContext, stats: &mut GlobalStats, backend: &Backend) -> u32 {
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return drop(stats, Counter::DropInternal);
    };
    let new = EthHdr {
        dst: mac_from_bytes(backend.next_hop_mac),
        src: eth.dst,
        proto: eth.proto,
    };
    if write_at(ctx, 0, new).is_none() {
        return drop(stats, Counter::DropInternal);
    }
    bump(stats, Counter::TxL2Dsr);
    xdp_action::XDP_TX
}

/// Reads the Ethernet header and, when the L3 header starts behind one, the
/// VLAN tag: what must survive a move of the packet head.
#[inline(always)]
pub(crate) fn read_l2(ctx: &XdpContext, l3: usize) -> Option<(EthHdr, Option<VlanHdr>)> {
    let eth = read_at::<EthHdr>(ctx, 0)?;
    let vlan = if l3 > ETH_HLEN {
        Some(read_at::<VlanHdr>(ctx, ETH_HLEN)?)
    } else {
        None
    };
    Some((eth, vlan))
}

/// Writes Ethernet (and the VLAN tag, if the packet had one) at the packet start.
#[inline(always)]
pub(crate) fn write_l2(
    ctx: &XdpContext,
    old: &EthHdr,
    vlan: Option<VlanHdr>,
    dst: Mac,
    src: Mac,
    ethertype: u16,
) -> Option<()> {
    match vlan {
        Some(tag) => {
            write_at(
                ctx,
                0,
                EthHdr {
                    dst,
                    src,
                    proto: old.proto,
                },
            )?;
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
                dst,
                src,
                proto: be16(ethertype),
            },
        ),
    }
}
