//! `cargo xtask`: the command line of dlfs. `cargo xtask --help` lists the commands.

mod bench;
mod bench_binary;
mod bench_distributed;
mod bench_precision;
mod download;
mod ensemble;
mod eval;
mod misclassified;
mod optdigits;
mod plot;
mod preview;
mod serve;
mod train;
mod transfer;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The workspace root (xtask lives one folder below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent folder")
        .to_path_buf()
}

/// The MNIST copy shipped in the repository.
pub fn default_data_dir() -> PathBuf {
    root().join("datasets").join("mnist")
}

/// A data set the commands train and evaluate on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// MNIST, or any set in its four-file format (Fashion-MNIST, KMNIST): a training and
    /// a test set.
    #[default]
    Mnist,
    /// UCI's optical digits (1,797 images, 28x28 on load): one set, from which
    /// --labels-per-class K draws the training images; the rest is the test set.
    Optdigits,
}

impl Dataset {
    /// The copy shipped in the repository.
    pub fn default_dir(self) -> PathBuf {
        match self {
            Dataset::Mnist => default_data_dir(),
            Dataset::Optdigits => root().join("datasets").join("optdigits"),
        }
    }

    /// The set in `dir` (default: the shipped copy) as training and test images. The
    /// optical digits have no split of their own: all of them are the training set
    /// and the test set is empty, until [`Dataset::few_labels`] splits them.
    pub fn load(self, dir: Option<&Path>) -> Result<dl_data::Mnist, CliError> {
        let dir = dir.map_or_else(|| self.default_dir(), Path::to_path_buf);
        Ok(match self {
            Dataset::Mnist => dl_data::Mnist::load(&dir)?,
            Dataset::Optdigits => {
                let all = dl_data::load_optdigits(&dir)?;
                let test = all.take(0);
                dl_data::Mnist { train: all, test }
            }
        })
    }

    /// Keeps `k` training images of each class (drawn by `seed`); for the optical
    /// digits, the images left become the test set.
    pub fn few_labels(self, data: &mut dl_data::Mnist, k: usize, seed: u64) {
        let (chosen, rest) = data.train.per_class_split(k, seed);
        data.train = chosen;
        if self == Dataset::Optdigits {
            data.test = rest;
        }
    }
}

/// The trained DeepConvNet weights shipped in the repository.
pub fn shipped_params() -> PathBuf {
    root().join("crates/dl-models/weights/deep_convnet.safetensors")
}

/// The shipped binarized network (`train --model binary`), in f32.
pub fn shipped_binary_params() -> PathBuf {
    root().join("crates/dl-models/weights/binary_convnet.safetensors")
}

/// This invocation as `cargo xtask <sub> <its arguments>`, for a manifest's description
/// (global flags before the subcommand are left out).
pub fn command_line(sub: &str) -> String {
    command_line_of(sub, std::env::args())
}

/// [`command_line`] for the arguments `args` (the program's name first).
fn command_line_of(sub: &str, args: impl IntoIterator<Item = String>) -> String {
    let rest: Vec<String> = args.into_iter().skip_while(|s| s != sub).skip(1).collect();
    format!("cargo xtask {sub} {}", rest.join(" ")).trim_end().to_string()
}

/// The ensemble shipped in the repository (`cargo xtask eval --ensemble`).
pub fn shipped_ensemble() -> PathBuf {
    root().join("crates/dl-models/weights/ensemble")
}

#[derive(Parser)]
#[command(name = "cargo xtask", about = "dlfs: deep learning from scratch, in Rust", version)]
struct Cli {
    /// Rayon worker threads (default: RAYON_NUM_THREADS, else every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network on MNIST (defaults: the book's chapter 8 run).
    Train(train::TrainArgs),
    /// Fine-tune a saved network (--from) on new data: train's flags, and a new head
    /// (--head-classes), frozen layers (--freeze), few labels (--labels-per-class).
    Finetune(train::TrainArgs),
    /// The transfer-learning experiments: fine-tuned against from scratch, over labels
    /// per class and seeds (results.json, summary.md, transfer.png).
    Transfer(transfer::TransferArgs),
    /// Full test accuracy of saved weights (default: the shipped DeepConvNet).
    Eval(eval::EvalArgs),
    /// A parameter file stored at another precision (f16 or bf16: half the bytes).
    ConvertParams(eval::ConvertParamsArgs),
    /// Post-training int8 quantization of a parameter file: per-channel int8 weights,
    /// i32 biases, activation scales from training images.
    Quantize(eval::QuantizeArgs),
    /// Convert the book's pickled parameters (deep_convnet_params.pkl) to safetensors.
    ConvertBook(eval::ConvertArgs),
    /// Combine trained weights files into an ensemble folder (members + ensemble.json).
    Ensemble(ensemble::EnsembleArgs),
    /// Fetch and verify MNIST, Fashion-MNIST or KMNIST.
    Download(download::DownloadArgs),
    /// Make datasets/optdigits (IDX files and checksums) from scikit-learn's
    /// digits.csv.gz.
    ConvertOptdigits(optdigits::ConvertArgs),
    /// Write a PNG grid of original and augmented digits.
    AugmentPreview(preview::PreviewArgs),
    /// Throughput, per-layer times and peak memory (table, and JSON with --json).
    Bench(bench::BenchArgs),
    /// Serve the draw-a-digit page and the JSON API (POST /api/predict).
    Serve(serve::ServeArgs),
    /// The digit and probabilities for each image file (PNG or JPEG).
    Predict(serve::PredictArgs),
    /// Training curves of one or several runs (history.json files) as a PNG.
    Plot(plot::PlotArgs),
    /// A PNG grid of the test digits a model gets wrong.
    Misclassified(misclassified::MisclassifiedArgs),
}

/// Errors of the command line, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Data(#[from] dl_data::DataError),
    #[error(transparent)]
    Model(#[from] dl_models::ModelError),
    #[error(transparent)]
    Train(#[from] dl_train::TrainError),
    #[error(transparent)]
    Layer(#[from] dl_layers::LayerError),
    #[error(transparent)]
    Ensemble(#[from] dl_train::EnsembleError),
    #[error("{0}")]
    Other(String),
}

/// Parses the command line, with `train --recipe` applied to the flags not given.
fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let given = matches
        .subcommand_matches("train")
        .or(matches.subcommand_matches("finetune"));
    if let (Command::Train(a) | Command::Finetune(a), Some(m)) = (&mut cli.command, given) {
        a.apply_recipe(&|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine));
    }
    Ok(cli)
}

/// An error unless `path` is absent or `overwrite` was passed: no command replaces a
/// user's file without being asked to.
pub fn refuse_to_replace(path: &Path, overwrite: bool) -> Result<(), CliError> {
    if path.exists() && !overwrite {
        return Err(CliError::Other(format!(
            "{} exists: pass --overwrite to replace it",
            path.display()
        )));
    }
    Ok(())
}

/// The file a command writes its output to: `out` if it is absent or `overwrite` was
/// passed, else an error; without `out`, `default` (with `overwrite`) or the first
/// [`first_free`] name beside it. Never a file that holds something, unless asked (as
/// [`refuse_to_replace`]).
pub fn output_file(out: Option<&Path>, overwrite: bool, default: &Path) -> Result<PathBuf, CliError> {
    if let Some(path) = out {
        refuse_to_replace(path, overwrite)?;
        return Ok(path.to_path_buf());
    }
    if overwrite {
        return Ok(default.to_path_buf());
    }
    first_free(default, |p| {
        p.try_exists()
            .map_err(|e| CliError::Other(format!("{}: {e}", p.display())))
    })
}

/// `default`, or the first of `NAME-2.EXT`, `NAME-3.EXT`, ... beside it (`NAME-2` and so
/// on for a name without an extension) that is not `taken`: where a command's default
/// output goes without replacing an earlier one.
pub fn first_free(default: &Path, taken: impl Fn(&Path) -> Result<bool, CliError>) -> Result<PathBuf, CliError> {
    let stem = default.file_stem().unwrap_or_default().to_string_lossy();
    let ext = default
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut path = default.to_path_buf();
    let mut k = 1;
    while taken(&path)? {
        k += 1;
        path = default.with_file_name(format!("{stem}-{k}{ext}"));
    }
    Ok(path)
}

/// Writes `bytes` to `path` atomically ([`dl_tensor::fs::atomic_write`]), making its
/// folder first if it is missing.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Other(format!("{}: {e}", dir.display())))?;
    }
    dl_tensor::fs::atomic_write(path, bytes).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
}

