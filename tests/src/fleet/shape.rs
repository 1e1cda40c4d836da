//! Arrival times: a trace's requests, compressed into the run's duration
//! and shaped to a target peak-to-average ratio.
//!
//! 1. A base curve over the run (flat, one diurnal cycle, or a window of a
//!    real request-rate series) is sharpened as `b(t)^k`, with `k` found by
//!    bisection so the curve's ratio of its busiest window to its mean is
//!    the target (the ratio only grows with `k`, from 1 at `k = 0`).
//! 2. The trace's own arrival times are mapped through that curve: a
//!    request at fraction `u` of the trace's span arrives when the curve's
//!    cumulative rate reaches `u` of its total. The trace's order and local
//!    burstiness stay; the curve sets the rate around them. The run is
//!    open-loop: nothing waits for answers.
//!
//! The ratio the arrivals actually have is measured over the same windows
//! and reported next to the target.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use super::scenario::Curve;

/// The base curve over `bins` equal windows of the run, every value > 0.
pub fn base(curve: &Curve, bins: usize) -> Result<Vec<f64>> {
    let x = |i: usize| (i as f64 + 0.5) / bins as f64;
    Ok(match curve {
        Curve::Flat => vec![1.0; bins],
        // Trough at the start, peak at mid-run.
        Curve::Diurnal => (0..bins)
            .map(|i| 1.02 - (2.0 * std::f64::consts::PI * x(i)).cos())
            .collect(),
        Curve::Series { path, hours } => series(path, *hours, bins)?,
    })
}

/// The first `hours` of a `timestamp,value` series, averaged into `bins`
/// windows, floored at 1% of the largest (a window with no traffic would
/// stall the mapping).
fn series(path: &Path, hours: f64, bins: usize) -> Result<Vec<f64>> {
    let shown = path.display().to_string();
    let points = read_points(path)?;
    let t0 = points[0].0;
    let span = hours * 3600.0;
    let mut sum = vec![0.0; bins];
    let mut n = vec![0u32; bins];
    for (t, v) in points {
        let f = (t - t0) / span;
        if !(0.0..1.0).contains(&f) {
            continue;
        }
        let b = ((f * bins as f64) as usize).min(bins - 1);
        sum[b] += v;
        n[b] += 1;
    }
    let covered = n.iter().filter(|c| **c > 0).count();
    ensure!(
        covered * 2 >= bins,
        "series {shown}: its first {hours} h fill only {covered} of {bins} windows; use fewer bins or more hours"
    );
    // Empty windows take the previous one's mean.
    let mut out = Vec::with_capacity(bins);
    let mut last = None;
    for b in 0..bins {
        let v = if n[b] > 0 {
            sum[b] / n[b] as f64
        } else {
            last.unwrap_or(0.0)
        };
        last = Some(v);
        out.push(v);
    }
    let max = out.iter().cloned().fold(0.0, f64::max);
    ensure!(max > 0.0, "series {shown}: all zero");
    Ok(out.into_iter().map(|v| v.max(0.01 * max)).collect())
}

/// A `timestamp,value` file's points (seconds since 1970, value at least
/// 0), in file order; its first line is a header. A bad line fails the
/// read, naming it.
pub fn read_points(path: &Path) -> Result<Vec<(f64, f64)>> {
    let shown = path.display().to_string();
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading series {shown}"))?
        .len();
    ensure!(
        len <= super::workload::MAX_TRACE_BYTES,
        "series {shown}: {len} bytes, at most {}",
        super::workload::MAX_TRACE_BYTES
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading series {shown}"))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (ts, v) = line
            .split_once(',')
            .with_context(|| format!("series {shown} line {}: timestamp,value expected", i + 1))?;
        let t = super::workload::timestamp_secs(ts)
            .with_context(|| format!("series {shown} line {}", i + 1))?;
        let v: f64 = v
            .trim()
            .parse()
            .with_context(|| format!("series {shown} line {}: value {v:?}", i + 1))?;
        ensure!(
            v.is_finite() && v >= 0.0,
            "series {shown} line {}: value {v}",
            i + 1
        );
        points.push((t, v));
    }
    ensure!(points.len() >= 2, "series {shown}: fewer than two points");
    Ok(points)
}

/// Busiest window over mean.
pub fn peak_to_average(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    if mean <= 0.0 {
        return 0.0;
    }
    v.iter().cloned().fold(0.0, f64::max) / mean
}

