//! `balancer config check`.

use std::path::Path;

use balancer::config::Config;

use crate::cli::args::Output;

/// The one-line summary of a valid configuration (without the newline).
pub fn check(file: &Path, cfg: &Config, output: Output) -> String {
    let backends: usize = cfg.initial.vips.iter().map(|v| v.backends.len()).sum();
    match output {
        Output::Json => serde_json::json!({
            "ok": true,
            "vips": cfg.initial.vips.len(),
            "backends": backends,
            "cache_routes": cfg.cache_routes.len(),
        })
        .to_string(),
        Output::Table => format!(
            "{}: ok ({} VIPs, {backends} backends, {} cache routes, {})",
            file.display(),
            cfg.initial.vips.len(),
            cfg.cache_routes.len(),
            match &cfg.daemon.iface {
                Some(i) => format!("interface {i}"),
                None => "no data plane (cache only)".into(),
            }
        ),
    }
}
