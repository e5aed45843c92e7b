//! Benchmarks of the element-wise and pooling layers, and of a convolution with the ReLU
//! after it, at DeepConvNet's batch shapes (batch 100), forward and backward, on the
//! rayon pool (all cores unless RAYON_NUM_THREADS says otherwise). Run with
//! `cargo bench -p dl-layers`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dl_layers::gradcheck::random_input;
use dl_layers::{Convolution, Deskew, Init, Layer, Pooling, Relu, Sequential};

fn pooling(c: &mut Criterion) {
    let mut group = c.benchmark_group("pooling");
    // The 2x2/2 fast path on the first pooling layer's input, and the general path on
    // the same values with a 29th column that no window reads (as the tie test).
    for (name, w) in [("2x2 fast path", 28usize), ("general path", 29)] {
        let x = random_input(&[100, 16, 28, w], 0.0, 1);
        let mut layer = Pooling::max(2, 2, 2, 0);
        let y = layer.forward(x.clone(), true).unwrap();
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| layer.forward(x.clone(), true).unwrap())
        });
        let dout = random_input(y.shape(), 0.0, 2);
        group.bench_function(BenchmarkId::new("backward", name), |b| {
            b.iter(|| layer.backward(dout.clone()))
        });
    }
    group.finish();
}

fn relu(c: &mut Criterion) {
    let mut group = c.benchmark_group("relu");
    let x = random_input(&[100, 16, 28, 28], 0.0, 3);
    let mut layer = Relu::new();
    layer.forward(x.clone(), true).unwrap();
    group.bench_function("forward train", |b| b.iter(|| layer.forward(x.clone(), true).unwrap()));
    group.bench_function("forward eval", |b| b.iter(|| layer.forward(x.clone(), false).unwrap()));
    group.bench_function("backward", |b| b.iter(|| layer.backward(x.clone())));
    group.finish();
}

/// A training step (forward and backward) of DeepConvNet's second convolution (16 to 16
/// channels, 28x28) and the ReLU after it: run as one by a `Sequential`
/// (`Layer::forward_relu_train`), and as the two layers one after the other.
fn convolution_relu(c: &mut Criterion) {
    let mut group = c.benchmark_group("convolution+relu train");
    let x = random_input(&[100, 16, 28, 28], 0.0, 4);
    let dout = random_input(&[100, 16, 28, 28], 0.0, 5);
    let conv = Convolution::new(16, 16, 3, 3, 1, 1, Init::He, 6);
    let mut fused = Sequential::new().with(conv.clone()).with(Relu::new());
    group.bench_function("as one", |b| {
        b.iter(|| {
            fused.forward(x.clone(), true).unwrap();
            fused.backward(dout.clone())
        })
    });
    let (mut conv, mut relu) = (conv, Relu::new());
    group.bench_function("one by one", |b| {
        b.iter(|| {
            let y = conv.forward(x.clone(), true).unwrap();
            relu.forward(y, true).unwrap();
            conv.backward(relu.backward(dout.clone()))
        })
    });
    group.finish();
}

/// Deskewing a batch of 100 digit-like images (sparse non-negative ink), in evaluation.
fn deskew(c: &mut Criterion) {
    let mut group = c.benchmark_group("deskew");
    let ink = random_input(&[100, 1, 28, 28], 0.0, 7);
    let x = ink.mapv(|v| if v > 0.4 { v } else { 0.0 });
    let mut layer = Deskew::new();
    group.bench_function("forward eval", |b| b.iter(|| layer.forward(x.clone(), false).unwrap()));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = pooling, relu, convolution_relu, deskew
}
criterion_main!(benches);
