//! The end-to-end checks CI can afford: one epoch on the first 6,000 real MNIST training
//! images, measured on the first 1,000 test images.
//!
//! In so short a run the book's dropout (on the hidden layer and on the scores) slows
//! learning a great deal: PyTorch, running the same DeepConvNet with the book's dropout
//! at batch 20 (`shared/anchors`), reaches 87.3% here. So the first check trains the
//! book's architecture with batch normalisation and without dropout, with Adam and a
//! cosine learning-rate decay, and a second check holds the exact book network to the
//! figure PyTorch reaches.
//!
//! A seeded run gives the same figure every time on one CPU; on another the kernels
//! round differently (another algorithm, another GEMM), and one epoch's trajectory
//! drifts. Measured on an AMD EPYC (Zen 4) at each kernel level (`DLFS_SIMD=avx512`,
//! `avx2`, `scalar`): with batch norm 97.0% at all three; the book network 88.9%,
//! 88.9% and 90.4%. So each bound sits under the lowest figure by a margin larger than
//! the spread seen: 96% for the first (1.0 point, 10 of the 1,000 images), 87% for the
//! second (1.9 points under 88.9%; the spread across levels was 1.5).

use std::path::Path;

use dl_data::Mnist;
use dl_models::{DeepConvNet, DeepConvNetConfig};
use dl_train::{evaluate, History, Schedule, Trainer, TrainerConfig};

fn one_short_epoch(net_config: DeepConvNetConfig, trainer: TrainerConfig) -> (f64, History) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist");
    let mnist = Mnist::load(dir).unwrap();
    let train = mnist.train.take(6000);
    let test = mnist.test.take(1000);
    let mut net = DeepConvNet::new(net_config, trainer.seed).into_network();
    let before = evaluate(&mut net, &test, None, 100).unwrap().accuracy();
    let batch = trainer.mini_batch_size;
    let history = Trainer::new(&mut net, &train, &test, trainer).unwrap().train().unwrap();
    assert_eq!(history.train_loss_list.len(), 6000 / batch);
    assert_eq!(history.test_evaluation.total, 1000);
    (before, history)
}

#[test]
fn deep_convnet_with_batch_norm_reaches_96_percent_in_one_epoch_on_6000_images() {
    let net = DeepConvNetConfig {
        dropout_ratio: 0.0,
        use_batchnorm: true,
        ..DeepConvNetConfig::default()
    };
    let trainer = TrainerConfig {
        epochs: 1,
        mini_batch_size: 20,
        lr: 0.003,
        lr_schedule: Some(Schedule::Cosine { warmup: 0, min_lr: 0.0 }),
        evaluate_sample_num_per_epoch: Some(200),
        ..TrainerConfig::default()
    };
    let (before, history) = one_short_epoch(net, trainer);
    eprintln!(
        "DeepConvNet + batch norm, one epoch on 6,000 images: {}",
        history.test_evaluation
    );
    assert!(before < 0.3, "untrained accuracy {before}");
    assert!(
        history.test_accuracy >= 0.96,
        "test accuracy: {}",
        history.test_evaluation
    );
    // the loss went down: the last 50 iterations average well below the first 50
    let l = &history.train_loss_list;
    let first: f32 = l[..50].iter().sum::<f32>() / 50.0;
    let last: f32 = l[l.len() - 50..].iter().sum::<f32>() / 50.0;
    assert!(last < 0.3 * first, "loss {first} -> {last}");
    // the cosine decay ran its course
    assert!(history.epochs[0].lr < 1e-4, "final rate {}", history.epochs[0].lr);
}

