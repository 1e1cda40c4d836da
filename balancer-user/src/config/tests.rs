//! The configuration's tests: every rule, located.

use std::time::Duration;

use super::*;
use crate::lb::Mode;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("t.toml"), src)
}

const GOOD: &str = r#"
[daemon]
iface = "eth0"
metrics = ""

[dataplane]
mtu = 1600
tunnel_src_v4 = "10.255.0.0/16"

[[vip]]
vip = "10.0.0.100:80/tcp"
affinity_secs = 60

[[vip.backend]]
address = "10.0.1.10"
weight = 3

[[vip.backend]]
address = "10.0.1.11"
mac = "02:00:00:00:00:11"

[[vip]]
vip = "[2001:db8::1]:443/tcp"
mode = "l2-dsr"
"#;

#[test]
fn good_config() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.daemon.iface.as_deref(), Some("eth0"));
    assert_eq!(c.daemon.metrics, None);
    assert_eq!(c.initial.settings.mtu, 1600);
    assert_eq!(c.initial.vips.len(), 2);
    let v = &c.initial.vips[0];
    assert_eq!(v.spec.affinity_secs, Some(60));
    assert_eq!(v.backends[0].weight, 3);
    assert_eq!(v.backends[1].weight, 1);
    assert!(v.backends[1].mac_static);
    assert_eq!(c.initial.vips[1].spec.mode, Mode::L2Dsr);
    use crate::route::tier::Tier;
    assert_eq!(
        v.spec.tier,
        Tier::Critical,
        "VIPs are critical unless configured"
    );
    let c = parse(&GOOD.replace(
        "affinity_secs = 60",
        "affinity_secs = 60\ntier = \"sheddable\"",
    ))
    .unwrap();
    assert_eq!(c.initial.vips[0].spec.tier, Tier::Sheddable);
    let e = parse(&GOOD.replace(
        "affinity_secs = 60",
        "affinity_secs = 60\ntier = \"urgent\"",
    ))
    .unwrap_err();
    assert_eq!(e.field, "vip[0].tier", "{e}");
    use crate::lb::Refusal;
    assert_eq!(
        v.spec.refuse,
        Refusal::Rst,
        "refused SYNs get a RST by default"
    );
    let c = parse(&GOOD.replace(
        "affinity_secs = 60",
        "affinity_secs = 60\nrefuse = \"drop\"",
    ))
    .unwrap();
    assert_eq!(c.initial.vips[0].spec.refuse, Refusal::Drop);
    let e = parse(&GOOD.replace(
        "affinity_secs = 60",
        "affinity_secs = 60\nrefuse = \"reject\"",
    ))
    .unwrap_err();
    assert_eq!(e.field, "vip[0].refuse", "{e}");
    assert!(e.message.contains("\"drop\" or \"rst\""), "{e}");
}

#[test]
fn errors_name_line_and_field() {
    let cases = [
        (
            GOOD.replace("weight = 3", "weight = 3000000"),
            16,
            "vip[0].backend[0].weight",
            "out of range",
        ),
        (
            GOOD.replace("\"10.0.1.11\"", "\"10.0.1.300\""),
            19,
            "vip[0].backend[1].address",
            "IP address",
        ),
        (
            GOOD.replace("l2-dsr", "magic"),
            24,
            "vip[1].mode",
            "tunnel or l2-dsr",
        ),
        (
            GOOD.replace("10.0.0.100:80/tcp", "10.0.0.100/tcp"),
            11,
            "vip[0].vip",
            "missing port",
        ),
        (
            GOOD.replace("02:00:00:00:00:11", "02:00"),
            20,
            "vip[0].backend[1].mac",
            "six hex bytes",
        ),
        (
            GOOD.replace("affinity_secs = 60", "affinity_secs = 0"),
            12,
            "vip[0].affinity_secs",
            "1 to",
        ),
        (
            GOOD.replace("mtu = 1600", "mtu = 100"),
            7,
            "dataplane.mtu",
            "mtu 100",
        ),
        (
            GOOD.replace("\"10.255.0.0/16\"", "\"10.255.0.0\""),
            8,
            "dataplane.tunnel_src_v4",
            "prefix",
        ),
        (
            GOOD.replace("\"10.255.0.0/16\"", "\"10.255.0.0/40\""),
            8,
            "dataplane.tunnel_src_v4",
            "/40",
        ),
        (
            GOOD.replace("\"10.0.1.10\"", "\"10.0.1.11\""),
            19,
            "vip[0].backend[1].address",
            "twice",
        ),
    ];
    for (src, line, field, msg) in cases {
        let e = parse(&src).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(line), field), "{e}");
        assert!(e.message.contains(msg), "{e}");
        assert!(e.to_string().starts_with(&format!("t.toml:{line}:")), "{e}");
    }
}

