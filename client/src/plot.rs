//! PNG charts with `plotters` (bitmap backend): the DET curve of `kws-client eval`, and a generic
//! line chart (used by `kws-loadtest` for its capacity plot).
//!
//! Text is rendered with plotters' `ab_glyph` feature from a TrueType file found at run time — no
//! fontconfig: `$KWS_PLOT_FONT`, else DejaVu Sans or Liberation Sans at their Debian paths (package
//! `fonts-dejavu-core`). Without a font the charts are drawn without any text (axes, grid and lines
//! only) and [`Drawn::text`] is false; `KWS_PLOT_FONT=none` asks for that.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::eval::Report;

/// Font files tried in order after `$KWS_PLOT_FONT`.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// A chart could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    pub path: PathBuf,
    pub reason: String,
}

/// What was drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawn {
    /// False if no font was found: the chart has no text.
    pub text: bool,
    /// Lines drawn.
    pub series: usize,
}

static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Register a font for `sans-serif` once per process; returns the file used, if any.
pub fn ensure_font() -> Option<&'static Path> {
    FONT.get_or_init(|| {
        if std::env::var_os("KWS_PLOT_FONT").is_some_and(|v| v == "none") {
            return None;
        }
        let candidates = std::env::var_os("KWS_PLOT_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Some(path);
            }
        }
        None
    })
    .as_deref()
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Axis scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log,
}

/// A line chart description.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    pub series: &'a [Series],
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Axis numbers: 3 significant digits, no trailing zeros.
fn short(v: &f64) -> String {
    let a = v.abs();
    let s = if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        let decimals = (-a.log10()).ceil() as usize + 2;
        format!("{v:.decimals$}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn draw_on<X, Y>(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    c: &Chart<'_>,
    x: X,
    y: Y,
    text: bool,
) -> Result<(), Box<dyn std::error::Error>>
where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if text {
        builder
            .caption(c.title, ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(70);
    } else {
        builder.x_label_area_size(5).y_label_area_size(5);
    }
    let mut chart = builder.build_cartesian_2d(x, y)?;
    if text {
        chart
            .configure_mesh()
            .x_desc(c.x_label)
            .y_desc(c.y_label)
            .x_labels(12)
            .y_labels(12)
            .x_label_formatter(&short)
            .y_label_formatter(&short)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
    } else {
        // The mesh measures label text even with no labels: without a font, draw only a frame.
        let (w, h) = chart.plotting_area().dim_in_pixel();
        let frame = [
            (0, 0),
            (w as i32 - 1, 0),
            (w as i32 - 1, h as i32 - 1),
            (0, h as i32 - 1),
            (0, 0),
        ];
        chart
            .plotting_area()
            .strip_coord_spec()
            .draw(&PathElement::new(frame, BLACK))?;
    }
    for (i, s) in c.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line = chart.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?;
        if text {
            line.label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    if text && !c.series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

/// Draw `c` into a `width` x `height` PNG at `path`.
pub fn line_chart_png(path: &Path, c: &Chart<'_>, width: u32, height: u32) -> Result<Drawn, PlotError> {
    charts_png(path, std::slice::from_ref(c), width, height)
}

/// Draw `charts` stacked vertically (equal heights) into one `width` x `height` PNG at `path`.
pub fn charts_png(path: &Path, charts: &[Chart<'_>], width: u32, height: u32) -> Result<Drawn, PlotError> {
    let text = ensure_font().is_some();
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let areas = root.split_evenly((charts.len().max(1), 1));
    for (c, area) in charts.iter().zip(&areas) {
        let (x0, x1) = c.x_range;
        let (y0, y1) = c.y_range;
        let r = match (c.x_scale, c.y_scale) {
            (Scale::Linear, Scale::Linear) => draw_on(area, c, x0..x1, y0..y1, text),
            (Scale::Log, Scale::Linear) => draw_on(area, c, (x0..x1).log_scale(), y0..y1, text),
            (Scale::Linear, Scale::Log) => draw_on(area, c, x0..x1, (y0..y1).log_scale(), text),
            (Scale::Log, Scale::Log) => draw_on(area, c, (x0..x1).log_scale(), (y0..y1).log_scale(), text),
        };
        r.map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))?;
    Ok(Drawn {
        text,
        series: charts.iter().map(|c| c.series.len()).sum(),
    })
}

fn duration(ms: u64) -> String {
    match ms {
        0..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        _ => format!("{:.2} h", ms as f64 / 3_600_000.0),
    }
}

/// The DET curve of an evaluation: miss rate vs false alarms per hour, both on log axes, one line
/// per keyword that has labels. Zeros cannot sit on a log axis: a point with no false alarm is drawn
/// at half a false alarm per evaluated hour, and one with no miss at half a miss (the resolution of
/// the data).
pub fn det_png(path: &Path, report: &Report) -> Result<Drawn, PlotError> {
    let hours = report.audio_hours.max(1e-9);
    let fa_floor = 0.5 / hours;
    let mut series = Vec::new();
    let mut miss_floor: f64 = 1.0;
    let mut fa_max = fa_floor * 10.0;
    for k in report.keywords.iter().filter(|k| k.labels > 0) {
        let floor = 0.5 / k.labels as f64;
        miss_floor = miss_floor.min(floor);
        let points: Vec<(f64, f64)> = k
            .points
            .iter()
            .filter_map(|p| p.miss_rate.map(|m| (p.fa_per_hour.max(fa_floor), m.max(floor))))
            .collect();
        fa_max = points.iter().map(|p| p.0).fold(fa_max, f64::max);
        series.push(Series {
            name: k.keyword.clone(),
            points,
        });
    }
    let chart = Chart {
        title: &format!(
            "DET: {} ({} of audio, {} files)",
            report.model.name,
            duration(report.audio_ms),
            report.files
        ),
        x_label: "false alarms per hour",
        y_label: "miss rate",
        x_scale: Scale::Log,
        y_scale: Scale::Log,
        x_range: (fa_floor * 0.8, fa_max * 1.5),
        y_range: (miss_floor * 0.8, 1.05),
        series: &series,
    };
    line_chart_png(path, &chart, 900, 650)
}