/// `base^k` with its peak-to-average ratio at `target` (within 0.1%),
/// scaled to mean 1.
pub fn sharpen(base: &[f64], target: f64) -> Result<Vec<f64>> {
    let max = base.iter().cloned().fold(0.0, f64::max);
    ensure!(max > 0.0, "the curve is all zero");
    let norm: Vec<f64> = base.iter().map(|b| b / max).collect();
    let at = |k: f64| -> Vec<f64> { norm.iter().map(|b| b.powf(k)).collect() };
    let top = peak_to_average(&at(256.0));
    if target > top * 1.001 {
        bail!(
            "this curve reaches a peak-to-average ratio of {top:.1} at most, not {target}; use a peakier curve or more bins"
        );
    }
    let (mut lo, mut hi) = (0.0, 256.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if peak_to_average(&at(mid)) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let v = at(0.5 * (lo + hi));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    Ok(v.into_iter().map(|x| x / mean).collect())
}

/// Evens out a trace's own rate at `bins` resolution: each time becomes the
/// fraction of the trace's requests before it, interpolated within its
/// window. The trace's order and its burstiness within a window stay; its
/// slower swings go, so that the curve alone sets the run's peak-to-average
/// ratio (otherwise the two multiply).
pub fn even_out(times: &[f64], span: f64, bins: usize) -> Vec<f64> {
    let n = times.len().max(1) as f64;
    let width = span / bins as f64;
    let mut count = vec![0usize; bins];
    for t in times {
        count[((t / width) as usize).min(bins - 1)] += 1;
    }
    let mut before = vec![0usize; bins + 1];
    for b in 0..bins {
        before[b + 1] = before[b] + count[b];
    }
    times
        .iter()
        .map(|t| {
            let b = ((t / width) as usize).min(bins - 1);
            let within = ((t - b as f64 * width) / width).clamp(0.0, 1.0);
            (before[b] as f64 + within * count[b] as f64) / n
        })
        .collect()
}

/// Maps trace times (seconds from the window's start, sorted) spanning
/// `span` seconds onto a run of `duration` seconds whose rate follows
/// `rate` (per equal window, any scale).
pub fn warp(times: &[f64], span: f64, rate: &[f64], duration: f64) -> Vec<f64> {
    let bins = rate.len();
    let width = duration / bins as f64;
    // Cumulative rate at each window's end.
    let mut cum = Vec::with_capacity(bins + 1);
    cum.push(0.0);
    for r in rate {
        cum.push(cum.last().copied().unwrap_or(0.0) + r * width);
    }
    let total = cum[bins];
    times
        .iter()
        .map(|t| {
            let target = (t / span).clamp(0.0, 1.0) * total;
            // The window where the cumulative rate passes the target.
            let b = cum.partition_point(|c| *c < target).clamp(1, bins) - 1;
            let r = rate[b].max(1e-12);
            (b as f64 * width + (target - cum[b]) / r).min(duration)
        })
        .collect()
}

/// The arrivals' rate per window, requests a second.
pub fn rate_of(arrivals: &[f64], duration: f64, bins: usize) -> Vec<f64> {
    let width = duration / bins as f64;
    let mut n = vec![0.0; bins];
    for a in arrivals {
        let b = ((a / width) as usize).min(bins - 1);
        n[b] += 1.0;
    }
    n.into_iter().map(|c| c / width).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharpening_hits_each_application_ratio() {
        let b = base(&Curve::Diurnal, 60).unwrap();
        for target in [4.0, 5.0, 7.0, 8.0, 9.0, 10.0, 12.0, 15.0, 20.0] {
            let v = sharpen(&b, target).unwrap();
            let got = peak_to_average(&v);
            assert!((got / target - 1.0).abs() < 0.001, "{target}: {got}");
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            assert!((mean - 1.0).abs() < 1e-9);
        }
        assert!(
            sharpen(&vec![1.0; 60], 2.0).is_err(),
            "flat cannot be sharpened"
        );
        assert!(sharpen(&b, 61.0).is_err());
    }

    #[test]
    fn warping_uniform_times_follows_the_curve() {
        let rate = sharpen(&base(&Curve::Diurnal, 30).unwrap(), 8.0).unwrap();
        let n = 30_000;
        let times: Vec<f64> = (0..n).map(|i| i as f64 * 3600.0 / n as f64).collect();
        let arrivals = warp(&times, 3600.0, &rate, 60.0);
        assert!(arrivals.windows(2).all(|w| w[0] <= w[1]), "order kept");
        assert!(arrivals.iter().all(|a| (0.0..=60.0).contains(a)));
        let got = peak_to_average(&rate_of(&arrivals, 60.0, 30));
        assert!((got / 8.0 - 1.0).abs() < 0.02, "{got}");
    }

    #[test]
    fn a_real_series_window_becomes_a_curve() {
        let path = crate::shared_data("traces/arrivals/nab-nyc_taxi.csv");
        let b = base(
            &Curve::Series {
                path: path.clone(),
                hours: 24.0,
            },
            48,
        )
        .unwrap();
        assert_eq!(b.len(), 48);
        // New York taxis: the night trough is well below the evening peak.
        assert!(peak_to_average(&b) > 1.3, "{b:?}");
        let e = base(&Curve::Series { path, hours: 0.5 }, 48).unwrap_err();
        assert!(e.to_string().contains("fill only"), "{e}");
    }
}
