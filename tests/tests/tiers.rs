//! Priority tiers through `balancer run`: a proxy-only gateway with one
//! `[[route]]` that knows two tenants, in front of an emulated backend.
//!
//! | test | shows |
//! |---|---|
//! | `tiers_are_decided_counted_and_shown` | `X-Balancer-Tier` per request (default, capped claim, tenant raise, lowering, integers), 400 for an unreadable `x-priority`, the counts in `balancer route stats` (table and JSON) and in `/metrics`, and the deprecation warning a `[[cache_route]]` gets in the daemon's log |

use std::net::SocketAddr;

use balancer_tests::cachebed::{Backend, Gateway, free_port, http, route_toml};

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
    let line = table
        .lines()
        .find(|l| l.starts_with("chat"))
        .unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells, ["chat", "1", "2", "3", "6"], "{table}");

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