/// Rules that only the engine enforced once (a `0.0.0.0` VIP passed
/// `config check`, then failed after attaching) now fail here, with the
/// engine's own message, at the right key.
#[test]
fn config_check_applies_the_engines_rules() {
    let cases = [
        (
            "0.0.0.0 VIP",
            GOOD.replace("10.0.0.100:80", "0.0.0.0:80"),
            11,
            "vip[0].vip",
            "unspecified",
        ),
        (
            "[::] VIP",
            GOOD.replace("[2001:db8::1]:443", "[::]:443"),
            23,
            "vip[1].vip",
            "unspecified",
        ),
        (
            "multicast VIP",
            GOOD.replace("10.0.0.100:80", "239.1.1.1:80"),
            11,
            "vip[0].vip",
            "multicast",
        ),
        (
            "broadcast VIP",
            GOOD.replace("10.0.0.100:80", "255.255.255.255:80"),
            11,
            "vip[0].vip",
            "broadcast",
        ),
        (
            "broadcast backend",
            GOOD.replace("\"10.0.1.10\"", "\"255.255.255.255\""),
            15,
            "vip[0].backend[0].address",
            "broadcast",
        ),
        (
            "affinity beyond a week",
            GOOD.replace("affinity_secs = 60", "affinity_secs = 604801"),
            12,
            "vip[0].affinity_secs",
            "out of range",
        ),
        (
            "L2 DSR backend in the other family",
            GOOD.replace(
                "mode = \"l2-dsr\"",
                "mode = \"l2-dsr\"\n[[vip.backend]]\naddress = \"10.0.1.12\"",
            ),
            26,
            "vip[1].backend[0].address",
            "address family",
        ),
    ];
    for (what, src, line, field, msg) in cases {
        let e = parse(&src).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(line), field),
            "{what}: {e}"
        );
        assert!(e.message.contains(msg), "{what}: {e}");
    }
}

#[test]
fn syntax_and_unknown_fields() {
    let e = parse("[daemon]\niface = \"eth0\"\nifase = \"x\"\n").unwrap_err();
    assert_eq!(e.field, "ifase");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("unknown field"), "{e}");
    let e = parse("[daemon\n").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
    let e = parse("[dataplane]\nring_size = 100\n[daemon]\niface=\"x\"\n").unwrap_err();
    assert!(e.message.contains("not a prime"), "{e}");
    let e = parse("").unwrap_err();
    assert!(e.message.contains("missing"), "{e}");
}

