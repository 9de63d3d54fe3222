//! PNG charts of a run's per-second series, drawn with plotters on an in-memory bitmap and
//! encoded with `png`. The font is DejaVu Sans embedded by the `dejavu` crate, so drawing
//! needs no system fonts and no fontconfig.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::stats::SecondPoint;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 600;

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("drawing {path}: {message}")]
    Draw { path: String, message: String },
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| ())
            .expect("the embedded DejaVu font parses");
    });
}

/// One line of a chart.
pub struct Line<'a> {
    pub label: &'a str,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// Draws lines over time to a PNG at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    lines: &[Line],
) -> Result<(), ChartError> {
    register_font();
    let shown = path.display().to_string();
    let draw_err = |e: String| ChartError::Draw {
        path: shown.clone(),
        message: e,
    };
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        let x_max = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .fold(1.0, f64::max);
        let y_max = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0, f64::max);
        let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.1 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(90)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| draw_err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc(y_label)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .y_label_formatter(&|v| format_axis(*v))
            .draw()
            .map_err(|e| draw_err(e.to_string()))?;
        for line in lines {
            let color = line.color;
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| draw_err(e.to_string()))?
                .label(line.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| draw_err(e.to_string()))?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    write_png(path, &buf).map_err(|message| ChartError::Write {
        path: shown,
        message,
    })
}

fn format_axis(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn write_png(path: &Path, rgb: &[u8]) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())
}

fn series(points: &[SecondPoint], f: impl Fn(&SecondPoint) -> f64) -> Vec<(f64, f64)> {
    points.iter().map(|p| (p.t_s, f(p))).collect()
}

/// Throughput, latency and (when sampled) memory charts; returns the files written.
pub fn draw_all(out_dir: &Path, points: &[SecondPoint]) -> Result<Vec<PathBuf>, ChartError> {
    let mut written = Vec::new();
    let path = out_dir.join("throughput.png");
    line_chart(
        &path,
        "Throughput per second",
        "commands per second",
        &[
            Line {
                label: "offered",
                color: RGBColor(90, 90, 90),
                points: series(points, |p| p.offered as f64),
            },
            Line {
                label: "engine verdicts",
                color: RGBColor(31, 119, 180),
                points: series(points, |p| p.verdicts as f64),
            },
            Line {
                label: "accepted",
                color: RGBColor(44, 160, 44),
                points: series(points, |p| p.accepted as f64),
            },
            Line {
                label: "shed (overloaded + rate limited)",
                color: RGBColor(214, 39, 40),
                points: series(points, |p| p.shed as f64),
            },
            Line {
                label: "other errors and rejections",
                color: RGBColor(140, 86, 75),
                points: series(points, |p| p.errors as f64),
            },
        ],
    )?;
    written.push(path);
    let path = out_dir.join("latency.png");
    line_chart(
        &path,
        "Latency from scheduled send time, per second",
        "milliseconds",
        &[
            Line {
                label: "ack p99",
                color: RGBColor(148, 103, 189),
                points: series(points, |p| p.ack_p99_ms),
            },
            Line {
                label: "accept p50",
                color: RGBColor(44, 160, 44),
                points: series(points, |p| p.accept_p50_ms),
            },
            Line {
                label: "accept p90",
                color: RGBColor(31, 119, 180),
                points: series(points, |p| p.accept_p90_ms),
            },
            Line {
                label: "accept p99",
                color: RGBColor(255, 127, 14),
                points: series(points, |p| p.accept_p99_ms),
            },
            Line {
                label: "accept max",
                color: RGBColor(214, 39, 40),
                points: series(points, |p| p.accept_max_ms),
            },
        ],
    )?;
    written.push(path);
    let names: std::collections::BTreeSet<&String> =
        points.iter().flat_map(|p| p.rss_mib.keys()).collect();
    if !names.is_empty() {
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
        ];
        let lines: Vec<Line> = names
            .iter()
            .enumerate()
            .map(|(i, name)| Line {
                label: name.as_str(),
                color: colors[i % colors.len()],
                points: points
                    .iter()
                    .filter_map(|p| p.rss_mib.get(*name).map(|v| (p.t_s, *v)))
                    .collect(),
            })
            .collect();
        let path = out_dir.join("memory.png");
        line_chart(&path, "Resident memory", "MiB", &lines)?;
        written.push(path);
    }
    Ok(written)
}
