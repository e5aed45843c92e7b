//! `cargo xtask transfer`: the transfer-learning experiments of docs/RESULTS.md. A
//! network pretrained on one task is fine-tuned on another with few labels per class,
//! against the same network trained from scratch on the same images with the same
//! budget, over several seeds; each run is an ordinary `cargo xtask finetune` or
//! `train` command, recorded beside its result.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{train, CliError, Command};

/// A transfer-learning experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Experiment {
    /// Pretrain on MNIST's digits 0-4, fine-tune on 5-9 (a new 5-class head), test on
    /// the 4,861 test digits 5-9.
    SplitMnist,
    /// Start from the shipped DeepConvNet (all of MNIST), fine-tune on UCI's optical
    /// digits (the same ten classes: the head is kept), test on the optical digits not
    /// drawn for training or validation.
    Optdigits,
}

#[derive(Args)]
pub struct TransferArgs {
    /// The experiment.
    #[arg(long, value_enum)]
    experiment: Experiment,
    /// Seeds 0..N: each draws its own labelled images, initial head and batch order.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Labels per class to try, comma-separated, `all` for every training image
    /// (default: 1,10,100,all for split-mnist, 1,5,10,50 for optdigits).
    #[arg(long, value_delimiter = ',', value_parser = parse_labels)]
    labels: Vec<Labels>,
    /// The pretrained network. Default: for split-mnist, one trained on digits 0-4 into
    /// OUT/pretrain (kept and reused when there); for optdigits, the shipped weights.
    #[arg(long, value_name = "PARAMS")]
    from: Option<PathBuf>,
    /// Folder of the runs, results.json, summary.md and transfer.png (default:
    /// runs/transfer-EXPERIMENT). Runs already in its results.json are not run again.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Labels per class: `Some(k)`, or `None` for all the training images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels(pub Option<usize>);

impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(k) => write!(f, "{k}"),
            None => write!(f, "all"),
        }
    }
}

fn parse_labels(s: &str) -> Result<Labels, String> {
    match s.trim() {
        "all" => Ok(Labels(None)),
        t => match t.parse::<usize>() {
            Ok(k) if k > 0 => Ok(Labels(Some(k))),
            _ => Err(format!("{s:?}: a number of labels per class (at least 1) or `all`")),
        },
    }
}

/// How a run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// From the pretrained network, its classifier head kept (the same classes).
    Finetune,
    /// From the pretrained network with a new classifier head.
    FinetuneNewHead,
    /// From a fresh initialisation of the same network.
    Scratch,
}

impl Mode {
    /// Its name in the run folders (as in results.json).
    fn slug(self) -> &'static str {
        match self {
            Mode::Finetune => "finetune",
            Mode::FinetuneNewHead => "finetune-new-head",
            Mode::Scratch => "scratch",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Finetune => "fine-tuned",
            Mode::FinetuneNewHead => "fine-tuned, new head",
            Mode::Scratch => "from scratch",
        }
    }
}

/// One finished run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub labels: Labels,
    pub mode: Mode,
    pub seed: u64,
    pub correct: usize,
    pub total: usize,
    pub seconds: f64,
    /// The command that reproduces the run.
    pub command: String,
}

/// `OUT/results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub experiment: Experiment,
    pub from: PathBuf,
    pub rows: Vec<Row>,
}

/// What an experiment's runs share.
struct Plan {
    /// Classes of the target task (its head's outputs).
    classes: usize,
    /// Flags every run takes (data, classes, validation).
    data_flags: Vec<String>,
    /// The modes compared.
    modes: Vec<Mode>,
    default_labels: Vec<Labels>,
}

/// Images a few-label run sees in all (at least 5 and at most [`MAX_EPOCHS`] epochs);
/// with all the labels a run lasts [`ALL_EPOCHS`] epochs.
pub const BUDGET_IMAGES: usize = 15_000;
/// The most epochs of a few-label run.
pub const MAX_EPOCHS: usize = 300;
/// Epochs of a run on all the labels.
pub const ALL_EPOCHS: usize = 10;
/// The flags a run on all the labels adds to [`RUN_FLAGS`]: the rate decays to zero
/// along a cosine over its [`ALL_EPOCHS`] epochs.
pub const ALL_FLAGS: [&str; 2] = ["--lr-decay", "cosine"];

