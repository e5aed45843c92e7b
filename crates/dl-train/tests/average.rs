//! The moving average of the parameters (`TrainerConfig::ema_decay`): the network a run
//! hands back, its per-epoch evaluations and its best checkpoint hold the average of
//! every step's parameters, computed here by hand from runs without it; a resumed run
//! ends bit for bit as the unbroken one; and checkpoints that do not fit are refused.

use std::path::Path;

use dl_data::{ImageSet, Mnist};
use dl_layers::Tensor;
use dl_models::{DeepConvNet, DeepConvNetConfig, Network};
use dl_optim::AVERAGE_SLOT;
use dl_train::checkpoint;
use dl_train::{evaluate, CheckpointPolicy, History, TrainError, Trainer, TrainerConfig, BEST_FILE};

/// 50 training images: one mini-batch, so that epoch k ends after step k.
fn sets() -> (ImageSet, ImageSet) {
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    (mnist.train.take(50), mnist.test.take(200))
}

fn config(epochs: usize, ema_decay: Option<f32>) -> TrainerConfig {
    TrainerConfig {
        epochs,
        mini_batch_size: 50,
        optimizer: "sgd".into(),
        lr: 0.1,
        seed: 3,
        evaluate_sample_num_per_epoch: None,
        ema_decay,
        ..TrainerConfig::default()
    }
}

fn net() -> Network {
    DeepConvNet::new(DeepConvNetConfig::default(), 3).into_network()
}

fn policy(dir: &Path) -> CheckpointPolicy {
    CheckpointPolicy {
        dir: dir.to_path_buf(),
        every: 1,
        keep: 0,
        keep_best: true,
    }
}

fn run(n: &mut Network, cfg: TrainerConfig, dir: &Path) -> History {
    let (train, test) = sets();
    Trainer::new(n, &train, &test, cfg)
        .unwrap()
        .with_checkpoints(policy(dir))
        .unwrap()
        .train()
        .unwrap()
}

/// Every parameter's value, by name.
fn values(n: &Network) -> Vec<(String, Tensor)> {
    n.params().into_iter().map(|(k, t)| (k, t.clone())).collect()
}

/// A network built as the runs' are, holding `params`.
fn holding(params: &[(String, Tensor)]) -> Network {
    let mut n = net();
    for p in n.params_and_grads() {
        let (_, v) = params.iter().find(|(k, _)| *k == p.name).unwrap();
        p.value.assign(v);
    }
    n
}

/// The parameters after each of the first `k` steps of a run without the average.
fn steps(k: usize) -> Vec<Vec<(String, Tensor)>> {
    (1..=k)
        .map(|epochs| {
            let dir = tempfile::tempdir().unwrap();
            let mut n = net();
            run(&mut n, config(epochs, None), dir.path());
            values(&n)
        })
        .collect()
}

/// The average after each step, by the formula: the first step's parameters, then
/// `d * average + (1 - d) * parameters` with `d = min(decay, (1 + t) / (10 + t))`.
fn by_hand(steps: &[Vec<(String, Tensor)>], decay: f32) -> Vec<Vec<(String, Tensor)>> {
    let mut out: Vec<Vec<(String, Tensor)>> = vec![steps[0].clone()];
    for (i, params) in steps.iter().enumerate().skip(1) {
        let t = (i + 1) as f32;
        let d = decay.min((1.0 + t) / (10.0 + t));
        let prev = out.last().unwrap();
        let next = prev
            .iter()
            .zip(params)
            .map(|((k, a), (_, p))| (k.clone(), a.mapv(|a| a * d) + p.mapv(|p| p * (1.0 - d))))
            .collect();
        out.push(next);
    }
    out
}

fn assert_close(got: &[(String, Tensor)], want: &[(String, Tensor)], what: &str) {
    assert_eq!(got.len(), want.len());
    for ((k, g), (_, w)) in got.iter().zip(want) {
        let diff = (g - w).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
        assert!(diff <= 1e-6, "{what}: {k} differs by {diff}");
    }
}

fn accuracy(params: &[(String, Tensor)]) -> f64 {
    let (_, test) = sets();
    evaluate(&mut holding(params), &test, None, 50).unwrap().accuracy()
}

