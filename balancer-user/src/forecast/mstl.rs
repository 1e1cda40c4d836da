//! MSTL: the series split into a trend, one seasonal part per period (a day
//! and a week, as the history carries them) and a remainder; the trend and
//! remainder are forecast by non-seasonal AutoETS, the seasons repeated.
//! With no period the history can carry, it is [`super::ets::Ets`].
//!
//! Two choices make it fit demand rather than one series: it works on
//! `ln(1 + y)`, since demand's cycles scale with its level (a busy day's
//! peak is a multiple, not a sum); and its STL passes are robust, so a
//! one-off burst a day ago stays in the remainder instead of being
//! repeated as next day's season.

use augurs::{
    Fit, Predict,
    ets::AutoETS,
    mstl::{MSTLModel, stlrs},
};

use super::{
    BAND_LEVEL, Forecast, ForecastError, Model, check, ets::Ets, ets::MIN_POINTS, from_augurs,
};

/// MSTL with the given periods (steps), each fitted only when the history
/// holds two of it.
#[derive(Debug, Clone, Default)]
pub struct Mstl {
    /// Season lengths in steps, shortest first.
    pub periods: Vec<usize>,
}

impl Model for Mstl {
    fn name(&self) -> &'static str {
        "mstl"
    }

    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Forecast, ForecastError> {
        check(self.name(), history, horizon, MIN_POINTS)?;
        let periods: Vec<usize> = self
            .periods
            .iter()
            .copied()
            .filter(|p| *p >= 2 && 2 * p <= history.len())
            .collect();
        if periods.is_empty() {
            return Ets.forecast(history, horizon);
        }
        let fit_err = |e: augurs::mstl::Error| ForecastError::Fit {
            model: "mstl",
            message: e.to_string(),
        };
        let mut stl = stlrs::StlParams::new();
        stl.robust(true);
        let mut params = stlrs::MstlParams::new();
        params.stl_params(stl);
        let model =
            MSTLModel::new(periods, AutoETS::non_seasonal().into_trend_model()).mstl_params(params);
        let logged: Vec<f64> = history.iter().map(|v| v.ln_1p()).collect();
        let fitted = model.fit(&logged).map_err(fit_err)?;
        let mut f = fitted.predict(horizon, BAND_LEVEL).map_err(fit_err)?;
        f.point.iter_mut().for_each(|v| *v = v.exp_m1());
        if let Some(i) = &mut f.intervals {
            i.upper.iter_mut().for_each(|v| *v = v.exp_m1());
            i.lower.iter_mut().for_each(|v| *v = v.exp_m1());
        }
        Ok(from_augurs(f))
    }
}
