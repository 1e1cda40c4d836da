//! Demand forecasting: a point forecast and its P90 for each step of a
//! horizon, from a series of equal steps (requests a minute, say).
//!
//! One file per model behind [`Model`]:
//! - [`naive::SeasonalNaive`]: the same step one season ago (a day, or the
//!   last step when the history is shorter than two days): the baseline a
//!   forecaster must beat;
//! - [`ets::Ets`]: non-seasonal exponential smoothing (augurs' AutoETS),
//!   the baseline that knows trend but no cycle;
//! - [`mstl::Mstl`]: daily and weekly seasonality by MSTL, its trend by
//!   AutoETS: the product's forecaster.
//!
//! [`series`] turns points or arrival times into equal steps and says which
//! seasons a history can carry; [`metrics`] scores forecasts (MASE, sMAPE,
//! P90 coverage); [`backtest`] runs the rolling-origin evaluation that
//! `cargo xtask bench forecast` prints.
//!
//! augurs (Grafana's time-series crates) over hand-written smoothing: its
//! AutoETS searches the ETS family by AICc as R's `forecast::ets` does and
//! gives prediction intervals, and its MSTL is the `stlrs` port of
//! Bandara et al. (2021); the alternatives on crates.io either lack
//! intervals or model selection.

pub mod backtest;
pub mod ets;
pub mod metrics;
pub mod mstl;
pub mod naive;
pub mod series;

/// The level of the upper band every model reports: 0.8 two-sided is the
/// 10th to 90th percentile, so its upper edge is the P90.
pub const BAND_LEVEL: f64 = 0.8;

/// A forecast over a horizon: a point and a P90 per step.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Expected value of each step.
    pub point: Vec<f64>,
    /// 90th percentile of each step (at least the point).
    pub p90: Vec<f64>,
}

/// Why a model gave no forecast.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    /// The history is shorter than the model needs.
    #[error("{model}: {have} points of history, at least {need} needed")]
    TooShort {
        /// The model.
        model: &'static str,
        /// Points given.
        have: usize,
        /// Points needed.
        need: usize,
    },
    /// A point is NaN, infinite or negative: demand is a count.
    #[error("point {index} is {value}: demand must be a finite count")]
    BadPoint {
        /// Where.
        index: usize,
        /// What.
        value: f64,
    },
    /// The horizon is 0.
    #[error("a horizon of 0 steps")]
    NoHorizon,
    /// The model's fit failed (augurs' message).
    #[error("{model}: {message}")]
    Fit {
        /// The model.
        model: &'static str,
        /// Its error.
        message: String,
    },
}

/// A forecasting model: fits `history` (oldest first) and forecasts the
/// next `horizon` steps.
pub trait Model: Send + Sync {
    /// Its name in tables.
    fn name(&self) -> &'static str;
    /// The forecast, or why there is none.
    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Forecast, ForecastError>;
}

/// Checks what every model needs: a horizon, `need` points, all counts.
pub(crate) fn check(
    model: &'static str,
    history: &[f64],
    horizon: usize,
    need: usize,
) -> Result<(), ForecastError> {
    if horizon == 0 {
        return Err(ForecastError::NoHorizon);
    }
    if history.len() < need {
        return Err(ForecastError::TooShort {
            model,
            have: history.len(),
            need,
        });
    }
    match history
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || **v < 0.0)
    {
        Some((index, &value)) => Err(ForecastError::BadPoint { index, value }),
        None => Ok(()),
    }
}

/// augurs' forecast as ours: demand is never negative, and the P90 is the
/// band's upper edge (the point when the model gave no band).
pub(crate) fn from_augurs(f: augurs::Forecast) -> Forecast {
    let point: Vec<f64> = f.point.iter().map(|v| v.max(0.0)).collect();
    let p90 = match &f.intervals {
        Some(i) => i.upper.iter().zip(&point).map(|(u, p)| u.max(*p)).collect(),
        None => point.clone(),
    };
    Forecast { point, p90 }
}

#[cfg(test)]
mod tests;
