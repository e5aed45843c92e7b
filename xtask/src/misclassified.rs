//! `cargo xtask misclassified`: the test digits a model gets wrong, as a PNG grid, each
//! with its label, the model's guess and its confidence (the book's ch08
//! `misclassified_mnist.py`); with `--validation N`, the digits of the validation split
//! instead, so that a model's errors can be studied without looking at the test set.

use std::path::{Path, PathBuf};

use clap::Args;
use dl_data::{ImageSet, Mnist};
use dl_train::Ensemble;
use plotters::prelude::*;

use crate::plot::{encode_rgb_png, register_font};
use crate::CliError;

#[derive(Args)]
pub struct MisclassifiedArgs {
    /// Weights file (default: the shipped DeepConvNet); several files are scored as one
    /// ensemble (the mean of their probabilities).
    #[arg(long, num_args = 1..)]
    params: Vec<PathBuf>,
    /// An ensemble folder instead (its mean probabilities).
    #[arg(long, conflicts_with = "params")]
    ensemble: Option<PathBuf>,
    /// Folder with the MNIST files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Look at the N training images `train --validation N` held out (drawn by
    /// --validation-seed, as there) instead of the test set.
    #[arg(long, value_name = "N")]
    validation: Option<usize>,
    /// The seed of the --validation split (train's default: 0).
    #[arg(long, default_value_t = 0, requires = "validation")]
    validation_seed: u64,
    /// Output PNG file (default: runs/misclassified.png, or runs/misclassified-2.png and
    /// so on when that exists).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Show at most this many digits (the first ones, in test-set order).
    #[arg(long, default_value_t = 60)]
    max: usize,
    /// Digits per row.
    #[arg(long, default_value_t = 10)]
    columns: usize,
}

/// One digit the model got wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Miss {
    /// Its index in the scored set (the test set, or the validation split).
    pub index: usize,
    /// The true digit.
    pub label: usize,
    /// The model's answer.
    pub guess: usize,
    /// The probability the model gave its answer.
    pub confidence: f32,
    /// How many of the ensemble's members misread it on their own (1 for one network).
    pub members_wrong: usize,
}

