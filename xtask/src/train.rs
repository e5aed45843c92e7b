use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use dl_data::{ImageSet, Mnist};
use dl_models::Network;
use dl_train::{
    checkpoint, evaluate, train_ensemble, CheckpointPolicy, Communicator, Distributed, EpochRecord, Evaluation,
    History, IterationInfo, Observer, ReduceOnPlateau, Schedule, TrainError, Trainer, TrainerConfig, Unit, Vote,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::CliError;

#[derive(Clone, Copy, Debug, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum ModelName {
    /// The book's chapter 8 DeepConvNet.
    Deep,
    /// The book's chapter 7 SimpleConvNet.
    Simple,
    /// VGG for 28x28 digits (blocks of 3x3 convolutions with batch norm).
    Vgg,
    /// ResNet-20 (CIFAR-style, 3 stages of 3 basic blocks).
    Resnet,
    /// A small GoogLeNet (inception modules).
    Googlenet,
    /// A binarized network: weights and activations +1 or -1 (BNN).
    Binary,
    /// A stack of unpadded convolutions without pooling (An et al. 2020's M3).
    Convstack,
}

impl ModelName {
    /// The registry's name of the model ([`Network::kind`]).
    pub fn kind(self) -> &'static str {
        match self {
            ModelName::Deep => "DeepConvNet",
            ModelName::Simple => "SimpleConvNet",
            ModelName::Vgg => "Vgg",
            ModelName::Resnet => "ResNet",
            ModelName::Googlenet => "GoogLeNet",
            ModelName::Binary => "BinaryConvNet",
            ModelName::Convstack => "ConvStack",
        }
    }

    /// The model with its default configuration, every random part fixed by `seed`.
    pub fn build(self, seed: u64) -> Network {
        dl_models::build(self.kind(), None, seed).expect("the default configurations build")
    }

    /// The model with its default configuration, the fields of `overrides` (JSON, named
    /// as a saved file's metadata names them) replaced.
    pub fn build_with(self, overrides: Option<&str>, seed: u64) -> Result<Network, CliError> {
        let error = |e: dl_models::ModelError| CliError::Other(format!("--model-config: {e}"));
        let mut config = dl_models::registry::ModelConfig::default_for(self.kind()).map_err(error)?;
        if let Some(json) = overrides {
            config = config.with_overrides(json).map_err(error)?;
        }
        config.build(seed).map_err(error)
    }
}

/// Named settings of a whole run (`--recipe`); flags given beside it win.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Recipe {
    /// The book's chapter 8 run, which the flags' defaults are: DeepConvNet, 20 epochs,
    /// batch 100, Adam 0.001.
    Book,
    /// The fastest road to 99.4% found on a validation split (docs/RESULTS.md): the
    /// book's DeepConvNet with batch norm, without dropout and with a hidden layer of
    /// 128, 3 epochs of batch 128, Nesterov momentum with a one-cycle rate peaking at
    /// 0.2, weight decay 5e-4.
    Fast,
    /// The fastest road to 99.0% found on a validation split: the fast recipe's
    /// network at half its width (8-8-16-16-32-32 channels), 2 epochs of its training
    /// with the rate peaking at 0.3.
    Quick,
}

/// The fast recipe's model configuration: the book's DeepConvNet, batch norm after
/// every convolution and the hidden Affine layer, no dropout, a hidden layer of 128.
pub const FAST_MODEL_CONFIG: &str = r#"{"input_dim":[1,28,28],"conv_params":[{"filter_num":16,"filter_size":3,"pad":1,"stride":1},{"filter_num":16,"filter_size":3,"pad":1,"stride":1},{"filter_num":32,"filter_size":3,"pad":1,"stride":1},{"filter_num":32,"filter_size":3,"pad":2,"stride":1},{"filter_num":64,"filter_size":3,"pad":1,"stride":1},{"filter_num":64,"filter_size":3,"pad":1,"stride":1}],"hidden_size":128,"output_size":10,"dropout_ratio":0.0,"inverted_dropout":true,"use_batchnorm":true}"#;

/// The quick recipe's model configuration: [`FAST_MODEL_CONFIG`] with half the
/// channels in every convolution.
pub const QUICK_MODEL_CONFIG: &str = r#"{"input_dim":[1,28,28],"conv_params":[{"filter_num":8,"filter_size":3,"pad":1,"stride":1},{"filter_num":8,"filter_size":3,"pad":1,"stride":1},{"filter_num":16,"filter_size":3,"pad":1,"stride":1},{"filter_num":16,"filter_size":3,"pad":2,"stride":1},{"filter_num":32,"filter_size":3,"pad":1,"stride":1},{"filter_num":32,"filter_size":3,"pad":1,"stride":1}],"hidden_size":128,"output_size":10,"dropout_ratio":0.0,"inverted_dropout":true,"use_batchnorm":true}"#;

#[derive(Clone, Copy, Debug, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Decay {
    None,
    Step,
    Exponential,
    Cosine,
    OneCycle,
}

/// The training flags; a run folder keeps them as `run.json`, which `--resume` reads.
#[derive(Args, Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainArgs {
    /// Settings of a whole run: `book` (the defaults), `fast` (the fastest road to
    /// 99.4%) or `quick` (to 99.0%), both chosen on a validation split. Flags given
    /// beside it win; with --from, the file's model is trained with the recipe's other
    /// settings.
    #[arg(long, value_enum)]
    #[serde(default)]
    recipe: Option<Recipe>,
    /// Network to train.
    #[arg(long, value_enum, default_value = "deep")]
    model: ModelName,
    /// Fields of the model's configuration as JSON, named as its saved files' metadata
    /// names them: each replaces the default configuration's (`{"hidden_size": 1024}`)
    /// or, with --from, the file's (`{"dropout_ratio": 0.0}` fine-tunes without
    /// dropout).
    #[arg(long, value_name = "JSON")]
    #[serde(default)]
    model_config: Option<String>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Images per mini-batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// sgd, momentum, nesterov, adagrad, rmsprop or adam.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 0.001)]
    lr: f32,
    /// L2 weight decay on the weights (not on biases or batch norm's parameters).
    #[arg(long, default_value_t = 0.0, value_name = "LAMBDA")]
    #[serde(default)]
    weight_decay: f32,
    /// The parameters whose names (as saved: `W8` for the book's networks,
    /// `layer1.0.conv1.W`) lie under PREFIX learn at F times the rate (repeat the flag
    /// for several groups; the longest prefix wins; an empty prefix holds them all):
    /// `--lr-factor =0.1 --lr-factor fc=1` trains a backbone at a tenth of the head's rate.
    #[arg(long, value_name = "PREFIX=F", value_parser = parse_lr_factor)]
    #[serde(default)]
    lr_factor: Vec<(String, f32)>,
    /// Seed of initial weights, dropout masks and batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images of each set evaluated after every epoch (0: all).
    #[arg(long, default_value_t = 1000)]
    eval_samples: usize,
    /// Train on the first N training images only.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Only these digits, in training, validation and test, relabelled by their
    /// position in the list: `0-4`, or `5,6,7,8,9` (digit 5 becomes class 0).
    #[arg(long, value_name = "DIGITS")]
    #[serde(default)]
    classes: Option<String>,
    /// Train on K images of each class (drawn by --seed, after the validation split).
    #[arg(long, value_name = "K")]
    #[serde(default)]
    labels_per_class: Option<usize>,
    /// Start from the network saved in PARAMS (its kind and configuration from the
    /// file, not --model): every tensor of the file with a name and shape the new
    /// network has is loaded, and the rest is reported.
    #[arg(long, value_name = "PARAMS")]
    #[serde(default)]
    from: Option<PathBuf>,
    /// With --from: a new classifier head with C outputs, its weights started fresh (also
    /// when the file's head has C outputs too).
    #[arg(long, value_name = "C", requires = "from")]
    #[serde(default)]
    head_classes: Option<usize>,
    /// Freeze the layer at PATH and everything inside it (`layer1`, `features.3`, `0`
    /// for the book's first convolution; repeat for several): no weight gradient, batch
    /// norm on its running statistics, no backward below the lowest trainable layer.
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    freeze: Vec<String>,
    /// Learning-rate decay: none, step, exponential, cosine, one-cycle.
    #[arg(long, value_enum, default_value = "none")]
    lr_decay: Decay,
    /// Step the decay per epoch rather than per iteration.
    #[arg(long)]
    decay_per_epoch: bool,
    /// Decay factor, a finite number above 0 (step: per drop; exponential: per step).
    #[arg(long, default_value_t = 0.5)]
    gamma: f32,
    /// Steps between drops of the step decay.
    #[arg(long, default_value_t = 5)]
    step_size: usize,
    /// Linear warm-up steps of the cosine decay.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Augment every training batch with the MNIST recipe: rotation up to 10 degrees,
    /// zoom 0.9-1.1, shift up to 2 pixels (no flips: a mirrored digit is another glyph).
    #[arg(long)]
    augment: bool,
    /// With --augment, Simard's elastic distortion too (random displacements smoothed by
    /// a Gaussian of 3 pixels, scaled by 8), after the shift.
    #[arg(long, requires = "augment")]
    #[serde(default)]
    elastic: bool,
    /// With --augment, rotate by up to this many degrees instead of 10 (An et al. 2020
    /// rotate MNIST digits by up to 20).
    #[arg(long, value_name = "DEGREES", requires = "augment")]
    #[serde(default)]
    rotation: Option<f32>,
    /// With --augment, shift by up to this many pixels instead of 2 (An et al. 2020
    /// shift by up to a fifth of the image: 5.6 pixels).
    #[arg(long, value_name = "PIXELS", requires = "augment")]
    #[serde(default)]
    shift: Option<f32>,
    /// Deskew every image (sheared upright and centred by its moments, as the MNIST
    /// literature's "deskewed" inputs) before the network sees it, after any
    /// augmentation, in training and evaluation; the saved network records it.
    #[arg(long)]
    #[serde(default)]
    deskew: bool,
    /// Evaluate and save an exponential moving average of the trained parameters with
    /// this decay (0.999: about the last thousand steps), not the last step's parameters.
    #[arg(long, value_name = "DECAY")]
    #[serde(default)]
    ema: Option<f32>,
    /// Halve the rate when the per-epoch accuracy (validation, or test without
    /// --validation) has not improved for N epochs.
    #[arg(long)]
    plateau_patience: Option<usize>,
    /// Stop when the per-epoch accuracy (validation, or test without --validation) has
    /// not improved for N epochs.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    early_stop: Option<usize>,
    /// The data set: mnist (or any set in its format, with --data), or optdigits (UCI's
    /// optical digits: needs --labels-per-class, and tests on the images not drawn).
    #[arg(long, value_enum, default_value = "mnist")]
    #[serde(default)]
    dataset: crate::Dataset,
    /// Folder with the data set's files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Hold out N training images (drawn by --validation-seed) as a validation set: the
    /// per-epoch accuracies, the plateau rule and the final figure of the run are taken
    /// on it, and the test set is evaluated once, at the end.
    #[arg(long, value_name = "N")]
    validation: Option<usize>,
    /// Seed of the validation split (the same split for every --seed by default).
    #[arg(long, default_value_t = 0)]
    validation_seed: u64,
    /// Train an ensemble of K members (seeds seed, seed+1, ...) and save it as a folder:
    /// member-{i}.safetensors, member-{i}-history.json and ensemble.json (and, with
    /// --validation, validation.json: the ensemble and each member on the validation set).
    #[arg(long, value_name = "K")]
    ensemble: Option<usize>,
    /// Ensemble members trained at once, each on an equal share of the threads (the
    /// members come out the same either way).
    #[arg(long, default_value_t = 1, value_name = "P")]
    parallel: usize,
    /// How the ensemble combines its members for the final figure.
    #[arg(long, value_enum, default_value = "mean")]
    vote: VoteArg,
    /// Folder for params.safetensors, history.json, run.json and checkpoints/ (or the
    /// ensemble's files). Default: runs/train, or runs/train-2, -3, ... when taken.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the run in --out if there is one.
    #[arg(long)]
    #[serde(skip)]
    overwrite: bool,
    /// Write a checkpoint (parameters, optimizer and trainer state) every N epochs and
    /// after the last, into OUT/checkpoints; OUT/checkpoints/best.safetensors keeps the
    /// parameters of the epoch with the best per-epoch accuracy.
    #[arg(long, default_value_t = 1, value_name = "N")]
    #[serde(default = "one")]
    checkpoint_every: usize,
    /// Checkpoints kept (the newest; 0 keeps all).
    #[arg(long, default_value_t = 2, value_name = "K")]
    #[serde(default = "two")]
    keep_checkpoints: usize,
    /// Report the training seconds (evaluation excluded) at which the per-epoch
    /// evaluation set (validation, or test without --validation), evaluated whole every
    /// 1/--checks-per-epoch epoch, first reaches each of these accuracies in percent;
    /// the run stops when it has reached the last.
    #[arg(long, value_name = "PERCENT", value_delimiter = ',')]
    #[serde(default)]
    time_to: Vec<f64>,
    /// Evaluations per epoch for --time-to.
    #[arg(long, default_value_t = 2, value_name = "K")]
    #[serde(default = "two")]
    checks_per_epoch: usize,
    /// Continue the stopped run in DIR from its newest checkpoint, with the settings in
    /// its run.json; the result is the same, bit for bit, as a run that never stopped.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "recipe", "model", "model_config", "time_to", "checks_per_epoch", "lr_factor", "classes", "labels_per_class",
        "from", "head_classes", "freeze", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "seed", "eval_samples", "train_limit",
        "lr_decay", "decay_per_epoch", "gamma", "step_size", "warmup", "augment", "elastic", "rotation", "shift", "deskew", "ema", "plateau_patience",
        "early_stop", "dataset", "data", "validation", "validation_seed", "ensemble", "parallel", "vote", "out",
        "overwrite", "checkpoint_every", "keep_checkpoints", "micro_batches", "precision", "bf16_kernel",
    ])]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// Compute each mini-batch's gradient in N consecutive slices and add them up
    /// (gradient accumulation). One process with N gives, bit for bit, the parameters
    /// N ranks of --distributed give.
    #[arg(long, default_value_t = 1, value_name = "N")]
    #[serde(default = "one")]
    micro_batches: usize,
    /// Train as one rank of an MPI job, every rank a slice of each mini-batch (start it
    /// with `mpirun -np N target/release/xtask train --distributed ...`; needs a build
    /// with `--features mpi`). Rank 0 alone evaluates, prints and writes files.
    #[arg(long, conflicts_with_all = ["resume", "ensemble", "time_to"])]
    #[serde(skip)]
    pub distributed: bool,
    /// How the ranks add their gradients: ordered (in rank order: the same bits on any
    /// MPI, as one process with --micro-batches N) or native (MPI_Allreduce).
    #[arg(long, value_enum, default_value = "ordered", requires = "distributed")]
    #[serde(skip, default = "ordered")]
    pub reduction: ReductionArg,
    /// The products of convolutions and affine layers: f32, or bf16 (operands rounded to
    /// bfloat16, products summed in f32, master weights, gradients and optimizer in f32).
    #[arg(long, value_enum, default_value = "f32")]
    #[serde(default)]
    precision: TrainPrecision,
    /// With --precision bf16, how the bf16 products are formed: rounded (the operands
    /// rounded, then the f32 kernels: the fastest on every CPU measured), avx512-bf16
    /// (`vdpbf16ps`, on CPUs with AVX-512 BF16; every convolution lowered to a GEMM) or
    /// scalar (`vdpbf16ps`'s sums in plain Rust, on any CPU).
    #[arg(long, value_enum, default_value = "rounded")]
    #[serde(default)]
    bf16_kernel: Bf16KernelArg,
}

