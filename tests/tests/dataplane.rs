//! The XDP data path through `BPF_PROG_TEST_RUN`, as tables of
//! {description, input packet, expected action, expected output packet}.
//!
//! Expected outputs are built independently with `etherparse` (headers and
//! checksums); the backend a packet must reach is read from the ring the
//! control plane published, indexed with the shared flow hash.

use std::{net::IpAddr, thread, time::Duration};

use balancer::{
    dataplane::decap::Decap,
    dataplane::{Dataplane, LoadOptions, Programs},
    lb::{BackendSpec, DataplaneSettings, LoadBalancer, Mode, VipId, VipSpec},
    net::MacAddr,
};
use balancer_common::{
    Counter, GlobalStats,
    hash::{client_hash, ring_slot},
};
use balancer_tests::{
    patience,
    pkt::{self, Flow, GW_MAC},
    require_root,
    xdp::{self, DROP, PASS, TX, action_name},
};
use etherparse::PacketBuilder;

const M: u32 = 65_537;

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0xbb, 0, 0, 0, last])
}

fn vip(s: &str) -> VipId {
    s.parse().unwrap()
}

/// A loaded, unattached balancer with the VIPs every table uses.
struct Fixture {
    programs: Programs,
    lb: LoadBalancer,
}

impl Fixture {
    fn new() -> Self {
        require_root();
        let opts = LoadOptions {
            ring_size: M,
            max_vips: 16,
            max_backends: 256,
            max_flows: 65_536,
            max_affinity: 4096,
        };
        let dp = Dataplane::load(&opts).expect("load balancer");
        let mut lb = LoadBalancer::new(dp.maps, DataplaneSettings::default()).unwrap();
        let add = |lb: &mut LoadBalancer,
                   v: &str,
                   mode: Mode,
                   aff: Option<u32>,
                   backends: &[(&str, u8)]| {
            let id = vip(v);
            lb.add_vip(VipSpec {
                id,
                mode,
                affinity_secs: aff,
                refuse: Default::default(),
                tier: Default::default(),
            })
            .unwrap();
            for (addr, m) in backends {
                lb.add_backend(
                    &id,
                    BackendSpec {
                        addr: addr.parse().unwrap(),
                        weight: 1,
                        mac: Some(mac(*m)),
                    },
                )
                .unwrap();
            }
        };
        add(
            &mut lb,
            "10.100.0.1:80/tcp",
            Mode::Tunnel,
            None,
            &[("10.0.0.11", 0x11), ("10.0.0.12", 0x12)],
        );
        add(
            &mut lb,
            "10.100.0.1:53/udp",
            Mode::Tunnel,
            None,
            &[("10.0.0.13", 0x13)],
        );
        add(
            &mut lb,
            "10.100.0.2:*/tcp",
            Mode::Tunnel,
            None,
            &[("10.0.0.14", 0x14)],
        );
        add(
            &mut lb,
            "[2001:db8::100]:443/tcp",
            Mode::Tunnel,
            None,
            &[("2001:db8:1::11", 0x61), ("2001:db8:1::12", 0x62)],
        );
        add(
            &mut lb,
            "[2001:db8::100]:443/udp",
            Mode::Tunnel,
            None,
            &[("2001:db8:1::13", 0x63)],
        );
        add(
            &mut lb,
            "10.100.0.3:80/tcp",
            Mode::Tunnel,
            None,
            &[("2001:db8:1::21", 0x21)],
        );
        add(
            &mut lb,
            "[2001:db8::101]:80/tcp",
            Mode::Tunnel,
            None,
            &[("10.0.0.31", 0x31)],
        );
        add(
            &mut lb,
            "10.100.0.4:80/tcp",
            Mode::L2Dsr,
            None,
            &[("10.0.0.41", 0x41)],
        );
        add(
            &mut lb,
            "10.100.0.5:80/tcp",
            Mode::Tunnel,
            Some(60),
            &[
                ("10.0.0.51", 0x51),
                ("10.0.0.52", 0x52),
                ("10.0.0.53", 0x53),
            ],
        );
        add(&mut lb, "10.100.0.6:80/tcp", Mode::Tunnel, None, &[]);
        Self {
            programs: dp.programs,
            lb,
        }
    }

    fn run(&self, input: &[u8]) -> (u32, Vec<u8>) {
        xdp::run(self.programs.program().unwrap(), input).expect("test_run")
    }

    fn stats(&self) -> GlobalStats {
        self.lb.global_stats().unwrap()
    }

    /// The backend the ring assigns to `hash` on `vip`: (address, MAC).
    fn ring_backend(&self, v: &VipId, hash: u32) -> (IpAddr, [u8; 6]) {
        let ring = self.lb.ring(v).unwrap();
        let slot = ring[ring_slot(hash, M) as usize];
        let info = self.lb.vip(v).unwrap();
        let b = info
            .backends
            .iter()
            .find(|b| b.slot == slot)
            .expect("slot in pool");
        (b.addr, b.mac.unwrap().0)
    }

    /// The frame a flow must become when tunnelled to the ring's choice.
    fn expect_tunnel(&self, v: &VipId, f: &Flow) -> Vec<u8> {
        let (addr, m) = self.ring_backend(v, f.hash());
        self.expect_tunnel_to(f, addr, m)
    }

    fn expect_tunnel_to(&self, f: &Flow, backend: IpAddr, m: [u8; 6]) -> Vec<u8> {
        let src = pkt::tunnel_src(&self.lb.settings(), backend.is_ipv6(), f.hash());
        pkt::encapsulated(&f.frame(), f.l3(), src, backend, m, f.hash())
    }

    /// Which backend a tunnelled output went to.
    fn backend_of(out: &[u8]) -> IpAddr {
        let eth = u16::from_be_bytes([out[12], out[13]]);
        let (l3, et) = if eth == 0x8100 {
            (18, u16::from_be_bytes([out[16], out[17]]))
        } else {
            (14, eth)
        };
        if et == 0x0800 {
            IpAddr::V4(<[u8; 4]>::try_from(&out[l3 + 16..l3 + 20]).unwrap().into())
        } else {
            IpAddr::V6(<[u8; 16]>::try_from(&out[l3 + 24..l3 + 40]).unwrap().into())
        }
    }
}

/// One row of a table.
struct Case {
    desc: &'static str,
    input: Vec<u8>,
    action: u32,
    output: Vec<u8>,
    /// A counter that must rise by exactly one.
    counter: Counter,
}

