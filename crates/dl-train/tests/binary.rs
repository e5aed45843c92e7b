//! Training a binarized network: the Trainer keeps the latent weights in [-1, 1] after
//! every step, and the network learns.

use std::path::Path;

use dl_data::Mnist;
use dl_models::{BinaryConvNet, BinaryConvNetConfig};
use dl_train::{evaluate, Trainer, TrainerConfig};

#[test]
fn the_trainer_clips_latent_weights_and_a_binarized_network_learns() {
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    let (train, test) = (mnist.train.take(1000), mnist.test.take(300));
    let config = BinaryConvNetConfig {
        blocks: vec![(1, 16), (1, 32)],
        hidden_size: 64,
        ..Default::default()
    };
    let mut net = BinaryConvNet::new(config, 1).into_network();
    // SGD of rate 10^5 moves any weight with a gradient far beyond [-1, 1] in one step
    let cfg = TrainerConfig {
        epochs: 1,
        mini_batch_size: 50,
        optimizer: "sgd".into(),
        lr: 1e5,
        evaluate_sample_num_per_epoch: Some(50),
        ..TrainerConfig::default()
    };
    Trainer::new(&mut net, &train, &test, cfg).unwrap().train().unwrap();
    let latent: Vec<f32> = net
        .params()
        .iter()
        .filter(|(n, _)| n == "features.4.W" || n == "classifier.0.W")
        .flat_map(|(_, t)| t.iter().copied().collect::<Vec<_>>())
        .collect();
    assert_eq!(latent.len(), 32 * 16 * 9 + 32 * 7 * 7 * 64);
    assert!(latent.iter().all(|v| v.abs() <= 1.0));
    assert!(
        latent.iter().filter(|v| v.abs() == 1.0).count() > latent.len() / 10,
        "clipped, not small"
    );
    // the float layers are not clipped
    let first = &net.params()[0].1;
    assert!(first.iter().any(|v| v.abs() > 1.0));

    let mut net = BinaryConvNet::new(
        BinaryConvNetConfig {
            blocks: vec![(1, 16), (1, 32)],
            hidden_size: 64,
            ..Default::default()
        },
        1,
    )
    .into_network();
    let cfg = TrainerConfig {
        epochs: 2,
        mini_batch_size: 50,
        lr: 0.003,
        evaluate_sample_num_per_epoch: Some(50),
        ..TrainerConfig::default()
    };
    Trainer::new(&mut net, &train, &test, cfg).unwrap().train().unwrap();
    let e = evaluate(&mut net, &test, None, 100).unwrap();
    assert!(e.accuracy() > 0.8, "a binarized network trained on 1000 images: {e}");
}
