//! The daemon's own Prometheus endpoint: per-VIP and per-backend counters read
//! from the per-CPU maps, the global pass/drop/path counters, and weights.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;

use crate::{
    api::{BackendStatsRow, RouteStatsRow, StatsReply, VipStatsRow},
    cache::{CacheStats, Counter},
    http,
};

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What a family's `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family: its name, type and `# HELP` text.
#[derive(Debug)]
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

impl Family {
    const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            help,
        }
    }

    const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            help,
        }
    }

    fn header(&self, o: &mut String) {
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(o, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(o, "# TYPE {} {kind}", self.name);
    }
}

/// The data path's global counters, labelled by their names.
const EVENTS: Family = Family::counter(
    "balancer_dataplane_events_total",
    "Data-path events by kind: each pass and drop reason, connection-table hits and misses, packets sent per mode, ICMP replies.",
);

/// What a per-VIP or per-backend family reads from its row.
type Read<Row> = fn(&Row) -> u64;

/// Per-VIP families and what each reads.
const VIP_FAMILIES: &[(Family, Read<VipStatsRow>)] = &[
    (
        Family::counter("balancer_vip_packets_total", "Packets forwarded per VIP."),
        |v| v.packets,
    ),
    (
        Family::counter(
            "balancer_vip_bytes_total",
            "Bytes forwarded per VIP (L3, before encapsulation).",
        ),
        |v| v.bytes,
    ),
    (
        Family::counter(
            "balancer_vip_new_flows_total",
            "Connections placed per VIP.",
        ),
        |v| v.new_flows,
    ),
];

/// Per-backend families and what each reads.
const BACKEND_FAMILIES: &[(Family, Read<BackendStatsRow>)] = &[
    (
        Family::counter(
            "balancer_backend_packets_total",
            "Packets forwarded per backend.",
        ),
        |b| b.packets,
    ),
    (
        Family::counter(
            "balancer_backend_bytes_total",
            "Bytes forwarded per backend.",
        ),
        |b| b.bytes,
    ),
    (
        Family::counter(
            "balancer_backend_new_flows_total",
            "Connections placed per backend.",
        ),
        |b| b.new_flows,
    ),
    (
        Family::gauge("balancer_backend_weight", "Configured weight."),
        |b| b.weight as u64,
    ),
    (
        Family::gauge(
            "balancer_backend_effective_weight",
            "Weight in the ring (0 when drained or down).",
        ),
        |b| b.effective_weight as u64,
    ),
    (
        Family::gauge("balancer_backend_ring_slots", "Maglev ring slots held."),
        |b| b.ring_slots,
    ),
    (
        Family::gauge("balancer_backend_up", "1 unless the backend is down."),
        |b| b.down.is_none() as u64,
    ),
    (
        Family::gauge(
            "balancer_backend_telemetry_unknown",
            "1 when the backend's last scrape held no signal its kind is known by (empty /metrics, wrong kind): it counts as saturated.",
        ),
        |b| b.telemetry_unknown as u64,
    ),
];

/// Where a cache sample's value comes from.
enum CacheValue {
    /// One of the cache's event counters.
    Count(Counter),
    /// Anything else; `None` leaves the sample out (a family with no sample
    /// is left out whole, as the L2's are without an L2).
    Of(fn(&CacheStats) -> Option<f64>),
}

use CacheValue::{Count, Of};

