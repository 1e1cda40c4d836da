//! Test packets, built with `etherparse`, and the packets the data path must
//! produce from them (encapsulated, MAC-rewritten, or ICMP "too big").

use std::net::IpAddr;

use balancer::{
    lb::DataplaneSettings,
    net::{addr_words, ports_word},
};
use balancer_common::hash::{flow_hash_v4, flow_hash_v6};
use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber,
    Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder, SingleVlanHeader, VlanId,
    icmpv4::DestUnreachableHeader,
};

/// MAC of the test client (or its router).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
/// MAC of the gateway's interface.
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Transport of a test flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP with SYN set.
    TcpSyn,
    /// TCP with only ACK set.
    TcpAck,
    /// UDP.
    Udp,
}

/// A client flow towards a VIP, able to build its packets.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Client address.
    pub src: IpAddr,
    /// Destination (VIP) address.
    pub dst: IpAddr,
    /// Client port.
    pub sport: u16,
    /// VIP port.
    pub dport: u16,
    /// Transport.
    pub l4: L4,
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// Payload bytes.
    pub payload: usize,
    /// IPv4 "don't fragment".
    pub df: bool,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
}

impl Flow {
    /// A TCP SYN from `src:sport` to `dst:dport`.
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            src: src.parse().expect("src address"),
            dst: dst.parse().expect("dst address"),
            sport,
            dport,
            l4: L4::TcpSyn,
            vlan: None,
            payload: 16,
            df: true,
            tos: 0,
        }
    }

    /// A UDP datagram.
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            l4: L4::Udp,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// The same flow with only ACK set (an established-flow packet).
    pub fn ack(mut self) -> Self {
        self.l4 = L4::TcpAck;
        self
    }

    /// Tagged with a VLAN id.
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    /// With `n` payload bytes.
    pub fn payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }

    /// With DF cleared (IPv4).
    pub fn no_df(mut self) -> Self {
        self.df = false;
        self
    }

    /// With another source port.
    pub fn sport(mut self, p: u16) -> Self {
        self.sport = p;
        self
    }

    /// IP protocol number.
    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Udp => 17,
            _ => 6,
        }
    }

    /// Offset of the IP header in the frame.
    pub fn l3(&self) -> usize {
        if self.vlan.is_some() { 18 } else { 14 }
    }

    /// The data path's placement hash of this flow.
    pub fn hash(&self) -> u32 {
        let ports = ports_word(self.sport, self.dport);
        let (s, d) = (addr_words(self.src), addr_words(self.dst));
        match self.src {
            IpAddr::V4(_) => flow_hash_v4(s[0], d[0], ports, self.proto()).ring(),
            IpAddr::V6(_) => flow_hash_v6(&s, &d, ports, self.proto()).ring(),
        }
    }

    /// The Ethernet frame of this flow's packet.
    pub fn frame(&self) -> Vec<u8> {
        let payload: Vec<u8> = (0..self.payload).map(|i| (i * 7 + 3) as u8).collect();
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC);
        let mut out = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {{
                let b = $ip;
                match self.l4 {
                    L4::Udp => b.udp(self.sport, self.dport).write(&mut out, &payload),
                    L4::TcpSyn => b
                        .tcp(self.sport, self.dport, 1000, 64240)
                        .syn()
                        .write(&mut out, &payload),
                    L4::TcpAck => b
                        .tcp(self.sport, self.dport, 1001, 64240)
                        .ack(5000)
                        .write(&mut out, &payload),
                }
                .expect("build packet")
            }};
        }
        match (self.src, self.dst, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => {
                let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).unwrap();
                ip.dont_fragment = self.df;
                ip.dscp = etherparse::IpDscp::try_new(self.tos >> 2).unwrap();
                ip.identification = 0x1234;
                finish!(eth.ip(etherparse::IpHeaders::Ipv4(ip, Default::default())))
            }
            (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => {
                let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).unwrap();
                ip.dont_fragment = self.df;
                ip.identification = 0x1234;
                finish!(
                    eth.single_vlan(VlanId::try_new(v).unwrap())
                        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                )
            }
            (IpAddr::V6(s), IpAddr::V6(d), None) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
            (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => finish!(
                eth.single_vlan(VlanId::try_new(v).unwrap())
                    .ipv6(s.octets(), d.octets(), 64)
            ),
            _ => panic!("mixed address families in one flow"),
        }
        out
    }
}

