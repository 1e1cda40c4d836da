//! Attaching, pinning, adopting and detaching the data plane on real
//! interfaces (in a throwaway network namespace).

use std::path::PathBuf;

use balancer::{
    dataplane::{AttachMode, Dataplane, DataplaneError, LoadOptions, default_pin_dir},
    lb::{BackendSpec, DataplaneSettings, LoadBalancer, Mode, VipId, VipSpec},
    net::MacAddr,
};
use balancer_tests::{
    netns::{self, ip, ip_in},
    require_root,
};

/// A namespace with a veth pair and a bridge device, removed on drop.
struct Scratch {
    ns: String,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        require_root();
        let ns = format!("balattach{}{tag}", std::process::id() % 100_000);
        let _ = ip(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns]).unwrap();
        ip_in(
            &ns,
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        )
        .unwrap();
        ip_in(&ns, &["link", "add", "d0", "type", "bridge"]).unwrap();
        for dev in ["v0", "v1", "d0"] {
            ip_in(&ns, &["link", "set", dev, "up"]).unwrap();
        }
        Self { ns }
    }

    fn pins(&self, dev: &str) -> PathBuf {
        default_pin_dir(dev, Some(&self.ns))
    }

    fn xdp_attached(&self, dev: &str) -> bool {
        let out = ip_in(&self.ns, &["-d", "link", "show", dev]).unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    fn attach(&self, dev: &str, opts: LoadOptions) -> Result<Dataplane, DataplaneError> {
        let dev = dev.to_string();
        let pins = self.pins(&dev);
        netns::run_in(&self.ns, move || {
            Dataplane::attach(&dev, AttachMode::Driver, &opts, &pins)
        })
        .unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(
            PathBuf::from(balancer::dataplane::BPFFS)
                .join("balancer")
                .join(&self.ns),
        );
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

fn small() -> LoadOptions {
    LoadOptions {
        max_vips: 4,
        max_backends: 16,
        max_flows: 1024,
        max_affinity: 1024,
        ..LoadOptions::default()
    }
}

#[test]
fn attach_pins_adopts_and_detaches() {
    let s = Scratch::new("a");
    let dp = s.attach("v0", small()).expect("attach");
    let att = dp.programs.attachment().unwrap();
    assert!(!att.adopted);
    assert_eq!(
        att.mode,
        Some(AttachMode::Driver),
        "veth supports native XDP"
    );
    for pin in [
        "link", "prog", "VIPS", "RINGS", "FLOWS", "BACKENDS", "STATS",
    ] {
        assert!(s.pins("v0").join(pin).exists(), "{pin} not pinned");
    }
    assert!(s.xdp_attached("v0"));

    let vip: VipId = "10.9.9.9:443/tcp".parse().unwrap();
    let mut lb = LoadBalancer::new(dp.maps, DataplaneSettings::default()).unwrap();
    lb.add_vip(VipSpec {
        id: vip,
        mode: Mode::Tunnel,
        affinity_secs: None,
        refuse: Default::default(),
        tier: Default::default(),
    })
    .unwrap();
    lb.add_backend(
        &vip,
        BackendSpec {
            addr: "10.0.0.1".parse().unwrap(),
            weight: 1,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
        },
    )
    .unwrap();
    let ring = lb.ring(&vip).unwrap();
    // The "daemon" goes away; the pinned link keeps the program attached.
    drop(lb);
    drop(dp.programs);
    assert!(s.xdp_attached("v0"), "program must outlive its loader");

    // A new one adopts, without reloading, and sees the same state.
    let dp2 = s.attach("v0", small()).expect("adopt");
    assert!(dp2.programs.attachment().unwrap().adopted);
    assert!(dp2.program().is_none(), "adoption must not load a program");
    let vips: Vec<_> = dp2.maps.vips.iter().collect();
    assert_eq!(vips.len(), 1);
    let meta = vips[0].1;
    assert_eq!(
        dp2.maps.rings.read(meta.index, meta.ring_gen).unwrap(),
        ring
    );
    assert!(dp2.maps.verify().unwrap().is_empty());
    drop(dp2);

    Dataplane::detach(&s.pins("v0")).unwrap();
    assert!(!s.pins("v0").exists());
    assert!(!s.xdp_attached("v0"), "detach must remove the program");
}

#[test]
fn driver_mode_falls_back_to_generic() {
    let s = Scratch::new("g");
    // dummy devices have no native XDP.
    let dp = s.attach("d0", small()).expect("attach");
    assert_eq!(
        dp.programs.attachment().unwrap().mode,
        Some(AttachMode::Generic)
    );
    drop(dp);
    Dataplane::detach(&s.pins("d0")).unwrap();
}

#[test]
fn failures_leave_nothing_behind() {
    let s = Scratch::new("f");
    let err = match s.attach("nope0", small()) {
        Err(e) => e,
        Ok(_) => panic!("attached to a missing interface"),
    };
    assert!(matches!(err, DataplaneError::NoSuchInterface(_)), "{err}");
    assert!(!s.pins("nope0").exists(), "pins left after a failed attach");

    for (opts, what) in [
        (
            LoadOptions {
                ring_size: 65536,
                ..small()
            },
            "not a prime",
        ),
        (
            LoadOptions {
                max_vips: 0,
                ..small()
            },
            "max_vips",
        ),
        (
            LoadOptions {
                max_vips: 40_000,
                ..small()
            },
            "does not fit",
        ),
        (
            LoadOptions {
                max_backends: 1 << 17,
                ..small()
            },
            "max_backends",
        ),
    ] {
        let err = match s.attach("v0", opts) {
            Err(e) => e,
            Ok(_) => panic!("accepted {opts:?}"),
        };
        assert!(err.to_string().contains(what), "{err}");
        assert!(!s.xdp_attached("v0"));
    }
}

type Case<'a> = Box<dyn Fn(&mut LoadBalancer) -> Result<(), balancer::lb::LbError> + 'a>;

#[test]
fn lb_rejects_bad_input_with_clear_errors() {
    require_root();
    let dp = Dataplane::load(&small()).unwrap();
    let mut lb = LoadBalancer::new(dp.maps, DataplaneSettings::default()).unwrap();
    let vip: VipId = "10.9.9.9:80/tcp".parse().unwrap();
    let spec = |id| VipSpec {
        id,
        mode: Mode::Tunnel,
        affinity_secs: None,
        refuse: Default::default(),
        tier: Default::default(),
    };
    lb.add_vip(spec(vip)).unwrap();
    let cases: Vec<(Case, &str)> = vec![
        (Box::new(move |lb| lb.add_vip(spec(vip))), "already exists"),
        (
            Box::new(|lb| lb.add_vip(spec("0.0.0.0:80/tcp".parse().unwrap()))),
            "unspecified",
        ),
        (
            Box::new(|lb| lb.add_vip(spec("224.0.0.1:80/tcp".parse().unwrap()))),
            "multicast",
        ),
        (
            Box::new(|lb| {
                lb.add_vip(VipSpec {
                    id: "10.9.9.8:80/tcp".parse().unwrap(),
                    mode: Mode::Tunnel,
                    affinity_secs: Some(0),
                    refuse: Default::default(),
                    tier: Default::default(),
                })
            }),
            "affinity timeout",
        ),
        (
            Box::new(move |lb| {
                lb.add_backend(
                    &vip,
                    BackendSpec {
                        addr: "10.0.0.1".parse().unwrap(),
                        weight: 2_000_000,
                        mac: None,
                    },
                )
            }),
            "weight 2000000 out of range",
        ),
        (
            Box::new(|lb| lb.remove_vip(&"10.1.1.1:1/udp".parse().unwrap())),
            "no VIP 10.1.1.1:1/udp",
        ),
        (
            Box::new(move |lb| lb.remove_backend(&vip, "10.0.0.77".parse().unwrap())),
            "not in the pool",
        ),
        (
            Box::new(|lb| {
                lb.set_settings(DataplaneSettings {
                    mtu: 100,
                    ..DataplaneSettings::default()
                })
            }),
            "mtu 100 out of range",
        ),
    ];
    for (f, want) in cases {
        let err = f(&mut lb).expect_err(want);
        assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
    }
    // Nothing was half-applied.
    assert_eq!(lb.vips().len(), 1);
    assert!(lb.maps().verify().unwrap().is_empty());
    for bad in [
        "10.0.0.1",
        "10.0.0.1:x/tcp",
        "10.0.0.1:80/sctp",
        "nope:80",
        "[::1:80",
    ] {
        assert!(bad.parse::<VipId>().is_err(), "{bad} parsed");
    }
}

/// Issue 12, item 13: frames larger than one XDP buffer arrive in parts that
/// this program (no `xdp.frags`) cannot see whole, so an interface whose MTU
/// allows them is refused, by name and MTU, and nothing is attached.
#[test]
fn interfaces_with_multi_buffer_mtus_are_refused() {
    let s = Scratch::new("mtu");
    ip_in(&s.ns, &["link", "set", "d0", "mtu", "9000"]).unwrap();
    let err = s
        .attach("d0", small())
        .err()
        .expect("MTU 9000 must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("d0") && msg.contains("9000") && msg.contains("3498"),
        "{msg}"
    );
    assert!(!s.xdp_attached("d0"), "a refused attach left XDP on d0");
    // At the limit it attaches.
    ip_in(&s.ns, &["link", "set", "d0", "mtu", "3498"]).unwrap();
    let dp = s.attach("d0", small()).expect("MTU 3498 attaches");
    assert!(s.xdp_attached("d0"));
    drop(dp);
}

/// Freezes one of the program's maps by name (`BPF_MAP_FREEZE`): from then
/// on every write to it from userspace fails, as a kernel refusal would.
fn freeze_map(programs: &balancer::dataplane::Programs, name: &str) {
    use std::os::fd::{AsFd, AsRawFd};
    let prog = programs.program().expect("loaded program");
    let ids = prog.info().unwrap().map_ids().unwrap().unwrap_or_default();
    let info = ids
        .into_iter()
        .filter_map(|id| aya::maps::MapInfo::from_id(id).ok())
        .find(|m| m.name_as_str() == Some(name))
        .unwrap_or_else(|| panic!("the program uses no map {name}"));
    let fd = info.fd().unwrap();
    // union bpf_attr { struct { __u32 map_fd; } }; BPF_MAP_FREEZE is 22.
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd.as_fd().as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: attr outlives the call, and its size is passed with it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 22, attr.as_ptr(), attr.len()) };
    assert_eq!(
        r,
        0,
        "BPF_MAP_FREEZE {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// Issue 12, item 11: a VIP removal whose first cleanup step fails still
/// runs the others, so no backend slot stays active for a VIP that is gone,
/// and the caller hears of the failure.
#[test]
fn a_failed_step_of_a_vip_removal_does_not_stop_its_cleanup() {
    require_root();
    let dp = Dataplane::load(&small()).unwrap();
    let programs = dp.programs;
    let mut lb = LoadBalancer::new(dp.maps, DataplaneSettings::default()).unwrap();
    let vip: VipId = "10.9.9.9:80/tcp".parse().unwrap();
    lb.add_vip(VipSpec {
        id: vip,
        mode: Mode::Tunnel,
        affinity_secs: None,
        refuse: Default::default(),
        tier: Default::default(),
    })
    .unwrap();
    for last in [1, 2] {
        let b = BackendSpec {
            addr: [10, 0, 0, last].into(),
            weight: 1,
            mac: None,
        };
        lb.add_backend(&vip, b).unwrap();
    }
    let active = |lb: &LoadBalancer| {
        (0..lb.maps().backends.len())
            .filter(|i| {
                lb.maps()
                    .backends
                    .get(*i)
                    .is_some_and(|b| b.flags & balancer_common::BACKEND_F_ACTIVE != 0)
            })
            .count()
    };
    assert_eq!(active(&lb), 2);
    // The filter rewrite, the first step after the VIP leaves the table,
    // now fails.
    freeze_map(&programs, "VIP_FILTER");
    let err = lb.remove_vip(&vip).expect_err("the filter write must fail");
    assert!(err.to_string().contains("VIP_FILTER"), "{err}");
    assert!(lb.vips().is_empty());
    assert_eq!(
        active(&lb),
        0,
        "the removed VIP's backend slots stayed active"
    );
}