/// `train --bf16-kernel`: a [`dl_layers::Bf16Kernel`].
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bf16KernelArg {
    /// Operands rounded to bf16, then the f32 kernels.
    #[default]
    Rounded,
    /// `vdpbf16ps`'s sums in plain Rust.
    Scalar,
    /// AVX-512 BF16's `vdpbf16ps`.
    #[value(name = "avx512-bf16")]
    #[serde(rename = "avx512-bf16")]
    Avx512Bf16,
}

impl From<Bf16KernelArg> for dl_layers::Bf16Kernel {
    fn from(k: Bf16KernelArg) -> Self {
        match k {
            Bf16KernelArg::Rounded => dl_layers::Bf16Kernel::Rounded,
            Bf16KernelArg::Scalar => dl_layers::Bf16Kernel::Scalar,
            Bf16KernelArg::Avx512Bf16 => dl_layers::Bf16Kernel::Avx512,
        }
    }
}

/// `train --precision`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainPrecision {
    /// 32-bit floats throughout.
    #[default]
    F32,
    /// bfloat16 products, f32 master weights.
    Bf16,
}

/// `--reduction`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReductionArg {
    /// Gather, then add in rank order.
    Ordered,
    /// MPI_Allreduce.
    Native,
}

fn ordered() -> ReductionArg {
    ReductionArg::Ordered
}

impl From<ReductionArg> for dl_mpi::Reduction {
    fn from(r: ReductionArg) -> Self {
        match r {
            ReductionArg::Ordered => dl_mpi::Reduction::Ordered,
            ReductionArg::Native => dl_mpi::Reduction::Native,
        }
    }
}

fn one() -> usize {
    1
}

impl TrainArgs {
    /// Applies `--recipe` to every setting it names whose flag was not given
    /// (`given(id)` says whether the flag with clap's id `id` was on the command line).
    pub fn apply_recipe(&mut self, given: &dyn Fn(&str) -> bool) {
        let (config, epochs, lr) = match self.recipe {
            None | Some(Recipe::Book) => return,
            Some(Recipe::Fast) => (FAST_MODEL_CONFIG, 3, 0.2),
            Some(Recipe::Quick) => (QUICK_MODEL_CONFIG, 2, 0.3),
        };
        macro_rules! set {
            ($field:ident, $value:expr) => {
                if !given(stringify!($field)) {
                    self.$field = $value;
                }
            };
        }
        // a run --from a file trains the file's model, with the recipe's other settings
        if self.from.is_none() {
            set!(model, ModelName::Deep);
            set!(model_config, Some(config.to_string()));
        }
        set!(epochs, epochs);
        set!(batch_size, 128);
        set!(optimizer, "nesterov".to_string());
        set!(lr, lr);
        set!(weight_decay, 5e-4);
        set!(lr_decay, Decay::OneCycle);
    }

    /// The settings of `recipe` with every other flag at its default.
    pub fn for_recipe(recipe: Recipe, seed: u64) -> Self {
        Self::for_recipe_watching(recipe, seed, Vec::new(), 2, None, None)
    }

