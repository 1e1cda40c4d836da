//! `balancer agent`: the exporter run on backend hosts.
//!
//! It reports host CPU, memory, network and TCP retransmits from `/proc`
//! under node_exporter's names, and, when an NVIDIA driver is present, GPU
//! utilisation, memory and power through NVML under DCGM exporter's names,
//! so the `node` and `dcgm` presets read it. NVML is loaded at run time: without a GPU (or driver) the
//! GPU series are simply absent.

pub mod nvml;

use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio::net::TcpListener;

use self::nvml::Nvml;
use crate::http;

/// Errors reading host statistics.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A `/proc` file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &str) -> Result<String, AgentError> {
    std::fs::read_to_string(path).map_err(|source| AgentError::Read {
        path: path.to_string(),
        source,
    })
}

/// Renders `/proc/stat` CPU times as `node_cpu_seconds_total`.
pub fn cpu_metrics(stat: &str, ticks_per_sec: f64, o: &mut String) {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let _ = writeln!(
        o,
        "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode."
    );
    let _ = writeln!(o, "# TYPE node_cpu_seconds_total counter");
    for line in stat.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(cpu) = name.strip_prefix("cpu").filter(|n| !n.is_empty()) else {
            continue;
        };
        for (mode, v) in MODES.iter().zip(it) {
            if let Ok(t) = v.parse::<f64>() {
                let _ = writeln!(
                    o,
                    "node_cpu_seconds_total{{cpu=\"{cpu}\",mode=\"{mode}\"}} {}",
                    t / ticks_per_sec
                );
            }
        }
    }
}

/// Renders `/proc/meminfo` as node_exporter's memory gauges.
pub fn mem_metrics(meminfo: &str, o: &mut String) {
    for line in meminfo.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let key = k.trim_end_matches(':');
        if !matches!(
            key,
            "MemTotal" | "MemAvailable" | "MemFree" | "Cached" | "Buffers"
        ) {
            continue;
        }
        if let Ok(kb) = v.parse::<f64>() {
            let name = format!("node_memory_{key}_bytes");
            let _ = writeln!(o, "# TYPE {name} gauge\n{name} {}", kb * 1024.0);
        }
    }
}

/// Renders `/proc/net/dev` as node_exporter's network counters.
pub fn net_metrics(dev: &str, o: &mut String) {
    let mut rx = String::new();
    let mut tx = String::new();
    for line in dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let name = name.trim();
        let _ = writeln!(
            rx,
            "node_network_receive_bytes_total{{device=\"{name}\"}} {}",
            f[0]
        );
        let _ = writeln!(
            tx,
            "node_network_transmit_bytes_total{{device=\"{name}\"}} {}",
            f[8]
        );
    }
    let _ = writeln!(
        o,
        "# TYPE node_network_receive_bytes_total counter\n{rx}# TYPE node_network_transmit_bytes_total counter\n{tx}"
    );
}

