//! Backends that strip the tunnel with the kernel's own ipip / ip6_tunnel
//! drivers instead of the `decap` program. Runs in the VM suite only (`cargo
//! xtask vm-test`): the host kernel has neither module.

use balancer_tests::{
    loadgen,
    netns::ip_in,
    require_root, scaled,
    testbed::{DecapMode, Spec, Testbed},
};

#[test]
fn kernel_ipip_backends_answer_through_the_balancer() {
    require_root();
    let mut spec = Spec::unique(
        1,
        2,
        balancer_tests::testbed_bin(env!("CARGO_BIN_EXE_testbed")),
    );
    spec.decap = DecapMode::Kernel;
    let mut tb = Testbed::up(spec).expect("testbed with kernel decap");
    let cfg = tb.config(&tb.vip_toml(&[1, 1], None));
    tb.start_daemon(&cfg).unwrap();
    let n = scaled(2000);
    let r = loadgen::short_connections(&tb.clients[0].ns, tb.vip(), n, 8).unwrap();
    assert_eq!(r.ok, n, "{:?}", r.errors);
    assert_eq!(r.per_backend.len(), 2, "{:?}", r.per_backend);
    for b in &tb.backends {
        // No XDP on the backend: the kernel's tunl0 did the work.
        let link = ip_in(&b.ns, &["-d", "link", "show", "eth0"]).unwrap();
        assert!(!String::from_utf8_lossy(&link.stdout).contains("prog/xdp"));
        let stats = ip_in(&b.ns, &["-s", "link", "show", "tunl0"]).unwrap();
        let text = String::from_utf8_lossy(&stats.stdout);
        let rx_packets: u64 = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("RX:"))
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            rx_packets > 0,
            "{}: tunl0 received nothing:\n{text}",
            b.name
        );
    }
}
