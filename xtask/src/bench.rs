//! `cargo xtask bench`: whole-network throughput, a per-layer time breakdown and peak
//! memory, as a table and as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use dl_data::{BatchOrder, Mnist};
use dl_layers::{Labels, SoftmaxWithLoss, Tensor};
use dl_models::Network;
use dl_optim::Optimizer;
use dl_tensor::ConvAlgo;
use serde::Serialize;

use crate::train::ModelName;
use crate::CliError;

#[derive(Args)]
pub struct BenchArgs {
    /// Network to measure.
    #[arg(long, value_enum, default_value = "deep")]
    model: ModelName,
    /// Timed windows per figure (the median is reported).
    #[arg(long, default_value_t = 7)]
    windows: usize,
    /// Training iterations (batch 100) per window.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Warm-up iterations before timing.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Replace --json if it exists.
    #[arg(long, requires = "json")]
    overwrite: bool,
    /// Folder with the MNIST files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also run PyTorch on the same network in this invocation (between two halves of
    /// our own windows) and print the ratios. Optional value: the script (default: the
    /// repository's scripts/torch_models.py, which builds every model but `simple`).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    vs_torch: Option<String>,
    /// Skip the windows that measure the cost of data augmentation.
    #[arg(long)]
    skip_augment: bool,
    /// Skip the windows that measure training with bf16 products (`train --precision
    /// bf16`) against f32.
    #[arg(long)]
    skip_bf16: bool,
    /// Python interpreter with torch and numpy, for --vs-torch.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Measure the web server instead (`cargo xtask serve`, the shipped DeepConvNet):
    /// prediction latency (p50, p99) under --clients concurrent clients.
    #[arg(long)]
    serve: bool,
    /// With --serve: concurrent clients.
    #[arg(long, default_value_t = 50, requires = "serve")]
    clients: usize,
    /// With --serve: requests per client.
    #[arg(long, default_value_t = 40, requires = "serve")]
    requests: usize,
    /// With --serve: each client starts a request at most every N ms (100 is the page's
    /// pace while a person draws; 0 sends the next as soon as the answer is back).
    #[arg(long, default_value_t = 100, requires = "serve")]
    interval_ms: u64,
    /// Measure time to accuracy instead: train with --recipe and report the training
    /// seconds (evaluation excluded, counted separately) until the full 10,000-image test
    /// set first reaches each --targets accuracy, checked --checks-per-epoch times an
    /// epoch.
    #[arg(long, conflicts_with = "serve")]
    time_to_accuracy: bool,
    /// With --time-to-accuracy: the run's settings (`cargo xtask train --recipe`).
    #[arg(long, value_enum, default_value = "fast", requires = "time_to_accuracy")]
    recipe: crate::train::Recipe,
    /// With --time-to-accuracy: the seed of the run.
    #[arg(long, default_value_t = 0, requires = "time_to_accuracy")]
    seed: u64,
    /// With --time-to-accuracy: the run's epochs (default: the recipe's), as
    /// `cargo xtask train --recipe R --epochs N`.
    #[arg(long, requires = "time_to_accuracy")]
    epochs: Option<usize>,
    /// With --time-to-accuracy: the accuracies, percent.
    #[arg(long, value_delimiter = ',', default_values_t = [99.0, 99.4], requires = "time_to_accuracy")]
    targets: Vec<f64>,
    /// Measure inference at these precisions instead (f32, f16, bf16, int8,
    /// comma-separated), beside the training code's f32 forward: test accuracy, file and
    /// weight bytes, images per second at batch 1, 100 and 1000 (--params: default the
    /// shipped weights; int8 is calibrated on the first 1000 training images).
    #[arg(long, value_delimiter = ',', value_parser = crate::eval::parse_eval_precision, conflicts_with_all = ["serve", "time_to_accuracy"])]
    precision: Vec<crate::eval::EvalPrecision>,
    /// With --precision: the parameter file (default: the shipped DeepConvNet); with
    /// --model binary, a binarized network's (default: the shipped one).
    #[arg(long)]
    params: Option<PathBuf>,
    /// With --time-to-accuracy: test-set checks per epoch.
    #[arg(long, default_value_t = 2, requires = "time_to_accuracy")]
    checks_per_epoch: usize,
    /// Measure data-parallel training over MPI instead (a build with `--features mpi`):
    /// one process with all the threads (--threads) against --ranks processes sharing
    /// them, the
    /// same global batch, alternating in fresh processes: images per second, the
    /// all-reduce time per step and its share of the step.
    #[arg(long, conflicts_with_all = ["serve", "time_to_accuracy", "precision"])]
    distributed: bool,
    /// With --distributed: the numbers of ranks to measure beside one process.
    #[arg(long, value_delimiter = ',', default_values_t = [2], requires = "distributed")]
    ranks: Vec<usize>,
    /// With --distributed: the global mini-batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// With --distributed: how the ranks add their gradients.
    #[arg(long, value_enum, default_value = "ordered")]
    reduction: crate::train::ReductionArg,
    /// One measurement of --distributed (what the parent runs).
    #[arg(long, hide = true)]
    distributed_child: bool,
}