/// Renders `/proc/net/snmp`'s TCP segment counters under node_exporter's
/// netstat names (what the `node` preset reads for loss).
pub fn tcp_metrics(snmp: &str, o: &mut String) {
    // Two lines start `Tcp:`: the field names, then their values.
    let mut rows = snmp.lines().filter_map(|l| l.strip_prefix("Tcp:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        return;
    };
    for (k, v) in names.split_whitespace().zip(values.split_whitespace()) {
        if matches!(k, "OutSegs" | "RetransSegs")
            && let Ok(n) = v.parse::<f64>()
        {
            let name = format!("node_netstat_Tcp_{k}");
            let _ = writeln!(o, "# TYPE {name} untyped\n{name} {n}");
        }
    }
}

/// One scrape's worth of metrics.
pub fn render(nvml: Option<&Nvml>) -> Result<String, AgentError> {
    let mut o = String::new();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    cpu_metrics(
        &read("/proc/stat")?,
        if hz > 0 { hz as f64 } else { 100.0 },
        &mut o,
    );
    mem_metrics(&read("/proc/meminfo")?, &mut o);
    net_metrics(&read("/proc/net/dev")?, &mut o);
    tcp_metrics(&read("/proc/net/snmp")?, &mut o);
    if let Some(n) = nvml {
        let gpus = n.devices();
        if !gpus.is_empty() {
            for (name, help) in [
                ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
                ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
                ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
                ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
            ] {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
                for g in &gpus {
                    let v = match name {
                        "DCGM_FI_DEV_GPU_UTIL" => g.util_percent as f64,
                        "DCGM_FI_DEV_FB_USED" => g.mem_used as f64 / 1048576.0,
                        "DCGM_FI_DEV_FB_FREE" => g.mem_free as f64 / 1048576.0,
                        _ => g.power_mw as f64 / 1000.0,
                    };
                    let _ = writeln!(o, "{name}{{gpu=\"{}\",UUID=\"{}\"}} {v}", g.index, g.uuid);
                }
            }
        }
    }
    Ok(o)
}

/// Serves `/metrics` until the process ends.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let nvml = Arc::new(Nvml::load());
    match &*nvml {
        Some(n) => tracing::info!(gpus = n.devices().len(), "NVML loaded"),
        None => tracing::info!("no NVML (no NVIDIA driver): exporting host metrics only"),
    }
    let listener = TcpListener::bind(listen).await?;
    http::serve(listener, http::Settings::new("agent"), move |_req| {
        answer(nvml.clone())
    })
    .await;
    Ok(())
}

/// The metrics, whatever the path: nothing else is served here.
async fn answer(nvml: Arc<Option<Nvml>>) -> Response<Full<Bytes>> {
    let body = tokio::task::spawn_blocking(move || render(nvml.as_ref().as_ref()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let resp = match body {
        Ok(b) => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(b))),
        Err(e) => Response::builder()
            .status(500)
            .body(Full::new(Bytes::from(e))),
    };
    resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control::prom, control::telemetry::presets};

    #[test]
    fn renders_what_the_presets_read() {
        let o = render(None).unwrap();
        let e = prom::parse(&o, &prom::Limits::default()).unwrap();
        let r = presets::extract(presets::ServerKind::Node, &e);
        assert!(r.cpu_total_s.unwrap() > 0.0);
        assert!(r.mem_total.unwrap() > 0.0 && r.mem_available.unwrap() > 0.0);
        assert!(r.net_bytes.is_some());
        assert!(r.tcp_out_segs.is_some() && r.tcp_retrans_segs.is_some());
        assert!(!o.contains("DCGM_"), "no GPU series without NVML");
    }

    #[test]
    fn proc_formats() {
        let mut o = String::new();
        cpu_metrics(
            "cpu  1 2 3 4\ncpu0 100 0 50 850 0 0 0 0 0 0\nintr 5\n",
            100.0,
            &mut o,
        );
        assert!(
            o.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 8.5"),
            "{o}"
        );
        assert!(!o.contains("cpu=\"\""), "the aggregate line is skipped");
        let mut o = String::new();
        net_metrics(
            "Inter-|\n face |\n  eth0: 100 2 0 0 0 0 0 0 200 3 0 0 0 0 0 0\n",
            &mut o,
        );
        assert!(o.contains("node_network_receive_bytes_total{device=\"eth0\"} 100"));
        assert!(o.contains("node_network_transmit_bytes_total{device=\"eth0\"} 200"));
        let mut o = String::new();
        tcp_metrics(
            "Ip: Forwarding\nIp: 1\nTcp: RtoMin OutSegs RetransSegs InErrs\nTcp: 200 5000 12 0\n",
            &mut o,
        );
        assert!(o.contains("node_netstat_Tcp_OutSegs 5000\n"), "{o}");
        assert!(o.contains("node_netstat_Tcp_RetransSegs 12\n"), "{o}");
        assert!(!o.contains("InErrs"), "{o}");
    }
}
