//! `balancer weights [--explain]`.

use balancer::api::WeightsReply;

use super::table::{Align, render};

/// Per pool: a table of signals and decisions, optionally the reasoning.
pub fn weights(w: &WeightsReply, explain: bool) -> String {
    let mut out = String::new();
    if w.pools.is_empty() {
        outln!(
            out,
            "no pool has telemetry (add a [vip.telemetry] table to the configuration)"
        );
        return out;
    }
    let f = |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
    for p in &w.pools {
        outln!(
            out,
            "{}{}",
            p.vip,
            p.warning
                .as_ref()
                .map(|x| format!("  !! {x}"))
                .unwrap_or_default()
        );
        let rows: Vec<Vec<String>> = p
            .decisions
            .iter()
            .map(|d| {
                let s = d.signals.clone().unwrap_or_default();
                vec![
                    d.addr.to_string(),
                    d.weight.to_string(),
                    format!("{:.2}", d.load),
                    format!("{:.2}", d.capacity),
                    f(s.queue_waiting, 0),
                    f(s.requests_running, 0),
                    f(s.kv_cache, 2),
                    f(s.gpu_util, 2),
                    f(s.cpu, 2),
                    f(s.ttft_p95_s.map(|t| t * 1e3), 0),
                    f(s.tokens_per_s, 0),
                    if d.down.is_some() {
                        "down".into()
                    } else {
                        "up".into()
                    },
                ]
            })
            .collect();
        out.push_str(&render(HEADERS, &rows));
        if explain {
            for d in &p.decisions {
                outln!(out, "  {}: {}", d.addr, d.why);
                for c in &d.components {
                    outln!(out, "      {:<9} {:.3} x {:.2}", c.name, c.value, c.weight);
                }
            }
        }
        outln!(out);
    }
    outln!(
        out,
        "last cycle: scrape + score {:.1} ms, apply {:.1} ms",
        w.cycle_ms,
        w.apply_ms
    );
    out
}

const HEADERS: &[(&str, Align)] = &[
    ("BACKEND", Align::Left),
    ("WEIGHT", Align::Right),
    ("LOAD", Align::Right),
    ("CAPACITY", Align::Right),
    ("QUEUE", Align::Right),
    ("RUNNING", Align::Right),
    ("KV", Align::Right),
    ("GPU", Align::Right),
    ("CPU", Align::Right),
    ("TTFT P95 MS", Align::Right),
    ("TOK/S", Align::Right),
    ("STATE", Align::Left),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_pools() {
        let w = WeightsReply {
            cycle_ms: 0.0,
            apply_ms: 0.0,
            pools: vec![],
        };
        assert_eq!(
            weights(&w, true),
            "no pool has telemetry (add a [vip.telemetry] table to the configuration)\n"
        );
    }
}