/// The tunnel source the data path must pick for `hash` (host bits of the
/// configured prefix filled from the hash, as words on the wire).
pub fn tunnel_src(settings: &DataplaneSettings, outer_v6: bool, hash: u32) -> IpAddr {
    if outer_v6 {
        let bits = (128 - settings.tunnel_src_v6_len as u32).min(32);
        let host = if bits == 0 {
            0
        } else {
            u32::MAX >> (32 - bits)
        };
        let mask = u32::from_ne_bytes(host.to_be_bytes());
        let mut w = addr_words(IpAddr::V6(settings.tunnel_src_v6));
        w[3] = (w[3] & !mask) | (hash & mask);
        balancer::net::words_addr(w, 6).unwrap()
    } else {
        let host = if settings.tunnel_src_v4_len == 32 {
            0
        } else {
            u32::MAX >> settings.tunnel_src_v4_len
        };
        let mask = u32::from_ne_bytes(host.to_be_bytes());
        let base = u32::from_ne_bytes(settings.tunnel_src_v4.octets());
        let w = (base & !mask) | (hash & mask);
        IpAddr::V4(w.to_ne_bytes().into())
    }
}

fn l2_header(frame: &[u8], l3: usize, dst: [u8; 6], src: [u8; 6], ethertype: EtherType) -> Vec<u8> {
    let mut out = Vec::new();
    if l3 == 18 {
        let tci = u16::from_be_bytes([frame[14], frame[15]]);
        Ethernet2Header {
            source: src,
            destination: dst,
            ether_type: EtherType::VLAN_TAGGED_FRAME,
        }
        .write(&mut out)
        .unwrap();
        SingleVlanHeader {
            pcp: etherparse::VlanPcp::try_new((tci >> 13) as u8).unwrap(),
            drop_eligible_indicator: tci & 0x1000 != 0,
            vlan_id: VlanId::try_new(tci & 0x0fff).unwrap(),
            ether_type: ethertype,
        }
        .write(&mut out)
        .unwrap();
    } else {
        Ethernet2Header {
            source: src,
            destination: dst,
            ether_type: ethertype,
        }
        .write(&mut out)
        .unwrap();
    }
    out
}

/// The frame the data path must send for `frame` tunnelled from `outer_src`
/// to backend `outer_dst` via next hop `next_hop`.
pub fn encapsulated(
    frame: &[u8],
    l3: usize,
    outer_src: IpAddr,
    outer_dst: IpAddr,
    next_hop: [u8; 6],
    hash: u32,
) -> Vec<u8> {
    let inner = &frame[l3..];
    let inner_v4 = inner[0] >> 4 == 4;
    let (inner_proto, tos, df) = if inner_v4 {
        (IpNumber::IPV4, inner[1], inner[6] & 0x40 != 0)
    } else {
        let tc = ((u16::from_be_bytes([inner[0], inner[1]]) >> 4) & 0xff) as u8;
        (IpNumber::IPV6, tc, true)
    };
    let mut out;
    match (outer_src, outer_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out = l2_header(frame, l3, next_hop, GW_MAC, EtherType::IPV4);
            let mut ip =
                Ipv4Header::new(inner.len() as u16, 64, inner_proto, s.octets(), d.octets())
                    .unwrap();
            ip.dont_fragment = df;
            ip.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
            ip.ecn = etherparse::IpEcn::try_new(tos & 3).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).unwrap();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out = l2_header(frame, l3, next_hop, GW_MAC, EtherType::IPV6);
            Ipv6Header {
                traffic_class: tos,
                flow_label: Ipv6FlowLabel::try_new(hash & 0xfffff).unwrap(),
                payload_length: inner.len() as u16,
                next_header: inner_proto,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            }
            .write(&mut out)
            .unwrap();
        }
        _ => panic!("outer source and destination families differ"),
    }
    out.extend_from_slice(inner);
    out
}

/// The frame the data path must send in L2 DSR mode.
pub fn l2_rewritten(frame: &[u8], next_hop: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&next_hop);
    out[6..12].copy_from_slice(&GW_MAC);
    out
}

