//! Non-seasonal exponential smoothing: augurs' AutoETS over the ETS family
//! without a season (level, optionally a damped trend), chosen by AICc.

use augurs::{Fit, Predict, ets::AutoETS};

use super::{BAND_LEVEL, Forecast, ForecastError, Model, check, from_augurs};

/// AutoETS, no season.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ets;

/// Fewest points AutoETS is given: below this its search is noise.
pub const MIN_POINTS: usize = 10;

impl Model for Ets {
    fn name(&self) -> &'static str {
        "ets"
    }

    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Forecast, ForecastError> {
        check(self.name(), history, horizon, MIN_POINTS)?;
        let fit_err = |e: augurs::ets::Error| ForecastError::Fit {
            model: "ets",
            message: e.to_string(),
        };
        let fitted = AutoETS::non_seasonal().fit(history).map_err(fit_err)?;
        let f = fitted.predict(horizon, BAND_LEVEL).map_err(fit_err)?;
        Ok(from_augurs(f))
    }
}
