//! Kernel benchmarks: the GEMM backends on this network's per-image shapes (and the bf16
//! GEMM of `dl_tensor::dpbf16`), im2col and col2im, the convolution kernels, and the
//! raw rates of the multiply-add instructions they rest on. Run with `cargo bench -p
//! dl-tensor`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dl_tensor::dpbf16::{gemm_bf16, Bf16Kernel};
use dl_tensor::{
    col2im_chw, gemm, gemm_matrixmultiply, im2col_chw, ConvGeometry, ConvKernel, DirectConv, Isa, Winograd4Conv,
    WinogradConv,
};
use ndarray::Array2;

/// `(name, M, K, N)`: the per-image products of DeepConvNet's convolutions.
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("conv2 fwd W·col", 16, 144, 784),
    ("conv4 fwd W·col", 32, 288, 256),
    ("conv6 fwd W·col", 64, 576, 64),
    ("conv2 dW dout·colT", 16, 784, 144),
    ("conv2 dcol WT·dout", 144, 16, 784),
    ("conv6 dcol WT·dout", 576, 64, 64),
];

/// `(name, C, H, FN, pad)`: DeepConvNet's 3x3 stride-1 convolutions.
const LAYERS: [(&str, usize, usize, usize, usize); 6] = [
    ("conv1", 1, 28, 16, 1),
    ("conv2", 16, 28, 16, 1),
    ("conv3", 16, 14, 32, 1),
    ("conv4", 32, 14, 32, 2),
    ("conv5", 32, 8, 64, 1),
    ("conv6", 64, 8, 64, 1),
];

fn gemm_backends(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    for &(name, m, k, n) in SHAPES {
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 * 0.1);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.1);
        let mut out = Array2::<f32>::zeros((m, n));
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_with_input(BenchmarkId::new("gemm-crate", name), &(), |bch, _| {
            bch.iter(|| gemm(1.0, &a.view(), &b.view(), 0.0, &mut out.view_mut()))
        });
        group.bench_with_input(BenchmarkId::new("matrixmultiply", name), &(), |bch, _| {
            bch.iter(|| gemm_matrixmultiply(1.0, &a.view(), &b.view(), 0.0, &mut out.view_mut()))
        });
        for kernel in [Bf16Kernel::Avx512].into_iter().filter(|k| k.supported()) {
            group.bench_with_input(BenchmarkId::new(format!("bf16-{kernel}"), name), &(), |bch, _| {
                bch.iter(|| gemm_bf16(kernel, &a.view(), &b.view(), 0.0, &mut out.view_mut()))
            });
        }
    }
    group.finish();
}

/// Multiply-adds per second of the bare instructions: 12 independent accumulators in
/// registers (more than latency times issue width), so the rate is the CPU's issue
/// rate. `vfmadd231ps` does 16 products per instruction, `vdpbf16ps` 32 (the
/// throughput counts instructions).
#[cfg(target_arch = "x86_64")]
fn instruction_rates(c: &mut Criterion) {
    use std::arch::x86_64::*;
    const ITERS: usize = 10_000;
    const ACCUMULATORS: usize = 12;
    macro_rules! rate_loop {
        ($x:expr, $y:expr, $op:ident) => {{
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            );
            let (mut a4, mut a5, mut a6, mut a7) = (a0, a1, a2, a3);
            let (mut a8, mut a9, mut a10, mut a11) = (a0, a1, a2, a3);
            for _ in 0..ITERS {
                a0 = $op(a0, $x, $y);
                a1 = $op(a1, $x, $y);
                a2 = $op(a2, $x, $y);
                a3 = $op(a3, $x, $y);
                a4 = $op(a4, $x, $y);
                a5 = $op(a5, $x, $y);
                a6 = $op(a6, $x, $y);
                a7 = $op(a7, $x, $y);
                a8 = $op(a8, $x, $y);
                a9 = $op(a9, $x, $y);
                a10 = $op(a10, $x, $y);
                a11 = $op(a11, $x, $y);
            }
            [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11]
                .iter()
                .map(|&r| _mm512_reduce_add_ps(r))
                .sum::<f32>()
        }};
    }
    #[target_feature(enable = "avx512f")]
    fn fma_acc(acc: __m512, x: __m512, y: __m512) -> __m512 {
        _mm512_fmadd_ps(x, y, acc)
    }
    #[target_feature(enable = "avx512f")]
    unsafe fn fma(a: f32) -> f32 {
        let (x, y) = (_mm512_set1_ps(a), _mm512_set1_ps(0.999));
        rate_loop!(x, y, fma_acc)
    }
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dpbf16(a: f32) -> f32 {
        // SAFETY: a vector of floats reinterpreted as 32 bf16 values (any bits are)
        let (x, y): (__m512bh, __m512bh) = unsafe {
            (
                std::mem::transmute::<__m512, __m512bh>(_mm512_set1_ps(a)),
                std::mem::transmute::<__m512, __m512bh>(_mm512_set1_ps(0.999)),
            )
        };
        rate_loop!(x, y, _mm512_dpbf16_ps)
    }
    if !Isa::Avx512.supported() {
        return;
    }
    let mut group = c.benchmark_group("instruction-rate");
    group.throughput(Throughput::Elements((ACCUMULATORS * ITERS) as u64));
    // SAFETY: AVX-512F checked above; the bf16 one only where the CPU has AVX-512 BF16.
    group.bench_function("vfmadd231ps-zmm", |b| {
        b.iter(|| unsafe { fma(std::hint::black_box(1.0)) })
    });
    if Bf16Kernel::Avx512.supported() {
        // SAFETY: as above.
        group.bench_function("vdpbf16ps-zmm", |b| {
            b.iter(|| unsafe { dpbf16(std::hint::black_box(1.0)) })
        });
    }
    group.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn instruction_rates(_: &mut Criterion) {}

