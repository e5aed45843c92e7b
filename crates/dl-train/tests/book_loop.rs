//! The Trainer is the book's training loop: the same mini-batches in the same order,
//! `gradient` then `update`, so a run by hand with [`BatchOrder`] and the optimizer ends
//! on the same bits.

use std::path::Path;

use dl_data::{BatchOrder, Mnist};
use dl_layers::{Labels, Tensor};
use dl_models::{SimpleConvNet, SimpleConvNetConfig};
use dl_optim::{Optimizer, Sgd};
use dl_train::{Trainer, TrainerConfig};

#[test]
fn two_epochs_of_the_trainer_are_the_books_loop_by_hand() {
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    let (train, test) = (mnist.train.take(150), mnist.test.take(50));
    let net = || SimpleConvNet::new(SimpleConvNetConfig::default(), 7).into_network();
    let cfg = TrainerConfig {
        epochs: 2,
        mini_batch_size: 50,
        optimizer: "sgd".into(),
        lr: 0.1,
        seed: 7,
        ..TrainerConfig::default()
    };
    let mut trained = net();
    let history = Trainer::new(&mut trained, &train, &test, cfg).unwrap().train().unwrap();

    let mut by_hand = net();
    let mut sgd = Sgd::new(0.1);
    let order = BatchOrder::new(train.len(), 50, 7);
    let mut losses = Vec::new();
    let (mut x, mut t) = (Vec::new(), Vec::new());
    for epoch in 0..2 {
        for idx in order.epoch(epoch) {
            train.fill_batch(&idx, &mut x, &mut t);
            let batch = Tensor::from_shape_vec(train.batch_shape(idx.len()), x.clone()).unwrap();
            losses.push(by_hand.gradient(batch, Labels::Indices(&t)).unwrap());
            sgd.update(&mut by_hand.params_and_grads());
        }
    }
    assert_eq!(history.train_loss_list, losses);
    assert_eq!(trained.params_to_bytes(), by_hand.params_to_bytes());
}
