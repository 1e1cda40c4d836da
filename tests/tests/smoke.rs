use balancer::dataplane::{Dataplane, LoadOptions};
use balancer_tests::{pkt::Flow, require_root, xdp};

#[test]
fn loads_and_passes_non_vip() {
    require_root();
    let opts = LoadOptions {
        max_vips: 4,
        max_flows: 1024,
        max_affinity: 1024,
        max_backends: 64,
        ..Default::default()
    };
    let dp = Dataplane::load(&opts).expect("load");
    let prog = dp.program().unwrap();
    let f = Flow::tcp("192.0.2.1", 1234, "198.51.100.1", 80).frame();
    let (a, out) = xdp::run(prog, &f).unwrap();
    assert_eq!(a, xdp::PASS);
    assert_eq!(out, f);
}