    /// [`TrainArgs::for_recipe`], watching for `time_to` (percent) with
    /// `checks_per_epoch` checks an epoch, on the MNIST in `data` (default: the shipped
    /// copy), for `epochs` (default: the recipe's).
    pub fn for_recipe_watching(
        recipe: Recipe,
        seed: u64,
        time_to: Vec<f64>,
        checks_per_epoch: usize,
        data: Option<PathBuf>,
        epochs: Option<usize>,
    ) -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = Self::augment_args(clap::Command::new("train"));
        let matches = cmd.get_matches_from(["train"]);
        let mut a = Self::from_arg_matches(&matches).expect("the defaults parse");
        a.recipe = Some(recipe);
        a.seed = seed;
        a.time_to = time_to;
        a.checks_per_epoch = checks_per_epoch;
        a.data = data;
        if let Some(epochs) = epochs {
            a.epochs = epochs;
        }
        a.apply_recipe(&|id| id == "epochs" && epochs.is_some());
        a
    }

    /// The network these settings train, every random part fixed by the seed.
    pub fn build_model(&self) -> Result<Network, CliError> {
        self.build_model_reporting().map(|(net, _)| net)
    }

    /// [`TrainArgs::build_model`], with what `--from` loaded.
    pub fn build_model_reporting(&self) -> Result<(Network, Option<dl_models::TransferReport>), CliError> {
        let (mut net, report) = match &self.from {
            None => (self.model.build_with(self.model_config.as_deref(), self.seed)?, None),
            Some(from) => {
                let mut config = dl_models::registry::read_model_config(from)?;
                if let Some(overrides) = &self.model_config {
                    config = config
                        .with_overrides(overrides)
                        .map_err(|e| CliError::Other(format!("--model-config: {e}")))?;
                }
                let mut head = Vec::new();
                if let Some(c) = self.head_classes {
                    config = config.with_output_size(c)?;
                    head = config.head_names()?;
                }
                let mut net = config
                    .build(self.seed)
                    .map_err(|e| CliError::Other(format!("--head-classes: {e}")))?;
                let report = net.load_matching_except(from, &head)?;
                (net, Some(report))
            }
        };
        if self.deskew {
            net.set_deskew(true);
        }
        for path in &self.freeze {
            net.set_trainable(path, false)
                .map_err(|e| CliError::Other(format!("--freeze {path}: {e}")))?;
        }
        let kernel = dl_layers::Bf16Kernel::from(self.bf16_kernel);
        if self.precision != TrainPrecision::Bf16 && self.bf16_kernel != Bf16KernelArg::default() {
            return Err(CliError::Other("--bf16-kernel needs --precision bf16".into()));
        }
        if !kernel.supported() {
            return Err(CliError::Other(format!(
                "--bf16-kernel {kernel}: this CPU lacks AVX-512 BF16 (rounded and scalar run anywhere)"
            )));
        }
        net.set_bf16_products((self.precision == TrainPrecision::Bf16).then_some(kernel));
        Ok((net, report))
    }

    /// The flags that give these settings to `cargo xtask train` (those that differ
    /// from the defaults, but always the model).
    pub fn flags(&self) -> String {
        let base = Self::for_recipe(Recipe::Book, self.seed);
        let mut out = vec![format!("--model {}", value_name(self.model))];
        if let Some(c) = &self.model_config {
            out.push(format!("--model-config '{c}'"));
        }
        let mut diff = |name: &str, mine: String, theirs: String| {
            if mine != theirs {
                out.push(format!("--{name} {mine}"));
            }
        };
        diff("epochs", self.epochs.to_string(), base.epochs.to_string());
        diff("batch-size", self.batch_size.to_string(), base.batch_size.to_string());
        diff("optimizer", self.optimizer.clone(), base.optimizer.clone());
        diff("lr", self.lr.to_string(), base.lr.to_string());
        diff(
            "weight-decay",
            self.weight_decay.to_string(),
            base.weight_decay.to_string(),
        );
        diff("lr-decay", value_name(self.lr_decay), value_name(base.lr_decay));
        diff("seed", self.seed.to_string(), base.seed.to_string());
        diff("precision", value_name(self.precision), value_name(base.precision));
        diff(
            "bf16-kernel",
            value_name(self.bf16_kernel),
            value_name(base.bf16_kernel),
        );
        if self.augment {
            out.push("--augment".into());
        }
        if self.elastic {
            out.push("--elastic".into());
        }
        for (flag, value) in [("rotation", self.rotation), ("shift", self.shift), ("ema", self.ema)] {
            if let Some(v) = value {
                out.push(format!("--{flag} {v}"));
            }
        }
        if self.deskew {
            out.push("--deskew".into());
        }
        out.join(" ")
    }
}

/// The `--model` value of a saved model's kind.
pub fn model_value_name(config: &dl_models::registry::ModelConfig) -> Result<String, CliError> {
    ModelName::value_variants()
        .iter()
        .find(|m| m.kind() == config.kind())
        .map(|&m| value_name(m))
        .ok_or_else(|| CliError::Other(format!("no --model trains a {}", config.kind())))
}

/// A value's name on the command line (`one-cycle`).
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

fn two() -> usize {
    2
}

/// The file of a run folder that holds its flags.
const RUN_FILE: &str = "run.json";
/// An ensemble run's figures on its validation split (the ensemble and each member).
const ENSEMBLE_VALIDATION_FILE: &str = "validation.json";
/// The sub-folder of a run folder that holds its checkpoints.
const CHECKPOINT_DIR: &str = "checkpoints";

#[derive(Clone, Copy, Debug, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum VoteArg {
    /// Average the members' softmax outputs.
    Mean,
    /// Majority vote (ties: larger mean output).
    Majority,
}

impl From<VoteArg> for Vote {
    fn from(v: VoteArg) -> Self {
        match v {
            VoteArg::Mean => Vote::Mean,
            VoteArg::Majority => Vote::Majority,
        }
    }
}

/// An accuracy a run watches for (`--time-to`), where it was first reached.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Reached {
    /// The accuracy watched for, percent.
    pub target_percent: f64,
    /// The accuracy measured, a fraction.
    pub accuracy: f64,
    /// Iterations trained.
    pub iteration: usize,
    /// Epochs trained (iterations over iterations per epoch).
    pub epochs: f64,
    /// Seconds of training, evaluation excluded.
    pub train_seconds: f64,
    /// Seconds spent on the checks up to and with this one.
    pub check_seconds: f64,
}

/// One evaluation of the whole evaluation set by [`TimeTo`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Check {
    /// Iterations trained.
    pub iteration: usize,
    /// Epochs trained.
    pub epochs: f64,
    /// Seconds of training, evaluation excluded.
    pub train_seconds: f64,
    /// The accuracy, a fraction.
    pub accuracy: f64,
}

/// Time to an accuracy: evaluates the whole evaluation set `checks_per_epoch` times an
/// epoch (and at the run's last iteration), notes when each target was first reached,
/// and stops the run when all are.
pub struct TimeTo {
    targets: Vec<f64>,
    checks_per_epoch: usize,
    iter_per_epoch: usize,
    /// Per target (in the order given), where it was reached.
    pub reached: Vec<Option<Reached>>,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Seconds of all checks.
    pub check_seconds: f64,
}

impl TimeTo {
    /// Watches for `targets` (percent, each in (0, 100]) on `checks_per_epoch` checks
    /// an epoch of `iter_per_epoch` iterations.
    pub fn new(targets: &[f64], checks_per_epoch: usize, iter_per_epoch: usize) -> Result<Self, CliError> {
        if let Some(t) = targets.iter().find(|t| !(**t > 0.0 && **t <= 100.0)) {
            return Err(CliError::Other(format!(
                "--time-to {t}: an accuracy is a percentage above 0 and at most 100"
            )));
        }
        if checks_per_epoch == 0 || checks_per_epoch > iter_per_epoch {
            return Err(CliError::Other(format!(
                "--checks-per-epoch {checks_per_epoch}: between 1 and the {iter_per_epoch} iterations of an epoch"
            )));
        }
        Ok(Self {
            targets: targets.to_vec(),
            checks_per_epoch,
            iter_per_epoch,
            reached: vec![None; targets.len()],
            checks: Vec::new(),
            check_seconds: 0.0,
        })
    }

    /// The targets still not reached.
    fn pending(&self) -> usize {
        self.reached.iter().filter(|r| r.is_none()).count()
    }

    /// The line printed after a check: the accuracy, and the targets it reached first.
    fn last_check_line(&self, prefix: &str, eval_name: &str) -> String {
        let Some(c) = self.checks.last() else {
            return format!("{prefix}no check yet");
        };
        let mut line = format!(
            "{prefix}check at {:.2} epochs  {eval_name} acc {:.4}  {:.1} s train",
            c.epochs, c.accuracy, c.train_seconds
        );
        let now: Vec<String> = self
            .reached
            .iter()
            .flatten()
            .filter(|r| r.iteration == c.iteration)
            .map(|r| format!("{}%", r.target_percent))
            .collect();
        if !now.is_empty() {
            line.push_str("  <- reached ");
            line.push_str(&now.join(", "));
        }
        line
    }
}

impl Observer for TimeTo {
    fn evaluate_now(&mut self, info: &IterationInfo) -> bool {
        // a check after iteration ceil(j * iter_per_epoch / checks) for j = 1, 2, ...:
        // as every epoch has iter_per_epoch iterations, the k-th of an epoch comes after
        // its iteration ceil(k * iter_per_epoch / checks), the last at its end
        let k = |i: usize| i * self.checks_per_epoch / self.iter_per_epoch;
        k(info.iteration) > k(info.iteration - 1) || info.iteration == info.max_iter
    }

    fn on_evaluation(&mut self, info: &IterationInfo, evaluation: &Evaluation, seconds: f64) -> ControlFlow<()> {
        self.check_seconds += seconds;
        let check = Check {
            iteration: info.iteration,
            epochs: info.iteration as f64 / self.iter_per_epoch as f64,
            train_seconds: info.train_seconds,
            accuracy: evaluation.accuracy(),
        };
        self.checks.push(check);
        for (target, reached) in self.targets.iter().zip(self.reached.iter_mut()) {
            // counted in images, so that 99.4% of 10,000 is 9,940 exactly
            let needed = (target / 100.0 * evaluation.total as f64 - 1e-6).ceil() as usize;
            if reached.is_none() && evaluation.correct >= needed {
                *reached = Some(Reached {
                    target_percent: *target,
                    accuracy: check.accuracy,
                    iteration: check.iteration,
                    epochs: check.epochs,
                    train_seconds: check.train_seconds,
                    check_seconds: self.check_seconds,
                });
            }
        }
        if self.pending() == 0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// A progress bar with loss, images/s and time left (drawn only on a terminal), and a
/// line per epoch.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    images: usize,
    /// Images of the epoch under way.
    epoch_images: usize,
    /// Put before each epoch line ("member 2  "), empty for a single run.
    prefix: String,
    /// What the per-epoch evaluation set is called: "test" or "val".
    eval_name: &'static str,
    /// `--time-to`'s checks, if asked.
    watch: Option<TimeTo>,
}

impl Progress {
    /// A bar drawn on a terminal, or none (`hidden`) when several runs share the screen.
    fn new(prefix: String, hidden: bool, eval_name: &'static str) -> Self {
        let bar = if hidden {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} it  {msg}  [{elapsed_precise} < {eta_precise}]")
                    .expect("valid template"),
            );
            bar
        };
        Self {
            bar,
            started: Instant::now(),
            images: 0,
            epoch_images: 0,
            prefix,
            eval_name,
            watch: None,
        }
    }

    /// The line printed after each epoch.
    fn epoch_line(&self, r: &EpochRecord) -> String {
        format!(
            "{}epoch {:>3}  loss {:.4}  train acc {:.4}  {} acc {:.4}  lr {}  {:.1} s train ({:.0} img/s)  {:.1} s total",
            self.prefix,
            r.epoch,
            r.train_loss,
            r.train_acc,
            self.eval_name,
            r.test_acc,
            r.lr,
            r.train_seconds,
            self.epoch_images as f64 / r.train_seconds,
            r.elapsed_seconds
        )
    }
}

impl Observer for Progress {
    fn on_iteration(&mut self, info: &IterationInfo) {
        self.images += info.batch;
        self.epoch_images += info.batch;
        if info.iteration == 1 {
            self.bar.set_length(info.max_iter as u64);
        }
        let rate = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(info.iteration as u64);
        if info.iteration.is_multiple_of(10) {
            self.bar
                .set_message(format!("epoch {} loss {:.4} {:.0} img/s", info.epoch, info.loss, rate));
        }
    }

