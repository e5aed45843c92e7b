//! An observer's evaluations in the middle of an epoch (time to an accuracy, checked at
//! every half epoch) change nothing in the run, see the whole evaluation set, and can end
//! the run; the training seconds it is told exclude every evaluation.

use std::ops::ControlFlow;
use std::path::Path;

use dl_data::{ImageSet, Mnist, Pipeline};
use dl_models::{Network, Vgg, VggConfig};
use dl_train::{evaluate, Evaluation, IterationInfo, Observer, Trainer, TrainerConfig};

fn sets() -> (ImageSet, ImageSet) {
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    (mnist.train.take(240), mnist.test.take(90))
}

/// Batch norm (running statistics an evaluation must not move) and dropout (a stream an
/// evaluation must not advance).
fn net() -> Network {
    let config = VggConfig {
        blocks: vec![(1, 4), (1, 8)],
        hidden_size: 16,
        ..VggConfig::default()
    };
    Vgg::new(config, 3).into_network()
}

fn config() -> TrainerConfig {
    TrainerConfig {
        epochs: 2,
        mini_batch_size: 40,
        seed: 3,
        augment: Some(Pipeline::mnist(false, 3)),
        ..TrainerConfig::default()
    }
}

/// Evaluates every `every` iterations and stops after `stop_after` evaluations.
struct Checker {
    every: usize,
    stop_after: usize,
    seen: Vec<(usize, Evaluation, f64)>,
    last_train_seconds: f64,
}

impl Observer for Checker {
    fn on_iteration(&mut self, info: &IterationInfo) {
        assert!(info.train_seconds > self.last_train_seconds, "training time grows");
        self.last_train_seconds = info.train_seconds;
    }
    fn evaluate_now(&mut self, info: &IterationInfo) -> bool {
        info.iteration.is_multiple_of(self.every)
    }
    fn on_evaluation(&mut self, info: &IterationInfo, evaluation: &Evaluation, seconds: f64) -> ControlFlow<()> {
        assert!(seconds > 0.0);
        self.seen.push((info.iteration, *evaluation, info.train_seconds));
        if self.seen.len() == self.stop_after {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

fn checker(every: usize, stop_after: usize) -> Checker {
    Checker {
        every,
        stop_after,
        seen: Vec::new(),
        last_train_seconds: 0.0,
    }
}

#[test]
fn evaluations_in_the_middle_of_an_epoch_change_nothing() {
    let (train, test) = sets();
    let mut silent = net();
    let plain = Trainer::new(&mut silent, &train, &test, config())
        .unwrap()
        .train()
        .unwrap();
    let mut watched = net();
    let mut obs = checker(2, usize::MAX);
    let h = Trainer::new(&mut watched, &train, &test, config())
        .unwrap()
        .train_with(&mut obs)
        .unwrap();
    assert_eq!(watched.params_to_bytes(), silent.params_to_bytes());
    assert_eq!(h.train_loss_list, plain.train_loss_list);
    // 6 iterations per epoch, 2 epochs: an evaluation after iterations 2, 4, ..., 12,
    // each of the whole evaluation set; the last one is the network the run ends with
    let at: Vec<usize> = obs.seen.iter().map(|s| s.0).collect();
    assert_eq!(at, [2, 4, 6, 8, 10, 12]);
    assert!(obs.seen.iter().all(|s| s.1.total == test.len()));
    assert_eq!(obs.seen[5].1, h.test_evaluation);
    assert_eq!(
        obs.seen[1].1,
        {
            // the network after 4 iterations, trained again, evaluated alone
            let mut early = net();
            let mut stop = checker(4, 1);
            Trainer::new(&mut early, &train, &test, config())
                .unwrap()
                .train_with(&mut stop)
                .unwrap();
            evaluate(&mut early, &test, None, 100).unwrap()
        },
        "the evaluation after iteration 4 is of the network after iteration 4"
    );
    // each epoch's loss is the mean of its iterations'
    for (e, r) in h.epochs.iter().enumerate() {
        let losses = &h.train_loss_list[e * 6..(e + 1) * 6];
        let mean = losses.iter().map(|&l| f64::from(l)).sum::<f64>() / 6.0;
        assert!((f64::from(r.train_loss) - mean).abs() < 1e-6, "epoch {}", r.epoch);
    }
    // training seconds: what the epochs recorded, evaluations left out
    let recorded: f64 = h.epochs.iter().map(|r| r.train_seconds).sum();
    assert!((obs.last_train_seconds - recorded).abs() < 1e-9 * recorded.max(1.0));
    assert!(recorded < h.total_seconds);
}

#[test]
fn an_observer_can_end_the_run_in_the_middle_of_an_epoch() {
    let (train, test) = sets();
    let mut n = net();
    let mut obs = checker(1, 3);
    let h = Trainer::new(&mut n, &train, &test, config())
        .unwrap()
        .train_with(&mut obs)
        .unwrap();
    assert_eq!(h.train_loss_list.len(), 3, "stopped after the third iteration");
    assert!(h.epochs.is_empty(), "no epoch finished");
    assert_eq!(
        h.test_evaluation, obs.seen[2].1,
        "the final evaluation is of the stopped network"
    );
}

/// Records what every iteration tells it, and counts evaluations it never asked for.
#[derive(Default)]
struct Recorder {
    infos: Vec<IterationInfo>,
    evaluations: usize,
}

impl Observer for Recorder {
    fn on_iteration(&mut self, info: &IterationInfo) {
        self.infos.push(*info);
    }
    // `evaluate_now` left at its default
    fn on_evaluation(&mut self, _info: &IterationInfo, _evaluation: &Evaluation, _seconds: f64) -> ControlFlow<()> {
        self.evaluations += 1;
        ControlFlow::Continue(())
    }
}

#[test]
fn an_observer_is_told_where_the_run_is_and_is_not_evaluated_unasked() {
    let (train, test) = sets();
    let mut n = net();
    let mut obs = Recorder::default();
    let config = TrainerConfig { epochs: 3, ..config() };
    let h = Trainer::new(&mut n, &train, &test, config)
        .unwrap()
        .train_with(&mut obs)
        .unwrap();
    assert_eq!(obs.evaluations, 0, "the default observer asks for no evaluation");
    // 240 images in batches of 40: 6 iterations per epoch, 3 epochs
    assert_eq!(obs.infos.len(), 18);
    for (i, info) in obs.infos.iter().enumerate() {
        assert_eq!(info.iteration, i + 1);
        assert_eq!(info.max_iter, 18);
        assert_eq!(info.epoch, i / 6 + 1);
        assert_eq!(info.batch, 40);
        assert_eq!(info.loss, h.train_loss_list[i]);
    }
}