fn check(fx: &Fixture, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let before = fx.stats();
        let (action, out) = fx.run(&c.input);
        let after = fx.stats();
        if action != c.action {
            failures.push(format!(
                "{}: action {} (expected {})",
                c.desc,
                action_name(action),
                action_name(c.action)
            ));
            continue;
        }
        if out != c.output {
            failures.push(format!(
                "{}: output differs\n  got  {:02x?}\n  want {:02x?}",
                c.desc, out, c.output
            ));
        }
        let delta = after.get(c.counter) - before.get(c.counter);
        if delta != 1 {
            failures.push(format!(
                "{}: counter {} rose by {delta}",
                c.desc,
                c.counter.name()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&pkt::CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0u8; 20]);
    f
}

fn icmp_echo_to(dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pkt::CLIENT_MAC, GW_MAC)
        .ipv4([192, 0, 2, 1], dst, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, &[0u8; 16])
        .unwrap();
    out
}

/// An IPv4 frame with its fragment field set.
fn v4_fragment(f: &Flow, frag_field: u16) -> Vec<u8> {
    let mut b = f.frame();
    let l3 = f.l3();
    b[l3 + 6..l3 + 8].copy_from_slice(&frag_field.to_be_bytes());
    fix_ipv4_checksum(&mut b, l3);
    b
}

