//! `cargo xtask bench --model binary`: the binarized network's packed 1-bit kernels
//! against `f32`. Per binarized layer of the network, at batch 100, the packed
//! convolution (every popcount kernel this CPU has; its sums out, and with a batch norm
//! and sign fused in, its signs out) against the fastest `f32` convolution of the same
//! shape on the same `±1` values, in alternating windows (medians); then the whole network: test accuracy, file and weight bytes, images per
//! second at batch 1, 100 and 1000, in `f32` and packed (`bench --precision`'s table).

use std::path::Path;
use std::time::Instant;

use dl_layers::{Layer, Op};
use dl_tensor::binary::{BinaryConv, BitGrid, PopcountKernel, Thresholds};
use dl_tensor::{ConvAlgo, ConvGeometry, ConvPlan};
use serde::Serialize;

use crate::bench::{cpu_model, gemm_isa, median};
use crate::eval::EvalPrecision;
use crate::CliError;

/// Images per timed batch.
const BATCH: usize = 100;

/// One binarized layer's figures.
#[derive(Serialize, Clone, Debug)]
pub struct LayerRow {
    /// `"features.3"`-like position and the shape, e.g. `"conv 32->64 3x3 on 14x14"`.
    pub layer: String,
    /// The f32 convolution's kernel (`direct`, `winograd`, `lowered`) at its ISA.
    pub f32_kernel: String,
    /// Milliseconds per batch of 100, f32 (median).
    pub f32_ms: f64,
    /// Per popcount kernel: its name and milliseconds per batch (median), the sums out.
    pub packed_ms: Vec<(String, f64)>,
    /// The same with a batch norm and sign fused in (the signs out, as the packed
    /// network runs the layer).
    pub fused_ms: Vec<(String, f64)>,
}

impl LayerRow {
    /// f32's time over the fastest packed kernel's.
    pub fn speedup(&self) -> f64 {
        self.f32_ms / fastest(&self.packed_ms)
    }

    /// f32's time over the fastest fused kernel's.
    pub fn fused_speedup(&self) -> f64 {
        self.f32_ms / fastest(&self.fused_ms)
    }
}

/// The least of the times.
fn fastest(times: &[(String, f64)]) -> f64 {
    times.iter().map(|p| p.1).fold(f64::INFINITY, f64::min)
}

#[derive(Serialize)]
struct BinaryReport {
    cpu: String,
    simd_flags: Vec<String>,
    gemm_isa: String,
    conv_isa: String,
    popcount_kernel: String,
    threads: usize,
    params: String,
    windows: usize,
    batch: usize,
    layers: Vec<LayerRow>,
}

/// The binarized layers of `ops` (flattened) with the image shape each one sees.
fn binarized_layers(ops: &[Op], input: (usize, usize, usize)) -> Vec<(Op, (usize, usize, usize))> {
    let mut flat = Vec::new();
    fn flatten(ops: &[Op], out: &mut Vec<Op>) {
        for op in ops {
            match op {
                Op::Sequential(inner) => flatten(inner, out),
                other => out.push(other.clone()),
            }
        }
    }
    flatten(ops, &mut flat);
    let (mut c, mut h, mut w) = input;
    let mut out = Vec::new();
    for op in flat {
        let out_side =
            |side: usize, k: usize, stride: usize, pad: usize| (side + 2 * pad).saturating_sub(k) / stride.max(1) + 1;
        match &op {
            Op::Convolution { w: f, stride, pad, .. } | Op::BinaryConvolution { w: f, stride, pad } => {
                if matches!(op, Op::BinaryConvolution { .. }) {
                    out.push((op.clone(), (c, h, w)));
                }
                let s = f.shape();
                (c, h, w) = (s[0], out_side(h, s[2], *stride, *pad), out_side(w, s[3], *stride, *pad));
            }
            Op::Pooling {
                ph, pw, stride, pad, ..
            } => {
                (h, w) = (out_side(h, *ph, *stride, *pad), out_side(w, *pw, *stride, *pad));
            }
            Op::BinaryAffine { w: m } => {
                out.push((op.clone(), (c, h, w)));
                (c, h, w) = (m.shape()[1], 1, 1);
            }
            Op::Affine { w: m, .. } => (c, h, w) = (m.shape()[1], 1, 1),
            _ => {}
        }
    }
    out
}

/// `±1` values, `len` of them, both signs mixed.
fn signs(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| if (i * 7919 + 13) % 11 < 5 { 1.0 } else { -1.0 })
        .collect()
}

