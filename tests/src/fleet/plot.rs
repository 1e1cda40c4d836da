//! PNG plots of a scenario's runs, for readers who would rather look than
//! read: latency over time against the arrival rate, and each node's load.
//!
//! Text is drawn with ab_glyph from DejaVu Sans (Debian's
//! `fonts-dejavu-core`, which `cargo xtask setup` installs), so no system
//! font library is linked.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, Result, bail};
use plotters::{coord::Shift, prelude::*, style::FontStyle};

use super::{plan::Plan, run::Run, scenario::Scenario};

/// Where the font is read from, unless `$BALANCER_FONT` names another
/// file (the VM suite's guest has it elsewhere).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Time buckets of the latency plot: about one per eight requests (so a
/// bucket's p90 is not just its maximum), 10 to 60.
fn bucket_count(requests: usize) -> usize {
    (requests / 8).clamp(10, 60)
}

/// One colour per strategy, in table order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Registers the font once; later calls return the first call's outcome.
pub fn font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var("BALANCER_FONT").unwrap_or_else(|_| FONT.to_string());
        let bytes = std::fs::read(&path).map_err(|e| {
            format!("{path}: {e} (install the Debian package fonts-dejavu-core; `cargo xtask setup` does)")
        })?;
        // Registered for the process's life: plotters keeps a static slice.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a font plotters can read"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Writes `<slug>-latency.png` and `<slug>-load.png` into `dir`; their
/// paths.
pub fn write(
    dir: &Path,
    slug: &str,
    s: &Scenario,
    plan: &Plan,
    runs: &[Run],
) -> Result<Vec<PathBuf>> {
    font()?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let latency = dir.join(format!("{slug}-latency.png"));
    let load = dir.join(format!("{slug}-load.png"));
    {
        let root = BitMapBackend::new(&latency, (1200, 800)).into_drawing_area();
        latency_plot(&root, s, plan, runs).map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("writing {}", latency.display()))?;
    }
    {
        let root = BitMapBackend::new(&load, (1200, 700)).into_drawing_area();
        load_plot(&root, s, runs).map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("writing {}", load.display()))?;
    }
    Ok(vec![latency, load])
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// `q`-quantile of `v` (sorted in place); `None` when empty.
fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
}

/// One time bucket: its start second, the TTFT p50 and p90 of requests sent
/// in it, and how many of them failed.
type Bucket = (f64, Option<f64>, Option<f64>, usize);

/// The buckets of `run`, `width` seconds each: TTFT of the LLM requests,
/// failures of any.
fn buckets(run: &Run, plan: &Plan, width: f64, n: usize) -> Vec<Bucket> {
    let mut ttft: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut failed = vec![0; n];
    for o in &run.outcomes {
        // A shed request (429) is an answer the route chose, not a failure;
        // the table counts it.
        if o.shed {
            continue;
        }
        let b = ((o.sent_s / width) as usize).min(n - 1);
        let llm = plan.requests.get(o.index).is_some_and(|p| p.task.is_none());
        match o.ttft_s {
            Some(t) if o.error.is_none() => {
                if llm {
                    ttft[b].push(t)
                }
            }
            _ => failed[b] += 1,
        }
    }
    ttft.iter_mut()
        .zip(failed)
        .enumerate()
        .map(|(i, (v, f))| (i as f64 * width, quantile(v, 0.5), quantile(v, 0.9), f))
        .collect()
}

fn latency_plot(root: &Area, s: &Scenario, plan: &Plan, runs: &[Run]) -> DrawResult {
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(560);
    let n = bucket_count(plan.requests.len());
    let width = (s.duration_s / n as f64).max(1e-3);
    let series: Vec<_> = runs.iter().map(|r| buckets(r, plan, width, n)).collect();
    let hi = series
        .iter()
        .flatten()
        .filter_map(|b| b.2)
        .fold(1.0_f64, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: time to first token, by send time", s.name),
            ("sans-serif", 26),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..s.duration_s, (0.01..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("TTFT, s (log)")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, (r, b)) in runs.iter().zip(&series).enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        // Segments between neighbouring buckets that both have answers: a
        // line across empty buckets would draw latencies nobody saw.
        let line = |pick: fn(&Bucket) -> Option<f64>, style: ShapeStyle| {
            let at = move |x: &Bucket| pick(x).map(|v| (x.0 + width / 2.0, v.max(0.01)));
            b.windows(2)
                .filter_map(move |w| Some(PathElement::new(vec![at(&w[0])?, at(&w[1])?], style)))
                .collect::<Vec<_>>()
        };
        let (p90, p50) = (c.stroke_width(2), c.mix(0.5).stroke_width(1));
        chart
            .draw_series(line(|x| x.2, p90))?
            .label(format!("{} p90", r.strategy.name()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], p90));
        // A dot per bucket's p90, so a lone bucket still shows.
        chart.draw_series(b.iter().filter_map(|x| {
            x.2.map(|v| Circle::new((x.0 + width / 2.0, v.max(0.01)), 3, c.filled()))
        }))?;
        chart
            .draw_series(line(|x| x.1, p50))?
            .label(format!("{} p50", r.strategy.name()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], p50));
        // Failed requests: a cross at the top of the plot, per bucket.
        chart.draw_series(
            b.iter()
                .filter(|x| x.3 > 0)
                .map(|x| Cross::new((x.0 + width / 2.0, hi / 1.2), 6, c.stroke_width(2))),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    arrivals(&bottom, s, plan, width, n)
}

