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

/// The losses (`left`) in one panel, and the validation metrics (`right`) in one panel per
/// task (series named `eval TASK/METRIC`), against the optimizer step, two panels a row.
pub fn curves_png(title: &str, left: &[Series], right: &[Series]) -> Result<Vec<u8>> {
    font()?;
    let mut panels: Vec<(String, Vec<Series>)> = vec![("loss".into(), left.to_vec())];
    for s in right {
        let (task, metric) = match s.name.split_once('/') {
            Some((task, metric)) => (task.trim_start_matches("eval ").to_string(), metric.to_string()),
            None => ("validation".to_string(), s.name.trim_start_matches("eval ").to_string()),
        };
        let series = Series { name: metric, points: s.points.clone() };
        match panels.iter_mut().find(|(t, _)| *t == task) {
            Some((_, list)) => list.push(series),
            None => panels.push((task, vec![series])),
        }
    }
    let rows = panels.len().div_ceil(2) as u32;
    let size = (1200u32, 50 + 420 * rows);
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root.titled(title, (FAMILY, 24)).map_err(draw_error)?;
        let areas = root.split_evenly((rows as usize, 2));
        for (k, (name, series)) in panels.iter().enumerate() {
            let legend = if k == 0 { SeriesLabelPosition::UpperRight } else { SeriesLabelPosition::LowerRight };
            let y_desc = if k == 0 { name.clone() } else { format!("validation: {name}") };
            panel(&areas[k], &y_desc, series, legend)?;
        }
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
        // Steps are whole numbers: ticks between them stay unlabelled.
        .x_labels((x_max as usize + 1).min(10))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        })
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

/// One task's panel in [`score_panels_png`]: two bars per label (macro F1, kappa), each the
/// mean over runs with its 95 % interval as an error bar.
#[derive(Debug, Clone)]
pub struct ScorePanel {
    pub title: String,
    pub labels: Vec<String>,
    pub f1: Vec<crate::eval::stats::Spread>,
    pub kappa: Vec<crate::eval::stats::Spread>,
    /// The majority baseline's macro F1, drawn as a red line.
    pub baseline: Option<f64>,
}

/// A chart and the text drawn into it (titles, axis labels, legend entries).
pub struct Rendered {
    pub png: Vec<u8>,
    pub text: Vec<String>,
}

