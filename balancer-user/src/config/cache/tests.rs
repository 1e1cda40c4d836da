//! A route's limits on slow clients and its key scope: defaults and checks.

use std::{path::Path, time::Duration};

use crate::config::Config;

const ROUTE: &str = "[[cache_route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n";

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
        assert_eq!(e.field, format!("cache_route[0].{field}"), "{e}");
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
}
