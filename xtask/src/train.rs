use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use dl_data::{ImageSet, Mnist};
use dl_models::Network;
use dl_train::{
    evaluate, train_ensemble, EpochRecord, Evaluation, IterationInfo, Observer, ReduceOnPlateau, Schedule, Trainer,
    TrainerConfig, Unit, Vote,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::CliError;

#[derive(Clone, Copy, Debug, ValueEnum)]
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
        }
    }

    /// The model with its default configuration, every random part fixed by `seed`.
    pub fn build(self, seed: u64) -> Network {
        dl_models::build(self.kind(), None, seed).expect("the default configurations build")
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Decay {
    None,
    Step,
    Exponential,
    Cosine,
    OneCycle,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Network to train.
    #[arg(long, value_enum, default_value = "deep")]
    model: ModelName,
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
    /// Seed of initial weights, dropout masks and batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images of each set evaluated after every epoch (0: all).
    #[arg(long, default_value_t = 1000)]
    eval_samples: usize,
    /// Train on the first N training images only.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Learning-rate decay: none, step, exponential, cosine, one-cycle.
    #[arg(long, value_enum, default_value = "none")]
    lr_decay: Decay,
    /// Step the decay per epoch rather than per iteration.
    #[arg(long)]
    decay_per_epoch: bool,
    /// Decay factor (step: per drop; exponential: per step).
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
    /// Halve the rate when the per-epoch test accuracy has not improved for N epochs.
    #[arg(long)]
    plateau_patience: Option<usize>,
    /// Folder with the MNIST files (default: the shipped copy).
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
    /// member-{i}.safetensors, member-{i}-history.json and ensemble.json.
    #[arg(long, value_name = "K")]
    ensemble: Option<usize>,
    /// Ensemble members trained at once, each on an equal share of the threads (the
    /// members come out the same either way).
    #[arg(long, default_value_t = 1, value_name = "P")]
    parallel: usize,
    /// How the ensemble combines its members for the final figure.
    #[arg(long, value_enum, default_value = "mean")]
    vote: VoteArg,
    /// Folder for params.safetensors and history.json (or the ensemble's files).
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
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

/// A progress bar with loss, images/s and time left (drawn only on a terminal), and a
/// line per epoch.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    images: usize,
    /// Put before each epoch line ("member 2  "), empty for a single run.
    prefix: String,
    /// What the per-epoch evaluation set is called: "test" or "val".
    eval_name: &'static str,
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
            prefix,
            eval_name,
        }
    }
}

impl Observer for Progress {
    fn on_iteration(&mut self, info: &IterationInfo) {
        self.images += info.batch;
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
        let line = format!(
            "{}epoch {:>3}  loss {:.4}  train acc {:.4}  {} acc {:.4}  lr {}  {:.1} s train ({:.0} img/s)  {:.1} s total",
            self.prefix,
            r.epoch,
            r.train_loss,
            r.train_acc,
            self.eval_name,
            r.test_acc,
            r.lr,
            r.train_seconds,
            self.images as f64 / r.epoch as f64 / r.train_seconds,
            r.elapsed_seconds
        );
        self.bar.suspend(|| println!("{line}"));
    }

    fn on_final_evaluation(&mut self, done: Option<&Evaluation>) {
        if done.is_none() {
            self.bar.finish_and_clear();
        }
    }
}

/// The trainer settings the flags ask for.
fn trainer_config(a: &TrainArgs) -> TrainerConfig {
    TrainerConfig {
        epochs: a.epochs,
        mini_batch_size: a.batch_size,
        optimizer: a.optimizer.clone(),
        lr: a.lr,
        evaluate_sample_num_per_epoch: (a.eval_samples > 0).then_some(a.eval_samples),
        seed: a.seed,
        verbose: false,
        lr_schedule: match a.lr_decay {
            Decay::None => None,
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
        augment: a.augment.then(|| dl_data::Pipeline::mnist(false, a.seed)),
    }
}

fn threads_word(n: usize) -> &'static str {
    if n == 1 {
        "thread"
    } else {
        "threads"
    }
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), CliError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| CliError::Other(e.to_string()))?;
    dl_tensor::fs::atomic_write(path, &json).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
}

