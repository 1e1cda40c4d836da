//! A route's limits on slow clients, its key scope, pick and tiers: defaults
//! and checks.

use std::{path::Path, time::Duration};

use crate::config::Config;

const ROUTE: &str = "[[route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n";

#[test]
fn client_limits_default_and_parse() {
    let c = Config::parse(Path::new("t.toml"), ROUTE).unwrap();
    let r = &c.cache_routes[0].route;
    assert_eq!(r.header_timeout, Duration::from_secs(10));
    assert_eq!(r.body_timeout, Duration::from_secs(30));
    assert_eq!(r.max_connections, 1024);
    assert_eq!(r.body_budget_bytes, 64 * r.max_request_bytes);
    assert_eq!(r.mark_down, crate::cache::proxy::MarkDown::default());
    let src = format!(
        "{ROUTE}header_timeout_ms = 500\nbody_timeout_ms = 700\nmax_connections = 9\nmax_request_bytes = 10\nbody_budget_bytes = 10\n"
    );
    let c = Config::parse(Path::new("t.toml"), &src).unwrap();
    let r = &c.cache_routes[0].route;
    assert_eq!(
        (
            r.header_timeout,
            r.body_timeout,
            r.max_connections,
            r.body_budget_bytes
        ),
        (
            Duration::from_millis(500),
            Duration::from_millis(700),
            9,
            10
        )
    );
}

#[test]
fn client_limits_are_checked() {
    for (extra, field) in [
        ("header_timeout_ms = 0\n", "header_timeout_ms"),
        ("body_timeout_ms = 0\n", "body_timeout_ms"),
        ("max_connections = 0\n", "max_connections"),
        // A budget smaller than one body could never read some requests.
        (
            "max_request_bytes = 100\nbody_budget_bytes = 99\n",
            "body_budget_bytes",
        ),
        ("key_scope = \"per-user\"\n", "key_scope"),
        ("pick = \"fastest\"\n", "pick"),
        ("mark_down_after = 0\n", "mark_down_after"),
        ("mark_down_ms = 0\n", "mark_down_ms"),
        ("cold_start_ms = 0\n", "cold_start_ms"),
        ("cold_start_ms = 3600001\n", "cold_start_ms"),
        (
            "credential_headers = [\"bad header\"]\n",
            "credential_headers",
        ),
        (
            "credential_headers = [\"a\", \"A\"]\n",
            "credential_headers",
        ),
        (
            "key_scope = \"require-auth\"\ncredential_headers = []\n",
            "credential_headers",
        ),
    ] {
        let e = Config::parse(Path::new("t.toml"), &format!("{ROUTE}{extra}")).unwrap_err();
        assert_eq!(e.field, format!("route[0].{field}"), "{e}");
    }
}

#[test]
fn key_scope_defaults_and_parses() {
    use crate::cache::key::KeyScope;
    let c = Config::parse(Path::new("t.toml"), ROUTE).unwrap();
    let r = &c.cache_routes[0].route;
    assert_eq!(r.scope, KeyScope::Shared);
    let names: Vec<_> = r.credential_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(names, ["authorization", "x-api-key"]);
    let src =
        format!("{ROUTE}key_scope = \"per-credential\"\ncredential_headers = [\"X-Tenant-Key\"]\n");
    let c = Config::parse(Path::new("t.toml"), &src).unwrap();
    let r = &c.cache_routes[0].route;
    assert_eq!(r.scope, KeyScope::PerCredential);
    assert_eq!(r.credential_headers[0].as_str(), "x-tenant-key");
}

#[test]
fn pick_defaults_and_parses() {
    use crate::cache::pick::Pick;
    let c = Config::parse(Path::new("t.toml"), ROUTE).unwrap();
    assert_eq!(c.cache_routes[0].route.pick, Pick::ConsistentHash);
    for (word, p) in Pick::ALL {
        let c = Config::parse(Path::new("t.toml"), &format!("{ROUTE}pick = \"{word}\"\n")).unwrap();
        assert_eq!(c.cache_routes[0].route.pick, p);
    }
    let e =
        Config::parse(Path::new("t.toml"), &format!("{ROUTE}pick = \"fastest\"\n")).unwrap_err();
    assert!(e.to_string().contains("least-request"), "{e}");
    assert_eq!(
        c.cache_routes[0].route.cold_start, None,
        "never, by default"
    );
    let c = Config::parse(
        Path::new("t.toml"),
        &format!("{ROUTE}cold_start_ms = 90000\n"),
    )
    .unwrap();
    assert_eq!(
        c.cache_routes[0].route.cold_start,
        Some(std::time::Duration::from_secs(90))
    );
}

