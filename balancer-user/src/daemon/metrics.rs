//! The daemon's own Prometheus endpoint: per-VIP and per-backend counters read
//! from the per-CPU maps, the global pass/drop/path counters, and weights.

use std::{convert::Infallible, fmt::Write as _, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

use crate::api::StatsReply;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the text exposition format.
pub fn render(s: &StatsReply) -> String {
    let mut o = String::new();
    let family = |name: &str, kind: &str, help: &str, o: &mut String| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
    };
    family(
        "balancer_dataplane_events_total",
        "counter",
        "Data-path events by kind: each pass and drop reason, connection-table hits and misses, packets sent per mode, ICMP replies.",
        &mut o,
    );
    for (k, v) in &s.global {
        let _ = writeln!(
            o,
            "balancer_dataplane_events_total{{event=\"{}\"}} {v}",
            escape(k)
        );
    }
    for (metric, help, get) in [
        (
            "balancer_vip_packets_total",
            "Packets forwarded per VIP.",
            0,
        ),
        (
            "balancer_vip_bytes_total",
            "Bytes forwarded per VIP (L3, before encapsulation).",
            1,
        ),
        (
            "balancer_vip_new_flows_total",
            "Connections placed per VIP.",
            2,
        ),
    ] {
        family(metric, "counter", help, &mut o);
        for v in &s.vips {
            let val = [v.packets, v.bytes, v.new_flows][get];
            let _ = writeln!(
                o,
                "{metric}{{vip=\"{}\"}} {val}",
                escape(&v.vip.to_string())
            );
        }
    }
    for (metric, kind, help, get) in [
        (
            "balancer_backend_packets_total",
            "counter",
            "Packets forwarded per backend.",
            0,
        ),
        (
            "balancer_backend_bytes_total",
            "counter",
            "Bytes forwarded per backend.",
            1,
        ),
        (
            "balancer_backend_new_flows_total",
            "counter",
            "Connections placed per backend.",
            2,
        ),
        ("balancer_backend_weight", "gauge", "Configured weight.", 3),
        (
            "balancer_backend_effective_weight",
            "gauge",
            "Weight in the ring (0 when drained or down).",
            4,
        ),
        (
            "balancer_backend_ring_slots",
            "gauge",
            "Maglev ring slots held.",
            5,
        ),
        (
            "balancer_backend_up",
            "gauge",
            "1 unless the backend is down.",
            6,
        ),
    ] {
        family(metric, kind, help, &mut o);
        for v in &s.vips {
            for b in &v.backends {
                let val = [
                    b.packets,
                    b.bytes,
                    b.new_flows,
                    b.weight as u64,
                    b.effective_weight as u64,
                    b.ring_slots,
                    b.down.is_none() as u64,
                ][get];
                let _ = writeln!(
                    o,
                    "{metric}{{vip=\"{}\",backend=\"{}\"}} {val}",
                    escape(&v.vip.to_string()),
                    b.addr
                );
            }
        }
    }
    if let Some(c) = &s.cache {
        render_cache(c, &mut o);
    }
    o
}

fn render_cache(c: &crate::cache::CacheStats, o: &mut String) {
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    family(
        "balancer_cache_requests_total",
        "counter",
        "Requests through the cache routes by result: hit (L1), hit_l2, miss, coalesced (waited on an identical miss), bypass, too_large (413).",
        &[
            ("{result=\"hit\"}", c.hits as f64),
            ("{result=\"hit_l2\"}", c.hits_l2 as f64),
            ("{result=\"miss\"}", c.misses as f64),
            ("{result=\"coalesced\"}", c.coalesced as f64),
            ("{result=\"bypass\"}", c.bypasses as f64),
            ("{result=\"too_large\"}", c.too_large as f64),
        ],
    );
    family(
        "balancer_cache_bytes_total",
        "counter",
        "Response body bytes served from the cache and stored into it.",
        &[
            ("{direction=\"served\"}", c.bytes_served as f64),
            ("{direction=\"stored\"}", c.bytes_stored as f64),
        ],
    );
    family(
        "balancer_cache_entries_total",
        "counter",
        "Entry events: stored, refused by admission, invalidated; responses not cacheable.",
        &[
            ("{event=\"stored\"}", c.stored as f64),
            ("{event=\"refused\"}", c.rejected as f64),
            ("{event=\"invalidated\"}", c.invalidated as f64),
            ("{event=\"uncacheable\"}", c.uncacheable as f64),
        ],
    );
    family(
        "balancer_cache_evictions_total",
        "counter",
        "Entries evicted to make room.",
        &[("", c.evictions as f64)],
    );
    family(
        "balancer_cache_gpu_seconds_saved_total",
        "counter",
        "Backend time saved by hits: each hit counts the backend time of the miss that filled it.",
        &[("", c.gpu_seconds_saved)],
    );
    family(
        "balancer_cache_backend_errors_total",
        "counter",
        "Backend failures and timeouts on cache routes.",
        &[("", c.backend_errors as f64)],
    );
    family(
        "balancer_cache_memory_bytes",
        "gauge",
        "L1 bytes held and the budget.",
        &[
            ("{kind=\"used\"}", c.bytes as f64),
            ("{kind=\"budget\"}", c.budget as f64),
        ],
    );
    family(
        "balancer_cache_entries",
        "gauge",
        "Entries in L1.",
        &[("", c.entries as f64)],
    );
    if let Some(l2) = &c.l2 {
        family(
            "balancer_cache_l2_up",
            "gauge",
            "1 while Redis (the L2 and invalidation bus) is connected.",
            &[("", l2.up as u64 as f64)],
        );
        family(
            "balancer_cache_l2_pending_invalidations",
            "gauge",
            "Invalidations queued while Redis is down.",
            &[("", l2.pending as f64)],
        );
    }
}

/// Source of the numbers behind each scrape.
pub type StatsSource = Arc<dyn Fn() -> Result<StatsReply, String> + Send + Sync>;

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(listener: TcpListener, source: StatsSource) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let source = source.clone();
                async move {
                    let resp = if req.uri().path() != "/metrics" {
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
                    Ok::<_, Infallible>(
                        resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
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
        use crate::api::{BackendStatsRow, VipStatsRow};
        let backend = |last: u8, n: u64, down: Option<&str>| BackendStatsRow {
            addr: [10, 0, 1, last].into(),
            weight: 2,
            effective_weight: if down.is_some() { 0 } else { 2 },
            ring_slots: 7 * n,
            packets: 10 * n,
            bytes: 1000 * n,
            new_flows: n,
            down: down.map(str::to_string),
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
        };
        assert_eq!(render(&s), include_str!("testdata/metrics.prom"));
    }
}
