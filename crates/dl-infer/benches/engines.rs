//! Benchmarks of the inference engines on models of the registry (random weights, batch
//! 100), called from the program's main thread, as a library's user calls them. Run
//! with `cargo bench -p dl-infer` (every core), or `RAYON_NUM_THREADS=1 cargo bench -p
//! dl-infer` for a pool of one thread.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dl_infer::{Inference, Precision, QuantizedNetwork};
use dl_layers::Tensor;
use dl_models::ModelConfig;
use rand::{Rng, SeedableRng};

fn images(n: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_shape_fn(vec![n, 1, 28, 28], |_| rng.gen_range(0.0..1.0))
}

fn engines(c: &mut Criterion) {
    let mut group = c.benchmark_group("predict batch 100");
    group.sample_size(20);
    let x = images(100, 1);
    for kind in ["DeepConvNet", "ResNet", "GoogLeNet"] {
        let net = ModelConfig::default_for(kind).unwrap().build(7).unwrap();
        for precision in [Precision::F32, Precision::F16] {
            let engine = Inference::new(net.root(), precision).unwrap();
            group.bench_function(BenchmarkId::new(precision.name(), kind), |b| {
                b.iter(|| engine.predict(&x).unwrap())
            });
        }
        // int8 has no form of the residual block and the inception module
        if kind == "DeepConvNet" {
            let int8 = QuantizedNetwork::quantize(net.root(), &images(100, 2)).unwrap();
            group.bench_function(BenchmarkId::new("int8", kind), |b| b.iter(|| int8.predict(&x).unwrap()));
        }
    }
    group.finish();
}

criterion_group!(benches, engines);
criterion_main!(benches);
