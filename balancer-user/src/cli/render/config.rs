//! `balancer config check`.

use std::path::Path;

use balancer::config::Config;

use crate::cli::args::Output;

/// The summary of a valid configuration (without the last newline): one
/// line, then one `warning:` line per deprecated name it uses.
pub fn check(file: &Path, cfg: &Config, output: Output) -> String {
    let backends: usize = cfg.initial.vips.iter().map(|v| v.backends.len()).sum();
    match output {
        Output::Json => serde_json::json!({
            "ok": true,
            "vips": cfg.initial.vips.len(),
            "backends": backends,
            "routes": cfg.cache_routes.len(),
            "warnings": cfg.warnings,
        })
        .to_string(),
        Output::Table => {
            let mut s = format!(
                "{}: ok ({} VIPs, {backends} backends, {} routes, {})",
                file.display(),
                cfg.initial.vips.len(),
                cfg.cache_routes.len(),
                match &cfg.daemon.iface {
                    Some(i) => format!("interface {i}"),
                    None => "no data plane (proxy only)".into(),
                }
            );
            for w in &cfg.warnings {
                s.push_str("\nwarning: ");
                s.push_str(w);
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_prints_each_warning_on_its_own_line() {
        let src = "[[cache_route]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n";
        let file = Path::new("gw.toml");
        let cfg = Config::parse(file, src).unwrap();
        let table = check(file, &cfg, Output::Table);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(
            lines[0],
            "gw.toml: ok (0 VIPs, 0 backends, 1 routes, no data plane (proxy only))"
        );
        assert!(
            lines.len() == 2
                && lines[1].starts_with("warning: gw.toml:2: [[cache_route]] is deprecated"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&check(file, &cfg, Output::Json)).unwrap();
        assert_eq!(json["routes"], 1);
        assert_eq!(json["warnings"].as_array().map(Vec::len), Some(1));
    }
}
