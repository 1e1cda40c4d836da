//! Layer 2: MAC rewrite for L2 DSR. Keeping Ethernet/VLAN across a move of
//! the packet head is shared with `decap`: see [`balancer_ebpf::l2`].

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
