//! `balancer stats`: counters and rates per VIP and backend.

use std::{collections::HashMap, time::Duration};

use balancer::api::StatsReply;

use super::table::{Align, human, render};

/// (VIP, backend address or "" for the VIP's own row).
type Key = (String, String);

/// Packets/s, bits/s and new flows/s.
type Rates = (f64, f64, f64);

/// Whether a frame redraws the terminal in place, and what its header says.
pub enum Mode {
    /// One frame, printed as is.
    Once,
    /// Like top: clear the screen, then a header with the refresh interval
    /// and the time elapsed since start.
    Live {
        /// Time between refreshes.
        interval: Duration,
        /// Time since the loop started.
        elapsed: Duration,
    },
}

/// One frame: the table of `cur`, with rates measured since `prev`, and the
/// non-zero global counters.
pub fn frame(prev: Option<&StatsReply>, cur: &StatsReply, mode: Mode) -> String {
    let mut out = String::new();
    if let Mode::Live { interval, elapsed } = mode {
        out.push_str("\x1b[2J\x1b[H");
        out.push_str(&format!(
            "balancer stats: every {:.1}s, {:.0}s elapsed (Ctrl-C quits)\n\n",
            interval.as_secs_f64(),
            elapsed.as_secs_f64()
        ));
    }
    out.push_str(&table(cur, &rates(prev, cur)));
    let interesting: Vec<String> = cur
        .global
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&format!("\ndata path: {}\n", interesting.join(" ")));
    out
}

/// Rates per row between two replies; empty without a previous one.
fn rates(prev: Option<&StatsReply>, cur: &StatsReply) -> HashMap<Key, Rates> {
    let mut out = HashMap::new();
    let Some(p) = prev else { return out };
    let dt = (cur.at_ms.saturating_sub(p.at_ms)) as f64 / 1000.0;
    if dt <= 0.0 {
        return out;
    }
    let old = counters(p);
    for (k, n) in counters(cur) {
        if let Some(o) = old.get(&k) {
            out.insert(
                k,
                (
                    n.0.saturating_sub(o.0) as f64 / dt,
                    n.1.saturating_sub(o.1) as f64 * 8.0 / dt,
                    n.2.saturating_sub(o.2) as f64 / dt,
                ),
            );
        }
    }
    out
}

/// Packets, bytes and new flows of every VIP and backend row.
fn counters(s: &StatsReply) -> HashMap<Key, (u64, u64, u64)> {
    let mut out = HashMap::new();
    for v in &s.vips {
        out.insert(
            (v.vip.to_string(), String::new()),
            (v.packets, v.bytes, v.new_flows),
        );
        for b in &v.backends {
            out.insert(
                (v.vip.to_string(), b.addr.to_string()),
                (b.packets, b.bytes, b.new_flows),
            );
        }
    }
    out
}

fn table(cur: &StatsReply, r: &HashMap<Key, Rates>) -> String {
    let mut rows = Vec::new();
    for v in &cur.vips {
        let vk = (v.vip.to_string(), String::new());
        let (pps, bps, nfs) = r.get(&vk).copied().unwrap_or_default();
        rows.push(vec![
            v.vip.to_string(),
            String::new(),
            String::new(),
            String::new(),
            human(pps),
            human(bps),
            human(nfs),
            human(v.packets as f64),
            human(v.new_flows as f64),
            String::new(),
        ]);
        let total_new: u64 = v.backends.iter().map(|b| b.new_flows).sum::<u64>().max(1);
        for b in &v.backends {
            let bk = (v.vip.to_string(), b.addr.to_string());
            let (pps, bps, nfs) = r.get(&bk).copied().unwrap_or_default();
            rows.push(vec![
                String::new(),
                b.addr.to_string(),
                format!("{}/{}", b.effective_weight, b.weight),
                format!("{:.1}%", b.new_flows as f64 * 100.0 / total_new as f64),
                human(pps),
                human(bps),
                human(nfs),
                human(b.packets as f64),
                human(b.new_flows as f64),
                b.down.clone().unwrap_or_default(),
            ]);
        }
    }
    render(
        &[
            ("VIP", Align::Left),
            ("BACKEND", Align::Left),
            ("WEIGHT", Align::Right),
            ("FLOW SHARE", Align::Right),
            ("PKT/S", Align::Right),
            ("BIT/S", Align::Right),
            ("FLOWS/S", Align::Right),
            ("PACKETS", Align::Right),
            ("FLOWS", Align::Right),
            ("DOWN", Align::Left),
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use balancer::api::{BackendStatsRow, VipStatsRow};

    use super::*;

    /// A reply at `at_ms` with one VIP and one backend that saw `n` packets.
    fn reply(at_ms: u64, n: u64) -> StatsReply {
        let vip = match "10.0.0.1:80/tcp".parse() {
            Ok(v) => v,
            Err(_) => panic!("test VIP"),
        };
        StatsReply {
            at_ms,
            global: BTreeMap::from([("drop".to_string(), 0), ("pass".to_string(), 7)]),
            vips: vec![VipStatsRow {
                vip,
                packets: n,
                bytes: n * 100,
                new_flows: n / 10,
                backends: vec![BackendStatsRow {
                    addr: [10, 0, 1, 1].into(),
                    weight: 2,
                    effective_weight: 2,
                    ring_slots: 7,
                    packets: n,
                    bytes: n * 100,
                    new_flows: n / 10,
                    down: None,
                    telemetry_unknown: false,
                }],
            }],
            cache: None,
            routes: Vec::new(),
        }
    }

    #[test]
    fn rates_over_the_interval() {
        let r = rates(Some(&reply(1000, 100)), &reply(3000, 300));
        let vip = ("10.0.0.1:80/tcp".to_string(), String::new());
        assert_eq!(r.get(&vip), Some(&(100.0, 80_000.0, 10.0)));
        assert_eq!(r.len(), 2);
        assert!(rates(None, &reply(0, 1)).is_empty());
        assert!(rates(Some(&reply(5, 1)), &reply(5, 2)).is_empty());
    }

    #[test]
    fn frame_once_has_no_escape_codes() {
        let f = frame(None, &reply(0, 1500), Mode::Once);
        assert!(f.starts_with("VIP "));
        assert!(f.ends_with("\ndata path: pass=7\n"));
        assert!(f.contains("1.50k"));
        let live = Mode::Live {
            interval: Duration::from_secs(1),
            elapsed: Duration::from_secs(3),
        };
        let f = frame(None, &reply(0, 1), live);
        assert!(
            f.starts_with("\x1b[2J\x1b[Hbalancer stats: every 1.0s, 3s elapsed (Ctrl-C quits)\n\n")
        );
    }
}
