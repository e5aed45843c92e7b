//! `cargo xtask misclassified`: the test digits a model gets wrong, as a PNG grid, each
//! with its label, the model's guess and its confidence (the book's ch08
//! `misclassified_mnist.py`).

use std::path::PathBuf;

use clap::Args;
use dl_data::Mnist;
use dl_train::Ensemble;
use plotters::prelude::*;

use crate::plot::{encode_rgb_png, register_font};
use crate::CliError;

#[derive(Args)]
pub struct MisclassifiedArgs {
    /// Weights file (default: the shipped DeepConvNet).
    #[arg(long)]
    params: Option<PathBuf>,
    /// An ensemble folder instead (its mean probabilities).
    #[arg(long, conflicts_with = "params")]
    ensemble: Option<PathBuf>,
    /// Folder with the MNIST files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output PNG file.
    #[arg(long, default_value = "runs/misclassified.png")]
    out: PathBuf,
    /// Show at most this many digits (the first ones, in test-set order).
    #[arg(long, default_value_t = 60)]
    max: usize,
    /// Digits per row.
    #[arg(long, default_value_t = 10)]
    columns: usize,
}

/// One test digit the model got wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Miss {
    /// Its index in the test set.
    pub index: usize,
    /// The true digit.
    pub label: usize,
    /// The model's answer.
    pub guess: usize,
    /// The probability the model gave its answer.
    pub confidence: f32,
}

/// The test digits `model` gets wrong, in test-set order.
pub fn misses(model: &mut Ensemble, mnist: &Mnist) -> Result<Vec<Miss>, CliError> {
    let test = &mnist.test;
    let mut out = Vec::new();
    let all: Vec<usize> = (0..test.len()).collect();
    for chunk in all.chunks(500) {
        let (x, labels) = test.batch(chunk);
        let probs = model.predict_proba(&x, 100)?;
        for (row, (&index, &label)) in probs.rows().into_iter().zip(chunk.iter().zip(&labels)) {
            let (guess, confidence) = top(row.as_slice().expect("rows of a standard-layout array"));
            if guess != label {
                out.push(Miss {
                    index,
                    label,
                    guess,
                    confidence,
                });
            }
        }
    }
    Ok(out)
}

/// The most probable class and its probability (the first, on a tie).
fn top(probs: &[f32]) -> (usize, f32) {
    probs.iter().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |best, (d, &p)| if p > best.1 { (d, p) } else { best },
    )
}

/// Cell layout: the digit at 3x, then a line of text.
const ZOOM: u32 = 3;
const CELL_W: u32 = 28 * ZOOM + 20;
const CELL_H: u32 = 28 * ZOOM + 26;
const TITLE_H: u32 = 34;

pub fn run(a: MisclassifiedArgs) -> Result<(), CliError> {
    if a.columns == 0 {
        return Err(CliError::Other("--columns must be at least 1".into()));
    }
    let (mut model, name) = match &a.ensemble {
        Some(dir) => {
            let (e, _) = Ensemble::load(dir)?;
            let name = format!("an ensemble of {}", e.len());
            (e, name)
        }
        None => {
            let path = a.params.clone().unwrap_or_else(crate::shipped_params);
            let net = dl_models::registry::load(&path)?;
            let name = net.kind().to_string();
            (Ensemble::new(vec![net])?, name)
        }
    };
    let mnist = Mnist::load(a.data.clone().unwrap_or_else(crate::default_data_dir))?;
    let wrong = misses(&mut model, &mnist)?;
    let shown = &wrong[..wrong.len().min(a.max)];
    let title = format!(
        "{name}: {} of {} test digits wrong{}   (label → guess, confidence)",
        wrong.len(),
        mnist.test.len(),
        if shown.len() < wrong.len() {
            format!(", the first {}", shown.len())
        } else {
            String::new()
        }
    );
    let png = grid_png(&mnist, shown, a.columns, &title)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Other(format!("{}: {e}", dir.display())))?;
    }
    dl_tensor::fs::atomic_write(&a.out, &png).map_err(|e| CliError::Other(format!("{}: {e}", a.out.display())))?;
    println!("{title}");
    println!("wrote {}", a.out.display());
    Ok(())
}