fn fix_ipv4_checksum(b: &mut [u8], l3: usize) {
    let ihl = ((b[l3] & 0x0f) as usize) * 4;
    b[l3 + 10] = 0;
    b[l3 + 11] = 0;
    let mut sum = 0u32;
    for i in (0..ihl).step_by(2) {
        sum += u16::from_be_bytes([b[l3 + i], b[l3 + i + 1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    b[l3 + 10..l3 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Inserts an IPv6 extension header of `kind` (8 bytes) after the fixed header.
fn v6_with_ext(f: &Flow, kind: u8, body: [u8; 6]) -> Vec<u8> {
    let b = f.frame();
    let l3 = f.l3();
    let mut out = b[..l3 + 40].to_vec();
    let next = out[l3 + 6];
    out[l3 + 6] = kind;
    let plen = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]) + 8;
    out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    out.push(next);
    out.push(0); // length: 8 bytes in all
    out.extend_from_slice(&body);
    out.extend_from_slice(&b[l3 + 40..]);
    out
}

/// An IPv4 frame with 4 bytes of options (IHL 6).
fn v4_with_options(f: &Flow) -> Vec<u8> {
    let b = f.frame();
    let l3 = f.l3();
    let mut out = b[..l3 + 20].to_vec();
    out[l3] = 0x46;
    let tot = u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]) + 4;
    out[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x01, 0x01, 0x00]); // NOP NOP NOP EOL
    out.extend_from_slice(&b[l3 + 20..]);
    fix_ipv4_checksum(&mut out, l3);
    out
}

#[test]
fn forwarding_table() {
    let fx = Fixture::new();
    let a = vip("10.100.0.1:80/tcp");
    let au = vip("10.100.0.1:53/udp");
    let all = vip("10.100.0.2:*/tcp");
    let v6 = vip("[2001:db8::100]:443/tcp");
    let v6u = vip("[2001:db8::100]:443/udp");
    let v4in6 = vip("10.100.0.3:80/tcp");
    let v6in4 = vip("[2001:db8::101]:80/tcp");

    let syn = Flow::tcp("192.0.2.10", 40000, "10.100.0.1", 80);
    let ack = Flow::tcp("192.0.2.10", 40001, "10.100.0.1", 80).ack();
    let udp = Flow::udp("192.0.2.10", 5353, "10.100.0.1", 53);
    let vlan = Flow::tcp("192.0.2.10", 40002, "10.100.0.1", 80).vlan(100);
    let port_any = Flow::tcp("192.0.2.10", 40003, "10.100.0.2", 8443);
    let s6 = Flow::tcp("2001:db8:ff::10", 40000, "2001:db8::100", 443);
    let u6 = Flow::udp("2001:db8:ff::10", 40000, "2001:db8::100", 443);
    let vlan6 = Flow::tcp("2001:db8:ff::10", 40001, "2001:db8::100", 443).vlan(4000);
    let f4in6 = Flow::tcp("192.0.2.11", 40000, "10.100.0.3", 80);
    let f6in4 = Flow::tcp("2001:db8:ff::11", 40000, "2001:db8::101", 80);
    let l2 = Flow::tcp("192.0.2.12", 40000, "10.100.0.4", 80);
    let opts = Flow::tcp("192.0.2.13", 40000, "10.100.0.1", 80);
    let opts_frame = v4_with_options(&opts);
    let opts_expect = {
        let (addr, m) = fx.ring_backend(&a, opts.hash());
        let src = pkt::tunnel_src(&fx.lb.settings(), false, opts.hash());
        pkt::encapsulated(&opts_frame, 14, src, addr, m, opts.hash())
    };
    let hbh = Flow::tcp("2001:db8:ff::12", 40000, "2001:db8::100", 443);
    let hbh_frame = v6_with_ext(&hbh, 0, [1, 4, 0, 0, 0, 0]);
    let hbh_expect = {
        let (addr, m) = fx.ring_backend(&v6, hbh.hash());
        let src = pkt::tunnel_src(&fx.lb.settings(), true, hbh.hash());
        pkt::encapsulated(&hbh_frame, 14, src, addr, m, hbh.hash())
    };
    let atomic = Flow::tcp("2001:db8:ff::13", 40000, "2001:db8::100", 443);
    let atomic_frame = v6_with_ext(&atomic, 44, [0, 0, 0, 0, 0, 0]);
    let atomic_expect = {
        let (addr, m) = fx.ring_backend(&v6, atomic.hash());
        let src = pkt::tunnel_src(&fx.lb.settings(), true, atomic.hash());
        pkt::encapsulated(&atomic_frame, 14, src, addr, m, atomic.hash())
    };

    let tx = |desc, f: &Flow, v: &VipId, counter| Case {
        desc,
        input: f.frame(),
        action: TX,
        output: fx.expect_tunnel(v, f),
        counter,
    };
    let pass = |desc, input: Vec<u8>, counter| Case {
        desc,
        output: input.clone(),
        input,
        action: PASS,
        counter,
    };
    let drop = |desc, input: Vec<u8>, counter| Case {
        desc,
        output: input.clone(),
        input,
        action: DROP,
        counter,
    };

    let cases = vec![
        tx(
            "v4 TCP SYN: IPIP to the ring's backend",
            &syn,
            &a,
            Counter::TxTunnelV4,
        ),
        tx(
            "v4 TCP ACK of an unknown flow: placed, IPIP",
            &ack,
            &a,
            Counter::LruMissTcpNonSyn,
        ),
        tx("v4 UDP: IPIP", &udp, &au, Counter::TxTunnelV4),
        tx(
            "v4 TCP behind 802.1Q: tag kept",
            &vlan,
            &a,
            Counter::TxTunnelV4,
        ),
        tx(
            "all-ports VIP, port 8443",
            &port_any,
            &all,
            Counter::TxTunnelV4,
        ),
        tx("v6 TCP: IP6IP6", &s6, &v6, Counter::TxTunnelV6),
        tx("v6 UDP: IP6IP6", &u6, &v6u, Counter::TxTunnelV6),
        tx("v6 TCP behind 802.1Q", &vlan6, &v6, Counter::TxTunnelV6),
        tx(
            "v4 VIP, v6 backend: 4in6",
            &f4in6,
            &v4in6,
            Counter::TxTunnelV6,
        ),
        tx(
            "v6 VIP, v4 backend: 6in4",
            &f6in4,
            &v6in4,
            Counter::TxTunnelV4,
        ),
        Case {
            desc: "v4 with IP options: whole packet tunnelled",
            input: opts_frame,
            action: TX,
            output: opts_expect,
            counter: Counter::TxTunnelV4,
        },
        Case {
            desc: "v6 with a hop-by-hop header: walked, tunnelled",
            input: hbh_frame,
            action: TX,
            output: hbh_expect,
            counter: Counter::TxTunnelV6,
        },
        Case {
            desc: "v6 atomic fragment (offset 0, no M): balanced",
            input: atomic_frame,
            action: TX,
            output: atomic_expect,
            counter: Counter::TxTunnelV6,
        },
        Case {
            desc: "L2 DSR: only MACs rewritten",
            input: l2.frame(),
            action: TX,
            output: pkt::l2_rewritten(&l2.frame(), mac(0x41).0),
            counter: Counter::TxL2Dsr,
        },
        pass(
            "v4 not a VIP address",
            Flow::tcp("192.0.2.10", 40000, "10.100.0.99", 80).frame(),
            Counter::PassNotVip,
        ),
        pass(
            "VIP address, other port",
            Flow::tcp("192.0.2.10", 40000, "10.100.0.1", 81).frame(),
            Counter::PassNotVip,
        ),
        pass(
            "VIP address and port, other protocol",
            Flow::udp("192.0.2.10", 40000, "10.100.0.1", 80).frame(),
            Counter::PassNotVip,
        ),
        pass(
            "v6 not a VIP address",
            Flow::tcp("2001:db8:ff::10", 40000, "2001:db8::999", 443).frame(),
            Counter::PassNotVip,
        ),
        pass("ARP", arp_frame(), Counter::PassNonIp),
        pass(
            "ICMP echo to a VIP address",
            icmp_echo_to([10, 100, 0, 1]),
            Counter::PassNonL4,
        ),
        drop(
            "VIP with an empty pool",
            Flow::tcp("192.0.2.10", 40000, "10.100.0.6", 80).frame(),
            Counter::DropNoBackend,
        ),
        drop(
            "v4 first fragment (MF) to a VIP",
            v4_fragment(&syn, 0x2000),
            Counter::DropFragment,
        ),
        drop(
            "v4 later fragment to an all-ports VIP",
            v4_fragment(&port_any, 0x0010),
            Counter::DropFragment,
        ),
        pass(
            "v4 later fragment to a port VIP: cannot be claimed, passed",
            v4_fragment(&syn, 0x0010),
            Counter::PassFragment,
        ),
        pass(
            "v4 fragment to a non-VIP",
            v4_fragment(&Flow::tcp("192.0.2.10", 1, "10.100.0.99", 80), 0x2000),
            Counter::PassNotVip,
        ),
        drop(
            "v6 fragment header (offset 0, M) to a VIP",
            v6_with_ext(&s6, 44, [0, 1, 0, 0, 0, 1]),
            Counter::DropFragment,
        ),
        pass(
            "v6 with ESP: not walked",
            v6_with_ext(&s6, 50, [0; 6]),
            Counter::PassIpv6Ext,
        ),
    ];
    check(&fx, &cases);
}

#[test]
fn too_big_table() {
    let fx = Fixture::new();
    let a = vip("10.100.0.1:80/tcp");
    let v6 = vip("[2001:db8::100]:443/tcp");
    let v4in6 = vip("10.100.0.3:80/tcp");
    // MTU 1500: an IPIP packet may carry 1480 bytes of inner packet.
    let fits = Flow::tcp("192.0.2.20", 40000, "10.100.0.1", 80).payload(1480 - 40);
    let big = Flow::tcp("192.0.2.20", 40001, "10.100.0.1", 80).payload(1481 - 40);
    let big_vlan = big.clone().vlan(7);
    let big_no_df = big.clone().no_df();
    let fits6 = Flow::tcp("2001:db8:ff::20", 40000, "2001:db8::100", 443).payload(1460 - 60);
    let big6 = Flow::tcp("2001:db8:ff::20", 40001, "2001:db8::100", 443).payload(1461 - 60);
    let big4in6 = Flow::tcp("192.0.2.21", 40000, "10.100.0.3", 80).payload(1461 - 40);

    let cases = vec![
        Case {
            desc: "v4 exactly at MTU after IPIP",
            input: fits.frame(),
            action: TX,
            output: fx.expect_tunnel(&a, &fits),
            counter: Counter::TxTunnelV4,
        },
        Case {
            desc: "v4 one byte over, DF: ICMP fragmentation needed, MTU 1480",
            input: big.frame(),
            action: TX,
            output: pkt::too_big_reply(&big.frame(), 14, 1480),
            counter: Counter::IcmpTooBigV4,
        },
        Case {
            desc: "v4 over, DF, 802.1Q: reply keeps the tag",
            input: big_vlan.frame(),
            action: TX,
            output: pkt::too_big_reply(&big_vlan.frame(), 18, 1480),
            counter: Counter::IcmpTooBigV4,
        },
        Case {
            desc: "v4 over without DF: dropped (XDP cannot fragment)",
            input: big_no_df.frame(),
            action: DROP,
            output: big_no_df.frame(),
            counter: Counter::DropTooBigNoDf,
        },
        Case {
            desc: "v6 exactly at MTU after IP6IP6",
            input: fits6.frame(),
            action: TX,
            output: fx.expect_tunnel(&v6, &fits6),
            counter: Counter::TxTunnelV6,
        },
        Case {
            desc: "v6 one byte over: packet too big, MTU 1460",
            input: big6.frame(),
            action: TX,
            output: pkt::too_big_reply(&big6.frame(), 14, 1460),
            counter: Counter::IcmpTooBigV6,
        },
        Case {
            desc: "v4 over a v6 tunnel (4in6): MTU 1460 advertised",
            input: big4in6.frame(),
            action: TX,
            output: pkt::too_big_reply(&big4in6.frame(), 14, 1460),
            counter: Counter::IcmpTooBigV4,
        },
    ];
    let _ = v4in6;
    check(&fx, &cases);
}

/// A flow to `v` (by source port search) whose ring slot goes to a backend
/// other than `avoid`.
fn flow_avoiding(fx: &Fixture, v: &VipId, base: &Flow, avoid: IpAddr) -> Flow {
    (1000..u16::MAX)
        .map(|p| base.clone().sport(p))
        .find(|f| fx.ring_backend(v, f.hash()).0 != avoid)
        .unwrap()
}

#[test]
fn established_flows_survive_ring_change_drain_and_go_on_removal() {
    let mut fx = Fixture::new();
    let a = vip("10.100.0.1:80/tcp");
    let b11: IpAddr = "10.0.0.11".parse().unwrap();
    // A connection placed on 10.0.0.11.
    let conn = (1000..u16::MAX)
        .map(|p| Flow::tcp("192.0.2.30", p, "10.100.0.1", 80).sport(p))
        .find(|f| fx.ring_backend(&a, f.hash()).0 == b11)
        .unwrap();
    let (act, out) = fx.run(&conn.frame());
    assert_eq!((act, Fixture::backend_of(&out)), (TX, b11));

    // Ring change: a heavy new backend takes most slots, including this
    // flow's slot.
    fx.lb
        .add_backend(
            &a,
            BackendSpec {
                addr: "10.0.0.15".parse().unwrap(),
                weight: 1000,
                mac: Some(mac(0x15)),
            },
        )
        .unwrap();
    assert_ne!(
        fx.ring_backend(&a, conn.hash()).0,
        b11,
        "slot must have moved"
    );
    let est = conn.clone().ack();
    let before = fx.stats();
    let (act, out) = fx.run(&est.frame());
    assert_eq!(act, TX);
    assert_eq!(
        out,
        fx.expect_tunnel_to(&est, b11, mac(0x11).0),
        "LRU hit keeps the backend"
    );
    assert_eq!(
        fx.stats().get(Counter::LruHit) - before.get(Counter::LruHit),
        1
    );

    // Drain: established flow stays; new flows never land on it.
    fx.lb.drain(&a, b11).unwrap();
    let (_, out) = fx.run(&est.frame());
    assert_eq!(
        Fixture::backend_of(&out),
        b11,
        "drained backend keeps its flows"
    );
    for p in 0..300u16 {
        let f = Flow::tcp("192.0.2.31", 20000 + p, "10.100.0.1", 80);
        let (_, out) = fx.run(&f.frame());
        assert_ne!(
            Fixture::backend_of(&out),
            b11,
            "new flow on a drained backend"
        );
    }

    // Removal: the flow is rescheduled through the ring.
    fx.lb.remove_backend(&a, b11).unwrap();
    let before = fx.stats();
    let (act, out) = fx.run(&est.frame());
    assert_eq!(act, TX);
    assert_eq!(
        out,
        fx.expect_tunnel(&a, &est),
        "removed backend loses its flows"
    );
    assert_eq!(
        fx.stats().get(Counter::LruStale) - before.get(Counter::LruStale),
        1
    );
    assert!(
        fx.lb.maps().verify().unwrap().is_empty(),
        "shadows match the kernel"
    );
}

#[test]
fn a_saturated_sheddable_vip_refuses_new_connections_and_none_established() {
    let mut fx = Fixture::new();
    let a = vip("10.100.0.1:80/tcp");
    // A connection placed while the VIP admits everyone.
    let conn = Flow::tcp("192.0.2.40", 30000, "10.100.0.1", 80);
    let (act, out) = fx.run(&conn.frame());
    assert_eq!(act, TX);
    let placed = Fixture::backend_of(&out);
    fx.lb
        .set_tier(&a, balancer::route::tier::Tier::Sheddable)
        .unwrap();
    fx.lb.set_refusal(&a, balancer::lb::Refusal::Drop).unwrap();
    assert_eq!(
        fx.lb.shed_for_load(&a, 1.0).unwrap(),
        balancer_common::SHED_ALL,
        "a saturated sheddable VIP is shed fully"
    );
    let before = fx.stats();
    for p in 0..50u16 {
        let f = Flow::tcp("192.0.2.41", 31000 + p, "10.100.0.1", 80);
        assert_eq!(fx.run(&f.frame()).0, DROP, "new connection {p}");
    }
    assert_eq!(
        fx.stats().get(Counter::DropShed) - before.get(Counter::DropShed),
        50
    );
    // Its established connection goes on, to the same backend.
    let (act, out) = fx.run(&conn.clone().ack().frame());
    assert_eq!((act, Fixture::backend_of(&out)), (TX, placed));
    // A VIP of another tier is not touched.
    let udp = Flow::udp("192.0.2.41", 31000, "10.100.0.1", 53);
    assert_eq!(fx.run(&udp.frame()).0, TX, "the standard UDP VIP");
    // Half saturated: admitted again.
    assert_eq!(fx.lb.shed_for_load(&a, 0.5).unwrap(), 0);
    let f = Flow::tcp("192.0.2.42", 32000, "10.100.0.1", 80);
    assert_eq!(fx.run(&f.frame()).0, TX);
}

#[test]
fn a_vip_that_answers_refusals_sends_a_rst_for_each_refused_syn() {
    let mut fx = Fixture::new();
    let a = vip("10.100.0.1:80/tcp");
    let b = vip("[2001:db8::100]:443/tcp");
    let conn = Flow::tcp("192.0.2.50", 30000, "10.100.0.1", 80);
    assert_eq!(fx.run(&conn.frame()).0, TX, "placed before shedding");
    for v in [&a, &b] {
        fx.lb.set_refusal(v, balancer::lb::Refusal::Rst).unwrap();
        fx.lb.set_shed(v, balancer_common::SHED_ALL).unwrap();
    }
    // {description, refused SYN}
    let table = [
        (
            "IPv4, 16 bytes of data",
            Flow::tcp("192.0.2.51", 31000, "10.100.0.1", 80),
        ),
        (
            "IPv4, no data, VLAN",
            Flow::tcp("192.0.2.52", 31001, "10.100.0.1", 80)
                .payload(0)
                .vlan(7),
        ),
        (
            "IPv6",
            Flow::tcp("2001:db8:1::5", 31002, "2001:db8::100", 443),
        ),
        (
            "IPv6, VLAN",
            Flow::tcp("2001:db8:1::6", 31003, "2001:db8::100", 443).vlan(9),
        ),
    ];
    for (what, f) in &table {
        let before = fx.stats();
        let frame = f.frame();
        let (act, out) = fx.run(&frame);
        assert_eq!(act, TX, "{what}");
        assert_eq!(
            out,
            balancer_tests::pkt::rst_reply(&frame, f.l3()),
            "{what}"
        );
        let after = fx.stats();
        assert_eq!(
            (
                after.get(Counter::TxShedRst) - before.get(Counter::TxShedRst),
                after.get(Counter::DropShed) - before.get(Counter::DropShed)
            ),
            (1, 0),
            "{what}"
        );
    }
    // The established connection still goes to its backend, and UDP on a
    // refusing VIP is dropped (no RST for it).
    assert_eq!(fx.run(&conn.clone().ack().frame()).0, TX);
    let udp = vip("10.100.0.1:53/udp");
    fx.lb.set_refusal(&udp, balancer::lb::Refusal::Rst).unwrap();
    fx.lb.set_shed(&udp, balancer_common::SHED_ALL).unwrap();
    let (act, _) = fx.run(&Flow::udp("192.0.2.53", 31004, "10.100.0.1", 53).frame());
    assert_eq!(act, DROP, "UDP is dropped");
    // Back to dropping.
    fx.lb.set_refusal(&a, balancer::lb::Refusal::Drop).unwrap();
    let f = Flow::tcp("192.0.2.54", 31005, "10.100.0.1", 80);
    assert_eq!(fx.run(&f.frame()).0, DROP);
}

#[test]
fn reused_backend_slot_does_not_inherit_flows() {
    let mut fx = Fixture::new();
    let a = vip("10.100.0.1:80/tcp");
    let b12: IpAddr = "10.0.0.12".parse().unwrap();
    let conn = flow_avoiding(
        &fx,
        &a,
        &Flow::tcp("192.0.2.40", 1, "10.100.0.1", 80),
        "10.0.0.11".parse().unwrap(),
    );
    let (_, out) = fx.run(&conn.frame());
    assert_eq!(Fixture::backend_of(&out), b12);
    let slot = fx
        .lb
        .vip(&a)
        .unwrap()
        .backends
        .iter()
        .find(|b| b.addr == b12)
        .unwrap()
        .slot;
    fx.lb.remove_backend(&a, b12).unwrap();
    // Another VIP's new backend takes the freed slot.
    fx.lb
        .add_backend(
            &vip("10.100.0.6:80/tcp"),
            BackendSpec {
                addr: "10.0.0.99".parse().unwrap(),
                weight: 1,
                mac: Some(mac(0x99)),
            },
        )
        .unwrap();
    let info = fx.lb.vip(&vip("10.100.0.6:80/tcp")).unwrap();
    assert_eq!(info.backends[0].slot, slot, "slot reused");
    let (_, out) = fx.run(&conn.clone().ack().frame());
    assert_eq!(
        Fixture::backend_of(&out),
        "10.0.0.11".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn affinity_pins_a_client_across_ring_changes() {
    let mut fx = Fixture::new();
    let aff = vip("10.100.0.5:80/tcp");
    let client = "192.0.2.50";
    let first = Flow::tcp(client, 1000, "10.100.0.5", 80);
    let (act, out) = fx.run(&first.frame());
    assert_eq!(act, TX);
    let pinned = Fixture::backend_of(&out);
    let words = balancer::net::addr_words(client.parse().unwrap());
    assert_eq!(
        pinned,
        fx.ring_backend(&aff, client_hash(&words)).0,
        "placed by client hash"
    );
    for p in 1001..1100 {
        let (_, out) = fx.run(&Flow::tcp(client, p, "10.100.0.5", 80).frame());
        assert_eq!(Fixture::backend_of(&out), pinned, "port {p}");
    }
    // A heavy backend joins: the client's hash slot moves, its affinity holds.
    fx.lb
        .add_backend(
            &aff,
            BackendSpec {
                addr: "10.0.0.54".parse().unwrap(),
                weight: 1000,
                mac: Some(mac(0x54)),
            },
        )
        .unwrap();
    assert_ne!(fx.ring_backend(&aff, client_hash(&words)).0, pinned);
    let before = fx.stats();
    for p in 2000..2050 {
        let (_, out) = fx.run(&Flow::tcp(client, p, "10.100.0.5", 80).frame());
        assert_eq!(
            Fixture::backend_of(&out),
            pinned,
            "after ring change, port {p}"
        );
    }
    assert_eq!(
        fx.stats().get(Counter::AffinityHit) - before.get(Counter::AffinityHit),
        50
    );
}

#[test]
fn affinity_entries_expire() {
    let mut fx = Fixture::new();
    let v = vip("10.100.0.7:80/tcp");
    // 1 s, longer on slow machines: the second connection must come within it.
    let ttl = patience(Duration::from_secs(1)).as_secs_f64().ceil() as u32;
    fx.lb
        .add_vip(VipSpec {
            id: v,
            mode: Mode::Tunnel,
            affinity_secs: Some(ttl),
            refuse: Default::default(),
            tier: Default::default(),
        })
        .unwrap();
    for (a, m) in [("10.0.0.71", 0x71), ("10.0.0.72", 0x72)] {
        fx.lb
            .add_backend(
                &v,
                BackendSpec {
                    addr: a.parse().unwrap(),
                    weight: 1,
                    mac: Some(mac(m)),
                },
            )
            .unwrap();
    }
    let client = "192.0.2.60";
    let words = balancer::net::addr_words(client.parse().unwrap());
    let (_, out) = fx.run(&Flow::tcp(client, 1, "10.100.0.7", 80).frame());
    let pinned = Fixture::backend_of(&out);
    // Make the ring send this client elsewhere.
    fx.lb.set_weight(&v, pinned, 0).unwrap();
    let (_, out) = fx.run(&Flow::tcp(client, 2, "10.100.0.7", 80).frame());
    assert_eq!(Fixture::backend_of(&out), pinned, "entry still live");
    thread::sleep(Duration::from_secs(ttl.into()) + Duration::from_millis(100));
    let (_, out) = fx.run(&Flow::tcp(client, 3, "10.100.0.7", 80).frame());
    assert_eq!(
        Fixture::backend_of(&out),
        fx.ring_backend(&v, client_hash(&words)).0,
        "expired entry: placed by the ring again"
    );
    assert_ne!(Fixture::backend_of(&out), pinned);
}

#[test]
fn ring_flips_generation_only_on_change() {
    let mut fx = Fixture::new();
    let a = vip("10.100.0.1:80/tcp");
    let g0 = fx.lb.vip_meta(&a).unwrap().ring_gen;
    fx.lb
        .set_weight(&a, "10.0.0.11".parse().unwrap(), 1)
        .unwrap(); // unchanged
    assert_eq!(
        fx.lb.vip_meta(&a).unwrap().ring_gen,
        g0,
        "no-op must not flip"
    );
    fx.lb
        .set_weight(&a, "10.0.0.11".parse().unwrap(), 3)
        .unwrap();
    assert_eq!(fx.lb.vip_meta(&a).unwrap().ring_gen, g0 ^ 1);
    assert!(fx.lb.maps().verify().unwrap().is_empty());
}

/// Frames every truncation test cuts.
fn base_frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "v4 tcp",
            Flow::tcp("192.0.2.10", 40000, "10.100.0.1", 80).frame(),
        ),
        (
            "v4 udp",
            Flow::udp("192.0.2.10", 5353, "10.100.0.1", 53).frame(),
        ),
        (
            "v4 vlan",
            Flow::tcp("192.0.2.10", 40000, "10.100.0.1", 80)
                .vlan(5)
                .frame(),
        ),
        (
            "v4 options",
            v4_with_options(&Flow::tcp("192.0.2.13", 40000, "10.100.0.1", 80)),
        ),
        (
            "v6 tcp",
            Flow::tcp("2001:db8:ff::10", 40000, "2001:db8::100", 443).frame(),
        ),
        (
            "v6 vlan",
            Flow::tcp("2001:db8:ff::10", 40000, "2001:db8::100", 443)
                .vlan(9)
                .frame(),
        ),
        (
            "v6 hop-by-hop",
            v6_with_ext(
                &Flow::tcp("2001:db8:ff::12", 40000, "2001:db8::100", 443),
                0,
                [1, 4, 0, 0, 0, 0],
            ),
        ),
        (
            "v6 udp",
            Flow::udp("2001:db8:ff::10", 40000, "2001:db8::100", 443).frame(),
        ),
        (
            "l2 dsr",
            Flow::tcp("192.0.2.12", 40000, "10.100.0.4", 80).frame(),
        ),
    ]
}