fn lowering(c: &mut Criterion) {
    let mut group = c.benchmark_group("lowering");
    // conv2 (16 channels, 28x28, pad 1) and conv4 (32 channels, 14x14, pad 2)
    for &(name, ch, hw, pad) in &[("conv2", 16usize, 28usize, 1usize), ("conv4", 32, 14, 2)] {
        let g = ConvGeometry::new(ch, hw, hw, 3, 3, 1, pad).unwrap();
        let x: Vec<f32> = (0..ch * hw * hw).map(|i| (i % 17) as f32).collect();
        let mut col = vec![0.0f32; g.col_rows() * g.col_cols()];
        let mut back = vec![0.0f32; x.len()];
        group.throughput(Throughput::Bytes((col.len() * 4) as u64));
        group.bench_function(BenchmarkId::new("im2col_chw", name), |b| {
            b.iter(|| im2col_chw(&x, &g, &mut col))
        });
        group.bench_function(BenchmarkId::new("col2im_chw", name), |b| {
            b.iter(|| col2im_chw(&col, &g, &mut back))
        });
    }
    group.finish();
}

/// One image of each of DeepConvNet's stride-1 convolutions, `W · x + b`: the direct
/// kernel and Winograd F(2x2, 3x3), at every vector instruction set the CPU has
/// (`direct-avx2`, `winograd-avx512`, ...), against `im2col_chw` + `gemm` (what the
/// layer does at the scalar level); then the filter gradient by each path. The `dx*` rows are the
/// input gradients as the layer computes them: the transposed convolution of `dout`
/// (`FN` channels in, `C` out).
fn convolution(c: &mut Criterion) {
    let mut group = c.benchmark_group("convolution");
    // the input gradients' convolutions (flipped filters, channels swapped)
    let dx = [
        ("dx2", 16, 28, 16, 1),
        ("dx3", 32, 14, 16, 1),
        ("dx4", 32, 16, 32, 0),
        ("dx5", 64, 8, 32, 1),
    ];
    for &(name, ch, hw, f, pad) in LAYERS.iter().chain(&dx) {
        let g = ConvGeometry::new(ch, hw, hw, 3, 3, 1, pad).unwrap();
        let x: Vec<f32> = (0..ch * hw * hw).map(|i| (i % 17) as f32 * 0.1).collect();
        let w = Array2::from_shape_fn((f, g.col_rows()), |(i, j)| ((i * 7 + j * 3) % 11) as f32 * 0.1);
        let bias = vec![0.5f32; f];
        let mut out = vec![0.0f32; f * g.col_cols()];
        group.throughput(Throughput::Elements((2 * f * g.col_rows() * g.col_cols()) as u64));
        let mut col = vec![0.0f32; g.col_rows() * g.col_cols()];
        group.bench_function(BenchmarkId::new("im2col+gemm", name), |b| {
            b.iter(|| {
                im2col_chw(&x, &g, &mut col);
                let colv = ndarray::ArrayView2::from_shape((g.col_rows(), g.col_cols()), &col[..]).unwrap();
                let mut o = ndarray::ArrayViewMut2::from_shape((f, g.col_cols()), &mut out[..]).unwrap();
                for (mut row, &bv) in o.rows_mut().into_iter().zip(&bias) {
                    row.fill(bv);
                }
                gemm(1.0, &w.view(), &colv, 1.0, &mut o);
            })
        });
        for isa in vector_levels() {
            if let Some(d) = DirectConv::with_isa(w.as_slice().unwrap(), f, &g, isa) {
                let mut scratch = vec![0.0f32; d.scratch_len()];
                group.bench_function(BenchmarkId::new(format!("direct-{isa}"), name), |b| {
                    b.iter(|| d.forward_image(&x, Some(&bias), &mut out, &mut scratch))
                });
            }
            if let Some(d) = WinogradConv::with_isa(w.as_slice().unwrap(), f, &g, isa) {
                let mut scratch = vec![0.0f32; d.scratch_len()];
                group.bench_function(BenchmarkId::new(format!("winograd-{isa}"), name), |b| {
                    b.iter(|| d.forward_image(&x, Some(&bias), &mut out, &mut scratch))
                });
                // six images, as many at once as the kernel takes (3 on outputs of 8 x 8
                // or less): the time of six, against six times the row above
                let (x6, mut out6) = (x.repeat(6), out.repeat(6));
                let step = d.images_per_forward();
                group.bench_function(BenchmarkId::new(format!("winograd-{isa}-six"), name), |b| {
                    b.iter(|| {
                        for (xs, o) in x6.chunks(step * x.len()).zip(out6.chunks_mut(step * out.len())) {
                            d.forward_images(xs, Some(&bias), o, &mut scratch);
                        }
                    })
                });
            }
            // F(4x4, 3x3) on the layers of 9 x 9 outputs or more with 8 channels or more,
            // at every level
            if g.c < 8 || g.out_w < 9 {
                continue;
            }
            if let Some(d) = Winograd4Conv::with_isa(w.as_slice().unwrap(), f, &g, isa) {
                let mut scratch = vec![0.0f32; d.scratch_len()];
                group.bench_function(BenchmarkId::new(format!("winograd4-{isa}"), name), |b| {
                    b.iter(|| d.forward_image(&x, Some(&bias), &mut out, &mut scratch))
                });
            }
        }
        // The filter gradient of one image, dW += dout · col^T, db += row sums.
        let dout: Vec<f32> = (0..f * g.col_cols()).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let mut dw = Array2::<f32>::zeros((f, g.col_rows()));
        let mut db = vec![0.0f32; f];
        group.bench_function(BenchmarkId::new("dW-im2col+gemm", name), |b| {
            b.iter(|| {
                im2col_chw(&x, &g, &mut col);
                let colv = ndarray::ArrayView2::from_shape((g.col_rows(), g.col_cols()), &col[..]).unwrap();
                let dv = ndarray::ArrayView2::from_shape((f, g.col_cols()), &dout[..]).unwrap();
                gemm(1.0, &dv, &colv.t(), 1.0, &mut dw.view_mut());
                for (acc, row) in db.iter_mut().zip(dv.rows()) {
                    *acc += row.sum();
                }
            })
        });
        group.bench_function(BenchmarkId::new("dW-gemm-only", name), |b| {
            b.iter(|| {
                let colv = ndarray::ArrayView2::from_shape((g.col_rows(), g.col_cols()), &col[..]).unwrap();
                let dv = ndarray::ArrayView2::from_shape((f, g.col_cols()), &dout[..]).unwrap();
                gemm(1.0, &dv, &colv.t(), 1.0, &mut dw.view_mut());
            })
        });
        group.bench_function(BenchmarkId::new("dW-im2col-only", name), |b| {
            b.iter(|| im2col_chw(&x, &g, &mut col))
        });
        for isa in vector_levels() {
            if let Some(d) = DirectConv::with_isa(w.as_slice().unwrap(), f, &g, isa) {
                let mut scratch = vec![0.0f32; d.gradient_scratch_len()];
                let mut acc = d.gradient_accumulator();
                group.bench_function(BenchmarkId::new(format!("dW-direct-{isa}"), name), |b| {
                    b.iter(|| d.weight_gradient_image(&x, &dout, &mut acc, &mut scratch))
                });
            }
            if let Some(d) = WinogradConv::with_isa(w.as_slice().unwrap(), f, &g, isa) {
                let mut scratch = vec![0.0f32; d.gradient_scratch_len()];
                let mut acc = d.gradient_accumulator();
                group.bench_function(BenchmarkId::new(format!("dW-winograd-{isa}"), name), |b| {
                    b.iter(|| d.weight_gradient_image(&x, &dout, &mut acc, &mut scratch))
                });
                // a group of 5 images (`conv::GROUP`), as many at once as the kernel takes
                // (5 on the 8 x 8 outputs): the time of five images, against five times
                // the row above
                let (x5, dout5) = (x.repeat(5), dout.repeat(5));
                let step = d.images_per_gradient();
                group.bench_function(BenchmarkId::new(format!("dW-winograd-{isa}-group"), name), |b| {
                    b.iter(|| {
                        for (xs, ds) in x5.chunks(step * x.len()).zip(dout5.chunks(step * dout.len())) {
                            d.weight_gradient_images(xs, ds, &mut acc, &mut scratch);
                        }
                    })
                });
            }
            // F(4x4, 3x3)'s filter gradient where its forward runs, one image and a group
            if g.c < 8 || g.out_w < 9 {
                continue;
            }
            if let Some(d) = Winograd4Conv::with_isa(w.as_slice().unwrap(), f, &g, isa) {
                let mut scratch = vec![0.0f32; d.gradient_scratch_len()];
                let mut acc = d.gradient_accumulator();
                group.bench_function(BenchmarkId::new(format!("dW-winograd4-{isa}"), name), |b| {
                    b.iter(|| d.weight_gradient_image(&x, &dout, &mut acc, &mut scratch))
                });
                let (x5, dout5) = (x.repeat(5), dout.repeat(5));
                let step = d.images_per_gradient();
                group.bench_function(BenchmarkId::new(format!("dW-winograd4-{isa}-group"), name), |b| {
                    b.iter(|| {
                        for (xs, ds) in x5.chunks(step * x.len()).zip(dout5.chunks(step * dout.len())) {
                            d.weight_gradient_images(xs, ds, &mut acc, &mut scratch);
                        }
                    })
                });
            }
        }
    }
    group.finish();
}

