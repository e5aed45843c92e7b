use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use dl_data::{BatchOrder, ImageSet, Pipeline};
use dl_layers::{Labels, Tensor};
use dl_models::{ModelError, Network};
use dl_optim::{LrGroups, OptimError, Optimizer, OptimizerState, WeightAverage, AVERAGE_SLOT};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, TrainerState};
use crate::distributed::{self, Distributed};
use crate::{evaluate, Evaluation, ReduceOnPlateau, Schedule, Unit};

/// What can stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The optimizer settings are invalid.
    #[error(transparent)]
    Optimizer(#[from] OptimError),
    /// The network refused the data.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A setting outside its range.
    #[error("invalid trainer setting: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint that cannot be resumed: not a checkpoint, another format, another
    /// run's settings.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error("the training loss diverged ({loss}) at iteration {iteration}; lower the learning rate")]
    Diverged {
        /// The loss.
        loss: f32,
        /// 1-based iteration.
        iteration: usize,
    },
    /// Data-parallel ranks whose parameters no longer agree (a rank computed something
    /// the others did not).
    #[error("the ranks' parameters differ after iteration {iteration} (checksums {checksums:x?})")]
    ReplicasDiverged {
        /// 1-based iteration.
        iteration: usize,
        /// Every rank's checksum, in rank order.
        checksums: Vec<u64>,
    },
}

/// The book's `Trainer` arguments, plus the seed that fixes the batch order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per mini-batch.
    pub mini_batch_size: usize,
    /// Optimizer by the book's name: `sgd`, `momentum`, `nesterov`, `adagrad`,
    /// `rmsprop`, `adam`.
    pub optimizer: String,
    /// Learning rate.
    pub lr: f32,
    /// L2 weight decay on the weights (not on biases or batch norm's parameters).
    #[serde(default)]
    pub weight_decay: f32,
    /// Images of each set used for the per-epoch accuracies (all when `None`).
    pub evaluate_sample_num_per_epoch: Option<usize>,
    /// Seed of the batch order.
    pub seed: u64,
    /// Print the book's per-epoch lines to stdout.
    pub verbose: bool,
    /// Learning-rate decay (constant when `None`).
    #[serde(default)]
    pub lr_schedule: Option<Schedule>,
    /// Whether the schedule steps per iteration or per epoch.
    #[serde(default = "default_unit")]
    pub schedule_unit: Unit,
    /// Reduce the rate when the per-epoch evaluation accuracy stops improving.
    #[serde(default)]
    pub reduce_on_plateau: Option<ReduceOnPlateau>,
    /// Stop when the per-epoch evaluation accuracy has not improved for this many epochs.
    #[serde(default)]
    pub early_stop_patience: Option<usize>,
    /// Data augmentation applied to every training mini-batch (never to labels, never
    /// to evaluation).
    #[serde(default)]
    pub augment: Option<Pipeline>,
    /// Learning-rate factors per parameter group, by parameter name prefix (a
    /// pretrained backbone at a fraction of the new head's rate).
    #[serde(default)]
    pub lr_groups: LrGroups,
    /// Computes each mini-batch's gradient in this many consecutive slices, one after
    /// the other, and adds them up (gradient accumulation: the memory of a smaller
    /// batch). On `R` data-parallel ranks the mini-batch is cut into `R x micro_batches`
    /// slices, each rank taking `micro_batches` consecutive ones and adding them up in
    /// order, then the ranks' sums are added in rank order: so `R` ranks with 1 and one
    /// process with `R` give the same parameters, bit for bit.
    #[serde(default = "one")]
    pub micro_batches: usize,
    /// Keep an exponential moving average of the trained parameters with this decay
    /// ([`WeightAverage`]; 0.999 as An et al. 2020 train their MNIST networks): the
    /// per-epoch evaluations, the best checkpoint, the final evaluation and the network
    /// the Trainer hands back have the averages in place of the parameters (batch
    /// norm's running statistics stay the network's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f32>,
}

fn default_unit() -> Unit {
    Unit::Iteration
}

