//! The balancer's VIP paths on fixture maps: a VIP with one backend, a new
//! flow placed through the ring and sent out, compared byte for byte with the
//! frame the integration suites expect from the kernel.

use std::net::IpAddr;

use balancer::{dataplane::objects::BALANCER, lb::DataplaneSettings, net::addr_words};
use balancer_common::{
    BACKEND_F_ACTIVE, Backend, DEFAULT_MAX_VIPS, FAMILY_V4, FAMILY_V6, ForwardMode, PROTO_TCP,
    PROTO_UDP, VipFilter, VipKey, VipMeta, VipSlot,
    hash::{vip_key_tail, vip_slot_hash},
    vip_table_slots,
};

use super::{Program, XDP_DROP, XDP_PASS, XDP_TX, exec};
use crate::pkt::{self, Flow};

/// The bytes of a `#[repr(C)]` plain-old-data map value.
fn bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: only used with balancer_common's map types, which are `Pod`
    // (no padding, no pointers), so every byte is initialized.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// Maps holding one VIP (`flow`'s destination, port and protocol) in `mode`
/// whose whole ring points at backend 0, `backend` via `mac`. Everything
/// else is empty: arrays read as zeros (so every ring slot is backend 0, the
/// connection table misses and every other VIP slot is empty), hash lookups
/// miss. The VIP sits in its home slot of the default-sized table.
struct OneVip {
    slot_index: Vec<u8>,
    slot: Vec<u8>,
    filter: Vec<u8>,
    backend: Vec<u8>,
    config: Vec<u8>,
}

impl OneVip {
    fn new(flow: &Flow, mode: ForwardMode, backend: IpAddr, mac: [u8; 6]) -> Self {
        let family = |a: IpAddr| if a.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
        let addr = addr_words(flow.dst);
        let key = VipKey {
            addr,
            port: flow.dport.to_be(),
            proto: if flow.proto() == 6 {
                PROTO_TCP
            } else {
                PROTO_UDP
            },
            family: family(flow.dst),
        };
        let meta = VipMeta {
            index: 0,
            flags: 0,
            mode: mode as u8,
            ring_gen: 0,
            affinity_timeout_secs: 0,
            shed_share: 0,
            _pad: [0; 2],
        };
        let mut filter = VipFilter::default();
        filter.insert(&addr, family(flow.dst));
        let b = Backend {
            addr: addr_words(backend),
            next_hop_mac: mac,
            family: family(backend),
            flags: BACKEND_F_ACTIVE,
            epoch: 1,
        };
        let mask = vip_table_slots(DEFAULT_MAX_VIPS) - 1;
        let home = vip_slot_hash(&key.addr, vip_key_tail(key.port, key.proto, key.family)) & mask;
        OneVip {
            slot_index: home.to_le_bytes().to_vec(),
            slot: bytes(&VipSlot { key, meta }),
            filter: bytes(&filter),
            backend: bytes(&b),
            config: bytes(&DataplaneSettings::default().validate().unwrap()),
        }
    }

    /// The same VIP refusing `share` (65536ths) of its new connections.
    fn shed(mut self, share: u16) -> Self {
        let at = std::mem::offset_of!(VipSlot, meta) + std::mem::offset_of!(VipMeta, shed_share);
        self.slot[at..at + 2].copy_from_slice(&share.to_ne_bytes());
        self
    }

    fn lookup(&self, map: &str, key: &[u8]) -> Option<Vec<u8>> {
        match map {
            "VIPS" if key == self.slot_index => Some(self.slot.clone()),
            "VIP_FILTER" => Some(self.filter.clone()),
            "BACKENDS" if key == 0u32.to_le_bytes() => Some(self.backend.clone()),
            "CONFIG" => Some(self.config.clone()),
            _ => None,
        }
    }
}

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb7];

