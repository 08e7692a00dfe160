//! Charts as PNG bytes, drawn with an embedded font (DejaVu Sans, its licence beside it) so
//! they read the same on any machine: a confusion-matrix heatmap with class names and
//! counts, and the training curves of a run (losses; validation metrics).

use std::sync::OnceLock;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok()
            && plotters::style::register_font(FAMILY, FontStyle::Bold, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Other("charts: the embedded font does not load".into()))
    }
}

fn draw_error(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("charts: {e}"))
}

/// Encodes an RGB buffer as PNG.
fn png(buffer: Vec<u8>, (width, height): (u32, u32)) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&buffer, width, height, image::ColorType::Rgb8)
        .map_err(draw_error)?;
    Ok(out)
}

/// A confusion matrix (`counts[true][predicted]`) as a heatmap: rows are the true classes
/// (first at the top), columns the predicted ones, each cell its count, shaded by the share
/// of its row (the recall of the diagonal).
pub fn confusion_png(title: &str, classes: &[&str], counts: &[Vec<u64>]) -> Result<Vec<u8>> {
    font()?;
    let n = classes.len() as i32;
    let label_width = classes.iter().map(|c| c.chars().count()).max().unwrap_or(4) as u32;
    let size = (260 + 90 * n as u32 + 9 * label_width, 200 + 70 * n as u32);
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 24))
            .margin(16)
            .x_label_area_size(70)
            .y_label_area_size(40 + 9 * label_width)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
            .map_err(draw_error)?;
        let name = |v: &SegmentValue<i32>, flip: bool| match v {
            SegmentValue::CenterOf(i) if (0..n).contains(i) => {
                classes[if flip { (n - 1 - i) as usize } else { *i as usize }].to_string()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n as usize)
            .y_labels(n as usize)
            .x_label_formatter(&|v| name(v, false))
            .y_label_formatter(&|v| name(v, true))
            .x_desc("predicted class")
            .y_desc("true class")
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .draw()
            .map_err(draw_error)?;
        for (t, row) in counts.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (p, &count) in row.iter().enumerate() {
                let share = count as f64 / total;
                let (x, y) = (p as i32, n - 1 - t as i32);
                let color = shade(share);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [
                            (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                            (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                        ],
                        color.filled(),
                    )))
                    .map_err(draw_error)?;
                let ink = if share > 0.55 { WHITE } else { BLACK };
                let style =
                    TextStyle::from((FAMILY, 20).into_font()).color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                chart
                    .draw_series(std::iter::once(Text::new(
                        count.to_string(),
                        (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                        style,
                    )))
                    .map_err(draw_error)?;
            }
        }
        root.present().map_err(draw_error)?;
    }
    png(buffer, size)
}