impl Default for TrainerConfig {
    /// The book's `train_deepnet.py`: 20 epochs, batch 100, Adam lr 0.001, 1000
    /// evaluation samples per epoch.
    fn default() -> Self {
        Self {
            epochs: 20,
            mini_batch_size: 100,
            optimizer: "adam".into(),
            lr: 0.001,
            weight_decay: 0.0,
            evaluate_sample_num_per_epoch: Some(1000),
            seed: 0,
            verbose: false,
            lr_schedule: None,
            schedule_unit: Unit::Iteration,
            reduce_on_plateau: None,
            early_stop_patience: None,
            augment: None,
            lr_groups: LrGroups::new(),
            micro_batches: 1,
            ema_decay: None,
        }
    }
}

impl TrainerConfig {
    /// Refuses what [`Trainer::new`] refuses whatever the data: 0 epochs, a mini-batch
    /// size, a micro-batch count, an evaluation sample count or an early-stop patience
    /// of 0, an optimizer name, rate or weight decay [`dl_optim::by_name_with_decay`]
    /// does not take, a schedule or plateau rule their `validate` refuses
    /// ([`Schedule::validate`], [`ReduceOnPlateau::validate`]), a moving-average decay
    /// outside `[0, 1)`. A program checks them with this before it writes anything for
    /// the run.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.epochs == 0 {
            return Err(TrainError::Config("epochs must be at least 1".into()));
        }
        if self.mini_batch_size == 0 {
            return Err(TrainError::Config("mini-batch size must be at least 1".into()));
        }
        if self.micro_batches == 0 {
            return Err(TrainError::Config("micro-batches must be at least 1".into()));
        }
        if self.evaluate_sample_num_per_epoch == Some(0) {
            return Err(TrainError::Config(
                "evaluation samples per epoch must be at least 1 (None for all)".into(),
            ));
        }
        if self.early_stop_patience == Some(0) {
            return Err(TrainError::Config(
                "early-stop patience must be at least 1 epoch".into(),
            ));
        }
        dl_optim::by_name_with_decay(&self.optimizer, self.lr, self.weight_decay)?;
        if let Some(schedule) = &self.lr_schedule {
            schedule.validate()?;
        }
        if let Some(plateau) = &self.reduce_on_plateau {
            plateau.validate()?;
        }
        if let Some(decay) = self.ema_decay {
            WeightAverage::new(decay)?;
        }
        Ok(())
    }
}

/// One epoch of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's mini-batches.
    pub train_loss: f32,
    /// Accuracy on the training sample.
    pub train_acc: f64,
    /// Accuracy on the test sample.
    pub test_acc: f64,
    /// Learning rate used in the epoch.
    pub lr: f32,
    /// Seconds of training (evaluation excluded) in the epoch.
    pub train_seconds: f64,
    /// Wall-clock seconds since training started, at the end of the epoch.
    pub elapsed_seconds: f64,
}

/// Everything a run learned about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The settings of the run.
    pub config: TrainerConfig,
    /// The loss of every iteration (the book's `train_loss_list`).
    pub train_loss_list: Vec<f32>,
    /// One record per epoch.
    pub epochs: Vec<EpochRecord>,
    /// Full test-set accuracy at the end.
    pub test_accuracy: f64,
    /// Correct / total on the full test set.
    pub test_evaluation: Evaluation,
    /// Wall-clock seconds of the whole run (of all its parts, when it was resumed).
    pub total_seconds: f64,
    /// Rayon threads used.
    pub threads: usize,
    /// What the per-epoch accuracy (`test_acc`) was measured on, `"validation"` or
    /// `"test"`, when the caller recorded it (the [`Trainer`] only sees "an evaluation
    /// set"; `cargo xtask train` fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_on: Option<String>,
    /// Data-parallel ranks that shared the run (1: one process).
    #[serde(default = "one")]
    pub ranks: usize,
    /// Seconds this rank spent in the gradients' all-reduce (0 in one process).
    #[serde(default)]
    pub communication_seconds: f64,
}

fn one() -> usize {
    1
}

