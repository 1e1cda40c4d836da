//! `balancer route stats` and `balancer route explain`.

use balancer::{
    api::RouteStatsRow,
    route::{
        latency::{BOUNDS_S, Histogram},
        tier::Tier,
    },
};

use super::table::{Align, render};

/// Requests and shed requests per route and tier, one row a tier.
pub fn stats(rows: &[RouteStatsRow]) -> String {
    if rows.is_empty() {
        return "no routes (the daemon's configuration has no [[route]])\n".into();
    }
    let headers = [
        ("route", Align::Left),
        ("tier", Align::Left),
        ("requests", Align::Right),
        ("shed", Align::Right),
        ("stale", Align::Right),
        ("fallback", Align::Right),
        ("queued", Align::Right),
        ("p50 ms", Align::Right),
        ("p99 ms", Align::Right),
    ];
    let get = |m: &std::collections::BTreeMap<String, u64>, t: Tier| {
        m.get(t.label()).copied().unwrap_or(0).to_string()
    };
    let body: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|r| {
            Tier::ALL.iter().map(move |t| {
                vec![
                    r.route.clone(),
                    t.label().to_string(),
                    get(&r.requests_by_tier, *t),
                    get(&r.shed_by_tier, *t),
                    get(&r.stale_by_tier, *t),
                    get(&r.fallback_by_tier, *t),
                    get(&r.queued_by_tier, *t),
                    at_most_ms(r.latency_by_tier.get(t.label()), 0.5),
                    at_most_ms(r.latency_by_tier.get(t.label()), 0.99),
                ]
            })
        })
        .collect();
    let mut out = String::from(
        "requests by priority tier since the daemon started; of those admission refused: shed (429), answered stale (X-Cache: STALE), sent to the fallback pool; those that waited in the queue; time to the answer's headers (at most, by histogram bucket)\n",
    );
    out.push_str(&render(&headers, &body));
    out
}

/// The bucket bound under which quantile `q` of `h` lies, in ms (`-`: no
/// answers; `>30000`: above the last bound).
fn at_most_ms(h: Option<&Histogram>, q: f64) -> String {
    match h.and_then(|h| h.quantile(q)) {
        None => "-".into(),
        Some(s) if s.is_infinite() => format!(">{}", BOUNDS_S[BOUNDS_S.len() - 1] * 1000.0),
        Some(s) => format!("{}", s * 1000.0),
    }
}

/// Each route's last `aware` placements, newest first, with the cost
/// model's error so far.
pub fn explain(rows: &[RouteStatsRow]) -> String {
    if rows.is_empty() {
        return "no routes (the daemon's configuration has no [[route]])\n".into();
    }
    let headers = [
        ("route", Align::Left),
        ("backend", Align::Left),
        ("why", Align::Left),
        ("model", Align::Left),
        ("heavy", Align::Left),
        ("of", Align::Right),
        ("prompt tok", Align::Right),
        ("uncached", Align::Right),
        ("prefix blocks", Align::Right),
        ("prefill ahead", Align::Right),
        ("TTFT pred s", Align::Right),
        ("actual s", Align::Right),
        ("e2e pred s", Align::Right),
    ];
    let secs = |v: f64| format!("{v:.3}");
    let body: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|r| {
            r.placements.iter().map(move |p| {
                vec![
                    r.route.clone(),
                    p.backend.clone(),
                    p.reason.clone(),
                    p.model.clone(),
                    if p.heavy { "yes" } else { "no" }.into(),
                    p.candidates.to_string(),
                    p.prompt_tokens.to_string(),
                    p.uncached_tokens.to_string(),
                    p.matched_blocks.to_string(),
                    p.prefill_ahead.to_string(),
                    secs(p.predicted_ttft_s),
                    p.actual_ttft_s.map_or("-".into(), secs),
                    secs(p.predicted_e2e_s),
                ]
            })
        })
        .collect();
    let mut out = String::from(
        "the last requests placed by pick = \"aware\", newest first (why: prefix = holds the prompt's prefix and is not saturated, key = the cache key's backend, fastest = earliest predicted first token, earliest = a heavy request's earliest predicted completion, load = every server predicted slower than loading the model here, explore = idle and unmeasured for a while; of = candidate backends)\n",
    );
    if body.is_empty() {
        out.push_str("no placements yet (no route picks aware, or none has had a request)\n");
    } else {
        out.push_str(&render(&headers, &body));
    }
    let pct = |m: Option<f64>| m.map_or("-".into(), |m| format!("{:.1}%", 100.0 * m));
    for r in rows.iter().filter(|r| !r.placements.is_empty()) {
        out.push_str(&format!(
            "{}: cost model error (MAPE) so far: TTFT {}, end to end {}\n",
            r.route,
            pct(r.prediction_mape[0]),
            pct(r.prediction_mape[1])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_aligned_row_a_route_and_tier() {
        let row = RouteStatsRow {
            route: "openai".into(),
            requests_by_tier: [
                ("critical".to_string(), 12),
                ("sheddable".to_string(), 3400),
            ]
            .into(),
            shed_by_tier: [("sheddable".to_string(), 700)].into(),
            stale_by_tier: [("sheddable".to_string(), 5)].into(),
            queued_by_tier: [("sheddable".to_string(), 40)].into(),
            latency_by_tier: [(
                "critical".to_string(),
                Histogram {
                    counts: [vec![0; 4], vec![11], vec![0; 9], vec![1]].concat(),
                    sum_s: 40.3,
                },
            )]
            .into(),
            ..Default::default()
        };
        assert_eq!(
            stats(&[row]),
            "requests by priority tier since the daemon started; of those admission refused: shed (429), answered stale (X-Cache: STALE), sent to the fallback pool; those that waited in the queue; time to the answer's headers (at most, by histogram bucket)\n\
             route   tier       requests  shed  stale  fallback  queued  p50 ms  p99 ms\n\
             openai  critical         12     0      0         0       0      25  >30000\n\
             openai  standard          0     0      0         0       0       -       -\n\
             openai  sheddable      3400   700      5         0      40       -       -\n"
        );
        assert!(stats(&[]).starts_with("no routes"));
    }

    #[test]
    fn explain_shows_each_placement_and_the_error() {
        let p = balancer::route::explain::Placement {
            at_ms: 1,
            backend: "10.0.0.1:8000".into(),
            reason: "prefix".into(),
            model: "llama".into(),
            heavy: false,
            candidates: 3,
            prompt_tokens: 2250,
            uncached_tokens: 250,
            matched_blocks: 31,
            prefill_ahead: 0,
            predicted_ttft_s: 0.081,
            predicted_e2e_s: 0.4,
            actual_ttft_s: Some(0.07),
        };
        let row = RouteStatsRow {
            route: "chat".into(),
            requests_by_tier: Default::default(),
            shed_by_tier: Default::default(),
            stale_by_tier: Default::default(),
            placements: vec![p],
            prediction_mape: [Some(0.12), None],
            ..Default::default()
        };
        let out = explain(&[row]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].starts_with("route  backend"), "{out}");
        assert!(
            lines[2].split_whitespace().eq(
                "chat 10.0.0.1:8000 prefix llama no 3 2250 250 31 0 0.081 0.070 0.400".split(' ')
            ),
            "{out}"
        );
        assert_eq!(
            lines[3],
            "chat: cost model error (MAPE) so far: TTFT 12.0%, end to end -"
        );
    }
}
