//! Demand as a series of equal steps, from a file's `timestamp,value`
//! points or from arrival times, and the seasons its history can carry.

/// Seconds in a day and in a week.
pub const DAY_S: f64 = 86_400.0;
/// Seconds in a week.
pub const WEEK_S: f64 = 7.0 * DAY_S;

/// Why points make no series.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SeriesError {
    /// Fewer than two points (or arrivals spanning less than one step).
    #[error("{0} points: at least two are needed")]
    TooFew(usize),
    /// A timestamp or value is NaN or infinite, or a value is negative.
    #[error("point {0}: timestamp and value must be finite, the value at least 0")]
    BadPoint(usize),
    /// The step is not a positive number of seconds.
    #[error("a step of {0} s")]
    BadStep(f64),
    /// Resampled, the series would be longer than [`MAX_STEPS`].
    #[error("{0} steps, at most {MAX_STEPS}")]
    TooLong(usize),
}

/// Longest series built: a year of minutes.
pub const MAX_STEPS: usize = 525_600;

/// Equal steps of demand.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Seconds a step spans.
    pub step_s: f64,
    /// Each step's total, oldest first.
    pub values: Vec<f64>,
}

impl Series {
    /// Points (`(seconds, value)`, any order) on their own grid: the step is
    /// the median gap between timestamps, values landing in one step add
    /// up, and a step with no point repeats the one before it (a gap in
    /// the recording, not a lull).
    pub fn from_points(points: &[(f64, f64)]) -> Result<Self, SeriesError> {
        if let Some(i) = points
            .iter()
            .position(|(t, v)| !t.is_finite() || !v.is_finite() || *v < 0.0)
        {
            return Err(SeriesError::BadPoint(i));
        }
        let mut p = points.to_vec();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut gaps: Vec<f64> = p
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .filter(|g| *g > 0.0)
            .collect();
        if gaps.is_empty() {
            return Err(SeriesError::TooFew(points.len()));
        }
        gaps.sort_by(f64::total_cmp);
        let step = gaps[gaps.len() / 2];
        let t0 = p[0].0;
        let n = steps_of((p[p.len() - 1].0 - t0) / step, f64::round)?;
        let mut sum = vec![0.0; n];
        let mut seen = vec![false; n];
        for (t, v) in &p {
            let i = (((t - t0) / step).round() as usize).min(n - 1);
            sum[i] += v;
            seen[i] = true;
        }
        for i in 1..n {
            if !seen[i] {
                sum[i] = sum[i - 1];
            }
        }
        Ok(Self {
            step_s: step,
            values: sum,
        })
    }

    /// Arrivals (seconds, any order) counted per `step_s`, from the first
    /// arrival's step to the last one's.
    pub fn from_arrivals(times: &[f64], step_s: f64) -> Result<Self, SeriesError> {
        if !(step_s.is_finite() && step_s > 0.0) {
            return Err(SeriesError::BadStep(step_s));
        }
        if let Some(i) = times.iter().position(|t| !t.is_finite()) {
            return Err(SeriesError::BadPoint(i));
        }
        let lo = times.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if times.len() < 2 || hi - lo < step_s {
            return Err(SeriesError::TooFew(times.len()));
        }
        let n = steps_of((hi - lo) / step_s, f64::floor)?;
        let mut values = vec![0.0; n];
        for t in times {
            values[(((t - lo) / step_s) as usize).min(n - 1)] += 1.0;
        }
        Ok(Self { step_s, values })
    }

    /// Steps in `seconds`, when that is a whole number of steps (at least 2).
    pub fn steps_in(&self, seconds: f64) -> Option<usize> {
        let k = seconds / self.step_s;
        let r = k.round();
        ((k - r).abs() < 1e-6 && r >= 2.0).then_some(r as usize)
    }

    /// The daily and weekly periods in steps, those that are whole.
    pub fn periods(&self) -> Vec<usize> {
        [DAY_S, WEEK_S]
            .iter()
            .filter_map(|s| self.steps_in(*s))
            .collect()
    }
}

/// Steps a span of `k` steps takes (`round` or `floor` of it, plus one),
/// refused past [`MAX_STEPS`] before any cast can saturate.
fn steps_of(k: f64, whole: fn(f64) -> f64) -> Result<usize, SeriesError> {
    let n = whole(k) + 1.0;
    if n.is_nan() || n > MAX_STEPS as f64 {
        return Err(SeriesError::TooLong(if n.is_finite() {
            n as usize
        } else {
            usize::MAX
        }));
    }
    Ok(n as usize)
}