/// Progress of one iteration, for an [`Observer`].
#[derive(Debug, Clone, Copy)]
pub struct IterationInfo {
    /// 1-based iteration.
    pub iteration: usize,
    /// Total iterations of the run.
    pub max_iter: usize,
    /// 1-based epoch.
    pub epoch: usize,
    /// This mini-batch's loss.
    pub loss: f32,
    /// Images in the mini-batch.
    pub batch: usize,
    /// Seconds spent training so far in the run, this iteration included: the forward
    /// and backward passes, the updates and the batch assembly, never an evaluation (of
    /// all the run's parts, when it was resumed).
    pub train_seconds: f64,
}

/// Receives progress while a [`Trainer`] runs (a progress bar, a log, a plot).
pub trait Observer {
    /// After every iteration.
    fn on_iteration(&mut self, _info: &IterationInfo) {}
    /// After every epoch's evaluation.
    fn on_epoch(&mut self, _record: &EpochRecord) {}
    /// Before and after the final full test evaluation.
    fn on_final_evaluation(&mut self, _done: Option<&Evaluation>) {}
    /// Asked after every iteration: evaluate the network on the whole evaluation set
    /// now? (Time to a given accuracy checks at every half epoch, say.) The evaluation
    /// changes nothing in the run: the parameters come out the same with or without it.
    fn evaluate_now(&mut self, _info: &IterationInfo) -> bool {
        false
    }
    /// The evaluation [`Observer::evaluate_now`] asked for, and the seconds it took.
    /// [`ControlFlow::Break`] ends the run here (the final evaluation still follows).
    fn on_evaluation(&mut self, _info: &IterationInfo, _evaluation: &Evaluation, _seconds: f64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// No progress reports.
struct Silent;
impl Observer for Silent {}

/// Where and how often a [`Trainer`] writes checkpoints ([`crate::checkpoint`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPolicy {
    /// The folder of the checkpoints (and of `best.safetensors`).
    pub dir: PathBuf,
    /// A checkpoint after every this many epochs (and after the last one).
    pub every: usize,
    /// How many of the newest checkpoints to keep (0: all).
    pub keep: usize,
    /// Also keep the parameters of the epoch with the best evaluation accuracy as
    /// `best.safetensors`.
    pub keep_best: bool,
}

/// The file [`CheckpointPolicy::keep_best`] writes.
pub const BEST_FILE: &str = "best.safetensors";

/// The gradient of the mean loss over `total` samples restricted to the samples `idx`,
/// which sit from `first` on in the iteration's mini-batch (the whole batch: `first` 0,
/// `total` its length): the batch assembled in `bufs`, augmented with the draws of its
/// place, dropout told the iteration and the offset. Returns the slice's mean loss.
#[allow(clippy::too_many_arguments)]
fn slice_gradient(
    network: &mut Network,
    train: &ImageSet,
    augment: Option<&Pipeline>,
    idx: &[usize],
    first: usize,
    total: usize,
    iteration: u64,
    (xbuf, tbuf): &mut (Vec<f32>, Vec<usize>),
) -> Result<f32, TrainError> {
    train.fill_batch(idx, xbuf, tbuf);
    if let Some(p) = augment {
        p.apply_slice_chw(xbuf, train.channels, train.height, train.width, iteration, first as u64);
    }
    let x = Tensor::from_shape_vec(train.batch_shape(idx.len()), std::mem::take(xbuf)).expect("batch shape");
    network.set_iteration(iteration);
    network.set_batch_offset(first as u64);
    Ok(network.gradient_of_slice(x, Labels::Indices(tbuf), total)?)
}

/// The book's `Trainer`: mini-batch training of a network with an optimizer.
///
/// The per-epoch evaluation set (`test` here, as the book names it) steers
/// reduce-on-plateau, early stopping and the best checkpoint: give it a validation split
/// held out of the training images to keep the test set out of every choice.
pub struct Trainer<'a> {
    network: &'a mut Network,
    train: &'a ImageSet,
    test: &'a ImageSet,
    config: TrainerConfig,
    optimizer: Box<dyn Optimizer>,
    checkpoints: Option<CheckpointPolicy>,
    resumed: Option<TrainerState>,
    dist: Option<Distributed<'a>>,
    average: Option<WeightAverage>,
}

