//! `cargo xtask bench forecast`: a rolling-origin evaluation of the demand
//! forecasters on every shared arrival series (the NAB request-rate series
//! on their own step, the Azure and Mooncake traces counted per minute),
//! or on the series files given.
//!
//! At each origin every model forecasts the next `--horizon-minutes` from
//! up to 14 days of history before it (AWS predictive scaling's window),
//! and is scored against what followed: MASE (scaled by the seasonal naive
//! forecast's in-sample error on that history), sMAPE, and how often the
//! actual stayed under the P90. The baselines are seasonal naive (the same
//! step a day earlier; the last step when the history is shorter than two
//! days) and non-seasonal ETS; the product's forecaster is MSTL with the
//! daily and weekly seasons the history carries. Target: MSTL's MASE at
//! most 0.8x seasonal naive's, averaged over the series. A PNG per series
//! shows the forecasts against the actual. Then scaling is replayed on each
//! series (see `balancer_tests::scalesim`): reactive against predictive,
//! minutes short of capacity and replica-hours.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use balancer::forecast::{
    Model,
    backtest::{self, Settings},
    ets::Ets,
    mstl::Mstl,
    naive::SeasonalNaive,
    series::DAY_S,
};
use balancer::scale::ScaleSettings;
use balancer_tests::{
    fleet::report::aligned,
    forecast,
    scalesim::{self, Replay},
};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Most history a model is given: 14 days.
const MAX_HISTORY_S: f64 = 14.0 * DAY_S;
/// The target: MSTL's MASE over seasonal naive's, averaged over series.
const TARGET_RATIO: f64 = 0.8;
/// A replica's cold start in the scaling replay.
const COLD_START: Duration = Duration::from_secs(300);
/// Most of a series the scaling replay covers: its last week.
const REPLAY_S: f64 = 7.0 * DAY_S;

