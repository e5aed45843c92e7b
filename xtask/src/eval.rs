use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::Args;
use dl_data::View;
use dl_infer::{BinaryNetwork, Inference, Precision, QuantizedNetwork};
use dl_train::{evaluate, Ensemble, Evaluation, Vote};

use crate::train::{ModelName, VoteArg};
use crate::CliError;

#[derive(Args)]
pub struct EvalArgs {
    /// A safetensors file with the network's parameters (default: the shipped weights),
    /// or the book's own pickle (`deep_convnet_params.pkl`, read without running it).
    /// Given more than once (or with several files), the networks are scored as an
    /// ensemble, each member and the whole (by --vote, mean by default).
    #[arg(long, num_args = 1.., action = clap::ArgAction::Append)]
    params: Vec<PathBuf>,
    /// The data set whose test images are scored: mnist (or any set in its format, with
    /// --data), or optdigits (all 1,797 of UCI's optical digits: how well a network
    /// trained on MNIST carries over, before any fine-tuning).
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: crate::Dataset,
    /// Folder with the data set's files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Images per evaluation batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Evaluate an ensemble folder (with ensemble.json) instead; without DIR, the shipped
    /// ensemble.
    #[arg(long, value_name = "DIR", num_args = 0..=1, conflicts_with_all = ["params"])]
    ensemble: Option<Option<PathBuf>>,
    /// For an ensemble: combine by this rule instead of the manifest's (or the mean).
    #[arg(long, value_enum)]
    vote: Option<VoteArg>,
    /// Score the N MNIST training images `train --validation N` held out (drawn by
    /// --validation-seed, as there) instead of the test set: the set on which to choose
    /// among trained networks and ensembles, leaving the test set for the end.
    #[arg(long, value_name = "N")]
    validation: Option<usize>,
    /// The seed of the --validation split (train's default: 0).
    #[arg(long, default_value_t = 0, requires = "validation")]
    validation_seed: u64,
    /// Also run the network (or the ensemble's members) with weights and activations
    /// stored in this precision (f16, bf16: products summed in f32; int8: quantized
    /// after training, products summed in i32), and print its accuracy under f32's,
    /// both by the inference engine (dl-infer).
    #[arg(long, value_parser = parse_eval_precision)]
    precision: Option<EvalPrecision>,
    /// For int8: the training images (the first N) whose activations set the
    /// quantization ranges.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    calibrate: u64,
    /// Test-time augmentation: each network also scores these views of every image and
    /// averages (comma-separated `shift:DY:DX`, `rotate:DEGREES`, `scale:FACTOR`;
    /// `shifts`: the four one-pixel shifts; `none`). For an ensemble folder it replaces
    /// the views its manifest records.
    #[arg(long, value_name = "VIEWS", value_parser = crate::ensemble::parse_views, conflicts_with = "precision")]
    tta: Option<crate::ensemble::Views>,
}

pub fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse::<Precision>().map_err(|e| e.to_string())
}

/// A precision `eval` and `bench` run: a float storage type, or 8-bit integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalPrecision {
    /// f32, f16 or bf16.
    Float(Precision),
    /// Post-training int8 quantization.
    Int8,
    /// A binarized network (`--model binary`) with its signs packed 64 to a word.
    Binary,
}

impl EvalPrecision {
    pub fn name(self) -> &'static str {
        match self {
            EvalPrecision::Float(p) => p.name(),
            EvalPrecision::Int8 => "int8",
            EvalPrecision::Binary => "binary",
        }
    }
}

pub fn parse_eval_precision(s: &str) -> Result<EvalPrecision, String> {
    match s {
        "int8" => Ok(EvalPrecision::Int8),
        "binary" => Ok(EvalPrecision::Binary),
        _ => parse_precision(s)
            .map(EvalPrecision::Float)
            .map_err(|e| format!("{e} (or int8, binary)")),
    }
}

/// The first `n` training images of the MNIST set in `data` (default: the shipped
/// copy), the calibration images of int8 quantization.
pub fn calibration_images(n: usize, data: Option<&std::path::Path>) -> Result<dl_layers::Tensor, CliError> {
    let mnist = crate::Dataset::Mnist.load(data)?;
    let n = n.min(mnist.train.len());
    Ok(mnist.train.batch(&(0..n).collect::<Vec<_>>()).0)
}

/// A network run by the inference engine at one precision.
pub enum Engine {
    Float(Inference),
    Int8(QuantizedNetwork),
    Binary(BinaryNetwork),
}

/// `(C, H, W)` of the images `net` takes, from its configuration.
fn input_dim(net: &dl_models::Network) -> Result<(usize, usize, usize), CliError> {
    let config = net.metadata().get("config").map(String::as_str).unwrap_or("{}");
    let value: serde_json::Value = serde_json::from_str(config).map_err(|e| CliError::Other(e.to_string()))?;
    serde_json::from_value(value["input_dim"].clone())
        .map_err(|_| CliError::Other(format!("{}: no input_dim in its configuration", net.kind())))
}