#[test]
fn every_truncation_passes_untouched_or_drops() {
    let fx = Fixture::new();
    let prog = fx.programs.program().unwrap();
    let mut checked = 0;
    for (name, frame) in base_frames() {
        // Shorter than Ethernet never reaches XDP: the kernel refuses it.
        assert!(
            xdp::run(prog, &frame[..13]).is_err(),
            "{name}: 13-byte frame accepted"
        );
        for len in 14..frame.len() {
            let cut = &frame[..len];
            let (a, out) = fx.run(cut);
            match a {
                PASS => assert_eq!(out, cut, "{name} cut at {len}: PASS must not modify"),
                DROP => {}
                other => panic!("{name} cut at {len}: action {}", action_name(other)),
            }
            checked += 1;
        }
    }
    assert!(checked > 500);
}

#[test]
fn random_and_mutated_packets() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let fx = Fixture::new();
    let prog = fx.programs.program().unwrap();
    let bases = base_frames();
    let mut rng = StdRng::seed_from_u64(0x6261_6c61);
    let mut seen = [0u64; 5];
    const N: usize = 100_000;
    for i in 0..N {
        let pkt: Vec<u8> = if i % 10 == 0 {
            // Pure noise, 14 to 200 bytes.
            let len = rng.random_range(14..200);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut p = bases[i % bases.len()].1.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(12..p.len().min(80));
                p[at] = rng.random();
            }
            if rng.random_bool(0.3) {
                let len = rng.random_range(14..=p.len());
                p.truncate(len);
            }
            if rng.random_bool(0.1) {
                p.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>()));
            }
            p
        };
        let (a, out) = xdp::run(prog, &pkt).unwrap_or_else(|e| panic!("packet {i}: {e}"));
        assert!(
            matches!(a, PASS | DROP | TX),
            "packet {i}: action {} for {pkt:02x?}",
            action_name(a)
        );
        if a == PASS {
            assert_eq!(out, pkt, "packet {i}: PASS modified the packet");
        }
        if a == TX
            && let Err(e) = tx_output_consistent(&pkt, &out)
        {
            panic!("packet {i}: {e}\n  in  {pkt:02x?}\n  out {out:02x?}");
        }
        seen[a as usize] += 1;
    }
    assert_eq!(seen.iter().sum::<u64>(), N as u64);
    assert!(
        seen[TX as usize] > 1000 && seen[PASS as usize] > 1000,
        "{seen:?}"
    );
}

