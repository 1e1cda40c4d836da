//! Tier decisions as a table: {description, headers, expected tier, capped}.

use std::collections::HashMap;

use hyper::HeaderMap;

use super::*;

fn policy() -> TierPolicy {
    let tenants = vec![
        Tenant {
            name: "checkout".into(),
            tier: Tier::Standard,
            max_tier: Tier::Critical,
        },
        Tenant {
            name: "batch".into(),
            tier: Tier::Sheddable,
            max_tier: Tier::Sheddable,
        },
    ];
    let keys = HashMap::from([("sk-checkout".to_string(), 0), ("sk-batch".to_string(), 1)]);
    TierPolicy {
        default: Tier::Standard,
        tenants,
        keys,
        priority_field: false,
    }
}

/// Header names and values, as a table row gives them.
type Headers<'a> = &'a [(&'a str, &'a str)];

fn headers(pairs: Headers) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn tiers_follow_header_tenant_and_default() {
    let p = policy();
    let cases: &[(&str, Headers, Tier, bool, Option<&str>)] = &[
        (
            "no header, no key: the route's default",
            &[],
            Tier::Standard,
            false,
            None,
        ),
        (
            "an unknown client cannot claim critical",
            &[("x-priority", "critical")],
            Tier::Standard,
            true,
            None,
        ),
        (
            "an unknown client may lower itself",
            &[("x-priority", "sheddable")],
            Tier::Sheddable,
            false,
            None,
        ),
        (
            "a tenant's default",
            &[("authorization", "Bearer sk-checkout")],
            Tier::Standard,
            false,
            Some("checkout"),
        ),
        (
            "a tenant may raise up to its max",
            &[
                ("authorization", "bearer  sk-checkout "),
                ("x-priority", "CRITICAL"),
            ],
            Tier::Critical,
            false,
            Some("checkout"),
        ),
        (
            "x-api-key names a tenant too",
            &[("x-api-key", "sk-batch")],
            Tier::Sheddable,
            false,
            Some("batch"),
        ),
        (
            "a sheddable-only tenant stays sheddable",
            &[("x-api-key", "sk-batch"), ("x-priority", "7")],
            Tier::Sheddable,
            true,
            Some("batch"),
        ),
        (
            "integers: negative is sheddable",
            &[("x-priority", "-1")],
            Tier::Sheddable,
            false,
            None,
        ),
        (
            "integers: zero is standard",
            &[("x-priority", "0")],
            Tier::Standard,
            false,
            None,
        ),
        (
            "integers: positive is critical, within the max",
            &[("x-api-key", "sk-checkout"), ("x-priority", "100")],
            Tier::Critical,
            false,
            Some("checkout"),
        ),
        (
            "an unknown key is an unknown client",
            &[("x-api-key", "sk-nope"), ("x-priority", "critical")],
            Tier::Standard,
            true,
            None,
        ),
        (
            "another auth scheme names no tenant",
            &[("authorization", "Basic sk-checkout")],
            Tier::Standard,
            false,
            None,
        ),
    ];
    for (what, h, tier, capped, tenant) in cases {
        let d = p
            .decide(&headers(h))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            (d.tier, d.capped, d.tenant.map(|t| t.name.as_str())),
            (*tier, *capped, *tenant),
            "{what}"
        );
    }
}

#[test]
fn unreadable_priorities_are_errors() {
    let p = policy();
    for bad in ["urgent", "", "1.5", "99999999999999999999"] {
        let e = p.decide(&headers(&[("x-priority", bad)])).unwrap_err();
        assert!(
            e.to_string().contains("use critical, standard"),
            "{bad:?}: {e}"
        );
    }
    let mut h = HeaderMap::new();
    h.insert(
        X_PRIORITY,
        hyper::header::HeaderValue::from_bytes(b"\xffhigh").unwrap(),
    );
    assert!(p.decide(&h).is_err());
}

#[test]
fn order_labels_and_engine_priorities() {
    assert!(Tier::Sheddable < Tier::Standard && Tier::Standard < Tier::Critical);
    for (i, t) in Tier::ALL.iter().enumerate() {
        assert_eq!(t.index(), i);
        assert_eq!(t.label().parse::<Tier>(), Ok(*t));
        assert_eq!(t.vllm_priority(), i as i64, "vLLM runs lower numbers first");
    }
}

#[test]
fn debug_output_never_shows_keys() {
    let s = format!("{:?}", policy());
    assert!(!s.contains("sk-"), "{s}");
    assert!(s.contains("<2 redacted>"), "{s}");
}

#[test]
fn the_engine_is_told_the_tier_and_only_the_tier() {
    let out = with_priority(
        br#"{"model":"m","priority":-100,"prompt":"hi"}"#,
        Tier::Sheddable,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["priority"], 2,
        "a client cannot pick its own engine priority"
    );
    assert_eq!(
        (v["model"].as_str(), v["prompt"].as_str()),
        (Some("m"), Some("hi"))
    );
    for not_an_object in [&b"[1]"[..], b"not json", b""] {
        assert_eq!(with_priority(not_an_object, Tier::Critical), None);
    }
}

#[test]
fn counts_per_tier() {
    let c = TierCounts::default();
    for t in [Tier::Critical, Tier::Sheddable, Tier::Sheddable] {
        c.count(t);
    }
    assert_eq!(c.snapshot(), [1, 0, 2]);
}
