//! Forecast error: MASE (Hyndman and Koehler, 2006), sMAPE, and how often
//! the actual stayed under the P90.

/// Mean absolute error of `forecast` against `actual` (the shorter length).
pub fn mae(actual: &[f64], forecast: &[f64]) -> f64 {
    let n = actual.len().min(forecast.len());
    if n == 0 {
        return 0.0;
    }
    actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum::<f64>()
        / n as f64
}

/// MASE: the forecast's MAE over the in-sample MAE of the seasonal naive
/// forecast of period `m` on `history` (1 below 1 means better than that
/// naive forecast was in sample). `None` when the history is shorter than
/// `m + 1` or constant at that lag (the scale is 0).
pub fn mase(actual: &[f64], forecast: &[f64], history: &[f64], m: usize) -> Option<f64> {
    let m = m.max(1);
    if history.len() <= m {
        return None;
    }
    let scale = history
        .windows(m + 1)
        .map(|w| (w[m] - w[0]).abs())
        .sum::<f64>()
        / (history.len() - m) as f64;
    (scale > 0.0).then(|| mae(actual, forecast) / scale)
}

/// Symmetric MAPE, percent (0..200): a step where both are 0 counts as 0.
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    let n = actual.len().min(forecast.len());
    if n == 0 {
        return 0.0;
    }
    let sum: f64 = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| {
            let d = a.abs() + f.abs();
            if d == 0.0 {
                0.0
            } else {
                2.0 * (a - f).abs() / d
            }
        })
        .sum();
    100.0 * sum / n as f64
}

/// Share of steps whose actual was at most the P90 (a calibrated P90 is
/// near 0.9).
pub fn coverage(actual: &[f64], p90: &[f64]) -> f64 {
    let n = actual.len().min(p90.len());
    if n == 0 {
        return 0.0;
    }
    actual.iter().zip(p90).filter(|(a, p)| a <= p).count() as f64 / n as f64
}