/// The root of `net`, which the inference engines run alone: an error for a network
/// that deskews its images first (`train --deskew`), which they would skip.
fn root_alone(net: &dl_models::Network) -> Result<&dl_layers::Sequential, CliError> {
    if net.deskews() {
        return Err(CliError::Other(format!(
            "{} deskews its images (train --deskew), a step the inference engines (eval --precision, quantize) \
             do not take: evaluate it without --precision",
            net.kind()
        )));
    }
    Ok(net.root())
}

impl Engine {
    /// `net` at `precision`; int8 needs `calibration` images.
    pub fn new(
        net: &dl_models::Network,
        precision: EvalPrecision,
        calibration: Option<&dl_layers::Tensor>,
    ) -> Result<Engine, CliError> {
        root_alone(net)?;
        Ok(match precision {
            EvalPrecision::Float(p) => Engine::Float(Inference::new(net.root(), p).map_err(infer_error)?),
            EvalPrecision::Int8 => {
                let x = calibration.ok_or_else(|| CliError::Other("int8 needs calibration images".into()))?;
                Engine::Int8(QuantizedNetwork::quantize(net.root(), x).map_err(infer_error)?)
            }
            EvalPrecision::Binary => {
                Engine::Binary(BinaryNetwork::new(net.root(), input_dim(net)?).map_err(infer_error)?)
            }
        })
    }

    pub fn predict(&self, x: &dl_layers::Tensor) -> Result<dl_layers::Tensor, CliError> {
        match self {
            Engine::Float(e) => e.predict(x),
            Engine::Int8(q) => q.predict(x),
            Engine::Binary(b) => b.predict(x),
        }
        .map_err(infer_error)
    }

    pub fn weight_bytes(&self) -> usize {
        match self {
            Engine::Float(e) => e.weight_bytes(),
            Engine::Int8(q) => q.weight_bytes(),
            Engine::Binary(b) => b.weight_bytes(),
        }
    }
}

/// Every image of `set`, `batch` at a time, through `f`.
fn for_batches(
    set: &dl_data::ImageSet,
    batch: usize,
    mut f: impl FnMut(&dl_layers::Tensor) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let bs = batch.max(1);
    let (mut x, mut t) = (Vec::new(), Vec::new());
    for start in (0..set.len()).step_by(bs) {
        let idx: Vec<usize> = (start..(start + bs).min(set.len())).collect();
        set.fill_batch(&idx, &mut x, &mut t);
        let xb =
            dl_layers::Tensor::from_shape_vec(set.batch_shape(idx.len()), std::mem::take(&mut x)).expect("batch shape");
        f(&xb)?;
        x = xb.into_raw_vec_and_offset().0;
    }
    Ok(())
}

fn infer_error(e: dl_infer::InferError) -> CliError {
    CliError::Other(e.to_string())
}

/// The classes `engines` give every image of `set`: each member's, and the ensemble's
/// by `vote` (for one engine, its own).
fn classify_set(
    engines: &[Engine],
    set: &dl_data::ImageSet,
    batch: usize,
    vote: Vote,
) -> Result<(Vec<Vec<usize>>, Vec<usize>), CliError> {
    let mut members = vec![Vec::with_capacity(set.len()); engines.len()];
    let mut combined = Vec::with_capacity(set.len());
    for_batches(set, batch, |x| {
        let mut probs = Vec::with_capacity(engines.len());
        for (engine, classes) in engines.iter().zip(&mut members) {
            let scores = engine.predict(x)?;
            let scores = scores
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|_| CliError::Other("the network's output is not (N, classes)".into()))?;
            classes.extend(dl_tensor::argmax_rows(&scores.view()));
            probs.push(dl_tensor::softmax(&scores.view()));
        }
        if probs.iter().any(|p| p.dim() != probs[0].dim()) {
            return Err(CliError::Other("the members give different numbers of classes".into()));
        }
        combined.extend(dl_train::ensemble::combine(&probs, vote));
        Ok(())
    })?;
    Ok((members, combined))
}

fn evaluation(classes: &[usize], set: &dl_data::ImageSet) -> Evaluation {
    let correct = classes
        .iter()
        .zip(&set.labels)
        .filter(|(p, t)| **p == usize::from(**t))
        .count();
    Evaluation {
        correct,
        total: classes.len(),
    }
}

/// One precision's figures from [`precision_runs`].
#[derive(Debug, Clone, PartialEq)]
struct PrecisionRun {
    precision: &'static str,
    /// Each member's evaluation (one for a single network).
    members: Vec<Evaluation>,
    /// The network's, or the ensemble's by its vote.
    combined: Evaluation,
    /// Bytes of every member's stored weights.
    weight_bytes: usize,
    /// Images whose combined class differs from f32's (`None` for f32 itself).
    differ_from_f32: Option<usize>,
    seconds: f64,
}