/// The integer convolution of each DeepConvNet layer at every int8 kernel this CPU
/// has, beside the f32 kernels above (same shapes, one image, NHWC bytes in and out).
fn int8_convolution(c: &mut Criterion) {
    use dl_tensor::int8::{Int8Kernel, Int8Scratch, QConv, Requantize};
    let mut group = c.benchmark_group("int8-convolution");
    for &(name, ch, hw, f, pad) in &LAYERS {
        let g = ConvGeometry::new(ch, hw, hw, 3, 3, 1, pad).unwrap();
        let w: Vec<i8> = (0..f * ch * 9).map(|i| ((i * 7) % 255) as u8 as i8).collect();
        let conv = QConv::new(w, [f, ch, 3, 3], 1, pad, vec![100; f], 0).unwrap();
        let x: Vec<u8> = (0..ch * hw * hw).map(|i| (i % 251) as u8).collect();
        let multiplier = vec![1e-4f32; f];
        let rq = Requantize {
            multiplier: &multiplier,
            zero_point: 0,
            relu: true,
        };
        let mut out = vec![0u8; f * g.col_cols()];
        let mut scratch = Int8Scratch::default();
        group.throughput(Throughput::Elements((2 * f * g.col_rows() * g.col_cols()) as u64));
        for kernel in Int8Kernel::supported_levels() {
            group.bench_function(BenchmarkId::new(kernel.name(), name), |b| {
                b.iter(|| conv.forward_u8(&x, hw, hw, rq, &mut out, &mut scratch, kernel).unwrap())
            });
        }
    }
    group.finish();
}