    fn on_epoch(&mut self, r: &EpochRecord) {
        let line = self.epoch_line(r);
        self.epoch_images = 0;
        self.bar.suspend(|| println!("{line}"));
    }

    fn on_final_evaluation(&mut self, done: Option<&Evaluation>) {
        if done.is_none() {
            self.bar.finish_and_clear();
        }
    }

    fn evaluate_now(&mut self, info: &IterationInfo) -> bool {
        self.watch.as_mut().is_some_and(|w| w.evaluate_now(info))
    }

    fn on_evaluation(&mut self, info: &IterationInfo, evaluation: &Evaluation, seconds: f64) -> ControlFlow<()> {
        let Some(w) = self.watch.as_mut() else {
            return ControlFlow::Continue(());
        };
        let flow = w.on_evaluation(info, evaluation, seconds);
        let line = w.last_check_line(&self.prefix, self.eval_name);
        self.bar.suspend(|| println!("{line}"));
        flow
    }
}

/// The lines that say when each target of `watch` was reached, on `set`.
pub fn time_to_lines(watch: &TimeTo, set: &str) -> Vec<String> {
    watch
        .targets
        .iter()
        .zip(&watch.reached)
        .map(|(t, r)| match r {
            Some(r) => format!(
                "{t}% on {set}: {:.1} s of training ({:.2} epochs, {} iterations; {:.1} s of checks besides)",
                r.train_seconds, r.epochs, r.iteration, r.check_seconds
            ),
            None => format!("{t}% on {set}: not reached"),
        })
        .collect()
}

/// `PREFIX=F` of `--lr-factor`.
fn parse_lr_factor(s: &str) -> Result<(String, f32), String> {
    let (prefix, f) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected PREFIX=FACTOR, such as layer1=0.1"))?;
    let f: f32 = f.parse().map_err(|e| format!("{s:?}: the factor: {e}"))?;
    dl_optim::LrGroups::new()
        .set(prefix, f)
        .map_err(|e| format!("{s:?}: {e}"))?;
    Ok((prefix.to_string(), f))
}

/// The trainer settings the flags ask for.
fn trainer_config(a: &TrainArgs) -> Result<TrainerConfig, CliError> {
    let lr_groups =
        dl_optim::LrGroups::from_pairs(&a.lr_factor).map_err(|e| CliError::Other(format!("--lr-factor: {e}")))?;
    if let Some(d) = a.ema {
        dl_optim::WeightAverage::new(d).map_err(|e| CliError::Other(format!("--ema: {e}")))?;
    }
    if a.epochs == 0 {
        return Err(CliError::Other("--epochs must be at least 1".into()));
    }
    if matches!(a.lr_decay, Decay::Step | Decay::Exponential) && !(a.gamma.is_finite() && a.gamma > 0.0) {
        return Err(CliError::Other(format!(
            "--gamma {}: must be a finite number above 0",
            a.gamma
        )));
    }
    Ok(TrainerConfig {
        epochs: a.epochs,
        mini_batch_size: a.batch_size,
        optimizer: a.optimizer.clone(),
        lr: a.lr,
        weight_decay: a.weight_decay,
        evaluate_sample_num_per_epoch: (a.eval_samples > 0).then_some(a.eval_samples),
        seed: a.seed,
        verbose: false,
        lr_schedule: match a.lr_decay {
            Decay::None => None,
            Decay::Step if a.step_size == 0 => {
                return Err(CliError::Other("--step-size must be at least 1".into()));
            }
            Decay::Step => Some(Schedule::Step {
                step_size: a.step_size,
                gamma: a.gamma,
            }),
            Decay::Exponential => Some(Schedule::Exponential { gamma: a.gamma }),
            Decay::Cosine => Some(Schedule::Cosine {
                warmup: a.warmup,
                min_lr: 0.0,
            }),
            Decay::OneCycle => Some(Schedule::OneCycle {
                pct_start: 0.25,
                div_factor: 25.0,
                final_div_factor: 1e4,
            }),
        },
        schedule_unit: if a.decay_per_epoch {
            Unit::Epoch
        } else {
            Unit::Iteration
        },
        reduce_on_plateau: a.plateau_patience.map(|p| ReduceOnPlateau::new(0.5, p)),
        early_stop_patience: a.early_stop,
        augment: a.augment.then(|| augmentation(a)).transpose()?,
        lr_groups,
        micro_batches: a.micro_batches,
        ema_decay: a.ema,
    })
}

/// The MNIST augmentation recipe with the flags' rotation and shift.
fn augmentation(a: &TrainArgs) -> Result<dl_data::Pipeline, CliError> {
    let check = |flag: &str, v: Option<f32>, max: f32, unit: &str| match v {
        Some(v) if !(v.is_finite() && (0.0..=max).contains(&v)) => {
            Err(CliError::Other(format!("--{flag} {v}: must be from 0 to {max} {unit}")))
        }
        _ => Ok(v),
    };
    let rotation = check("rotation", a.rotation, 180.0, "degrees")?;
    let shift = check("shift", a.shift, 14.0, "pixels (half an image)")?;
    let mut p = dl_data::Pipeline::mnist(a.elastic, a.seed);
    for step in &mut p.steps {
        match step {
            dl_data::Augment::Rotate { max_degrees } => *max_degrees = rotation.unwrap_or(*max_degrees),
            dl_data::Augment::Shift { max } => *max = shift.unwrap_or(*max),
            _ => {}
        }
    }
    Ok(p)
}

fn threads_word(n: usize) -> &'static str {
    if n == 1 {
        "thread"
    } else {
        "threads"
    }
}

/// The training curves a run writes beside its history.
pub const CURVES_FILE: &str = "curves.png";

/// The name history files give the per-epoch evaluation set.
fn evaluated_on(validation: Option<&ImageSet>) -> &'static str {
    if validation.is_some() {
        "validation"
    } else {
        "test"
    }
}

/// A run's name in a legend: its folder's name.
fn run_label(out: &Path) -> String {
    out.file_name()
        .map_or_else(|| out.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), CliError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| CliError::Other(e.to_string()))?;
    dl_tensor::fs::atomic_write(path, &json).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
}

/// Whether `dir` holds anything (a missing folder holds nothing).
fn holds_files(dir: &Path) -> Result<bool, CliError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CliError::Other(format!("{}: {e}", dir.display()))),
    }
}

/// The folder a new run writes to: `--out` if it is empty or missing (or `--overwrite`),
/// else an error; without `--out`, `base` or the first of `base-2`, `base-3`, ... that is
/// empty or missing. Never a folder that holds another run, unless asked.
fn new_run_folder(out: Option<&Path>, overwrite: bool, base: &Path) -> Result<PathBuf, CliError> {
    match out {
        Some(dir) if overwrite || !holds_files(dir)? => Ok(dir.to_path_buf()),
        Some(dir) => Err(CliError::Other(format!(
            "{} holds files already: pass --overwrite to replace its run, --resume {} to continue it, or another --out",
            dir.display(),
            dir.display()
        ))),
        None => crate::first_free(base, holds_files),
    }
}

pub fn run(a: TrainArgs) -> Result<(), CliError> {
    run_scored(a).map(drop)
}

/// [`run`], returning the final test figure of a single run.
pub fn run_scored(a: TrainArgs) -> Result<Option<Evaluation>, CliError> {
    if a.distributed {
        return run_distributed(a);
    }
    match a.resume.clone() {
        Some(dir) => resume(&dir),
        None => {
            let base = if a.from.is_some() {
                "runs/finetune"
            } else {
                "runs/train"
            };
            let out = new_run_folder(a.out.as_deref(), a.overwrite, Path::new(base))?;
            start(a, out, None, None)
        }
    }
}

/// `train --distributed`: one rank of an MPI job. Rank 0 picks the run's folder, prints
/// and writes; the other ranks print nothing. A rank that fails ends the whole job
/// (`MPI_Abort`) with its message, so that no rank waits for it for ever.
fn run_distributed(a: TrainArgs) -> Result<Option<Evaluation>, CliError> {
    let mpi = dl_mpi::Mpi::init()
        .map_err(|e| CliError::Other(format!("--distributed: {e}")))?
        .with_reduction(a.reduction.into());
    let (rank, size) = (Communicator::rank(&mpi), Communicator::size(&mpi));
    if rank != 0 {
        silence_stdout();
    }
    let result = (|| {
        let out = if rank == 0 {
            let base = if a.from.is_some() {
                "runs/finetune"
            } else {
                "runs/train"
            };
            new_run_folder(a.out.as_deref(), a.overwrite, Path::new(base))?
        } else {
            PathBuf::new()
        };
        start(a, out, None, Some(&mpi))
    })();
    match result {
        Err(e) if size > 1 => {
            eprintln!("rank {rank} of {size}: error: {e}");
            mpi.abort(1)
        }
        r => r,
    }
}

/// Sends this process's stdout to /dev/null (the ranks other than 0).
fn silence_stdout() {
    #[cfg(feature = "mpi")]
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 replaces stdout with /dev/null; both descriptors are
        // open, and Rust's stdout writes to fd 1 whatever file it names.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

/// `cargo xtask finetune`: `train` from a saved network (`--from` required).
pub fn finetune(a: TrainArgs) -> Result<(), CliError> {
    finetune_scored(a).map(drop)
}

/// [`finetune`], returning the final test figure.
pub fn finetune_scored(a: TrainArgs) -> Result<Option<Evaluation>, CliError> {
    if a.from.is_none() && a.resume.is_none() {
        return Err(CliError::Other(
            "finetune starts from a saved network: pass --from PARAMS (or --resume DIR)".into(),
        ));
    }
    run_scored(a)
}

/// The digits of `--classes`: `0-4` or `5,6,7`.
fn parse_classes(spec: &str) -> Result<Vec<u8>, CliError> {
    let bad = || CliError::Other(format!("--classes {spec}: expected digits such as 0-4 or 5,6,7"));
    let mut out = Vec::new();
    for part in spec.split(',') {
        let digit = |s: &str| s.trim().parse::<u8>().map_err(|_| bad());
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (digit(a)?, digit(b)?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(digit(part)?),
        }
    }
    Ok(out)
}

/// Continues the run in `dir` from its newest checkpoint.
fn resume(dir: &Path) -> Result<Option<Evaluation>, CliError> {
    let run_file = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&run_file).map_err(|e| {
        CliError::Other(format!(
            "{}: {e} (--resume takes the folder of a run started by cargo xtask train)",
            run_file.display()
        ))
    })?;
    let a: TrainArgs =
        serde_json::from_str(&text).map_err(|e| CliError::Other(format!("{}: {e}", run_file.display())))?;
    if a.ensemble.is_some() {
        return Err(CliError::Other(
            "an ensemble run cannot be resumed: train its missing members with --seed and join them with cargo xtask ensemble".into(),
        ));
    }
    let checkpoints = dir.join(CHECKPOINT_DIR);
    let latest = checkpoint::latest(&checkpoints)?
        .ok_or_else(|| CliError::Other(format!("{}: no checkpoint to resume from", checkpoints.display())))?;
    let ckpt = checkpoint::read(&latest)?;
    println!(
        "resuming {} from {} (epoch {} of {})",
        dir.display(),
        latest.display(),
        ckpt.trainer.epoch,
        ckpt.trainer.config.epochs
    );
    start(a, dir.to_path_buf(), Some(ckpt), None)
}