/// Runs the network (or ensemble) `members` at f32 and, unless it is f32, at
/// `precision`, by the inference engine (int8 calibrated on `calibration`).
fn precision_runs(
    members: &[&dl_models::Network],
    precision: EvalPrecision,
    set: &dl_data::ImageSet,
    batch: usize,
    vote: Vote,
    calibration: Option<&dl_layers::Tensor>,
) -> Result<Vec<PrecisionRun>, CliError> {
    let mut reference: Option<Vec<usize>> = None;
    let mut runs = Vec::new();
    let f32 = EvalPrecision::Float(Precision::F32);
    let precisions: &[EvalPrecision] = if precision == f32 { &[f32] } else { &[f32, precision] };
    for &p in precisions {
        let engines = members
            .iter()
            .map(|m| Engine::new(m, p, calibration))
            .collect::<Result<Vec<_>, _>>()?;
        let start = std::time::Instant::now();
        let (per_member, combined) = classify_set(&engines, set, batch, vote)?;
        let seconds = start.elapsed().as_secs_f64();
        let differ_from_f32 = reference
            .as_ref()
            .map(|r| combined.iter().zip(r).filter(|(a, b)| a != b).count());
        runs.push(PrecisionRun {
            precision: p.name(),
            members: per_member.iter().map(|c| evaluation(c, set)).collect(),
            combined: evaluation(&combined, set),
            weight_bytes: engines.iter().map(Engine::weight_bytes).sum(),
            differ_from_f32,
            seconds,
        });
        reference.get_or_insert(combined);
    }
    Ok(runs)
}

/// The lines `eval --precision` prints for `runs`: each member's (for an ensemble),
/// then the whole's, per precision.
fn precision_lines(runs: &[PrecisionRun]) -> Vec<String> {
    let mut lines = Vec::new();
    for r in runs {
        let name = r.precision;
        if r.members.len() > 1 {
            for (i, e) in r.members.iter().enumerate() {
                lines.push(format!("{name:<4} member {i}: {e}"));
            }
        }
        let mut line = format!(
            "{name:<4} weights {:>9} bytes: {} in {:.2} s",
            r.weight_bytes, r.combined, r.seconds
        );
        if let Some(d) = r.differ_from_f32 {
            line += &format!(", {d} of {} classes differ from f32", r.combined.total);
        }
        lines.push(line);
    }
    lines
}

/// Prints `precision_runs` and the last one's `test accuracy:` line.
fn run_precisions(
    members: &[&dl_models::Network],
    precision: EvalPrecision,
    scored: &Scored,
    batch: usize,
    vote: Vote,
    calibrate: usize,
) -> Result<(), CliError> {
    let calibration = match precision {
        EvalPrecision::Int8 => {
            let x = calibration_images(calibrate, None)?;
            println!("int8 calibrated on the first {} training images", x.shape()[0]);
            Some(x)
        }
        EvalPrecision::Float(_) | EvalPrecision::Binary => None,
    };
    let runs = precision_runs(members, precision, &scored.set, batch, vote, calibration.as_ref())?;
    for line in precision_lines(&runs) {
        println!("{line}");
    }
    if let Some(last) = runs.last() {
        println!("{} accuracy: {}", scored.name, last.combined);
    }
    Ok(())
}

/// The images `eval` scores and their name in its lines: the test set, the validation
/// split of the training images, or all of a set that has no test set.
struct Scored {
    set: dl_data::ImageSet,
    name: &'static str,
}

fn eval_set(a: &EvalArgs) -> Result<Scored, CliError> {
    let set = a.dataset.load(a.data.as_deref())?;
    Ok(match (a.dataset, a.validation) {
        (crate::Dataset::Mnist, None) => Scored {
            set: set.test,
            name: "test",
        },
        (crate::Dataset::Mnist, Some(n)) => Scored {
            set: validation_split(&set.train, n, a.validation_seed)?,
            name: "validation",
        },
        (crate::Dataset::Optdigits, None) => Scored {
            set: set.train,
            name: "test",
        },
        (crate::Dataset::Optdigits, Some(_)) => {
            return Err(CliError::Other("--validation: MNIST's split only".into()));
        }
    })
}

/// The `n` training images `train --validation n --validation-seed seed` holds out.
pub fn validation_split(train: &dl_data::ImageSet, n: usize, seed: u64) -> Result<dl_data::ImageSet, CliError> {
    if n == 0 || n >= train.len() {
        return Err(CliError::Other(format!(
            "--validation {n}: must be between 1 and {}",
            train.len().saturating_sub(1)
        )));
    }
    Ok(train.split(n, seed).1)
}