#[test]
fn tiers_default_and_parse() {
    use crate::route::tier::Tier;
    let c = Config::parse(Path::new("t.toml"), ROUTE).unwrap();
    let t = &c.cache_routes[0].route.tiers;
    assert_eq!(
        (t.default, t.tenants.len(), t.priority_field),
        (Tier::Standard, 0, false)
    );
    let src = format!(
        "{ROUTE}default_tier = \"sheddable\"\npriority_field = true\n\
         [[route.tenant]]\nname = \"checkout\"\nkeys = [\"sk-a\", \"sk-b\"]\nmax_tier = \"critical\"\n\
         [[route.tenant]]\nname = \"ops\"\nkeys = [\"sk-c\"]\ntier = \"critical\"\n"
    );
    let c = Config::parse(Path::new("t.toml"), &src).unwrap();
    let t = &c.cache_routes[0].route.tiers;
    assert_eq!((t.default, t.priority_field), (Tier::Sheddable, true));
    let tenants: Vec<_> = t
        .tenants
        .iter()
        .map(|x| (x.name.as_str(), x.tier, x.max_tier))
        .collect();
    assert_eq!(
        tenants,
        [
            ("checkout", Tier::Sheddable, Tier::Critical),
            ("ops", Tier::Critical, Tier::Critical)
        ],
        "a tenant's tier defaults to the route's, its max to its tier"
    );
    assert_eq!((t.keys["sk-a"], t.keys["sk-b"], t.keys["sk-c"]), (0, 0, 1));
}

#[test]
fn tiers_are_checked() {
    let tenant = |body: &str| format!("{ROUTE}[[route.tenant]]\n{body}\n");
    for (src, field, says) in [
        (
            format!("{ROUTE}default_tier = \"gold\"\n"),
            "route[0].default_tier",
            "use one of critical",
        ),
        (
            tenant("name = \"a\"\nkeys = []"),
            "route[0].tenant[0].keys",
            "at least one key",
        ),
        (
            tenant("name = \"a\"\nkeys = [\"\"]"),
            "route[0].tenant[0].keys",
            "non-empty",
        ),
        (
            tenant("name = \"a\"\nkeys = [\"sk 1\"]"),
            "route[0].tenant[0].keys",
            "without spaces",
        ),
        (
            tenant("name = \"\"\nkeys = [\"k\"]"),
            "route[0].tenant[0].name",
            "unique",
        ),
        (
            tenant("name = \"a\"\nkeys = [\"k\"]\ntier = \"critical\"\nmax_tier = \"standard\""),
            "route[0].tenant[0].tier",
            "above this tenant's max_tier",
        ),
        (
            tenant("name = \"a\"\nkeys = [\"k\"]\n[[route.tenant]]\nname = \"a\"\nkeys = [\"j\"]"),
            "route[0].tenant[1].name",
            "unique",
        ),
        (
            tenant(
                "name = \"a\"\nkeys = [\"sk-secret\"]\n[[route.tenant]]\nname = \"b\"\nkeys = [\"sk-secret\"]",
            ),
            "route[0].tenant[1].keys",
            "one tenant only",
        ),
        (
            tenant("name = \"a\"\nkeys = [\"k\"]\ntier = \"high\""),
            "route[0].tenant[0].tier",
            "use one of",
        ),
        (
            tenant("name = \"a\"\nkeys = \"sk-secret\""),
            "route[0].tenant[0].keys",
            "a list of strings",
        ),
        (
            tenant("name = \"a\"\nkeys = [\"sk-secret\", 7]"),
            "route[0].tenant[0].keys",
            "a list of strings",
        ),
        (
            tenant("name = \"a\"\nkeys = [\"sk-\u{e9}\"]"),
            "route[0].tenant[0].keys",
            "visible ASCII",
        ),
        (
            tenant("name = \"a\"\nkeys = [\"k\"]\nmax_tier = \"sheddable\""),
            "route[0].tenant[0].max_tier",
            "below the tier this tenant's requests get by default",
        ),
    ] {
        let e = Config::parse(Path::new("t.toml"), &src).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(says), "{e}");
        assert!(
            !e.to_string().contains("sk-secret"),
            "keys never appear in errors: {e}"
        );
    }
}

