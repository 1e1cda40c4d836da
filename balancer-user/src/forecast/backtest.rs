//! Rolling-origin evaluation: at each of several origins along a series,
//! every model forecasts the next steps from the history before it, and is
//! scored against what followed. Every model sees the same origins and
//! histories, and MASE's scale is the history's, so scores compare.

use super::{Forecast, ForecastError, Model, metrics};

/// How a series is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Steps forecast at each origin.
    pub horizon: usize,
    /// Origins, spread evenly over the second half of the series.
    pub origins: usize,
    /// Most steps of history a model is given (the newest).
    pub max_history: usize,
    /// Fewest steps of history before the first origin.
    pub min_history: usize,
}

/// Why a series could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BacktestError {
    /// The series is too short for the settings.
    #[error(
        "{len} steps: too short for {min_history} steps of history and a {horizon}-step horizon"
    )]
    TooShort {
        /// Its steps.
        len: usize,
        /// History needed.
        min_history: usize,
        /// The horizon.
        horizon: usize,
    },
    /// No origin, or no horizon.
    #[error("origins and horizon must be at least 1")]
    Empty,
    /// A model failed at an origin.
    #[error("at step {at}: {source}")]
    Model {
        /// The origin.
        at: usize,
        /// The model's error.
        source: ForecastError,
    },
}

/// One model's forecast at one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The origin: the first step forecast.
    pub at: usize,
    /// The forecast.
    pub forecast: Forecast,
}

/// One model's scores over every origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// The model.
    pub model: &'static str,
    /// Mean MASE over the origins whose scale is defined (`None`: none).
    pub mase: Option<f64>,
    /// Mean sMAPE, percent.
    pub smape: f64,
    /// Share of forecast steps at or under the P90.
    pub coverage: f64,
    /// Its forecasts, for plots.
    pub runs: Vec<Run>,
}

/// The origins of a series of `len` steps.
pub fn origins(len: usize, s: &Settings) -> Result<Vec<usize>, BacktestError> {
    if s.origins == 0 || s.horizon == 0 {
        return Err(BacktestError::Empty);
    }
    let lo = s.min_history.max(len / 2);
    let Some(hi) = len.checked_sub(s.horizon).filter(|hi| *hi >= lo) else {
        return Err(BacktestError::TooShort {
            len,
            min_history: s.min_history,
            horizon: s.horizon,
        });
    };
    if s.origins == 1 {
        return Ok(vec![hi]);
    }
    let mut out: Vec<usize> = (0..s.origins)
        .map(|i| lo + (hi - lo) * i / (s.origins - 1))
        .collect();
    out.dedup();
    Ok(out)
}

/// Every model at every origin of `values`; MASE scaled by the seasonal
/// naive of period `mase_period` on each origin's history.
pub fn evaluate(
    values: &[f64],
    models: &[&dyn Model],
    s: &Settings,
    mase_period: usize,
) -> Result<Vec<Score>, BacktestError> {
    let at = origins(values.len(), s)?;
    let mut out = Vec::with_capacity(models.len());
    for model in models {
        let (mut mase, mut mase_n, mut smape, mut cover) = (0.0, 0usize, 0.0, 0.0);
        let mut runs = Vec::with_capacity(at.len());
        for &o in &at {
            let history = &values[o.saturating_sub(s.max_history)..o];
            let actual = &values[o..o + s.horizon];
            let f = model
                .forecast(history, s.horizon)
                .map_err(|source| BacktestError::Model { at: o, source })?;
            if let Some(m) = metrics::mase(actual, &f.point, history, mase_period) {
                mase += m;
                mase_n += 1;
            }
            smape += metrics::smape(actual, &f.point);
            // Every origin forecasts `horizon` steps, so the mean of the
            // origins' shares is the share over all steps.
            cover += metrics::coverage(actual, &f.p90);
            runs.push(Run { at: o, forecast: f });
        }
        out.push(Score {
            model: model.name(),
            mase: (mase_n > 0).then(|| mase / mase_n as f64),
            smape: smape / at.len() as f64,
            coverage: cover / at.len() as f64,
            runs,
        });
    }
    Ok(out)
}