/// The cache's families, each with its samples' labels and values. Every
/// [`Counter`] appears exactly once (a test checks).
const CACHE_FAMILIES: &[(Family, &[(&str, CacheValue)])] = &[
    (
        Family::counter(
            "balancer_cache_requests_total",
            "Requests through the cache routes by result: hit (L1), hit_l2, miss, coalesced (waited on an identical miss), bypass, too_large (413).",
        ),
        &[
            (r#"{result="hit"}"#, Count(Counter::Hits)),
            (r#"{result="hit_l2"}"#, Count(Counter::HitsL2)),
            (r#"{result="miss"}"#, Count(Counter::Misses)),
            (r#"{result="coalesced"}"#, Count(Counter::Coalesced)),
            (r#"{result="bypass"}"#, Count(Counter::Bypasses)),
            (r#"{result="too_large"}"#, Count(Counter::TooLarge)),
        ],
    ),
    (
        Family::counter(
            "balancer_cache_bytes_total",
            "Response body bytes served from the cache and stored into it.",
        ),
        &[
            (r#"{direction="served"}"#, Count(Counter::BytesServed)),
            (r#"{direction="stored"}"#, Count(Counter::BytesStored)),
        ],
    ),
    (
        Family::counter(
            "balancer_cache_entries_total",
            "Entry events: stored, refused by admission, invalidated; responses not cacheable.",
        ),
        &[
            (r#"{event="stored"}"#, Count(Counter::Stored)),
            (r#"{event="refused"}"#, Count(Counter::Rejected)),
            (r#"{event="invalidated"}"#, Count(Counter::Invalidated)),
            (r#"{event="uncacheable"}"#, Count(Counter::Uncacheable)),
        ],
    ),
    (
        Family::counter(
            "balancer_cache_evictions_total",
            "Entries evicted to make room.",
        ),
        &[("", Count(Counter::Evictions))],
    ),
    (
        Family::counter(
            "balancer_cache_gpu_seconds_saved_total",
            "Backend time saved by hits: each hit counts the backend time of the miss that filled it.",
        ),
        &[("", Of(|c| Some(c.gpu_seconds_saved)))],
    ),
    (
        Family::counter(
            "balancer_cache_backend_errors_total",
            "Backend failures and timeouts on cache routes.",
        ),
        &[("", Count(Counter::BackendErrors))],
    ),
    (
        Family::counter(
            "balancer_cache_backends_marked_down_total",
            "Times a cache route left a backend out after failures in a row (passive health).",
        ),
        &[("", Count(Counter::MarkedDown))],
    ),
    (
        Family::gauge(
            "balancer_cache_memory_bytes",
            "L1 bytes held and the budget.",
        ),
        &[
            (r#"{kind="used"}"#, Of(|c| Some(c.bytes as f64))),
            (r#"{kind="budget"}"#, Of(|c| Some(c.budget as f64))),
        ],
    ),
    (
        Family::gauge("balancer_cache_entries", "Entries in L1."),
        &[("", Of(|c| Some(c.entries as f64)))],
    ),
    (
        Family::gauge(
            "balancer_cache_l2_up",
            "1 while Redis (the L2 and invalidation bus) is connected.",
        ),
        &[("", Of(|c| c.l2.as_ref().map(|l| l.up as u64 as f64)))],
    ),
    (
        Family::gauge(
            "balancer_cache_l2_pending_invalidations",
            "Invalidations queued while Redis is down.",
        ),
        &[("", Of(|c| c.l2.as_ref().map(|l| l.pending as f64)))],
    ),
];

/// Renders the text exposition format.
pub fn render(s: &StatsReply) -> String {
    let mut o = String::new();
    EVENTS.header(&mut o);
    for (k, v) in &s.global {
        let _ = writeln!(o, "{}{{event=\"{}\"}} {v}", EVENTS.name, escape(k));
    }
    for (f, get) in VIP_FAMILIES {
        f.header(&mut o);
        for v in &s.vips {
            let vip = escape(&v.vip.to_string());
            let _ = writeln!(o, "{}{{vip=\"{vip}\"}} {}", f.name, get(v));
        }
    }
    for (f, get) in BACKEND_FAMILIES {
        f.header(&mut o);
        for v in &s.vips {
            let vip = escape(&v.vip.to_string());
            for b in &v.backends {
                let (name, addr) = (f.name, b.addr);
                let _ = writeln!(o, "{name}{{vip=\"{vip}\",backend=\"{addr}\"}} {}", get(b));
            }
        }
    }
    if let Some(c) = &s.cache {
        render_cache(c, &mut o);
    }
    // A daemon without routes has no route families at all.
    for (f, get) in ROUTE_FAMILIES.iter().filter(|_| !s.routes.is_empty()) {
        f.header(&mut o);
        for r in &s.routes {
            let route = escape(&r.route);
            for (tier, n) in get(r) {
                let (name, tier) = (f.name, escape(tier));
                let _ = writeln!(o, "{name}{{route=\"{route}\",tier=\"{tier}\"}} {n}");
            }
        }
    }
    if !s.routes.is_empty() {
        render_latency(&s.routes, &mut o);
    }
    o
}

/// The answer-time histograms: cumulative buckets, sum and count per route
/// and tier.
fn render_latency(routes: &[RouteStatsRow], o: &mut String) {
    let f = &ROUTE_LATENCY;
    f.header(o);
    for r in routes {
        let route = escape(&r.route);
        for (tier, h) in &r.latency_by_tier {
            let (name, tier) = (f.name, escape(tier));
            let mut seen = 0;
            let bounds = crate::route::latency::BOUNDS_S
                .iter()
                .map(|b| b.to_string());
            for (le, c) in bounds.chain(["+Inf".to_string()]).zip(&h.counts) {
                seen += c;
                let _ = writeln!(
                    o,
                    "{name}_bucket{{route=\"{route}\",tier=\"{tier}\",le=\"{le}\"}} {seen}"
                );
            }
            let _ = writeln!(
                o,
                "{name}_sum{{route=\"{route}\",tier=\"{tier}\"}} {}",
                h.sum_s
            );
            let _ = writeln!(
                o,
                "{name}_count{{route=\"{route}\",tier=\"{tier}\"}} {seen}"
            );
        }
    }
}

/// One of a route's per-tier counts.
type PerTier = fn(&RouteStatsRow) -> &BTreeMap<String, u64>;

/// The route families: requests per route and priority tier, and of them
/// those shed.
const ROUTE_FAMILIES: &[(Family, PerTier)] = &[
    (
        Family::counter(
            "balancer_route_requests_total",
            "Requests through each route by priority tier (critical, standard, sheddable), counted on arrival.",
        ),
        |r| &r.requests_by_tier,
    ),
    (
        Family::counter(
            "balancer_route_shed_total",
            "Requests each route shed (429 with Retry-After) by priority tier, its pool saturated.",
        ),
        |r| &r.shed_by_tier,
    ),
    (
        Family::counter(
            "balancer_route_stale_total",
            "Requests each route would have shed but answered from a stale cache entry (X-Cache: STALE), by priority tier.",
        ),
        |r| &r.stale_by_tier,
    ),
    (
        Family::counter(
            "balancer_route_fallback_total",
            "Requests each route would have shed but sent to its fallback pool (X-Balancer-Fallback), by priority tier.",
        ),
        |r| &r.fallback_by_tier,
    ),
    (
        Family::counter(
            "balancer_route_queued_total",
            "Requests each route made wait in its queue for headroom (lower tiers, its pool full), by priority tier, whether admitted in the end or not.",
        ),
        |r| &r.queued_by_tier,
    ),
];

/// The answer-time histogram's family.
const ROUTE_LATENCY: Family = Family {
    name: "balancer_route_response_seconds",
    kind: Kind::Histogram,
    help: "Time from a request's arrival at a route to its answer's headers (a queue wait included; about the first token when streamed), by priority tier.",
};

fn render_cache(c: &CacheStats, o: &mut String) {
    for (f, samples) in CACHE_FAMILIES {
        let values: Vec<(&str, f64)> = samples
            .iter()
            .filter_map(|(labels, v)| {
                let v = match v {
                    Count(k) => Some(c.count(*k) as f64),
                    Of(get) => get(c),
                };
                v.map(|v| (*labels, v))
            })
            .collect();
        if values.is_empty() {
            continue;
        }
        f.header(o);
        for (labels, v) in values {
            let _ = writeln!(o, "{}{labels} {v}", f.name);
        }
    }
}

/// Source of the numbers behind each scrape.
pub type StatsSource = Arc<dyn Fn() -> Result<StatsReply, String> + Send + Sync>;

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, source: StatsSource) {
    http::serve(listener, http::Settings::new("metrics"), move |req| {
        let source = source.clone();
        async move { answer(req.uri().path(), source).await }
    })
    .await
}

async fn answer(path: &str, source: StatsSource) -> Response<Full<Bytes>> {
    let resp = if path != "/metrics" {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
    } else {
        match tokio::task::spawn_blocking(move || source()).await {
            Ok(Ok(s)) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(render(&s)))),
            Ok(Err(e)) => Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Full::new(Bytes::from(e))),
            Err(e) => Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Full::new(Bytes::from(e.to_string()))),
        }
    };
    resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_metrics_are_valid_exposition_text() {
        let cache = crate::cache::Cache::new(crate::cache::Settings::default()).unwrap();
        let mut stats = cache.stats();
        stats.hits = 7;
        stats.gpu_seconds_saved = 1.25;
        stats.l2 = Some(crate::cache::L2Stats {
            url: "redis://127.0.0.1:1".into(),
            up: false,
            connects: 0,
            errors: 0,
            pending: 2,
        });
        let s = StatsReply {
            at_ms: 0,
            global: Default::default(),
            vips: Vec::new(),
            cache: Some(stats),
            routes: Vec::new(),
        };
        let text = render(&s);
        let e =
            crate::control::prom::parse(&text, &crate::control::prom::Limits::default()).unwrap();
        let hits = e
            .samples
            .iter()
            .find(|x| {
                x.name == "balancer_cache_requests_total"
                    && x.labels.iter().any(|(k, v)| k == "result" && v == "hit")
            })
            .unwrap();
        assert_eq!(hits.value, 7.0);
        let saved = e
            .samples
            .iter()
            .find(|x| x.name == "balancer_cache_gpu_seconds_saved_total")
            .unwrap();
        assert_eq!(saved.value, 1.25);
        assert!(text.contains("balancer_cache_l2_pending_invalidations 2"));
    }

    #[test]
    fn exposition_text_is_stable() {
        // Dashboards and alerts read these names, labels and help texts.
        let backend = |last: u8, n: u64, down: Option<&str>| BackendStatsRow {
            addr: [10, 0, 1, last].into(),
            weight: 2,
            effective_weight: if down.is_some() { 0 } else { 2 },
            ring_slots: 7 * n,
            packets: 10 * n,
            bytes: 1000 * n,
            new_flows: n,
            down: down.map(str::to_string),
            telemetry_unknown: last == 2,
        };
        let s = StatsReply {
            at_ms: 0,
            global: [("lru_hit".to_string(), 5), ("pass_non_ip".to_string(), 3)].into(),
            vips: vec![VipStatsRow {
                vip: "10.0.0.1:80/tcp".parse().unwrap(),
                packets: 30,
                bytes: 3000,
                new_flows: 3,
                backends: vec![backend(1, 1, None), backend(2, 2, Some("health"))],
            }],
            cache: Some(crate::cache::tests::sample_stats()),
            routes: vec![RouteStatsRow {
                route: "openai".into(),
                requests_by_tier: [("critical".to_string(), 2), ("sheddable".to_string(), 9)]
                    .into(),
                shed_by_tier: [("critical".to_string(), 0), ("sheddable".to_string(), 4)].into(),
                stale_by_tier: [("sheddable".to_string(), 2)].into(),
                fallback_by_tier: [("sheddable".to_string(), 1)].into(),
                queued_by_tier: [("standard".to_string(), 3)].into(),
                latency_by_tier: [(
                    "critical".to_string(),
                    crate::route::latency::Histogram {
                        counts: vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
                        sum_s: 0.75,
                    },
                )]
                .into(),
                placements: Vec::new(),
                prediction_mape: [None; 2],
            }],
        };
        assert_eq!(render(&s), include_str!("testdata/metrics.prom"));
    }

    #[test]
    fn every_cache_counter_has_one_sample() {
        for &k in Counter::ALL {
            let n = CACHE_FAMILIES
                .iter()
                .flat_map(|(_, samples)| samples.iter())
                .filter(|(_, v)| matches!(v, Count(c) if *c == k))
                .count();
            assert_eq!(n, 1, "{k:?}");
        }
    }
}
