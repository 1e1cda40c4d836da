//! Priority tiers through the proxy: the answer names the tier, the engine
//! is told it as vLLM's `priority` when the route says so, and a bad
//! `x-priority` is refused.

use std::collections::HashMap;

use http_body_util::BodyExt;

use super::{testkit, *};
use crate::route::tier::{Tenant, Tier, TierPolicy};

/// A backend that answers with the body it was sent.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(http::serve(
        l,
        http::Settings::new("echo"),
        |req| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(Full::new(body))
        },
    ));
    addr
}

fn tiers(priority_field: bool) -> TierPolicy {
    TierPolicy {
        default: Tier::Standard,
        tenants: vec![Tenant {
            name: "checkout".into(),
            tier: Tier::Standard,
            max_tier: Tier::Critical,
        }],
        keys: HashMap::from([("sk-1".to_string(), 0)]),
        priority_field,
    }
}

/// Header names and values, as a table row gives them.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Status, `x-balancer-tier` and the body's `priority` (as the backend saw
/// it) of one sampled chat request with `headers`.
async fn send(to: SocketAddr, headers: Headers<'_>) -> (u16, String, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::post(format!("http://{to}/v1/chat/completions"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = r#"{"model":"m","temperature":1,"priority":-5,"messages":[]}"#;
    let r = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = r.status().as_u16();
    let tier = r
        .headers()
        .get("x-balancer-tier")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    (status, tier, v["priority"].clone())
}

#[tokio::test]
async fn tiers_reach_the_answer_and_the_engine() {
    let b = echo().await;
    let cfg = RouteConfig {
        tiers: tiers(true),
        ..testkit::config()
    };
    let (r, _) = testkit::serve(cfg, vec![(b, 1)]).await;
    let table: &[(&str, Headers, &str, i64)] = &[
        ("no header: the default", &[], "standard", 1),
        (
            "an unknown client is capped",
            &[("x-priority", "critical")],
            "standard",
            1,
        ),
        (
            "a tenant may raise",
            &[("x-api-key", "sk-1"), ("x-priority", "critical")],
            "critical",
            0,
        ),
        ("anyone may lower", &[("x-priority", "-3")], "sheddable", 2),
    ];
    for (what, h, tier, priority) in table {
        let (status, t, p) = send(r, h).await;
        assert_eq!(
            (status, t.as_str(), p),
            (200, *tier, (*priority).into()),
            "{what}"
        );
    }
    let (status, t, _) = send(r, &[("x-priority", "urgent")]).await;
    assert_eq!(
        (status, t.as_str()),
        (400, ""),
        "an unreadable tier is refused"
    );
}

#[tokio::test]
async fn without_priority_field_the_body_is_untouched() {
    let b = echo().await;
    let cfg = RouteConfig {
        tiers: tiers(false),
        ..testkit::config()
    };
    let (r, _) = testkit::serve(cfg, vec![(b, 1)]).await;
    let (status, t, p) = send(r, &[("x-priority", "sheddable")]).await;
    assert_eq!((status, t.as_str(), p), (200, "sheddable", (-5).into()));
}