#[test]
fn new_flows_to_a_vip_leave_as_the_kernel_sends_them() {
    let p = Program::from_elf(BALANCER, "balancer").expect("load");
    let v4 = Flow::tcp("10.1.0.5", 40000, "10.100.0.1", 80);
    let v6 = Flow::udp("2001:db8::5", 40000, "2001:db8:100::1", 53);
    let b4: IpAddr = "10.200.0.7".parse().unwrap();
    let b6: IpAddr = "2001:db8:200::7".parse().unwrap();
    let settings = DataplaneSettings::default();
    let tunnel = |f: &Flow, b: IpAddr| {
        let src = pkt::tunnel_src(&settings, b.is_ipv6(), f.hash());
        pkt::encapsulated(&f.frame(), f.l3(), src, b, MAC, f.hash())
    };
    // DataplaneSettings::default() has an MTU of 1500: one byte over after the outer
    // header gets "fragmentation needed" / "packet too big" back.
    let big4 = Flow::tcp("10.1.0.5", 40001, "10.100.0.1", 80).payload(1481 - 40);
    let big6 = Flow::tcp("2001:db8::5", 40001, "2001:db8:100::1", 443).payload(1461 - 60);
    let cases = [
        (
            "v4 too big",
            big4.clone(),
            ForwardMode::Tunnel,
            b4,
            pkt::too_big_reply(&big4.frame(), 14, 1480),
        ),
        (
            "v6 too big",
            big6.clone(),
            ForwardMode::Tunnel,
            b6,
            pkt::too_big_reply(&big6.frame(), 14, 1460),
        ),
        ("IPIP", v4.clone(), ForwardMode::Tunnel, b4, tunnel(&v4, b4)),
        ("4in6", v4.clone(), ForwardMode::Tunnel, b6, tunnel(&v4, b6)),
        (
            "IP6IP6",
            v6.clone(),
            ForwardMode::Tunnel,
            b6,
            tunnel(&v6, b6),
        ),
        (
            "VLAN IPIP",
            v4.clone().vlan(7),
            ForwardMode::Tunnel,
            b4,
            tunnel(&v4.clone().vlan(7), b4),
        ),
        (
            "L2 DSR",
            v4.clone(),
            ForwardMode::L2Dsr,
            b4,
            pkt::l2_rewritten(&v4.frame(), MAC),
        ),
    ];
    for (name, flow, mode, backend, want) in cases {
        let maps = OneVip::new(&flow, mode, backend, MAC);
        let mut backend_fn = |m: &str, k: &[u8]| maps.lookup(m, k);
        let run = p.run_xdp(&flow.frame(), &mut backend_fn).expect(name);
        println!(
            "balancer, new flow, {name}: {} instructions, helpers {:?}",
            run.insns, run.helper_calls
        );
        assert_eq!(run.action, XDP_TX, "{name}");
        assert_eq!(run.packet, want, "{name}");
    }
}

#[test]
fn a_later_fragment_is_claimed_only_by_an_all_ports_vip() {
    let p = Program::from_elf(BALANCER, "balancer").expect("load");
    let flow = Flow::tcp("10.1.0.5", 40000, "10.100.0.1", 80);
    let mut frame = flow.frame();
    // Fragment offset 1 (8 bytes), DF clear; the program does not check the
    // IPv4 header checksum.
    frame[14 + 6..14 + 8].copy_from_slice(&[0, 1]);
    let backend = "10.200.0.7".parse().unwrap();
    for (vip_port, want) in [(80, XDP_PASS), (0, XDP_DROP)] {
        let vip = Flow::tcp("10.1.0.5", 40000, "10.100.0.1", vip_port);
        let maps = OneVip::new(&vip, ForwardMode::Tunnel, backend, MAC);
        let mut backend_fn = |m: &str, k: &[u8]| maps.lookup(m, k);
        let (run, trace) = exec::trace_xdp(&p, &frame, &mut backend_fn, 100_000).expect("run");
        println!(
            "balancer, v4 later fragment, VIP port {vip_port}: {} instructions",
            run.insns
        );
        assert_eq!(run.action, want, "VIP port {vip_port}");
        assert_eq!(run.packet, frame);
        assert_eq!(run.insns as usize, trace.len());
    }
}

#[test]
fn a_shed_vip_refuses_new_connections_and_no_established_one() {
    let p = Program::from_elf(BALANCER, "balancer").expect("load");
    let syn = Flow::tcp("10.1.0.5", 40000, "10.100.0.1", 80);
    let udp = Flow::udp("10.1.0.5", 40000, "10.100.0.1", 80);
    let backend: IpAddr = "10.200.0.7".parse().unwrap();
    let settings = DataplaneSettings::default();
    let sent = |f: &Flow| {
        let src = pkt::tunnel_src(&settings, false, f.hash());
        pkt::encapsulated(&f.frame(), f.l3(), src, backend, MAC, f.hash())
    };
    let all = balancer_common::SHED_ALL;
    // (what, packet, the VIP's flow, refused share, action, frame sent)
    type Case<'a> = (&'a str, Flow, Flow, u16, u32, Option<Vec<u8>>);
    let cases: [Case; 5] = [
        (
            "a SYN, not shed",
            syn.clone(),
            syn.clone(),
            0,
            XDP_TX,
            Some(sent(&syn)),
        ),
        (
            "a SYN, shed fully: dropped",
            syn.clone(),
            syn.clone(),
            all,
            XDP_DROP,
            None,
        ),
        (
            "a segment of an established connection whose table entry is gone, shed fully: forwarded",
            syn.clone().ack(),
            syn.clone(),
            all,
            XDP_TX,
            Some(sent(&syn.clone().ack())),
        ),
        (
            "a new UDP flow, shed fully: dropped",
            udp.clone(),
            udp.clone(),
            all,
            XDP_DROP,
            None,
        ),
        (
            "a new UDP flow, not shed",
            udp.clone(),
            udp.clone(),
            0,
            XDP_TX,
            Some(sent(&udp)),
        ),
    ];
    for (what, flow, vip, share, action, want) in cases {
        let maps = OneVip::new(&vip, ForwardMode::Tunnel, backend, MAC).shed(share);
        let mut backend_fn = |m: &str, k: &[u8]| maps.lookup(m, k);
        let run = p.run_xdp(&flow.frame(), &mut backend_fn).expect(what);
        assert_eq!(run.action, action, "{what}");
        if let Some(w) = want {
            assert_eq!(run.packet, w, "{what}");
        }
    }
}
