//! Seasonal naive: each step of the horizon is the same step one season
//! earlier. Its P90 adds the 90th percentile of the history's own
//! season-over-season changes.

use super::{Forecast, ForecastError, Model, check};

/// The same step one `period` ago (1: the last step, plain naive).
#[derive(Debug, Clone, Copy)]
pub struct SeasonalNaive {
    /// Steps in a season (at least 1).
    pub period: usize,
}

impl Model for SeasonalNaive {
    fn name(&self) -> &'static str {
        "seasonal-naive"
    }

    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Forecast, ForecastError> {
        let m = self.period.max(1);
        check(self.name(), history, horizon, m + 1)?;
        let n = history.len();
        // Step h (from 0) repeats the step m before it, wrapping within the
        // last season when the horizon is longer than one.
        let point: Vec<f64> = (0..horizon).map(|h| history[n - m + h % m]).collect();
        let mut changes: Vec<f64> = history.windows(m + 1).map(|w| w[m] - w[0]).collect();
        changes.sort_by(f64::total_cmp);
        let q90 = changes[(changes.len() * 9 / 10).min(changes.len() - 1)].max(0.0);
        let p90 = point.iter().map(|p| p + q90).collect();
        Ok(Forecast { point, p90 })
    }
}
