//! `cargo xtask bench --precision f32,f16,bf16,int8`: one network at several
//! precisions in one run: test accuracy, file size, stored weights, and inference
//! throughput at batch 1, 100 and 1000, the precisions measured in alternation and
//! quoted as medians.

use std::path::Path;
use std::time::Instant;

use dl_data::Mnist;
use dl_layers::Tensor;
use dl_models::Network;
use serde::Serialize;

use crate::bench::{cpu_model, gemm_isa, median};
use crate::eval::{calibration_images, Engine, EvalPrecision};
use crate::CliError;

/// Training images int8 is calibrated on.
const CALIBRATION: usize = 1000;

/// The batch sizes measured and the images each timed pass runs through.
const BATCHES: [(usize, usize); 3] = [(1, 300), (100, 2000), (1000, 4000)];

/// One row of the table.
#[derive(Serialize, Clone)]
pub struct PrecisionRow {
    /// `f32`, `f16`, `bf16`, `int8`, or `network f32` (the training code's own
    /// forward).
    pub precision: String,
    /// The instruction set its kernels ran at: the convolution's level for the float
    /// precisions, the int8 kernel for int8.
    pub kernel: String,
    /// Correct of the test images (MNIST's 10,000).
    pub test_correct: usize,
    /// Bytes of the parameter file stored at this precision.
    pub file_bytes: usize,
    /// Bytes of the weights held in memory for inference.
    pub weight_bytes: usize,
    /// Images per second at batch 1, 100 and 1000 (medians of the windows).
    pub images_per_sec: [f64; 3],
}

#[derive(Serialize)]
struct PrecisionReport {
    cpu: String,
    simd_flags: Vec<String>,
    gemm_isa: String,
    conv_isa: String,
    int8_kernel: String,
    threads: usize,
    model: String,
    params: String,
    windows: usize,
    /// `(batch size, images per timed pass)`.
    batches: Vec<(usize, usize)>,
    rows: Vec<PrecisionRow>,
}

/// What is measured: the training code's forward, or the inference engine.
enum Runner {
    Network(Box<Network>),
    Engine(Engine),
}

impl Runner {
    fn classify(&mut self, x: &Tensor, batch: usize) -> Result<Vec<usize>, CliError> {
        match self {
            Runner::Network(n) => Ok(n.classify(x, batch)?),
            Runner::Engine(e) => {
                let mut out = Vec::with_capacity(x.shape()[0]);
                for chunk in x.axis_chunks_iter(ndarray::Axis(0), batch.max(1)) {
                    let scores = e.predict(&chunk.to_owned())?;
                    let scores = scores
                        .into_dimensionality::<ndarray::Ix2>()
                        .map_err(|_| CliError::Other("the network's output is not (N, classes)".into()))?;
                    out.extend(dl_tensor::argmax_rows(&scores.view()));
                }
                Ok(out)
            }
        }
    }

    fn predict(&mut self, x: &Tensor) -> Result<(), CliError> {
        match self {
            Runner::Network(n) => n.predict(x.clone(), false).map(drop).map_err(CliError::from),
            Runner::Engine(e) => e.predict(x).map(drop),
        }
    }
}