/// The vector instruction sets this CPU has (`DLFS_SIMD` narrows them to one).
/// The ReLU's passes (`dl_tensor::relu`) over one image of DeepConvNet's first layers
/// (16 x 28 x 28 values), at every level the CPU has, scalar included.
fn relu_passes(c: &mut Criterion) {
    use dl_tensor::relu;
    let mut group = c.benchmark_group("relu");
    let n = 16 * 28 * 28;
    group.throughput(Throughput::Elements(n as u64));
    let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32 - 6.0).collect();
    let mut y = x.clone();
    let mut mask = vec![false; n];
    let mut out = vec![0.0f32; n];
    let mut levels = vector_levels();
    levels.insert(0, Isa::Scalar);
    for isa in levels {
        group.bench_function(BenchmarkId::new("forward_masked", isa), |b| {
            b.iter(|| {
                y.copy_from_slice(&x);
                relu::forward_masked(isa, &mut y, &mut mask)
            })
        });
        group.bench_function(BenchmarkId::new("backward", isa), |b| {
            b.iter(|| relu::backward(isa, &x, &mask, &mut out))
        });
    }
    group.finish();
}

/// DeepConvNet's first max pooling (2x2, stride 2) over one image (16 planes of
/// 28 x 28): forward with positions, forward without, and backward (`dl_tensor::pool`),
/// at every level the CPU has, scalar included.
fn pooling(c: &mut Criterion) {
    use dl_tensor::pool;
    let mut group = c.benchmark_group("pooling");
    let (planes, w, oh, ow) = (16, 28, 14, 14);
    group.throughput(Throughput::Elements((planes * w * w) as u64));
    let x: Vec<f32> = (0..planes * w * w).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect();
    let (mut o, mut a) = (vec![0.0f32; planes * oh * ow], vec![0u32; planes * oh * ow]);
    let mut levels = vector_levels();
    levels.insert(0, Isa::Scalar);
    for isa in levels {
        group.bench_function(BenchmarkId::new("max_pool_2x2", isa), |b| {
            b.iter(|| {
                for ((p, o), a) in x.chunks(w * w).zip(o.chunks_mut(oh * ow)).zip(a.chunks_mut(oh * ow)) {
                    pool::max_pool_2x2(isa, p, w, oh, ow, o, a);
                }
            })
        });
        group.bench_function(BenchmarkId::new("max_pool_2x2_values", isa), |b| {
            b.iter(|| {
                for (p, o) in x.chunks(w * w).zip(o.chunks_mut(oh * ow)) {
                    pool::max_pool_2x2_values(isa, p, w, oh, ow, o);
                }
            })
        });
        group.bench_function(BenchmarkId::new("max_unpool_2x2", isa), |b| {
            b.iter(|| pool::max_unpool_2x2(isa, planes, w, oh, ow, &o, &a))
        });
        // the ReLU and the pooling in one pass (a convolution's pooled training forward),
        // and the backward by codes into one image's gradient
        let mut codes = vec![0u8; planes * oh * ow];
        group.bench_function(BenchmarkId::new("max_pool_relu_2x2", isa), |b| {
            b.iter(|| {
                for ((p, o), c) in x
                    .chunks(w * w)
                    .zip(o.chunks_mut(oh * ow))
                    .zip(codes.chunks_mut(oh * ow))
                {
                    pool::max_pool_relu_2x2(isa, p, w, oh, ow, o, c);
                }
            })
        });
        let mut dx = vec![0.0f32; planes * w * w];
        group.bench_function(BenchmarkId::new("max_unpool_codes_2x2", isa), |b| {
            b.iter(|| pool::max_unpool_codes_2x2(isa, planes, w, oh, ow, &o, &codes, &mut dx))
        });
    }
    group.finish();
}

