//! `balancer status`.

use balancer::api::StatusReply;

/// The status view.
pub fn status(s: &StatusReply) -> String {
    let mut out = String::new();
    outln!(
        out,
        "balancer {} on {}{}",
        s.version,
        s.iface.as_deref().unwrap_or("no interface (cache only)"),
        s.netns
            .as_ref()
            .map(|n| format!(" (netns {n})"))
            .unwrap_or_default()
    );
    for r in &s.cache_routes {
        outln!(out, "  cache route {r}");
    }
    if s.iface.is_none() {
        // A cache-only gateway has no data plane to describe.
        outln!(out, "  uptime      {}s", s.uptime_secs);
        return out;
    }
    outln!(
        out,
        "  data plane  {} ({}), pins {}",
        if s.adopted { "adopted" } else { "attached" },
        s.xdp_mode.as_deref().unwrap_or("mode unknown: adopted"),
        s.pin_dir
    );
    outln!(out, "  uptime      {}s", s.uptime_secs);
    outln!(out, "  ring size   {}", s.ring_size);
    outln!(
        out,
        "  flow table  {} live of {} entries",
        s.flow_table.1,
        s.flow_table.0
    );
    outln!(out, "  VIPs        {}, backends {}", s.vips, s.backends);
    if s.down.is_empty() {
        outln!(out, "  down        none");
    } else {
        outln!(out, "  down:");
        for d in &s.down {
            outln!(out, "    {} {}: {}", d.vip, d.addr, d.reason);
        }
    }
    if !s.unknown_telemetry.is_empty() {
        // Not down, but weighted blind: the operator should fix the scrape.
        outln!(out, "  no recognised telemetry (counted as saturated):");
        for d in &s.unknown_telemetry {
            outln!(out, "    {} {}: {}", d.vip, d.addr, d.reason);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use balancer::api::DownBackend;

    use super::*;

    fn reply(iface: Option<&str>) -> StatusReply {
        StatusReply {
            version: "1.0".into(),
            iface: iface.map(Into::into),
            netns: None,
            pin_dir: "/p".into(),
            xdp_mode: Some("driver".into()),
            adopted: false,
            uptime_secs: 5,
            ring_size: 65537,
            flow_table: (100, 3),
            vips: 1,
            backends: 2,
            down: vec![],
            unknown_telemetry: vec![],
            cache_routes: vec!["r 127.0.0.1:1".into()],
        }
    }

    #[test]
    fn cache_only() {
        assert_eq!(
            status(&reply(None)),
            "balancer 1.0 on no interface (cache only)\n  cache route r 127.0.0.1:1\n  uptime      5s\n"
        );
    }

    #[test]
    fn with_data_plane() {
        let s = status(&reply(Some("eth0")));
        assert!(s.starts_with("balancer 1.0 on eth0\n"));
        assert!(s.contains("  data plane  attached (driver), pins /p\n"));
        assert!(s.contains("  flow table  3 live of 100 entries\n"));
        assert!(s.ends_with("  down        none\n"));
    }

    #[test]
    fn names_backends_without_recognised_telemetry() {
        let mut r = reply(Some("eth0"));
        r.unknown_telemetry = vec![DownBackend {
            vip: "10.0.0.1:80/tcp".parse().unwrap(),
            addr: [10, 0, 1, 2].into(),
            reason: "no recognised signal (kind vllm)".into(),
        }];
        assert!(
            status(&r).ends_with(
                "  down        none\n  no recognised telemetry (counted as saturated):\n    10.0.0.1:80/tcp 10.0.1.2: no recognised signal (kind vllm)\n"
            ),
            "{}",
            status(&r)
        );
    }
}