fn main() -> ExitCode {
    let cli = parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if let Err(e) = dl_tensor::Isa::from_env() {
        eprintln!("error: {}: {e}", dl_tensor::SIMD_ENV);
        return ExitCode::from(2);
    }
    // Training and serving free and allocate megabyte blocks every step: keep them in
    // the process rather than faulting fresh pages in each time (docs/PERFORMANCE.md).
    dl_tensor::retain_freed_memory();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("error: cannot set up {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = if cli.command.serves() {
        run(cli.command)
    } else {
        // on a pool of one thread, the command runs on it: no loop is handed over
        dl_tensor::on_pool(|| run(cli.command))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// The web server and its benchmark, which run on the calling thread: their request
    /// threads call into the pool, which keeps all of its threads for them (on a pool of
    /// one thread, a server running on it would leave no thread to answer).
    fn serves(&self) -> bool {
        match self {
            Command::Serve(_) => true,
            Command::Bench(a) => a.measures_server(),
            _ => false,
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Train(a) => train::run(a),
        Command::Finetune(a) => train::finetune(a),
        Command::Transfer(a) => transfer::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Download(a) => download::run(a),
        Command::Ensemble(a) => ensemble::run(a),
        Command::ConvertBook(a) => eval::convert(a),
        Command::ConvertParams(a) => eval::convert_params(a),
        Command::Quantize(a) => eval::quantize(a),
        Command::ConvertOptdigits(a) => optdigits::convert(a),
        Command::AugmentPreview(a) => preview::run(a),
        Command::Serve(a) => serve::serve(a),
        Command::Predict(a) => serve::predict(a),
        Command::Plot(a) => plot::run(a),
        Command::Misclassified(a) => misclassified::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_is_told_from_its_subcommand_on() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            command_line_of("train", args("target/xtask --threads 2 train --epochs 3 --out a")),
            "cargo xtask train --epochs 3 --out a"
        );
        assert_eq!(
            command_line_of("ensemble", args("xtask ensemble")),
            "cargo xtask ensemble"
        );
        // the subcommand's name given again as a value is kept
        assert_eq!(
            command_line_of("train", args("xtask train --out train")),
            "cargo xtask train --out train"
        );
        assert!(command_line("ensemble").starts_with("cargo xtask ensemble"));
    }

    /// An output file is never one that exists unless --overwrite was passed: an explicit
    /// one that exists is refused, and without one the default or the first free
    /// `NAME-K.EXT` beside it is chosen.
    #[test]
    fn an_output_file_never_replaces_a_file_unasked() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let default = p("plots/curves.png");
        // nothing there yet: the default itself
        assert_eq!(output_file(None, false, &default).unwrap(), default);
        std::fs::create_dir_all(p("plots")).unwrap();
        std::fs::write(&default, b"1").unwrap();
        assert_eq!(output_file(None, false, &default).unwrap(), p("plots/curves-2.png"));
        std::fs::write(p("plots/curves-2.png"), b"2").unwrap();
        assert_eq!(output_file(None, false, &default).unwrap(), p("plots/curves-3.png"));
        // asked to replace: the default itself
        assert_eq!(output_file(None, true, &default).unwrap(), default);
        // a name without an extension
        let bare = p("plots/report");
        std::fs::write(&bare, b"r").unwrap();
        assert_eq!(output_file(None, false, &bare).unwrap(), p("plots/report-2"));
        // an explicit file: taken when absent or when asked, refused otherwise
        let mine = p("mine.png");
        assert_eq!(output_file(Some(&mine), false, &default).unwrap(), mine);
        std::fs::write(&mine, b"m").unwrap();
        let err = output_file(Some(&mine), false, &default).unwrap_err().to_string();
        assert!(err.contains("mine.png") && err.contains("--overwrite"), "{err}");
        assert_eq!(output_file(Some(&mine), true, &default).unwrap(), mine);
        // nothing was written or removed by choosing
        assert_eq!(std::fs::read(&default).unwrap(), b"1");
        assert_eq!(std::fs::read(&mine).unwrap(), b"m");
    }

    fn run_cli(args: &[&str]) -> Result<(), CliError> {
        let cli = parse_from(std::iter::once("xtask").chain(args.iter().copied())).expect("valid flags");
        run(cli.command)
    }

    /// The web server and `bench --serve` run where they are called; every other command
    /// through `dl_tensor::on_pool`.
    #[test]
    fn only_the_server_keeps_the_pool_for_its_requests() {
        let command = |line: &str| parse_from(line.split(' ')).expect("valid flags").command;
        assert!(command("xtask serve").serves());
        assert!(command("xtask bench --serve").serves());
        for other in ["xtask bench", "xtask train", "xtask eval", "xtask predict x.png"] {
            assert!(!command(other).serves(), "{other}");
        }
    }

    /// A network that deskews its images is evaluated with the step (at f32), and the
    /// inference engines, which would skip it, refuse it with an error that says why.
    #[test]
    fn a_deskewing_network_is_evaluated_and_refused_by_the_engines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deskew.safetensors");
        let mut net = dl_models::load(shipped_params()).unwrap();
        net.set_deskew(true);
        net.save_params(&path).unwrap();
        let file = path.to_str().unwrap();
        run_cli(&["eval", "--params", file, "--validation", "200"]).unwrap();
        for refused in [
            &["eval", "--params", file, "--precision", "f16"][..],
            &["eval", "--params", file, "--precision", "int8"],
            &[
                "quantize",
                "--params",
                file,
                "--out",
                dir.path().join("q").to_str().unwrap(),
            ],
        ] {
            let err = run_cli(refused).unwrap_err().to_string();
            assert!(err.contains("deskews its images"), "{refused:?}: {err}");
        }
        assert!(!dir.path().join("q").exists());
    }

    /// `convert-params` stores the shipped weights at 16 bits in half the bytes, refuses
    /// to replace its output without --overwrite, and `eval --precision` runs the file.
    #[test]
    fn convert_params_and_eval_at_sixteen_bits() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("deep-f16.safetensors");
        let out = out.to_str().unwrap();
        let convert = ["convert-params", "--precision", "f16", "--out", out];
        run_cli(&convert).unwrap();
        let full = std::fs::metadata(shipped_params()).unwrap().len();
        let half = std::fs::metadata(out).unwrap().len();
        assert!(
            half < full / 2 + 4096 && half > full / 2 - 4096,
            "{half} of {full} bytes"
        );
        let st_bytes = std::fs::read(out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
        assert!(st.tensors().iter().all(|(_, v)| v.dtype() == safetensors::Dtype::F16));
        let err = run_cli(&convert).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert_eq!(std::fs::read(out).unwrap(), st_bytes, "left as it was");
        run_cli(&[&convert[..], &["--overwrite"]].concat()).unwrap();
        let data = small_mnist(dir.path(), 0, 100);
        run_cli(&[
            "eval",
            "--params",
            out,
            "--precision",
            "bf16",
            "--data",
            data.to_str().unwrap(),
        ])
        .unwrap();
        assert!(parse_from(["xtask", "eval", "--precision", "f8"]).is_err());
        run_cli(&[
            "eval",
            "--ensemble",
            "--precision",
            "f16",
            "--vote",
            "majority",
            "--dataset",
            "optdigits",
        ])
        .unwrap();
    }

    /// `quantize --bits 1` writes the binarized network's packed file, about 28x smaller
    /// than its f32 one (the binarized weights 32x), `eval` runs it, `eval --precision
    /// binary` packs on the fly, and a network that is not binarized is refused.
    #[test]
    fn quantize_and_eval_in_one_bit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("binary.safetensors");
        let out = out.to_str().unwrap();
        let binary = shipped_binary_params();
        let binary = binary.to_str().unwrap();
        run_cli(&["quantize", "--bits", "1", "--params", binary, "--out", out]).unwrap();
        let full = std::fs::metadata(binary).unwrap().len() as f64;
        let bytes = std::fs::read(out).unwrap();
        let ratio = full / bytes.len() as f64;
        assert!((27.0..32.0).contains(&ratio), "{ratio:.2}x smaller");
        let net = dl_models::load(binary).unwrap();
        let packed = dl_infer::BinaryNetwork::new(net.root(), (1, 28, 28)).unwrap();
        assert_eq!(packed.to_bytes(), bytes);
        run_cli(&["eval", "--params", out, "--dataset", "optdigits"]).unwrap();
        let on_the_fly = ["eval", "--params", binary, "--precision", "binary"];
        run_cli(&[&on_the_fly[..], &["--dataset", "optdigits"]].concat()).unwrap();
        let err = run_cli(&["quantize", "--bits", "1", "--out", out, "--overwrite"]).unwrap_err();
        assert!(err.to_string().contains("ReLU"), "the shipped DeepConvNet: {err}");
        assert_eq!(std::fs::read(out).unwrap(), bytes, "left as it was");
        assert!(parse_from(["xtask", "quantize", "--bits", "4", "--out", out]).is_err());
        let deep = shipped_params();
        let err = run_cli(&["bench", "--model", "binary", "--params", deep.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("not a binarized network"), "{err}");
    }

    /// `bench --model binary` times every binarized layer at f32 and at each popcount
    /// kernel the CPU has, then the whole network packed beside its f32 forward.
    #[test]
    fn bench_binary_times_each_layer_at_every_popcount_kernel() {
        use dl_tensor::binary::PopcountKernel;
        let dir = tempfile::tempdir().unwrap();
        let data = small_mnist(dir.path(), 0, 4000);
        let json = dir.path().join("binary.json");
        // the whole network's passes take 4,000 test images
        let few = small_mnist(&dir.path().join("few"), 0, 3999);
        let err = run_cli(&["bench", "--model", "binary", "--data", few.to_str().unwrap()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("first 4000 test images, and this set has 3999"),
            "{err}"
        );
        // a network that is not binarized, by name
        let deep = shipped_params();
        let err = run_cli(&["bench", "--model", "binary", "--params", deep.to_str().unwrap()]).unwrap_err();
        assert!(
            err.to_string().contains("a DeepConvNet, not a binarized network"),
            "{err}"
        );
        run_cli(&[
            "bench",
            "--model",
            "binary",
            "--windows",
            "1",
            "--data",
            data.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ])
        .unwrap();
        let read = |p: &Path| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).unwrap();
        let r = read(&json);
        assert_eq!(r["popcount_kernel"], PopcountKernel::active().name());
        let kernels: Vec<&str> = PopcountKernel::supported_levels().iter().map(|k| k.name()).collect();
        let layers = r["layers"].as_array().unwrap();
        let names: Vec<&str> = layers.iter().map(|l| l["layer"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "conv 32->32 3x3 on 28x28",
                "conv 32->64 3x3 on 14x14",
                "conv 64->64 3x3 on 14x14",
                "affine 3136->1024"
            ]
        );
        for l in layers {
            assert!(l["f32_ms"].as_f64().unwrap() > 0.0, "{l}");
            for key in ["packed_ms", "fused_ms"] {
                let times = l[key].as_array().unwrap();
                let named: Vec<&str> = times.iter().map(|t| t[0].as_str().unwrap()).collect();
                assert_eq!(named, kernels, "{key}");
                assert!(times.iter().all(|t| t[1].as_f64().unwrap() > 0.0), "{l}");
            }
        }
        let whole = read(&json.with_extension("network.json"));
        let rows = whole["rows"].as_array().unwrap();
        let precisions: Vec<&str> = rows.iter().map(|r| r["precision"].as_str().unwrap()).collect();
        assert_eq!(precisions, ["network f32", "f32", "binary"]);
        for row in rows {
            let correct = row["test_correct"].as_u64().unwrap();
            assert!(correct > 3900 && correct <= 4000, "{row}");
        }
    }

    /// `quantize` writes an int8 file about 4x smaller than the f32 one, calibrated on the
    /// training images, refuses to replace it without --overwrite, and `eval` runs it
    /// as the network it stands for; `eval --precision int8` quantizes on the fly.
    #[test]
    fn quantize_and_eval_in_int8() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("deep-int8.safetensors");
        let out = out.to_str().unwrap();
        let quantize = ["quantize", "--out", out, "--calibrate", "200"];
        run_cli(&quantize).unwrap();
        let full = std::fs::metadata(shipped_params()).unwrap().len() as f64;
        let bytes = std::fs::read(out).unwrap();
        let ratio = full / bytes.len() as f64;
        assert!((3.8..4.0).contains(&ratio), "{ratio:.2}x smaller");
        let q = dl_infer::QuantizedNetwork::from_bytes(&bytes).unwrap();
        // the same images give the same file
        let x = eval::calibration_images(200, None).unwrap();
        let net = dl_models::load(shipped_params()).unwrap();
        assert_eq!(
            dl_infer::QuantizedNetwork::quantize(net.root(), &x).unwrap().to_bytes(),
            bytes
        );
        assert_eq!(q.input_params().scale, 1.0 / 255.0);
        let err = run_cli(&quantize).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert_eq!(std::fs::read(out).unwrap(), bytes, "left as it was");
        run_cli(&["quantize", "--out", out, "--calibrate", "100", "--overwrite"]).unwrap();
        assert_ne!(std::fs::read(out).unwrap(), bytes, "other calibration images");
        run_cli(&["eval", "--params", out]).unwrap();
        run_cli(&[
            "eval",
            "--precision",
            "int8",
            "--calibrate",
            "50",
            "--dataset",
            "optdigits",
        ])
        .unwrap();
        for bad in [
            &["eval", "--precision", "int4"][..],
            &["quantize", "--out", out, "--calibrate", "0"],
        ] {
            assert!(parse_from([&["xtask"][..], bad].concat()).is_err(), "{bad:?}");
        }
        // a file that is neither an int8 network nor parameters
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, &bytes[..bytes.len() / 2]).unwrap();
        assert!(run_cli(&["eval", "--params", junk.to_str().unwrap()]).is_err());
        let p = eval::parse_eval_precision("int8").unwrap();
        assert_eq!(p.name(), "int8");
        assert_eq!(eval::parse_eval_precision("bf16").unwrap().name(), "bf16");
        assert!(eval::parse_eval_precision("i8").unwrap_err().contains("int8"));
    }

    /// A bench of one window of one iteration, without the augmentation's windows.
    const QUICK_BENCH: [&str; 8] = [
        "bench",
        "--windows",
        "1",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--skip-augment",
    ];

    /// The training bench measures bf16 products against f32 in windows of its own and
    /// writes both rates with the rest of its figures.
    #[test]
    fn bench_measures_bf16_training_beside_f32() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("bench.json");
        let j = json.to_str().unwrap();
        // too few images for a batch of 100 to train on, or of 1,000 to infer
        for (train, test) in [(99, 1000), (100, 999)] {
            let data = small_mnist(&dir.path().join(format!("{train}-{test}")), train, test);
            let err = run_cli(&["bench", "--data", data.to_str().unwrap(), "--json", j]).unwrap_err();
            assert!(err.to_string().contains(&format!("has {train} and {test}")), "{err}");
        }
        assert!(!json.exists());
        let data = small_mnist(dir.path(), 100, 1000);
        run_cli(&[&QUICK_BENCH[..], &["--data", data.to_str().unwrap(), "--json", j]].concat()).unwrap();
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let mut keys = vec!["train_images_per_sec_f32_paired", "train_images_per_sec_bf16_paired"];
        if dl_layers::Bf16Kernel::Avx512.supported() {
            keys.extend([
                "train_images_per_sec_bf16_dpbf16_paired",
                "train_images_per_sec_f32_lowered_paired",
            ]);
        }
        for key in keys {
            assert!(
                r["extra"][key].as_f64().is_some_and(|v| v > 0.0),
                "{key}: {}",
                r["extra"]
            );
        }
        assert!(
            r["extra"].get("train_images_per_sec_augmented").is_none(),
            "--skip-augment"
        );
        // a report is replaced only when asked, and refused before anything is measured
        // (here, before the set too small to bench is read)
        let before = std::fs::read(&json).unwrap();
        let few = small_mnist(&dir.path().join("few"), 99, 1000);
        let err = run_cli(&["bench", "--data", few.to_str().unwrap(), "--json", j]).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert_eq!(std::fs::read(&json).unwrap(), before);
        let err = run_cli(&["bench", "--data", few.to_str().unwrap(), "--json", j, "--overwrite"]).unwrap_err();
        assert!(err.to_string().contains("has 99 and 1000"), "{err}");
        run_cli(
            &[
                &QUICK_BENCH[..],
                &["--data", data.to_str().unwrap(), "--json", j, "--overwrite"],
            ]
            .concat(),
        )
        .unwrap();
        assert_ne!(std::fs::read(&json).unwrap(), before, "a new report");
    }

    /// The child of `bench --distributed`, run alone, trains on exactly the images its
    /// steps take, and refuses a set one image short.
    #[test]
    fn bench_distributed_child_takes_exactly_its_steps_images() {
        let dir = tempfile::tempdir().unwrap();
        let child = |train: u32| {
            let data = small_mnist(&dir.path().join(train.to_string()), train, 100);
            let args = [
                "bench",
                "--distributed-child",
                "--warmup",
                "1",
                "--iters",
                "2",
                "--batch",
                "20",
            ];
            run_cli(&[&args[..], &["--data", data.to_str().unwrap()]].concat())
        };
        child(60).unwrap();
        let err = child(59).unwrap_err().to_string();
        assert!(
            err.contains("the bench trains on 60 images (1 + 2 steps of 20), and this set has 59"),
            "{err}"
        );
        // steps whose images overflow a usize: refused the same way, not a panic
        let data = small_mnist(&dir.path().join("huge"), 60, 100);
        let huge = usize::MAX.to_string();
        let args = ["bench", "--distributed-child", "--iters", &huge, "--batch", "20"];
        let err = run_cli(&[&args[..], &["--data", data.to_str().unwrap()]].concat())
            .unwrap_err()
            .to_string();
        assert!(err.contains("and this set has 60"), "{err}");
    }

    #[test]
    fn bench_times_augmentation_and_sets_the_vector_kernels_beside_lowering() {
        let dir = tempfile::tempdir().unwrap();
        let data = small_mnist(dir.path(), 200, 1100);
        let json = dir.path().join("bench.json");
        let args = [
            "bench",
            "--windows",
            "1",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--skip-bf16",
            "--data",
        ];
        run_cli(&[&args[..], &[data.to_str().unwrap(), "--json", json.to_str().unwrap()]].concat()).unwrap();
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(r["images_per_window"], 200, "2 batches of 100");
        // every whole batch of the 1,100 test images
        assert_eq!(
            r["infer_images_per_pass"],
            serde_json::json!({"100": 1100, "1000": 1000})
        );
        let extra = &r["extra"];
        let (plain, augmented) = (
            extra["train_images_per_sec_plain_paired"].as_f64().unwrap(),
            extra["train_images_per_sec_augmented"].as_f64().unwrap(),
        );
        // the epoch takes plain / augmented times as long with augmentation
        let pct = extra["augment_epoch_time_increase_pct"].as_f64().unwrap();
        assert!((pct - (plain / augmented - 1.0) * 100.0).abs() < 1e-9, "{pct}");
        // the vector kernels run beside lowering, and the direct kernel beside Winograd,
        // wherever the convolutions have a vector level (they have none at scalar)
        let vector = dl_tensor::Isa::active() != dl_tensor::Isa::Scalar;
        for key in [
            "train_images_per_sec_im2col_paired",
            "train_images_per_sec_direct_paired",
            "train_images_per_sec_direct_only_paired",
            "train_images_per_sec_winograd_paired",
            "infer_images_per_sec_b100_im2col_paired",
            "infer_images_per_sec_b1000_direct_only_paired",
        ] {
            assert_eq!(extra[key].as_f64().is_some_and(|v| v > 0.0), vector, "{key}: {extra}");
        }
    }

    /// `bench --vs-torch` runs the script with the bench's model, threads, windows and
    /// data, and keeps what it reports; a Python without torch, or a run that fails, is
    /// said and passed over.
    #[cfg(unix)]
    #[test]
    fn bench_vs_torch_runs_the_script_with_the_same_settings() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = small_mnist(dir.path(), 100, 1000);
        let script = dir.path().join("torch_models.py");
        std::fs::write(&script, "# stands in for scripts/torch_models.py").unwrap();
        // a "Python" that imports anything and, for the script, writes its arguments
        // (double quotes made single) and a rate where --json says
        let python = dir.path().join("python");
        std::fs::write(
            &python,
            "#!/bin/sh\n[ \"$1\" = -c ] && exit 0\nall=$(printf '%s' \"$*\" | tr '\"' \"'\")\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --json ] && out=\"$2\"; shift; done\n\
             printf '{\"torch\": \"fake\", \"train_images_per_sec\": 50.0, \"args\": \"%s\"}' \"$all\" > \"$out\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let json = dir.path().join("bench.json");
        let bench = |python: &str| {
            run_cli(
                &[
                    &QUICK_BENCH[..],
                    &[
                        "--data",
                        data.to_str().unwrap(),
                        "--skip-bf16",
                        "--vs-torch",
                        script.to_str().unwrap(),
                        "--python",
                        python,
                        "--json",
                        json.to_str().unwrap(),
                        // each run replaces the last one's report
                        "--overwrite",
                    ][..],
                ]
                .concat(),
            )
            .unwrap();
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(&json).unwrap()).unwrap()
        };
        let r = bench(python.to_str().unwrap());
        assert_eq!(r["torch"]["torch"], "fake", "{}", r["torch"]);
        assert_eq!(r["torch"]["train_images_per_sec"], 50.0);
        let args = r["torch"]["args"].as_str().unwrap();
        let threads = rayon::current_num_threads();
        for want in [
            format!("{} bench --model deep --config {{", script.display()),
            format!("--threads {threads} --windows 1 --json "),
            format!("--mnist {}", data.display()),
        ] {
            assert!(args.contains(&want), "{want}: {args}");
        }
        let r = bench("/bin/false");
        assert!(r["torch"].is_null(), "{}", r["torch"]);
        // a script that writes its figures and then fails: they are not kept
        let failing = dir.path().join("failing-python");
        let text = std::fs::read_to_string(&python).unwrap() + "exit 1\n";
        std::fs::write(&failing, text).unwrap();
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = bench(failing.to_str().unwrap());
        assert!(r["torch"].is_null(), "{}", r["torch"]);
    }

    /// `bench --precision int8` measures the int8 network beside the training code's f32
    /// forward and records the CPU and the kernel each ran at.
    #[test]
    fn bench_precision_int8_records_its_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("int8.json");
        run_cli(&[
            "bench",
            "--precision",
            "int8",
            "--windows",
            "1",
            "--json",
            json.to_str().unwrap(),
        ])
        .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let kernel = dl_tensor::int8::Int8Kernel::active().name();
        assert_eq!(r["int8_kernel"], kernel);
        assert_eq!(r["conv_isa"], dl_tensor::Isa::active().name());
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0]["precision"].as_str(), rows[1]["precision"].as_str()),
            (Some("network f32"), Some("int8"))
        );
        assert_eq!(rows[1]["kernel"], kernel);
        assert_eq!(rows[0]["test_correct"], 9943);
        assert!(rows[1]["test_correct"].as_u64().unwrap() >= 9938, "{}", rows[1]);
        let f32_file = rows[0]["file_bytes"].as_f64().unwrap();
        assert!(f32_file / rows[1]["file_bytes"].as_f64().unwrap() > 3.8);
        assert!(rows[1]["images_per_sec"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_f64().unwrap() > 0.0));
    }

    /// The first `train` training and `test` test images of the shipped MNIST, as its
    /// four raw IDX files in `dir`, for runs that end on the test set in a blink.
    pub fn small_mnist(dir: &Path, train: u32, test: u32) -> PathBuf {
        use std::io::Read;
        let out = dir.join("small-mnist");
        std::fs::create_dir_all(&out).unwrap();
        for (name, n) in [
            ("train-images-idx3-ubyte", train),
            ("train-labels-idx1-ubyte", train),
            ("t10k-images-idx3-ubyte", test),
            ("t10k-labels-idx1-ubyte", test),
        ] {
            let gz = std::fs::File::open(default_data_dir().join(format!("{name}.gz"))).unwrap();
            let mut bytes = Vec::new();
            flate2::read::GzDecoder::new(gz).read_to_end(&mut bytes).unwrap();
            // magic (2 zero bytes, the type, the rank), then each dimension in 4 bytes
            let header = 4 + 4 * usize::from(bytes[3]);
            let item: usize = bytes[8..header]
                .chunks(4)
                .map(|d| u32::from_be_bytes(d.try_into().unwrap()) as usize)
                .product();
            bytes[4..8].copy_from_slice(&n.to_be_bytes());
            bytes.truncate(header + n as usize * item);
            std::fs::write(out.join(name), bytes).unwrap();
        }
        out
    }

    #[test]
    fn small_mnist_holds_the_first_images_of_each_set() {
        let dir = tempfile::tempdir().unwrap();
        let small = dl_data::Mnist::load(small_mnist(dir.path(), 7, 3)).unwrap();
        let full = Dataset::Mnist.load(None).unwrap();
        assert_eq!((small.train.len(), small.test.len()), (7, 3));
        assert_eq!(small.train, full.train.take(7));
        assert_eq!(small.test, full.test.take(3));
    }

    /// Asserts that the PNG `png_bytes` has the pixels of `tests/golden/NAME` (committed
    /// after being looked at). On a difference it writes the new image to the temporary
    /// folder and names it, to be looked at and committed when the change is meant.
    pub fn assert_golden_png(png_bytes: &[u8], name: &str) {
        let pixels = |bytes: &[u8]| {
            let mut reader = png::Decoder::new(bytes).read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut buf).unwrap();
            buf.truncate(info.buffer_size());
            (info.width, info.height, buf)
        };
        let golden = std::fs::read(root().join("xtask/tests/golden").join(name)).unwrap();
        let (got, want) = (pixels(png_bytes), pixels(&golden));
        if got != want {
            let path = std::env::temp_dir().join(format!("dlfs-actual-{name}"));
            std::fs::write(&path, png_bytes).unwrap();
            let differ = got.2.chunks(3).zip(want.2.chunks(3)).filter(|(g, w)| g != w).count();
            panic!(
                "{}x{} against the golden {}x{}, {differ} pixels differ: the image drawn is {}",
                got.0,
                got.1,
                want.0,
                want.1,
                path.display()
            );
        }
    }

    /// A SimpleConvNet small enough to train in a blink.
    pub const TINY_SIMPLE: &str = r#"{"input_dim":[1,28,28],"conv_param":{"filter_num":1,"filter_size":5,"pad":0,"stride":1},"hidden_size":4,"output_size":10,"weight_init_std":null}"#;

    #[test]
    fn optical_digits_are_converted_from_the_csv_then_trained_on_and_evaluated() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        // 30 digits, 3 of each class: a bar whose place and width follow the index
        let mut csv = String::new();
        for i in 0..30usize {
            let counts: Vec<String> = (0..64)
                .map(|j| {
                    if j % 8 == i % 5 + 1 || j % 8 == i % 3 + 2 {
                        ((i + j) % 16 + 1).to_string()
                    } else {
                        "0".into()
                    }
                })
                .collect();
            csv.push_str(&format!("{},{}\n", counts.join(","), i % 10));
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(csv.as_bytes()).unwrap();
        std::fs::write(p("digits.csv.gz"), gz.finish().unwrap()).unwrap();
        let convert = ["convert-optdigits", "--csv", &p("digits.csv.gz"), "--out", &p("opt")];
        run_cli(&convert).unwrap();
        let set = dl_data::load_optdigits(p("opt")).unwrap();
        assert_eq!(set.len(), 30);
        assert_eq!(set.labels[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        let sums = std::fs::read_to_string(p("opt/SHA256SUMS.uncompressed")).unwrap();
        assert_eq!(sums.lines().count(), 2);
        // a second conversion does not replace the first without --overwrite
        let err = run_cli(&convert).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        run_cli(&[&convert[..], &["--overwrite"]].concat()).unwrap();
        std::fs::write(p("bad.csv"), "1,2,3\n").unwrap();
        let err = run_cli(&["convert-optdigits", "--csv", &p("bad.csv"), "--out", &p("bad")]).unwrap_err();
        assert!(err.to_string().contains("CSV line 1"), "{err}");
        assert!(!dir.path().join("bad").exists(), "nothing written");
        // train on 1 of each digit, 1 of each held out for validation, test on the rest
        let train = [
            "train",
            "--dataset",
            "optdigits",
            "--data",
            &p("opt"),
            "--model",
            "simple",
            "--model-config",
            TINY_SIMPLE,
            "--epochs",
            "2",
            "--eval-samples",
            "0",
        ];
        let cli = parse_from(std::iter::once("xtask").chain(train.iter().copied()).chain([
            "--labels-per-class",
            "1",
            "--validation",
            "10",
            "--out",
            &p("run"),
        ]))
        .unwrap();
        let Command::Train(a) = cli.command else { unreachable!() };
        let test = train::run_scored(a).unwrap().unwrap();
        assert_eq!(test.total, 10, "30 - 10 validation - 10 trained on");
        let history: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p("run/history.json")).unwrap()).unwrap();
        assert_eq!(history["evaluated_on"], "validation");
        assert_eq!(history["test_evaluation"]["total"], 10);
        // without --labels-per-class there is nothing to test on
        let err = run_cli(&[&train[..], &["--out", &p("run2")]].concat()).unwrap_err();
        assert!(err.to_string().contains("--labels-per-class"), "{err}");
        // and eval scores every optical digit
        run_cli(&[
            "eval",
            "--dataset",
            "optdigits",
            "--data",
            &p("opt"),
            "--params",
            &p("run/params.safetensors"),
        ])
        .unwrap();
    }

    #[test]
    fn bench_serve_measures_the_asked_load_and_writes_its_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("serve.json");
        let j = json.to_str().unwrap();
        run_cli(&[
            "bench",
            "--serve",
            "--clients",
            "3",
            "--requests",
            "4",
            "--interval-ms",
            "5",
            "--json",
            j,
        ])
        .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(
            (r["clients"].as_u64(), r["requests"].as_u64(), r["interval_ms"].as_u64()),
            (Some(3), Some(12), Some(5))
        );
        assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
        for bad in [["--clients", "0"], ["--requests", "0"]] {
            let e = run_cli(&[&["bench", "--serve"][..], &bad[..]].concat()).unwrap_err();
            assert_eq!(e.to_string(), "--clients and --requests must be at least 1");
        }
    }

    #[test]
    fn any_model_trains_with_a_validation_split_and_evaluates_from_its_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("resnet");
        let out_s = out.to_str().unwrap();
        let data = small_mnist(dir.path(), 300, 100);
        let data = data.to_str().unwrap();
        let short = [
            "train",
            "--model",
            "resnet",
            "--epochs",
            "1",
            "--data",
            data,
            "--eval-samples",
            "50",
            "--augment",
            "--lr-decay",
            "cosine",
        ];
        run_cli(&[&short[..], &["--validation", "100", "--out", out_s]].concat()).unwrap();
        let params = out.join("params.safetensors");
        let history: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("history.json")).unwrap()).unwrap();
        // the per-epoch and final figures of the run are on the 100 held-out images
        assert_eq!(history["test_evaluation"]["total"], 100);
        assert_eq!(history["evaluated_on"], "validation");
        // and its curves are drawn beside its history
        let curves = png::Decoder::new(std::fs::File::open(out.join(train::CURVES_FILE)).unwrap())
            .read_info()
            .unwrap();
        assert_eq!((curves.info().width, curves.info().height), plot::CHART_SIZE);
        assert_eq!(dl_models::load(&params).unwrap().kind(), "ResNet");
        run_cli(&["eval", "--params", params.to_str().unwrap(), "--data", data]).unwrap();
        let other = dir.path().join("other");
        for bad in ["0", "300", "1000"] {
            let err =
                run_cli(&[&short[..], &["--validation", bad, "--out", other.to_str().unwrap()]].concat()).unwrap_err();
            assert!(err.to_string().contains("--validation"), "{err}");
        }
    }

    /// `train --precision bf16 --bf16-kernel K`: the kernel is recorded with the run,
    /// `vdpbf16ps` (where the CPU has it) trains to the same bits as its plain-Rust
    /// twin, and the rounded operands' kernels to other bits.
    #[test]
    fn bf16_training_runs_on_the_kernel_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        let mut kernels = vec!["rounded", "scalar"];
        if dl_layers::Bf16Kernel::Avx512.supported() {
            kernels.push("avx512-bf16");
        }
        let data = small_mnist(dir.path(), 100, 100);
        let mut params = Vec::new();
        for k in &kernels {
            run_cli(&[
                "train",
                "--precision",
                "bf16",
                "--bf16-kernel",
                k,
                "--model",
                "simple",
                "--epochs",
                "1",
                "--data",
                data.to_str().unwrap(),
                "--eval-samples",
                "50",
                "--out",
                &p(k),
            ])
            .unwrap();
            let run: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p(&format!("{k}/run.json"))).unwrap()).unwrap();
            assert_eq!(run["bf16_kernel"], *k, "{run}");
            params.push(std::fs::read(p(&format!("{k}/params.safetensors"))).unwrap());
        }
        assert_ne!(
            params[0], params[1],
            "rounded operands and the GEMM sum in other orders"
        );
        if let Some(vector) = params.get(2) {
            assert_eq!(vector, &params[1], "vdpbf16ps trains as its plain-Rust twin");
        }
    }

    /// `train --ema`: the run saves the parameters' moving average, its checkpoints the
    /// live parameters beside it; the stronger augmentation is kept with the run.
    #[test]
    fn train_with_ema_saves_the_average_and_checkpoints_the_live_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let data = small_mnist(dir.path(), 200, 50);
        let out = dir.path().join("run");
        let flags = [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "2",
            "--eval-samples",
            "50",
        ];
        let extra = ["--augment", "--rotation", "20", "--shift", "3", "--ema", "0.9"];
        run_cli(&[&flags[..], &extra, &["--out", out.to_str().unwrap()]].concat()).unwrap();
        let run: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(
            (run["ema"].as_f64(), run["rotation"].as_f64(), run["shift"].as_f64()),
            (Some(0.9), Some(20.0), Some(3.0))
        );
        let history: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("history.json")).unwrap()).unwrap();
        assert_eq!(history["config"]["ema_decay"].as_f64(), Some(0.9));
        let steps = &history["config"]["augment"]["steps"];
        assert_eq!(
            (steps[0]["max_degrees"].as_f64(), steps[2]["max"].as_f64()),
            (Some(20.0), Some(3.0))
        );
        let saved = dl_models::load(out.join("params.safetensors")).unwrap();
        let ckpt =
            dl_train::checkpoint::read(&out.join("checkpoints").join(dl_train::checkpoint::file_name(2))).unwrap();
        let live = dl_models::load(&ckpt.path).unwrap();
        for ((name, avg), (_, p)) in saved.params().into_iter().zip(live.params()) {
            let kept = &ckpt.optimizer.tensors[&format!("{}/{name}", dl_optim::AVERAGE_SLOT)];
            assert_eq!(avg, kept, "{name}: the saved parameters are the averages");
            assert_ne!(avg, p, "{name}: and not the live parameters");
        }
    }

    #[test]
    fn a_recipe_is_applied_under_the_flags_and_time_to_stops_at_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        let data = small_mnist(dir.path(), 400, 100);
        let short = [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--recipe",
            "fast",
            "--epochs",
            "2",
            "--train-limit",
            "400",
            "--validation",
            "100",
            "--eval-samples",
            "50",
        ];
        // 300 training images, batch 128: 3 iterations an epoch, checked after the 2nd
        // and the 3rd; 5% of the 100 validation images is reached at once
        run_cli(&[&short[..], &["--time-to", "5", "--out", &p("a")]].concat()).unwrap();
        let run: serde_json::Value = serde_json::from_slice(&std::fs::read(p("a/run.json")).unwrap()).unwrap();
        assert_eq!(run["recipe"], "Fast");
        assert_eq!(run["epochs"], 2, "the flag wins over the recipe");
        assert_eq!(run["batch_size"], 128);
        assert_eq!(run["model_config"], train::FAST_MODEL_CONFIG);
        let history: serde_json::Value = serde_json::from_slice(&std::fs::read(p("a/history.json")).unwrap()).unwrap();
        assert_eq!(
            history["train_loss_list"].as_array().unwrap().len(),
            2,
            "stopped at the first check"
        );
        // without a target the run goes on to its end
        run_cli(&[&short[..], &["--out", &p("b")]].concat()).unwrap();
        let history: serde_json::Value = serde_json::from_slice(&std::fs::read(p("b/history.json")).unwrap()).unwrap();
        assert_eq!(history["train_loss_list"].as_array().unwrap().len(), 6);
        for (extra, says) in [
            (&["--time-to", "5", "--ensemble", "2"][..], "--time-to"),
            (&["--time-to", "101"][..], "percentage"),
            (&["--time-to", "5", "--checks-per-epoch", "4"][..], "--checks-per-epoch"),
            (&["--model-config", r#"{"no_such_field": 1}"#][..], "no_such_field"),
        ] {
            let err = run_cli(&[&short[..], extra, &["--out", &p("c")]].concat()).unwrap_err();
            assert!(err.to_string().contains(says), "{extra:?}: {err}");
            assert!(!dir.path().join("c").exists(), "{extra:?}: refused before writing");
        }
    }

    #[test]
    fn a_network_pretrained_on_some_digits_is_finetuned_on_others_with_a_new_head() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        let data = small_mnist(dir.path(), 1000, 200);
        let common = [
            "--epochs",
            "1",
            "--train-limit",
            "400",
            "--eval-samples",
            "50",
            "--data",
            data.to_str().unwrap(),
        ];
        run_cli(&[&["train", "--classes", "0-4", "--out", &p("pre")][..], &common].concat()).unwrap();
        let pre = dl_models::load(p("pre/params.safetensors")).unwrap();
        let tune = [
            "finetune",
            "--from",
            &p("pre/params.safetensors"),
            "--classes",
            "5,6,7,8,9",
            "--head-classes",
            "5",
            "--labels-per-class",
            "10",
            "--freeze",
            "0",
            "--freeze",
            "2",
            "--lr-factor",
            "=0.5",
        ];
        run_cli(&[&tune[..], &common, &["--out", &p("tuned")]].concat()).unwrap();
        let tuned = dl_models::load(p("tuned/params.safetensors")).unwrap();
        let get = |net: &dl_models::Network, name: &str| {
            net.params()
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .unwrap()
        };
        // the frozen convolutions kept the pretrained values, the others learned, and
        // the head is new and 5 wide
        for name in ["W1", "b1", "W2", "b2"] {
            assert_eq!(get(&tuned, name), get(&pre, name), "{name}");
        }
        assert_ne!(get(&tuned, "W3"), get(&pre, "W3"));
        assert_eq!(get(&tuned, "W8").shape(), [50, 5]);
        let history: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p("tuned/history.json")).unwrap()).unwrap();
        // 10 labels of each of 5 classes: one batch of 50 an epoch; the test set holds
        // the 5 digits only
        assert_eq!(history["train_loss_list"].as_array().unwrap().len(), 1);
        let test = dl_data::Mnist::load(&data).unwrap().test;
        let fives_up = test.labels.iter().filter(|&&l| l >= 5).count();
        assert!(fives_up > 0 && fives_up < test.len());
        assert_eq!(history["test_evaluation"]["total"], fives_up);
        // what cannot work is refused, and nothing is written
        for (args, says) in [
            (&["finetune", "--classes", "5-9"][..], "--from"),
            (&["train", "--classes", "7-5"][..], "--classes"),
            (&["train", "--classes", "3,x"][..], "--classes"),
            (&["train", "--classes", "0-10"][..], "not below"),
            (&["train", "--freeze", "zz"][..], "--freeze zz"),
            (&["train", "--labels-per-class", "0"][..], "--labels-per-class"),
            (&["train", "--bf16-kernel", "scalar"][..], "needs --precision bf16"),
            (
                &[
                    "finetune",
                    "--from",
                    &p("pre/params.safetensors"),
                    "--head-classes",
                    "3",
                ][..],
                "--head-classes 10",
            ),
        ] {
            let err = run_cli(&[args, &common, &["--out", &p("bad")]].concat()).unwrap_err();
            assert!(err.to_string().contains(says), "{args:?}: {err}");
            assert!(!dir.path().join("bad").exists(), "{args:?}");
        }
    }

    #[test]
    fn bench_time_to_accuracy_reports_the_first_check_at_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("tta.json");
        let data = small_mnist(dir.path(), 2560, 200);
        run_cli(&[
            "bench",
            "--time-to-accuracy",
            "--data",
            data.to_str().unwrap(),
            "--targets",
            "30",
            "--checks-per-epoch",
            "7",
            "--epochs",
            "2",
            "--json",
            json.to_str().unwrap(),
        ])
        .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(r["recipe"], "fast");
        let flags = r["train_flags"].as_str().unwrap();
        assert!(
            flags.contains("--epochs 2 ") && flags.contains("--lr-decay one-cycle"),
            "{flags}"
        );
        assert!(r["cpu"].is_string() && r["conv_isa"].is_string());
        let checks = r["checks"].as_array().unwrap();
        let reached = &r["reached"][0];
        // 2,560 images in batches of 128: 20 iterations an epoch, the k-th check after
        // iteration ceil(20 k / 7)
        let at: Vec<u64> = checks.iter().map(|c| c["iteration"].as_u64().unwrap()).collect();
        assert!(at.len() > 1, "{at:?}");
        assert_eq!(
            at,
            (1..=at.len() as u64).map(|k| (20 * k).div_ceil(7)).collect::<Vec<_>>()
        );
        let last = checks.last().unwrap();
        assert!(last["accuracy"].as_f64().unwrap() >= 0.3);
        assert!(checks[..checks.len() - 1]
            .iter()
            .all(|c| c["accuracy"].as_f64().unwrap() < 0.3));
        assert_eq!(reached["iteration"], last["iteration"]);
        assert_eq!(reached["train_seconds"], last["train_seconds"]);
        assert_eq!(r["final_test_accuracy"], last["accuracy"]);
    }

    /// A run whose loss diverges names its last checkpoint, or says there is none.
    #[test]
    fn a_diverged_run_names_its_last_good_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        let data = small_mnist(dir.path(), 200, 50);
        // the rate multiplied by 1e30 after each epoch: the second diverges
        let args = [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--model",
            "simple",
            "--epochs",
            "3",
            "--optimizer",
            "sgd",
            "--lr",
            "0.01",
            "--lr-decay",
            "step",
            "--step-size",
            "1",
            "--gamma",
            "1e30",
            "--decay-per-epoch",
        ];
        let err = run_cli(&[&args[..], &["--out", &p("late")]].concat())
            .unwrap_err()
            .to_string();
        let first = dir.path().join("late/checkpoints/checkpoint-0001.safetensors");
        assert!(
            err.contains("diverged") && err.contains(&format!("the last good checkpoint is {}", first.display())),
            "{err}"
        );
        let mut at_once = args.to_vec();
        assert_eq!(at_once[9], "--lr");
        at_once[10] = "1e30";
        let err = run_cli(&[&at_once[..], &["--out", &p("early")]].concat())
            .unwrap_err()
            .to_string();
        assert!(err.contains("diverged") && err.contains("no checkpoint"), "{err}");
    }

    #[test]
    fn a_stopped_run_resumes_to_the_same_parameters_and_no_run_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        let data = small_mnist(dir.path(), 250, 100);
        let short = [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--model",
            "deep",
            "--epochs",
            "2",
            "--train-limit",
            "200",
            "--eval-samples",
            "50",
            "--augment",
            "--lr-decay",
            "cosine",
            "--validation",
            "50",
        ];
        run_cli(&[&short[..], &["--out", &p("a")]].concat()).unwrap();
        let final_a = std::fs::read(p("a/params.safetensors")).unwrap();
        // a run killed after its first epoch leaves run.json and that epoch's checkpoint
        let b = dir.path().join("b");
        std::fs::create_dir_all(b.join("checkpoints")).unwrap();
        std::fs::copy(p("a/run.json"), b.join("run.json")).unwrap();
        std::fs::copy(
            p("a/checkpoints/checkpoint-0001.safetensors"),
            b.join("checkpoints/checkpoint-0001.safetensors"),
        )
        .unwrap();
        run_cli(&["train", "--resume", &p("b")]).unwrap();
        assert!(std::fs::read(b.join("params.safetensors")).unwrap() == final_a);
        // the run's folder is not taken over by a new run, unless asked
        let err = run_cli(&[&short[..], &["--out", &p("a")]].concat()).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert!(std::fs::read(p("a/params.safetensors")).unwrap() == final_a);
        run_cli(&[&short[..], &["--out", &p("a"), "--overwrite", "--seed", "1"]].concat()).unwrap();
        assert!(std::fs::read(p("a/params.safetensors")).unwrap() != final_a);
        // --resume takes its settings from the run: other training flags are refused
        assert!(Cli::try_parse_from(["xtask", "train", "--resume", "b", "--epochs", "3"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "train", "--resume", "b", "--out", "c"]).is_err());
        // a folder without a run or without a checkpoint is a clear error
        let err = run_cli(&["train", "--resume", &p("nothing")]).unwrap_err();
        assert!(err.to_string().contains("run.json"), "{err}");
        std::fs::remove_file(b.join("checkpoints/checkpoint-0001.safetensors")).unwrap();
        std::fs::remove_dir_all(b.join("checkpoints")).ok();
        std::fs::create_dir_all(b.join("checkpoints")).unwrap();
        let err = run_cli(&["train", "--resume", &p("b")]).unwrap_err();
        assert!(err.to_string().contains("no checkpoint"), "{err}");
        let err = run_cli(&[&short[..], &["--out", &p("z"), "--checkpoint-every", "0"]].concat()).unwrap_err();
        assert!(err.to_string().contains("--checkpoint-every"), "{err}");
    }

    /// `ensemble --tta` records its views in the manifest and scores with them as the
    /// library does; `eval --tta none` turns them off and a bad view is refused.
    #[test]
    fn an_ensemble_folder_records_its_test_time_views() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        let data = small_mnist(dir.path(), 300, 100);
        let d = data.to_str().unwrap();
        let short = [
            "--data",
            d,
            "--model",
            "simple",
            "--epochs",
            "1",
            "--train-limit",
            "300",
        ];
        run_cli(&[&["train"][..], &short, &["--eval-samples", "100", "--out", &p("one")]].concat()).unwrap();
        let member = p("one/params.safetensors");
        let out = p("tta");
        run_cli(&[
            "ensemble",
            "--data",
            d,
            "--out",
            &out,
            "--tta",
            "shifts,rotate:5",
            &member,
            &member,
        ])
        .unwrap();
        let manifest = dl_train::Ensemble::read_manifest(p("tta")).unwrap();
        let mut views = ensemble::parse_views("shifts").unwrap().0;
        views.push(dl_data::View::Rotate { degrees: 5.0 });
        assert_eq!((manifest.version, &manifest.views), (2, &views));
        let nets = vec![dl_models::load(&member).unwrap(), dl_models::load(&member).unwrap()];
        let test = dl_data::Mnist::load(&data).unwrap().test;
        let mut with = dl_train::Ensemble::new(nets).unwrap().with_views(views);
        let want = with.evaluate(&test, None, 100).unwrap();
        assert_eq!(manifest.test_evaluation, Some(want.mean));
        assert_eq!(manifest.members[0].test_evaluation, Some(want.members[0]));
        for extra in [&[][..], &["--tta", "none"][..], &["--tta", "rotate:-5"][..]] {
            run_cli(&[&["eval", "--data", d, "--ensemble", &p("tta")][..], extra].concat()).unwrap();
        }
        run_cli(&["eval", "--data", d, "--params", &member, "--tta", "shifts"]).unwrap();
        let bad = parse_from(["xtask", "eval", "--tta", "flip"]).err().expect("refused");
        assert!(bad.to_string().contains("a view is"), "{bad}");
        let both = parse_from(["xtask", "eval", "--tta", "shifts", "--precision", "f16"]).err();
        assert!(both.is_some(), "--tta with --precision is refused");
    }

    #[test]
    fn an_ensemble_trained_at_once_equals_its_members_trained_alone_and_assembled() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
        let data = small_mnist(dir.path(), 300, 100);
        let short = [
            "--data",
            data.to_str().unwrap(),
            "--model",
            "simple",
            "--epochs",
            "1",
            "--train-limit",
            "300",
            "--eval-samples",
            "100",
        ];
        fn with<'a>(short: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [&["train"][..], short, extra].concat()
        }
        run_cli(&with(
            &short,
            &["--ensemble", "2", "--parallel", "2", "--seed", "5", "--out", &p("ens")],
        ))
        .unwrap();
        for seed in ["5", "6"] {
            run_cli(&with(&short, &["--seed", seed, "--out", &p(&format!("single-{seed}"))])).unwrap();
        }
        let (a, b) = (p("single-5/params.safetensors"), p("single-6/params.safetensors"));
        run_cli(&["ensemble", "--data", data.to_str().unwrap(), "--out", &p("asm"), &a, &b]).unwrap();
        let member: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("ens/member-1-history.json")).unwrap()).unwrap();
        assert_eq!(member["evaluated_on"], "test");
        assert!(dir.path().join("ens").join(train::CURVES_FILE).is_file());
        let trained = dl_train::Ensemble::read_manifest(p("ens")).unwrap();
        let assembled = dl_train::Ensemble::read_manifest(p("asm")).unwrap();
        assert_eq!(trained.members, assembled.members);
        assert_eq!(trained.members[1].seed, Some(6));
        assert_eq!(trained.test_evaluation, assembled.test_evaluation);
        run_cli(&["eval", "--data", data.to_str().unwrap(), "--ensemble", &p("asm")]).unwrap();
        // a wrong folder is an error, not a panic
        let err = run_cli(&["eval", "--ensemble", &p("single-5")]).unwrap_err();
        assert!(err.to_string().contains("ensemble.json"), "{err}");
        // with a validation split: the ensemble and its members scored there too, and the
        // test figure returned
        let cli = parse_from(["cargo xtask"].into_iter().chain(with(
            &short,
            &["--ensemble", "2", "--validation", "50", "--out", &p("val")],
        )))
        .unwrap();
        let Command::Train(a) = cli.command else { unreachable!() };
        let test = train::run_scored(a).unwrap().expect("an ensemble's test figure");
        let manifest = dl_train::Ensemble::read_manifest(p("val")).unwrap();
        assert_eq!(Some(test), manifest.test_evaluation);
        let val: dl_train::ensemble::EnsembleEvaluation =
            serde_json::from_slice(&std::fs::read(dir.path().join("val/validation.json")).unwrap()).unwrap();
        assert_eq!(val.mean.total, 50);
        for i in 0..2 {
            let h: dl_train::History = serde_json::from_slice(
                &std::fs::read(dir.path().join(format!("val/member-{i}-history.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(val.members[i], h.test_evaluation, "member {i}");
        }
        // bad flags are refused before any work
        assert!(run_cli(&with(&short, &["--ensemble", "0", "--out", &p("x")])).is_err());
        assert!(run_cli(&with(&short, &["--parallel", "2", "--out", &p("x")])).is_err());
    }
}