/// GoogLeNet's pool branch (3x3 windows, stride 1, padding 1) over one image at its
/// second inception module (64 planes of 14 x 14): forward with positions and without
/// (`dl_tensor::pool`), at every level the CPU has, scalar included.
fn pooling_3x3(c: &mut Criterion) {
    use dl_tensor::pool;
    let mut group = c.benchmark_group("pooling_3x3");
    let (planes, h, w) = (64, 14, 14);
    group.throughput(Throughput::Elements((planes * h * w) as u64));
    let x: Vec<f32> = (0..planes * h * w).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect();
    let (mut o, mut a) = (vec![0.0f32; planes * h * w], vec![0u32; planes * h * w]);
    let mut levels = vector_levels();
    levels.insert(0, Isa::Scalar);
    for isa in levels {
        group.bench_function(BenchmarkId::new("max_pool_3x3", isa), |b| {
            b.iter(|| {
                for ((p, o), a) in x.chunks(h * w).zip(o.chunks_mut(h * w)).zip(a.chunks_mut(h * w)) {
                    pool::max_pool_3x3(isa, p, h, w, o, a);
                }
            })
        });
        group.bench_function(BenchmarkId::new("max_pool_3x3_values", isa), |b| {
            b.iter(|| {
                for (p, o) in x.chunks(h * w).zip(o.chunks_mut(h * w)) {
                    pool::max_pool_3x3_values(isa, p, h, w, o);
                }
            })
        });
    }
    group.finish();
}

fn vector_levels() -> Vec<Isa> {
    let forced = Isa::from_env().ok().flatten();
    Isa::supported_levels()
        .into_iter()
        .filter(|&i| i != Isa::Scalar && forced.is_none_or(|f| f == i))
        .collect()
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = gemm_backends, lowering, convolution, relu_passes, pooling, pooling_3x3, int8_convolution, instruction_rates
}
criterion_main!(benches);