fn run_ensemble(
    dir: PathBuf,
    vote: Option<VoteArg>,
    tta: Option<crate::ensemble::Views>,
    scored: &Scored,
    batch: usize,
) -> Result<(), CliError> {
    let (mut ensemble, manifest) = Ensemble::load(&dir)?;
    if let Some(views) = tta {
        ensemble = ensemble.with_views(views.0);
    }
    let vote = vote.map_or(manifest.vote, Vote::from);
    let names = manifest
        .members
        .iter()
        .map(|entry| {
            let seed = entry.seed.map_or(String::new(), |s| format!(", seed {s}"));
            format!("{}{seed}", entry.model)
        })
        .collect();
    score_ensemble(ensemble, names, &dir.display().to_string(), vote, scored, batch)
}

/// Prints each member's accuracy on `scored`, the mean's and the majority's, and the
/// last line by `vote`.
fn score_ensemble(
    mut ensemble: Ensemble,
    names: Vec<String>,
    what: &str,
    vote: Vote,
    scored: &Scored,
    batch: usize,
) -> Result<(), CliError> {
    let start = std::time::Instant::now();
    let ev = ensemble.evaluate(&scored.set, None, batch)?;
    if !ensemble.views().is_empty() {
        let views: Vec<String> = ensemble.views().iter().map(View::to_string).collect();
        println!("test-time views: {}", views.join(", "));
    }
    for (i, (e, name)) in ev.members.iter().zip(&names).enumerate() {
        println!("member {i} ({name}): {e}");
    }
    println!("mean of softmax: {}", ev.mean);
    println!("majority vote:   {}", ev.majority);
    println!(
        "{what}: {} members on {} {} images in {:.2} s",
        ensemble.len(),
        ev.mean.total,
        scored.name,
        start.elapsed().as_secs_f64()
    );
    println!("{} accuracy: {}", scored.name, ev.by(vote));
    Ok(())
}

pub fn run(a: EvalArgs) -> Result<(), CliError> {
    let scored = eval_set(&a)?;
    let test = &scored.set;
    if a.vote.is_some() && a.ensemble.is_none() && a.params.len() < 2 {
        return Err(CliError::Other(
            "--vote: for an ensemble (--ensemble, or --params given more than once)".into(),
        ));
    }
    if let Some(dir) = a.ensemble {
        let dir = dir.unwrap_or_else(crate::shipped_ensemble);
        if let Some(precision) = a.precision {
            let (ensemble, manifest) = Ensemble::load(&dir)?;
            let vote = a.vote.map_or(manifest.vote, Vote::from);
            println!(
                "{}: {} members on {} {} images, combined by {vote:?}",
                dir.display(),
                ensemble.len(),
                test.len(),
                scored.name
            );
            let members: Vec<&dl_models::Network> = ensemble.members().iter().collect();
            return run_precisions(&members, precision, &scored, a.batch_size, vote, a.calibrate as usize);
        }
        return run_ensemble(dir, a.vote, a.tta, &scored, a.batch_size);
    }
    if a.params.len() > 1 {
        if a.precision.is_some() {
            return Err(CliError::Other(
                "--precision with several --params: make them an ensemble folder (cargo xtask ensemble)".into(),
            ));
        }
        let members = a.params.iter().map(dl_models::load).collect::<Result<Vec<_>, _>>()?;
        let names = members
            .iter()
            .zip(&a.params)
            .map(|(m, p)| format!("{}, {}", m.kind(), p.display()))
            .collect();
        let views = a.tta.map(|v| v.0).unwrap_or_default();
        let ensemble = Ensemble::new(members)?.with_views(views);
        let vote = a.vote.map_or(Vote::Mean, Vote::from);
        return score_ensemble(ensemble, names, "--params", vote, &scored, a.batch_size);
    }
    let params = a.params.into_iter().next().unwrap_or_else(crate::shipped_params);
    if let Some(engine) = read_packed(&params)? {
        return run_packed(&params, engine, &scored, a.batch_size);
    }
    // the model is rebuilt from the file's metadata (the book's pickle: DeepConvNet)
    let mut net = dl_models::load(&params)?;
    if let Some(views) = a.tta {
        let name = vec![format!("{}, {}", net.kind(), params.display())];
        let one = Ensemble::new(vec![net])?.with_views(views.0);
        return score_ensemble(one, name, "--params", Vote::Mean, &scored, a.batch_size);
    }
    if let Some(precision) = a.precision {
        println!(
            "{}: {} on {} {} images",
            params.display(),
            net.kind(),
            test.len(),
            scored.name
        );
        return run_precisions(
            &[&net],
            precision,
            &scored,
            a.batch_size,
            Vote::Mean,
            a.calibrate as usize,
        );
    }
    let start = std::time::Instant::now();
    let e = evaluate(&mut net, test, None, a.batch_size)?;
    println!(
        "{}: {} on {} {} images in {:.2} s",
        params.display(),
        net.kind(),
        e.total,
        scored.name,
        start.elapsed().as_secs_f64()
    );
    println!("{} accuracy: {e}", scored.name);
    Ok(())
}

