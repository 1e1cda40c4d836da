//! The forecast bench's inputs and plots: demand series read from files
//! (a `timestamp,value` series such as NAB's, or an Azure or Mooncake
//! request trace counted per minute), and a PNG per series of the actual
//! demand against the last origins' forecasts and P90.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use balancer::forecast::{backtest::Score, series::Series};
use plotters::prelude::*;

use crate::fleet::{plot, shape, workload};

/// Step that request traces are counted in.
pub const TRACE_STEP_S: f64 = 60.0;

/// A series by file: `*.csv` whose header is `timestamp,value` is a series
/// of counts; any other `*.csv` (Azure) or `*.jsonl` (Mooncake) is a trace
/// whose arrivals are counted per [`TRACE_STEP_S`].
pub fn load(path: &Path) -> Result<Series> {
    let shown = path.display();
    let is_csv = path.extension().is_some_and(|e| e == "csv");
    let mut header = String::new();
    if is_csv {
        // The first line only, at most 256 bytes: the format's header.
        use std::io::{BufRead, Read};
        let f = std::fs::File::open(path).with_context(|| format!("reading {shown}"))?;
        std::io::BufReader::new(f)
            .take(256)
            .read_line(&mut header)
            .with_context(|| format!("reading {shown}"))?;
    }
    let header = header.trim();
    let series = if header == "timestamp,value" {
        Series::from_points(&shape::read_points(path)?)
    } else {
        let rows = workload::load(path)?;
        let times: Vec<f64> = rows.iter().map(|r| r.at_s).collect();
        Series::from_arrivals(&times, TRACE_STEP_S)
    };
    series.with_context(|| format!("{shown}"))
}

/// Every arrival series of the shared data (`traces/arrivals/*.csv` and
/// `*.jsonl`), sorted.
pub fn shared_series() -> Result<Vec<PathBuf>> {
    let Some(base) = crate::shared_data_dir() else {
        bail!(
            "the shared data is not beside the checkout (../shared/data) nor at $BALANCER_SHARED_DATA"
        )
    };
    let dir = base.join("traces/arrivals");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv" || x == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.csv or *.jsonl series in {}", dir.display());
    }
    Ok(files)
}

/// One colour per model, in score order.
const COLOURS: [RGBColor; 3] = [
    RGBColor(150, 150, 150),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
];

/// Panels in a plot: the last origins'.
const PANELS: usize = 6;

/// Writes `file`: a panel for each of the last [`PANELS`] origins, with
/// three horizons of the actual before it, the actual after it, and each
/// model's forecast (the last model's P90 dashed).
pub fn plot(file: &Path, title: &str, s: &Series, scores: &[Score]) -> Result<()> {
    plot::font()?;
    let root = BitMapBackend::new(file, (1500, 850)).into_drawing_area();
    draw(&root, title, s, scores).map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", file.display()))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw(
    root: &Area<'_>,
    title: &str,
    s: &Series,
    scores: &[Score],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let body = root.titled(title, ("sans-serif", 24))?;
    let Some(first) = scores.first() else {
        return Ok(());
    };
    let shown = first.runs.len().min(PANELS);
    let panels = body.split_evenly((2, PANELS / 2));
    for (p, area) in panels.iter().enumerate().take(shown) {
        let k = first.runs.len() - shown + p;
        panel(area, s, scores, k, p == 0)?;
    }
    Ok(())
}

/// Origin `k` of every model, on `area`.
fn panel(
    area: &Area<'_>,
    s: &Series,
    scores: &[Score],
    k: usize,
    legend: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let at = scores[0].runs[k].at;
    let horizon = scores[0].runs[k].forecast.point.len();
    let lo = at.saturating_sub(3 * horizon);
    let hi = (at + horizon).min(s.values.len());
    let hours = |i: usize| (i as f64 - at as f64) * s.step_s / 3600.0;
    // Only what is drawn: every point forecast, the last model's P90.
    let last_p90 = scores
        .last()
        .map_or(&[][..], |sc| &sc.runs[k].forecast.p90[..]);
    let top = scores
        .iter()
        .flat_map(|sc| sc.runs[k].forecast.point.iter())
        .chain(last_p90)
        .chain(&s.values[lo..hi])
        .copied()
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("origin at {:.1} h", at as f64 * s.step_s / 3600.0),
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(hours(lo)..hours(hi).max(hours(lo) + 1e-6), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("hours from the origin")
        .y_desc(format!("per {:.0}-min step", s.step_s / 60.0))
        .label_style(("sans-serif", 12))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            (lo..hi).map(|i| (hours(i), s.values[i])),
            BLACK.stroke_width(1),
        ))?
        .label("actual")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    for (m, sc) in scores.iter().enumerate() {
        let c = COLOURS[m % COLOURS.len()];
        let style = c.stroke_width(2);
        let f = &sc.runs[k].forecast;
        chart
            .draw_series(LineSeries::new(
                f.point.iter().enumerate().map(|(h, v)| (hours(at + h), *v)),
                style,
            ))?
            .label(sc.model)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        if m + 1 == scores.len() {
            chart
                .draw_series(DashedLineSeries::new(
                    f.p90.iter().enumerate().map(|(h, v)| (hours(at + h), *v)),
                    4,
                    4,
                    c.mix(0.7).stroke_width(1),
                ))?
                .label(format!("{} P90", sc.model))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.mix(0.7)));
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shared_series_loads_on_its_own_step() {
        let files = shared_series().unwrap();
        assert!(files.len() >= 6, "{files:?}");
        for f in &files {
            let s = load(f).unwrap();
            assert!(
                s.values.len() >= 50,
                "{}: {} steps",
                f.display(),
                s.values.len()
            );
            let name = f.file_name().unwrap().to_string_lossy();
            if name.starts_with("nab-nyc_taxi") {
                assert_eq!(s.step_s, 1800.0);
                assert_eq!(s.periods(), vec![48, 336]);
            } else if name.starts_with("nab-") {
                assert_eq!(s.step_s, 300.0, "{name}");
            } else {
                assert_eq!(s.step_s, TRACE_STEP_S, "{name}");
            }
        }
    }

    #[test]
    fn a_bad_series_file_is_refused_naming_its_line() {
        let dir = std::env::temp_dir().join(format!("forecast-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.csv");
        std::fs::write(
            &f,
            "timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,x\n",
        )
        .unwrap();
        let e = format!("{:#}", load(&f).unwrap_err());
        assert!(e.contains("line 3"), "{e}");
        std::fs::write(&f, "timestamp,value\n2024-01-01 00:00:00,1\n").unwrap();
        let e = format!("{:#}", load(&f).unwrap_err());
        assert!(e.contains("fewer than two"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
