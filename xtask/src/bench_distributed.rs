//! `cargo xtask bench --distributed`: data-parallel training throughput over MPI
//! against one process with all the threads, the same global batch, in one run.
//!
//! Every figure comes from a fresh child process: `xtask bench --distributed-child`,
//! run alone (one process, `--threads` threads, the plain [`Trainer`]) or under `mpirun
//! -np R` (R ranks, `--threads / R` threads each). The runs alternate, window after
//! window, and the medians are reported.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dl_data::Mnist;
use dl_models::{DeepConvNet, DeepConvNetConfig};
use dl_train::{Communicator, Distributed, IterationInfo, Observer, Trainer, TrainerConfig};
use serde::{Deserialize, Serialize};

use crate::bench::{cpu_model, median};
use crate::CliError;

/// What one child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildFigures {
    /// Processes (1: the plain trainer, no MPI).
    pub ranks: usize,
    /// The rank that reports: 0.
    pub rank: usize,
    /// Threads per process.
    pub threads: usize,
    /// Training steps timed, counted as they ran (warm-up excluded).
    pub steps: usize,
    /// Seconds of training in the epoch: the warm-up and the timed steps.
    pub train_seconds: f64,
    /// Seconds of the warm-up steps.
    pub warmup_seconds: f64,
    /// Seconds rank 0 spent in the gradients' all-reduce over the epoch.
    pub communication_seconds: f64,
    /// Global images per second over the timed steps (warm-up excluded).
    pub images_per_sec: f64,
    /// Milliseconds per training step.
    pub step_ms: f64,
    /// Milliseconds per step rank 0 spent in the gradients' all-reduce, waiting for the
    /// other ranks included.
    pub allreduce_ms: f64,
    /// Milliseconds of one all-reduce of the gradients' buffer alone, the ranks already
    /// in step (median of 50).
    pub allreduce_alone_ms: f64,
    /// Floats in that buffer (the gradients and the loss).
    pub buffer_floats: usize,
}

/// The JSON `bench --distributed --json` writes.
#[derive(Serialize)]
struct Report {
    cpu: String,
    logical_cpus: usize,
    threads: usize,
    batch: usize,
    steps: usize,
    windows: usize,
    reduction: String,
    /// Per configuration (`1x2`, `2x1`, ...): every window's figures.
    runs: Vec<(String, Vec<ChildFigures>)>,
    /// Per configuration: the median images per second and its ratio to one process.
    medians: Vec<(String, f64, f64)>,
}

/// Counts the steps and records the seconds of training at the end of the warm-up.
struct Clock {
    warmup: usize,
    at_warmup: f64,
    steps: usize,
}

impl Observer for Clock {
    fn on_iteration(&mut self, info: &IterationInfo) {
        self.steps += 1;
        if info.iteration == self.warmup {
            self.at_warmup = info.train_seconds;
        }
    }
}

/// The child: trains `warmup + steps` steps of the book's network on batches of `batch`,
/// as one rank of an MPI job when `mpirun` started it, and prints its figures as one
/// JSON line (rank 0 only).
pub fn child(
    data: &Path,
    batch: usize,
    warmup: usize,
    steps: usize,
    reduction: dl_mpi::Reduction,
) -> Result<(), CliError> {
    let under_mpirun = std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() || std::env::var_os("PMI_SIZE").is_some();
    let mpi = if under_mpirun {
        Some(
            dl_mpi::Mpi::init()
                .map_err(|e| CliError::Other(format!("--distributed: {e}")))?
                .with_reduction(reduction),
        )
    } else {
        None
    };
    let mnist = Mnist::load(data)?;
    let need = warmup.saturating_add(steps).saturating_mul(batch);
    if mnist.train.len() < need {
        return Err(CliError::Other(format!(
            "{}: the bench trains on {need} images ({warmup} + {steps} steps of {batch}), and this set has {}",
            data.display(),
            mnist.train.len()
        )));
    }
    let train = mnist.train.take(need);
    let test = mnist.test.take(100);
    let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 0).into_network();
    let config = TrainerConfig {
        epochs: 1,
        mini_batch_size: batch,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(&mut net, &train, &test, config)?;
    if let Some(m) = &mpi {
        trainer = trainer.distributed(Distributed::new(m));
    }
    let mut clock = Clock {
        warmup,
        at_warmup: 0.0,
        steps: 0,
    };
    let history = trainer.train_with(&mut clock)?;
    let train_seconds = history.epochs[0].train_seconds;
    let timed = train_seconds - clock.at_warmup;
    let timed_steps = clock.steps.saturating_sub(warmup);
    let buffer_floats = net.param_count() + 1;
    let mut alone = Vec::new();
    if let Some(m) = &mpi {
        let mut buf = vec![0.5f32; buffer_floats];
        for _ in 0..55 {
            let t = Instant::now();
            m.all_reduce_sum(&mut buf);
            alone.push(crate::bench::millis_each(t.elapsed(), 1));
        }
        alone.drain(..5);
    }
    let figures = ChildFigures {
        ranks: mpi.as_ref().map_or(1, |m| m.size()),
        rank: mpi.as_ref().map_or(0, |m| m.rank()),
        threads: rayon::current_num_threads(),
        steps: timed_steps,
        train_seconds,
        warmup_seconds: clock.at_warmup,
        communication_seconds: history.communication_seconds,
        images_per_sec: (timed_steps * batch) as f64 / timed,
        step_ms: timed / timed_steps as f64 * 1e3,
        allreduce_ms: history.communication_seconds / clock.steps as f64 * 1e3,
        allreduce_alone_ms: if alone.is_empty() { 0.0 } else { median(&alone) },
        buffer_floats,
    };
    if mpi.as_ref().is_none_or(|m| m.rank() == 0) {
        println!(
            "{}",
            serde_json::to_string(&figures).map_err(|e| CliError::Other(e.to_string()))?
        );
    }
    Ok(())
}

