//! Wire-format headers. Multi-byte fields stay in network byte order; compare them
//! against constants converted with [`be16`] so nothing is swapped per packet.

/// Converts a host-order constant to the value a network-order `u16` field holds.
#[inline(always)]
pub const fn be16(v: u16) -> u16 {
    v.to_be()
}

/// Converts a host-order constant to the value a network-order `u32` field holds.
#[inline(always)]
pub const fn be32(v: u32) -> u32 {
    v.to_be()
}

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// 802.1Q tag length.
pub const VLAN_HLEN: usize = 4;
/// IPv4 header length without options.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header length.
pub const IPV6_HLEN: usize = 40;
/// ICMP / ICMPv6 header length (type, code, checksum, 4 bytes of data).
pub const ICMP_HLEN: usize = 8;

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ outer) tag.
pub const ETH_P_8021AD: u16 = 0x88a8;

/// IP protocol: IPv6 hop-by-hop options.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IP protocol: ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol: IPv4 encapsulation (IPIP, 4in6).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol: TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol: UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol: IPv6 encapsulation (IP6IP6, 6in4).
pub const IPPROTO_IPV6: u8 = 41;
/// IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 destination options.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// IPv4 "don't fragment" flag in `frag_off` (host order).
pub const IP_DF: u16 = 0x4000;
/// IPv4 "more fragments" flag.
pub const IP_MF: u16 = 0x2000;
/// IPv4 fragment offset mask.
pub const IP_OFFSET: u16 = 0x1fff;

/// TCP SYN flag in the flags byte (offset 13 of the TCP header).
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;
/// TCP header length without options.
pub const TCP_HLEN: usize = 20;

/// TCP header without options.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// Sequence number, network order.
    pub seq: u32,
    /// Acknowledgment number, network order.
    pub ack: u32,
    /// Data offset (4 bits, in 32-bit words), reserved bits and flags,
    /// network order.
    pub off_flags: u16,
    /// Window, network order.
    pub window: u16,
    /// Checksum.
    pub check: u16,
    /// Urgent pointer.
    pub urg: u16,
}

const _: () = assert!(size_of::<TcpHdr>() == TCP_HLEN);

/// A MAC address as three 16-bit words in memory order. Typed as words rather
/// than bytes so LLVM copies it with three loads, not six.
pub type Mac = [u16; 3];

/// Reinterprets a MAC stored as bytes.
#[inline(always)]
pub fn mac_from_bytes(b: [u8; 6]) -> Mac {
    [
        u16::from_ne_bytes([b[0], b[1]]),
        u16::from_ne_bytes([b[2], b[3]]),
        u16::from_ne_bytes([b[4], b[5]]),
    ]
}

/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// EtherType, network order.
    pub proto: u16,
}

/// 802.1Q tag (after the outer EtherType 0x8100).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    /// Priority, DEI and VLAN id, network order.
    pub tci: u16,
    /// EtherType of the payload, network order.
    pub proto: u16,
}

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    /// Version (4) and header length in 32-bit words.
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length, network order.
    pub tot_len: u16,
    /// Identification.
    pub id: u16,
    /// Flags and fragment offset, network order.
    pub frag_off: u16,
    /// Time to live.
    pub ttl: u8,
    /// Payload protocol.
    pub proto: u8,
    /// Header checksum.
    pub check: u16,
    /// Source address, as on the wire.
    pub src: u32,
    /// Destination address, as on the wire.
    pub dst: u32,
}

/// IPv6 fixed header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label, network order.
    pub ver_tc_flow: u32,
    /// Payload length, network order.
    pub payload_len: u16,
    /// Next header.
    pub nexthdr: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address words, as on the wire.
    pub src: [u32; 4],
    /// Destination address words, as on the wire.
    pub dst: [u32; 4],
}

/// The first two bytes of an IPv6 extension header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6ExtHdr {
    /// Next header.
    pub nexthdr: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    pub len: u8,
}

/// IPv6 fragment header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6FragHdr {
    /// Next header.
    pub nexthdr: u8,
    /// Reserved.
    pub reserved: u8,
    /// Offset (13 bits, in 8-byte units), 2 reserved bits and the M flag, network order.
    pub frag_off: u16,
    /// Identification.
    pub id: u32,
}

/// ICMP / ICMPv6 header with its 4 bytes of type-specific data.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    /// Type.
    pub kind: u8,
    /// Code.
    pub code: u8,
    /// Checksum.
    pub check: u16,
    /// Type-specific data: for "fragmentation needed", 2 unused bytes then the
    /// next-hop MTU; for ICMPv6 "packet too big", the MTU as 32 bits.
    pub data: u32,
}