impl<'a> Trainer<'a> {
    /// A trainer for `network` on `train`, evaluated on `test`.
    pub fn new(
        network: &'a mut Network,
        train: &'a ImageSet,
        test: &'a ImageSet,
        config: TrainerConfig,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if train.is_empty() {
            return Err(TrainError::Config("the training set is empty".into()));
        }
        let mut optimizer = dl_optim::by_name_with_decay(&config.optimizer, config.lr, config.weight_decay)?;
        optimizer.set_lr_groups(config.lr_groups.clone());
        let average = config.ema_decay.map(WeightAverage::new).transpose()?;
        Ok(Self {
            network,
            train,
            test,
            config,
            optimizer,
            checkpoints: None,
            resumed: None,
            dist: None,
            average,
        })
    }

    /// Writes checkpoints as `policy` says (none by default).
    pub fn with_checkpoints(mut self, policy: CheckpointPolicy) -> Result<Self, TrainError> {
        if policy.every == 0 {
            return Err(TrainError::Config("checkpoints every 0 epochs".into()));
        }
        self.checkpoints = Some(policy);
        Ok(self)
    }

    /// Continues the run `checkpoint` was written by: loads the network's parameters and
    /// the optimizer's state, and starts after the checkpoint's epoch. The run then ends
    /// exactly as it would have without the stop: the same parameters, bit for bit.
    /// Call it after [`Trainer::with_optimizer`], on a network built as the run's was
    /// (the same model, configuration and seed: the seed also fixes the dropout layers'
    /// streams, which are not in the file). On an error (settings other than the
    /// checkpoint's, a network or optimizer the file does not fit) nothing is changed.
    pub fn resume(mut self, checkpoint: &Checkpoint) -> Result<Self, TrainError> {
        let state = &checkpoint.trainer;
        let path = &checkpoint.path;
        let bad = |message: String| TrainError::Checkpoint {
            path: path.clone(),
            message,
        };
        let mut theirs = state.config.clone();
        theirs.verbose = self.config.verbose;
        if theirs != self.config {
            return Err(bad(format!(
                "written with other settings: {}, not {}",
                serde_json::to_string(&state.config).unwrap_or_default(),
                serde_json::to_string(&self.config).unwrap_or_default()
            )));
        }
        if state.epoch > self.config.epochs || state.epochs.len() != state.epoch {
            return Err(bad(format!(
                "{} epochs done ({} records) of {}",
                state.epoch,
                state.epochs.len(),
                self.config.epochs
            )));
        }
        // the network's part first into a copy, so that a failure changes nothing
        let mut net = self.network.clone();
        net.load_params_from_bytes(&checkpoint.bytes, path)?;
        let slot = format!("{AVERAGE_SLOT}/");
        let OptimizerState {
            optimizer,
            steps,
            tensors,
        } = checkpoint.optimizer.clone();
        let (averages, tensors) = tensors.into_iter().partition(|(k, _)| k.starts_with(&slot));
        let optimizer_state = OptimizerState {
            optimizer,
            steps,
            tensors,
        };
        let mut average = self.average.clone();
        if let Some(avg) = average.as_mut() {
            let state = OptimizerState {
                optimizer: WeightAverage::NAME.into(),
                steps: state.iteration as u64,
                tensors: averages,
            };
            let mut trained = net.params_and_grads();
            let params: Vec<(String, &Tensor)> = trained.iter_mut().map(|p| (p.name.clone(), &*p.value)).collect();
            if state.tensors.len() != params.len() {
                return Err(bad(format!(
                    "{} of the {} trained parameters have a moving average",
                    state.tensors.len(),
                    params.len()
                )));
            }
            avg.load_state(&state, &params).map_err(|e| bad(e.to_string()))?;
        } else if !averages.is_empty() {
            return Err(bad("moving averages of a run that keeps none".into()));
        }
        self.optimizer
            .load_state(&optimizer_state, &net.params())
            .map_err(|e| bad(e.to_string()))?;
        *self.network = net;
        self.average = average;
        self.resumed = Some(state.clone());
        Ok(self)
    }