#[test]
fn shedding_defaults_and_is_checked() {
    use crate::route::admission::{Curve, Shedding};
    let c = Config::parse(Path::new("t.toml"), ROUTE).unwrap();
    assert_eq!(
        c.cache_routes[0].route.shedding, None,
        "off unless max_in_flight is set"
    );
    let c = Config::parse(Path::new("t.toml"), &format!("{ROUTE}max_in_flight = 8\n")).unwrap();
    assert_eq!(c.cache_routes[0].route.shedding, Some(Shedding::new(8)));
    let src = format!(
        "{ROUTE}max_in_flight = 8\n[route.shed]\nsheddable = [0.5, 0.9]\nstandard = [0.9, 2.0]\n"
    );
    let s = Config::parse(Path::new("t.toml"), &src)
        .unwrap()
        .cache_routes[0]
        .route
        .shedding
        .unwrap();
    assert_eq!(
        (s.sheddable, s.standard),
        (
            Curve {
                start: 0.5,
                full: 0.9
            },
            Curve {
                start: 0.9,
                full: 2.0
            }
        )
    );
    for (extra, field, says) in [
        (
            "[route.shed]\nsheddable = [0.5, 0.9]\n",
            "route[0].shed",
            "needs max_in_flight",
        ),
        ("max_in_flight = 0\n", "route[0].max_in_flight", "use 1 to"),
        (
            "max_in_flight = 4\n[route.shed]\nsheddable = [0.9, 0.5]\n",
            "route[0].shed.sheddable",
            "start < full",
        ),
        (
            "max_in_flight = 4\n[route.shed]\nstandard = [-1.0, 2.0]\n",
            "route[0].shed.standard",
            "0 <= start",
        ),
        (
            "max_in_flight = 4\n[route.shed]\nsheddable = [0.8, 1.2]\nstandard = [1.0, 1.5]\n",
            "route[0].shed.standard",
            "start standard there or later",
        ),
    ] {
        let e = Config::parse(Path::new("t.toml"), &format!("{ROUTE}{extra}")).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
}

#[test]
fn the_queue_defaults_parses_and_is_checked() {
    use crate::route::queue::QueueSettings;
    let queue = |extra: &str| {
        Config::parse(
            Path::new("t.toml"),
            &format!("{ROUTE}max_in_flight = 8\n{extra}"),
        )
        .map(|c| c.cache_routes[0].route.shedding.and_then(|s| s.queue))
    };
    assert_eq!(
        queue("").unwrap(),
        Some(QueueSettings::default()),
        "on with shedding"
    );
    assert_eq!(
        queue("[route.queue]\nmax_waiting = 0\n").unwrap(),
        None,
        "0 turns it off"
    );
    assert_eq!(
        queue("[route.queue]\nmax_waiting = 5\nstandard_wait_ms = 300\nsheddable_wait_ms = 100\n")
            .unwrap(),
        Some(QueueSettings {
            max_waiting: 5,
            standard_wait: Duration::from_millis(300),
            sheddable_wait: Duration::from_millis(100),
        })
    );
    for (src, field, says) in [
        (
            format!("{ROUTE}[route.queue]\nmax_waiting = 4\n"),
            "route[0].queue",
            "needs max_in_flight",
        ),
        (
            format!("{ROUTE}max_in_flight = 8\n[route.queue]\nstandard_wait_ms = 0\n"),
            "route[0].queue.standard_wait_ms",
            "use 1 to 600000",
        ),
        (
            format!("{ROUTE}max_in_flight = 8\n[route.queue]\nmax_waiting = 2000000\n"),
            "route[0].queue.max_waiting",
            "use 0 (no queue)",
        ),
    ] {
        let e = Config::parse(Path::new("t.toml"), &src).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
    let e = Config::parse(
        Path::new("t.toml"),
        &format!("{ROUTE}max_in_flight = 8\n[route.queue]\nwait_ms = 5\n"),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("wait_ms"),
        "unknown keys are named: {e}"
    );
}

#[test]
fn stale_and_fallback_default_and_parse() {
    use crate::config::CachePool;
    let c = Config::parse(Path::new("t.toml"), ROUTE).unwrap();
    let r = &c.cache_routes[0];
    assert_eq!(
        (r.route.stale, &r.route.fallback, &r.fallback_pool),
        (Duration::ZERO, &None, &None)
    );
    assert_eq!(c.cache.stale_ms, 0);
    let src = format!(
        "{ROUTE}stale_secs = 120\n[route.fallback]\nbackends = [\"10.0.2.10:8000\"]\nmodel = \"llama-3.2-1b\"\n"
    );
    let c = Config::parse(Path::new("t.toml"), &src).unwrap();
    let r = &c.cache_routes[0];
    assert_eq!(r.route.stale, Duration::from_secs(120));
    assert_eq!(
        c.cache.stale_ms, 120_000,
        "the L1 keeps expired entries as long"
    );
    let f = r.route.fallback.as_ref().unwrap();
    assert_eq!(
        (f.tiers, f.model.as_deref()),
        ([false, false, true], Some("llama-3.2-1b"))
    );
    assert_eq!(
        r.fallback_pool,
        Some(CachePool::Static(vec!["10.0.2.10:8000".parse().unwrap()]))
    );
    let src = format!(
        "{ROUTE}[route.fallback]\nvip = \"10.0.0.9:80/tcp\"\nbackend_port = 8000\ntiers = [\"standard\", \"sheddable\"]\n"
    );
    let c = Config::parse(Path::new("t.toml"), &src).unwrap();
    assert_eq!(
        c.cache_routes[0].route.fallback.as_ref().unwrap().tiers,
        [false, true, true]
    );
}

#[test]
fn stale_and_fallback_are_checked() {
    let pool = "backends = [\"10.0.2.10:8000\"]\n";
    for (extra, field) in [
        ("stale_secs = 999999999\n", "stale_secs".to_string()),
        (
            &format!("[route.fallback]\n{pool}tiers = [\"critical\"]\n")[..],
            "fallback.tiers".into(),
        ),
        (
            &format!("[route.fallback]\n{pool}tiers = [\"urgent\"]\n")[..],
            "fallback.tiers".into(),
        ),
        (
            &format!("[route.fallback]\n{pool}tiers = []\n")[..],
            "fallback.tiers".into(),
        ),
        (
            &format!("[route.fallback]\n{pool}model = \"\"\n")[..],
            "fallback.model".into(),
        ),
        (
            "[route.fallback]\nmodel = \"m\"\n",
            "fallback.backends".into(),
        ),
        (
            "[route.fallback]\nbackends = [\"nope\"]\n",
            "fallback.backends".into(),
        ),
    ] {
        let e = Config::parse(Path::new("t.toml"), &format!("{ROUTE}{extra}")).unwrap_err();
        assert_eq!(e.field, format!("route[0].{field}"), "{extra}: {e}");
    }
}

#[test]
fn zones_parse_and_are_checked() {
    use crate::route::zone::Place;
    let src = format!(
        "{ROUTE}zone = \"a\"\n[route.zones]\na = [\"10.0.1.1\"]\nb = [\"10.0.1.2\", \"10.0.1.1:9000\"]\n"
    );
    let c = Config::parse(Path::new("t.toml"), &src).unwrap();
    let z = c.cache_routes[0].route.zones.clone().expect("zones");
    let place = |a: &str| z.place(a.parse().unwrap());
    assert_eq!(
        [
            place("10.0.1.1:8000"),
            place("10.0.1.2:8000"),
            place("10.0.1.1:9000"),
            place("10.0.1.9:8000")
        ],
        [Place::Local, Place::Remote, Place::Remote, Place::Unknown]
    );
    assert_eq!(
        Config::parse(Path::new("t.toml"), ROUTE)
            .unwrap()
            .cache_routes[0]
            .route
            .zones,
        None
    );
    for (extra, field, says) in [
        ("zone = \"a\"\n", "route[0].zone", "[route.zones] too"),
        (
            "[route.zones]\na = [\"10.0.1.1\"]\n",
            "route[0].zones",
            "own zone too",
        ),
        (
            "zone = \"c\"\n[route.zones]\na = [\"10.0.1.1\"]\n",
            "route[0].zone",
            "none of [route.zones]",
        ),
        (
            "zone = \"a\"\n[route.zones]\na = [\"nope\"]\n",
            "route[0].zones.a",
            "an address",
        ),
        (
            "zone = \"a\"\n[route.zones]\na = [\"10.0.1.1\"]\nb = [\"10.0.1.1\"]\n",
            "route[0].zones.b",
            "labelled twice",
        ),
    ] {
        let e = Config::parse(Path::new("t.toml"), &format!("{ROUTE}{extra}")).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
}