/// What `bench --time-to-accuracy` measured.
#[derive(Serialize)]
struct TimeToReport {
    cpu: String,
    simd_flags: Vec<String>,
    conv_isa: String,
    gemm_isa: String,
    threads: usize,
    recipe: String,
    /// The same run as `cargo xtask train` flags.
    train_flags: String,
    /// Per target: where it was first reached (`null`: not within the recipe's epochs).
    reached: Vec<Option<crate::train::Reached>>,
    targets: Vec<f64>,
    checks: Vec<crate::train::Check>,
    /// Seconds of training of the whole run, evaluation excluded.
    train_seconds: f64,
    /// Seconds of all the test-set checks.
    check_seconds: f64,
    /// Accuracy on the full test set where the run stopped.
    final_test_accuracy: f64,
}

fn run_time_to(a: &BenchArgs) -> Result<(), CliError> {
    let args = crate::train::TrainArgs::for_recipe_watching(
        a.recipe,
        a.seed,
        a.targets.clone(),
        a.checks_per_epoch,
        a.data.clone(),
        a.epochs,
    );
    let conv_isa = dl_tensor::Isa::active();
    let threads = rayon::current_num_threads();
    println!("cpu: {}", cpu_model());
    println!(
        "conv kernels at {}, gemm at {}, {threads} threads",
        conv_isa.name(),
        gemm_isa()
    );
    let flags = args.flags();
    println!("cargo xtask train {flags}");
    let (history, watch) = crate::train::time_to_accuracy(&args)?;
    let train_seconds: f64 = watch.checks.last().map_or(0.0, |c| c.train_seconds);
    for line in crate::train::time_to_lines(&watch, "test") {
        println!("{line}");
    }
    let report = TimeToReport {
        cpu: cpu_model(),
        simd_flags: dl_tensor::cpu_simd_flags().into_iter().map(String::from).collect(),
        conv_isa: conv_isa.name().into(),
        gemm_isa: gemm_isa().into(),
        threads,
        recipe: format!("{:?}", a.recipe).to_lowercase(),
        train_flags: flags,
        reached: watch.reached.clone(),
        targets: a.targets.clone(),
        checks: watch.checks.clone(),
        train_seconds,
        check_seconds: watch.check_seconds,
        final_test_accuracy: history.test_accuracy,
    };
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&report).map_err(|e| CliError::Other(e.to_string()))?;
        dl_tensor::fs::atomic_write(path, &json).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// How the clients of `bench --serve` pace their requests, in words.
fn pace(interval_ms: u64) -> String {
    if interval_ms == 0 {
        "each as soon as its last answer came back".to_string()
    } else {
        format!("each at most one every {interval_ms} ms")
    }
}

impl BenchArgs {
    /// `--serve`: the web server's latency rather than the networks' throughput.
    pub fn measures_server(&self) -> bool {
        self.serve
    }
}

fn run_serve(a: &BenchArgs) -> Result<(), CliError> {
    if a.clients == 0 || a.requests == 0 {
        return Err(CliError::Other("--clients and --requests must be at least 1".into()));
    }
    let r = crate::serve::bench(a.clients, a.requests, a.interval_ms, a.data.clone())?;
    println!("cpu: {}", r.cpu);
    println!("model: {}", r.model);
    println!(
        "{} clients ({}), {} requests ({})",
        r.clients,
        pace(r.interval_ms),
        r.requests,
        r.body
    );
    println!(
        "latency per prediction: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
    );
    println!("throughput: {:.0} predictions/s", r.requests_per_sec);
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&r).map_err(|e| CliError::Other(e.to_string()))?;
        dl_tensor::fs::atomic_write(path, &json).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(Serialize)]
