//! `balancer vip list`.

use balancer::lb::VipInfo;

use super::table::{Align, render};

/// One row per VIP: mode, affinity, pool size, how many are in the ring,
/// its tier, the share of new connections XDP refuses now and how (a
/// dropped SYN or a RST).
pub fn vips(vips: &[VipInfo]) -> String {
    let rows: Vec<Vec<String>> = vips
        .iter()
        .map(|v| {
            vec![
                v.spec.id.to_string(),
                v.spec.mode.to_string(),
                v.spec
                    .affinity_secs
                    .map(|s| format!("{s}s"))
                    .unwrap_or_else(|| "-".into()),
                v.backends.len().to_string(),
                v.backends
                    .iter()
                    .filter(|b| b.effective_weight > 0)
                    .count()
                    .to_string(),
                v.spec.tier.to_string(),
                format!("{:.0}%", balancer::lb::shed::percent(v.shed_share)),
                v.spec.refuse.label().to_string(),
            ]
        })
        .collect();
    render(
        &[
            ("VIP", Align::Left),
            ("MODE", Align::Left),
            ("AFFINITY", Align::Right),
            ("BACKENDS", Align::Right),
            ("IN RING", Align::Right),
            ("TIER", Align::Left),
            ("REFUSED", Align::Right),
            ("BY", Align::Left),
        ],
        &rows,
    )
}
