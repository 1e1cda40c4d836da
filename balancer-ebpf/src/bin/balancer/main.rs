//! `balancer`: the gateway's XDP load balancer.
//!
//! For each packet:
//! 1. parse Ethernet, one 802.1Q tag, IPv4 (with options) or IPv6 (walking up to
//!    three hop-by-hop / routing / destination-options headers), and TCP or UDP
//!    ports;
//! 2. a one-bit prefilter on the destination address rejects non-VIP traffic
//!    after a single array read: it passes untouched;
//! 3. look up the VIP by (address, port, protocol), then (address, 0, protocol);
//! 4. look up the 5-tuple in the connection table; on a miss (or when the entry
//!    names a removed backend) place the connection through the VIP's live Maglev
//!    ring, or for affinity VIPs through the client-affinity table, and record it;
//! 5. encapsulate (IPIP, IP6IP6, 4in6, 6in4) or rewrite MACs only (L2 DSR) and
//!    `XDP_TX`; or answer ICMP "fragmentation needed" / "packet too big" when the
//!    tunnelled packet would not fit the MTU; or, for a new connection the VIP's
//!    tier sheds, drop it or answer its SYN with a RST.
//!
//! Fragments: IPv4 fragments and IPv6 packets with a fragment header that are
//! addressed to a VIP are dropped (counted as `drop_fragment`): without
//! reassembly the non-first fragments carry no ports, so they cannot follow
//! their first fragment to the same backend. Everything else passes untouched.
//! IPv6 atomic fragments (offset 0, no M flag) are whole packets and are
//! balanced normally.
#![no_std]
#![no_main]

mod encap;
mod flow;
mod icmp;
mod l2;
mod maps;
mod parse;
mod rst;
mod stats;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::{maps::STATS, parse::process};

#[xdp]
#[inline(always)]
pub fn balancer(ctx: XdpContext) -> u32 {
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a per-CPU value is only touched by this CPU, and XDP programs do
    // not nest on one CPU.
    let stats = unsafe { &mut *stats };
    process(&ctx, stats)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