/// Settings of the parent.
pub struct Plan<'a> {
    pub ranks: &'a [usize],
    pub threads: usize,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub windows: usize,
    pub reduction: crate::train::ReductionArg,
    pub data: PathBuf,
    pub json: Option<&'a Path>,
}

fn run_child(plan: &Plan<'_>, ranks: usize) -> Result<ChildFigures, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Other(format!("this program's path: {e}")))?;
    let threads = (plan.threads / ranks).max(1).to_string();
    let mut cmd = if ranks == 1 {
        Command::new(&exe)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np"])
            .arg(ranks.to_string())
            .args(["-x", "RAYON_NUM_THREADS"])
            .arg(&exe);
        c
    };
    let reduction = match plan.reduction {
        crate::train::ReductionArg::Ordered => "ordered",
        crate::train::ReductionArg::Native => "native",
    };
    cmd.args(["bench", "--distributed-child", "--batch"])
        .arg(plan.batch.to_string())
        .arg("--warmup")
        .arg(plan.warmup.to_string())
        .arg("--iters")
        .arg(plan.steps.to_string())
        .args(["--reduction", reduction, "--data"])
        .arg(&plan.data)
        .env("RAYON_NUM_THREADS", &threads);
    let out = cmd
        .output()
        .map_err(|e| CliError::Other(format!("{cmd:?}: {e} (is OpenMPI's mpirun on the PATH?)")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(CliError::Other(format!(
            "{ranks} ranks: the child failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| CliError::Other(format!("{ranks} ranks: no figures in the child's output:\n{stdout}")))?;
    serde_json::from_str(line).map_err(|e| CliError::Other(format!("{ranks} ranks: {e}: {line}")))
}

/// The parent: every configuration once per window, alternating; medians and ratios.
pub fn run(plan: &Plan<'_>) -> Result<(), CliError> {
    if !cfg!(feature = "mpi") {
        return Err(CliError::Other(dl_mpi::MpiError::NotBuilt.to_string()));
    }
    if plan.windows == 0 || plan.steps == 0 || plan.batch == 0 {
        return Err(CliError::Other(
            "--windows, --iters and --batch must be at least 1".into(),
        ));
    }
    let configs: Vec<usize> = std::iter::once(1)
        .chain(plan.ranks.iter().copied().filter(|&r| r > 1))
        .collect();
    let name = |r: usize| format!("{r}x{}", (plan.threads / r).max(1));
    println!(
        "cpu: {} ({} logical CPUs); DeepConvNet, global batch {}, {} steps timed after {} of warm-up, {} windows, {:?} reduction",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        plan.batch,
        plan.steps,
        plan.warmup,
        plan.windows,
        plan.reduction
    );
    let mut runs: Vec<(String, Vec<ChildFigures>)> = configs.iter().map(|&r| (name(r), Vec::new())).collect();
    for w in 0..plan.windows {
        for (i, &r) in configs.iter().enumerate() {
            let f = run_child(plan, r)?;
            println!(
                "window {}: {:>4} (ranks x threads)  {:>6.0} img/s  step {:>6.1} ms  all-reduce {:>5.2} ms/step ({:.2} ms alone)",
                w + 1,
                runs[i].0,
                f.images_per_sec,
                f.step_ms,
                f.allreduce_ms,
                f.allreduce_alone_ms
            );
            runs[i].1.push(f);
        }
    }
    let med = |fs: &[ChildFigures], f: fn(&ChildFigures) -> f64| median(&fs.iter().map(f).collect::<Vec<_>>());
    let base = med(&runs[0].1, |f| f.images_per_sec);
    let mut medians = Vec::new();
    println!("median over {} windows:", plan.windows);
    for (n, fs) in &runs {
        let ips = med(fs, |f| f.images_per_sec);
        let step = med(fs, |f| f.step_ms);
        let ar = med(fs, |f| f.allreduce_ms);
        let alone = med(fs, |f| f.allreduce_alone_ms);
        println!(
            "{n:>5}  {ips:>6.0} img/s  {:.3}x one process  step {step:.1} ms  all-reduce {ar:.2} ms/step ({:.1}% of the step; {alone:.2} ms alone)",
            ips / base,
            100.0 * ar / step
        );
        medians.push((n.clone(), ips, ips / base));
    }
    if let Some(path) = plan.json {
        let report = Report {
            cpu: cpu_model(),
            logical_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            threads: plan.threads,
            batch: plan.batch,
            steps: plan.steps,
            windows: plan.windows,
            reduction: format!("{:?}", plan.reduction).to_lowercase(),
            runs,
            medians,
        };
        let json = serde_json::to_vec_pretty(&report).map_err(|e| CliError::Other(e.to_string()))?;
        dl_tensor::fs::atomic_write(path, &json).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
