use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use dl_data::Mnist;
use dl_models::{DeepConvNet, DeepConvNetConfig, Network, SimpleConvNet, SimpleConvNetConfig};
use dl_train::{
    EpochRecord, Evaluation, IterationInfo, Observer, ReduceOnPlateau, Schedule, Trainer, TrainerConfig, Unit,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::CliError;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModelName {
    /// The book's chapter 8 DeepConvNet.
    Deep,
    /// The book's chapter 7 SimpleConvNet.
    Simple,
}

impl ModelName {
    pub fn build(self, seed: u64) -> Network {
        match self {
            ModelName::Deep => DeepConvNet::new(DeepConvNetConfig::default(), seed).into_network(),
            ModelName::Simple => SimpleConvNet::new(SimpleConvNetConfig::default(), seed).into_network(),
        }
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
    /// Folder for params.safetensors and history.json.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
}

/// A progress bar with loss, images/s and time left (drawn only on a terminal), and a
/// line per epoch.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    images: usize,
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
            "epoch {:>3}  loss {:.4}  train acc {:.4}  test acc {:.4}  lr {}  {:.1} s train ({:.0} img/s)  {:.1} s total",
            r.epoch,
            r.train_loss,
            r.train_acc,
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

pub fn run(a: TrainArgs) -> Result<(), CliError> {
    let data = a.data.unwrap_or_else(crate::default_data_dir);
    let load_start = Instant::now();
    let mut mnist = Mnist::load(&data)?;
    if let Some(n) = a.train_limit {
        mnist.train = mnist.train.take(n);
    }
    println!(
        "MNIST from {}: {} train, {} test images ({:.1} s)",
        data.display(),
        mnist.train.len(),
        mnist.test.len(),
        load_start.elapsed().as_secs_f64()
    );
    let mut net = a.model.build(a.seed);
    let config = TrainerConfig {
        epochs: a.epochs,
        mini_batch_size: a.batch_size,
        optimizer: a.optimizer,
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
        augment: a.augment.then(|| crate::preview::recipe(false, a.seed)),
    };
    println!(
        "{} ({} parameters), {} epochs, batch {}, {} lr {}, seed {}, {} threads",
        net.kind(),
        net.param_count(),
        config.epochs,
        config.mini_batch_size,
        config.optimizer,
        config.lr,
        config.seed,
        rayon::current_num_threads()
    );
    std::fs::create_dir_all(&a.out).map_err(|e| CliError::Other(format!("{}: {e}", a.out.display())))?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} it  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    let mut progress = Progress {
        bar,
        started: Instant::now(),
        images: 0,
    };
    let history = Trainer::new(&mut net, &mnist.train, &mnist.test, config)?.train_with(&mut progress)?;
    let params = a.out.join("params.safetensors");
    net.save_params(&params)?;
    let json = serde_json::to_vec_pretty(&history).map_err(|e| CliError::Other(e.to_string()))?;
    let hist = a.out.join("history.json");
    dl_tensor::fs::atomic_write(&hist, &json).map_err(|e| CliError::Other(format!("{}: {e}", hist.display())))?;
    println!(
        "wrote {} and {} ({:.1} s in all, peak memory {:.0} MiB)",
        params.display(),
        hist.display(),
        history.total_seconds,
        crate::bench::peak_rss_mib()
    );
    println!("test accuracy: {}", history.test_evaluation);
    Ok(())
}
