//! `balancer backend list`.

use balancer::lb::VipInfo;

use super::table::{Align, render};

/// One row per backend of each VIP, with its share of the ring and state.
pub fn backends(vips: &[VipInfo]) -> String {
    let mut rows = Vec::new();
    for v in vips {
        // max(1): an empty ring shows 0% rather than dividing by zero.
        let m = v.backends.iter().map(|b| b.ring_slots).sum::<u64>().max(1);
        for b in &v.backends {
            rows.push(vec![
                v.spec.id.to_string(),
                b.addr.to_string(),
                b.weight.to_string(),
                b.effective_weight.to_string(),
                format!("{:.1}%", b.ring_slots as f64 * 100.0 / m as f64),
                b.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                if b.drained {
                    "drained".into()
                } else {
                    b.down
                        .clone()
                        .map(|r| format!("down: {r}"))
                        .unwrap_or_else(|| "up".into())
                },
            ]);
        }
    }
    render(
        &[
            ("VIP", Align::Left),
            ("BACKEND", Align::Left),
            ("WEIGHT", Align::Right),
            ("IN RING", Align::Right),
            ("SHARE", Align::Right),
            ("NEXT HOP", Align::Left),
            ("STATE", Align::Left),
        ],
        &rows,
    )
}