/// Decap rows: tunnelled packets for configured VIPs lose their outer header.
#[test]
fn decap_table() {
    require_root();
    let mut d = Decap::load().expect("load decap");
    d.add_vip("10.100.0.1".parse().unwrap()).unwrap();
    d.add_vip("2001:db8::100".parse().unwrap()).unwrap();
    // The gateways' default tunnel source prefixes.
    d.allow_source("172.16.0.0".parse().unwrap(), 16).unwrap();
    d.allow_source("fd00:ba1a::".parse().unwrap(), 96).unwrap();
    let prog = d.program().unwrap();
    let backend_mac = [0x02, 0xbb, 0, 0, 0, 0x11];
    let inner4 = Flow::tcp("192.0.2.10", 40000, "10.100.0.1", 80);
    let inner6 = Flow::tcp("2001:db8:ff::10", 40000, "2001:db8::100", 443);
    let other = Flow::tcp("192.0.2.10", 40000, "10.100.0.9", 80);
    let gw4: IpAddr = "172.16.1.2".parse().unwrap();
    let gw6: IpAddr = "fd00:ba1a::1".parse().unwrap();
    let be4: IpAddr = "10.0.0.11".parse().unwrap();
    let be6: IpAddr = "2001:db8:1::11".parse().unwrap();
    // After decap the frame keeps the tunnel's Ethernet addresses.
    let stripped = |inner: &Flow| {
        let mut f = inner.frame();
        f[0..6].copy_from_slice(&backend_mac);
        f[6..12].copy_from_slice(&GW_MAC);
        f
    };
    let vlan_tunnelled = {
        let mut t = pkt::tunnelled(&inner4.frame(), gw4, be4, backend_mac);
        // Insert a VLAN tag after the MACs.
        t.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        t
    };
    let vlan_stripped = {
        let mut f = stripped(&inner4);
        f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        f
    };
    let rows: Vec<(&str, Vec<u8>, u32, Vec<u8>)> = vec![
        (
            "IPIP to a VIP: stripped",
            pkt::tunnelled(&inner4.frame(), gw4, be4, backend_mac),
            PASS,
            stripped(&inner4),
        ),
        (
            "IP6IP6 to a VIP: stripped",
            pkt::tunnelled(&inner6.frame(), gw6, be6, backend_mac),
            PASS,
            stripped(&inner6),
        ),
        (
            "4in6: stripped",
            pkt::tunnelled(&inner4.frame(), gw6, be6, backend_mac),
            PASS,
            stripped(&inner4),
        ),
        (
            "6in4: stripped",
            pkt::tunnelled(&inner6.frame(), gw4, be4, backend_mac),
            PASS,
            stripped(&inner6),
        ),
        (
            "IPIP behind 802.1Q: tag kept",
            vlan_tunnelled,
            PASS,
            vlan_stripped,
        ),
        {
            let t = pkt::tunnelled(&other.frame(), gw4, be4, backend_mac);
            ("IPIP, inner not a VIP: untouched", t.clone(), PASS, t)
        },
        ("plain TCP: untouched", inner4.frame(), PASS, inner4.frame()),
        {
            let spoofed: IpAddr = "198.51.100.9".parse().unwrap();
            let t = pkt::tunnelled(&inner4.frame(), spoofed, be4, backend_mac);
            (
                "IPIP from outside the tunnel prefixes: dropped",
                t.clone(),
                DROP,
                t,
            )
        },
        {
            let spoofed: IpAddr = "fd00:ba1b::1".parse().unwrap();
            let t = pkt::tunnelled(&inner6.frame(), spoofed, be6, backend_mac);
            (
                "IP6IP6 from outside the tunnel prefixes: dropped",
                t.clone(),
                DROP,
                t,
            )
        },
    ];
    for (desc, input, action, output) in &rows {
        let (a, out) = xdp::run(prog, input).unwrap();
        assert_eq!(a, *action, "{desc}");
        assert_eq!(&out, output, "{desc}");
    }
    // Truncations of a tunnelled packet: untouched passes only.
    let t = pkt::tunnelled(&inner6.frame(), gw4, be4, backend_mac);
    for len in 14..t.len() {
        let (a, out) = xdp::run(prog, &t[..len]).unwrap();
        if len < 14 + 20 + 40 {
            assert_eq!((a, out.as_slice()), (PASS, &t[..len]), "cut at {len}");
        } else {
            assert_eq!(a, PASS, "cut at {len}");
        }
    }
    assert_eq!(
        d.stats().unwrap().get(Counter::DecapOk) as usize,
        5 + (t.len() - (14 + 20 + 40))
    );
    assert_eq!(d.stats().unwrap().get(Counter::DropDecapSource), 2);

    // With no source allowed, nothing is decapsulated.
    let mut closed = Decap::load().expect("load decap");
    closed.add_vip("10.100.0.1".parse().unwrap()).unwrap();
    let t = pkt::tunnelled(&inner4.frame(), gw4, be4, backend_mac);
    let (a, _) = xdp::run(closed.program().unwrap(), &t).unwrap();
    assert_eq!(a, DROP, "decap with no allowed source prefix");
    // Prefixes with host bits, or too long, are refused.
    assert!(
        closed
            .allow_source("172.16.0.1".parse().unwrap(), 16)
            .is_err()
    );
    assert!(
        closed
            .allow_source("172.16.0.0".parse().unwrap(), 33)
            .is_err()
    );
}

