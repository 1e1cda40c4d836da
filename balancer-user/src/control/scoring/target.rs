//! Steps 2, 3 and 5: capacity refined by throughput, target = capacity x
//! headroom, and failing open when no backend can take the pool's traffic.

use super::{Input, ScoringPolicy, load::Row};

/// Step 2: sets each row's capacity, its hint refined by its throughput
/// against the pool median (when at least two backends report one).
pub(super) fn set_capacities(inputs: &[Input], rows: &mut [Row], p: &ScoringPolicy) {
    let mut tputs: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.tput)
        .filter(|t| *t > 0.0)
        .collect();
    tputs.sort_by(|a, b| a.total_cmp(b));
    let median = (tputs.len() >= 2).then(|| tputs[tputs.len() / 2]);
    for (i, r) in inputs.iter().zip(rows.iter_mut()) {
        let refine = match (median, r.tput) {
            (Some(m), Some(t)) if m > 0.0 => (t / m).clamp(0.5, 2.0).powf(p.throughput_trust),
            _ => 1.0,
        };
        r.capacity = i.hint.max(0.0) * refine;
    }
}

/// The pool's raw targets, before scaling to full scale.
pub(super) struct Targets {
    /// Per backend, in input order.
    pub(super) raw: Vec<f64>,
    /// Why the pool fails open or weights by capacity, if it does.
    pub(super) warning: Option<String>,
    /// Every backend is down: they all serve on their hints.
    pub(super) fail_open: bool,
}

/// Steps 3 and 5: capacity x headroom for eligible backends; with none
/// eligible, the capacity hints (failing open); with all saturated, the
/// capacities.
pub(super) fn targets(inputs: &[Input], rows: &[Row]) -> Targets {
    let raw: Vec<f64> = rows
        .iter()
        .map(|r| {
            if r.eligible {
                r.capacity * (1.0 - r.load).max(0.0)
            } else {
                0.0
            }
        })
        .collect();
    if !rows.iter().any(|r| r.eligible) && !inputs.is_empty() {
        return Targets {
            raw: inputs
                .iter()
                .map(|i| {
                    if i.has_model != Some(false) {
                        i.hint.max(0.0)
                    } else {
                        0.0
                    }
                })
                .collect(),
            warning: Some(
                "EVERY backend of the pool is down: failing open on the capacity hints".to_string(),
            ),
            fail_open: true,
        };
    }
    if raw.iter().all(|r| *r <= 0.0) {
        return Targets {
            raw: rows
                .iter()
                .map(|r| if r.eligible { r.capacity } else { 0.0 })
                .collect(),
            warning: Some("every live backend is saturated: weighting by capacity".to_string()),
            fail_open: false,
        };
    }
    Targets {
        raw,
        warning: None,
        fail_open: false,
    }
}
