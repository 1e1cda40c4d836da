//! Metric names per server kind, and the unit conversions that put them on
//! one scale.
//!
//! | kind | signal: metric (unit) |
//! |---|---|
//! | `vllm` | queue: `vllm:num_requests_waiting`; running: `vllm:num_requests_running`; KV cache: `vllm:kv_cache_usage_perc`, else the deprecated `vllm:gpu_cache_usage_perc` (both 0..1 despite the name); TTFT: `vllm:time_to_first_token_seconds` (histogram); tokens: `vllm:generation_tokens_total`; models: `model_name` labels and `vllm:lora_requests_info` (`running_lora_adapters`, `waiting_lora_adapters`) |
//! | `sglang` | queue: `sglang:num_queue_reqs`; running: `sglang:num_running_reqs`; KV: `sglang:token_usage` (0..1); tokens: `sglang:generation_tokens_total` |
//! | `tgi` | queue: `tgi_queue_size`; running: `tgi_batch_current_size` |
//! | `triton` | queue: `nv_inference_pending_request_count`; queue time: `nv_inference_queue_duration_us` / `nv_inference_request_success` (counters); GPU: `nv_gpu_utilization` (0..1), `nv_gpu_memory_used_bytes` / `nv_gpu_memory_total_bytes`; models: `model` labels |
//! | `dcgm` | GPU: `DCGM_FI_DEV_GPU_UTIL` (percent), `DCGM_FI_DEV_FB_USED` / `DCGM_FI_DEV_FB_FREE` (MiB), `DCGM_FI_DEV_POWER_USAGE` (W) |
//! | `node` | CPU: `node_cpu_seconds_total` (idle vs all modes); memory: `node_memory_MemAvailable_bytes` / `node_memory_MemTotal_bytes`; network: `node_network_receive_bytes_total` + `node_network_transmit_bytes_total` (not `lo`); TCP loss: `node_netstat_Tcp_RetransSegs` / `node_netstat_Tcp_OutSegs` (counters) |

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::Reading;
use crate::control::prom::Exposition;

/// What kind of server an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// vLLM.
    Vllm,
    /// SGLang.
    Sglang,
    /// Hugging Face TGI.
    Tgi,
    /// NVIDIA Triton.
    Triton,
    /// NVIDIA DCGM exporter.
    Dcgm,
    /// Prometheus node_exporter (or `balancer agent`).
    Node,
}

impl ServerKind {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::Tgi => "tgi",
            Self::Triton => "triton",
            Self::Dcgm => "dcgm",
            Self::Node => "node",
        }
    }
}