/// The connection table replaces the least recently used entry of a full set:
/// a connection that keeps sending survives newer ones landing in its set.
#[test]
fn full_set_evicts_least_recently_used() {
    use balancer_common::{FLOW_WAYS, hash::flow_hash_v4};
    let fx = Fixture::new();
    let mask = fx.lb.maps().sizes.flow_sets - 1;
    let set_of = |f: &Flow| {
        let w = |a| balancer::net::addr_words(a)[0];
        flow_hash_v4(
            w(f.src),
            w(f.dst),
            balancer::net::ports_word(f.sport, f.dport),
            6,
        )
        .ring()
            & mask
    };
    let base = Flow::tcp("192.0.2.70", 1, "10.100.0.1", 80);
    let target = set_of(&base);
    let same_set: Vec<Flow> = (1..=250u8)
        .flat_map(|host| {
            (2..u16::MAX).map(move |p| Flow::tcp(&format!("192.0.{host}.70"), p, "10.100.0.1", 80))
        })
        .filter(|f| set_of(f) == target)
        .take(FLOW_WAYS + 1)
        .collect();
    assert_eq!(same_set.len(), FLOW_WAYS + 1);
    // Fill the set.
    for f in &same_set[..FLOW_WAYS] {
        fx.run(&f.frame());
    }
    // Let the coarse clock (jiffies >> 4) tick, then keep the first one busy.
    thread::sleep(Duration::from_millis(300));
    let keep = same_set[0].clone().ack();
    let before = fx.stats();
    fx.run(&keep.frame());
    assert_eq!(
        fx.stats().get(Counter::LruHit) - before.get(Counter::LruHit),
        1
    );
    // One more connection in the full set evicts an idle one, not `keep`.
    fx.run(&same_set[FLOW_WAYS].frame());
    let before = fx.stats();
    fx.run(&keep.frame());
    assert_eq!(
        fx.stats().get(Counter::LruHit) - before.get(Counter::LruHit),
        1,
        "busy entry evicted"
    );
    let before = fx.stats();
    for f in &same_set[1..FLOW_WAYS] {
        fx.run(&f.clone().ack().frame());
    }
    assert_eq!(
        fx.stats().get(Counter::LruMiss) - before.get(Counter::LruMiss),
        1,
        "exactly one idle entry was replaced"
    );
    let (live, _) = fx.lb.maps().flows.occupancy();
    assert!(live >= FLOW_WAYS as u64);
}

