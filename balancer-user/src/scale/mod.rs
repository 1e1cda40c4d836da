//! Scale decisions: how many replicas a pool should have, from its load
//! and, in predictive mode, from the forecast of the load a lead time
//! ahead.
//!
//! - **Desired replicas**: `ceil(load / capacity x (1 + headroom))`, within
//!   `[min, max]`.
//! - **Out**: to the desired count of the larger of the observed load and
//!   (predictive) the forecast's P90 over the lead time and margin, so
//!   replicas ordered now are ready when the load comes.
//! - **In**: never on a forecast alone. The pool shrinks only to what the
//!   observed load needs (and, predictive, what the forecast still needs),
//!   and only once [`ScaleSettings::cool_down`] has passed since its last
//!   change, as AWS predictive scaling never scales in on a forecast.

use std::time::Duration;

/// A pool's scaling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleSettings {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Load one replica serves at its objective (requests, or tokens, a
    /// step: the load's own unit).
    pub capacity: f64,
    /// Spare share kept above the load.
    pub headroom: f64,
    /// Time from ordering a replica to its serving (its cold start).
    pub lead_time: Duration,
    /// How long after a change the pool may shrink.
    pub cool_down: Duration,
}

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScaleError {
    /// `min` above `max`, or `max` 0.
    #[error("replicas: min {min} and max {max} (need 1 <= max and min <= max)")]
    Bounds {
        /// The minimum.
        min: u32,
        /// The maximum.
        max: u32,
    },
    /// Capacity not a positive finite number.
    #[error("capacity {0}: must be a positive number")]
    Capacity(f64),
    /// Headroom not in 0..=10.
    #[error("headroom {0}: must be between 0 and 10")]
    Headroom(f64),
}

impl ScaleSettings {
    /// The settings, checked.
    pub fn validate(self) -> Result<Self, ScaleError> {
        if self.max == 0 || self.min > self.max {
            return Err(ScaleError::Bounds {
                min: self.min,
                max: self.max,
            });
        }
        if !(self.capacity.is_finite() && self.capacity > 0.0) {
            return Err(ScaleError::Capacity(self.capacity));
        }
        if !(0.0..=10.0).contains(&self.headroom) {
            return Err(ScaleError::Headroom(self.headroom));
        }
        Ok(self)
    }

    /// Replicas `load` needs.
    pub fn desired(&self, load: f64) -> u32 {
        let need = (load.max(0.0) / self.capacity * (1.0 + self.headroom)).ceil();
        (need.min(self.max as f64) as u32).clamp(self.min, self.max)
    }
}

/// What moved a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The observed load.
    Observed,
    /// The forecast, ahead of the load.
    Forecast,
    /// Load fell and the cool-down passed.
    ScaleIn,
    /// No change.
    Hold,
}

/// A decision: the pool's new replica count and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Replicas the pool should have.
    pub desired: u32,
    /// Why.
    pub reason: Reason,
}

/// Decides, step by step, for one pool; holds the time of its last change.
#[derive(Debug, Clone)]
pub struct Planner {
    settings: ScaleSettings,
    last_change: Option<Duration>,
}

impl Planner {
    /// A planner on checked settings.
    pub fn new(settings: ScaleSettings) -> Self {
        Self {
            settings,
            last_change: None,
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &ScaleSettings {
        &self.settings
    }

    /// The decision at `now` for a pool of `current` replicas (ready and
    /// starting) under `observed` load; `forecast`, in predictive mode, is
    /// the forecast's P90 peak over the next lead time and margin.
    pub fn decide(
        &mut self,
        now: Duration,
        current: u32,
        observed: f64,
        forecast: Option<f64>,
    ) -> Decision {
        let s = &self.settings;
        let by_load = s.desired(observed);
        let by_forecast = forecast.map_or(0, |f| s.desired(f));
        let out = by_load.max(by_forecast);
        let (desired, reason) = if out > current {
            let why = if by_forecast > by_load {
                Reason::Forecast
            } else {
                Reason::Observed
            };
            (out, why)
        } else if out < current
            && self
                .last_change
                .is_none_or(|t| now.saturating_sub(t) >= s.cool_down)
        {
            // The observed load alone never shrinks the pool below what
            // the forecast still needs, and the forecast alone never
            // shrinks it: `out` is the larger of both.
            (out, Reason::ScaleIn)
        } else {
            (current, Reason::Hold)
        };
        if desired != current {
            self.last_change = Some(now);
        }
        Decision { desired, reason }
    }
}

#[cfg(test)]
mod tests;