    /// Trains as one rank of a data-parallel group ([`crate::distributed`]): every
    /// rank calls it with the same network, data and settings, and each computes its
    /// slice of every mini-batch. Rank 0 alone evaluates, prints and writes checkpoints;
    /// the others get its figures. [`Observer::evaluate_now`] is not asked.
    pub fn distributed(mut self, dist: Distributed<'a>) -> Self {
        self.dist = Some(dist);
        self
    }

    /// Replaces the optimizer built from the configuration (for settings beyond the
    /// learning rate).
    pub fn with_optimizer(mut self, optimizer: Box<dyn Optimizer>) -> Self {
        self.optimizer = optimizer;
        self
    }

    /// The network as it is evaluated and saved: a copy with the moving averages in
    /// place of the parameters, when the run keeps them ([`TrainerConfig::ema_decay`]);
    /// without the training step's activations ([`Network::clone_for_inference`]).
    fn averaged(&self) -> Option<Network> {
        let avg = self.average.as_ref()?;
        let mut net = self.network.clone_for_inference();
        avg.copy_to(&mut net.params_and_grads());
        Some(net)
    }

    /// The book's `train()`, silently.
    pub fn train(self) -> Result<History, TrainError> {
        self.train_with(&mut Silent)
    }

    /// `train()`, reporting progress to `observer`.
    pub fn train_with(mut self, observer: &mut dyn Observer) -> Result<History, TrainError> {
        // Denormal numbers in gradients and Adam's moments fall onto a slow path;
        // flush them on every thread that computes.
        rayon::broadcast(|_| dl_tensor::flush_denormals_to_zero());
        dl_tensor::flush_denormals_to_zero();

        let cfg = self.config.clone();
        let dist = self.dist;
        let (rank, ranks) = dist.map_or((0, 1), |d| (d.comm.rank(), d.comm.size()));
        let root = rank == 0;
        if let Some(d) = dist {
            // the same network on every rank, or a clear error on every rank
            let mut size = 0u64;
            self.network.visit_state_mut(|t| size += t.len() as u64);
            let sizes = d.comm.all_gather_u64(size);
            if sizes.iter().any(|&s| s != size) {
                return Err(TrainError::Config(format!(
                    "the ranks hold different networks: {sizes:?} values (parameters and buffers) by rank"
                )));
            }
            distributed::broadcast_network(d.comm, self.network);
        }
        let mut communication_seconds = 0.0f64;
        let mut flat: Vec<f32> = Vec::new();
        let order = BatchOrder::new(self.train.len(), cfg.mini_batch_size, cfg.seed);
        let iter_per_epoch = order.batches_per_epoch();
        let max_iter = iter_per_epoch * cfg.epochs;
        let start = Instant::now();
        let mut state = self.resumed.take().unwrap_or_else(|| TrainerState {
            config: cfg.clone(),
            epoch: 0,
            iteration: 0,
            base_lr: cfg.lr,
            plateau: None,
            best: None,
            train_loss_list: Vec::with_capacity(max_iter),
            epochs: Vec::with_capacity(cfg.epochs),
            elapsed_seconds: 0.0,
        });
        let elapsed_before = state.elapsed_seconds;
        let mut train_seconds: f64 = state.epochs.iter().map(|r| r.train_seconds).sum();
        let mut bufs = (Vec::new(), Vec::new());
        let mut plateau: Option<ReduceOnPlateau> = cfg.reduce_on_plateau.clone().map(|mut p| {
            if let Some((best, bad)) = state.plateau {
                p.set_progress(best, bad);
            }
            p
        });
        let schedule = cfg.lr_schedule.clone().unwrap_or(Schedule::Constant);
        'epochs: for epoch in state.epoch + 1..=cfg.epochs {
            let mut epoch_seconds = 0.0f64;
            let mut loss_sum = 0.0f64;
            let mut batches = 0usize;
            for idx in order.epoch(epoch as u64 - 1) {
                let step_start = Instant::now();
                let lr = match cfg.schedule_unit {
                    Unit::Iteration => schedule.lr_at(state.base_lr, state.iteration, max_iter),
                    Unit::Epoch => schedule.lr_at(state.base_lr, epoch - 1, cfg.epochs),
                };
                self.optimizer.set_learning_rate(lr);
                state.iteration += 1;
                let iteration = state.iteration;
                let it = iteration as u64;
                let aug = cfg.augment.as_ref();
                let loss = if dist.is_none() && cfg.micro_batches == 1 {
                    // the whole batch: its own slice, gradients in place
                    slice_gradient(self.network, self.train, aug, &idx, 0, idx.len(), it, &mut bufs)?
                } else {
                    // this rank's slices, their gradients added up in slice order, the
                    // summed loss riding along at the end of the buffer
                    let micro = cfg.micro_batches;
                    let mut loss_sum = 0.0f32;
                    for m in 0..micro {
                        let slice = distributed::share(idx.len(), rank * micro + m, ranks * micro);
                        let mine = &idx[slice.clone()];
                        let local = if mine.is_empty() {
                            self.network.trainable_grads_mut().into_iter().for_each(|g| g.fill(0.0));
                            0.0
                        } else {
                            let (net, train) = (&mut *self.network, self.train);
                            slice_gradient(net, train, aug, mine, slice.start, idx.len(), it, &mut bufs)?
                        };
                        loss_sum += local * mine.len() as f32;
                        if m == 0 {
                            flat.clear();
                            self.network
                                .trainable_grads_mut()
                                .into_iter()
                                .for_each(|g| flat.extend(g.iter()));
                        } else {
                            let mut at = 0;
                            for g in self.network.trainable_grads_mut() {
                                flat[at..at + g.len()]
                                    .iter_mut()
                                    .zip(g.iter())
                                    .for_each(|(a, g)| *a += g);
                                at += g.len();
                            }
                        }
                    }
                    flat.push(loss_sum);
                    if let Some(d) = dist {
                        let t0 = Instant::now();
                        d.comm.all_reduce_sum(&mut flat);
                        communication_seconds += t0.elapsed().as_secs_f64();
                    }
                    let mut at = 0;
                    for g in self.network.trainable_grads_mut() {
                        let n = g.len();
                        g.iter_mut().zip(&flat[at..at + n]).for_each(|(g, v)| *g = *v);
                        at += n;
                    }
                    flat[at] / idx.len() as f32
                };
                if !loss.is_finite() {
                    return Err(TrainError::Diverged { loss, iteration });
                }
                self.optimizer.update(&mut self.network.params_and_grads());
                self.network.clip_params();
                if let Some(avg) = self.average.as_mut() {
                    let trained = self.network.params_and_grads();
                    avg.update(trained.iter().map(|p| (p.name.as_str(), &*p.value)));
                }
                if let Some(d) = dist.filter(|d| iteration.is_multiple_of(d.check_every)) {
                    let checksums = d.comm.all_gather_u64(distributed::checksum(self.network));
                    if checksums.iter().any(|&c| c != checksums[0]) {
                        return Err(TrainError::ReplicasDiverged { iteration, checksums });
                    }
                }
                state.train_loss_list.push(loss);
                loss_sum += f64::from(loss);
                batches += 1;
                let step_seconds = step_start.elapsed().as_secs_f64();
                epoch_seconds += step_seconds;
                train_seconds += step_seconds;
                let info = IterationInfo {
                    iteration,
                    max_iter,
                    epoch,
                    loss,
                    batch: idx.len(),
                    train_seconds,
                };
                observer.on_iteration(&info);
                if dist.is_none() && observer.evaluate_now(&info) {
                    let eval_start = Instant::now();
                    let mut averaged = self.averaged();
                    let net = averaged.as_mut().unwrap_or(&mut *self.network);
                    let eval = evaluate(net, self.test, None, cfg.mini_batch_size)?;
                    let seconds = eval_start.elapsed().as_secs_f64();
                    if observer.on_evaluation(&info, &eval, seconds).is_break() {
                        break 'epochs;
                    }
                }
            }
            let n = cfg.evaluate_sample_num_per_epoch;
            let mut accs = [0.0f64; 2];
            let mut averaged = self.averaged().filter(|_| root);
            if root {
                let net = averaged.as_mut().unwrap_or(&mut *self.network);
                accs[0] = evaluate(net, self.train, n, cfg.mini_batch_size)?.accuracy();
                accs[1] = evaluate(net, self.test, n, cfg.mini_batch_size)?.accuracy();
            }
            if let Some(d) = dist {
                d.comm.broadcast_f64(&mut accs, 0);
            }
            let [train_acc, test_acc] = accs;
            let record = EpochRecord {
                epoch,
                train_loss: (loss_sum / batches.max(1) as f64) as f32,
                train_acc,
                test_acc,
                lr: self.optimizer.learning_rate(),
                train_seconds: epoch_seconds,
                elapsed_seconds: elapsed_before + start.elapsed().as_secs_f64(),
            };
            if let Some(p) = plateau.as_mut() {
                state.base_lr = p.step(test_acc, state.base_lr);
                state.plateau = Some(p.progress());
            }
            let improved = state.best.is_none_or(|(b, _)| test_acc > b);
            if improved {
                state.best = Some((test_acc, epoch));
            }
            if cfg.verbose && root {
                println!("=== epoch:{epoch}, train acc:{train_acc:.4}, test acc:{test_acc:.4} ===");
            }
            observer.on_epoch(&record);
            state.epochs.push(record);
            state.epoch = epoch;
            state.elapsed_seconds = elapsed_before + start.elapsed().as_secs_f64();
            let stop = cfg
                .early_stop_patience
                .is_some_and(|p| state.best.is_some_and(|(_, at)| epoch - at >= p));
            if let Some(policy) = self.checkpoints.as_ref().filter(|_| root) {
                if improved && policy.keep_best {
                    let best = policy.dir.join(BEST_FILE);
                    std::fs::create_dir_all(&policy.dir).map_err(|source| TrainError::Io {
                        path: policy.dir.clone(),
                        source,
                    })?;
                    averaged.as_ref().unwrap_or(&*self.network).save_params(&best)?;
                }
                if epoch % policy.every == 0 || epoch == cfg.epochs || stop {
                    let (opt, avg) = (self.optimizer.as_ref(), self.average.as_ref());
                    checkpoint::write(&policy.dir, self.network, opt, avg, &state, policy.keep)?;
                }
            }
            if stop {
                break;
            }
        }
        let mut history = History {
            config: cfg.clone(),
            train_loss_list: state.train_loss_list,
            epochs: state.epochs,
            test_accuracy: 0.0,
            test_evaluation: Evaluation { correct: 0, total: 0 },
            total_seconds: 0.0,
            threads: rayon::current_num_threads(),
            evaluated_on: None,
            ranks,
            communication_seconds,
        };
        if let Some(avg) = self.average.as_ref() {
            avg.copy_to(&mut self.network.params_and_grads());
        }
        observer.on_final_evaluation(None);
        let mut counts = [0.0f64; 2];
        if root {
            let eval = evaluate(self.network, self.test, None, cfg.mini_batch_size)?;
            counts = [eval.correct as f64, eval.total as f64];
        }
        if let Some(d) = dist {
            d.comm.broadcast_f64(&mut counts, 0);
        }
        let eval = Evaluation {
            correct: counts[0] as usize,
            total: counts[1] as usize,
        };
        observer.on_final_evaluation(Some(&eval));
        if cfg.verbose && root {
            println!("=============== Final Test Accuracy ===============");
            println!("test acc:{:.4}", eval.accuracy());
        }
        history.test_accuracy = eval.accuracy();
        history.test_evaluation = eval;
        history.total_seconds = elapsed_before + start.elapsed().as_secs_f64();
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(change: impl Fn(&mut TrainerConfig), what: &str) {
        let mut config = TrainerConfig::default();
        change(&mut config);
        match config.validate() {
            Err(e) => assert!(e.to_string().contains(what), "{e} should say {what:?}"),
            Ok(()) => panic!("{config:?} taken"),
        }
    }