/// One short epoch's accuracy moves by several points from seed to seed (0.85-0.93 over
/// seeds 0-4), and with any change of the kernels' rounding: the mean of three seeds is
/// held to the bar, each seed to a floor.
#[test]
fn the_books_deep_convnet_learns_as_fast_as_pytorch_in_one_short_epoch() {
    let mut sum = 0.0;
    for seed in 0..3 {
        let trainer = TrainerConfig {
            epochs: 1,
            mini_batch_size: 20,
            evaluate_sample_num_per_epoch: Some(200),
            seed,
            ..TrainerConfig::default()
        };
        let (_, history) = one_short_epoch(DeepConvNetConfig::default(), trainer);
        eprintln!(
            "book DeepConvNet, one epoch on 6,000 images, seed {seed}: {}",
            history.test_evaluation
        );
        assert!(
            history.test_accuracy >= 0.8,
            "seed {seed}: test accuracy {}",
            history.test_evaluation
        );
        sum += history.test_accuracy;
    }
    assert!(sum / 3.0 >= 0.87, "mean test accuracy of three seeds: {}", sum / 3.0);
}

#[test]
fn a_seed_fixes_the_run_whatever_the_thread_count() {
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    let train = mnist.train.take(300);
    let test = mnist.test.take(100);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 5).into_network();
                let cfg = TrainerConfig {
                    epochs: 1,
                    mini_batch_size: 50,
                    seed: 5,
                    ..TrainerConfig::default()
                };
                let h = Trainer::new(&mut net, &train, &test, cfg).unwrap().train().unwrap();
                (h.train_loss_list, net.params_to_bytes())
            })
    };
    let (losses, params) = run(1);
    for threads in [2, 3] {
        let (l, p) = run(threads);
        assert_eq!(l, losses, "losses with {threads} threads");
        assert!(p == params, "parameters differ with {threads} threads");
    }
}

#[test]
fn augmentation_changes_training_reproducibly() {
    use dl_data::{Augment, Pipeline};
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    let train = mnist.train.take(200);
    let test = mnist.test.take(50);
    let run = |augment: Option<Pipeline>| {
        let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 3).into_network();
        let cfg = TrainerConfig {
            epochs: 1,
            mini_batch_size: 50,
            seed: 3,
            augment,
            ..TrainerConfig::default()
        };
        Trainer::new(&mut net, &train, &test, cfg)
            .unwrap()
            .train()
            .unwrap()
            .train_loss_list
    };
    let recipe = Some(Pipeline::new(
        vec![Augment::Rotate { max_degrees: 10.0 }, Augment::Shift { max: 2.0 }],
        1,
    ));
    let plain = run(None);
    let augmented = run(recipe.clone());
    assert_eq!(augmented, run(recipe));
    assert_ne!(augmented, plain);
}

/// Synthetic 3-channel 8x8 images: class `k` of 3 has a bright square in channel `k` at
/// a random place, the other channels hold noise.
fn three_channel_set(n: usize, seed: u64) -> dl_data::ImageSet {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let k = rng.gen_range(0..3usize);
        let (y0, x0) = (rng.gen_range(0..5usize), rng.gen_range(0..5usize));
        for c in 0..3 {
            for y in 0..8 {
                for x in 0..8 {
                    let inside = c == k && (y0..y0 + 3).contains(&y) && (x0..x0 + 3).contains(&x);
                    images.push(if inside { 250 } else { rng.gen_range(0..60u8) });
                }
            }
        }
        labels.push(k as u8);
    }
    dl_data::ImageSet::with_channels(images, labels, (3, 8, 8), 3).unwrap()
}

#[test]
fn a_resnet_learns_three_channel_images_with_augmentation() {
    use dl_models::{ResNet, ResNetConfig};
    let (train, test) = (three_channel_set(600, 1), three_channel_set(200, 2));
    let config = ResNetConfig {
        input_dim: (3, 8, 8),
        blocks_per_stage: 1,
        widths: vec![8, 16],
        output_size: 3,
    };
    let mut net = ResNet::new(config, 3).into_network();
    let trainer = TrainerConfig {
        epochs: 3,
        mini_batch_size: 20,
        evaluate_sample_num_per_epoch: Some(100),
        augment: Some(dl_data::Pipeline::new(vec![dl_data::Augment::Shift { max: 1.0 }], 3)),
        ..TrainerConfig::default()
    };
    let history = Trainer::new(&mut net, &train, &test, trainer).unwrap().train().unwrap();
    assert_eq!(history.epochs.len(), 3);
    assert!(
        history.test_evaluation.accuracy() >= 0.95,
        "ResNet on 3-channel squares: {}",
        history.test_evaluation
    );
}
