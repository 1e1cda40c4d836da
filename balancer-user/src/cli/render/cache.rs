//! `balancer cache …`.

use balancer::cache::{CacheStats, Counter, InvalidateReply};

use super::table::{Align, human, render};

/// Counters with each lookup outcome's share, then L2 state and versions.
pub fn stats(s: &CacheStats) -> String {
    let mut out = render(
        &[
            ("", Align::Left),
            ("count", Align::Right),
            ("share", Align::Right),
        ],
        &stats_rows(s),
    );
    match &s.l2 {
        Some(l) => outln!(
            out,
            "L2 {} {} (connects {}, errors {}, queued invalidations {})",
            l.url,
            if l.up { "up" } else { "DOWN: L1 only" },
            l.connects,
            l.errors,
            l.pending
        ),
        None => outln!(out, "L2 none"),
    }
    for (m, v) in &s.versions {
        outln!(out, "model {m}: version {:?}", v);
    }
    out
}

/// How a counter shows in the table.
enum Row {
    /// With its share of lookups.
    Share(&'static str),
    /// A plain count.
    Count(&'static str),
    /// A byte count, in human units.
    Bytes(&'static str),
    /// Not shown (metrics and JSON carry it).
    Hidden,
}

/// Each counter's row. A match, so that a new counter does not build until
/// it has one.
fn row(c: Counter) -> Row {
    match c {
        Counter::Hits => Row::Share("hits (L1)"),
        Counter::HitsL2 => Row::Share("hits (L2)"),
        Counter::Misses => Row::Share("misses"),
        Counter::Coalesced => Row::Share("coalesced"),
        Counter::Bypasses => Row::Count("bypasses"),
        Counter::TooLarge => Row::Count("413 too large"),
        Counter::Uncacheable => Row::Count("not cacheable"),
        Counter::BackendErrors => Row::Count("backend errors"),
        Counter::Stored => Row::Count("stored"),
        Counter::Rejected => Row::Count("refused (admission)"),
        Counter::Evictions => Row::Count("evicted"),
        Counter::Invalidated => Row::Count("invalidated"),
        Counter::BytesServed => Row::Bytes("bytes served"),
        Counter::BytesStored => Row::Hidden,
        Counter::MarkedDown => Row::Count("backends down"),
    }
}

fn stats_rows(s: &CacheStats) -> Vec<Vec<String>> {
    // Shares are of lookups: every request that asked the cache.
    let lookups: u64 = Counter::ALL
        .iter()
        .filter(|c| matches!(row(**c), Row::Share(_)))
        .map(|c| s.count(*c))
        .sum();
    let pct = |n: u64| {
        if lookups == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * n as f64 / lookups as f64)
        }
    };
    let cells = |name: &str, v: String, share: String| vec![name.to_string(), v, share];
    let mut rows: Vec<Vec<String>> = Counter::ALL
        .iter()
        .filter_map(|&c| {
            let n = s.count(c);
            match row(c) {
                Row::Share(name) => Some(cells(name, n.to_string(), pct(n))),
                Row::Count(name) => Some(cells(name, n.to_string(), String::new())),
                Row::Bytes(name) => Some(cells(name, human(n as f64), String::new())),
                Row::Hidden => None,
            }
        })
        .collect();
    rows.push(cells(
        "GPU-seconds saved",
        format!("{:.3}", s.gpu_seconds_saved),
        String::new(),
    ));
    rows.push(cells(
        "L1 entries / bytes",
        format!("{} / {}", s.entries, human(s.bytes as f64)),
        format!(
            "{:.1}% of {}",
            100.0 * s.bytes as f64 / s.budget.max(1) as f64,
            human(s.budget as f64)
        ),
    ));
    rows
}

/// What `cache invalidate` did (without the newline).
pub fn invalidated(r: &InvalidateReply) -> String {
    format!(
        "removed {} here, {} from Redis; {}",
        r.l1_removed,
        r.l2_removed,
        told(r)
    )
}

/// What `cache bump-version` did (without the newline).
pub fn bumped(model: &str, r: &InvalidateReply) -> String {
    format!(
        "{model} is now version {:?}; {} old entries purged here; {}",
        r.version,
        r.l1_removed,
        told(r)
    )
}

fn told(r: &InvalidateReply) -> &'static str {
    if r.broadcast {
        "other gateways told"
    } else {
        "Redis is down: queued for the other gateways"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages() {
        let r = InvalidateReply {
            l1_removed: 2,
            l2_removed: 3,
            broadcast: false,
            version: "v2".into(),
        };
        assert_eq!(
            invalidated(&r),
            "removed 2 here, 3 from Redis; Redis is down: queued for the other gateways"
        );
        assert_eq!(
            bumped("m", &r),
            "m is now version \"v2\"; 2 old entries purged here; Redis is down: queued for the other gateways"
        );
    }

    #[test]
    fn stats_table_is_stable() {
        let s: CacheStats = serde_json::from_str(
            r#"{"hits":1,"hits_l2":2,"misses":3,"coalesced":4,"bypasses":5,"too_large":6,
            "uncacheable":7,"backend_errors":8,"stored":9,"rejected":10,"evictions":11,
            "invalidated":12,"bytes_served":13000,"bytes_stored":14000,"marked_down":21,"gpu_seconds_saved":1.5,
            "entries":15,"bytes":16000,"budget":17000,"l2":{"url":"redis://127.0.0.1:6379",
            "up":true,"connects":18,"errors":19,"pending":20},"versions":{"m":"v1+abc"}}"#,
        )
        .unwrap();
        assert_eq!(
            stats(&s),
            concat!(
                "                           count            share\n",
                "hits (L1)                      1            10.0%\n",
                "hits (L2)                      2            20.0%\n",
                "misses                         3            30.0%\n",
                "coalesced                      4            40.0%\n",
                "bypasses                       5\n",
                "413 too large                  6\n",
                "not cacheable                  7\n",
                "backend errors                 8\n",
                "stored                         9\n",
                "refused (admission)           10\n",
                "evicted                       11\n",
                "invalidated                   12\n",
                "bytes served              13.00k\n",
                "backends down                 21\n",
                "GPU-seconds saved          1.500\n",
                "L1 entries / bytes   15 / 16.00k  94.1% of 17.00k\n",
                "L2 redis://127.0.0.1:6379 up (connects 18, errors 19, queued invalidations 20)\n",
                "model m: version \"v1+abc\"\n",
            )
        );
    }
}
