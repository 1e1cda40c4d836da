//! Priority tiers through `balancer run`: a proxy-only gateway with one
//! `[[route]]` that knows two tenants, in front of an emulated backend.
//!
//! | test | shows |
//! |---|---|
//! | `a_saturated_route_sheds_sheddable_with_429_and_retry_after_but_never_critical` | with `max_in_flight = 1` and one request in flight, a sheddable request gets 429 with `Retry-After` (1-60 s) and reaches no backend, a critical one is served, and `route stats` counts the shed one |
//! | `tiers_are_decided_counted_and_shown` | `X-Balancer-Tier` per request (default, capped claim, tenant raise, lowering, integers), 400 for an unreadable `x-priority`, the counts in `balancer route stats` (table and JSON) and in `/metrics`, and the deprecation warning a `[[cache_route]]` gets in the daemon's log |

use std::net::SocketAddr;

use balancer_tests::{
    cachebed::{Backend, Gateway, free_port, http, route_toml},
    patience,
};

/// Header names and values, as a table row gives them.
type Headers<'a> = &'a [(&'a str, &'a str)];

#[test]
fn tiers_are_decided_counted_and_shown() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let b = Backend::start("b", &["m"], 0.2).unwrap();
    let (port, old_port, metrics) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let tenants = "default_tier = \"standard\"\n\
        [[route.tenant]]\nname = \"checkout\"\nkeys = [\"sk-checkout\"]\nmax_tier = \"critical\"\n\
        [[route.tenant]]\nname = \"batch\"\nkeys = [\"sk-batch\"]\ntier = \"sheddable\"\n";
    let old = route_toml("old", old_port, &b, "").replace("[[route]]", "[[cache_route]]");
    let config = format!("{}{old}", route_toml("chat", port, &b, tenants));
    let g = Gateway::start_with_metrics("tiers", &config, metrics).unwrap();
    let log = g.log();
    assert!(
        log.contains("[[cache_route]] is deprecated: rename it [[route]]"),
        "no deprecation warning in the log:\n{log}"
    );

    let route = SocketAddr::from(([127, 0, 0, 1], port));
    let body = r#"{"model":"m","prompt":"hi","max_tokens":2,"temperature":1}"#;
    let cases: &[(&str, Headers, u16, &str)] = &[
        ("no header: the route's default", &[], 200, "standard"),
        (
            "an unknown client cannot claim critical",
            &[("x-priority", "critical")],
            200,
            "standard",
        ),
        (
            "a tenant raises up to its max",
            &[
                ("authorization", "Bearer sk-checkout"),
                ("x-priority", "critical"),
            ],
            200,
            "critical",
        ),
        (
            "a tenant's own default",
            &[("x-api-key", "sk-batch")],
            200,
            "sheddable",
        ),
        (
            "a sheddable tenant stays sheddable",
            &[("x-api-key", "sk-batch"), ("x-priority", "5")],
            200,
            "sheddable",
        ),
        (
            "anyone may lower",
            &[("x-priority", "-1")],
            200,
            "sheddable",
        ),
        (
            "an unreadable tier is refused",
            &[("x-priority", "urgent")],
            400,
            "",
        ),
    ];
    rt.block_on(async {
        for (what, headers, status, tier) in cases {
            let r = http(route, "POST", "/v1/completions", body, headers)
                .await
                .unwrap();
            assert_eq!(
                (r.status, r.header("x-balancer-tier")),
                (*status, *tier),
                "{what}: {}",
                r.body
            );
        }
    });

    // 1 critical, 2 standard, 3 sheddable; the refused request is not counted.
    let json = g.cli(&["route", "stats", "--output", "json"]).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let chat = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["route"] == "chat"))
        .unwrap_or_else(|| panic!("no chat route in {json}"));
    assert_eq!(
        chat["requests_by_tier"],
        serde_json::json!({"critical": 1, "standard": 2, "sheddable": 3}),
        "{json}"
    );
    let table = g.cli(&["route", "stats"]).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("chat "))
        // Route, tier, requests, shed, stale, fallback, queued (the answer
        // times after them vary).
        .map(|l| l.split_whitespace().take(7).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["chat", "critical", "1", "0", "0", "0", "0"],
            ["chat", "standard", "2", "0", "0", "0", "0"],
            ["chat", "sheddable", "3", "0", "0", "0", "0"]
        ],
        "{table}"
    );

    let text = rt
        .block_on(http(
            SocketAddr::from(([127, 0, 0, 1], metrics)),
            "GET",
            "/metrics",
            "",
            &[],
        ))
        .unwrap()
        .body;
    assert!(
        text.contains("balancer_route_requests_total{route=\"chat\",tier=\"sheddable\"} 3"),
        "{text}"
    );
}

#[test]
fn a_saturated_route_sheds_sheddable_with_429_and_retry_after_but_never_critical() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // 400 tokens at 25 ms: a request stays in flight for ten seconds.
    let b = Backend::start("slow", &["m"], 25.0).unwrap();
    let port = free_port().unwrap();
    let extra = "max_in_flight = 1\n\
        [[route.tenant]]\nname = \"ops\"\nkeys = [\"sk-ops\"]\ntier = \"critical\"\n";
    let g = Gateway::start("shed", &route_toml("chat", port, &b, extra)).unwrap();
    let route = SocketAddr::from(([127, 0, 0, 1], port));
    let long = r#"{"model":"m","prompt":"hi","max_tokens":400,"temperature":1}"#;
    let short = r#"{"model":"m","prompt":"hi","max_tokens":1,"temperature":1}"#;
    rt.block_on(async {
        // One standard request fills the pool (one backend, one slot).
        let first = tokio::spawn(http(route, "POST", "/v1/completions", long, &[]));
        let deadline = std::time::Instant::now() + patience(std::time::Duration::from_secs(10));
        while b.calls().await.unwrap() < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the backend never got the first request"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let shed = http(
            route,
            "POST",
            "/v1/completions",
            short,
            &[("x-priority", "sheddable")],
        )
        .await
        .unwrap();
        assert_eq!(shed.status, 429, "{}", shed.body);
        let retry: u32 = shed.header("retry-after").parse().unwrap_or(0);
        assert!(
            (1..=60).contains(&retry),
            "Retry-After {:?}",
            shed.header("retry-after")
        );
        assert!(shed.body.contains("\"shed\""), "{}", shed.body);
        // Critical goes on while the pool is full.
        let critical = http(
            route,
            "POST",
            "/v1/completions",
            short,
            &[("x-api-key", "sk-ops")],
        )
        .await
        .unwrap();
        assert_eq!(
            (critical.status, critical.header("x-balancer-tier")),
            (200, "critical")
        );
        first.abort();
    });
    let json = g.cli(&["route", "stats", "--output", "json"]).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["shed_by_tier"]["sheddable"], 1, "{json}");
    assert_eq!(rows[0]["shed_by_tier"]["critical"], 0, "{json}");
}