/// The network of `path` if it is a quantized or a packed binarized file (`cargo xtask
/// quantize`'s).
fn read_packed(path: &std::path::Path) -> Result<Option<Engine>, CliError> {
    let bytes = std::fs::read(path).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    let named = |e: dl_infer::InferError| CliError::Other(format!("{}: {e}", path.display()));
    Ok(if QuantizedNetwork::is_quantized_file(&bytes) {
        Some(Engine::Int8(QuantizedNetwork::from_bytes(&bytes).map_err(named)?))
    } else if BinaryNetwork::is_binary_file(&bytes) {
        Some(Engine::Binary(BinaryNetwork::from_bytes(&bytes).map_err(named)?))
    } else {
        None
    })
}

/// `eval --params` of a quantized or packed file: its accuracy, by its own kernels.
fn run_packed(path: &std::path::Path, engine: Engine, scored: &Scored, batch: usize) -> Result<(), CliError> {
    let test = &scored.set;
    let what = match &engine {
        Engine::Int8(q) => format!("int8 network ({} kernel)", q.kernel()),
        Engine::Binary(b) => format!("binarized network ({} kernel)", b.kernel()),
        Engine::Float(_) => unreachable!("read_packed gives no float engine"),
    };
    let weight_bytes = engine.weight_bytes();
    let start = std::time::Instant::now();
    let (_, classes) = classify_set(&[engine], test, batch, Vote::Mean)?;
    let e = evaluation(&classes, test);
    println!(
        "{}: {what}, weights {weight_bytes} bytes, on {} {} images in {:.2} s",
        path.display(),
        e.total,
        scored.name,
        start.elapsed().as_secs_f64()
    );
    println!("{} accuracy: {e}", scored.name);
    Ok(())
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// The parameter file to quantize (default: the shipped DeepConvNet).
    #[arg(long)]
    params: Option<PathBuf>,
    /// The safetensors file to write (atomically): int8 weights, their scales, i32
    /// biases and the activations' scales.
    #[arg(long)]
    out: PathBuf,
    /// The training images (the first N) whose activations set the ranges; never the
    /// test set.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    calibrate: u64,
    /// Folder with the MNIST files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Bits per weight: 8 (int8, any model) or 1 (a binarized network, `train --model
    /// binary`: its signs packed 8 to a byte; no calibration).
    #[arg(long, default_value_t = 8, value_parser = clap::builder::PossibleValuesParser::new(["8", "1"]).map(|s| s.parse::<u8>().expect("8 or 1")))]
    bits: u8,
}

/// `cargo xtask quantize`: post-training int8 quantization of a parameter file, or the
/// packed 1-bit file of a binarized network.
pub fn quantize(a: QuantizeArgs) -> Result<(), CliError> {
    let params = a.params.unwrap_or_else(crate::shipped_params);
    crate::refuse_to_replace(&a.out, a.overwrite)?;
    let net = dl_models::load(&params)?;
    root_alone(&net)?;
    if a.bits == 1 {
        let packed = BinaryNetwork::new(net.root(), input_dim(&net)?).map_err(infer_error)?;
        let bytes = packed.to_bytes();
        dl_tensor::fs::atomic_write(&a.out, &bytes)
            .map_err(|e| CliError::Other(format!("{}: {e}", a.out.display())))?;
        let f32_bytes = net.params_to_bytes().len();
        println!(
            "wrote {} (1-bit {}: {} bytes, {:.1}x smaller than f32's {} bytes)",
            a.out.display(),
            net.kind(),
            bytes.len(),
            f32_bytes as f64 / bytes.len() as f64,
            f32_bytes
        );
        return Ok(());
    }
    let x = calibration_images(a.calibrate as usize, a.data.as_deref())?;
    let q = QuantizedNetwork::quantize(net.root(), &x).map_err(infer_error)?;
    let bytes = q.to_bytes();
    dl_tensor::fs::atomic_write(&a.out, &bytes).map_err(|e| CliError::Other(format!("{}: {e}", a.out.display())))?;
    let f32_bytes = net.params_to_bytes().len();
    println!(
        "wrote {} (int8 {} calibrated on {} training images: {} bytes, {:.2}x smaller than f32's {} bytes)",
        a.out.display(),
        net.kind(),
        x.shape()[0],
        bytes.len(),
        f32_bytes as f64 / bytes.len() as f64,
        f32_bytes
    );
    Ok(())
}

/// Test images the shipped binarized network classifies correctly (docs/RESULTS.md §8).
#[cfg(test)]
const SHIPPED_BINARY_CORRECT: usize = 9916;

/// Test images the shipped VGG classifies correctly (docs/RESULTS.md §5).
#[cfg(test)]
const SHIPPED_VGG_CORRECT: usize = 9974;