/// Trains as `a` says into `out`; the final test figure of a single run (`None` for an
/// ensemble, which prints its own).
fn start(
    mut a: TrainArgs,
    out: PathBuf,
    resume_from: Option<dl_train::Checkpoint>,
    dist: Option<&dyn Communicator>,
) -> Result<Option<Evaluation>, CliError> {
    let root = dist.is_none_or(|c| c.rank() == 0);
    a.out = Some(out.clone());
    if a.checkpoint_every == 0 {
        return Err(CliError::Other("--checkpoint-every must be at least 1".into()));
    }
    if a.ensemble == Some(0) {
        return Err(CliError::Other("--ensemble needs at least one member".into()));
    }
    if a.parallel == 0 {
        return Err(CliError::Other("--parallel must be at least 1".into()));
    }
    if a.micro_batches == 0 {
        return Err(CliError::Other("--micro-batches must be at least 1".into()));
    }
    if a.ensemble.is_none() && a.parallel > 1 {
        return Err(CliError::Other("--parallel applies to --ensemble runs only".into()));
    }
    let data = a.data.clone().unwrap_or_else(|| a.dataset.default_dir());
    let load_start = Instant::now();
    let mut mnist = a.dataset.load(Some(&data))?;
    if let Some(spec) = &a.classes {
        let classes = parse_classes(spec)?;
        mnist.train = mnist.train.select_classes(&classes)?;
        mnist.test = mnist.test.select_classes(&classes)?;
    }
    if let Some(n) = a.train_limit {
        mnist.train = mnist.train.take(n);
    }
    let validation = match a.validation {
        Some(0) => return Err(CliError::Other("--validation needs at least one image".into())),
        Some(n) if n >= mnist.train.len() => {
            return Err(CliError::Other(format!(
                "--validation {n} leaves no training images (there are {})",
                mnist.train.len()
            )))
        }
        Some(n) => {
            let (rest, held) = mnist.train.split(n, a.validation_seed);
            mnist.train = rest;
            Some(held)
        }
        None => None,
    };
    match a.labels_per_class {
        Some(0) => return Err(CliError::Other("--labels-per-class needs at least one image".into())),
        Some(k) => a.dataset.few_labels(&mut mnist, k, a.seed),
        None if a.dataset == crate::Dataset::Optdigits => {
            return Err(CliError::Other(
                "--dataset optdigits has no test set of its own: pass --labels-per-class K to train on K \
                 images of each digit and test on the rest"
                    .into(),
            ))
        }
        None => {}
    }
    if mnist.train.is_empty() {
        return Err(CliError::Other("no training images are left to train on".into()));
    }
    println!(
        "{} from {}: {} train, {}{} test images ({:.1} s)",
        match a.dataset {
            crate::Dataset::Mnist => "MNIST",
            crate::Dataset::Optdigits => "optical digits",
        },
        data.display(),
        mnist.train.len(),
        validation.as_ref().map_or(String::new(), |v| format!(
            "{} validation (seed {}), ",
            v.len(),
            a.validation_seed
        )),
        mnist.test.len(),
        load_start.elapsed().as_secs_f64()
    );
    if a.ensemble.is_some() && !a.time_to.is_empty() {
        return Err(CliError::Other(
            "--time-to applies to single runs, not to --ensemble".into(),
        ));
    }
    if !a.time_to.is_empty() {
        // checked before anything is written
        let iter_per_epoch =
            dl_data::BatchOrder::new(mnist.train.len(), a.batch_size.max(1), a.seed).batches_per_epoch();
        TimeTo::new(&a.time_to, a.checks_per_epoch, iter_per_epoch)?;
    }
    let config = trainer_config(&a)?;
    config.validate()?;
    let (mut probe, transfer) = a.build_model_reporting()?;
    if let (Some(from), Some(report)) = (&a.from, &transfer) {
        println!("from {}: {report}", from.display());
    }
    let names: Vec<String> = probe.params().into_iter().map(|(name, _)| name).collect();
    if let Some(prefix) = config.lr_groups.unmatched(&names).first() {
        return Err(CliError::Other(format!(
            "--lr-factor {prefix}=...: no parameter of the network lies under {prefix:?} (its names are as saved: {}, ...)",
            names.iter().take(3).map(String::as_str).collect::<Vec<_>>().join(", ")
        )));
    }
    // every class of the data needs an output
    let (c, h, w) = (mnist.train.channels, mnist.train.height, mnist.train.width);
    let outputs = probe
        .predict(dl_layers::Tensor::zeros(vec![1, c, h, w]), false)?
        .shape()[1];
    if outputs < mnist.train.classes {
        return Err(CliError::Other(format!(
            "the network has {outputs} outputs for {} classes: pass --head-classes {}",
            mnist.train.classes, mnist.train.classes
        )));
    }
    let threads = rayon::current_num_threads();
    let ranks = match dist {
        Some(c) => format!("{} ranks x ", c.size()),
        None => String::new(),
    };
    println!(
        "{} ({} parameters), {} epoch{}, batch {}, {} lr {}{}, seed {}, {ranks}{} {}",
        probe.kind(),
        probe.param_count(),
        config.epochs,
        if config.epochs == 1 { "" } else { "s" },
        config.mini_batch_size,
        config.optimizer,
        config.lr,
        if config.weight_decay > 0.0 {
            format!(" weight decay {}", config.weight_decay)
        } else {
            String::new()
        },
        config.seed,
        threads,
        threads_word(threads)
    );
    if let Some(d) = config.ema_decay {
        println!("evaluating and saving the moving average of the parameters (decay {d})");
    }
    if a.precision == TrainPrecision::Bf16 {
        println!(
            "products in bf16 ({} kernel): operands rounded to bfloat16, summed in f32; master weights in f32",
            dl_layers::Bf16Kernel::from(a.bf16_kernel)
        );
    }
    if root {
        std::fs::create_dir_all(&out).map_err(|e| CliError::Other(format!("{}: {e}", out.display())))?;
    }
    if resume_from.is_none() && root {
        // a run that replaces another (--overwrite) starts without the old checkpoints
        let old = out.join(CHECKPOINT_DIR);
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| CliError::Other(format!("{}: {e}", old.display())))?;
        }
        write_json(&out.join(RUN_FILE), &a)?;
    }
    match a.ensemble {
        None => train_one(
            &a,
            &out,
            probe,
            &mnist,
            validation.as_ref(),
            config,
            (resume_from, dist),
        )
        .map(Some),
        Some(k) => train_many(&a, &out, k, &mnist, validation.as_ref(), config).map(Some),
    }
}

fn train_one(
    a: &TrainArgs,
    out: &Path,
    mut net: Network,
    mnist: &Mnist,
    validation: Option<&ImageSet>,
    config: TrainerConfig,
    (resume_from, dist): (Option<dl_train::Checkpoint>, Option<&dyn Communicator>),
) -> Result<Evaluation, CliError> {
    let root = dist.is_none_or(|c| c.rank() == 0);
    let mut progress = Progress::new(String::new(), false, if validation.is_some() { "val" } else { "test" });
    let eval_set = validation.unwrap_or(&mnist.test);
    let dir = out.join(CHECKPOINT_DIR);
    println!(
        "checkpoints in {} every {} epoch{} (keeping {})",
        dir.display(),
        a.checkpoint_every,
        if a.checkpoint_every == 1 { "" } else { "s" },
        if a.keep_checkpoints == 0 {
            "all".to_string()
        } else {
            format!("the last {}", a.keep_checkpoints)
        }
    );
    let policy = CheckpointPolicy {
        dir: dir.clone(),
        every: a.checkpoint_every,
        keep: a.keep_checkpoints,
        keep_best: true,
    };
    let mut trainer = Trainer::new(&mut net, &mnist.train, eval_set, config)?.with_checkpoints(policy)?;
    if let Some(comm) = dist {
        trainer = trainer.distributed(Distributed::new(comm));
    }
    if !a.time_to.is_empty() {
        let iter_per_epoch = dl_data::BatchOrder::new(mnist.train.len(), a.batch_size, a.seed).batches_per_epoch();
        progress.watch = Some(TimeTo::new(&a.time_to, a.checks_per_epoch, iter_per_epoch)?);
    }
    if let Some(ckpt) = &resume_from {
        trainer = trainer.resume(ckpt)?;
    }
    let history = trainer.train_with(&mut progress).map_err(|e| match e {
        TrainError::Diverged { .. } => match checkpoint::latest(&dir) {
            Ok(Some(last)) => CliError::Other(format!(
                "{e}; the last good checkpoint is {} (cargo xtask train --resume {} continues from it)",
                last.display(),
                out.display()
            )),
            _ => CliError::Other(format!("{e}; no epoch had finished, so there is no checkpoint")),
        },
        e => e.into(),
    })?;
    let mut history = history;
    history.evaluated_on = Some(evaluated_on(validation).into());
    if !root {
        return Ok(history.test_evaluation);
    }
    if let Some(c) = dist {
        println!(
            "{} ranks: {:.1} s of {:.1} s training in the gradients' all-reduce on rank 0",
            c.size(),
            history.communication_seconds,
            history.epochs.iter().map(|e| e.train_seconds).sum::<f64>()
        );
    }
    let params = out.join("params.safetensors");
    net.save_params(&params)?;
    let hist = out.join("history.json");
    write_json(&hist, &history)?;
    // a run that --time-to stopped before its first epoch ended has no curve to draw
    let curves = out.join(CURVES_FILE);
    let drawn = if history.epochs.is_empty() {
        String::new()
    } else {
        crate::plot::write_curves(&curves, &[crate::plot::Curve::from_history(&run_label(out), &history)])?;
        format!(" and {}", curves.display())
    };
    println!(
        "wrote {}, {}{drawn} ({:.1} s in all, peak memory {:.0} MiB)",
        params.display(),
        hist.display(),
        history.total_seconds,
        crate::bench::peak_rss_mib()
    );
    if let Some(w) = &progress.watch {
        for line in time_to_lines(w, evaluated_on(validation)) {
            println!("{line}");
        }
    }
    let test = if validation.is_some() {
        println!("validation accuracy: {}", history.test_evaluation);
        evaluate(&mut net, &mnist.test, None, 100)?
    } else {
        history.test_evaluation
    };
    println!("test accuracy: {test}");
    Ok(test)
}