struct LayerTime {
    index: usize,
    layer: String,
    forward_ms: f64,
    backward_ms: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    /// The CPU (`model name` of /proc/cpuinfo).
    cpu: String,
    /// The CPU's SIMD features (`avx2 fma avx512f ...`).
    simd_flags: Vec<String>,
    /// The instruction set the direct and Winograd kernels ran at (`DLFS_SIMD`, else the
    /// widest the CPU has): `avx512`, `avx2`, `neon` or `scalar` (where `Auto` lowers
    /// every convolution to im2col + GEMM).
    conv_isa: String,
    /// The instruction set of the `gemm` crate's kernels (im2col + GEMM, the affine
    /// layers), which it picks at run time whatever `DLFS_SIMD` says.
    gemm_isa: String,
    threads: usize,
    batch: usize,
    /// Training images each timed window takes (`--iters` batches).
    images_per_window: usize,
    train_images_per_sec: f64,
    train_images_per_sec_windows: Vec<f64>,
    infer_images_per_sec_b100: f64,
    infer_images_per_sec_b1000: f64,
    /// Test images each timed inference pass takes, by batch size: every whole batch.
    infer_images_per_pass: BTreeMap<usize, usize>,
    peak_rss_mib: f64,
    layers: Vec<LayerTime>,
    extra: BTreeMap<String, f64>,
    /// PyTorch's medians from the same invocation (`--vs-torch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    torch: Option<BTreeMap<String, serde_json::Value>>,
}

/// `count` items done in `elapsed`, per second.
pub fn per_second(count: usize, elapsed: std::time::Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Milliseconds each of `reps` repetitions took, when all took `elapsed`.
pub fn millis_each(elapsed: std::time::Duration, reps: usize) -> f64 {
    elapsed.as_secs_f64() * 1e3 / reps as f64
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_hwm_mib(&s))
        .unwrap_or(f64::NAN)
}

/// The `VmHWM` of a `/proc/PID/status` text, MiB.
fn vm_hwm_mib(status: &str) -> Option<f64> {
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
}

/// The CPU's model name (Linux), or `unknown`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| model_name(&s))
        .unwrap_or_else(|| "unknown".into())
}

/// The first `model name` of a `/proc/cpuinfo` text.
fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
}

/// The level the `gemm` crate (built with its `x86-v4` feature) runs at on this CPU:
/// AVX-512 where the CPU has it, else AVX2 + FMA, else its scalar code.
pub fn gemm_isa() -> &'static str {
    dl_tensor::Isa::best().name()
}