#[test]
fn cache_routes() {
    let c = parse(
        "[cache]\nmemory_mb = 64\nredis = \"redis://127.0.0.1:6390\"\n[cache.models]\nm = \"v2\"\n\
         [[route]]\nname = \"a\"\nlisten = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9000\"]\n\
         ttl_secs = 5\n",
    )
    .unwrap();
    assert_eq!(c.daemon.iface, None, "cache-only gateway");
    assert_eq!(c.cache.memory_bytes, 64 << 20);
    assert_eq!(c.cache.versions.get("m").map(String::as_str), Some("v2"));
    assert_eq!(c.cache_routes[0].route.ttl, Duration::from_secs(5));
    assert_eq!(
        c.cache_routes[0].route.exclude_fields,
        vec!["user".to_string()]
    );
    let vip = parse(
        "[daemon]\niface = \"eth0\"\n[[route]]\nlisten = \"127.0.0.1:1\"\nvip = \"10.0.0.1:80/tcp\"\nbackend_port = 8000\n",
    )
    .unwrap();
    assert!(matches!(
        vip.cache_routes[0].pool,
        CachePool::Vip { port: 8000, .. }
    ));
    for (src, field, says) in [
        (
            "[[route]]\nlisten = \"nope\"\nbackends = [\"127.0.0.1:1\"]\n",
            "route[0].listen",
            "address and port",
        ),
        (
            "[[route]]\nlisten = \"127.0.0.1:1\"\n",
            "route[0].backends",
            "exactly one",
        ),
        (
            "[[route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"10.0.0.1\"]\n",
            "route[0].backends",
            "address:port",
        ),
        (
            "[[route]]\nlisten = \"127.0.0.1:1\"\nvip = \"10.0.0.1:80/tcp\"\n",
            "route[0].backend_port",
            "missing",
        ),
        (
            "[[route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\nttl_secs = 0\n",
            "route[0].ttl_secs",
            "use 1 to",
        ),
        (
            "[cache]\nredis = \"http://x\"\n[[route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n",
            "cache.redis",
            "redis://",
        ),
        (
            "[cache]\nmemory_mb = 1\n[daemon]\niface = \"eth0\"\n",
            "cache",
            "caches nothing",
        ),
        (
            "[[route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n[[route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n",
            "route[1].listen",
            "used by another",
        ),
    ] {
        let e = parse(src).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
}

#[test]
fn cache_route_is_a_deprecated_alias_of_route() {
    let table = |t: &str, name: &str, port: u16| {
        format!(
            "[[{t}]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [\"127.0.0.1:9\"]\n"
        )
    };
    let c = parse(&table("route", "a", 1)).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(
        c.cache_routes[0].route.cache,
        "the cache stage is on by default"
    );

    // The old name still works, the same route, with a warning naming the line.
    let src = format!("{}{}", table("route", "a", 1), table("cache_route", "b", 2));
    let c = parse(&src).unwrap();
    let names: Vec<_> = c
        .cache_routes
        .iter()
        .map(|r| r.route.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(c.cache_routes[0].route, {
        let mut r = c.cache_routes[1].route.clone();
        r.name = "a".into();
        r.listen = "127.0.0.1:1".parse().unwrap();
        r
    });
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("t.toml:7:") && c.warnings[0].contains("rename it [[route]]"),
        "{:?}",
        c.warnings
    );

    // Unnamed routes are numbered across both tables.
    let unnamed = |t: &str, port: u16| {
        format!("[[{t}]]\nlisten = \"127.0.0.1:{port}\"\nbackends = [\"127.0.0.1:9\"]\n")
    };
    let c = parse(&format!(
        "{}{}",
        unnamed("route", 1),
        unnamed("cache_route", 2)
    ))
    .unwrap();
    let names: Vec<_> = c
        .cache_routes
        .iter()
        .map(|r| r.route.name.as_str())
        .collect();
    assert_eq!(names, ["route0", "route1"]);

    // Names and listeners are unique across both tables; errors name the table.
    let e = parse(&format!(
        "{}{}",
        table("route", "a", 1),
        table("cache_route", "a", 2)
    ))
    .unwrap_err();
    assert_eq!(e.field, "cache_route[0].name", "{e}");

    // cache = false: a route with no cache stage, which a [cache] table alone
    // cannot use.
    let off = format!("{}cache = false\n", table("route", "a", 1));
    assert!(!parse(&off).unwrap().cache_routes[0].route.cache);
    let e = parse(&format!("[cache]\nmemory_mb = 1\n{off}")).unwrap_err();
    assert!(
        e.field == "cache" && e.message.contains("caches nothing"),
        "{e}"
    );
    let e = parse(&format!("{}cache = \"no\"\n", table("route", "a", 1))).unwrap_err();
    assert_eq!(e.field, "cache", "{e}");
}