/// Measures `precisions` (and the training code's f32 forward) on the network of
/// `params`.
pub fn run(
    params: &Path,
    precisions: &[EvalPrecision],
    windows: usize,
    data: &Path,
    json: Option<&Path>,
) -> Result<(), CliError> {
    let mnist = Mnist::load(data)?;
    let largest = BATCHES.iter().map(|b| b.1).max().unwrap_or(0);
    if mnist.test.len() < largest {
        return Err(CliError::Other(format!(
            "{}: the bench times passes over the first {largest} test images, and this set has {}",
            data.display(),
            mnist.test.len()
        )));
    }
    let net = dl_models::load(params)?;
    let threads = rayon::current_num_threads();
    println!("cpu: {}", cpu_model());
    println!("gemm at {}, {threads} threads", gemm_isa());
    let kind = net.kind().to_string();
    println!("{kind} from {}", params.display());
    let conv_isa = dl_tensor::Isa::active();
    let int8_kernel = dl_tensor::int8::Int8Kernel::active();
    println!("convolutions at {conv_isa}, int8 kernel {int8_kernel}");
    let mut runners = vec![(
        "network f32".to_string(),
        conv_isa.name().to_string(),
        net.params_to_bytes().len(),
        4 * net.param_count(),
        Runner::Network(Box::new(net.clone())),
    )];
    let calibration = if precisions.contains(&EvalPrecision::Int8) {
        Some(calibration_images(CALIBRATION, Some(data))?)
    } else {
        None
    };
    for &p in precisions {
        let engine = Engine::new(&net, p, calibration.as_ref())?;
        let (file_bytes, kernel) = match (&engine, p) {
            (Engine::Int8(q), _) => (q.to_bytes().len(), q.kernel().name()),
            (Engine::Binary(b), _) => (b.to_bytes().len(), b.kernel().name()),
            (_, EvalPrecision::Float(f)) => (net.params_to_bytes_as(f).len(), conv_isa.name()),
            (_, EvalPrecision::Int8 | EvalPrecision::Binary) => unreachable!("an int8 or binary engine"),
        };
        runners.push((
            p.name().to_string(),
            kernel.to_string(),
            file_bytes,
            engine.weight_bytes(),
            Runner::Engine(engine),
        ));
    }
    let (x, t) = mnist.test.batch(&(0..mnist.test.len()).collect::<Vec<_>>());
    let mut rows = Vec::new();
    let mut rates = vec![vec![Vec::new(); BATCHES.len()]; runners.len()];
    for (name, kernel, file_bytes, weight_bytes, runner) in &mut runners {
        let classes = runner.classify(&x, 500)?;
        let correct = classes.iter().zip(&t).filter(|(p, t)| p == t).count();
        rows.push(PrecisionRow {
            precision: name.clone(),
            kernel: kernel.clone(),
            test_correct: correct,
            file_bytes: *file_bytes,
            weight_bytes: *weight_bytes,
            images_per_sec: [0.0; 3],
        });
    }
    for _ in 0..windows.max(1) {
        for (r, (_, _, _, _, runner)) in runners.iter_mut().enumerate() {
            for (b, &(bs, images)) in BATCHES.iter().enumerate() {
                let chunks: Vec<Tensor> = x
                    .slice_axis(ndarray::Axis(0), (0..images).into())
                    .axis_chunks_iter(ndarray::Axis(0), bs)
                    .map(|c| c.to_owned())
                    .collect();
                runner.predict(&chunks[0])?;
                let start = Instant::now();
                for c in &chunks {
                    runner.predict(c)?;
                }
                rates[r][b].push(crate::bench::per_second(images, start.elapsed()));
            }
        }
    }
    for (row, r) in rows.iter_mut().zip(&rates) {
        for (b, w) in r.iter().enumerate() {
            row.images_per_sec[b] = median(w);
        }
    }
    for line in table(&rows) {
        println!("{line}");
    }
    if let Some(path) = json {
        let report = PrecisionReport {
            cpu: cpu_model(),
            simd_flags: dl_tensor::cpu_simd_flags().into_iter().map(String::from).collect(),
            gemm_isa: gemm_isa().into(),
            conv_isa: conv_isa.name().into(),
            int8_kernel: int8_kernel.name().into(),
            threads,
            model: kind,
            params: params.display().to_string(),
            windows,
            batches: BATCHES.to_vec(),
            rows,
        };
        let bytes = serde_json::to_vec_pretty(&report).map_err(|e| CliError::Other(e.to_string()))?;
        dl_tensor::fs::atomic_write(path, &bytes).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The rows as a Markdown table, throughput relative to the engine's f32 where it ran.
pub fn table(rows: &[PrecisionRow]) -> Vec<String> {
    let base = rows.iter().find(|r| r.precision == "f32").map(|r| r.images_per_sec);
    let mut out = vec![
        "| precision | kernels | test accuracy | file bytes | weight bytes | img/s batch 1 | img/s batch 100 | img/s batch 1000 |".to_string(),
        "| --- | --- | --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    for r in rows {
        let speeds: Vec<String> = r
            .images_per_sec
            .iter()
            .enumerate()
            .map(|(i, v)| match base {
                Some(b) => format!("{v:.0} ({:.2}x)", v / b[i]),
                None => format!("{v:.0}"),
            })
            .collect();
        out.push(format!(
            "| {} | {} | {:.2}% | {} | {} | {} |",
            r.precision,
            r.kernel,
            r.test_correct as f64 / 100.0,
            r.file_bytes,
            r.weight_bytes,
            speeds.join(" | ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_speeds_relative_to_the_engines_f32() {
        let row = |p: &str, correct, speeds| PrecisionRow {
            precision: p.into(),
            kernel: "avx2".into(),
            test_correct: correct,
            file_bytes: 10,
            weight_bytes: 8,
            images_per_sec: speeds,
        };
        let rows = [
            row("f32", 9943, [100.0, 2000.0, 4000.0]),
            row("f16", 9941, [50.0, 3000.0, 1000.0]),
        ];
        let t = table(&rows);
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[2],
            "| f32 | avx2 | 99.43% | 10 | 8 | 100 (1.00x) | 2000 (1.00x) | 4000 (1.00x) |"
        );
        assert_eq!(
            t[3],
            "| f16 | avx2 | 99.41% | 10 | 8 | 50 (0.50x) | 3000 (1.50x) | 1000 (0.25x) |"
        );
        let alone = table(&rows[1..]);
        assert_eq!(alone[2], "| f16 | avx2 | 99.41% | 10 | 8 | 50 | 3000 | 1000 |");
    }
}
