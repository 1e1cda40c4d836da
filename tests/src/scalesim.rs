//! Scaling replayed on a demand series: each step a [`Planner`] decides
//! from the last complete step's load (reactive) or also from a forecast
//! (predictive); replicas it orders serve after the lead time, replicas it
//! drops stop at once. The bench counts the minutes whose demand exceeded
//! the serving replicas' capacity, and the replica-hours provisioned
//! (starting replicas cost as much as serving ones).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use balancer::{
    forecast::Model,
    scale::{Planner, ScaleSettings},
};

/// What one replay came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Minutes whose demand exceeded the serving capacity.
    pub under_minutes: f64,
    /// Replica-hours provisioned (serving and starting).
    pub replica_hours: f64,
    /// Scale-outs ordered.
    pub scale_outs: u32,
    /// Forecast fits made.
    pub fits: u32,
}

/// How a replay runs.
#[derive(Clone, Copy)]
pub struct Replay<'a> {
    /// Seconds a step spans.
    pub step_s: f64,
    /// First step replayed (steps before it are history only).
    pub from: usize,
    /// The pool's settings.
    pub settings: ScaleSettings,
    /// The forecaster (predictive), or none (reactive).
    pub forecaster: Option<&'a dyn Model>,
    /// Steps between forecast fits.
    pub refit_every: usize,
    /// Most steps of history a fit gets.
    pub max_history: usize,
}

/// Steps in `d`, at least 1.
pub fn steps(d: Duration, step_s: f64) -> usize {
    (d.as_secs_f64() / step_s).ceil().max(1.0) as usize
}

/// Replays `values` from `r.from`.
pub fn replay(values: &[f64], r: &Replay<'_>) -> Result<Outcome> {
    ensure!(
        r.from >= 1 && r.from < values.len() && r.refit_every >= 1,
        "replay from step {} of {} (refit every {})",
        r.from,
        values.len(),
        r.refit_every
    );
    let s = r.settings;
    let lead = steps(s.lead_time, r.step_s);
    // The window a forecast must cover: the lead time, and as much again.
    let window = 2 * lead;
    let mut planner = Planner::new(s);
    let mut ready = s.desired(values[r.from - 1]);
    // (step it serves from, replicas), oldest first.
    let mut starting: Vec<(usize, u32)> = Vec::new();
    let mut fit: Option<(usize, Vec<f64>)> = None;
    let mut out = Outcome {
        under_minutes: 0.0,
        replica_hours: 0.0,
        scale_outs: 0,
        fits: 0,
    };
    for t in r.from..values.len() {
        starting.retain(|(at, n)| {
            let due = *at <= t;
            if due {
                ready += n;
            }
            !due
        });
        if ready as f64 * s.capacity < values[t] {
            out.under_minutes += r.step_s / 60.0;
        }
        let pending: u32 = starting.iter().map(|(_, n)| n).sum();
        out.replica_hours += (ready + pending) as f64 * r.step_s / 3600.0;
        let forecast = match r.forecaster {
            None => None,
            Some(m) => {
                if fit
                    .as_ref()
                    .is_none_or(|(origin, _)| t - origin >= r.refit_every)
                {
                    let history = &values[t.saturating_sub(r.max_history)..t];
                    let f = m
                        .forecast(history, r.refit_every + window)
                        .with_context(|| format!("forecast at step {t}"))?;
                    fit = Some((t, f.p90));
                    out.fits += 1;
                }
                fit.as_ref().map(|(origin, p90)| {
                    let k = t - origin;
                    p90[k..(k + window).min(p90.len())]
                        .iter()
                        .copied()
                        .fold(0.0, f64::max)
                })
            }
        };
        let current = ready + pending;
        let now = Duration::from_secs_f64(t as f64 * r.step_s);
        let d = planner.decide(now, current, values[t - 1], forecast);
        if d.desired > current {
            starting.push((t + lead, d.desired - current));
            out.scale_outs += 1;
        } else if d.desired < current {
            // Drop the newest orders first, then serving replicas.
            let mut drop = current - d.desired;
            while drop > 0 {
                match starting.last_mut() {
                    Some((_, n)) if *n > drop => {
                        *n -= drop;
                        drop = 0;
                    }
                    Some((_, n)) => {
                        drop -= *n;
                        starting.pop();
                    }
                    None => {
                        ready -= drop.min(ready);
                        drop = 0;
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use balancer::forecast::naive::SeasonalNaive;

    fn settings() -> ScaleSettings {
        ScaleSettings {
            min: 1,
            max: 100,
            capacity: 10.0,
            headroom: 0.0,
            lead_time: Duration::from_secs(300),
            cool_down: Duration::from_secs(600),
        }
    }

    /// A daily peak: 10 for 20 hours, 100 for 4, on 5-minute steps.
    fn days(n: usize) -> Vec<f64> {
        (0..n * 288)
            .map(|i| if i % 288 >= 240 { 100.0 } else { 10.0 })
            .collect()
    }

    #[test]
    fn forecasting_the_daily_peak_leaves_fewer_minutes_short() {
        let v = days(4);
        let base = Replay {
            step_s: 300.0,
            from: 2 * 288,
            settings: settings(),
            forecaster: None,
            refit_every: 12,
            max_history: 4032,
        };
        let reactive = replay(&v, &base).unwrap();
        let naive = SeasonalNaive { period: 288 };
        let predictive = replay(
            &v,
            &Replay {
                forecaster: Some(&naive),
                ..base
            },
        )
        .unwrap();
        // Reactive is short for the lead time (one step) of each of the two
        // peaks, plus the step its observation lags: 2 x 2 x 5 minutes.
        assert_eq!(reactive.under_minutes, 20.0);
        assert_eq!(predictive.under_minutes, 0.0);
        assert!(predictive.fits >= 2 * 288 / 12);
        assert!(predictive.replica_hours >= reactive.replica_hours);
    }

    #[test]
    fn a_bad_replay_is_refused() {
        let r = Replay {
            step_s: 60.0,
            from: 0,
            settings: settings(),
            forecaster: None,
            refit_every: 1,
            max_history: 10,
        };
        assert!(replay(&[1.0, 2.0], &r).is_err());
    }
}