/// The VIP table is an array the control plane lays out as a hash table
/// (open addressing): with the table full to its VIP limit, after removals
/// and re-adds that reuse removed slots, every live VIP must still be found
/// by the data path and every removed one must be gone. Ports vary so that
/// several VIPs share an address and home slots collide.
#[test]
fn vip_table_finds_every_vip_through_removals_and_reuse() {
    require_root();
    let opts = LoadOptions {
        ring_size: 251,
        max_vips: 64,
        max_backends: 128,
        max_flows: 4096,
        max_affinity: 256,
    };
    let dp = Dataplane::load(&opts).expect("load balancer");
    let prog = dp.programs;
    let mut lb = LoadBalancer::new(dp.maps, DataplaneSettings::default()).unwrap();
    // Four addresses per /24, two ports each: unique for every i.
    let id = |i: u32| {
        vip(&format!(
            "10.77.{}.{}:{}/tcp",
            i / 8,
            i % 8 / 2 + 1,
            80 + i % 2
        ))
    };
    let add = |lb: &mut LoadBalancer, v: VipId, i: u32| {
        lb.add_vip(VipSpec {
            id: v,
            mode: Mode::L2Dsr,
            affinity_secs: None,
            refuse: Default::default(),
            tier: Default::default(),
        })
        .unwrap();
        lb.add_backend(
            &v,
            BackendSpec {
                addr: IpAddr::from([10, 0, 1, (i % 200) as u8 + 1]),
                weight: 1,
                mac: Some(mac((i % 200) as u8 + 1)),
            },
        )
        .unwrap();
    };
    let syn_to = |v: &VipId| match v.addr {
        IpAddr::V4(a) => Flow::tcp("192.0.2.7", 5555, &a.to_string(), v.port).frame(),
        IpAddr::V6(_) => unreachable!("v4 VIPs only"),
    };
    let check = |lb: &LoadBalancer, live: &[VipId], gone: &[VipId], when: &str| {
        let p = prog.program().unwrap();
        let mut bad = Vec::new();
        for v in live {
            let (a, _) = xdp::run(p, &syn_to(v)).unwrap();
            if a != TX {
                bad.push(format!("{v} live but {}", action_name(a)));
            }
        }
        for v in gone {
            let (a, _) = xdp::run(p, &syn_to(v)).unwrap();
            if a != PASS {
                bad.push(format!("{v} removed but {}", action_name(a)));
            }
        }
        bad.extend(lb.maps().verify().unwrap());
        assert!(bad.is_empty(), "{when}:\n{}", bad.join("\n"));
    };

    let first: Vec<VipId> = (0..64).map(id).collect();
    for (i, v) in first.iter().enumerate() {
        add(&mut lb, *v, i as u32);
    }
    check(&lb, &first, &[], "64 VIPs, the table's limit");
    assert!(
        lb.add_vip(VipSpec {
            id: vip("10.78.0.1:80/tcp"),
            mode: Mode::L2Dsr,
            affinity_secs: None,
            refuse: Default::default(),
            tier: Default::default(),
        })
        .is_err(),
        "a 65th VIP must be refused"
    );

    let (gone, kept): (Vec<VipId>, Vec<VipId>) = first
        .iter()
        .partition(|v| v.port % 2 == 0 || v.addr.to_string().ends_with(".1"));
    for v in &gone {
        lb.remove_vip(v).unwrap();
    }
    check(&lb, &kept, &gone, "after removing some");

    let again: Vec<VipId> = (100..100 + gone.len() as u32).map(id).collect();
    for (i, v) in again.iter().enumerate() {
        add(&mut lb, *v, 64 + i as u32);
    }
    let live: Vec<VipId> = kept.iter().chain(&again).copied().collect();
    let still_gone: Vec<VipId> = gone.iter().filter(|v| !live.contains(v)).copied().collect();
    check(
        &lb,
        &live,
        &still_gone,
        "after re-adding into removed slots",
    );
}

