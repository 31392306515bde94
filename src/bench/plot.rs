//! The report's plot: four panels (TTFT p50, TTFT p99, TPOT p50, TPOT p99) against
//! output tokens per second, one line per run through its load levels, written as
//! SVG. Lower and further right is better: more throughput for less latency.

use std::path::Path;

use plotters::prelude::*;

use super::report::run_names;
use super::results::BenchResults;
use super::stats::{Distribution, LevelSummary};
use super::BenchError;

type Panel = (&'static str, fn(&LevelSummary) -> Option<f64>);

fn p(d: &Option<Distribution>, q: f64) -> Option<f64> {
    d.as_ref().and_then(|d| d.p(q))
}

const PANELS: [Panel; 4] = [
    ("TTFT p50 (ms)", |s| p(&s.ttft_ms, 50.0)),
    ("TTFT p99 (ms)", |s| p(&s.ttft_ms, 99.0)),
    ("TPOT p50 (ms)", |s| p(&s.tpot_ms, 50.0)),
    ("TPOT p99 (ms)", |s| p(&s.tpot_ms, 99.0)),
];

/// Each run's points for one panel: (output tok/s, value, level name), in the
/// run's level order. Levels without the value (nothing succeeded) are left out.
fn points(run: &BenchResults, get: fn(&LevelSummary) -> Option<f64>) -> Vec<(f64, f64, String)> {
    run.levels
        .iter()
        .filter_map(|l| get(&l.summary).map(|v| (l.summary.output_throughput, v, l.summary.load.clone())))
        .collect()
}

/// An axis end a little beyond the largest value, so no point sits on the frame.
fn axis_max(values: impl Iterator<Item = f64>) -> f64 {
    let m = values.filter(|v| v.is_finite()).fold(0.0, f64::max);
    if m > 0.0 {
        m * 1.15
    } else {
        1.0
    }
}

/// Tick labels with as many decimals as the axis range needs.
fn tick_format(max: f64) -> impl Fn(&f64) -> String {
    let decimals = if max >= 20.0 {
        0
    } else if max >= 2.0 {
        1
    } else {
        2
    };
    move |v: &f64| format!("{v:.decimals$}")
}

pub fn write_svg(runs: &[BenchResults], path: &Path) -> Result<(), BenchError> {
    draw(runs, path).map_err(|message| BenchError::Plot { path: path.to_path_buf(), message })
}

fn draw(runs: &[BenchResults], path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let names = run_names(runs);
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled("latency against output throughput (one point per load level)", ("sans-serif", 20))
        .map_err(|e| err(&e))?;
    for (area, (title, get)) in root.split_evenly((2, 2)).iter().zip(PANELS) {
        let all: Vec<Vec<(f64, f64, String)>> = runs.iter().map(|r| points(r, get)).collect();
        let xmax = axis_max(all.iter().flatten().map(|p| p.0));
        let ymax = axis_max(all.iter().flatten().map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| err(&e))?;
        let (xfmt, yfmt) = (tick_format(xmax), tick_format(ymax));
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("output tokens/s")
            .y_desc(title)
            .x_label_formatter(&xfmt)
            .y_label_formatter(&yfmt)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (pts, name)) in all.iter().zip(&names).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)).point_size(4))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(pts.iter().map(|(x, y, level)| {
                    EmptyElement::at((*x, *y))
                        + Text::new(level.clone(), (6, -14), ("sans-serif", 11).into_font())
                }))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::testing::sample;

    #[test]
    fn the_svg_has_a_line_per_run_and_labels_its_levels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        write_svg(&[sample("alpha", Some(0.2)), sample("beta", None)], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in ["alpha", "beta", "c=4", "TTFT p99 (ms)", "output tokens/s"] {
            assert!(svg.contains(text), "the plot mentions {text}");
        }
        // One polyline per run and panel.
        assert!(svg.matches("<polyline").count() >= 8, "{} polylines", svg.matches("<polyline").count());
        assert!(write_svg(&[sample("a", None)], &dir.path().join("missing/dir/p.svg")).is_err());
    }
}