/// The epochs of a run with `labels` per class of `classes`: the same for fine-tuning
/// and from scratch.
pub fn epochs(labels: Labels, classes: usize) -> usize {
    match labels.0 {
        None => ALL_EPOCHS,
        Some(k) => (BUDGET_IMAGES / (k * classes).max(1)).clamp(5, MAX_EPOCHS),
    }
}

fn plan(e: Experiment) -> Plan {
    // held-out images of the target task, which steer nothing but the per-epoch figures
    let validation = match e {
        Experiment::SplitMnist => 500,
        Experiment::Optdigits => 100,
    }
    .to_string();
    match e {
        Experiment::SplitMnist => Plan {
            classes: 5,
            data_flags: vec!["--classes".into(), "5-9".into(), "--validation".into(), validation],
            modes: vec![Mode::FinetuneNewHead, Mode::Scratch],
            default_labels: vec![Labels(Some(1)), Labels(Some(10)), Labels(Some(100)), Labels(None)],
        },
        Experiment::Optdigits => Plan {
            classes: 10,
            data_flags: vec![
                "--dataset".into(),
                "optdigits".into(),
                "--validation".into(),
                validation,
            ],
            modes: vec![Mode::Finetune, Mode::Scratch],
            default_labels: vec![Labels(Some(1)), Labels(Some(5)), Labels(Some(10)), Labels(Some(50))],
        },
    }
}

/// The recipe of every run, fine-tuned or from scratch (chosen on split-mnist's
/// validation images, docs/RESULTS.md): the book's Adam at 0.001 on every layer, and
/// the MNIST augmentation.
pub const RUN_FLAGS: [&str; 5] = ["--augment", "--eval-samples", "100", "--optimizer", "adam"];

/// The `cargo xtask` arguments of one run (after `cargo xtask`).
fn run_args(
    plan: &Plan,
    from: &Path,
    mode: Mode,
    labels: Labels,
    seed: u64,
    out: &Path,
) -> Result<Vec<String>, CliError> {
    let epochs = epochs(labels, plan.classes);
    let mut args: Vec<String> = match mode {
        Mode::Finetune | Mode::FinetuneNewHead => {
            let mut v = vec!["finetune".to_string(), "--from".into(), from.display().to_string()];
            if mode == Mode::FinetuneNewHead {
                v.extend(["--head-classes".into(), plan.classes.to_string()]);
            }
            v
        }
        Mode::Scratch => {
            // the pretrained network's kind and configuration, with a head for the task
            let config = dl_models::registry::read_model_config(from)?.with_output_size(plan.classes)?;
            vec![
                "train".to_string(),
                "--model".into(),
                train::model_value_name(&config)?,
                "--model-config".into(),
                config.to_json(),
            ]
        }
    };
    args.extend(plan.data_flags.iter().cloned());
    args.extend(RUN_FLAGS.iter().map(|s| s.to_string()));
    match labels.0 {
        Some(k) => args.extend(["--labels-per-class".into(), k.to_string()]),
        None => args.extend(ALL_FLAGS.iter().map(|s| s.to_string())),
    }
    args.extend([
        "--epochs".into(),
        epochs.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--checkpoint-every".into(),
        epochs.to_string(),
        "--out".into(),
        out.display().to_string(),
        "--overwrite".into(),
    ]);
    Ok(args)
}

/// Runs `cargo xtask ARGS` in this process; the final test figure.
fn run_command(args: &[String]) -> Result<dl_train::Evaluation, CliError> {
    let cli = crate::parse_from(std::iter::once("cargo xtask".to_string()).chain(args.iter().cloned()))
        .map_err(|e| CliError::Other(format!("{}: {e}", args.join(" "))))?;
    let result = match cli.command {
        Command::Train(a) => train::run_scored(a)?,
        Command::Finetune(a) => train::finetune_scored(a)?,
        _ => return Err(CliError::Other(format!("not a training command: {}", args.join(" ")))),
    };
    result.ok_or_else(|| CliError::Other(format!("no test figure from {}", args.join(" "))))
}

