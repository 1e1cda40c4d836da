//! A route's last placements, for `balancer route explain`: where each
//! request went, why, what the cost model predicted, and (for a streamed
//! answer) the first token's actual time.
//!
//! The request path writes one slot of a fixed ring, skipping it when a
//! reader (`route explain`) holds that slot's lock to copy it, so a request
//! never waits on the control plane. Nothing grows.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// Placements kept per route.
pub const KEPT: usize = 32;

/// One request's placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The backend chosen.
    pub backend: String,
    /// Why (`prefix`, `key`, `fastest`, `earliest`).
    pub reason: String,
    /// The model or adapter asked for.
    pub model: String,
    /// Whether the request was heavy for its route.
    pub heavy: bool,
    /// Backends it could go to (after locality).
    pub candidates: u32,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// Of them, not cached on the chosen backend.
    pub uncached_tokens: u32,
    /// Leading prompt blocks the chosen backend held.
    pub matched_blocks: u32,
    /// Uncached prefill tokens already waiting there.
    pub prefill_ahead: u64,
    /// Predicted seconds to the first token.
    pub predicted_ttft_s: f64,
    /// Predicted seconds end to end.
    pub predicted_e2e_s: f64,
    /// The first token's actual seconds (streamed answers, once seen).
    pub actual_ttft_s: Option<f64>,
}

/// A placement whose actual time is filled in later.
#[derive(Debug)]
pub struct Cell {
    /// Its place in the route's sequence of placements.
    seq: usize,
    placement: Placement,
    /// Microseconds to the first token (0: not yet).
    actual_us: AtomicU64,
}

impl Cell {
    /// Records the first token after `secs`.
    pub fn first_token(&self, secs: f64) {
        self.actual_us
            .store(((secs * 1e6) as u64).max(1), Ordering::Relaxed);
    }

    fn read(&self) -> Placement {
        let us = self.actual_us.load(Ordering::Relaxed);
        Placement {
            actual_ttft_s: (us > 0).then(|| us as f64 / 1e6),
            ..self.placement.clone()
        }
    }
}

/// The ring of a route's last [`KEPT`] placements.
#[derive(Debug, Default)]
pub struct Recent {
    slots: [Mutex<Option<Arc<Cell>>>; KEPT],
    next: AtomicUsize,
}

impl Recent {
    /// Keeps `p` (stamped now) in place of the oldest; its cell takes the
    /// actual time later.
    pub fn record(&self, mut p: Placement) -> Arc<Cell> {
        p.at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let cell = Arc::new(Cell {
            seq,
            placement: p,
            actual_us: AtomicU64::new(0),
        });
        // Never wait on a reader copying this slot: skip keeping it instead.
        if let Ok(mut slot) = self.slots[seq % KEPT].try_lock() {
            *slot = Some(cell.clone());
        }
        cell
    }

    /// The placements kept, newest first.
    pub fn snapshot(&self) -> Vec<Placement> {
        let mut cells: Vec<Arc<Cell>> = self
            .slots
            .iter()
            .filter_map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        cells.sort_by_key(|c| std::cmp::Reverse(c.seq));
        cells.iter().map(|c| c.read()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(backend: &str) -> Placement {
        Placement {
            at_ms: 0,
            backend: backend.into(),
            reason: "fastest".into(),
            model: "m".into(),
            heavy: false,
            candidates: 2,
            prompt_tokens: 10,
            uncached_tokens: 10,
            matched_blocks: 0,
            prefill_ahead: 0,
            predicted_ttft_s: 0.1,
            predicted_e2e_s: 1.0,
            actual_ttft_s: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_placements_and_their_actual_times() {
        let r = Recent::default();
        assert!(r.snapshot().is_empty());
        let first = r.record(placed("a"));
        first.first_token(0.25);
        let got = r.snapshot();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].actual_ttft_s, Some(0.25));
        for i in 0..KEPT * 2 {
            r.record(placed(&format!("b{i}")));
        }
        let got = r.snapshot();
        assert_eq!(got.len(), KEPT, "bounded");
        assert!(got.iter().all(|p| p.backend != "a"), "the oldest went");
        assert_eq!(got[0].backend, format!("b{}", KEPT * 2 - 1), "newest first");
    }
}
