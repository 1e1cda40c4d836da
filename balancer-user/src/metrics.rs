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
    o
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