#[test]
fn the_run_evaluates_and_hands_back_the_average_of_every_step() {
    let live = steps(4);
    let averages = by_hand(&live, 0.5);
    let dir = tempfile::tempdir().unwrap();
    let mut n = net();
    let h = run(&mut n, config(4, Some(0.5)), dir.path());
    assert_close(&values(&n), &averages[3], "the network handed back");
    // the live parameters moved away from their average
    let (_, w) = &live[3][0];
    assert!((w - &averages[3][0].1).mapv(f32::abs).sum() > 1e-3);
    // each epoch was evaluated on that epoch's average, not on the live parameters
    for (record, avg) in h.epochs.iter().zip(&averages) {
        assert_eq!(record.test_acc, accuracy(avg), "epoch {}", record.epoch);
    }
    assert_ne!(
        h.epochs.iter().map(|r| r.test_acc).collect::<Vec<_>>(),
        live.iter().map(|p| accuracy(p)).collect::<Vec<_>>(),
        "the live parameters score otherwise, so the check above can tell them apart"
    );
    assert_eq!(h.test_accuracy, accuracy(&averages[3]));
    // best.safetensors holds the best epoch's average
    let best_acc = h.epochs.iter().map(|r| r.test_acc).fold(0.0, f64::max);
    let best_epoch = h.epochs.iter().position(|r| r.test_acc == best_acc).unwrap();
    let best = dl_models::load(dir.path().join(BEST_FILE)).unwrap();
    assert_close(&values(&best), &averages[best_epoch], "best.safetensors");
    // the checkpoints hold the live parameters, and the average beside them
    let ckpt = checkpoint::read(&dir.path().join(checkpoint::file_name(4))).unwrap();
    let saved = dl_models::load(&ckpt.path).unwrap();
    assert_close(&values(&saved), &live[3], "the checkpoint's parameters");
    let slot = format!("{AVERAGE_SLOT}/");
    let kept: Vec<(String, Tensor)> = averages[3]
        .iter()
        .map(|(k, _)| (k.clone(), ckpt.optimizer.tensors[&format!("{slot}{k}")].clone()))
        .collect();
    assert_close(&kept, &averages[3], "the checkpoint's averages");
}

#[test]
fn a_resumed_run_with_an_average_ends_bit_for_bit_as_the_unbroken_run() {
    let (train, test) = sets();
    let dir = tempfile::tempdir().unwrap();
    let mut straight = net();
    let unbroken = run(&mut straight, config(3, Some(0.9)), dir.path());
    let want = straight.params_to_bytes();
    for epoch in [1, 2] {
        let ckpt = checkpoint::read(&dir.path().join(checkpoint::file_name(epoch))).unwrap();
        let mut resumed = net();
        let h = Trainer::new(&mut resumed, &train, &test, config(3, Some(0.9)))
            .unwrap()
            .resume(&ckpt)
            .unwrap()
            .train()
            .unwrap();
        assert!(resumed.params_to_bytes() == want, "resumed after epoch {epoch}");
        assert_eq!(h.epochs, {
            let mut e = unbroken.epochs.clone();
            for (a, b) in e.iter_mut().zip(&h.epochs) {
                (a.train_seconds, a.elapsed_seconds) = (b.train_seconds, b.elapsed_seconds);
            }
            e
        });
    }
}

fn resume_error(cfg: TrainerConfig, ckpt: &checkpoint::Checkpoint) -> String {
    let (train, test) = sets();
    let mut n = net();
    let before = n.params_to_bytes();
    let err = match Trainer::new(&mut n, &train, &test, cfg).unwrap().resume(ckpt) {
        Err(e @ TrainError::Checkpoint { .. }) => e.to_string(),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("resumed"),
    };
    assert!(n.params_to_bytes() == before, "the network is unchanged");
    err
}

#[test]
fn checkpoints_whose_averages_do_not_fit_the_run_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    run(&mut net(), config(2, Some(0.9)), dir.path());
    let ckpt = checkpoint::read(&dir.path().join(checkpoint::file_name(1))).unwrap();
    let slot = format!("{AVERAGE_SLOT}/");

    // a run without the average does not take one that kept it
    let err = resume_error(config(2, None), &ckpt);
    assert!(err.contains("other settings"), "{err}");
    let mut forged = ckpt.clone();
    forged.trainer.config.ema_decay = None;
    let err = resume_error(config(2, None), &forged);
    assert!(err.contains("moving averages of a run that keeps none"), "{err}");

    // averages missing, one missing, or of another shape
    let mut none = ckpt.clone();
    none.optimizer.tensors.retain(|k, _| !k.starts_with(&slot));
    let err = resume_error(config(2, Some(0.9)), &none);
    assert!(
        err.contains("0 of the 16 trained parameters have a moving average"),
        "{err}"
    );
    let mut one_short = ckpt.clone();
    one_short.optimizer.tensors.remove(&format!("{slot}W1"));
    let err = resume_error(config(2, Some(0.9)), &one_short);
    assert!(err.contains("15 of the 16"), "{err}");
    let mut misshapen = ckpt.clone();
    misshapen
        .optimizer
        .tensors
        .insert(format!("{slot}b1"), Tensor::zeros(vec![3]));
    let err = resume_error(config(2, Some(0.9)), &misshapen);
    assert!(err.contains("shape"), "{err}");

    // and the whole checkpoint resumes
    let (train, test) = sets();
    let mut n = net();
    Trainer::new(&mut n, &train, &test, config(2, Some(0.9)))
        .unwrap()
        .resume(&ckpt)
        .unwrap();
}

#[test]
fn a_decay_outside_zero_to_one_is_refused() {
    let (train, test) = sets();
    for bad in [1.0, -0.5, f32::NAN] {
        let mut n = net();
        match Trainer::new(&mut n, &train, &test, config(1, Some(bad))) {
            Err(TrainError::Optimizer(e)) => assert!(e.to_string().contains("average decay"), "{e}"),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("{bad} accepted"),
        }
    }
}