pub fn run(a: TrainArgs) -> Result<(), CliError> {
    if a.ensemble == Some(0) {
        return Err(CliError::Other("--ensemble needs at least one member".into()));
    }
    if a.parallel == 0 {
        return Err(CliError::Other("--parallel must be at least 1".into()));
    }
    if a.ensemble.is_none() && a.parallel > 1 {
        return Err(CliError::Other("--parallel applies to --ensemble runs only".into()));
    }
    let data = a.data.clone().unwrap_or_else(crate::default_data_dir);
    let load_start = Instant::now();
    let mut mnist = Mnist::load(&data)?;
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
    println!(
        "MNIST from {}: {} train, {}{} test images ({:.1} s)",
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
    let config = trainer_config(&a);
    let probe = a.model.build(a.seed);
    let threads = rayon::current_num_threads();
    println!(
        "{} ({} parameters), {} epoch{}, batch {}, {} lr {}, seed {}, {} {}",
        probe.kind(),
        probe.param_count(),
        config.epochs,
        if config.epochs == 1 { "" } else { "s" },
        config.mini_batch_size,
        config.optimizer,
        config.lr,
        config.seed,
        threads,
        threads_word(threads)
    );
    std::fs::create_dir_all(&a.out).map_err(|e| CliError::Other(format!("{}: {e}", a.out.display())))?;
    match a.ensemble {
        None => train_one(&a, probe, &mnist, validation.as_ref(), config),
        Some(k) => train_many(&a, k, &mnist, validation.as_ref(), config),
    }
}

fn train_one(
    a: &TrainArgs,
    mut net: Network,
    mnist: &Mnist,
    validation: Option<&ImageSet>,
    config: TrainerConfig,
) -> Result<(), CliError> {
    let mut progress = Progress::new(String::new(), false, if validation.is_some() { "val" } else { "test" });
    let eval_set = validation.unwrap_or(&mnist.test);
    let history = Trainer::new(&mut net, &mnist.train, eval_set, config)?.train_with(&mut progress)?;
    let params = a.out.join("params.safetensors");
    net.save_params(&params)?;
    let hist = a.out.join("history.json");
    write_json(&hist, &history)?;
    println!(
        "wrote {} and {} ({:.1} s in all, peak memory {:.0} MiB)",
        params.display(),
        hist.display(),
        history.total_seconds,
        crate::bench::peak_rss_mib()
    );
    if validation.is_some() {
        println!("validation accuracy: {}", history.test_evaluation);
        println!("test accuracy: {}", evaluate(&mut net, &mnist.test, None, 100)?);
    } else {
        println!("test accuracy: {}", history.test_evaluation);
    }
    Ok(())
}

fn train_many(
    a: &TrainArgs,
    k: usize,
    mnist: &Mnist,
    validation: Option<&ImageSet>,
    config: TrainerConfig,
) -> Result<(), CliError> {
    let parallel = a.parallel.min(k);
    let per_member = (rayon::current_num_threads() / parallel).max(1);
    println!(
        "ensemble of {k}: seeds {}..={}, {parallel} at a time on {per_member} {} each",
        config.seed,
        config.seed.wrapping_add(k as u64 - 1),
        threads_word(per_member)
    );
    let start = Instant::now();
    let model = a.model;
    let eval_name = if validation.is_some() { "val" } else { "test" };
    let run = train_ensemble(
        |_, seed| model.build(seed),
        &mnist.train,
        validation.unwrap_or(&mnist.test),
        &config,
        k,
        parallel,
        |i| Progress::new(format!("member {i}  "), parallel > 1, eval_name),
    )?;
    for (i, h) in run.histories.iter().enumerate() {
        println!(
            "member {i} (seed {}): {eval_name} accuracy {} ({:.1} s)",
            run.seeds[i], h.test_evaluation, h.total_seconds
        );
        write_json(&a.out.join(format!("member-{i}-history.json")), h)?;
    }
    let mut ensemble = run.ensemble;
    let ev = ensemble.evaluate(&mnist.test, None, 100)?;
    let vote = Vote::from(a.vote);
    let description = crate::command_line("train");
    let m = ensemble.save(&a.out, vote, Some(&run.seeds), Some(&ev), &description)?;
    println!("ensemble, mean of softmax: {}", ev.mean);
    println!("ensemble, majority vote:   {}", ev.majority);
    println!(
        "wrote {} members and {} ({:.1} s in all, peak memory {:.0} MiB)",
        m.members.len(),
        a.out.join(dl_train::ensemble::MANIFEST_FILE).display(),
        start.elapsed().as_secs_f64(),
        crate::bench::peak_rss_mib()
    );
    println!("test accuracy: {}", ev.by(vote));
    Ok(())
}