/// Test images the shipped mixed ensemble classifies correctly by the mean of its
/// members' outputs (docs/RESULTS.md §5).
#[cfg(test)]
const SHIPPED_MIXED_CORRECT: usize = 9975;

/// Test images the shipped validated ensemble (four VGGs, ResNet-20, GoogLeNet, every
/// one trained with the validation split held out) classifies correctly by the mean of
/// its members' outputs (docs/RESULTS.md §5).
#[cfg(test)]
const SHIPPED_VALIDATED_CORRECT: usize = 9976;

#[cfg(test)]
mod tests {
    use super::*;
    use dl_data::Mnist;

    fn eval_args(args: &[&str]) -> EvalArgs {
        match crate::parse_from([&["xtask", "eval"][..], args].concat())
            .unwrap()
            .command
        {
            crate::Command::Eval(a) => a,
            _ => unreachable!("an eval command"),
        }
    }

    /// `convert-book` of a file that is not the book's pickle says so and writes nothing.
    #[test]
    fn converting_what_is_not_a_pickle_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pkl = dir.path().join("params.pkl");
        std::fs::write(&pkl, b"not a pickle").unwrap();
        let out = dir.path().join("out.safetensors");
        let crate::Command::ConvertBook(a) = crate::parse_from([
            "xtask",
            "convert-book",
            pkl.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap()
        .command
        else {
            unreachable!("a convert-book command")
        };
        let err = convert(a).unwrap_err();
        assert!(err.to_string().contains("params.pkl"), "{err}");
        assert!(!out.exists());
    }

    /// `eval --validation N --validation-seed S` scores the images `train --validation N
    /// --validation-seed S` held out, and refuses what has no such split.
    #[test]
    fn validation_scores_the_split_train_holds_out() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let held = mnist.train.split(300, 4).1;
        let scored = eval_set(&eval_args(&["--validation", "300", "--validation-seed", "4"])).unwrap();
        assert_eq!(scored.name, "validation");
        assert_eq!(scored.set.labels, held.labels);
        assert_eq!(scored.set.images, held.images);
        let other = eval_set(&eval_args(&["--validation", "300"])).unwrap();
        assert_ne!(other.set.labels, held.labels, "the seed draws the split");
        let test = eval_set(&eval_args(&[])).unwrap();
        assert_eq!((test.name, test.set.len()), ("test", 10_000));
        for (args, says) in [
            (&["--validation", "0"][..], "between 1 and 59999"),
            (&["--validation", "60000"][..], "between 1 and 59999"),
            (&["--validation", "5", "--dataset", "optdigits"][..], "MNIST"),
        ] {
            let err = eval_set(&eval_args(args)).err().expect("refused");
            assert!(err.to_string().contains(says), "{args:?}: {err}");
        }
    }

    /// Several --params are scored as an ensemble (members and whole); --vote and
    /// --precision ask for what a single file or an ad hoc ensemble cannot give.
    #[test]
    fn several_params_are_an_ensemble() {
        let shipped = crate::shipped_params();
        let p = shipped.to_str().unwrap();
        run(eval_args(&[
            "--validation",
            "200",
            "--params",
            p,
            "--params",
            p,
            "--vote",
            "majority",
        ]))
        .unwrap();
        for (args, says) in [
            (&["--validation", "200", "--params", p, "--vote", "mean"][..], "--vote"),
            (
                &["--validation", "200", "--params", p, p, "--precision", "f16"][..],
                "--precision",
            ),
        ] {
            let err = run(eval_args(args)).unwrap_err();
            assert!(err.to_string().contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_shipped_ensemble_reaches_the_documented_accuracy() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let (mut e, manifest) = Ensemble::load(crate::shipped_ensemble()).unwrap();
        assert_eq!(e.len(), 5);
        let ev = e.evaluate(&mnist.test, None, 500).unwrap();
        assert_eq!(Some(ev.by(manifest.vote)), manifest.test_evaluation);
        assert!(ev.mean.accuracy() >= 0.997, "shipped ensemble: {}", ev.mean);
        for (got, entry) in ev.members.iter().zip(&manifest.members) {
            assert_eq!(Some(*got), entry.test_evaluation);
        }
    }

    /// The shipped validated ensemble (`cargo xtask eval --ensemble
    /// crates/dl-models/weights/validated`, docs/RESULTS.md §5): four VGGs, ResNet-20 and
    /// GoogLeNet, each member and the whole at the manifest's figures.
    #[test]
    fn the_shipped_validated_ensemble_reaches_the_documented_accuracy() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let (mut e, manifest) = Ensemble::load(crate::root().join("crates/dl-models/weights/validated")).unwrap();
        let kinds: Vec<&str> = e.members().iter().map(|m| m.kind()).collect();
        assert_eq!(kinds, ["Vgg", "Vgg", "Vgg", "Vgg", "ResNet", "GoogLeNet"]);
        let ev = e.evaluate(&mnist.test, None, 500).unwrap();
        assert_eq!(Some(ev.by(manifest.vote)), manifest.test_evaluation);
        assert_eq!((ev.mean.correct, ev.mean.total), (SHIPPED_VALIDATED_CORRECT, 10_000));
        for (got, entry) in ev.members.iter().zip(&manifest.members) {
            assert_eq!(Some(*got), entry.test_evaluation);
        }
    }

    /// The shipped mixed ensemble (`cargo xtask eval --ensemble
    /// crates/dl-models/weights/mixed`, docs/RESULTS.md §5): one or more members of every
    /// kind, each member and the whole at the manifest's figures.
    #[test]
    fn the_shipped_mixed_ensemble_reaches_the_documented_accuracy() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let (mut e, manifest) = Ensemble::load(crate::root().join("crates/dl-models/weights/mixed")).unwrap();
        let kinds: std::collections::BTreeSet<&str> = e.members().iter().map(|m| m.kind()).collect();
        assert_eq!(Vec::from_iter(kinds), ["DeepConvNet", "GoogLeNet", "ResNet", "Vgg"]);
        let ev = e.evaluate(&mnist.test, None, 500).unwrap();
        assert_eq!(Some(ev.by(manifest.vote)), manifest.test_evaluation);
        assert_eq!((ev.mean.correct, ev.mean.total), (SHIPPED_MIXED_CORRECT, 10_000));
        for (got, entry) in ev.members.iter().zip(&manifest.members) {
            assert_eq!(Some(*got), entry.test_evaluation);
        }
    }

