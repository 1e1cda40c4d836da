//! A 20:1 spike on an emulated mixed fleet through `balancer run`: a route
//! with `pick = "aware"`, priority tiers and shedding (`max_in_flight`).
//!
//! | test | shows |
//! |---|---|
//! | `a_twenty_to_one_spike_sheds_sheddable_first_and_never_critical` | one A100- and two L4-class nodes, `max_in_flight = 2`; open-loop arrivals of 1 request/s for 3 s, then 20/s for 3 s, tiers in turn 1 critical : 2 standard : 2 sheddable (`x-priority`). Every critical request is served; sheddable ones are shed with 429 and a `Retry-After` of 1-60 s, at a rate at least standard's, nothing fails otherwise, and `balancer route stats` counts the same |

use std::time::Duration;

use balancer_tests::{cachebed::http, fleet::gateway};

/// One answer: the request's index, its tier, status and `Retry-After`.
type Answer = (usize, &'static str, u16, Option<u32>);

#[test]
fn a_twenty_to_one_spike_sheds_sheddable_first_and_never_critical() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Clients without a key may claim any tier up to critical.
        let settings = "pick = \"aware\"\nmax_in_flight = 2\ndefault_tier = \"critical\"\n";
        let (g, route, _) = gateway::start("spike", &[("a100", 1), ("l4", 2)], settings)
            .await
            .unwrap();
        let tiers = ["critical", "standard", "standard", "sheddable", "sheddable"];
        // Arrival times: 1/s for 3 s, then 20/s for 3 s.
        let at: Vec<f64> = (0..3)
            .map(|i| i as f64)
            .chain((0..60).map(|i| 3.0 + i as f64 / 20.0))
            .collect();
        let t0 = tokio::time::Instant::now();
        let mut sent = Vec::new();
        for (i, s) in at.iter().enumerate() {
            let tier = tiers[i % tiers.len()];
            tokio::time::sleep_until(t0 + Duration::from_secs_f64(*s)).await;
            sent.push(tokio::spawn(async move {
                let body = serde_json::json!({
                    "model": "llama-3.1-8b",
                    "prompt": format!("request {i} ").repeat(40),
                    "max_tokens": 60,
                    "stream": true,
                })
                .to_string();
                let r = http(
                    route,
                    "POST",
                    "/v1/completions",
                    &body,
                    &[("x-priority", tier)],
                )
                .await
                .unwrap();
                let retry = r.headers.get("retry-after").and_then(|v| v.parse().ok());
                (i, tier, r.status, retry) as Answer
            }));
        }
        let mut answers: Vec<Answer> = Vec::new();
        for t in sent {
            answers.push(t.await.unwrap());
        }
        let count = |tier: &str, status: u16| {
            answers
                .iter()
                .filter(|a| a.1 == tier && a.2 == status)
                .count()
        };
        assert!(
            answers.iter().all(|a| a.2 == 200 || a.2 == 429),
            "only served or shed: {answers:?}"
        );
        assert_eq!(
            count("critical", 429),
            0,
            "critical is never shed: {answers:?}"
        );
        assert!(
            count("sheddable", 429) > 0,
            "the spike sheds sheddable: {answers:?}"
        );
        // At any saturation sheddable's shed share is at least standard's
        // (standard starts where sheddable is shed fully), so its rate is,
        // within one request: at full overload both tiers are shed whole but
        // for the first few let in before it, and a rate over a couple of
        // dozen requests moves 1/n a request (26 standard against 24
        // sheddable, 2 of each let in, is 0.923 against 0.917).
        let n = |tier: &str| answers.iter().filter(|a| a.1 == tier).count() as f64;
        let rate = |tier: &str| count(tier, 429) as f64 / n(tier);
        assert!(
            rate("sheddable") + 1.0 / n("sheddable") >= rate("standard"),
            "sheddable is shed first: {answers:?}"
        );
        for a in answers.iter().filter(|a| a.2 == 429) {
            assert!(
                a.3.is_some_and(|s| (1..=60).contains(&s)),
                "a 429 names when to retry: {a:?}"
            );
        }
        let json =
            tokio::task::spawn_blocking(move || g.cli(&["route", "stats", "--output", "json"]))
                .await
                .unwrap()
                .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let shed = &v[0]["shed_by_tier"];
        assert_eq!(shed["critical"], 0, "{json}");
        assert_eq!(shed["sheddable"], count("sheddable", 429), "{json}");
        assert_eq!(shed["standard"], count("standard", 429), "{json}");
    });
}