/// `bench forecast`'s options.
#[derive(Parser)]
#[command(about = "Rolling-origin evaluation of the demand forecasters")]
struct Args {
    /// A series file (repeatable): `timestamp,value` CSV, an Azure LLM trace
    /// CSV or a Mooncake JSONL; default: every shared arrival series.
    #[arg(long = "series", value_name = "FILE")]
    series: Vec<PathBuf>,
    /// Minutes forecast at each origin (at most a sixth of the series).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=10_080))]
    horizon_minutes: u64,
    /// Origins per series, spread over its second half.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=1000))]
    origins: u64,
    /// Where the plots go (default: the workspace's target/forecast).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let files = if args.series.is_empty() {
        forecast::shared_series()?
    } else {
        args.series.clone()
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/forecast"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bar = ProgressBar::new(files.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} series  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = vec![
        [
            "series",
            "step",
            "steps",
            "horizon",
            "origins",
            "MASE naive",
            "ets",
            "mstl",
            "mstl/naive",
            "sMAPE naive",
            "ets",
            "mstl",
            "P90 cover",
            "mstl fit s",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut ratios = Vec::new();
    let mut plots = Vec::new();
    let mut scaling = vec![
        [
            "series",
            "capacity",
            "replayed",
            "short min reactive",
            "predictive",
            "ratio",
            "replica-h reactive",
            "predictive",
            "change",
            "fits",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let (mut short, mut hours) = ([0.0; 2], [0.0; 2]);
    for file in &files {
        let name = file
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bar.set_message(name.clone());
        let s = forecast::load(file)?;
        let steps = |secs: f64| scalesim::steps(Duration::from_secs_f64(secs), s.step_s);
        let len = s.values.len();
        let horizon = steps(args.horizon_minutes as f64 * 60.0).min((len / 6).max(1));
        let day = s.steps_in(DAY_S);
        let settings = Settings {
            horizon,
            origins: args.origins as usize,
            max_history: steps(MAX_HISTORY_S),
            // Two days when the series has them (the seasonal naive needs one
            // whole day before its first forecast), else its first half.
            min_history: day.map_or(len / 2, |d| (2 * d).min(len / 2)),
        };
        // The season the baseline and MASE's scale use: a day, when every
        // origin's history holds one and a step.
        let m = day.filter(|d| settings.min_history > *d).unwrap_or(1);
        let naive = SeasonalNaive { period: m };
        let mstl = Mstl {
            periods: s.periods(),
        };
        let models: [&dyn Model; 3] = [&naive, &Ets, &mstl];
        let t0 = Instant::now();
        let scores = backtest::evaluate(&s.values, &models, &settings, m)
            .with_context(|| format!("{}", file.display()))?;
        let took = t0.elapsed().as_secs_f64();
        let mase = |i: usize| scores[i].mase;
        let ratio = match (mase(2), mase(0)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        ratios.extend(ratio);
        let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.3}"));
        let runs = scores[2].runs.len();
        rows.push(vec![
            name.clone(),
            format!("{:.0} min", s.step_s / 60.0),
            len.to_string(),
            format!("{horizon}"),
            runs.to_string(),
            f(mase(0)),
            f(mase(1)),
            f(mase(2)),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            format!("{:.1}%", scores[0].smape),
            format!("{:.1}%", scores[1].smape),
            format!("{:.1}%", scores[2].smape),
            format!("{:.0}%", 100.0 * scores[2].coverage),
            // Both ETS and MSTL fit at each origin; this is the run's whole
            // evaluation time over its fits, an upper bound on one MSTL fit.
            format!("{:.3}", took / (2 * runs) as f64),
        ]);
        let png = out.join(format!("{name}-forecast.png"));
        forecast::plot(
            &png,
            &format!("{name}: {horizon}-step forecasts at the last of {runs} origins"),
            &s,
            &scores,
        )?;
        plots.push(png);
        let (r, p, replayed, capacity) = replay_scaling(&s, &mstl, settings.max_history)
            .with_context(|| format!("{}: scaling replay", file.display()))?;
        short[0] += r.under_minutes;
        short[1] += p.under_minutes;
        hours[0] += r.replica_hours;
        hours[1] += p.replica_hours;
        scaling.push(vec![
            name.clone(),
            format!("{capacity:.1}"),
            format!("{:.1} h", replayed as f64 * s.step_s / 3600.0),
            format!("{:.0}", r.under_minutes),
            format!("{:.0}", p.under_minutes),
            ratio_of(p.under_minutes, r.under_minutes),
            format!("{:.1}", r.replica_hours),
            format!("{:.1}", p.replica_hours),
            format!(
                "{:+.1}%",
                100.0 * (p.replica_hours / r.replica_hours.max(1e-9) - 1.0)
            ),
            p.fits.to_string(),
        ]);
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "bench forecast: {} series, horizon {} min (in steps below), up to 14 days of history at each origin",
        files.len(),
        args.horizon_minutes
    );
    print!("{}", aligned(&rows));
    if !ratios.is_empty() {
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        println!(
            "MSTL's MASE over seasonal naive's, averaged over {} series: {mean:.3}x (target at most {TARGET_RATIO}x: {})",
            ratios.len(),
            if mean <= TARGET_RATIO {
                "met"
            } else {
                "missed"
            }
        );
    }
    println!(
        "\nscaling replayed on each series' last week (or second half): a replica serves the 95th percentile of that span over 8, headroom 10%, cold start {} s, scale-in after 15 min; predictive adds MSTL's P90 over the next two cold starts, refitted hourly",
        COLD_START.as_secs()
    );
    print!("{}", aligned(&scaling));
    println!(
        "over all series: minutes short {:.0} reactive, {:.0} predictive ({}; target at most 0.5x), replica-hours {:.1} and {:.1} ({:+.1}%; target at most +10%)",
        short[0],
        short[1],
        ratio_of(short[1], short[0]),
        hours[0],
        hours[1],
        100.0 * (hours[1] / hours[0].max(1e-9) - 1.0)
    );
    for p in plots {
        println!("  plot: {}", p.display());
    }
    Ok(())
}

/// `a / b` as a ratio, `-` when `b` is 0.
fn ratio_of(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// Reactive and predictive scaling on the last week of `s` (or its second
/// half): both outcomes, the steps replayed and the replica capacity used.
fn replay_scaling(
    s: &balancer::forecast::series::Series,
    forecaster: &dyn Model,
    max_history: usize,
) -> Result<(scalesim::Outcome, scalesim::Outcome, usize, f64)> {
    let len = s.values.len();
    let from = (len / 2).max(len.saturating_sub((REPLAY_S / s.step_s) as usize));
    let mut span: Vec<f64> = s.values[from..].to_vec();
    span.sort_by(f64::total_cmp);
    // A unit, not a tuning: the same for both modes, about 8 replicas at
    // the span's busy end.
    let capacity = (span[(span.len() * 95 / 100).min(span.len() - 1)] / 8.0).max(1e-6);
    let settings = ScaleSettings {
        min: 1,
        max: 10_000,
        capacity,
        headroom: 0.1,
        lead_time: COLD_START,
        cool_down: 3 * COLD_START,
    }
    .validate()?;
    let base = Replay {
        step_s: s.step_s,
        from,
        settings,
        forecaster: None,
        refit_every: scalesim::steps(Duration::from_secs(3600), s.step_s),
        max_history,
    };
    let reactive = scalesim::replay(&s.values, &base)?;
    let predictive = scalesim::replay(
        &s.values,
        &Replay {
            forecaster: Some(forecaster),
            ..base
        },
    )?;
    Ok((reactive, predictive, len - from, capacity))
}
