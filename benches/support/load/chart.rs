//! `benches/chart.svg`, drawn with plotters' SVG backend (text as SVG elements, no
//! font files needed).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{Section, Series};

const RAW: RGBColor = RGBColor(0x99, 0x99, 0x99);
const HYGIENE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const RAW_STORM: RGBColor = RGBColor(0x55, 0x55, 0x55);
const HYGIENE_STORM: RGBColor = RGBColor(0xd6, 0x27, 0x28);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws every panel whose data was saved; a panel without data says so.
pub(crate) fn draw(sections: &[Section], path: &str) {
    let root = SVGBackend::new(path, (1200, 1200)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    let root = root
        .titled(
            "conn-hygiene: hygiene vs raw axum (benches/results.md)",
            ("sans-serif", 24),
        )
        .expect("title");
    let panels = root.split_evenly((3, 2));
    let find = |section: &str, series: &str| -> Option<Series> {
        sections
            .iter()
            .find(|s| s.name == section)?
            .series
            .iter()
            .find(|s| s.name == series)
            .cloned()
    };
    let results = [
        bars(
            &panels[0],
            "Instructions per request, connection, message (thousands)",
            &[
                "HTTP/1.1 request",
                "connection",
                "HTTP/2 request",
                "WS message",
                "HTTP/1.1, no Keep-Alive",
            ],
            find("instructions", "instructions_raw"),
            find("instructions", "instructions_hygiene"),
            1e-3,
        ),
        bars(
            &panels[1],
            "Server RSS per idle connection (KiB)",
            &["per connection"],
            find("scale", "rss_raw"),
            find("scale", "rss_hygiene"),
            1.0 / 1024.0,
        ),
        lines(
            &panels[2],
            "Throughput per round, closed loop (rps)",
            "round",
            &[
                ("raw", RAW, find("throughput", "rps_raw")),
                ("hygiene", HYGIENE, find("throughput", "rps_hygiene")),
            ],
            false,
        ),
        lines(
            &panels[3],
            "Paced latency (µs) by percentile, median of rounds",
            "percentile",
            &[
                ("raw", RAW, percentile_axis(find("throughput", "paced_raw"))),
                (
                    "hygiene",
                    HYGIENE,
                    percentile_axis(find("throughput", "paced_hygiene")),
                ),
            ],
            true,
        ),
        lines(
            &panels[4],
            "Idle timeout: close time − deadline (ms), sorted",
            "% of connections",
            &[("hygiene", HYGIENE, find("scale", "idle_close_delta_ms"))],
            false,
        ),
        lines(
            &panels[5],
            "Storm: normal clients' latency (ms) by percentile",
            "percentile",
            &[
                (
                    "raw calm",
                    RAW,
                    percentile_axis(find("storm", "storm_raw_calm")),
                ),
                (
                    "raw storm",
                    RAW_STORM,
                    percentile_axis(find("storm", "storm_raw_storm")),
                ),
                (
                    "hygiene calm",
                    HYGIENE,
                    percentile_axis(find("storm", "storm_hygiene_calm")),
                ),
                (
                    "hygiene storm",
                    HYGIENE_STORM,
                    percentile_axis(find("storm", "storm_hygiene_storm")),
                ),
            ],
            true,
        ),
    ];
    for result in results {
        if let Err(e) = result {
            eprintln!("chart: {e}");
        }
    }
    root.present().expect("write chart.svg");
}

const PERCENTILES: [f64; 7] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99];

/// Percentiles 50, 75, 90, 95, 99, 99.9, 99.99 at evenly spaced x positions.
fn percentile_axis(series: Option<Series>) -> Option<Series> {
    series.map(|s| Series {
        name: s.name,
        points: s
            .points
            .iter()
            .filter_map(|&(p, y)| {
                let i = PERCENTILES.iter().position(|q| (q - p).abs() < 1e-9)?;
                Some((i as f64, y))
            })
            .collect(),
    })
}

fn percentile_label(x: f64) -> String {
    let i = x.round();
    match PERCENTILES.get(i as usize) {
        Some(p) if (x - i).abs() < 0.01 => format!("p{p}"),
        _ => String::new(),
    }
}

fn no_data(area: &Area<'_>, title: &str) -> Result {
    area.draw(&Text::new(
        format!("{title}: no data (run that section)"),
        (20, 40),
        ("sans-serif", 16),
    ))?;
    Ok(())
}

fn lines(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    series: &[(&str, RGBColor, Option<Series>)],
    percentile_x: bool,
) -> Result {
    let present: Vec<_> = series
        .iter()
        .filter_map(|(name, color, s)| Some((*name, *color, s.as_ref()?)))
        .filter(|(_, _, s)| !s.points.is_empty())
        .collect();
    if present.is_empty() {
        return no_data(area, title);
    }
    let points = present.iter().flat_map(|(_, _, s)| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.1).max(y1.abs() * 0.02).max(1e-3);
    let (y0, y1) = if y0 >= 0.0 {
        (0f64.max(y0 - pad).min(0.0_f64.max(y0 - pad)), y1 + pad)
    } else {
        (y0 - pad, y1 + pad)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc).light_line_style(WHITE.mix(0.0));
    let label = |x: &f64| percentile_label(*x);
    if percentile_x {
        mesh.x_label_formatter(&label).x_labels(13);
    }
    mesh.draw()?;
    for (name, color, s) in present {
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        if s.points.len() <= 40 {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// Raw and hygiene bars side by side for each label; the series hold one point per
/// label, `(index, value)`, scaled by `scale` for display.
fn bars(
    area: &Area<'_>,
    title: &str,
    labels: &[&str],
    raw: Option<Series>,
    hygiene: Option<Series>,
    scale: f64,
) -> Result {
    let (Some(raw), Some(hygiene)) = (raw, hygiene) else {
        return no_data(area, title);
    };
    let value = |s: &Series, i: usize| {
        s.points
            .iter()
            .find(|(x, _)| *x as usize == i)
            .map_or(0.0, |(_, y)| y * scale)
    };
    let top = (0..labels.len())
        .map(|i| value(&raw, i).max(value(&hygiene, i)))
        .fold(0.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..labels.len() as f64, 0f64..top.max(1e-3))?;
    let names = labels.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    let label = move |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 0.01 {
            names.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len() * 2 + 1)
        .x_label_formatter(&label)
        .draw()?;
    for (offset, name, color, s) in [
        (0.15, "raw", RAW, &raw),
        (0.5, "hygiene", HYGIENE, &hygiene),
    ] {
        chart
            .draw_series((0..labels.len()).map(|i| {
                let x = i as f64 + offset;
                Rectangle::new([(x, 0.0), (x + 0.33, value(s, i))], color.filled())
            }))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series((0..labels.len()).map(|i| {
            let v = value(s, i);
            Text::new(
                format!("{v:.1}"),
                (i as f64 + offset + 0.04, v + top * 0.03),
                ("sans-serif", 14),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}
