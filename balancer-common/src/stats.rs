//! Global per-CPU counters of the data path, one per pass or drop reason and per
//! path taken. They live in one `STATS` per-CPU array entry so a packet touches a
//! single map value and userspace reads them all with one lookup.

use bytemuck::{Pod, Zeroable};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident = $idx:literal => $label:literal, )*) => {
        /// Index of a global counter in [`GlobalStats::counters`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $( $(#[doc = $doc])* $name = $idx, )*
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// Stable snake_case name, used in metrics and the CLI.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }
        }
    };
}

counters! {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    PassNonIp = 0 => "pass_non_ip",
    /// Destination is not a VIP: passed.
    PassNotVip = 1 => "pass_not_vip",
    /// For a VIP address but neither TCP nor UDP (ICMP, ...): passed.
    PassNonL4 = 2 => "pass_non_l4",
    /// Headers could not be parsed in full (truncated, bad IHL): passed so the
    /// kernel counts and drops it as it always would.
    PassMalformed = 3 => "pass_malformed",
    /// IPv4 fragment or IPv6 fragment header not for a VIP: passed.
    PassFragment = 4 => "pass_fragment",
    /// IPv6 with an extension header we do not walk (ESP, AH, too many): passed.
    PassIpv6Ext = 5 => "pass_ipv6_ext",
    /// Fragment addressed to a VIP: dropped, since fragments cannot be steered
    /// consistently without reassembly.
    DropFragment = 6 => "drop_fragment",
    /// The VIP has no backend: dropped.
    DropNoBackend = 7 => "drop_no_backend",
    /// Growing or shrinking the packet failed: dropped.
    DropAdjustFailed = 8 => "drop_adjust_failed",
    /// Encapsulated IPv4 packet without DF larger than the MTU: dropped.
    DropTooBigNoDf = 9 => "drop_too_big_no_df",
    /// Internal inconsistency (a ring slot naming a missing backend): dropped.
    DropInternal = 10 => "drop_internal",
    /// Sent encapsulated in IPv4 (IPIP or 6in4).
    TxTunnelV4 = 11 => "tx_tunnel_v4",
    /// Sent encapsulated in IPv6 (IP6IP6 or 4in6).
    TxTunnelV6 = 12 => "tx_tunnel_v6",
    /// Sent with only the MAC addresses rewritten (L2 DSR).
    TxL2Dsr = 13 => "tx_l2dsr",
    /// Connection-table hit: an established flow.
    LruHit = 14 => "lru_hit",
    /// Connection-table miss: placed through the ring (or affinity table).
    LruMiss = 15 => "lru_miss",
    /// Miss for a TCP segment without SYN: a flow the table forgot (evicted, or
    /// started before this gateway saw it).
    LruMissTcpNonSyn = 16 => "lru_miss_tcp_non_syn",
    /// Connection-table entry pointed at a removed backend: rescheduled.
    LruStale = 17 => "lru_stale",
    /// Affinity VIP: client found in the affinity table.
    AffinityHit = 18 => "affinity_hit",
    /// Affinity VIP: no live affinity entry; placed by client hash.
    AffinityMiss = 19 => "affinity_miss",
    /// ICMP "fragmentation needed" sent back to an IPv4 client.
    IcmpTooBigV4 = 20 => "icmp_too_big_v4",
    /// ICMPv6 "packet too big" sent back to an IPv6 client.
    IcmpTooBigV6 = 21 => "icmp_too_big_v6",
    /// Decap program: tunnel header stripped, inner packet passed.
    DecapOk = 22 => "decap_ok",
    /// Decap program: tunnel packet whose inner destination is not a VIP: passed.
    DecapPassNotVip = 23 => "decap_pass_not_vip",
    /// Decap program: tunnel packet for a VIP from an outer source outside
    /// every allowed tunnel prefix (spoofed, or a gateway not configured):
    /// dropped.
    DropDecapSource = 24 => "drop_decap_source",
    /// A new connection to a VIP whose tier the control plane sheds
    /// ([`crate::VipMeta::shed_share`]): dropped before placement.
    DropShed = 25 => "drop_shed",
    /// A new TCP connection refused the same way on a VIP that answers
    /// refusals ([`crate::VIP_F_SHED_RST`]): a RST sent back from XDP.
    TxShedRst = 26 => "tx_shed_rst",
}

/// Number of global counters.
pub const COUNTER_COUNT: usize = 27;

/// Value of the `STATS` per-CPU array (one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct GlobalStats {
    /// Counters indexed by [`Counter`].
    pub counters: [u64; COUNTER_COUNT],
}

impl Default for GlobalStats {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl GlobalStats {
    /// Value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    /// Adds another set of counters (used to sum per-CPU values).
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.counters.iter_mut().zip(other.counters.iter()) {
            *a = a.wrapping_add(*b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dense() {
        assert_eq!(Counter::ALL.len(), COUNTER_COUNT);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
