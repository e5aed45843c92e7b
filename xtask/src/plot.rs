//! `cargo xtask plot`: training curves (loss, and train / validation / test accuracy per
//! epoch) of one or several runs on one chart, as a PNG drawn by plotters.

use std::path::{Path, PathBuf};
use std::sync::Once;

use clap::Args;
use dl_train::History;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::CliError;

/// The font text is drawn with (DejaVu Sans, shipped in xtask/assets with its licence),
/// so a plot looks the same on every machine and needs no system fonts.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

#[derive(Args)]
pub struct PlotArgs {
    /// history.json files (as `cargo xtask train` writes them), one curve each.
    #[arg(required = true, value_name = "HISTORY.json")]
    histories: Vec<PathBuf>,
    /// Output PNG file (default: runs/curves.png, or runs/curves-2.png and so on when
    /// that exists).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

/// One run's per-epoch figures, as drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Its name in the legend.
    pub label: String,
    /// What the per-epoch accuracy was measured on (`validation`, `test`, or `eval` when
    /// the history does not say).
    pub evaluated_on: String,
    /// (epoch, mean training loss, train accuracy, evaluation accuracy).
    pub points: Vec<(f64, f64, f64, f64)>,
}

impl Curve {
    /// The curve of a history.
    pub fn from_history(label: &str, h: &History) -> Self {
        Self {
            label: label.to_string(),
            evaluated_on: h.evaluated_on.clone().unwrap_or_else(|| "eval".into()),
            points: h
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, f64::from(e.train_loss), e.train_acc, e.test_acc))
                .collect(),
        }
    }
}

/// A run's name from its history file: the folder for `DIR/history.json`, else the file
/// name without `.json` and a `-history` ending.
fn label_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem == "history" {
        if let Some(dir) = path.parent().and_then(|d| d.file_name()) {
            return dir.to_string_lossy().into_owned();
        }
    }
    stem.strip_suffix("-history").unwrap_or(&stem).to_string()
}

fn read_history(path: &Path) -> Result<History, CliError> {
    let bytes = std::fs::read(path).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CliError::Other(format!(
            "{}: not a training history (history.json): {e}",
            path.display()
        ))
    })
}

pub fn run(a: PlotArgs) -> Result<(), CliError> {
    let out = crate::output_file(a.out.as_deref(), a.overwrite, Path::new("runs/curves.png"))?;
    let mut curves = Vec::with_capacity(a.histories.len());
    for path in &a.histories {
        let h = read_history(path)?;
        curves.push(Curve::from_history(&label_of(path), &h));
    }
    write_curves(&out, &curves)?;
    println!("wrote {} ({} runs)", out.display(), curves.len());
    Ok(())
}

/// Writes the chart of `curves` to `path` as a PNG ([`crate::write_output`]).
pub fn write_curves(path: &Path, curves: &[Curve]) -> Result<(), CliError> {
    crate::write_output(path, &curves_png(curves)?)
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> CliError {
    CliError::Other(format!("drawing the chart: {e}"))
}

/// Registers the shipped font as plotters' `sans-serif`, once per process.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font (a test draws text with it).
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The colour of run `i`: the ten colours of matplotlib's `tab10`, in turn.
pub fn color(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TAB10[i % TAB10.len()];
    RGBColor(r, g, b)
}

/// Width and height of the chart.
pub const CHART_SIZE: (u32, u32) = (1200, 480);

/// The chart as PNG bytes: training loss per epoch (log scale) on the left; train
/// accuracy (dashed) and the per-epoch evaluation accuracy (solid), in percent, on the
/// right; one colour per run.
pub fn curves_png(curves: &[Curve]) -> Result<Vec<u8>, CliError> {
    if curves.iter().all(|c| c.points.is_empty()) {
        return Err(CliError::Other(
            "nothing to plot: the histories hold no finished epoch".into(),
        ));
    }
    register_font();
    let (w, h) = CHART_SIZE;
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (left, right) = root.split_horizontally(w / 2);
        draw_loss(&left, curves).map_err(draw_err)?;
        draw_accuracy(&right, curves).map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    encode_rgb_png(w, h, &rgb)
}

/// PNG bytes of an RGB buffer.
pub fn encode_rgb_png(w: u32, h: u32, rgb: &[u8]) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| CliError::Other(e.to_string()))?;
        writer
            .write_image_data(rgb)
            .map_err(|e| CliError::Other(e.to_string()))?;
    }
    Ok(bytes)
}

fn last_epoch(curves: &[Curve]) -> f64 {
    curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0, f64::max)
}