/// Times one layer: `f32` as the training code runs it (the fastest convolution; the
/// affine layer's GEMM) and every popcount kernel, alternating, `windows` times.
fn time_layer(op: &Op, (c, h, w): (usize, usize, usize), windows: usize) -> Result<LayerRow, CliError> {
    let other = |e: dl_tensor::binary::BinaryError| CliError::Other(e.to_string());
    let x = signs(BATCH * c * h * w);
    let grid = BitGrid::from_nchw(&x, BATCH, c, h, w);
    let (conv, name, f32_kernel, f32_run): (BinaryConv, String, String, Box<dyn Fn()>) = match op {
        Op::BinaryConvolution { w: f, stride, pad } => {
            let s = f.shape();
            let weights: Vec<f32> = f.iter().copied().collect();
            let conv = BinaryConv::new(&weights, [s[0], s[1], s[2], s[3]], *stride, *pad).map_err(other)?;
            let g =
                ConvGeometry::new(c, h, w, s[2], s[3], *stride, *pad).map_err(|e| CliError::Other(e.to_string()))?;
            let plan = ConvPlan::new(g, s[0], ConvAlgo::Auto);
            let kernel = plan.forward(&weights, None, &x).1.kernel_name();
            let name = format!("conv {c}->{} {}x{} on {h}x{w}", s[0], s[2], s[3]);
            let run = move || {
                std::hint::black_box(plan.forward(&weights, None, &x));
            };
            (conv, name, kernel.to_string(), Box::new(run))
        }
        Op::BinaryAffine { w: m } => {
            let (d, out) = (m.shape()[0], m.shape()[1]);
            let weights: Vec<f32> = m.iter().copied().collect();
            let conv = BinaryConv::affine(&weights, out, (c, h, w)).map_err(other)?;
            let xs = ndarray::Array2::from_shape_vec((BATCH, d), x).expect("batch shape");
            let ws = ndarray::Array2::from_shape_vec((d, out), weights).expect("weight shape");
            let run = move || {
                let mut y = ndarray::Array2::<f32>::zeros((BATCH, out));
                dl_tensor::gemm(1.0, &xs.view(), &ws.view(), 1.0, &mut y.view_mut());
                std::hint::black_box(y);
            };
            (conv, format!("affine {d}->{out}"), "gemm".into(), Box::new(run))
        }
        _ => unreachable!("binarized_layers gives binarized layers"),
    };
    // the cost does not depend on where the thresholds lie
    let t = Thresholds::from_fn(conv.dims()[0], conv.bound(), |_, v| v >= 0).map_err(other)?;
    let kernels = PopcountKernel::supported_levels();
    let mut f32_times = Vec::new();
    let mut packed_times = vec![Vec::new(); kernels.len()];
    let mut fused_times = vec![Vec::new(); kernels.len()];
    let reps = 5;
    f32_run();
    for _ in 0..windows.max(1) {
        let start = Instant::now();
        for _ in 0..reps {
            f32_run();
        }
        f32_times.push(crate::bench::millis_each(start.elapsed(), reps));
        for ((k, times), fused) in kernels.iter().zip(&mut packed_times).zip(&mut fused_times) {
            let start = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(conv.forward(&grid, *k).map_err(other)?);
            }
            times.push(crate::bench::millis_each(start.elapsed(), reps));
            let start = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(conv.forward_signs(&grid, &t, *k).map_err(other)?);
            }
            fused.push(crate::bench::millis_each(start.elapsed(), reps));
        }
    }
    let medians = |times: &[Vec<f64>]| {
        kernels
            .iter()
            .zip(times)
            .map(|(k, t)| (k.name().to_string(), median(t)))
            .collect()
    };
    Ok(LayerRow {
        layer: name,
        f32_kernel: format!("{f32_kernel} ({})", dl_tensor::Isa::active()),
        f32_ms: median(&f32_times),
        packed_ms: medians(&packed_times),
        fused_ms: medians(&fused_times),
    })
}

/// The table of [`LayerRow`]s, in Markdown.
pub fn layer_table(rows: &[LayerRow]) -> Vec<String> {
    let kernels: Vec<&str> = rows
        .first()
        .map_or(Vec::new(), |r| r.packed_ms.iter().map(|p| p.0.as_str()).collect());
    let mut head = "| layer (batch 100) | f32 kernel | f32 ms |".to_string();
    let mut rule = "| --- | --- | --- |".to_string();
    for k in &kernels {
        head += &format!(" {k} ms |");
        rule += " --- |";
    }
    for k in &kernels {
        head += &format!(" {k} + sign ms |");
        rule += " --- |";
    }
    head += " f32 / fastest packed | f32 / fastest packed + sign |";
    rule += " --- | --- |";
    let mut out = vec![head, rule];
    for r in rows {
        let mut line = format!("| {} | {} | {:.2} |", r.layer, r.f32_kernel, r.f32_ms);
        for (_, ms) in r.packed_ms.iter().chain(&r.fused_ms) {
            line += &format!(" {ms:.3} |");
        }
        line += &format!(" {:.1}x | {:.1}x |", r.speedup(), r.fused_speedup());
        out.push(line);
    }
    out
}