    #[test]
    fn validate_refuses_what_the_trainer_would_and_takes_the_edges() {
        refused(|c| c.mini_batch_size = 0, "mini-batch size");
        refused(|c| c.micro_batches = 0, "micro-batches");
        refused(|c| c.early_stop_patience = Some(0), "early-stop patience");
        refused(|c| c.optimizer = "adamw".into(), "unknown optimizer \"adamw\"");
        refused(|c| c.lr = 0.0, "learning rate");
        refused(|c| c.weight_decay = f32::NAN, "weight decay");
        refused(|c| c.ema_decay = Some(1.0), "average decay");
        refused(|c| c.epochs = 0, "epochs must be at least 1");
        refused(|c| c.evaluate_sample_num_per_epoch = Some(0), "evaluation samples");
        let schedule = |s: Schedule| move |c: &mut TrainerConfig| c.lr_schedule = Some(s.clone());
        let step = |step_size, gamma| Schedule::Step { step_size, gamma };
        refused(schedule(step(0, 0.5)), "step size must be at least 1");
        for gamma in [0.0, -0.5, f32::NAN, f32::INFINITY] {
            let what = format!("step schedule: gamma {gamma}: must be a finite number > 0");
            refused(schedule(step(1, gamma)), &what);
            refused(schedule(Schedule::Exponential { gamma }), "exponential schedule: gamma");
        }
        for min_lr in [-1e-6, f32::NAN] {
            let what = format!("cosine schedule: min_lr {min_lr}: must be a finite number >= 0");
            refused(schedule(Schedule::Cosine { warmup: 0, min_lr }), &what);
        }
        let one_cycle = |pct_start, div_factor, final_div_factor| Schedule::OneCycle {
            pct_start,
            div_factor,
            final_div_factor,
        };
        for pct in [-0.1, 1.1, f32::NAN] {
            let what = format!("pct_start {pct}: must be from 0 to 1");
            refused(schedule(one_cycle(pct, 25.0, 1e4)), &what);
        }
        refused(schedule(one_cycle(0.25, 0.0, 1e4)), "one-cycle schedule: div_factor 0");
        refused(schedule(one_cycle(0.25, 25.0, f32::INFINITY)), "final_div_factor inf");
        let plateau = |change: fn(&mut ReduceOnPlateau)| {
            move |c: &mut TrainerConfig| {
                let mut p = ReduceOnPlateau::new(0.5, 2);
                change(&mut p);
                c.reduce_on_plateau = Some(p);
            }
        };
        refused(plateau(|p| p.factor = 0.0), "reduce-on-plateau: factor 0");
        refused(plateau(|p| p.factor = 1.5), "above 0 and at most 1");
        refused(plateau(|p| p.factor = f32::NAN), "reduce-on-plateau: factor NaN");
        refused(plateau(|p| p.threshold = -0.01), "threshold -0.01");
        refused(plateau(|p| p.threshold = f64::INFINITY), "threshold inf");
        refused(plateau(|p| p.min_lr = -1.0), "reduce-on-plateau: min_lr -1");
        for (s, p) in [
            (step(1, 1e30), (1.0, 0.0, 0.0)),
            (Schedule::Exponential { gamma: 1e-30 }, (1e-6, 0.5, 1.0)),
            (Schedule::Cosine { warmup: 3, min_lr: 0.0 }, (0.5, 1e-4, 0.0)),
            (one_cycle(0.0, 1e-3, 1e-3), (1.0, 0.0, 0.0)),
            (one_cycle(1.0, 25.0, 1e4), (1.0, 0.0, 0.0)),
            (Schedule::Constant, (1.0, 0.0, 0.0)),
        ] {
            let mut plateau = ReduceOnPlateau::new(p.0, 0);
            (plateau.threshold, plateau.min_lr) = (p.1, p.2);
            let c = TrainerConfig {
                epochs: 1,
                evaluate_sample_num_per_epoch: Some(1),
                lr_schedule: Some(s),
                reduce_on_plateau: Some(plateau),
                ..TrainerConfig::default()
            };
            c.validate().unwrap();
        }
        let edges = TrainerConfig {
            mini_batch_size: 1,
            micro_batches: 1,
            early_stop_patience: Some(1),
            optimizer: "Nesterov".into(),
            weight_decay: 0.0,
            ema_decay: Some(0.0),
            ..TrainerConfig::default()
        };
        edges.validate().unwrap();
        TrainerConfig::default().validate().unwrap();
    }
}