/// The digits of `set` that `model` gets wrong, in the set's order, and how many digits
/// at least one of its members misreads on its own.
pub fn misses(model: &mut Ensemble, set: &ImageSet) -> Result<(Vec<Miss>, usize), CliError> {
    let (mut out, mut any_member) = (Vec::new(), 0);
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(500) {
        let (x, labels) = set.batch(chunk);
        let each = model.member_proba(&x, 100)?;
        let probs = dl_train::ensemble::mean_proba(&each);
        let tops: Vec<_> = each.iter().map(|p| dl_tensor::argmax_rows(&p.view())).collect();
        for (r, (row, (&index, &label))) in probs.rows().into_iter().zip(chunk.iter().zip(&labels)).enumerate() {
            let members_wrong = tops.iter().filter(|t| t[r] != label).count();
            any_member += usize::from(members_wrong > 0);
            let (guess, confidence) = top(row.as_slice().expect("rows of a standard-layout array"));
            if guess != label {
                out.push(Miss {
                    index,
                    label,
                    guess,
                    confidence,
                    members_wrong,
                });
            }
        }
    }
    Ok((out, any_member))
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
/// Where the grid goes without `--out`.
const DEFAULT_OUT: &str = "runs/misclassified.png";

pub fn run(a: MisclassifiedArgs) -> Result<(), CliError> {
    if a.columns == 0 {
        return Err(CliError::Other("--columns must be at least 1".into()));
    }
    let out = crate::output_file(a.out.as_deref(), a.overwrite, Path::new(DEFAULT_OUT))?;
    let mnist = Mnist::load(a.data.clone().unwrap_or_else(crate::default_data_dir))?;
    let (set, set_name) = scored_set(&a, mnist)?;
    let (mut model, name) = load_model(&a)?;
    let (wrong, any_member) = misses(&mut model, &set)?;
    let members = model.len();
    for m in &wrong {
        println!(
            "{set_name} image {:5}: label {}, guess {} ({:.1}%){}",
            m.index,
            m.label,
            m.guess,
            m.confidence * 100.0,
            if members > 1 {
                format!(", {} of {members} members wrong", m.members_wrong)
            } else {
                String::new()
            }
        );
    }
    if members > 1 {
        println!(
            "{any_member} of {} {set_name} digits misread by at least one of the {members} members",
            set.len()
        );
    }
    let shown = &wrong[..wrong.len().min(a.max)];
    let title = format!(
        "{name}: {} of {} {set_name} digits wrong{}   (label → guess, confidence)",
        wrong.len(),
        set.len(),
        if shown.len() < wrong.len() {
            format!(", the first {}", shown.len())
        } else {
            String::new()
        }
    );
    let png = grid_png(&set, shown, a.columns, &title)?;
    crate::write_output(&out, &png)?;
    println!("{title}");
    println!("wrote {}", out.display());
    Ok(())
}

/// The set `run` looks at, and its name: the test set, or the validation split.
fn scored_set(a: &MisclassifiedArgs, mnist: Mnist) -> Result<(ImageSet, &'static str), CliError> {
    Ok(match a.validation {
        None => (mnist.test, "test"),
        Some(n) => (
            crate::eval::validation_split(&mnist.train, n, a.validation_seed)?,
            "validation",
        ),
    })
}

/// The model `run` scores, and its name: an ensemble folder, one weights file (the
/// shipped DeepConvNet by default) or several as one ensemble.
fn load_model(a: &MisclassifiedArgs) -> Result<(Ensemble, String), CliError> {
    Ok(match (&a.ensemble, a.params.as_slice()) {
        (Some(dir), _) => {
            let (e, _) = Ensemble::load(dir)?;
            let name = format!("an ensemble of {}", e.len());
            (e, name)
        }
        (None, [] | [_]) => {
            let path = a.params.first().cloned().unwrap_or_else(crate::shipped_params);
            let net = dl_models::registry::load(&path)?;
            let name = net.kind().to_string();
            (Ensemble::new(vec![net])?, name)
        }
        (None, paths) => {
            let nets = paths
                .iter()
                .map(dl_models::registry::load)
                .collect::<Result<Vec<_>, _>>()?;
            (Ensemble::new(nets)?, format!("an ensemble of {}", paths.len()))
        }
    })
}

/// The grid as PNG bytes: the digits of `set` at the misses' indices.
pub fn grid_png(set: &ImageSet, shown: &[Miss], columns: usize, title: &str) -> Result<Vec<u8>, CliError> {
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
        for (k, m) in shown.iter().enumerate() {
            let (cx, cy) = (
                (k as u32 % columns) * CELL_W + 10,
                TITLE_H + (k as u32 / columns) * CELL_H,
            );
            let img = set
                .images
                .get(m.index * 784..(m.index + 1) * 784)
                .ok_or_else(|| CliError::Other(format!("no image {} in a set of {}", m.index, set.len())))?;
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
            members_wrong: 1,
        };
        let shown = [miss(0, 7, 1, 0.5), miss(1, 2, 3, 0.75), miss(2, 1, 7, 0.995)];
        let png = grid_png(&mnist.test, &shown, 2, "a title").unwrap();
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
        let (wrong, any_member) = misses(&mut model, &mnist.test).unwrap();
        // 9943 / 10000 right (docs/RESULTS.md)
        assert_eq!((wrong.len(), any_member), (57, 57));
        assert!(wrong.iter().all(|m| m.members_wrong == 1));
        assert!(wrong.windows(2).all(|w| w[0].index < w[1].index));
        for m in &wrong {
            assert_eq!(m.label, usize::from(mnist.test.labels[m.index]));
            assert_ne!(m.guess, m.label);
            assert!(m.confidence > 0.1 && m.confidence <= 1.0, "{m:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        // into a folder not made yet
        let out = dir.path().join("sub/m.png");
        let args = |max: usize, columns: usize, overwrite: bool| MisclassifiedArgs {
            params: vec![],
            ensemble: None,
            data: None,
            validation: None,
            validation_seed: 0,
            out: Some(out.clone()),
            overwrite,
            max,
            columns,
        };
        let size = || {
            let reader = png::Decoder::new(std::fs::File::open(&out).unwrap())
                .read_info()
                .unwrap();
            (reader.info().width, reader.info().height)
        };
        run(args(25, 10, false)).unwrap();
        // 25 digits in rows of 10: three rows of 104x110-pixel cells under a 34-pixel title
        assert_eq!(size(), (1040, 34 + 3 * 110));
        // the grid is not replaced unless asked
        let e = run(args(10, 10, false)).unwrap_err().to_string();
        assert!(e.contains("--overwrite"), "{e}");
        assert_eq!(size(), (1040, 34 + 3 * 110));
        run(args(10, 10, true)).unwrap();
        assert_eq!(size(), (1040, 34 + 110));
        let e = run(args(25, 0, true)).unwrap_err();
        assert!(e.to_string().contains("--columns"));
    }

    fn args(extra: &[&str]) -> MisclassifiedArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: MisclassifiedArgs,
        }
        let mut argv = vec!["misclassified"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().a
    }

    /// `--validation N --validation-seed S` looks at the images `train --validation N
    /// --validation-seed S` holds out (and refuses an empty split or a whole one); without
    /// it, at the test set.
    #[test]
    fn validation_looks_at_the_split_train_holds_out() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let held = mnist.train.split(300, 4).1;
        let (set, name) = scored_set(&args(&["--validation", "300", "--validation-seed", "4"]), mnist.clone()).unwrap();
        assert_eq!(name, "validation");
        assert_eq!((set.labels, set.images), (held.labels, held.images));
        let other = scored_set(&args(&["--validation", "300"]), mnist.clone()).unwrap().0;
        assert_ne!(other.labels, mnist.train.split(300, 4).1.labels);
        let (test, name) = scored_set(&args(&[]), mnist.clone()).unwrap();
        assert_eq!(name, "test");
        assert_eq!(test.labels, mnist.test.labels);
        for n in ["0", "60000"] {
            let e = scored_set(&args(&["--validation", n]), mnist.clone()).unwrap_err();
            assert!(e.to_string().contains("between 1 and 59999"), "{e}");
        }
    }

    /// An ensemble's misses count the members that misread each digit on their own, as
    /// each member scored alone finds, and the digits any member misreads are the union
    /// of the members' own misses.
    #[test]
    fn an_ensembles_misses_count_the_members_that_misread_each_digit() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let set = mnist.test.split(2000, 3).1;
        let load = |k: usize| {
            dl_models::registry::load(
                crate::root().join(format!("crates/dl-models/weights/ensemble/member-{k}.safetensors")),
            )
            .unwrap()
        };
        let alone: Vec<Vec<usize>> = (0..3)
            .map(|k| {
                let mut one = Ensemble::new(vec![load(k)]).unwrap();
                misses(&mut one, &set).unwrap().0.iter().map(|m| m.index).collect()
            })
            .collect();
        let mut all = Ensemble::new((0..3).map(load).collect()).unwrap();
        let (wrong, any_member) = misses(&mut all, &set).unwrap();
        assert!(!wrong.is_empty());
        for m in &wrong {
            let want = alone.iter().filter(|a| a.contains(&m.index)).count();
            assert_eq!(m.members_wrong, want, "{m:?}");
        }
        let mut union: Vec<usize> = alone.concat();
        union.sort_unstable();
        union.dedup();
        assert_eq!(any_member, union.len());
        // the members disagree somewhere, so the counts are not all alike
        assert!(alone.iter().any(|a| a != &alone[0]));
        assert!(wrong.iter().any(|m| m.members_wrong < 3) || union.len() > wrong.len());
    }

    /// Several `--params` files are one ensemble, one file or none a single network.
    #[test]
    fn several_params_files_are_scored_as_one_ensemble() {
        let member = |k: usize| {
            crate::root()
                .join(format!("crates/dl-models/weights/ensemble/member-{k}.safetensors"))
                .display()
                .to_string()
        };
        let (m0, m1) = (member(0), member(1));
        let (e, name) = load_model(&args(&["--params", &m0, &m1])).unwrap();
        assert_eq!((e.len(), name.as_str()), (2, "an ensemble of 2"));
        let (e, name) = load_model(&args(&["--params", &m0])).unwrap();
        assert_eq!((e.len(), name.as_str()), (1, "DeepConvNet"));
        let (e, name) = load_model(&args(&[])).unwrap();
        assert_eq!((e.len(), name.as_str()), (1, "DeepConvNet"));
        let dir = crate::root().join("crates/dl-models/weights/ensemble");
        let (e, name) = load_model(&args(&["--ensemble", &dir.display().to_string()])).unwrap();
        assert_eq!((e.len(), name.as_str()), (5, "an ensemble of 5"));
    }
}
