//! PNG charts of a run's per-second series, drawn with plotters on an in-memory bitmap and
//! encoded with `png`. The font is DejaVu Sans embedded by the `dejavu` crate, so drawing
//! needs no system fonts and no fontconfig.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::server::ServerPoint;
use crate::server::delta::{HOPS, VERDICT, short_name};
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

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The server's points as (time, figure) where `f` has one.
fn server_series(
    server: &[ServerPoint],
    f: impl Fn(&ServerPoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    server
        .iter()
        .filter_map(|p| f(p).map(|v| (p.t_s, v)))
        .collect()
}

/// The server side's charts, when any point has figures from `/metrics`: each hop's mean
/// beside the client's accept latency, shed by reason, consumer lag.
fn draw_server(
    out_dir: &Path,
    points: &[SecondPoint],
    server: &[ServerPoint],
) -> Result<Vec<PathBuf>, ChartError> {
    if !server.iter().any(ServerPoint::has_data) {
        return Ok(Vec::new());
    }
    let mut written = Vec::new();
    let hop_mean =
        |metric: &'static str| move |s: &ServerPoint| s.hops.get(metric).and_then(|h| h.mean_ms);
    let mut lines = vec![
        Line {
            label: "client: accept mean (from scheduled send)",
            color: RGBColor(90, 90, 90),
            // A second without verdicts has no mean (not a mean of 0).
            points: points
                .iter()
                .filter(|p| p.verdicts > 0)
                .map(|p| (p.t_s, p.accept_mean_ms))
                .collect(),
        },
        Line {
            label: "server: verdict mean (whole path)",
            color: RGBColor(214, 39, 40),
            points: server_series(server, hop_mean(VERDICT)),
        },
    ];
    for (i, metric) in HOPS.into_iter().enumerate() {
        let points = server_series(server, hop_mean(metric));
        if !points.is_empty() {
            lines.push(Line {
                label: short_name(metric),
                color: PALETTE[i % PALETTE.len()],
                points,
            });
        }
    }
    let path = out_dir.join("server_latency.png");
    line_chart(
        &path,
        "Where the time goes: each hop's mean per second (/metrics) beside the client's",
        "milliseconds",
        &lines,
    )?;
    written.push(path);

    let reasons: std::collections::BTreeSet<&String> =
        server.iter().flat_map(|s| s.shed.keys()).collect();
    let mut lines = vec![Line {
        label: "client: shed (overloaded + rate limited)",
        color: RGBColor(90, 90, 90),
        points: series(points, |p| p.shed as f64),
    }];
    for (i, reason) in reasons.iter().enumerate() {
        lines.push(Line {
            label: reason.as_str(),
            color: PALETTE[i % PALETTE.len()],
            // A round missing a service does not know the whole rate.
            points: server_series(server, |s| {
                let rate = s.shed_per_s.get(*reason).copied().unwrap_or(0.0);
                (s.has_data() && s.missing.is_empty()).then_some(rate)
            }),
        });
    }
    let path = out_dir.join("server_shed.png");
    line_chart(
        &path,
        "Shed per second by reason (gateway_shed_total)",
        "commands per second",
        &lines,
    )?;
    written.push(path);

    let lag = server_series(server, |s| s.consumer_lag_records);
    let accounts_lag = server_series(server, |s| s.accounts_consumer_lag_records);
    if !lag.is_empty() || !accounts_lag.is_empty() {
        let path = out_dir.join("consumer_lag.png");
        let mut lines = Vec::new();
        if !lag.is_empty() {
            lines.push(Line {
                label: "engine, all pairs",
                color: PALETTE[0],
                points: lag,
            });
            lines.push(Line {
                label: "engine, the largest pair",
                color: PALETTE[1],
                points: server_series(server, |s| s.consumer_lag_max_pair_records),
            });
        }
        if !accounts_lag.is_empty() {
            lines.push(Line {
                label: "account stage, all shards",
                color: PALETTE[2],
                points: accounts_lag,
            });
        }
        line_chart(
            &path,
            "Consumer lag (engine_consumer_lag_records, accounts_consumer_lag_records)",
            "records",
            &lines,
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Throughput, latency and (when sampled) memory and server-side charts; returns the files
/// written.
pub fn draw_all(
    out_dir: &Path,
    points: &[SecondPoint],
    server: &[ServerPoint],
) -> Result<Vec<PathBuf>, ChartError> {
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
    written.extend(draw_server(out_dir, points, server)?);
    Ok(written)
}
