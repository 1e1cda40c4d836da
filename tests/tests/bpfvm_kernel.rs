//! The interpreter against the kernel: the same loaded balancer, the same
//! kernel maps, the same frames through `bpfvm` (reading the maps with
//! `KernelMaps`) and through `BPF_PROG_TEST_RUN` must give the same action
//! and the same output frame. Needs root.

use std::net::IpAddr;

use balancer::{
    dataplane::{Dataplane, LoadOptions, objects::BALANCER},
    lb::{BackendSpec, DataplaneSettings, LoadBalancer, Mode, VipId, VipSpec},
    net::MacAddr,
};
use balancer_tests::{
    bpfvm::{KernelMaps, Program},
    pkt::Flow,
    require_root,
    xdp::{self, PASS, TX},
};

#[test]
fn interpreter_and_kernel_agree_on_the_same_maps() {
    require_root();
    let opts = LoadOptions {
        max_vips: 8,
        ..LoadOptions::default()
    };
    let dp = Dataplane::load(&opts).expect("loading the balancer");
    let programs = dp.programs;
    let mut lb = LoadBalancer::new(dp.maps, DataplaneSettings::default()).unwrap();
    let vip: VipId = "10.100.0.1:80/tcp".parse().unwrap();
    lb.add_vip(VipSpec {
        id: vip,
        mode: Mode::Tunnel,
        affinity_secs: None,
        refuse: Default::default(),
        tier: Default::default(),
    })
    .unwrap();
    for i in 0..4u8 {
        lb.add_backend(
            &vip,
            BackendSpec {
                addr: IpAddr::from([10, 0, 0, 10 + i]),
                weight: 1,
                mac: Some(MacAddr([2, 0xbb, 0, 0, 0, i])),
            },
        )
        .unwrap();
    }
    let kernel = programs.program().expect("balancer program");
    let mut maps = KernelMaps::of_program(&kernel.info().unwrap()).expect("kernel maps");
    let mut prog = Program::from_elf(BALANCER, "balancer").unwrap();
    maps.configure(&mut prog).unwrap();
    println!("kernel maps: {:?}", maps.names());

    let flow = Flow::tcp("192.0.2.10", 40000, "10.100.0.1", 80).payload(80);
    let cases = [
        (
            "non-VIP",
            Flow::tcp("192.0.2.10", 40000, "10.200.0.1", 80).frame(),
            PASS,
        ),
        // The interpreter runs first, so the kernel's run of the same frame is
        // a new flow too; the second pair finds the flow the kernel recorded.
        ("new flow", flow.frame(), TX),
        ("established flow", flow.clone().ack().frame(), TX),
        (
            "IPv6 non-VIP",
            Flow::udp("2001:db8::5", 1, "2001:db8::9", 53).frame(),
            PASS,
        ),
    ];
    for (name, frame, want) in cases {
        let before = lb.global_stats().unwrap();
        let run = prog.run_xdp(&frame, &mut maps).expect(name);
        assert_eq!(
            lb.global_stats().unwrap(),
            before,
            "{name}: the interpreter wrote"
        );
        let (action, out) = xdp::run(kernel, &frame).expect("test_run");
        println!(
            "{name}: {} instructions, helpers {:?}",
            run.insns, run.helper_calls
        );
        assert_eq!(action, want, "{name}: kernel");
        assert_eq!(run.action, action, "{name}: action");
        assert_eq!(run.packet, out, "{name}: output frame");
    }
}