    /// The shipped VGG, the best single model (docs/RESULTS.md §5), loads through the
    /// registry alone and reaches its documented accuracy on the full test set.
    #[test]
    fn the_shipped_vgg_reaches_the_documented_accuracy() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let mut net = dl_models::load(crate::root().join("crates/dl-models/weights/vgg.safetensors")).unwrap();
        assert_eq!(net.kind(), "Vgg");
        let ev = evaluate(&mut net, &mnist.test, None, 500).unwrap();
        assert_eq!((ev.correct, ev.total), (SHIPPED_VGG_CORRECT, 10_000));
    }

    /// The shipped binarized network run packed gives its float scores bit for bit on
    /// every test image, at the accuracy docs/RESULTS.md states.
    #[test]
    fn the_shipped_binary_network_packed_gives_its_float_scores_on_every_test_image() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let mut net = dl_models::load(crate::shipped_binary_params()).unwrap();
        assert_eq!(net.kind(), "BinaryConvNet");
        let packed = BinaryNetwork::new(net.root(), input_dim(&net).unwrap()).unwrap();
        let mut correct = 0;
        for start in (0..mnist.test.len()).step_by(500) {
            let idx: Vec<usize> = (start..start + 500).collect();
            let (x, t) = mnist.test.batch(&idx);
            let float = net.predict(x.clone(), false).unwrap();
            let bits = packed.predict(&x).unwrap();
            let differ = float
                .iter()
                .zip(&bits)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differ, 0, "images {start}..{}", start + 500);
            let scores = bits.into_dimensionality::<ndarray::Ix2>().unwrap();
            let classes = dl_tensor::argmax_rows(&scores.view());
            correct += classes.iter().zip(&t).filter(|(p, t)| p == t).count();
        }
        assert_eq!(correct, SHIPPED_BINARY_CORRECT);
    }

    /// Two members of the shipped ensemble on 300 test images: at f32 the engine gives
    /// the training code's figures, at f16 the same members' own, and the lines say so.
    #[test]
    fn precision_runs_count_members_the_whole_and_the_differences() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let set = mnist.test.take(300);
        let (ensemble, _) = Ensemble::load(crate::shipped_ensemble()).unwrap();
        let mut two = Ensemble::new(ensemble.into_members().into_iter().take(2).collect()).unwrap();
        let want = two.evaluate(&set, None, 100).unwrap();
        let members: Vec<&dl_models::Network> = two.members().iter().collect();
        let half16 = EvalPrecision::Float(Precision::F16);
        let runs = precision_runs(&members, half16, &set, 64, Vote::Majority, None).unwrap();
        assert_eq!(runs.len(), 2);
        let (full, half) = (&runs[0], &runs[1]);
        assert_eq!((full.precision, half.precision), ("f32", "f16"));
        assert_eq!(full.members, want.members);
        assert_eq!(full.combined, want.majority);
        assert_eq!(full.differ_from_f32, None);
        assert_eq!(full.weight_bytes, 2 * half.weight_bytes);
        assert_eq!(full.weight_bytes, 8 * two.members()[0].param_count());
        for (m, e) in two.members().iter().zip(&half.members) {
            let engine = Inference::new(m.root(), Precision::F16).unwrap();
            let (x, t) = set.batch(&(0..set.len()).collect::<Vec<_>>());
            let correct = engine
                .classify(&x, 100)
                .unwrap()
                .iter()
                .zip(&t)
                .filter(|(p, t)| p == t)
                .count();
            assert_eq!(*e, Evaluation { correct, total: 300 });
        }
        assert_eq!(half.combined.total, 300);
        // the shipped members agree with themselves at 16 bits on these images
        assert_eq!(half.differ_from_f32, Some(0));
        let lines = precision_lines(&runs);
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], format!("f32  member 0: {}", want.members[0]));
        assert!(lines[2].starts_with(&format!(
            "f32  weights {:>9} bytes: {} in ",
            full.weight_bytes, want.majority
        )));
        assert!(lines[5].ends_with(", 0 of 300 classes differ from f32"), "{}", lines[5]);
        // one network at f32: one line, no members, no comparison
        let f32 = EvalPrecision::Float(Precision::F32);
        let one = precision_runs(&members[..1], f32, &set, 300, Vote::Mean, None).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].combined, want.members[0]);
        let lines = precision_lines(&one);
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains("differ"));
        // a different count shows in the line
        let mut other = runs[1].clone();
        other.differ_from_f32 = Some(7);
        let lines = precision_lines(&[other]);
        assert!(lines[2].ends_with(", 7 of 300 classes differ from f32"), "{}", lines[2]);
    }

    /// The int8 goal (docs/RESULTS.md §8): quantized after training (calibrated on the
    /// first 1,000 training images), the shipped DeepConvNet and ensemble lose at most
    /// 0.05 point, 5 of the 10,000 test images, against their f32 figures (documented:
    /// 9,941 against 9,943, and 9,971 against 9,970).
    #[test]
    fn the_shipped_networks_lose_at_most_five_test_images_in_int8() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let calibration = calibration_images(1000, None).unwrap();
        let net = dl_models::load(crate::shipped_params()).unwrap();
        let (ensemble, _) = Ensemble::load(crate::shipped_ensemble()).unwrap();
        let members: Vec<&dl_models::Network> = ensemble.members().iter().collect();
        for (members, f32_correct) in [(vec![&net], 9943), (members, 9970)] {
            let runs = precision_runs(
                &members,
                EvalPrecision::Int8,
                &mnist.test,
                500,
                Vote::Mean,
                Some(&calibration),
            )
            .unwrap();
            assert_eq!(runs[1].precision, "int8");
            assert_eq!(runs[0].combined.correct, f32_correct);
            let int8 = runs[1].combined.correct;
            assert!(
                (f32_correct - 5..=f32_correct + 5).contains(&int8),
                "int8 {int8}, f32 {f32_correct}"
            );
            assert!(runs[1].differ_from_f32.unwrap() <= 5);
        }
    }

    #[test]
    fn the_shipped_weights_reach_the_documented_accuracy() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let mut net = dl_models::load(crate::shipped_params()).unwrap();
        assert_eq!(net.kind(), "DeepConvNet");
        let e = evaluate(&mut net, &mnist.test, None, 500).unwrap();
        assert_eq!(e.total, 10_000);
        assert_eq!(e.correct, 9943, "shipped weights: {e}");
    }
}