/// The plan's arrival rate per bucket, under the latency plot.
fn arrivals(area: &Area, s: &Scenario, plan: &Plan, width: f64, n: usize) -> DrawResult {
    let mut count = vec![0usize; n];
    for p in &plan.requests {
        count[((p.at_s / width) as usize).min(n - 1)] += 1;
    }
    let rate: Vec<f64> = count.iter().map(|c| *c as f64 / width).collect();
    let hi = rate.iter().copied().fold(0.1, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "arrivals (peak/average {:.1}, target {:.1})",
                plan.achieved_par, s.shape.peak_to_average
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..s.duration_s, 0.0..hi)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("requests/s")
        .label_style(("sans-serif", 15))
        .draw()?;
    chart.draw_series(rate.iter().enumerate().map(|(i, r)| {
        let x = i as f64 * width;
        Rectangle::new(
            [(x, 0.0), (x + width, *r)],
            RGBColor(120, 120, 120).filled(),
        )
    }))?;
    Ok(())
}

/// Grouped bars per node: requests answered (top) and busy seconds
/// (bottom), one bar per strategy.
fn load_plot(root: &Area, s: &Scenario, runs: &[Run]) -> DrawResult {
    root.fill(&WHITE)?;
    let nodes: Vec<(String, String)> = runs
        .first()
        .map(|r| r.nodes.iter().map(|n| (n.0.clone(), n.1.clone())).collect())
        .unwrap_or_default();
    let requests: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| {
            nodes
                .iter()
                .map(|(n, _)| r.outcomes.iter().filter(|o| &o.backend == n).count() as f64)
                .collect()
        })
        .collect();
    let busy: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| {
            nodes
                .iter()
                .map(|(n, _)| {
                    r.nodes
                        .iter()
                        .find(|x| &x.0 == n)
                        .map_or(0.0, |x| x.2.busy_secs)
                })
                .collect()
        })
        .collect();
    let (top, bottom) = root.split_vertically(350);
    let title = format!("{}: requests answered per node", s.name);
    bars(&top, &title, "requests", &nodes, runs, &requests)?;
    bars(
        &bottom,
        "busy seconds per node",
        "busy s",
        &nodes,
        runs,
        &busy,
    )
}

fn bars(
    area: &Area,
    title: &str,
    unit: &str,
    nodes: &[(String, String)],
    runs: &[Run],
    values: &[Vec<f64>],
) -> DrawResult {
    let top = values.iter().flatten().copied().fold(1.0, f64::max);
    // Room above the bars for the node names and the legend.
    let hi = top * 2.2;
    let n = nodes.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..hi)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .y_desc(unit)
        .label_style(("sans-serif", 14))
        .draw()?;
    let centred =
        ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            ));
    chart.draw_series(nodes.iter().enumerate().map(|(i, (name, class))| {
        Text::new(
            format!("{name} ({class})"),
            (i as f64 + 0.5, top * 1.05),
            centred.clone(),
        )
    }))?;
    let w = 0.8 / runs.len().max(1) as f64;
    for (k, (r, v)) in runs.iter().zip(values).enumerate() {
        let c = COLOURS[k % COLOURS.len()];
        chart
            .draw_series(v.iter().enumerate().map(|(i, y)| {
                let x = i as f64 + 0.1 + k as f64 * w;
                Rectangle::new([(x, 0.0), (x + w, *y)], c.filled())
            }))?
            .label(r.strategy.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use balancer::emulate::node::Gauges;

    use super::*;
    use crate::fleet::{
        plan,
        run::{Outcome, Strategy},
    };

    fn runs(p: &Plan, fail_all: bool) -> Vec<Run> {
        Strategy::ALL
            .iter()
            .map(|(_, st)| Run {
                strategy: *st,
                outcomes: p
                    .requests
                    .iter()
                    .map(|q| Outcome {
                        index: q.index,
                        sent_s: q.at_s,
                        ttft_s: (!fail_all).then_some(0.05 + q.at_s / 10.0),
                        e2e_s: (!fail_all).then_some(1.0 + q.at_s / 5.0),
                        tokens: 1,
                        backend: format!("n-{}", q.index % 3),
                        error: fail_all.then(|| "refused".into()),
                        shed: false,
                    })
                    .collect(),
                nodes: (0..3)
                    .map(|i| {
                        let g = Gauges {
                            busy_secs: i as f64 + 1.0,
                            ..Gauges::default()
                        };
                        (format!("n-{i}"), "l4".into(), g)
                    })
                    .collect(),
                makespan_s: 10.0,
                cpu_s: 0.1,
                cores: 2,
                prediction: None,
            })
            .collect()
    }

    fn scenario() -> (Scenario, Plan) {
        let f = crate::scenarios_dir().join("01-customer-service.toml");
        let s = Scenario::load(&f).unwrap().quick();
        let p = plan::plan(&s).unwrap();
        (s, p)
    }

    #[test]
    fn both_plots_are_written_as_png() {
        let (s, p) = scenario();
        let dir = std::env::temp_dir().join(format!("fleet-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (slug, fail_all) in [("ok", false), ("failed", true)] {
            let files = write(&dir, slug, &s, &p, &runs(&p, fail_all)).unwrap();
            assert_eq!(files.len(), 2);
            for f in files {
                let bytes = std::fs::read(&f).unwrap();
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", f.display());
                assert!(
                    bytes.len() > 10_000,
                    "{}: {} bytes",
                    f.display(),
                    bytes.len()
                );
            }
        }
        // No runs at all still plots (empty axes), rather than failing.
        assert_eq!(write(&dir, "empty", &s, &p, &[]).unwrap().len(), 2);
        // FLEET_PLOT_KEEP=1 keeps them, to look at.
        if std::env::var_os("FLEET_PLOT_KEEP").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let (s, p) = scenario();
        let e = write(Path::new("/nonexistent/plots"), "x", &s, &p, &[]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/plots"), "{e}");
    }
}