/// `command` quoted for a shell where it needs it.
fn shell_line(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./,:".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    format!("cargo xtask {}", quoted.join(" "))
}

fn read_results(path: &Path) -> Result<Option<Results>, CliError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CliError::Other(format!(
                "{}: not a results file of cargo xtask transfer: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::Other(format!("{}: {e}", path.display()))),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    dl_tensor::fs::atomic_write(path, bytes).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
}

pub fn run(a: TransferArgs) -> Result<(), CliError> {
    if a.seeds == 0 {
        return Err(CliError::Other("--seeds must be at least 1".into()));
    }
    let plan = plan(a.experiment);
    let labels = if a.labels.is_empty() {
        plan.default_labels.clone()
    } else {
        a.labels.clone()
    };
    let name = a
        .experiment
        .to_possible_value()
        .expect("no skipped variant")
        .get_name()
        .to_string();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/transfer-{name}")));
    std::fs::create_dir_all(&out).map_err(|e| CliError::Other(format!("{}: {e}", out.display())))?;
    let from = match (&a.from, a.experiment) {
        (Some(p), _) => p.clone(),
        (None, Experiment::Optdigits) => crate::shipped_params(),
        (None, Experiment::SplitMnist) => pretrain_split_mnist(&out)?,
    };
    let results_path = out.join("results.json");
    let mut results = match read_results(&results_path)? {
        Some(r) if r.experiment != a.experiment || r.from != from => {
            return Err(CliError::Other(format!(
                "{} holds the results of {:?} from {}: choose another --out",
                results_path.display(),
                r.experiment,
                r.from.display()
            )))
        }
        Some(r) => r,
        None => Results {
            experiment: a.experiment,
            from: from.clone(),
            rows: Vec::new(),
        },
    };
    for &l in &labels {
        for seed in 0..a.seeds {
            for &mode in &plan.modes {
                let dir = out.join(format!("{}-{l}-seed{seed}", mode.slug()));
                let args = run_args(&plan, &from, mode, l, seed, &dir)?;
                let done = results
                    .rows
                    .iter()
                    .find(|r| r.labels == l && r.mode == mode && r.seed == seed);
                if let Some(row) = done {
                    // a run made with other flags would mix two recipes in one table
                    if row.command != shell_line(&args) {
                        return Err(CliError::Other(format!(
                            "{} holds a run made with other flags ({}), not `{}`: choose another --out",
                            results_path.display(),
                            row.command,
                            shell_line(&args)
                        )));
                    }
                    continue;
                }
                println!("== {}", shell_line(&args));
                let start = std::time::Instant::now();
                let e = run_command(&args)?;
                results.rows.push(Row {
                    labels: l,
                    mode,
                    seed,
                    correct: e.correct,
                    total: e.total,
                    seconds: start.elapsed().as_secs_f64(),
                    command: shell_line(&args),
                });
                let json = serde_json::to_vec_pretty(&results).map_err(|e| CliError::Other(e.to_string()))?;
                write_file(&results_path, &json)?;
            }
        }
    }
    let stats = summarize(&results, &labels, &plan.modes);
    let table = markdown(&stats, &plan.modes);
    write_file(&out.join("summary.md"), table.as_bytes())?;
    let png = chart(
        &format!("{name}: test accuracy against labels per class"),
        &stats,
        &plan.modes,
    )?;
    write_file(&out.join("transfer.png"), &png)?;
    println!("{table}");
    println!(
        "wrote {}, {} and {}",
        results_path.display(),
        out.join("summary.md").display(),
        out.join("transfer.png").display()
    );
    Ok(())
}

/// The split-mnist experiment's pretrained network: OUT/pretrain/params.safetensors,
/// trained on digits 0-4 (10 epochs of the book's recipe with the MNIST augmentation,
/// 1,000 validation images) unless it is there.
fn pretrain_split_mnist(out: &Path) -> Result<PathBuf, CliError> {
    let dir = out.join("pretrain");
    let params = dir.join("params.safetensors");
    if params.is_file() {
        println!("pretrained network: {} (kept)", params.display());
        return Ok(params);
    }
    let args: Vec<String> = [
        "train",
        "--classes",
        "0-4",
        "--epochs",
        "10",
        "--augment",
        "--validation",
        "1000",
        "--seed",
        "0",
        "--checkpoint-every",
        "10",
        "--overwrite",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect();
    println!("== {}", shell_line(&args));
    run_command(&args)?;
    Ok(params)
}

/// Mean and sample standard deviation of the test accuracy (in percent) of each
/// (labels, mode), with the number of seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    pub labels: Labels,
    pub mode: Mode,
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

pub fn summarize(results: &Results, labels: &[Labels], modes: &[Mode]) -> Vec<Stat> {
    let mut out = Vec::new();
    for &l in labels {
        for &mode in modes {
            let acc: Vec<f64> = results
                .rows
                .iter()
                .filter(|r| r.labels == l && r.mode == mode && r.total > 0)
                .map(|r| 100.0 * r.correct as f64 / r.total as f64)
                .collect();
            if acc.is_empty() {
                continue;
            }
            let n = acc.len();
            let mean = acc.iter().sum::<f64>() / n as f64;
            let std = if n > 1 {
                (acc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            } else {
                0.0
            };
            out.push(Stat {
                labels: l,
                mode,
                mean,
                std,
                n,
            });
        }
    }
    out
}

/// A markdown table: one row per labels-per-class, one column per mode, `mean ± std`.
pub fn markdown(stats: &[Stat], modes: &[Mode]) -> String {
    let mut s = String::from("| labels per class |");
    for m in modes {
        s.push_str(&format!(" {} |", m.name()));
    }
    s.push_str("\n| --- |");
    s.push_str(&" --- |".repeat(modes.len()));
    s.push('\n');
    let mut labels: Vec<Labels> = Vec::new();
    for st in stats {
        if !labels.contains(&st.labels) {
            labels.push(st.labels);
        }
    }
    for l in labels {
        s.push_str(&format!("| {l} |"));
        for &m in modes {
            match stats.iter().find(|st| st.labels == l && st.mode == m) {
                Some(st) => s.push_str(&format!(" {:.2} ± {:.2} ({} seeds) |", st.mean, st.std, st.n)),
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
    }
    s
}

/// Where `labels` sits on the chart's x axis: k, and `all` one decade past the largest k.
fn x_of(l: Labels, largest: usize) -> f64 {
    l.0.map_or(largest as f64 * 10.0, |k| k as f64)
}

/// The x axis's label at `x`: the number up to the largest k, `all` at the point of all
/// the labels (when plotted), nothing between.
fn tick_label(x: f64, largest: usize, all_x: Option<f64>) -> String {
    match all_x {
        Some(a) if (x / a - 1.0).abs() < 1e-6 => "all".into(),
        _ if x > largest as f64 * 1.000001 => String::new(),
        _ => format!("{}", x.round() as u64),
    }
}

/// The chart: test accuracy (mean, with a bar of one standard deviation either side)
/// against labels per class on a log axis, one line per mode.
pub fn chart(title: &str, stats: &[Stat], modes: &[Mode]) -> Result<Vec<u8>, CliError> {
    if stats.is_empty() {
        return Err(CliError::Other("no finished run to plot".into()));
    }
    crate::plot::register_font();
    let largest = stats.iter().filter_map(|s| s.labels.0).max().unwrap_or(1);
    let xmax = x_of(Labels(None), largest) * 1.6;
    let low = stats.iter().map(|s| s.mean - s.std).fold(100.0f64, f64::min);
    let bottom = (low / 5.0).floor() * 5.0;
    let (w, h) = (800u32, 520u32);
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    let draw = |rgb: &mut [u8]| -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d((0.7f64..xmax).log_scale(), bottom.max(0.0)..100.0f64)?;
        let has_all = stats.iter().any(|s| s.labels.0.is_none());
        let all_x = x_of(Labels(None), largest);
        c.configure_mesh()
            .x_label_formatter(&|&x| tick_label(x, largest, has_all.then_some(all_x)))
            .x_desc("labelled images per class (log scale)")
            .y_desc("test accuracy (%)")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, &m) in modes.iter().enumerate() {
            let color = crate::plot::color(i);
            let pts: Vec<&Stat> = stats.iter().filter(|s| s.mode == m).collect();
            let line: Vec<(f64, f64)> = pts.iter().map(|s| (x_of(s.labels, largest), s.mean)).collect();
            c.draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(m.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            c.draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            c.draw_series(pts.iter().map(|s| {
                let x = x_of(s.labels, largest);
                ErrorBar::new_vertical(
                    x,
                    s.mean - s.std,
                    s.mean,
                    (s.mean + s.std).min(100.0),
                    color.stroke_width(1),
                    8,
                )
            }))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw(&mut rgb).map_err(|e| CliError::Other(format!("drawing the chart: {e}")))?;
    crate::plot::encode_rgb_png(w, h, &rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_names_the_all_labels_point() {
        assert_eq!(tick_label(10.0, 100, Some(1000.0)), "10");
        assert_eq!(tick_label(100.0, 100, Some(1000.0)), "100");
        assert_eq!(tick_label(1000.0, 100, Some(1000.0)), "all");
        assert_eq!(tick_label(500.0, 100, Some(1000.0)), "");
        assert_eq!(tick_label(1000.0, 50, None), "");
        assert_eq!(tick_label(1.0, 50, None), "1");
        assert_eq!(tick_label(2.0, 1, Some(10.0)), "", "past the largest k, before all");
        assert_eq!(
            tick_label(100.0 * 1.000001, 100, None),
            "100",
            "within a millionth of k"
        );
    }

    fn row(labels: Option<usize>, mode: Mode, seed: u64, correct: usize) -> Row {
        Row {
            labels: Labels(labels),
            mode,
            seed,
            correct,
            total: 200,
            seconds: 1.0,
            command: String::new(),
        }
    }

    #[test]
    fn the_budget_is_the_same_number_of_images_for_every_few_label_run() {
        assert_eq!(
            epochs(Labels(Some(1)), 5),
            MAX_EPOCHS,
            "3,000 epochs of 5 images, capped"
        );
        assert_eq!(epochs(Labels(Some(10)), 5), 300);
        assert_eq!(epochs(Labels(Some(100)), 5), 30);
        assert_eq!(epochs(Labels(Some(10)), 10), 150);
        assert_eq!(epochs(Labels(Some(50)), 10), 30);
        assert_eq!(epochs(Labels(Some(10_000)), 10), 5, "at least 5");
        assert_eq!(epochs(Labels(None), 5), ALL_EPOCHS);
        assert_eq!(parse_labels("all"), Ok(Labels(None)));
        assert_eq!(parse_labels(" 7"), Ok(Labels(Some(7))));
        assert!(parse_labels("0").is_err() && parse_labels("x").is_err());
        assert_eq!(Labels(None).to_string(), "all");
        assert_eq!(Labels(Some(3)).to_string(), "3");
        for m in [Mode::Finetune, Mode::FinetuneNewHead, Mode::Scratch] {
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                m.slug(),
                "folders named as results.json names them"
            );
        }
    }

    #[test]
    fn fine_tuning_and_scratch_runs_differ_only_in_their_start() {
        let from = crate::shipped_params();
        let p = plan(Experiment::Optdigits);
        let out = Path::new("o");
        let tune = run_args(&p, &from, Mode::FinetuneNewHead, Labels(Some(5)), 3, out).unwrap();
        let keep = run_args(&p, &from, Mode::Finetune, Labels(Some(5)), 3, out).unwrap();
        let scratch = run_args(&p, &from, Mode::Scratch, Labels(Some(5)), 3, out).unwrap();
        let line = shell_line(&tune);
        assert!(line.starts_with("cargo xtask finetune --from "), "{line}");
        for needle in [
            "--head-classes 10",
            "--dataset optdigits",
            "--labels-per-class 5",
            "--epochs 300",
            "--seed 3",
            "--augment",
        ] {
            assert!(line.contains(needle), "{needle}: {line}");
        }
        assert!(!shell_line(&keep).contains("--head-classes"));
        let s = shell_line(&scratch);
        assert!(s.starts_with("cargo xtask train --model deep --model-config '{"), "{s}");
        assert!(s.contains(r#""output_size":10"#) && !s.contains("--from"), "{s}");
        // after the start, the same flags
        let tail = |v: &[String]| v[v.iter().position(|a| a == "--dataset").unwrap()..].to_vec();
        assert_eq!(tail(&tune), tail(&scratch));
        assert_eq!(tail(&keep), tail(&scratch));
        // all labels: no --labels-per-class
        let all = run_args(
            &plan(Experiment::SplitMnist),
            &from,
            Mode::Scratch,
            Labels(None),
            0,
            out,
        )
        .unwrap();
        assert!(!all.contains(&"--labels-per-class".to_string()));
        let all = shell_line(&all);
        assert!(all.contains(r#""output_size":5"#));
        assert!(
            all.contains("--epochs 10 ") && all.contains("--lr-decay cosine"),
            "{all}"
        );
        assert!(!line.contains("--lr-decay"), "a few-label run keeps its rate: {line}");
        assert_eq!(shell_line(&["it's".into()]), r"cargo xtask 'it'\''s'");
    }

    #[test]
    fn the_summary_has_the_mean_and_sample_deviation_of_each_cell() {
        let results = Results {
            experiment: Experiment::SplitMnist,
            from: PathBuf::from("p"),
            rows: vec![
                row(Some(1), Mode::Scratch, 0, 100),
                row(Some(1), Mode::Scratch, 1, 120),
                row(Some(1), Mode::Scratch, 2, 140),
                row(Some(1), Mode::FinetuneNewHead, 0, 190),
                row(None, Mode::Scratch, 0, 198),
                Row {
                    total: 0,
                    ..row(None, Mode::Scratch, 1, 0)
                },
            ],
        };
        let modes = [Mode::FinetuneNewHead, Mode::Scratch];
        let stats = summarize(&results, &[Labels(Some(1)), Labels(None)], &modes);
        assert_eq!(stats.len(), 3, "no fine-tuned run with all labels");
        let s = &stats[1];
        assert_eq!((s.labels, s.mode, s.n), (Labels(Some(1)), Mode::Scratch, 3));
        assert!((s.mean - 60.0).abs() < 1e-9 && (s.std - 10.0).abs() < 1e-9, "{s:?}");
        assert_eq!((stats[0].mean, stats[0].std), (95.0, 0.0));
        assert_eq!(
            (stats[2].mean, stats[2].n),
            (99.0, 1),
            "a run that tested nothing is left out"
        );
        let table = markdown(&stats, &modes);
        assert_eq!(
            table,
            "| labels per class | fine-tuned, new head | from scratch |\n| --- | --- | --- |\n\
             | 1 | 95.00 ± 0.00 (1 seeds) | 60.00 ± 10.00 (3 seeds) |\n| all | | 99.00 ± 0.00 (1 seeds) |\n"
        );
        let png = chart("t", &stats, &modes).unwrap();
        crate::tests::assert_golden_png(&png, "transfer.png");
        assert!(chart("t", &[], &modes).is_err());
    }

    #[test]
    fn all_the_labels_sit_one_decade_past_the_largest_k() {
        assert_eq!(x_of(Labels(Some(7)), 100), 7.0);
        assert_eq!(x_of(Labels(None), 100), 1000.0);
        assert_eq!(x_of(Labels(None), 3), 30.0);
    }

    #[test]
    fn split_mnist_starts_from_the_network_pretrained_in_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t");
        let pretrained = out.join("pretrain/params.safetensors");
        std::fs::create_dir_all(pretrained.parent().unwrap()).unwrap();
        let net = dl_models::build("SimpleConvNet", Some(crate::tests::TINY_SIMPLE), 0).unwrap();
        net.save_params(&pretrained).unwrap();
        // every cell already run from that network: nothing trains, the summary is written
        let p = plan(Experiment::SplitMnist);
        let rows = p
            .modes
            .iter()
            .map(|&mode| {
                let run_dir = out.join(format!("{}-1-seed0", mode.slug()));
                let args = run_args(&p, &pretrained, mode, Labels(Some(1)), 0, &run_dir).unwrap();
                Row {
                    command: shell_line(&args),
                    ..row(Some(1), mode, 0, 150)
                }
            })
            .collect();
        let results = Results {
            experiment: Experiment::SplitMnist,
            from: pretrained.clone(),
            rows,
        };
        std::fs::write(out.join("results.json"), serde_json::to_vec(&results).unwrap()).unwrap();
        let Command::Transfer(a) = crate::parse_from([
            "xtask",
            "transfer",
            "--experiment",
            "split-mnist",
            "--seeds",
            "1",
            "--labels",
            "1",
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap()
        .command
        else {
            unreachable!()
        };
        run(a).unwrap();
        let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
        assert!(
            summary.contains("| 1 | 75.00 ± 0.00 (1 seeds) | 75.00 ± 0.00 (1 seeds) |"),
            "{summary}"
        );
    }

    #[test]
    fn an_experiment_runs_every_cell_once_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        let net = dl_models::build("SimpleConvNet", Some(crate::tests::TINY_SIMPLE), 0).unwrap();
        net.save_params(p("tiny.safetensors")).unwrap();
        let cli = |extra: &[&str]| {
            let mut args = vec![
                "xtask",
                "transfer",
                "--experiment",
                "optdigits",
                "--seeds",
                "2",
                "--labels",
                "1",
            ];
            args.extend_from_slice(extra);
            let Command::Transfer(a) = crate::parse_from(args).unwrap().command else {
                unreachable!()
            };
            run(a)
        };
        cli(&["--from", &p("tiny.safetensors"), "--out", &p("t")]).unwrap();
        let results: Results = serde_json::from_slice(&std::fs::read(p("t/results.json")).unwrap()).unwrap();
        assert_eq!(results.rows.len(), 4, "2 starts x 2 seeds");
        for r in &results.rows {
            assert_eq!(r.total, 1797 - 100 - 10, "{r:?}");
            assert!(r.command.contains(&format!("--seed {}", r.seed)));
        }
        let seeds_of = |m: Mode| {
            results
                .rows
                .iter()
                .filter(|r| r.mode == m)
                .map(|r| r.seed)
                .collect::<Vec<_>>()
        };
        assert_eq!(seeds_of(Mode::Scratch), [0, 1]);
        assert!(std::fs::read_to_string(p("t/summary.md")).unwrap().contains("| 1 |"));
        assert!(dir.path().join("t/transfer.png").is_file());
        // a second call finds every cell done and runs nothing
        let before = std::fs::read(p("t/results.json")).unwrap();
        cli(&["--from", &p("tiny.safetensors"), "--out", &p("t")]).unwrap();
        assert_eq!(std::fs::read(p("t/results.json")).unwrap(), before);
        // nor runs made with other flags (an earlier recipe)
        let mut stale: Results = serde_json::from_slice(&before).unwrap();
        stale.rows[0].command = stale.rows[0].command.replace("--augment", "");
        let stale = serde_json::to_vec_pretty(&stale).unwrap();
        std::fs::write(p("t/results.json"), &stale).unwrap();
        let err = cli(&["--from", &p("tiny.safetensors"), "--out", &p("t")]).unwrap_err();
        assert!(err.to_string().contains("other flags"), "{err}");
        assert_eq!(std::fs::read(p("t/results.json")).unwrap(), stale, "left as it was");
        std::fs::write(p("t/results.json"), &before).unwrap();
        // results of another starting point are not mixed in
        let err = cli(&["--out", &p("t")]).unwrap_err();
        assert!(err.to_string().contains("holds the results of Optdigits from"), "{err}");
        // a results file that cannot be read is named, not taken for none
        std::fs::create_dir_all(p("d/results.json")).unwrap();
        let err = cli(&["--from", &p("tiny.safetensors"), "--out", &p("d")]).unwrap_err();
        assert!(err.to_string().contains("results.json"), "{err}");
        assert_eq!(std::fs::read_dir(p("d")).unwrap().count(), 1, "refused before any run");
        let Command::Transfer(a) =
            crate::parse_from(["xtask", "transfer", "--experiment", "optdigits", "--seeds", "0"])
                .unwrap()
                .command
        else {
            unreachable!()
        };
        assert!(run(a).unwrap_err().to_string().contains("--seeds"));
    }
}