/// The loss axis (log scale): from the smallest positive finite loss over 1.5 to the
/// largest times 1.5, or 0.001 to 1 when there is none.
fn loss_range(curves: &[Curve]) -> (f64, f64) {
    let losses = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .filter(|l| l.is_finite() && *l > 0.0);
    let (lo, hi) = losses.fold((f64::INFINITY, 0.0f64), |(lo, hi), l| (lo.min(l), hi.max(l)));
    if lo.is_finite() {
        (lo / 1.5, hi * 1.5)
    } else {
        (1e-3, 1.0)
    }
}

/// A loss axis label: two significant digits, no trailing zeros (a log scale's ticks,
/// such as 0.7000000001, print as 0.7).
fn loss_label(v: f64) -> String {
    let decimals = (1.0 - v.log10().floor()).clamp(0.0, 12.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The accuracy axis' bottom, in percent: the whole percent at least half a point under
/// the lowest finite accuracy (train or evaluation), within 0 to 99.
fn accuracy_bottom(curves: &[Curve]) -> f64 {
    let lowest = curves
        .iter()
        .flat_map(|c| c.points.iter().flat_map(|p| [p.2, p.3]))
        .filter(|a| a.is_finite())
        .fold(1.0f64, f64::min);
    ((lowest * 100.0) - 0.5).floor().clamp(0.0, 99.0)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw_loss<'a>(
    area: &Area<'a>,
    curves: &[Curve],
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>> {
    let (lo, hi) = loss_range(curves);
    let mut chart = ChartBuilder::on(area)
        .caption("training loss (mean per epoch)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..last_epoch(curves) + 0.5, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .y_label_formatter(&|v| loss_label(*v))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, c) in curves.iter().enumerate() {
        let color = color(i);
        let points: Vec<(f64, f64)> = c.points.iter().filter(|p| p.1 > 0.0).map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

fn draw_accuracy<'a>(
    area: &Area<'a>,
    curves: &[Curve],
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>> {
    let bottom = accuracy_bottom(curves);
    let mut chart = ChartBuilder::on(area)
        .caption("accuracy per epoch (%)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..last_epoch(curves) + 0.5, bottom..100.0f64)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy (%)")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, c) in curves.iter().enumerate() {
        let color = color(i);
        let eval: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.3 * 100.0)).collect();
        chart
            .draw_series(LineSeries::new(eval, color.stroke_width(2)))?
            .label(format!("{} {}", c.label, c.evaluated_on))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        let train: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.2 * 100.0)).collect();
        chart
            .draw_series(DashedLineSeries::new(train, 6, 4, color.stroke_width(1)))?
            .label(format!("{} train", c.label))
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 8, y), (x + 12, y), (x + 20, y)],
                    color.stroke_width(1),
                )
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(label: &str, accs: &[f64]) -> Curve {
        Curve {
            label: label.into(),
            evaluated_on: "validation".into(),
            points: accs
                .iter()
                .enumerate()
                .map(|(i, &a)| ((i + 1) as f64, 0.5 / (i + 1) as f64, a, a - 0.01))
                .collect(),
        }
    }

    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(png_bytes).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info.width, info.height, buf)
    }

    fn runs_curve(label: &str, on: &str, points: &[(f64, f64, f64, f64)]) -> Curve {
        Curve {
            label: label.into(),
            evaluated_on: on.into(),
            points: points.to_vec(),
        }
    }

    #[test]
    fn the_axes_span_the_figures() {
        let a = runs_curve("a", "test", &[(1.0, 0.75, 0.934, 0.95), (2.0, 0.0, 0.97, 0.96)]);
        let b = runs_curve(
            "b",
            "test",
            &[
                (1.0, f64::NAN, 0.99, 0.99),
                (2.0, f64::INFINITY, 0.99, 0.99),
                (3.0, 2.0, 0.99, f64::NAN),
            ],
        );
        // losses that a log scale cannot hold (0, NaN, infinity) are left out
        assert_eq!(loss_range(&[a.clone(), b.clone()]), (0.5, 3.0));
        assert_eq!(
            loss_range(&[runs_curve("c", "test", &[(1.0, -1.0, 0.5, 0.5), (2.0, 0.0, 0.5, 0.5)])]),
            (1e-3, 1.0)
        );
        // 93.4% lowest: 92.9 floored
        assert_eq!(accuracy_bottom(&[a.clone(), b.clone()]), 92.0);
        assert_eq!(accuracy_bottom(std::slice::from_ref(&b)), 98.0);
        assert_eq!(
            accuracy_bottom(&[runs_curve("d", "test", &[(1.0, 1.0, 1.0, 1.0)])]),
            99.0
        );
        assert_eq!(
            accuracy_bottom(&[runs_curve("e", "test", &[(1.0, 1.0, 0.001, 0.2)])]),
            0.0
        );
        assert_eq!(last_epoch(&[a, b]), 3.0);
        let labels: Vec<String> = [0.7000000001, 0.0123, 1.5, 1.0, 20.0, 0.001, 0.30000000000000004]
            .map(loss_label)
            .into();
        assert_eq!(labels, ["0.7", "0.012", "1.5", "1", "20", "0.001", "0.3"]);
        assert_eq!(last_epoch(&[runs_curve("f", "test", &[])]), 1.0);
    }

    /// The chart of two fixed runs, pixel for pixel as committed (drawn with the shipped
    /// font, and looked at): the axes, lines, dashes and legends. When plotters changes
    /// its drawing, look at the new image the failure names and commit it.
    #[test]
    fn a_chart_is_drawn_as_its_golden_image() {
        let a = runs_curve(
            "a",
            "validation",
            &[
                (1.0, 0.9, 0.93, 0.95),
                (2.0, 0.3, 0.97, 0.975),
                (3.0, 0.0, 0.985, 0.982),
                (4.0, 0.12, 0.99, 0.987),
            ],
        );
        let b = runs_curve(
            "b",
            "test",
            &[(1.0, 1.2, 0.91, 0.94), (2.0, 0.5, 0.96, 0.97), (3.0, 0.2, 0.98, 0.981)],
        );
        crate::tests::assert_golden_png(&curves_png(&[a, b]).unwrap(), "curves.png");
    }

    #[test]
    fn labels_come_from_the_run_folder_or_the_file_name() {
        assert_eq!(label_of(Path::new("runs/vgg-e24/history.json")), "vgg-e24");
        assert_eq!(label_of(Path::new("docs/runs/book-seed0-history.json")), "book-seed0");
        assert_eq!(label_of(Path::new("member-2-history.json")), "member-2");
        assert_eq!(label_of(Path::new("history.json")), "history");
    }

    #[test]
    fn a_chart_has_both_panels_and_one_colour_per_run() {
        let png_bytes = curves_png(&[curve("a", &[0.95, 0.97, 0.98]), curve("b", &[0.96, 0.985, 0.99])]).unwrap();
        let (w, h, rgb) = decode(&png_bytes);
        assert_eq!((w, h), CHART_SIZE);
        let has = |c: RGBColor| rgb.chunks(3).any(|p| p == [c.0, c.1, c.2]);
        assert!(has(color(0)), "run a's colour");
        assert!(has(color(1)), "run b's colour");
        assert!(!has(color(2)), "no third run");
        assert_eq!(color(12), color(2));
        // text was drawn (dark pixels in the caption band of each half)
        let dark_in = |x0: u32, x1: u32| (0..30).any(|y| (x0..x1).any(|x| rgb[((y * w + x) * 3) as usize] < 100));
        assert!(dark_in(0, w / 2) && dark_in(w / 2, w));
    }

    #[test]
    fn histories_are_read_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read("../docs/runs/book-seed0-history.json").unwrap();
        let path = dir.path().join("run1/history.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, good).unwrap();
        let out = dir.path().join("sub/c.png");
        let plot = |overwrite: bool| {
            run(PlotArgs {
                histories: vec![path.clone()],
                out: Some(out.clone()),
                overwrite,
            })
        };
        plot(false).unwrap();
        assert_eq!(decode(&std::fs::read(&out).unwrap()).0, CHART_SIZE.0);
        // an existing chart is replaced only when asked
        std::fs::write(&out, b"mine").unwrap();
        let e = plot(false).unwrap_err().to_string();
        assert!(e.contains("--overwrite"), "{e}");
        assert_eq!(std::fs::read(&out).unwrap(), b"mine");
        plot(true).unwrap();
        assert_eq!(decode(&std::fs::read(&out).unwrap()).0, CHART_SIZE.0);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{\"epochs\": 3}").unwrap();
        let e = run(PlotArgs {
            histories: vec![path, bad.clone()],
            out: Some(dir.path().join("d.png")),
            overwrite: false,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad.json") && e.contains("not a training history"), "{e}");
        assert!(
            !dir.path().join("d.png").exists(),
            "nothing written when an input is bad"
        );
        let missing = run(PlotArgs {
            histories: vec![dir.path().join("nope.json")],
            out: Some(dir.path().join("d.png")),
            overwrite: false,
        })
        .unwrap_err()
        .to_string();
        assert!(missing.contains("nope.json"), "{missing}");
        let empty = curves_png(&[curve("e", &[])]).unwrap_err().to_string();
        assert!(empty.contains("nothing to plot"), "{empty}");
    }
}