/// From near-white (0) to dark blue (1).
fn shade(share: f64) -> RGBColor {
    let (from, to) = ([247.0, 251.0, 255.0], [8.0, 48.0, 107.0]);
    let mix = |i: usize| (from[i] + (to[i] - from[i]) * share.clamp(0.0, 1.0)) as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

/// A named series of (step, value) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Two panels side by side: `left` (losses) and `right` (validation metrics), against the
/// optimizer step, each series with its legend.
pub fn curves_png(title: &str, left: &[Series], right: &[Series]) -> Result<Vec<u8>> {
    font()?;
    let size = (1200u32, 500u32);
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root.titled(title, (FAMILY, 24)).map_err(draw_error)?;
        let (a, b) = root.split_horizontally(size.0 / 2);
        panel(&a, "loss", left, SeriesLabelPosition::UpperRight)?;
        panel(&b, "validation", right, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(draw_error)?;
    }
    png(buffer, size)
}

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    y_desc: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<()> {
    let points = series.iter().flat_map(|s| s.points.iter()).filter(|(_, y)| y.is_finite());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc(y_desc)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(draw_error)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let finite: Vec<(f64, f64)> = s.points.iter().copied().filter(|(_, y)| y.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(finite.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(finite.iter().map(|&p| Circle::new(p, 2, color.filled()))).map_err(draw_error)?;
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .draw()
            .map_err(draw_error)?;
    }
    Ok(())
}

/// Grouped bars: one group per entry of `groups`, one bar per series (its values by group),
/// scores up to 1 (negative ones, such as a kappa below chance, drawn down from 0).
pub fn bars_png(title: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> Result<Vec<u8>> {
    font()?;
    // Each group takes one slot per series and an empty one between groups.
    let per_group = series.len() as i32 + 1;
    let slots = (groups.len() as i32 * per_group).max(1);
    let size = ((260 + 30 * slots as u32).max(700), 520u32);
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let low = series.iter().flat_map(|(_, v)| v.iter()).copied().filter(|v| v.is_finite()).fold(0.0f64, f64::min);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d((0..slots - 1).into_segmented(), (low - 0.05).min(0.0)..1.05)
            .map_err(draw_error)?;
        let middle = (series.len() as i32 - 1) / 2;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(slots as usize)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if i % per_group == middle => {
                    groups.get((i / per_group) as usize).cloned().unwrap_or_default()
                }
                _ => String::new(),
            })
            .x_label_style((FAMILY, 12))
            .y_desc("score")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(draw_error)?;
        for (j, (name, values)) in series.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            let bars = values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(g, &v)| {
                let slot = g as i32 * per_group + j as i32;
                Rectangle::new([(SegmentValue::Exact(slot), 0.0), (SegmentValue::Exact(slot + 1), v)], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(draw_error)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    png(buffer, size)
}

/// The series of a run's `metrics.jsonl` records: the training loss and each evaluation's
/// losses (left), and each evaluation's other metrics (right).
pub fn run_series(records: &[serde_json::Value]) -> (Vec<Series>, Vec<Series>) {
    let mut left: Vec<Series> = Vec::new();
    let mut right: Vec<Series> = Vec::new();
    let push = |list: &mut Vec<Series>, name: String, x: f64, y: f64| match list.iter_mut().find(|s| s.name == name) {
        Some(s) => s.points.push((x, y)),
        None => list.push(Series { name, points: vec![(x, y)] }),
    };
    for r in records {
        let (Some(kind), Some(step)) = (r["kind"].as_str(), r["step"].as_f64()) else { continue };
        let Some(map) = r.as_object() else { continue };
        for (key, value) in map {
            if matches!(key.as_str(), "kind" | "step" | "epoch" | "time" | "lr" | "grad_norm" | "perplexity") {
                continue;
            }
            let Some(y) = value.as_f64() else { continue };
            let name = format!("{kind} {key}");
            if key == "loss" || key.ends_with("/loss") {
                push(&mut left, name, step, y);
            } else if kind == "eval" {
                push(&mut right, name, step, y);
            }
        }
    }
    (left, right)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> image::RgbImage {
        image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap().to_rgb8()
    }

    #[test]
    fn heatmap_and_curves_are_pngs_of_the_expected_size_with_ink() {
        let png = confusion_png(
            "status",
            &["solved", "to be tested", "no solution"],
            &[vec![5, 1, 0], vec![2, 7, 1], vec![0, 0, 9]],
        )
        .unwrap();
        let img = decode(&png);
        assert_eq!(img.dimensions(), (260 + 270 + 9 * 12, 200 + 210));
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 100)).count();
        assert!(dark > 500, "text and axes are drawn: {dark} dark pixels");
        let records: Vec<serde_json::Value> = (1..=20)
            .map(|s| serde_json::json!({"kind": "train", "step": s, "loss": 2.0 / s as f64, "lr": 0.1}))
            .chain((1..=4).map(|e| serde_json::json!({"kind": "eval", "step": e * 5, "loss": 1.0 / e as f64, "status/f1_weighted": 0.2 * e as f64})))
            .collect();
        let (left, right) = run_series(&records);
        assert_eq!(left.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["train loss", "eval loss"]);
        assert_eq!(right.len(), 1);
        assert_eq!(right[0].points.len(), 4);
        let img = decode(&curves_png("run", &left, &right).unwrap());
        assert_eq!(img.dimensions(), (1200, 500));
        let groups = vec!["taft status".to_string(), "tapt status".to_string()];
        let series = vec![("accuracy".to_string(), vec![0.6, 0.7]), ("kappa".to_string(), vec![-0.1, 0.4])];
        let bars = bars_png("comparison", &groups, &series).unwrap();
        assert_eq!(decode(&bars).dimensions(), (700, 520));
    }
}
