//! Kernel benchmarks: the GEMM backends on this network's per-image shapes, im2col and
//! col2im. Run with `cargo bench -p dl-tensor`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dl_tensor::{col2im_chw, gemm, gemm_matrixmultiply, im2col_chw, ConvGeometry};
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
    }
    group.finish();
}

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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = gemm_backends, lowering
}
criterion_main!(benches);