impl FromStr for ServerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vllm" => Ok(Self::Vllm),
            "sglang" => Ok(Self::Sglang),
            "tgi" => Ok(Self::Tgi),
            "triton" => Ok(Self::Triton),
            "dcgm" => Ok(Self::Dcgm),
            "node" | "node_exporter" | "agent" => Ok(Self::Node),
            _ => Err(format!(
                "unknown server kind {s:?}: use vllm, sglang, tgi, triton, dcgm or node"
            )),
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn mean(e: &Exposition, name: &str) -> Option<f64> {
    let v: Vec<f64> = e
        .series(name)
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn sum(e: &Exposition, name: &str) -> Option<f64> {
    let v: Vec<f64> = e
        .series(name)
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// Most buckets of one histogram: beyond, the histogram is refused (left
/// out of the reading, with a warning), so a hostile body costs O(n log n)
/// and bounded memory.
pub const MAX_BUCKETS: usize = 1000;

/// A key ordering every non-NaN `f64` totally, with `-0.0` as `0.0`.
fn le_key(le: f64) -> Option<u64> {
    if le.is_nan() {
        return None;
    }
    let b = (le + 0.0).to_bits();
    // Flip so that unsigned order is numeric order (as `total_cmp`).
    Some(if b >> 63 == 1 { !b } else { b | 1 << 63 })
}

/// Buckets of a histogram summed over its series (e.g. several models),
/// sorted by bound. `le="NaN"` and unparsable bounds are skipped; more than
/// [`MAX_BUCKETS`] distinct bounds refuse the histogram (empty).
fn buckets(e: &Exposition, base: &str) -> Vec<(f64, f64)> {
    let name = format!("{base}_bucket");
    let mut out: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in e.series(&name) {
        let Some(le) = s.label("le").and_then(|l| match l {
            "+Inf" => Some(f64::INFINITY),
            x => x.parse().ok(),
        }) else {
            continue;
        };
        let Some(key) = le_key(le) else {
            continue;
        };
        if out.len() >= MAX_BUCKETS && !out.contains_key(&key) {
            warn!(metric = %name, "histogram has more than {MAX_BUCKETS} buckets: ignored");
            return Vec::new();
        }
        out.entry(key).or_insert((le + 0.0, 0.0)).1 += s.value;
    }
    out.into_values().collect()
}

fn label_values(e: &Exposition, metric_prefix: &str, label: &str) -> BTreeSet<String> {
    e.samples
        .iter()
        .filter(|s| s.name.starts_with(metric_prefix))
        .filter_map(|s| s.label(label))
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

/// Reads what a `kind` endpoint reports.
pub fn extract(kind: ServerKind, e: &Exposition) -> Reading {
    let mut r = Reading::default();
    let read = match kind {
        ServerKind::Vllm => vllm,
        ServerKind::Sglang => sglang,
        ServerKind::Tgi => tgi,
        ServerKind::Triton => triton,
        ServerKind::Dcgm => dcgm,
        ServerKind::Node => node,
    };
    read(e, &mut r);
    r
}

/// vLLM: queue, running, KV cache, tokens, TTFT and models (LoRA adapters included).
fn vllm(e: &Exposition, r: &mut Reading) {
    r.queue_waiting = sum(e, "vllm:num_requests_waiting");
    r.requests_running = sum(e, "vllm:num_requests_running");
    r.kv_cache =
        mean(e, "vllm:kv_cache_usage_perc").or_else(|| mean(e, "vllm:gpu_cache_usage_perc"));
    r.gen_tokens = sum(e, "vllm:generation_tokens_total");
    r.ttft = buckets(e, "vllm:time_to_first_token_seconds");
    let mut models = label_values(e, "vllm:", "model_name");
    for s in e.series("vllm:lora_requests_info") {
        for l in ["running_lora_adapters", "waiting_lora_adapters"] {
            for a in s.label(l).unwrap_or("").split(',') {
                let a = a.trim();
                if !a.is_empty() {
                    models.insert(a.to_string());
                }
            }
        }
    }
    r.models = (!models.is_empty()).then_some(models);
}

/// SGLang: queue, running, KV cache, tokens and models.
fn sglang(e: &Exposition, r: &mut Reading) {
    r.queue_waiting = sum(e, "sglang:num_queue_reqs");
    r.requests_running = sum(e, "sglang:num_running_reqs");
    r.kv_cache = mean(e, "sglang:token_usage");
    r.gen_tokens = sum(e, "sglang:generation_tokens_total");
    let models = label_values(e, "sglang:", "model_name");
    r.models = (!models.is_empty()).then_some(models);
}

/// TGI: queue and running.
fn tgi(e: &Exposition, r: &mut Reading) {
    r.queue_waiting = sum(e, "tgi_queue_size");
    r.requests_running = sum(e, "tgi_batch_current_size");
}

/// Triton: queue, queue time, GPU and models.
fn triton(e: &Exposition, r: &mut Reading) {
    r.queue_waiting = sum(e, "nv_inference_pending_request_count");
    r.queue_time_us = sum(e, "nv_inference_queue_duration_us");
    r.requests_done = sum(e, "nv_inference_request_success");
    r.gpu_util = mean(e, "nv_gpu_utilization");
    if let (Some(used), Some(total)) = (
        sum(e, "nv_gpu_memory_used_bytes"),
        sum(e, "nv_gpu_memory_total_bytes"),
    ) {
        r.gpu_mem_used = Some(used);
        r.gpu_mem_free = Some((total - used).max(0.0));
    }
    r.gpu_power_w = sum(e, "nv_gpu_power_usage");
    let models = label_values(e, "nv_inference_", "model");
    r.models = (!models.is_empty()).then_some(models);
}

/// DCGM: GPU utilisation, memory (MiB) and power.
fn dcgm(e: &Exposition, r: &mut Reading) {
    r.gpu_util = mean(e, "DCGM_FI_DEV_GPU_UTIL").map(|p| p / 100.0);
    r.gpu_mem_used = sum(e, "DCGM_FI_DEV_FB_USED").map(|m| m * MIB);
    r.gpu_mem_free = sum(e, "DCGM_FI_DEV_FB_FREE").map(|m| m * MIB);
    r.gpu_power_w = sum(e, "DCGM_FI_DEV_POWER_USAGE");
}

/// node_exporter: CPU seconds, memory, network bytes (not `lo`) and TCP
/// segments sent and retransmitted.
fn node(e: &Exposition, r: &mut Reading) {
    let cpu: Vec<_> = e.series("node_cpu_seconds_total").collect();
    if !cpu.is_empty() {
        r.cpu_total_s = Some(cpu.iter().map(|s| s.value).sum());
        r.cpu_idle_s = Some(
            cpu.iter()
                .filter(|s| s.label("mode") == Some("idle"))
                .map(|s| s.value)
                .sum(),
        );
    }
    // Kernels before 3.14 have no MemAvailable: free + page cache
    // + buffers is the usual stand-in.
    r.mem_available = sum(e, "node_memory_MemAvailable_bytes").or_else(|| {
        Some(
            sum(e, "node_memory_MemFree_bytes")?
                + sum(e, "node_memory_Cached_bytes").unwrap_or(0.0)
                + sum(e, "node_memory_Buffers_bytes").unwrap_or(0.0),
        )
    });
    r.mem_total = sum(e, "node_memory_MemTotal_bytes");
    let net: f64 = [
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
    ]
    .iter()
    .flat_map(|m| e.series(m))
    .filter(|s| s.label("device") != Some("lo"))
    .map(|s| s.value)
    .sum();
    let has_net = e.samples.iter().any(|s| {
        s.name == "node_network_receive_bytes_total"
            || s.name == "node_network_transmit_bytes_total"
    });
    r.net_bytes = has_net.then_some(net);
    r.tcp_out_segs = sum(e, "node_netstat_Tcp_OutSegs");
    r.tcp_retrans_segs = sum(e, "node_netstat_Tcp_RetransSegs");
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write, time::Instant};

    use super::*;
    use crate::control::prom;

    /// 80k bucket samples, distinct bounds and some `le="NaN"`: parsed and
    /// merged in bounded work (the old linear search per bucket was
    /// quadratic, and kept all 80k), the histogram refused past the cap.
    #[test]
    fn huge_histogram_is_capped_and_fast() {
        let base = "vllm:time_to_first_token_seconds";
        let mut body = String::new();
        for i in 0..80_000u32 {
            let le = if i % 100 == 7 {
                "NaN".to_string()
            } else {
                format!("{}", f64::from(i) / 1000.0)
            };
            let _ = writeln!(body, "{base}_bucket{{le=\"{le}\"}} {i}");
        }
        let t = Instant::now();
        let e = prom::parse(&body, &prom::Limits::default()).unwrap();
        let r = extract(ServerKind::Vllm, &e);
        let took = t.elapsed();
        println!("parse + merge of 80k buckets: {took:?}");
        assert!(r.ttft.is_empty(), "refused past the cap: {}", r.ttft.len());
        assert!(took.as_secs() < 20, "{took:?}");
    }

    /// Under the cap: NaN bounds skipped, -0 and 0 one bucket, series of
    /// several models summed per bound, sorted.
    #[test]
    fn buckets_merge_in_order_without_nan() {
        let base = "vllm:time_to_first_token_seconds";
        let body = format!(
            "{base}_bucket{{model_name=\"a\",le=\"+Inf\"}} 5\n\
             {base}_bucket{{model_name=\"a\",le=\"0.5\"}} 2\n\
             {base}_bucket{{model_name=\"b\",le=\"0.5\"}} 1\n\
             {base}_bucket{{model_name=\"b\",le=\"NaN\"}} 9\n\
             {base}_bucket{{model_name=\"a\",le=\"-0\"}} 1\n\
             {base}_bucket{{model_name=\"b\",le=\"0\"}} 1\n\
             {base}_bucket{{model_name=\"b\",le=\"+Inf\"}} 4\n"
        );
        let e = prom::parse(&body, &prom::Limits::default()).unwrap();
        let r = extract(ServerKind::Vllm, &e);
        assert_eq!(r.ttft, vec![(0.0, 2.0), (0.5, 3.0), (f64::INFINITY, 9.0)]);
        let n = (0..MAX_BUCKETS)
            .map(|i| format!("{base}_bucket{{le=\"{i}\"}} 1\n"))
            .collect::<String>();
        let e = prom::parse(&n, &prom::Limits::default()).unwrap();
        assert_eq!(extract(ServerKind::Vllm, &e).ttft.len(), MAX_BUCKETS);
    }
}