#[derive(Args)]
pub struct ConvertParamsArgs {
    /// The parameter file to read (any precision; default: the shipped weights).
    #[arg(long)]
    params: Option<PathBuf>,
    /// The precision to store every tensor in: f32, f16 or bf16.
    #[arg(long, value_parser = parse_precision)]
    precision: Precision,
    /// The safetensors file to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

/// `cargo xtask convert-params`: a parameter file stored at another precision.
pub fn convert_params(a: ConvertParamsArgs) -> Result<(), CliError> {
    let params = a.params.unwrap_or_else(crate::shipped_params);
    crate::refuse_to_replace(&a.out, a.overwrite)?;
    let net = dl_models::load(&params)?;
    net.save_params_as(&a.out, a.precision)?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} of {}, {} bytes; {} had {} bytes)",
        a.out.display(),
        a.precision,
        net.kind(),
        size(&a.out),
        params.display(),
        size(&params)
    );
    Ok(())
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The book's pickle (`deep_convnet_params.pkl`); read without running any of it.
    pkl: PathBuf,
    /// The safetensors file to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// The network the parameters belong to.
    #[arg(long, value_enum, default_value = "deep")]
    model: ModelName,
}

/// `cargo xtask convert-book`: the book's pickled parameters as safetensors.
pub fn convert(a: ConvertArgs) -> Result<(), CliError> {
    let mut net = a.model.build(0);
    net.load_book_params(&a.pkl)?;
    net.save_params(&a.out)?;
    println!(
        "wrote {} ({} parameters of {} from {})",
        a.out.display(),
        net.param_count(),
        net.kind(),
        a.pkl.display()
    );
    Ok(())
}
