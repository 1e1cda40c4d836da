//! The Grafana dashboard (`docs/grafana/balancer.json`) against the daemon's
//! `/metrics` output: every metric and label it queries exists, and every
//! family the daemon exports has a panel. The output is the one
//! `metrics::tests::exposition_text_is_stable` pins, with every family
//! present.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::control::prom;

const DASHBOARD: &str = include_str!("../../../docs/grafana/balancer.json");
const EXPOSITION: &str = include_str!("testdata/metrics.prom");
/// Labels Prometheus adds to every scraped sample.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Each metric family the daemon exports, with its labels.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let e = prom::parse(EXPOSITION, &prom::Limits::default()).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &e.samples {
        let labels = out.entry(s.name.clone()).or_default();
        labels.extend(s.labels.iter().map(|(k, _)| k.clone()));
    }
    out
}

/// Every PromQL text in the dashboard: panel targets and variable queries.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| queries(x, out)),
        _ => {}
    }
}

/// Identifiers in `q` as (start, text), skipping quoted strings.
fn words(q: &str) -> Vec<(usize, &str)> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((start, &q[start..i]));
            }
            _ => i += 1,
        }
    }
    out
}

/// The label names of the matcher list opening at `q[at]` (a `{`).
fn matcher_labels(q: &str, at: usize) -> Vec<&str> {
    let end = at + q[at..].find('}').expect("an unclosed matcher");
    words(&q[at + 1..end]).into_iter().map(|(_, w)| w).collect()
}

/// The labels of `by (…)`, `without (…)`, `on (…)` and `ignoring (…)`.
fn grouping_labels(q: &str) -> Vec<&str> {
    let ws = words(q);
    let mut out = Vec::new();
    for (i, (start, w)) in ws.iter().enumerate() {
        if !matches!(*w, "by" | "without" | "on" | "ignoring") {
            continue;
        }
        let rest = q[start + w.len()..].trim_start();
        if !rest.starts_with('(') {
            continue;
        }
        let close = q[*start..].find(')').map(|c| start + c).unwrap_or(q.len());
        out.extend(
            ws[i + 1..]
                .iter()
                .take_while(|(s, _)| *s < close)
                .map(|(_, w)| *w),
        );
    }
    out
}

#[test]
fn every_metric_and_label_the_dashboard_queries_exists() {
    let exported = exported();
    let dash: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut qs = Vec::new();
    queries(&dash, &mut qs);
    assert!(qs.len() >= 20, "only {} queries found", qs.len());
    let mut used = BTreeSet::new();
    for q in &qs {
        let mut labels_here: BTreeSet<&str> = TARGET_LABELS.into();
        for (start, w) in words(q) {
            if !w.starts_with("balancer_") {
                continue;
            }
            let Some(labels) = exported.get(w) else {
                panic!("{q}\n  queries {w}, which /metrics does not export");
            };
            used.insert(w.to_string());
            labels_here.extend(labels.iter().map(String::as_str));
            if q[start + w.len()..].starts_with('{') {
                for l in matcher_labels(q, start + w.len()) {
                    assert!(
                        labels.contains(l) || TARGET_LABELS.contains(&l),
                        "{q}\n  matches label {l:?}, which {w} does not carry"
                    );
                }
            }
        }
        for l in grouping_labels(q) {
            assert!(
                labels_here.contains(l),
                "{q}\n  groups by {l:?}, which none of its metrics carries"
            );
        }
    }
    let missing: Vec<_> = exported.keys().filter(|k| !used.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "families /metrics exports that no panel shows: {missing:?}"
    );
}

#[test]
fn the_checker_catches_what_it_should() {
    let q = r#"sum by (vip, tier) (rate(balancer_vip_packets_total{instance=~"a,b", x="}"}[5m]))"#;
    let ws: Vec<_> = words(q).into_iter().map(|(_, w)| w).collect();
    assert!(
        ws.contains(&"balancer_vip_packets_total") && !ws.contains(&"a"),
        "{ws:?}"
    );
    let at = q.find('{').unwrap();
    assert_eq!(matcher_labels(q, at), ["instance", "x"]);
    assert_eq!(grouping_labels(q), ["vip", "tier"]);
}