pub fn run(a: BenchArgs) -> Result<(), CliError> {
    // refused before anything is measured, not after
    if let Some(path) = &a.json {
        crate::refuse_to_replace(path, a.overwrite)?;
    }
    if a.serve {
        return run_serve(&a);
    }
    if a.time_to_accuracy {
        return run_time_to(&a);
    }
    if a.distributed_child || a.distributed {
        let data = a.data.clone().unwrap_or_else(crate::default_data_dir);
        if a.distributed_child {
            return crate::bench_distributed::child(&data, a.batch, a.warmup, a.iters, a.reduction.into());
        }
        // the threads in all: --threads, else RAYON_NUM_THREADS, else every core
        let threads = rayon::current_num_threads();
        return crate::bench_distributed::run(&crate::bench_distributed::Plan {
            ranks: &a.ranks,
            threads,
            batch: a.batch,
            warmup: a.warmup,
            steps: a.iters,
            windows: a.windows,
            reduction: a.reduction,
            data,
            json: a.json.as_deref(),
        });
    }
    if matches!(a.model, ModelName::Binary) {
        let params = a.params.clone().unwrap_or_else(crate::shipped_binary_params);
        let data = a.data.clone().unwrap_or_else(crate::default_data_dir);
        return crate::bench_binary::run(&params, a.windows, &data, a.json.as_deref());
    }
    if !a.precision.is_empty() {
        let params = a.params.clone().unwrap_or_else(crate::shipped_params);
        let data = a.data.clone().unwrap_or_else(crate::default_data_dir);
        return crate::bench_precision::run(&params, &a.precision, a.windows, &data, a.json.as_deref());
    }
    rayon::broadcast(|_| dl_tensor::flush_denormals_to_zero());
    dl_tensor::flush_denormals_to_zero();
    let data_dir = a.data.clone().unwrap_or_else(crate::default_data_dir);
    let mnist = Mnist::load(&data_dir)?;
    if mnist.test.len() < 1000 || mnist.train.len() < 100 {
        return Err(CliError::Other(format!(
            "{}: the bench takes batches of 100 training images and of up to 1,000 test images, and this set has {} and {}",
            data_dir.display(),
            mnist.train.len(),
            mnist.test.len()
        )));
    }
    let mut net = a.model.build(0);
    let mut opt = dl_optim::by_name("adam", 0.001).map_err(|e| CliError::Other(e.to_string()))?;
    let batch = 100;
    let images_per_window = a.iters * batch;
    let order = BatchOrder::new(mnist.train.len(), batch, 0);
    let mut batches = std::iter::repeat_with(|| order.epoch(0)).flatten();
    // One training step as the Trainer takes it: bytes to f32, augmentation when asked,
    // forward, backward, Adam.
    let pipeline = dl_data::Pipeline::mnist(false, 0);
    let (mut xbuf, mut tbuf) = (Vec::new(), Vec::new());
    let mut iteration = 0u64;
    let set = &mnist.train;
    let mut step = |net: &mut Network, opt: &mut Box<dyn Optimizer>, augment: bool| -> Result<(), CliError> {
        let idx = batches.next().expect("endless");
        iteration += 1;
        set.fill_batch(&idx, &mut xbuf, &mut tbuf);
        if augment {
            pipeline.apply_batch_chw(&mut xbuf, set.channels, set.height, set.width, iteration);
        }
        let x = Tensor::from_shape_vec(set.batch_shape(idx.len()), std::mem::take(&mut xbuf)).expect("batch shape");
        net.gradient(x, Labels::Indices(&tbuf))?;
        opt.update(&mut net.params_and_grads());
        Ok(())
    };
    for _ in 0..a.warmup {
        step(&mut net, &mut opt, false)?;
    }
    let mut window = |net: &mut Network, opt: &mut Box<dyn Optimizer>, augment: bool| -> Result<f64, CliError> {
        let t = Instant::now();
        for _ in 0..a.iters {
            step(net, opt, augment)?;
        }
        Ok(per_second(images_per_window, t.elapsed()))
    };
    let mut train_rates = Vec::new();
    let first_half = a.windows.div_ceil(2);
    for _ in 0..first_half {
        train_rates.push(window(&mut net, &mut opt, false)?);
    }
    let torch = match &a.vs_torch {
        Some(script) => run_torch(script, &a.python, a.windows, &data_dir, &net),
        None => None,
    };
    for _ in first_half..a.windows {
        train_rates.push(window(&mut net, &mut opt, false)?);
    }
    let train = median(&train_rates);
    eprintln!(
        "train  batch {batch}: {train:.0} img/s (median of {} windows)",
        a.windows
    );
    // The cost of the MNIST augmentation recipe: windows with and without it, in
    // alternation, compared by their medians.
    let mut extra = BTreeMap::new();
    if !a.skip_augment {
        let (mut plain, mut augmented) = (Vec::new(), Vec::new());
        for _ in 0..a.windows {
            plain.push(window(&mut net, &mut opt, false)?);
            augmented.push(window(&mut net, &mut opt, true)?);
        }
        let (p, q) = (median(&plain), median(&augmented));
        eprintln!(
            "train  batch {batch} with augmentation: {q:.0} img/s vs {p:.0} without: epoch time +{:.1}%",
            (p / q - 1.0) * 100.0
        );
        extra.insert("train_images_per_sec_plain_paired".into(), p);
        extra.insert("train_images_per_sec_augmented".into(), q);
        extra.insert("augment_epoch_time_increase_pct".into(), (p / q - 1.0) * 100.0);
    }
    // Training with bf16 products against f32, windows in alternation: each bf16 kernel
    // this CPU runs but the plain-Rust one (operands rounded for the f32 kernels, and
    // `vdpbf16ps`, which runs every convolution lowered, so f32 lowered is measured
    // beside it).
    if !a.skip_bf16 {
        use dl_layers::Bf16Kernel;
        let gemm_kernel = Bf16Kernel::Avx512.supported().then_some(Bf16Kernel::Avx512);
        let (mut f32s, mut rounded, mut dot, mut lowered) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..a.windows {
            f32s.push(window(&mut net, &mut opt, false)?);
            net.set_bf16_products(Some(Bf16Kernel::Rounded));
            rounded.push(window(&mut net, &mut opt, false)?);
            if let Some(k) = gemm_kernel {
                net.set_bf16_products(Some(k));
                dot.push(window(&mut net, &mut opt, false)?);
                net.set_bf16_products(None);
                net.set_conv_algo(ConvAlgo::Lowered);
                lowered.push(window(&mut net, &mut opt, false)?);
                net.set_conv_algo(ConvAlgo::Auto);
            }
            net.set_bf16_products(None);
        }
        let (p, q) = (median(&f32s), median(&rounded));
        eprintln!(
            "train  batch {batch} with bf16 products, operands rounded: {q:.0} img/s vs {p:.0} in f32: {:.2}x",
            q / p
        );
        extra.insert("train_images_per_sec_f32_paired".into(), p);
        extra.insert("train_images_per_sec_bf16_paired".into(), q);
        if let Some(k) = gemm_kernel {
            let (d, l) = (median(&dot), median(&lowered));
            eprintln!(
                "train  batch {batch} with bf16 products by {k}: {d:.0} img/s: {:.2}x f32, {:.2}x f32 lowered ({l:.0})",
                d / p,
                d / l
            );
            extra.insert("train_images_per_sec_bf16_dpbf16_paired".into(), d);
            extra.insert("train_images_per_sec_f32_lowered_paired".into(), l);
        }
    }

    // The kernels without lowering (Winograd and the direct kernel) against im2col +
    // GEMM (what the scalar level runs), and Winograd against the direct kernel alone:
    // windows of each in alternation. The JSON keys keep their first names.
    let conv_isa = dl_tensor::Isa::active();
    let vector = conv_isa != dl_tensor::Isa::Scalar;
    // (baseline, its name, its key; candidate Auto, its name, its key)
    let pairs: [(ConvAlgo, &str, &str, &str, &str); 2] = [
        (
            ConvAlgo::Lowered,
            "im2col + GEMM",
            "im2col",
            "without lowering",
            "direct",
        ),
        (
            ConvAlgo::Direct,
            "direct kernel only",
            "direct_only",
            "with Winograd",
            "winograd",
        ),
    ];
    if vector {
        for (base_algo, base_name, base_key, name, key) in pairs {
            let (mut base, mut candidate) = (Vec::new(), Vec::new());
            for _ in 0..a.windows {
                net.set_conv_algo(base_algo);
                base.push(window(&mut net, &mut opt, false)?);
                net.set_conv_algo(ConvAlgo::Auto);
                candidate.push(window(&mut net, &mut opt, false)?);
            }
            let (p, q) = (median(&base), median(&candidate));
            eprintln!(
                "train  batch {batch}: {name} {q:.0} img/s vs {base_name} {p:.0}: {:.2}x",
                q / p
            );
            extra.insert(format!("train_images_per_sec_{base_key}_paired"), p);
            extra.insert(format!("train_images_per_sec_{key}_paired"), q);
        }
    }

    let (mut infer, mut infer_images_per_pass) = (BTreeMap::new(), BTreeMap::new());
    for bs in [100usize, 1000] {
        // every whole batch of the test set
        let n = mnist.test.len() - mnist.test.len() % bs;
        let (x, _) = mnist.test.batch(&(0..n).collect::<Vec<_>>());
        let chunks: Vec<Tensor> = x.axis_chunks_iter(ndarray::Axis(0), bs).map(|c| c.to_owned()).collect();
        net.predict(chunks[0].clone(), false)?;
        let pass = |net: &mut Network| -> Result<f64, CliError> {
            let t = Instant::now();
            for c in &chunks {
                net.predict(c.clone(), false)?;
            }
            Ok(per_second(n, t.elapsed()))
        };
        let (mut rates, mut lowered, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..a.windows.min(5) {
            rates.push(pass(&mut net)?);
            if vector {
                net.set_conv_algo(ConvAlgo::Lowered);
                lowered.push(pass(&mut net)?);
                net.set_conv_algo(ConvAlgo::Direct);
                direct.push(pass(&mut net)?);
                net.set_conv_algo(ConvAlgo::Auto);
            }
        }
        let r = median(&rates);
        eprintln!("infer  batch {bs}: {r:.0} img/s");
        infer.insert(bs, r);
        infer_images_per_pass.insert(bs, n);
        if !lowered.is_empty() {
            let l = median(&lowered);
            eprintln!(
                "infer  batch {bs}: im2col + GEMM {l:.0} img/s: without lowering {:.2}x",
                r / l
            );
            extra.insert(format!("infer_images_per_sec_b{bs}_im2col_paired"), l);
            let d = median(&direct);
            eprintln!(
                "infer  batch {bs}: direct kernel only {d:.0} img/s: with Winograd {:.2}x",
                r / d
            );
            extra.insert(format!("infer_images_per_sec_b{bs}_direct_only_paired"), d);
        }
    }

    // Per-layer breakdown: forward and backward of each layer on one training batch.
    let idx: Vec<usize> = (0..batch).collect();
    let (x, t) = mnist.train.batch(&idx);
    let layers_n = net.layers().len();
    let mut fwd = vec![Vec::new(); layers_n];
    let mut bwd = vec![Vec::new(); layers_n];
    for _ in 0..a.windows {
        let mut h = x.clone();
        for (i, l) in net.layers_mut().iter_mut().enumerate() {
            let s = Instant::now();
            h = l.forward(h, true)?;
            fwd[i].push(millis_each(s.elapsed(), 1));
        }
        let mut last = SoftmaxWithLoss::new();
        last.forward(&h, Labels::Indices(&t))?;
        let mut d = last.backward();
        for (i, l) in net.layers_mut().iter_mut().enumerate().rev() {
            let s = Instant::now();
            d = l.backward(d);
            bwd[i].push(millis_each(s.elapsed(), 1));
        }
    }
    let names = net.root().names().to_vec();
    let layers: Vec<LayerTime> = net
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| LayerTime {
            index: i,
            layer: layer_label(&names[i], i, l.name()),
            forward_ms: median(&fwd[i]),
            backward_ms: median(&bwd[i]),
        })
        .collect();
    let report = Report {
        model: net.kind().to_string(),
        cpu: cpu_model(),
        simd_flags: dl_tensor::cpu_simd_flags().into_iter().map(String::from).collect(),
        conv_isa: conv_isa.to_string(),
        gemm_isa: gemm_isa().into(),
        threads: rayon::current_num_threads(),
        batch,
        images_per_window,
        train_images_per_sec: train,
        train_images_per_sec_windows: train_rates,
        infer_images_per_sec_b100: infer[&100],
        infer_images_per_sec_b1000: infer[&1000],
        infer_images_per_pass,
        peak_rss_mib: peak_rss_mib(),
        layers,
        extra,
        torch,
    };
    print!("{}", table(&report));
    if let Some(path) = a.json {
        let bytes = serde_json::to_vec_pretty(&report).map_err(|e| CliError::Other(e.to_string()))?;
        dl_tensor::fs::atomic_write(&path, &bytes).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// A layer's name in the bench's table: its kind, after its path in the network
/// unless that is only its position.
fn layer_label(path: &str, index: usize, kind: &str) -> String {
    if path == index.to_string() {
        kind.to_string()
    } else {
        format!("{path} {kind}")
    }
}

/// The bench's summary: the machine, the rates, the layers' times and, with
/// `--vs-torch`, the ratios to PyTorch's.
fn table(r: &Report) -> String {
    let mut s = String::new();
    macro_rules! out {
        ($($arg:tt)*) => {{
            s.push_str(&format!($($arg)*));
            s.push('\n');
        }};
    }
    out!("{} on {} threads, batch {}", r.model, r.threads, r.batch);
    out!(
        "  CPU {} ({}), direct and Winograd kernels at {}, GEMM at {}",
        r.cpu,
        r.simd_flags.join(" "),
        r.conv_isa,
        r.gemm_isa
    );
    out!("  train (fwd+bwd+Adam)   {:>8.0} img/s", r.train_images_per_sec);
    out!("  inference batch 100    {:>8.0} img/s", r.infer_images_per_sec_b100);
    out!("  inference batch 1000   {:>8.0} img/s", r.infer_images_per_sec_b1000);
    if let (Some(q), Some(pct)) = (
        r.extra.get("train_images_per_sec_augmented"),
        r.extra.get("augment_epoch_time_increase_pct"),
    ) {
        out!("  train with augmentation{q:>8.0} img/s (epoch time +{pct:.1}%)");
    }
    out!("  peak RSS               {:>8.1} MiB", r.peak_rss_mib);
    out!("  {:>3} {:<28} {:>10} {:>10}", "#", "layer", "fwd ms", "bwd ms");
    let (mut tf, mut tb) = (0.0, 0.0);
    for l in &r.layers {
        out!(
            "  {:>3} {:<28} {:>10.3} {:>10.3}",
            l.index,
            l.layer,
            l.forward_ms,
            l.backward_ms
        );
        tf += l.forward_ms;
        tb += l.backward_ms;
    }
    out!("  {:>3} {:<28} {:>10.3} {:>10.3}", "", "total", tf, tb);
    if let Some(t) = &r.torch {
        out!(
            "  versus PyTorch {} in the same run (dlfs / PyTorch):",
            t.get("torch")
                .map_or("?".into(), |v| v.as_str().map_or_else(|| v.to_string(), String::from))
        );
        for (key, ours) in [
            ("train_images_per_sec", r.train_images_per_sec),
            ("infer_images_per_sec_b100", r.infer_images_per_sec_b100),
            ("infer_images_per_sec_b1000", r.infer_images_per_sec_b1000),
        ] {
            if let Some(theirs) = t.get(key).and_then(|v| v.as_f64()) {
                out!("    {key:<28} {ours:>8.0} / {theirs:>8.0} = {:.2}x", ours / theirs);
            }
        }
    }
    s
}

/// Runs the PyTorch anchor's `bench` mode with the same thread count and returns its
/// JSON medians, or explains what is missing and returns `None`.
fn run_torch(
    script: &str,
    python: &str,
    windows: usize,
    data: &std::path::Path,
    net: &Network,
) -> Option<BTreeMap<String, serde_json::Value>> {
    let script = if script.is_empty() {
        crate::root().join("scripts/torch_models.py")
    } else {
        PathBuf::from(script)
    };
    let model = match net.kind() {
        "DeepConvNet" => "deep",
        "Vgg" => "vgg",
        "ResNet" => "resnet",
        "GoogLeNet" => "googlenet",
        "ConvStack" => "convstack",
        other => {
            eprintln!("--vs-torch: the PyTorch script has no {other}. Going on without PyTorch.");
            return None;
        }
    };
    let config = net.metadata().get("config").cloned().unwrap_or_default();
    let hint = "a Python with torch, numpy and safetensors is needed: python3 -m venv .venv && .venv/bin/pip install torch numpy safetensors, then --python .venv/bin/python";
    let ok = std::process::Command::new(python)
        .args(["-c", "import torch, numpy, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("--vs-torch: {python} cannot import torch, numpy and safetensors; {hint}. Going on without PyTorch.");
        return None;
    }
    if !script.is_file() {
        eprintln!(
            "--vs-torch: no script at {}. Going on without PyTorch.",
            script.display()
        );
        return None;
    }
    let out = std::env::temp_dir().join(format!("dlfs-torch-{}.json", std::process::id()));
    let threads = rayon::current_num_threads().to_string();
    let windows = windows.to_string();
    eprintln!(
        "running PyTorch: {} bench --model {model} --threads {threads}",
        script.display()
    );
    let status = std::process::Command::new(python)
        .arg(&script)
        .args(["bench", "--model", model, "--config", &config])
        .args(["--threads", &threads, "--windows", &windows, "--json"])
        .arg(&out)
        .arg("--mnist")
        .arg(data)
        .status();
    let result = match status {
        Ok(s) if s.success() => std::fs::read(&out).ok().and_then(|b| serde_json::from_slice(&b).ok()),
        other => {
            eprintln!("--vs-torch: the PyTorch run failed ({other:?}). Going on without it.");
            None
        }
    };
    let _ = std::fs::remove_file(&out);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_times_per_repetition() {
        use std::time::Duration;
        assert_eq!(per_second(1000, Duration::from_millis(250)), 4000.0);
        assert_eq!(millis_each(Duration::from_millis(1500), 3), 500.0);
        assert_eq!(millis_each(Duration::from_micros(2500), 1), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5, "the mean of the middle two");
    }

    #[test]
    fn the_machine_is_read_from_proc() {
        let status = "Name:\txtask\nVmPeak:\t 999999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(vm_hwm_mib(status), Some(200.0));
        assert_eq!(vm_hwm_mib("VmHWM:\n"), None);
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14  \nflags\t\t: fpu\nmodel name\t: other\n";
        assert_eq!(model_name(cpuinfo).as_deref(), Some("AMD EPYC 9R14"));
        assert_eq!(model_name("processor\t: 0\n"), None);
        if cfg!(target_os = "linux") {
            // this process holds its own code and heap: more than a MiB, less than all memory
            let peak = peak_rss_mib();
            assert!(peak > 1.0 && peak < 1024.0 * 1024.0, "{peak}");
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
            assert_eq!(Some(cpu_model()), model_name(&cpuinfo).or(Some("unknown".into())));
        }
        // whatever DLFS_SIMD says, the widest level the CPU has
        assert_eq!(gemm_isa(), dl_tensor::Isa::best().name());
    }

    #[test]
    fn the_table_gives_the_rates_the_layers_with_their_total_and_the_ratios_to_pytorch() {
        let layer = |index, layer: &str, forward_ms, backward_ms| LayerTime {
            index,
            layer: layer.into(),
            forward_ms,
            backward_ms,
        };
        let mut r = Report {
            model: "DeepConvNet".into(),
            cpu: "a CPU".into(),
            simd_flags: vec!["avx2".into(), "fma".into()],
            conv_isa: "avx2".into(),
            gemm_isa: "avx2".into(),
            threads: 2,
            batch: 100,
            images_per_window: 2000,
            train_images_per_sec: 1000.0,
            train_images_per_sec_windows: vec![1000.0],
            infer_images_per_sec_b100: 3000.0,
            infer_images_per_sec_b1000: 2500.0,
            infer_images_per_pass: BTreeMap::from([(100, 10_000), (1000, 10_000)]),
            peak_rss_mib: 300.25,
            layers: vec![layer(0, "Convolution", 1.5, 2.25), layer(1, "stem.1 Relu", 0.5, 0.125)],
            extra: BTreeMap::from([
                ("train_images_per_sec_augmented".to_string(), 900.0),
                ("augment_epoch_time_increase_pct".to_string(), 11.1),
            ]),
            torch: Some(BTreeMap::from([
                ("torch".to_string(), serde_json::json!("2.5.1")),
                ("train_images_per_sec".to_string(), serde_json::json!(800.0)),
                ("infer_images_per_sec_b100".to_string(), serde_json::json!(2000.0)),
            ])),
        };
        let want = "DeepConvNet on 2 threads, batch 100
  CPU a CPU (avx2 fma), direct and Winograd kernels at avx2, GEMM at avx2
  train (fwd+bwd+Adam)       1000 img/s
  inference batch 100        3000 img/s
  inference batch 1000       2500 img/s
  train with augmentation     900 img/s (epoch time +11.1%)
  peak RSS                  300.2 MiB
    # layer                            fwd ms     bwd ms
    0 Convolution                       1.500      2.250
    1 stem.1 Relu                       0.500      0.125
      total                             2.000      2.375
  versus PyTorch 2.5.1 in the same run (dlfs / PyTorch):
    train_images_per_sec             1000 /      800 = 1.25x
    infer_images_per_sec_b100        3000 /     2000 = 1.50x
";
        assert_eq!(table(&r), want);
        r.torch = None;
        r.extra.clear();
        let short = table(&r);
        assert!(!short.contains("PyTorch") && !short.contains("augmentation"), "{short}");
        assert_eq!(layer_label("3", 3, "Relu"), "Relu");
        assert_eq!(layer_label("features.3", 3, "Relu"), "features.3 Relu");
    }

    #[test]
    fn the_pace_of_the_clients_is_said_in_words() {
        assert_eq!(pace(0), "each as soon as its last answer came back");
        assert_eq!(pace(100), "each at most one every 100 ms");
    }
}