/// `bench --model binary` on the binarized network of `params`.
pub fn run(params: &Path, windows: usize, data: &Path, json: Option<&Path>) -> Result<(), CliError> {
    let net = dl_models::load(params)?;
    if net.kind() != "BinaryConvNet" {
        return Err(CliError::Other(format!(
            "{}: a {}, not a binarized network (train one with --model binary)",
            params.display(),
            net.kind()
        )));
    }
    let threads = rayon::current_num_threads();
    let kernel = PopcountKernel::active();
    println!("cpu: {}", cpu_model());
    println!("gemm at {}, {threads} threads, popcount kernel {kernel}", gemm_isa());
    let config: serde_json::Value = serde_json::from_str(net.metadata().get("config").map_or("{}", String::as_str))
        .map_err(|e| CliError::Other(e.to_string()))?;
    let input: (usize, usize, usize) =
        serde_json::from_value(config["input_dim"].clone()).map_err(|e| CliError::Other(format!("input_dim: {e}")))?;
    let op = net.root().inference_op()?;
    let mut rows = Vec::new();
    for (layer, shape) in binarized_layers(std::slice::from_ref(&op), input) {
        rows.push(time_layer(&layer, shape, windows)?);
    }
    for line in layer_table(&rows) {
        println!("{line}");
    }
    if let Some(path) = json {
        let report = BinaryReport {
            cpu: cpu_model(),
            simd_flags: dl_tensor::cpu_simd_flags().into_iter().map(String::from).collect(),
            gemm_isa: gemm_isa().into(),
            conv_isa: dl_tensor::Isa::active().name().into(),
            popcount_kernel: kernel.name().into(),
            threads,
            params: params.display().to_string(),
            windows,
            batch: BATCH,
            layers: rows,
        };
        let bytes = serde_json::to_vec_pretty(&report).map_err(|e| CliError::Other(e.to_string()))?;
        dl_tensor::fs::atomic_write(path, &bytes).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    let network_json = json.map(|p| p.with_extension("network.json"));
    crate::bench_precision::run(
        params,
        &[EvalPrecision::Float(dl_infer::Precision::F32), EvalPrecision::Binary],
        windows,
        data,
        network_json.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layers_are_found_with_the_shapes_they_see() {
        let net = dl_models::build("BinaryConvNet", None, 0).unwrap();
        let op = net.root().inference_op().unwrap();
        let layers = binarized_layers(std::slice::from_ref(&op), (1, 28, 28));
        let shapes: Vec<(usize, usize, usize)> = layers.iter().map(|l| l.1).collect();
        // 32->32 at 28x28, then the pool; 32->64 and 64->64 at 14x14, the pool; 64x7x7
        assert_eq!(shapes, [(32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 7, 7)]);
        assert!(matches!(layers[3].0, Op::BinaryAffine { .. }));
    }

    #[test]
    fn a_binarized_layer_after_an_affine_one_sees_its_outputs() {
        let zeros = |shape: &[usize]| dl_tensor::Tensor::zeros(ndarray::IxDyn(shape));
        let ops = [
            Op::Affine {
                w: zeros(&[12, 20]),
                b: zeros(&[20]),
            },
            Op::BinaryAffine { w: zeros(&[20, 5]) },
        ];
        let layers = binarized_layers(&ops, (3, 2, 2));
        let shapes: Vec<(usize, usize, usize)> = layers.iter().map(|l| l.1).collect();
        assert_eq!(shapes, [(20, 1, 1)]);
    }

    #[test]
    fn the_timed_inputs_are_signs_about_half_each() {
        let x = signs(1100);
        assert!(x.iter().all(|&v| v == 1.0 || v == -1.0));
        let plus = x.iter().filter(|&&v| v == 1.0).count();
        assert!((440..=660).contains(&plus), "{plus} of 1100 are +1");
    }

    #[test]
    fn the_layer_table_gives_the_speedup_over_the_fastest_packed_kernel() {
        let row = LayerRow {
            layer: "conv 32->64 3x3 on 14x14".into(),
            f32_kernel: "direct (avx512)".into(),
            f32_ms: 10.0,
            packed_ms: vec![("scalar".into(), 5.0), ("popcnt".into(), 2.0)],
            fused_ms: vec![("scalar".into(), 1.25), ("popcnt".into(), 4.0)],
        };
        assert_eq!(row.speedup(), 5.0);
        assert_eq!(row.fused_speedup(), 8.0);
        let t = layer_table(&[row]);
        assert_eq!(
            t[0],
            "| layer (batch 100) | f32 kernel | f32 ms | scalar ms | popcnt ms | scalar + sign ms | popcnt + sign ms \
             | f32 / fastest packed | f32 / fastest packed + sign |"
        );
        assert_eq!(
            t[2],
            "| conv 32->64 3x3 on 14x14 | direct (avx512) | 10.00 | 5.000 | 2.000 | 1.250 | 4.000 | 5.0x | 8.0x |"
        );
    }
}