/// One panel per task, one above the other: for each label (on the axis) two bars, macro F1
/// and Cohen's kappa, each at its mean over runs with the 95 % interval as an error bar (none
/// for a single run); the majority baseline's macro F1 as a red line, chance (0) as a grey one.
pub fn score_panels_png(title: &str, panels: &[ScorePanel]) -> Result<Rendered> {
    font()?;
    let bars = panels.iter().map(|p| p.labels.len()).max().unwrap_or(1).max(1) as u32;
    let longest = panels.iter().flat_map(|p| p.labels.iter()).map(|l| l.chars().count()).max().unwrap_or(4) as u32;
    // Each label's slot as wide as the label (about 8 px a character at 14 px), at least 90 px.
    let width = (110 + bars * (8 * longest + 16).max(90)).max(640);
    let size = (width, 80 + 320 * panels.len().max(1) as u32);
    let text = std::cell::RefCell::new(vec![title.to_string()]);
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root.titled(title, (FAMILY, 24)).map_err(draw_error)?;
        // One legend for every panel, under the title.
        let (band, body) = root.split_vertically(30);
        let f1_color = Palette99::pick(0).to_rgba().mix(0.8);
        let kappa_color = Palette99::pick(1).to_rgba().mix(0.8);
        let keys =
            ["macro F1", "kappa", "bars: mean over runs; error bars: 95 % interval", "majority baseline (macro F1)"];
        let mut x = 60;
        for (k, name) in keys.iter().enumerate() {
            let y = 12;
            match k {
                0 | 1 => {
                    let color = if k == 0 { f1_color } else { kappa_color };
                    band.draw(&Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled()))
                }
                2 => band.draw(&PathElement::new(vec![(x + 8, y - 7), (x + 8, y + 7)], BLACK.stroke_width(2))),
                _ => band.draw(&PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2))),
            }
            .map_err(draw_error)?;
            band.draw(&Text::new(name.to_string(), (x + 22, 4), (FAMILY, 14))).map_err(draw_error)?;
            text.borrow_mut().push(name.to_string());
            x += 22 + 8 * name.chars().count() as i32 + 24;
        }
        let rows = body.split_evenly((panels.len().max(1), 1));
        for (area, p) in rows.iter().zip(panels) {
            text.borrow_mut().push(p.title.clone());
            let n = p.labels.len().max(1) as f64;
            let all = p.f1.iter().chain(&p.kappa);
            let low = all.flat_map(|s| [s.mean, s.lo]).filter(|v| v.is_finite()).fold(0.0f64, f64::min);
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, (FAMILY, 18))
                .margin(12)
                .x_label_area_size(34)
                .y_label_area_size(56)
                .build_cartesian_2d(-0.5..n - 0.5, (low - 0.05).min(0.0)..1.05)
                .map_err(draw_error)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(2 * p.labels.len() + 1)
                .x_label_formatter(&|x| {
                    let k = x.round();
                    match p.labels.get(k as usize).filter(|_| (x - k).abs() < 1e-6 && k >= 0.0) {
                        Some(label) => {
                            text.borrow_mut().push(label.clone());
                            label.clone()
                        }
                        None => String::new(),
                    }
                })
                .x_label_style((FAMILY, 14))
                .y_label_formatter(&|y| format!("{:.1}", if y.abs() < 1e-9 { 0.0 } else { *y }))
                .y_desc("score")
                .label_style((FAMILY, 14))
                .axis_desc_style((FAMILY, 15))
                .draw()
                .map_err(draw_error)?;
            let lines = [(p.baseline, RED.stroke_width(2)), (Some(0.0), BLACK.mix(0.4).stroke_width(1))];
            for (y, style) in lines {
                let Some(y) = y else { continue };
                chart
                    .draw_series(std::iter::once(PathElement::new(vec![(-0.5, y), (n - 0.5, y)], style)))
                    .map_err(draw_error)?;
            }
            for (j, values) in [&p.f1, &p.kappa].into_iter().enumerate() {
                let color = if j == 0 { f1_color } else { kappa_color };
                // F1 left of the label, kappa right of it.
                let (from, to) = if j == 0 { (-0.36, -0.02) } else { (0.02, 0.36) };
                let finite = || values.iter().enumerate().filter(|(_, s)| s.mean.is_finite());
                chart
                    .draw_series(finite().map(|(k, s)| {
                        Rectangle::new([(k as f64 + from, 0.0), (k as f64 + to, s.mean)], color.filled())
                    }))
                    .map_err(draw_error)?;
                chart
                    .draw_series(finite().filter(|(_, s)| s.lo.is_finite()).map(|(k, s)| {
                        let x = k as f64 + (from + to) / 2.0;
                        ErrorBar::new_vertical(x, s.lo, s.mean, s.hi, BLACK.stroke_width(2), 10)
                    }))
                    .map_err(draw_error)?;
            }
        }
        root.present().map_err(draw_error)?;
    }
    let text = text.into_inner();
    Ok(Rendered { png: png(buffer, size)?, text })
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
        assert_eq!(img.dimensions(), (1200, 50 + 420), "the losses and one task's metrics: one row");
        use crate::eval::stats::spread;
        let panels = vec![
            ScorePanel {
                title: "status (test)".into(),
                labels: ["taft-status", "noadapt-status", "tapt-status", "dapt-status", "other-status"]
                    .map(String::from)
                    .to_vec(),
                f1: [&[0.7, 0.75, 0.72][..], &[0.3], &[0.6, 0.5], &[0.6, 0.62], &[0.5]].map(spread).to_vec(),
                kappa: [&[0.5, 0.6][..], &[-0.1], &[0.4, 0.3], &[0.4, 0.5], &[0.1]].map(spread).to_vec(),
                baseline: Some(0.1),
            },
            ScorePanel {
                title: "satis3 (test)".into(),
                labels: vec!["dapt-satis3".into()],
                f1: vec![spread(&[0.6, 0.62])],
                kappa: vec![spread(&[0.4, 0.45])],
                baseline: None,
            },
        ];
        let chart = score_panels_png("comparison", &panels).unwrap();
        let img = decode(&chart.png);
        // A panel per task, as wide as five 14-character labels need.
        assert_eq!(img.dimensions(), (110 + 5 * (8 * 14 + 16), 80 + 2 * 320));
        for label in panels.iter().flat_map(|p| p.labels.iter()) {
            assert!(chart.text.contains(label), "{label} is drawn: {:?}", chart.text);
        }
        for caption in ["status (test)", "satis3 (test)", "macro F1", "kappa", "majority baseline (macro F1)"] {
            assert!(chart.text.iter().any(|t| t == caption), "{caption}: {:?}", chart.text);
        }
        // Bars are drawn in colour (not only axes and text).
        let coloured = img.pixels().filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60).count();
        assert!(coloured > 5000, "{coloured} coloured pixels");
    }
}