/// Issue 12, item 13: frames that cannot be parsed in full pass untouched,
/// and what is forwarded is exactly the IP packet.
#[test]
fn malformed_and_padded_frames_table() {
    let fx = Fixture::new();
    let a = vip("10.100.0.1:80/tcp");
    let f = Flow::tcp("10.1.0.5", 40000, "10.100.0.1", 80).payload(40);
    let l3 = f.l3();
    // IPv4 total lengths too short for the TCP header; its bytes follow in
    // what is then Ethernet padding.
    let short_ip = |tot: u16| {
        let mut b = f.frame();
        b[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
        fix_ipv4_checksum(&mut b, l3);
        b
    };
    // A jumbogram: payload length 0, the real length in a hop-by-hop option.
    let f6 = Flow::tcp("2001:db8::5", 40000, "2001:db8::100", 443).payload(40);
    let mut jumbo = v6_with_ext(&f6, 0, [0xc2, 4, 0, 0, 0, 68]);
    jumbo[f6.l3() + 4..f6.l3() + 6].copy_from_slice(&[0, 0]);
    // An extension header claiming 1,024 bytes: the walk used to wrap its
    // offset back into the packet instead of stopping.
    let mut long_ext = v6_with_ext(&f6, 0, [1, 0, 0, 0, 0, 0]);
    long_ext[f6.l3() + 41] = 127;
    // The IP packet followed by 300 bytes that are not part of it.
    let mut padded = f.frame();
    padded.extend(std::iter::repeat_n(0xa5, 300));
    let (b, m) = fx.ring_backend(&a, f.hash());

    check(
        &fx,
        &[
            Case {
                desc: "IPv4 total length 20: no room for the ports",
                input: short_ip(20),
                action: PASS,
                output: short_ip(20),
                counter: Counter::PassMalformed,
            },
            Case {
                desc: "IPv4 total length 23: half a TCP header",
                input: short_ip(23),
                action: PASS,
                output: short_ip(23),
                counter: Counter::PassMalformed,
            },
            Case {
                desc: "IPv6 jumbogram (payload length 0)",
                input: jumbo.clone(),
                action: PASS,
                output: jumbo,
                counter: Counter::PassMalformed,
            },
            Case {
                desc: "IPv6 extension header past the parse limit",
                input: long_ext.clone(),
                action: PASS,
                output: long_ext,
                counter: Counter::PassMalformed,
            },
            Case {
                desc: "bytes after the IP packet are trimmed, not tunnelled",
                input: padded,
                action: TX,
                output: fx.expect_tunnel_to(&f, b, m),
                counter: Counter::TxTunnelV4,
            },
        ],
    );
}

/// Issue 12, item 13: an outer IPv4 header that routers may fragment (DF
/// clear, as the client's packet) carries an identification that changes
/// from packet to packet; it was always 0.
#[test]
fn fragmentable_tunnel_packets_get_distinct_ids() {
    let fx = Fixture::new();
    let f = Flow::tcp("10.1.0.5", 40001, "10.100.0.1", 80)
        .payload(40)
        .no_df();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (a, out) = fx.run(&f.frame());
        assert_eq!(a, TX, "{}", action_name(a));
        let frag = u16::from_be_bytes([out[14 + 6], out[14 + 7]]);
        assert_eq!(
            frag & 0x4000,
            0,
            "outer DF must stay clear, as the client's"
        );
        ids.push(u16::from_be_bytes([out[14 + 4], out[14 + 5]]));
    }
    assert!(
        ids.windows(2).all(|w| w[0] != w[1]),
        "outer ids repeat: {ids:?}"
    );
}

/// Checks a TX output of the random test: its outer lengths match its bytes,
/// and the packet inside (tunnel) or the packet itself (L2 DSR) is exactly the
/// input's IP packet. ICMP replies are checked by their own tables.
fn tx_output_consistent(input: &[u8], out: &[u8]) -> Result<(), String> {
    let l3_of = |b: &[u8]| match u16::from_be_bytes([b[12], b[13]]) {
        0x8100 | 0x88a8 => (18, u16::from_be_bytes([b[16], b[17]])),
        et => (14, et),
    };
    let ip_len = |b: &[u8], l3: usize, et: u16| -> usize {
        if et == 0x0800 {
            u16::from_be_bytes([b[l3 + 2], b[l3 + 3]]) as usize
        } else {
            u16::from_be_bytes([b[l3 + 4], b[l3 + 5]]) as usize + 40
        }
    };
    let (il3, iet) = l3_of(input);
    let inner_want = &input[il3..il3 + ip_len(input, il3, iet)];
    let (ol3, oet) = l3_of(out);
    let outer_len = ip_len(out, ol3, oet);
    if outer_len != out.len() - ol3 {
        return Err(format!(
            "outer length {outer_len} but {} bytes follow L2",
            out.len() - ol3
        ));
    }
    let (proto, hlen) = if oet == 0x0800 {
        (out[ol3 + 9], (out[ol3] & 0x0f) as usize * 4)
    } else {
        (out[ol3 + 6], 40)
    };
    let inner = match proto {
        1 | 58 => return Ok(()),
        4 | 41 => &out[ol3 + hlen..],
        _ => &out[ol3..],
    };
    if inner != inner_want {
        return Err("the forwarded packet is not the input's IP packet".into());
    }
    Ok(())
}