/// The ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) reply the
/// data path must send back for `frame`, advertising `mtu`.
pub fn too_big_reply(frame: &[u8], l3: usize, mtu: u32) -> Vec<u8> {
    let ip = &frame[l3..];
    let mut out;
    if ip[0] >> 4 == 4 {
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let quote = &ip[..ihl + 8];
        let src: [u8; 4] = ip[16..20].try_into().unwrap();
        let dst: [u8; 4] = ip[12..16].try_into().unwrap();
        out = l2_header(frame, l3, CLIENT_MAC, GW_MAC, EtherType::IPV4);
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu as u16,
            }),
            quote,
        );
        let mut h =
            Ipv4Header::new((8 + quote.len()) as u16, 64, IpNumber::ICMP, src, dst).unwrap();
        h.dont_fragment = false;
        h.header_checksum = h.calc_header_checksum();
        h.write(&mut out).unwrap();
        icmp.write(&mut out).unwrap();
        out.extend_from_slice(quote);
    } else {
        let quote = &ip[..128];
        let src: [u8; 16] = ip[24..40].try_into().unwrap();
        let dst: [u8; 16] = ip[8..24].try_into().unwrap();
        out = l2_header(frame, l3, CLIENT_MAC, GW_MAC, EtherType::IPV6);
        let icmp =
            Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu }, src, dst, quote).unwrap();
        Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: (8 + quote.len()) as u16,
            next_header: IpNumber::IPV6_ICMP,
            hop_limit: 64,
            source: src,
            destination: dst,
        }
        .write(&mut out)
        .unwrap();
        icmp.write(&mut out).unwrap();
        out.extend_from_slice(quote);
    }
    out
}

/// The RST the data path must send back for the TCP SYN `frame` a shed VIP
/// refuses: from the VIP, sequence 0, acknowledging the SYN and its data,
/// with no IP or TCP options.
pub fn rst_reply(frame: &[u8], l3: usize) -> Vec<u8> {
    let ip = &frame[l3..];
    let (l4, data_end) = if ip[0] >> 4 == 4 {
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        (ihl, u16::from_be_bytes([ip[2], ip[3]]) as usize)
    } else {
        (40, 40 + u16::from_be_bytes([ip[4], ip[5]]) as usize)
    };
    let syn = &ip[l4..];
    let doff = ((syn[12] >> 4) as usize) * 4;
    let seq = u32::from_be_bytes(syn[4..8].try_into().unwrap());
    let data = (data_end - l4 - doff) as u32;
    let mut tcp = etherparse::TcpHeader::new(
        u16::from_be_bytes([syn[2], syn[3]]),
        u16::from_be_bytes([syn[0], syn[1]]),
        0,
        0,
    );
    tcp.rst = true;
    tcp.ack = true;
    tcp.acknowledgment_number = seq.wrapping_add(1).wrapping_add(data);
    let mut out;
    if ip[0] >> 4 == 4 {
        let src: [u8; 4] = ip[16..20].try_into().unwrap();
        let dst: [u8; 4] = ip[12..16].try_into().unwrap();
        out = l2_header(frame, l3, CLIENT_MAC, GW_MAC, EtherType::IPV4);
        let mut h = Ipv4Header::new(20, 64, IpNumber::TCP, src, dst).unwrap();
        h.dont_fragment = true;
        h.header_checksum = h.calc_header_checksum();
        tcp.checksum = tcp.calc_checksum_ipv4(&h, &[]).unwrap();
        h.write(&mut out).unwrap();
    } else {
        let src: [u8; 16] = ip[24..40].try_into().unwrap();
        let dst: [u8; 16] = ip[8..24].try_into().unwrap();
        out = l2_header(frame, l3, CLIENT_MAC, GW_MAC, EtherType::IPV6);
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: 20,
            next_header: IpNumber::TCP,
            hop_limit: 64,
            source: src,
            destination: dst,
        };
        tcp.checksum = tcp.calc_checksum_ipv6(&h, &[]).unwrap();
        h.write(&mut out).unwrap();
    }
    tcp.write(&mut out).unwrap();
    out
}

/// Wraps an inner IP packet in the tunnel header a balancer sends, for decap
/// tests: Ethernet to `dst_mac`, outer IP from `outer_src` to `outer_dst`.
pub fn tunnelled(
    inner_frame: &[u8],
    outer_src: IpAddr,
    outer_dst: IpAddr,
    dst_mac: [u8; 6],
) -> Vec<u8> {
    encapsulated(inner_frame, 14, outer_src, outer_dst, dst_mac, 0)
}