/// Trains as `a` says on all the training images, writing no file, and watches the
/// full test set for `a.time_to`; the progress goes to stdout (`bench
/// --time-to-accuracy`; a recipe is chosen with `train --validation N --time-to`).
pub fn time_to_accuracy(a: &TrainArgs) -> Result<(History, TimeTo), CliError> {
    if a.time_to.is_empty() {
        return Err(CliError::Other("no accuracy to watch for".into()));
    }
    let data = a.data.clone().unwrap_or_else(crate::default_data_dir);
    let mnist = Mnist::load(&data)?;
    let mut net = a.build_model()?;
    let trainer = Trainer::new(&mut net, &mnist.train, &mnist.test, trainer_config(a)?)?;
    let iter_per_epoch = dl_data::BatchOrder::new(mnist.train.len(), a.batch_size, a.seed).batches_per_epoch();
    let mut progress = Progress::new(String::new(), false, "test");
    progress.watch = Some(TimeTo::new(&a.time_to, a.checks_per_epoch, iter_per_epoch)?);
    let history = trainer.train_with(&mut progress)?;
    Ok((history, progress.watch.expect("set above")))
}

fn train_many(
    a: &TrainArgs,
    out: &Path,
    k: usize,
    mnist: &Mnist,
    validation: Option<&ImageSet>,
    config: TrainerConfig,
) -> Result<Evaluation, CliError> {
    let parallel = a.parallel.min(k);
    let per_member = dl_train::ensemble::threads_per_member(parallel);
    println!(
        "ensemble of {k}: seeds {}..={}, {parallel} at a time on {per_member} {} each",
        config.seed,
        config.seed.wrapping_add(k as u64 - 1),
        threads_word(per_member)
    );
    let start = Instant::now();
    let member_args = a.clone();
    let eval_name = if validation.is_some() { "val" } else { "test" };
    let run = train_ensemble(
        |_, seed| {
            let mut m = member_args.clone();
            m.seed = seed;
            m.build_model().expect("the settings built the first network")
        },
        &mnist.train,
        validation.unwrap_or(&mnist.test),
        &config,
        k,
        parallel,
        |i| Progress::new(format!("member {i}  "), parallel > 1, eval_name),
    )?;
    let mut curves = Vec::with_capacity(k);
    for (i, h) in run.histories.iter().enumerate() {
        println!(
            "member {i} (seed {}): {eval_name} accuracy {} ({:.1} s)",
            run.seeds[i], h.test_evaluation, h.total_seconds
        );
        let mut h = h.clone();
        h.evaluated_on = Some(evaluated_on(validation).into());
        write_json(&out.join(format!("member-{i}-history.json")), &h)?;
        curves.push(crate::plot::Curve::from_history(&format!("member {i}"), &h));
    }
    crate::plot::write_curves(&out.join(CURVES_FILE), &curves)?;
    let mut ensemble = run.ensemble;
    let vote = Vote::from(a.vote);
    if let Some(v) = validation {
        let ev = ensemble.evaluate(v, None, 100)?;
        println!("ensemble, validation:      {} ({})", ev.by(vote), value_name(a.vote));
        write_json(&out.join(ENSEMBLE_VALIDATION_FILE), &ev)?;
    }
    let ev = ensemble.evaluate(&mnist.test, None, 100)?;
    let description = crate::command_line("train");
    let m = ensemble.save(out, vote, Some(&run.seeds), Some(&ev), &description)?;
    println!("ensemble, mean of softmax: {}", ev.mean);
    println!("ensemble, majority vote:   {}", ev.majority);
    println!(
        "wrote {} members, {} and {} ({:.1} s in all, peak memory {:.0} MiB)",
        m.members.len(),
        out.join(dl_train::ensemble::MANIFEST_FILE).display(),
        out.join(CURVES_FILE).display(),
        start.elapsed().as_secs_f64(),
        crate::bench::peak_rss_mib()
    );
    println!("test accuracy: {}", ev.by(vote));
    Ok(ev.by(vote))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(iteration: usize, max_iter: usize) -> IterationInfo {
        IterationInfo {
            iteration,
            max_iter,
            epoch: 1,
            loss: 0.0,
            batch: 1,
            train_seconds: iteration as f64 * 0.5,
        }
    }

    /// The bar follows the iterations; the epoch line gives that epoch's rate (a resumed
    /// run's too); the bar goes when the run ends.
    #[test]
    fn progress_shows_the_iterations_and_each_epochs_rate() {
        let started = Instant::now();
        let mut p = Progress::new("member 1  ".into(), true, "val");
        let record = |epoch| EpochRecord {
            epoch,
            train_loss: 0.25,
            train_acc: 0.5,
            test_acc: 0.75,
            lr: 0.01,
            train_seconds: 2.0,
            elapsed_seconds: 9.0,
        };
        let step = |p: &mut Progress, iteration| {
            p.on_iteration(&IterationInfo {
                batch: 100,
                epoch: 1,
                loss: 0.125,
                ..info(iteration, 50)
            })
        };
        step(&mut p, 1);
        assert_eq!((p.bar.length(), p.bar.position()), (Some(50), 1));
        for i in 2..=10 {
            step(&mut p, i);
        }
        assert_eq!(p.bar.position(), 10);
        let message = p.bar.message();
        let rate: f64 = message
            .strip_prefix("epoch 1 loss 0.1250 ")
            .and_then(|m| m.strip_suffix(" img/s"))
            .unwrap_or_else(|| panic!("{message}"))
            .parse()
            .unwrap();
        assert!(rate >= 1000.0 / started.elapsed().as_secs_f64() - 0.5, "{rate}");
        p.on_epoch(&record(3));
        step(&mut p, 11);
        assert_eq!(
            p.epoch_line(&record(4)),
            "member 1  epoch   4  loss 0.2500  train acc 0.5000  val acc 0.7500  lr 0.01  2.0 s train (50 img/s)  9.0 s total"
        );
        assert!(!p.bar.is_finished());
        p.on_final_evaluation(Some(&Evaluation { correct: 1, total: 2 }));
        assert!(!p.bar.is_finished(), "only a run that ends without one");
        p.on_final_evaluation(None);
        assert!(p.bar.is_finished());
    }

    /// `cargo xtask finetune --from FILE EXTRA...`, parsed.
    fn finetune_args(file: &Path, extra: &[&str]) -> TrainArgs {
        let mut v = vec!["xtask", "finetune", "--from", file.to_str().unwrap()];
        v.extend_from_slice(extra);
        let crate::Command::Finetune(a) = crate::parse_from(v).unwrap().command else {
            unreachable!()
        };
        a
    }

    #[test]
    fn a_new_head_starts_fresh_even_for_as_many_classes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pre.safetensors");
        dl_models::build("SimpleConvNet", Some(crate::tests::TINY_SIMPLE), 5)
            .unwrap()
            .save_params(&file)
            .unwrap();
        let args = |extra: &[&str]| finetune_args(&file, extra);
        let (_, report) = args(&["--head-classes", "10"]).build_model_reporting().unwrap();
        let report = report.unwrap();
        let skipped: Vec<&str> = report.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["W3", "b3"]);
        let (_, report) = args(&[]).build_model_reporting().unwrap();
        assert!(
            report.unwrap().skipped.is_empty(),
            "without --head-classes the head is loaded"
        );
    }

    #[test]
    fn model_config_beside_from_replaces_the_files_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pre.safetensors");
        let pre = dl_models::build("SimpleConvNet", Some(crate::tests::TINY_SIMPLE), 5).unwrap();
        pre.save_params(&file).unwrap();
        let args = |extra: &[&str]| finetune_args(&file, extra);
        let (net, report) = args(&["--model-config", r#"{"hidden_size": 7}"#])
            .build_model_reporting()
            .unwrap();
        let shape = |name: &str| {
            net.params()
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .shape()
                .to_vec()
        };
        assert_eq!(shape("b2"), [7]);
        let report = report.unwrap();
        let skipped: Vec<&str> = report.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["W2", "W3", "b2"], "the hidden layer's shapes changed");
        let err = args(&["--model-config", r#"{"hiden_size": 7}"#])
            .build_model_reporting()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--model-config") && err.contains("hiden_size"), "{err}");
    }

    #[test]
    fn model_config_replaces_the_default_configurations_fields() {
        let train = |extra: &[&str]| {
            let mut v = vec!["xtask", "train", "--model", "binary"];
            v.extend_from_slice(extra);
            let crate::Command::Train(a) = crate::parse_from(v).unwrap().command else {
                unreachable!()
            };
            a.build_model()
        };
        let net = train(&["--model-config", r#"{"hidden_size": 24}"#]).unwrap();
        let shapes: Vec<(String, Vec<usize>)> =
            net.params().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
        // the hidden layer as asked, the blocks of the default (64 channels last: 7x7x64)
        assert!(
            shapes.contains(&("classifier.0.W".into(), vec![7 * 7 * 64, 24])),
            "{shapes:?}"
        );
        assert_eq!(
            net.param_count(),
            train(&[]).unwrap().param_count() - (7 * 7 * 64 + 2 + 10) * (512 - 24)
        );
        let err = train(&["--model-config", r#"{"hiden_size": 7}"#])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--model-config") && err.contains("hiden_size"), "{err}");
        assert!(train(&["--model-config", "[1]"]).is_err());
    }

    #[test]
    fn time_to_checks_k_times_an_epoch_and_stops_at_the_last_target() {
        // 7 iterations an epoch, 3 epochs (21 iterations), 2 checks an epoch: after
        // iterations 4 and 7 of each epoch (ceil(7/2) = 4)
        let mut w = TimeTo::new(&[99.4, 99.0], 2, 7).unwrap();
        let at: Vec<usize> = (1..=21).filter(|&i| w.evaluate_now(&info(i, 21))).collect();
        assert_eq!(at, [4, 7, 11, 14, 18, 21]);
        // one check an epoch: at its end, and at the run's end whatever the epoch
        let mut one = TimeTo::new(&[99.0], 1, 7).unwrap();
        let at: Vec<usize> = (1..=17).filter(|&i| one.evaluate_now(&info(i, 17))).collect();
        assert_eq!(at, [7, 14, 17]);
        // as many checks as iterations: every one
        let mut all = TimeTo::new(&[99.0], 7, 7).unwrap();
        assert!((1..=14).all(|i| all.evaluate_now(&info(i, 14))));

        let ev = |correct| Evaluation { correct, total: 10_000 };
        assert!(w.on_evaluation(&info(4, 21), &ev(9_899), 0.25).is_continue());
        assert_eq!(w.reached, [None, None]);
        assert_eq!(
            w.last_check_line("", "val"),
            "check at 0.57 epochs  val acc 0.9899  2.0 s train"
        );
        assert!(w.on_evaluation(&info(7, 21), &ev(9_900), 0.25).is_continue());
        assert_eq!(
            w.last_check_line("m0  ", "test"),
            "m0  check at 1.00 epochs  test acc 0.9900  3.5 s train  <- reached 99%"
        );
        let r = w.reached[1].expect("99.0% is 9,900 of 10,000");
        assert_eq!((r.iteration, r.target_percent), (7, 99.0));
        assert_eq!((r.epochs, r.train_seconds, r.check_seconds), (1.0, 3.5, 0.5));
        assert!(w.on_evaluation(&info(11, 21), &ev(9_939), 0.25).is_continue());
        assert!(w.reached[0].is_none());
        // a later, lower check moves nothing; 9,940 reaches 99.4% and ends the run
        assert!(w.on_evaluation(&info(14, 21), &ev(9_940), 0.25).is_break());
        assert!(w
            .last_check_line("", "val")
            .ends_with("acc 0.9940  7.0 s train  <- reached 99.4%"));
        assert_eq!(w.reached[0].unwrap().iteration, 14);
        assert_eq!(w.reached[1].unwrap().iteration, 7);
        assert_eq!(w.checks.len(), 4);
        assert_eq!(w.check_seconds, 1.0);
        let lines = time_to_lines(&w, "test");
        assert!(
            lines[0].starts_with("99.4% on test: 7.0 s of training (2.00 epochs, 14 iterations"),
            "{lines:?}"
        );
        let mut both = TimeTo::new(&[50.0, 60.0], 2, 7).unwrap();
        assert_eq!(both.last_check_line("", "val"), "no check yet");
        assert!(both.on_evaluation(&info(4, 21), &ev(9_000), 0.25).is_break());
        assert!(both.last_check_line("", "val").ends_with("<- reached 50%, 60%"));
        let fresh = TimeTo::new(&[98.0], 2, 7).unwrap();
        assert_eq!(time_to_lines(&fresh, "validation"), ["98% on validation: not reached"]);
    }

    #[test]
    fn lr_factors_parse_and_reach_the_trainer() {
        assert_eq!(parse_lr_factor("layer1=0.1").unwrap(), ("layer1".to_string(), 0.1));
        assert_eq!(parse_lr_factor("=0.5").unwrap(), (String::new(), 0.5));
        assert_eq!(parse_lr_factor("a=b=2").unwrap(), ("a=b".to_string(), 2.0));
        for bad in ["layer1", "x=abc", "x=-1", "x=inf"] {
            assert!(parse_lr_factor(bad).is_err(), "{bad}");
        }
        let mut a = TrainArgs::for_recipe(Recipe::Book, 0);
        assert!(trainer_config(&a).unwrap().lr_groups.pairs().is_empty());
        // --eval-samples 0 scores the whole set each epoch
        assert_eq!(trainer_config(&a).unwrap().evaluate_sample_num_per_epoch, Some(1000));
        a.eval_samples = 0;
        assert_eq!(trainer_config(&a).unwrap().evaluate_sample_num_per_epoch, None);
        assert_eq!((threads_word(1), threads_word(2)), ("thread", "threads"));
        assert_eq!(run_label(Path::new("runs/train-3")), "train-3", "the chart's legend");
        assert_eq!(run_label(Path::new("/")), "/");
        assert_eq!(parse_classes("0-4").unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(parse_classes("5-5, 7").unwrap(), [5, 7], "a range of one digit");
        assert!(parse_classes("6-5").is_err());
        a.lr_factor = vec![("".into(), 0.1), ("fc".into(), 1.0)];
        let g = trainer_config(&a).unwrap().lr_groups;
        assert_eq!((g.factor("layer1.0.conv1.W"), g.factor("fc.W")), (0.1, 1.0));
        // a run.json edited by hand is checked too
        a.lr_factor = vec![("fc".into(), -1.0)];
        assert!(trainer_config(&a).unwrap_err().to_string().contains("--lr-factor"));
        a.lr_factor.clear();
        (a.lr_decay, a.step_size, a.gamma) = (Decay::Step, 1, 0.5);
        let step = Schedule::Step {
            step_size: 1,
            gamma: 0.5,
        };
        assert_eq!(trainer_config(&a).unwrap().lr_schedule, Some(step));
        a.step_size = 0;
        assert!(trainer_config(&a)
            .unwrap_err()
            .to_string()
            .contains("--step-size must be at least 1"));
        a.step_size = 1;
        for decay in [Decay::Step, Decay::Exponential] {
            a.lr_decay = decay;
            for gamma in [0.0, -0.5, f32::NAN, f32::INFINITY] {
                a.gamma = gamma;
                let err = trainer_config(&a).unwrap_err().to_string();
                assert_eq!(err, format!("--gamma {gamma}: must be a finite number above 0"));
            }
            a.gamma = 1e30;
            trainer_config(&a).unwrap().validate().unwrap();
        }
        // --gamma belongs to the step and exponential decays only
        (a.lr_decay, a.gamma) = (Decay::Cosine, 0.0);
        trainer_config(&a).unwrap().validate().unwrap();
        a.epochs = 0;
        assert_eq!(
            trainer_config(&a).unwrap_err().to_string(),
            "--epochs must be at least 1"
        );
        a.epochs = 1;
        trainer_config(&a).unwrap().validate().unwrap();
    }

    /// A run.json written before a flag existed resumes with that flag's default.
    #[test]
    fn a_run_json_without_the_newer_flags_takes_their_defaults() {
        let crate::Command::Train(flags) = crate::parse_from(["xtask", "train"]).unwrap().command else {
            unreachable!()
        };
        let mut json = serde_json::to_value(TrainArgs::for_recipe(Recipe::Book, 0)).unwrap();
        let newer = [
            "checkpoint_every",
            "keep_checkpoints",
            "time_to",
            "checks_per_epoch",
            "micro_batches",
        ];
        for key in newer {
            assert!(json.as_object_mut().unwrap().remove(key).is_some(), "{key}");
        }
        let old: TrainArgs = serde_json::from_value(json).unwrap();
        assert_eq!(
            (
                old.checkpoint_every,
                old.keep_checkpoints,
                old.time_to.len(),
                old.checks_per_epoch,
                old.micro_batches
            ),
            (
                flags.checkpoint_every,
                flags.keep_checkpoints,
                flags.time_to.len(),
                flags.checks_per_epoch,
                flags.micro_batches
            )
        );
        assert_eq!((flags.checkpoint_every, flags.micro_batches), (1, 1));
        assert_eq!(old.reduction, ReductionArg::Ordered);
        assert_eq!(
            dl_mpi::Reduction::from(ReductionArg::Ordered),
            dl_mpi::Reduction::Ordered
        );
        assert_eq!(dl_mpi::Reduction::from(ReductionArg::Native), dl_mpi::Reduction::Native);
        assert_eq!(Vote::from(VoteArg::Mean), Vote::Mean);
        assert_eq!(Vote::from(VoteArg::Majority), Vote::Majority);
    }

    /// Each model kind a file names is trained by one `--model` value, which builds it.
    #[test]
    fn every_model_kind_has_its_model_value() {
        for &m in ModelName::value_variants() {
            let config = dl_models::registry::ModelConfig::default_for(m.kind()).unwrap();
            let name = model_value_name(&config).unwrap();
            assert_eq!(name, value_name(m));
            let Ok(crate::Command::Train(a)) =
                crate::parse_from(["xtask", "train", "--model", &name]).map(|c| c.command)
            else {
                unreachable!("{name}")
            };
            assert_eq!(a.build_model().unwrap().kind(), m.kind(), "{name}");
        }
        assert_eq!(value_name(ModelName::Resnet), "resnet");
    }

    /// `cargo xtask train --seed SEED` and `extra`, parsed.
    fn train_flags(seed: &str, extra: &[&str]) -> Result<TrainArgs, clap::Error> {
        let mut v = vec!["xtask", "train", "--seed", seed];
        v.extend_from_slice(extra);
        crate::parse_from(v).map(|c| match c.command {
            crate::Command::Train(a) => a,
            _ => unreachable!(),
        })
    }

    #[test]
    fn elastic_adds_the_distortion_to_the_augmentation() {
        let parse = |extra: &[&str]| train_flags("4", extra);
        let plain = parse(&["--augment"]).unwrap();
        let steps = |a: &TrainArgs| trainer_config(a).unwrap().augment.map(|p| (p.steps, p.seed));
        assert_eq!(steps(&plain), Some((dl_data::Pipeline::mnist(false, 4).steps, 4)));
        let elastic = parse(&["--augment", "--elastic"]).unwrap();
        assert_eq!(steps(&elastic), Some((dl_data::Pipeline::mnist(true, 4).steps, 4)));
        assert!(elastic.flags().ends_with("--augment --elastic"), "{}", elastic.flags());
        assert!(!plain.flags().contains("--elastic"));
        // it is part of the augmentation, and of the settings a resumed run keeps
        assert!(parse(&["--elastic"]).is_err());
        let json = serde_json::to_string(&elastic).unwrap();
        assert!(serde_json::from_str::<TrainArgs>(&json).unwrap().elastic);
        let mut older: serde_json::Value = serde_json::to_value(&plain).unwrap();
        older.as_object_mut().unwrap().remove("elastic");
        assert!(!serde_json::from_value::<TrainArgs>(older).unwrap().elastic);
    }

    #[test]
    fn deskew_makes_a_network_that_deskews_and_is_kept_on_resume() {
        let parse = |extra: &[&str]| train_flags("3", extra);
        let plain = parse(&["--model", "simple"]).unwrap();
        let a = parse(&["--model", "simple", "--deskew"]).unwrap();
        assert!(a.build_model().unwrap().deskews());
        assert!(!plain.build_model().unwrap().deskews());
        assert!(a.flags().ends_with("--deskew"), "{}", a.flags());
        assert!(!plain.flags().contains("--deskew"));
        let json = serde_json::to_string(&a).unwrap();
        assert!(serde_json::from_str::<TrainArgs>(&json).unwrap().deskew);
        let mut older: serde_json::Value = serde_json::to_value(&plain).unwrap();
        older.as_object_mut().unwrap().remove("deskew");
        assert!(!serde_json::from_value::<TrainArgs>(older).unwrap().deskew);
        assert!(parse(&["--resume", "runs/x", "--deskew"]).is_err());
    }

    #[test]
    fn rotation_shift_and_ema_set_the_augmentation_and_the_average() {
        let parse = |extra: &[&str]| train_flags("2", extra);
        let a = parse(&["--augment", "--rotation", "20", "--shift", "5.6", "--ema", "0.999"]).unwrap();
        let cfg = trainer_config(&a).unwrap();
        let p = cfg.augment.unwrap();
        assert_eq!(p.seed, 2);
        assert_eq!(
            p.steps,
            [
                dl_data::Augment::Rotate { max_degrees: 20.0 },
                dl_data::Augment::Scale { min: 0.9, max: 1.1 },
                dl_data::Augment::Shift { max: 5.6 },
            ]
        );
        assert_eq!(cfg.ema_decay, Some(0.999));
        assert!(
            a.flags().ends_with("--augment --rotation 20 --shift 5.6 --ema 0.999"),
            "{}",
            a.flags()
        );
        // one of them alone leaves the recipe's other value, and elastic after them
        let a = parse(&["--augment", "--elastic", "--shift", "0"]).unwrap();
        let mut want = dl_data::Pipeline::mnist(true, 2).steps;
        want[2] = dl_data::Augment::Shift { max: 0.0 };
        assert_eq!(trainer_config(&a).unwrap().augment.unwrap().steps, want);
        assert_eq!(trainer_config(&a).unwrap().ema_decay, None);
        assert!(!a.flags().contains("--ema") && !a.flags().contains("--rotation"));
        // the ends of the ranges are taken
        let a = parse(&["--augment", "--rotation", "180", "--shift", "14", "--ema", "0"]).unwrap();
        assert!(trainer_config(&a).is_ok());
        // values out of range are refused, naming the flag
        for (bad, flag) in [
            (["--rotation", "180.5"], "--rotation"),
            (["--rotation=-1", "--eval-samples=1000"], "--rotation"),
            (["--rotation", "NaN"], "--rotation"),
            (["--shift", "14.5"], "--shift"),
            (["--shift=-0.5", "--eval-samples=1000"], "--shift"),
            (["--shift", "inf"], "--shift"),
        ] {
            let mut args = vec!["--augment"];
            args.extend_from_slice(&bad);
            let err = trainer_config(&parse(&args).unwrap()).unwrap_err().to_string();
            assert!(err.starts_with(flag) && err.contains("must be from 0 to"), "{err}");
        }
        for bad in ["1", "1.5", "-0.1"] {
            let flag = format!("--ema={bad}");
            let err = trainer_config(&parse(&[&flag]).unwrap()).unwrap_err().to_string();
            assert!(err.starts_with("--ema") && err.contains("below 1"), "{err}");
        }
        // rotation and shift belong to --augment; all three to the settings a resume keeps
        assert!(parse(&["--rotation", "20"]).is_err());
        assert!(parse(&["--shift", "3"]).is_err());
        for flag in [["--rotation", "20"], ["--shift", "3"], ["--ema", "0.9"]] {
            let mut v = vec!["xtask", "train", "--resume", "runs/x"];
            v.extend_from_slice(&flag);
            assert!(crate::parse_from(v).is_err(), "{flag:?}");
        }
        let a = parse(&["--augment", "--rotation", "20", "--ema", "0.99"]).unwrap();
        let back: TrainArgs = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!((back.rotation, back.shift, back.ema), (Some(20.0), None, Some(0.99)));
        let mut older = serde_json::to_value(&a).unwrap();
        for key in ["rotation", "shift", "ema"] {
            older.as_object_mut().unwrap().remove(key);
        }
        let older: TrainArgs = serde_json::from_value(older).unwrap();
        assert_eq!((older.rotation, older.shift, older.ema), (None, None, None));
    }

    #[test]
    fn time_to_refuses_impossible_settings() {
        for bad in [0.0, -1.0, 100.5, f64::NAN] {
            let err = TimeTo::new(&[99.0, bad], 2, 10).err().expect("refused").to_string();
            assert!(err.contains("percentage"), "{err}");
        }
        assert!(TimeTo::new(&[100.0], 2, 10).is_ok());
        for checks in [0, 11] {
            let err = TimeTo::new(&[99.0], checks, 10).err().expect("refused").to_string();
            assert!(err.contains("--checks-per-epoch"), "{err}");
        }
        assert!(TimeTo::new(&[99.0], 10, 10).is_ok());
    }

    #[test]
    fn the_fast_recipe_sets_what_the_flags_leave_unset() {
        let book = TrainArgs::for_recipe(Recipe::Book, 3);
        assert_eq!((book.epochs, book.batch_size, book.lr, book.seed), (20, 100, 0.001, 3));
        assert!(book.model_config.is_none());
        let fast = TrainArgs::for_recipe(Recipe::Fast, 0);
        assert_eq!((fast.epochs, fast.batch_size, fast.lr), (3, 128, 0.2));
        assert_eq!((fast.optimizer.as_str(), fast.weight_decay), ("nesterov", 5e-4));
        assert!(matches!(fast.lr_decay, Decay::OneCycle));
        let net = fast.build_model().unwrap();
        assert_eq!(net.kind(), "DeepConvNet");
        let bn = net.params().iter().filter(|(n, _)| n.contains("gamma")).count();
        assert_eq!(bn, 7, "batch norm after the six convolutions and the hidden layer");
        assert_eq!(net.param_count(), 204_986, "a hidden layer of 128");
        assert_eq!(
            fast.flags(),
            format!(
                "--model deep --model-config '{FAST_MODEL_CONFIG}' --epochs 3 --batch-size 128 --optimizer nesterov \
                 --lr 0.2 --weight-decay 0.0005 --lr-decay one-cycle"
            )
        );
        // the quick recipe: 2 epochs at a higher rate, of the network at half width
        let quick = TrainArgs::for_recipe(Recipe::Quick, 0);
        assert_eq!((quick.epochs, quick.batch_size, quick.lr), (2, 128, 0.3));
        assert_eq!((quick.optimizer.as_str(), quick.weight_decay), ("nesterov", 5e-4));
        assert!(matches!(quick.lr_decay, Decay::OneCycle));
        let small = quick.build_model().unwrap();
        assert_eq!(small.kind(), "DeepConvNet");
        assert_eq!(small.params().iter().filter(|(n, _)| n.contains("gamma")).count(), 7);
        let w1 = small
            .params()
            .iter()
            .find(|(n, _)| n == "W1")
            .map(|(_, p)| p.shape().to_vec());
        assert_eq!(w1, Some(vec![8, 1, 3, 3]), "half of the fast network's 16 filters");
        assert_eq!(small.param_count(), 85_474);
        assert_eq!(
            quick.flags(),
            format!(
                "--model deep --model-config '{QUICK_MODEL_CONFIG}' --epochs 2 --batch-size 128 --optimizer nesterov \
                 --lr 0.3 --weight-decay 0.0005 --lr-decay one-cycle"
            )
        );
        // --epochs given to the bench's recipe wins, and the recipe sets the rest
        let five = TrainArgs::for_recipe_watching(Recipe::Fast, 0, Vec::new(), 2, None, Some(5));
        assert_eq!((five.epochs, five.batch_size, five.lr), (5, 128, 0.2));
        // a flag given beside the recipe wins
        let mut mine = fast.clone();
        mine.epochs = 5;
        mine.apply_recipe(&|id| id == "epochs");
        assert_eq!((mine.epochs, mine.lr), (5, 0.2));
        // from a file: the file's model, the recipe's training
        let mut tune = TrainArgs::for_recipe(Recipe::Book, 0);
        tune.recipe = Some(Recipe::Fast);
        tune.from = Some("pre.safetensors".into());
        tune.apply_recipe(&|_| false);
        assert!(tune.model_config.is_none(), "{:?}", tune.model_config);
        assert_eq!((tune.epochs, tune.lr), (3, 0.2));
        // a bad configuration is an error, not a panic
        let mut bad = fast.clone();
        bad.model_config = Some("{\"hidden_size\": \"three\"}".into());
        assert!(bad.build_model().unwrap_err().to_string().contains("--model-config"));
    }

    #[test]
    fn a_new_run_never_lands_in_a_folder_that_holds_files_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("train");
        // missing, then empty: the base itself
        assert_eq!(new_run_folder(None, false, &base).unwrap(), base);
        std::fs::create_dir_all(&base).unwrap();
        assert_eq!(new_run_folder(None, false, &base).unwrap(), base);
        // taken: the next free number
        std::fs::write(base.join("params.safetensors"), b"x").unwrap();
        let second = dir.path().join("train-2");
        assert_eq!(new_run_folder(None, false, &base).unwrap(), second);
        std::fs::create_dir_all(second.join("checkpoints")).unwrap();
        assert_eq!(new_run_folder(None, false, &base).unwrap(), dir.path().join("train-3"));
        // an explicit folder: refused while it holds files, unless --overwrite
        let err = new_run_folder(Some(&base), false, &base).unwrap_err().to_string();
        assert!(err.contains("--overwrite") && err.contains("--resume"), "{err}");
        assert_eq!(new_run_folder(Some(&base), true, &base).unwrap(), base);
        let fresh = dir.path().join("fresh");
        assert_eq!(new_run_folder(Some(&fresh), false, &base).unwrap(), fresh);
        // a path that cannot be listed is an error, not "free"
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(new_run_folder(Some(&file), false, &base).is_err());
    }
}