/// The grid as PNG bytes.
pub fn grid_png(mnist: &Mnist, shown: &[Miss], columns: usize, title: &str) -> Result<Vec<u8>, CliError> {
    register_font();
    let columns = columns.min(shown.len()).max(1) as u32;
    let rows = (shown.len() as u32).div_ceil(columns).max(1);
    let (w, h) = ((columns * CELL_W).max(600), TITLE_H + rows * CELL_H);
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    let err = |e: DrawingAreaErrorKind<_>| CliError::Other(format!("drawing the grid: {e}"));
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        root.draw(&Text::new(
            title.to_string(),
            (8, 8),
            ("sans-serif", 18).into_font().color(&BLACK),
        ))
        .map_err(err)?;
        let test = &mnist.test;
        for (k, m) in shown.iter().enumerate() {
            let (cx, cy) = (
                (k as u32 % columns) * CELL_W + 10,
                TITLE_H + (k as u32 / columns) * CELL_H,
            );
            let img = &test.images[m.index * 784..(m.index + 1) * 784];
            for (i, &v) in img.iter().enumerate() {
                let (y, x) = (i as u32 / 28, i as u32 % 28);
                let c = RGBColor(255 - v, 255 - v, 255 - v);
                root.draw(&Rectangle::new(
                    [
                        ((cx + x * ZOOM) as i32, (cy + y * ZOOM) as i32),
                        ((cx + (x + 1) * ZOOM) as i32, (cy + (y + 1) * ZOOM) as i32),
                    ],
                    c.filled(),
                ))
                .map_err(err)?;
            }
            let text = format!("{} → {}  {:.0}%", m.label, m.guess, m.confidence * 100.0);
            root.draw(&Text::new(
                text,
                (cx as i32, (cy + 28 * ZOOM + 4) as i32),
                ("sans-serif", 15).into_font().color(&RGBColor(180, 30, 30)),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    encode_rgb_png(w, h, &rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three misses in rows of two, drawn pixel for pixel as committed (looked at): the
    /// title, each digit where its cell is, and its caption.
    #[test]
    fn a_grid_is_drawn_as_its_golden_image() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let miss = |index, label, guess, confidence| Miss {
            index,
            label,
            guess,
            confidence,
        };
        let shown = [miss(0, 7, 1, 0.5), miss(1, 2, 3, 0.75), miss(2, 1, 7, 0.995)];
        let png = grid_png(&mnist, &shown, 2, "a title").unwrap();
        crate::tests::assert_golden_png(&png, "misclassified.png");
    }

    #[test]
    fn the_top_class_is_the_first_of_equal_probabilities() {
        assert_eq!(top(&[0.1, 0.6, 0.3]), (1, 0.6));
        assert_eq!(top(&[0.4, 0.2, 0.4]), (0, 0.4));
        assert_eq!(top(&[0.2, 0.4, 0.4]), (1, 0.4));
    }

    #[test]
    fn the_shipped_network_misses_exactly_its_documented_count_and_each_miss_is_wrong() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let net = dl_models::registry::load(crate::shipped_params()).unwrap();
        let mut model = Ensemble::new(vec![net]).unwrap();
        let wrong = misses(&mut model, &mnist).unwrap();
        // 9943 / 10000 right (docs/RESULTS.md)
        assert_eq!(wrong.len(), 57);
        assert!(wrong.windows(2).all(|w| w[0].index < w[1].index));
        for m in &wrong {
            assert_eq!(m.label, usize::from(mnist.test.labels[m.index]));
            assert_ne!(m.guess, m.label);
            assert!(m.confidence > 0.1 && m.confidence <= 1.0, "{m:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        // into a folder not made yet
        let out = dir.path().join("sub/m.png");
        run(MisclassifiedArgs {
            params: None,
            ensemble: None,
            data: None,
            out: out.clone(),
            max: 25,
            columns: 10,
        })
        .unwrap();
        let reader = png::Decoder::new(std::fs::File::open(&out).unwrap())
            .read_info()
            .unwrap();
        // 25 digits in rows of 10: three rows of 104x110-pixel cells under a 34-pixel title
        assert_eq!((reader.info().width, reader.info().height), (1040, 34 + 3 * 110));
        let e = run(MisclassifiedArgs {
            params: None,
            ensemble: None,
            data: None,
            out,
            max: 25,
            columns: 0,
        })
        .unwrap_err();
        assert!(e.to_string().contains("--columns"));
    }
}
