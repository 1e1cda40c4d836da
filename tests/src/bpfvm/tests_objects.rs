//! The real objects embedded in `balancer`: loading, and the paths that need
//! no map contents (non-IP traffic, non-VIP traffic).

use balancer::dataplane::objects::{BALANCER, BENCH, DECAP};
use balancer_common::{GlobalStats, VipFilter};

use super::{EmptyMaps, Program, VmError, XDP_PASS, XDP_TX};
use crate::pkt::{CLIENT_MAC, Flow, GW_MAC};

fn load(elf: &[u8], entry: &str) -> Program {
    assert!(
        !elf.is_empty(),
        "the eBPF objects are empty: build without BALANCER_EBPF_SKIP"
    );
    Program::from_elf(elf, entry).expect("load")
}

/// An ARP request from the client (ethertype 0x0806).
fn arp_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend([0xff; 6]);
    f.extend(CLIENT_MAC);
    f.extend([0x08, 0x06]);
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend(CLIENT_MAC);
    f.extend([10, 1, 0, 5]);
    f.extend([0; 6]);
    f.extend([10, 1, 0, 1]);
    f
}

/// The maps a run on the balancer needs when no VIP is configured: zeroed
/// statistics and an empty prefilter; every other lookup misses.
fn no_vips(map: &str, _key: &[u8]) -> Option<Vec<u8>> {
    match map {
        "STATS" => Some(vec![0; size_of::<GlobalStats>()]),
        "VIP_FILTER" => Some(vec![0; size_of::<VipFilter>()]),
        _ => None,
    }
}

#[test]
fn balancer_loads_with_its_maps_and_globals() {
    let mut p = load(BALANCER, "balancer");
    let mut names: Vec<&str> = p.maps().iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "AFFINITY",
            "BACKENDS",
            "BACKEND_STATS",
            "CONFIG",
            "FLOWS",
            "RINGS",
            "STATS",
            "VIPS",
            "VIP_FILTER",
            "VIP_STATS"
        ]
    );
    let stats = p.maps().iter().find(|m| m.name == "STATS").unwrap();
    assert_eq!(stats.value_size as usize, size_of::<GlobalStats>());
    assert_eq!((stats.map_type, stats.key_size), (6, 4));
    p.set_global("RING_SIZE", &65537u32.to_le_bytes()).unwrap();
    p.set_global("FLOW_SET_MASK", &1023u32.to_le_bytes())
        .unwrap();
    assert!(matches!(
        p.set_global("RING_SIZE", &[1, 2]),
        Err(VmError::GlobalSize {
            expected: 4,
            got: 2,
            ..
        })
    ));
    assert!(matches!(
        p.set_global("NOPE", &[0]),
        Err(VmError::NoGlobal(_))
    ));
    p.set_max_entries("FLOWS", 1 << 16).unwrap();
    assert!(matches!(
        p.set_max_entries("NOPE", 1),
        Err(VmError::NoMap(_))
    ));
    assert!(matches!(
        Program::from_elf(BALANCER, "nope"),
        Err(VmError::NoEntry(_))
    ));
}

#[test]
fn balancer_passes_arp() {
    let p = load(BALANCER, "balancer");
    let frame = arp_frame();
    let run = p.run_xdp(&frame, &mut no_vips).expect("run");
    println!(
        "balancer, ARP: {} instructions, helpers {:?}",
        run.insns, run.helper_calls
    );
    let (traced, at) = super::exec::trace_xdp(&p, &frame, &mut no_vips, 1000).unwrap();
    assert_eq!(traced, run);
    println!(
        "{}",
        at.iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(run.packet, frame);
    assert_eq!(run.helper_calls.get(&1), Some(&1), "one lookup: STATS");
    assert!(run.insns > 10, "{} instructions", run.insns);
    // Deterministic: the same frame costs the same.
    assert_eq!(p.run_xdp(&frame, &mut no_vips).unwrap().insns, run.insns);
    // Without STATS (the program's first lookup) it passes at once.
    let mut none = |_: &str, _: &[u8]| None;
    let mut p2 = p.clone();
    p2.set_max_entries("STATS", 0).unwrap();
    let early = p2.run_xdp(&frame, &mut none).unwrap();
    assert_eq!(early.action, XDP_PASS);
    assert!(early.insns < run.insns);
}

#[test]
fn balancer_passes_traffic_to_an_address_that_is_not_a_vip() {
    let p = load(BALANCER, "balancer");
    for flow in [
        Flow::tcp("10.1.0.5", 40000, "192.0.2.10", 80),
        Flow::udp("10.1.0.5", 40000, "192.0.2.10", 53).vlan(7),
        Flow::tcp("2001:db8::5", 40000, "2001:db8:1::10", 443),
    ] {
        let frame = flow.frame();
        let run = p.run_xdp(&frame, &mut no_vips).expect("run");
        println!("balancer, non-VIP {flow:?}: {} instructions", run.insns);
        assert_eq!(run.action, XDP_PASS, "{flow:?}");
        assert_eq!(run.packet, frame);
        // STATS and the prefilter only: no VIP lookup.
        assert_eq!(run.helper_calls.get(&1), Some(&2), "{flow:?}");
    }
}

#[test]
fn decap_passes_non_ip() {
    let p = load(DECAP, "decap");
    let names: Vec<&str> = p.maps().iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"DECAP_VIPS") && names.contains(&"DECAP_STATS"));
    let frame = arp_frame();
    let run = p.run_xdp(&frame, &mut EmptyMaps).expect("run");
    println!("decap, ARP: {} instructions", run.insns);
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(run.packet, frame);
}

#[test]
fn bench_fixtures() {
    let p = load(BENCH, "bench_pass");
    let run = p.run_xdp(&arp_frame(), &mut EmptyMaps).unwrap();
    assert_eq!(run.action, XDP_PASS);
    assert!(run.insns <= 3, "{}", run.insns);
    // bench_macswap swaps the MAC addresses and sends the frame back.
    let p = load(BENCH, "bench_macswap");
    let frame = Flow::tcp("10.1.0.5", 40000, "192.0.2.10", 80).frame();
    let run = p.run_xdp(&frame, &mut EmptyMaps).unwrap();
    assert_eq!(run.action, XDP_TX);
    assert_eq!(&run.packet[..6], &CLIENT_MAC);
    assert_eq!(&run.packet[6..12], &GW_MAC);
    assert_eq!(run.packet[12..], frame[12..]);
}
