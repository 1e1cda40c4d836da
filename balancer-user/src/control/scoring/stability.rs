//! Step 4, stability: what the scorer remembers of each backend across
//! intervals, and how a target becomes the published weight (slow start,
//! EWMA, step limit, hysteresis).

use std::time::Instant;

use super::{SCALE, ScoringPolicy};

/// One backend's memory across intervals.
#[derive(Debug, Clone, Default)]
pub(super) struct Memory {
    /// Smoothed target.
    pub(super) smoothed: f64,
    published: f64,
    eligible: bool,
    ramp_from: Option<Instant>,
}

impl Memory {
    /// Applies slow start to `target`: a backend coming (back) into service
    /// from zero ramps from 10% to 100% over `slow_start_s`. Records whether
    /// it is eligible now, for the next interval.
    pub(super) fn slow_start(
        &mut self,
        p: &ScoringPolicy,
        mut target: f64,
        eligible: bool,
        now: Instant,
        notes: &mut Vec<String>,
    ) -> f64 {
        if eligible && !self.eligible {
            self.ramp_from = (p.slow_start_s > 0.0 && self.published <= 0.0).then_some(now);
        }
        if let Some(from) = self.ramp_from {
            let f = (now.saturating_duration_since(from).as_secs_f64() / p.slow_start_s).min(1.0);
            if f >= 1.0 {
                self.ramp_from = None;
            } else {
                let f = 0.1 + 0.9 * f;
                target *= f;
                notes.push(format!("slow start {:.0}%", f * 100.0));
            }
        }
        self.eligible = eligible;
        target
    }

    /// The weight to publish for `target`: 0 at once when not eligible;
    /// otherwise smoothed, step-limited, and held within hysteresis.
    pub(super) fn publish(
        &mut self,
        p: &ScoringPolicy,
        target: f64,
        eligible: bool,
        notes: &mut Vec<String>,
    ) -> f64 {
        if !eligible {
            self.smoothed = 0.0;
            self.published = 0.0;
            return 0.0;
        }
        // The step limit's floor, so a weight can leave 0 at all.
        let floor = SCALE * 0.02;
        self.smoothed += p.ewma_alpha * (target - self.smoothed);
        let old = self.published;
        let up = old * (1.0 + p.max_step) + floor;
        let down = old * (1.0 - p.max_step).max(0.0);
        let mut next = self.smoothed.clamp(down.min(up), up.max(down));
        if next != self.smoothed {
            notes.push(format!("step-limited from {:.0}", self.smoothed));
        }
        if (next - old).abs() < p.hysteresis * old.max(floor) {
            next = old;
            if (self.smoothed - old).abs() > 0.5 {
                notes.push("within hysteresis".into());
            }
        }
        self.published = next;
        next
    }
}
