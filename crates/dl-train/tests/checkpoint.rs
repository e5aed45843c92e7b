//! Checkpoints: a run resumed from any epoch's checkpoint ends bit for bit as the run
//! that never stopped; old checkpoints are pruned, the best epoch's parameters kept;
//! early stopping; and every file that cannot be resumed is a typed error that changes
//! nothing.

use std::path::Path;

use dl_data::{ImageSet, Mnist, Pipeline};
use dl_models::{DeepConvNet, DeepConvNetConfig, Network};
use dl_train::checkpoint::{self, FORMAT_VERSION, METADATA_KEY};
use dl_train::{CheckpointPolicy, History, ReduceOnPlateau, Schedule, TrainError, Trainer, TrainerConfig, BEST_FILE};
use sha2::{Digest, Sha256};

fn sets() -> (ImageSet, ImageSet) {
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    (mnist.train.take(200), mnist.test.take(100))
}

/// The book's network (dropout on two layers) with augmentation, a cosine decay and
/// reduce-on-plateau: every piece of state a resume must restore.
fn config(epochs: usize) -> TrainerConfig {
    TrainerConfig {
        epochs,
        mini_batch_size: 50,
        seed: 4,
        lr_schedule: Some(Schedule::Cosine { warmup: 2, min_lr: 0.0 }),
        reduce_on_plateau: Some(ReduceOnPlateau::new(0.5, 0)),
        augment: Some(Pipeline::mnist(false, 4)),
        ..TrainerConfig::default()
    }
}

fn net() -> Network {
    DeepConvNet::new(DeepConvNetConfig::default(), 4).into_network()
}

fn policy(dir: &Path, keep: usize) -> CheckpointPolicy {
    CheckpointPolicy {
        dir: dir.to_path_buf(),
        every: 1,
        keep,
        keep_best: true,
    }
}

/// Trains `net` with `cfg`, writing checkpoints into `dir` every epoch (keeping `keep`).
fn train_into(
    net: &mut Network,
    train: &ImageSet,
    test: &ImageSet,
    cfg: TrainerConfig,
    dir: &Path,
    keep: usize,
) -> History {
    Trainer::new(net, train, test, cfg)
        .unwrap()
        .with_checkpoints(policy(dir, keep))
        .unwrap()
        .train()
        .unwrap()
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

#[test]
fn a_resumed_run_ends_bit_for_bit_as_the_unbroken_run() {
    let (train, test) = sets();
    let dir = tempfile::tempdir().unwrap();
    let mut straight = net();
    let unbroken = train_into(&mut straight, &train, &test, config(3), dir.path(), 0);
    let names: Vec<String> = checkpoint::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "checkpoint-0001.safetensors",
            "checkpoint-0002.safetensors",
            "checkpoint-0003.safetensors"
        ]
    );
    let want = sha(&straight.params_to_bytes());
    for (epoch, path) in checkpoint::list(dir.path()).unwrap().into_iter().take(2) {
        let ckpt = checkpoint::read(&path).unwrap();
        assert_eq!(ckpt.trainer.epoch, epoch);
        assert_eq!(ckpt.trainer.iteration, epoch * 4);
        assert_eq!(ckpt.trainer.train_loss_list[..], unbroken.train_loss_list[..epoch * 4]);
        assert!(ckpt.trainer.plateau.is_some());
        assert_eq!(ckpt.optimizer.steps, (epoch * 4) as u64, "Adam's t");
        // a fresh network built as the run's was (its seed also fixes the dropout
        // layers' streams) and a fresh optimizer, resumed
        let mut resumed = net();
        let out = tempfile::tempdir().unwrap();
        let h = Trainer::new(&mut resumed, &train, &test, config(3))
            .unwrap()
            .with_checkpoints(policy(out.path(), 0))
            .unwrap()
            .resume(&ckpt)
            .unwrap()
            .train()
            .unwrap();
        assert_eq!(sha(&resumed.params_to_bytes()), want, "resumed after epoch {epoch}");
        assert_eq!(h.train_loss_list, unbroken.train_loss_list);
        assert_eq!(h.epochs.len(), 3);
        assert_eq!(h.test_evaluation, unbroken.test_evaluation);
        // and the resumed run's last checkpoint is the unbroken run's, but for times
        let mine = checkpoint::read(&out.path().join(checkpoint::file_name(3))).unwrap();
        let theirs = checkpoint::read(&dir.path().join(checkpoint::file_name(3))).unwrap();
        assert_eq!(mine.optimizer, theirs.optimizer);
        assert_eq!(mine.trainer.train_loss_list, theirs.trainer.train_loss_list);
    }
    // a checkpoint loads as a plain parameter file too
    let last = dl_models::load(dir.path().join(checkpoint::file_name(3))).unwrap();
    assert_eq!(sha(&last.params_to_bytes()), want);
}

#[test]
fn old_checkpoints_are_pruned_and_the_best_epoch_is_kept() {
    let (train, test) = sets();
    let dir = tempfile::tempdir().unwrap();
    let mut n = net();
    let h = train_into(&mut n, &train, &test, config(3), dir.path(), 2);
    let epochs: Vec<usize> = checkpoint::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(epochs, [2, 3]);
    // best.safetensors holds the parameters of the first epoch with the best accuracy
    let best_acc = h.epochs.iter().map(|r| r.test_acc).fold(0.0, f64::max);
    let best_epoch = h.epochs.iter().find(|r| r.test_acc == best_acc).unwrap().epoch;
    let mut best = dl_models::load(dir.path().join(BEST_FILE)).unwrap();
    let acc = dl_train::evaluate(&mut best, &test, Some(1000), 50).unwrap().accuracy();
    assert_eq!(acc, best_acc, "best.safetensors is epoch {best_epoch}'s");
    let ckpt = checkpoint::read(&checkpoint::latest(dir.path()).unwrap().unwrap()).unwrap();
    assert_eq!(ckpt.trainer.best, Some((best_acc, best_epoch)));
    // every other file in the folder is one of these
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    // what a killed writer leaves is cleared by the next write; other files stay
    let stale = dir.path().join(".checkpoint-0004.safetensors.tmp-12345");
    let stale_best = dir.path().join(format!(".{BEST_FILE}.tmp-23456"));
    let other = dir.path().join(".notes.tmp-1");
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&stale_best, b"half").unwrap();
    std::fs::write(&other, b"mine").unwrap();
    let ckpt = checkpoint::read(&checkpoint::latest(dir.path()).unwrap().unwrap()).unwrap();
    let mut state = ckpt.trainer.clone();
    state.epoch = 4;
    let opt = dl_optim::by_name("adam", 0.001).unwrap();
    checkpoint::write(dir.path(), &n, opt.as_ref(), None, &state, 2).unwrap();
    assert!(!stale.exists() && !stale_best.exists() && other.exists());
    let epochs: Vec<usize> = checkpoint::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(epochs, [3, 4]);
    // every N epochs, and always after the last
    let dir = tempfile::tempdir().unwrap();
    let mut n = net();
    let p = CheckpointPolicy {
        every: 2,
        keep_best: false,
        ..policy(dir.path(), 0)
    };
    Trainer::new(&mut n, &train, &test, config(3))
        .unwrap()
        .with_checkpoints(p)
        .unwrap()
        .train()
        .unwrap();
    let epochs: Vec<usize> = checkpoint::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(epochs, [2, 3]);
    assert!(!dir.path().join(BEST_FILE).exists());
}

#[test]
fn early_stopping_ends_the_run_when_the_accuracy_stalls() {
    let (train, test) = sets();
    let dir = tempfile::tempdir().unwrap();
    // a rate too small to change any prediction: the accuracy stays where it starts
    let cfg = TrainerConfig {
        lr: 1e-12,
        early_stop_patience: Some(2),
        lr_schedule: None,
        reduce_on_plateau: None,
        ..config(6)
    };
    let mut n = net();
    let h = train_into(&mut n, &train, &test, cfg.clone(), dir.path(), 0);
    assert_eq!(h.epochs.len(), 3, "best at epoch 1, two more without improvement");
    let epochs: Vec<usize> = checkpoint::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(epochs, [1, 2, 3]);
    let zero = TrainerConfig {
        early_stop_patience: Some(0),
        ..cfg
    };
    assert!(matches!(
        Trainer::new(&mut n, &train, &test, zero),
        Err(TrainError::Config(_))
    ));
}

#[test]
fn a_file_that_cannot_be_resumed_is_a_typed_error_and_changes_nothing() {
    let (train, test) = sets();
    let dir = tempfile::tempdir().unwrap();
    let mut n = net();
    train_into(&mut n, &train, &test, config(1), dir.path(), 0);
    let path = dir.path().join(checkpoint::file_name(1));
    let good = checkpoint::read(&path).unwrap();
    let mut target = net();
    let before = target.params_to_bytes();
    let check = |e: TrainError, what: &str| {
        assert!(e.to_string().contains(what), "{e} should mention {what:?}");
    };
    // other settings
    let e = Trainer::new(&mut target, &train, &test, config(2))
        .unwrap()
        .resume(&good)
        .err()
        .unwrap();
    check(e, "other settings");
    // another optimizer
    let sgd = TrainerConfig {
        optimizer: "momentum".into(),
        ..config(1)
    };
    let mut other = good.clone();
    other.trainer.config = sgd.clone();
    let e = Trainer::new(&mut target, &train, &test, sgd)
        .unwrap()
        .resume(&other)
        .err()
        .unwrap();
    check(e, "Adam");
    // another network
    let mut simple = dl_models::SimpleConvNet::new(dl_models::SimpleConvNetConfig::default(), 0).into_network();
    let e = Trainer::new(&mut simple, &train, &test, config(1))
        .unwrap()
        .resume(&good)
        .err()
        .unwrap();
    assert!(matches!(e, TrainError::Model(_)), "{e}");
    // more epochs done than the run has, or a history that does not match them
    let mut odd = good.clone();
    odd.trainer.epoch = 2;
    let e = Trainer::new(&mut target, &train, &test, config(1))
        .unwrap()
        .resume(&odd)
        .err()
        .unwrap();
    check(e, "2 epochs done");
    let mut odd = good.clone();
    odd.trainer.epochs.clear();
    let e = Trainer::new(&mut target, &train, &test, config(1))
        .unwrap()
        .resume(&odd)
        .err()
        .unwrap();
    check(e, "(0 records)");
    assert_eq!(target.params_to_bytes(), before, "nothing was loaded");

    // files: a parameter file, a truncated checkpoint, another format, garbage metadata
    let params = dir.path().join("params.safetensors");
    n.save_params(&params).unwrap();
    check(checkpoint::read(&params).unwrap_err(), "not a checkpoint");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let e = checkpoint::from_bytes(bytes[..cut].to_vec(), &path).unwrap_err();
        assert!(matches!(e, TrainError::Checkpoint { .. }), "cut at {cut}: {e}");
    }
    // the metadata is JSON inside the header's JSON: its quotes are escaped
    let edit = |from: &str, to: &str| {
        let (from, to) = (from.as_bytes(), to.as_bytes());
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern in the header");
        let mut b = bytes.clone();
        b[at..at + from.len()].copy_from_slice(to);
        b
    };
    assert!(bytes.windows(METADATA_KEY.len()).any(|w| w == METADATA_KEY.as_bytes()));
    let future = edit(
        &format!("\\\"format\\\":{FORMAT_VERSION}"),
        &format!("\\\"format\\\":{}", FORMAT_VERSION + 1),
    );
    check(checkpoint::from_bytes(future, &path).unwrap_err(), "format 2");
    let broken = edit("optimizer_steps", "optimizer_stepz");
    check(checkpoint::from_bytes(broken, &path).unwrap_err(), "metadata");
    assert!(matches!(
        checkpoint::read(&dir.path().join("missing.safetensors")),
        Err(TrainError::Io { .. })
    ));
    assert!(checkpoint::latest(&dir.path().join("missing")).is_err());
    // names that look like checkpoints but are not are ignored by list
    for name in [
        "checkpoint-.safetensors",
        "checkpoint-00x1.safetensors",
        "checkpoint-+002.safetensors",
        "checkpoint-0001.json",
    ] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let epochs: Vec<usize> = checkpoint::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(epochs, [1]);
}

#[test]
fn the_weight_decay_setting_reaches_the_optimizer() {
    let (train, test) = sets();
    let run = |wd: f32| {
        let mut n = net();
        let cfg = TrainerConfig {
            weight_decay: wd,
            optimizer: "sgd".into(),
            lr: 0.01,
            ..config(1)
        };
        Trainer::new(&mut n, &train, &test, cfg).unwrap().train().unwrap();
        n.params()
            .into_iter()
            .map(|(name, t)| (name, t.clone()))
            .collect::<Vec<_>>()
    };
    let (plain, decayed) = (run(0.0), run(0.5));
    for ((name, a), (_, b)) in plain.iter().zip(&decayed) {
        // biases are not decayed, weights shrink
        if name.starts_with('b') {
            continue;
        }
        let norm = |t: &dl_layers::Tensor| t.iter().map(|v| v * v).sum::<f32>();
        assert!(
            norm(b) < norm(a),
            "{name}: |W|^2 {} with decay, {} without",
            norm(b),
            norm(a)
        );
    }
    let bad = TrainerConfig {
        weight_decay: -1.0,
        ..config(1)
    };
    let mut n = net();
    assert!(matches!(
        Trainer::new(&mut n, &train, &test, bad),
        Err(TrainError::Optimizer(_))
    ));
}

#[test]
fn learning_rate_groups_reach_the_optimizer() {
    let (train, test) = sets();
    let before = net();
    let mut n = net();
    // the book's first two convolutions (W1, b1, W2, b2) held still, the rest learning
    let mut groups = dl_optim::LrGroups::new();
    groups.set("W1", 0.0).unwrap();
    groups.set("b1", 0.0).unwrap();
    let cfg = TrainerConfig {
        lr_groups: groups,
        ..config(1)
    };
    Trainer::new(&mut n, &train, &test, cfg).unwrap().train().unwrap();
    for ((name, a), (_, b)) in n.params().into_iter().zip(before.params()) {
        assert_eq!(a == b, name == "W1" || name == "b1", "{name}");
    }
}

#[test]
fn a_diverging_run_stops_with_an_error_and_leaves_the_last_checkpoint_alone() {
    let (train, test) = sets();
    let dir = tempfile::tempdir().unwrap();
    let mut n = net();
    train_into(&mut n, &train, &test, config(1), dir.path(), 1);
    let good = checkpoint::read(&dir.path().join(checkpoint::file_name(1))).unwrap();
    // the same run at epoch 1 of 3, but with a weight gone to NaN: epoch 2 diverges
    let mut state = good.trainer.clone();
    state.config = config(3);
    let mut broken = net();
    broken.load_params_from_bytes(&good.bytes, "good".as_ref()).unwrap();
    let mut opt = dl_optim::by_name("adam", 0.001).unwrap();
    opt.load_state(&good.optimizer, &broken.params()).unwrap();
    for p in broken.params_and_grads() {
        p.value.fill(f32::NAN);
    }
    let nan_dir = tempfile::tempdir().unwrap();
    let last = checkpoint::write(nan_dir.path(), &broken, opt.as_ref(), None, &state, 1).unwrap();
    let before = std::fs::read(&last).unwrap();
    let ckpt = checkpoint::read(&last).unwrap();
    let mut target = net();
    let e = Trainer::new(&mut target, &train, &test, config(3))
        .unwrap()
        .with_checkpoints(policy(nan_dir.path(), 1))
        .unwrap()
        .resume(&ckpt)
        .unwrap()
        .train()
        .unwrap_err();
    match e {
        TrainError::Diverged { iteration, .. } => assert_eq!(iteration, 5, "the first step of epoch 2"),
        other => panic!("expected Diverged, got {other}"),
    }
    let left: Vec<usize> = checkpoint::list(nan_dir.path())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(left, [1], "no checkpoint of the diverged epoch, the last one kept");
    assert!(std::fs::read(&last).unwrap() == before);
}

#[test]
fn a_resumed_run_counts_the_time_of_its_earlier_parts() {
    let (train, test) = sets();
    let dir = tempfile::tempdir().unwrap();
    let mut n = net();
    train_into(&mut n, &train, &test, config(2), dir.path(), 0);
    let mut ckpt = checkpoint::read(&dir.path().join(checkpoint::file_name(1))).unwrap();
    // as if the first epoch had taken a million seconds
    ckpt.trainer.elapsed_seconds = 1e6;
    let out = tempfile::tempdir().unwrap();
    let mut m = net();
    let h = Trainer::new(&mut m, &train, &test, config(2))
        .unwrap()
        .with_checkpoints(policy(out.path(), 0))
        .unwrap()
        .resume(&ckpt)
        .unwrap()
        .train()
        .unwrap();
    let within = |t: f64, what: &str| assert!((1e6..1e6 + 600.0).contains(&t), "{what}: {t}");
    within(h.total_seconds, "total");
    within(h.epochs[1].elapsed_seconds, "epoch 2's elapsed");
    let last = checkpoint::read(&out.path().join(checkpoint::file_name(2))).unwrap();
    within(last.trainer.elapsed_seconds, "the checkpoint's elapsed");
}

#[test]
fn a_schedule_per_epoch_sets_each_epochs_rate() {
    let (train, test) = sets();
    let cfg = TrainerConfig {
        lr_schedule: Some(Schedule::Step {
            step_size: 1,
            gamma: 0.5,
        }),
        schedule_unit: dl_train::Unit::Epoch,
        reduce_on_plateau: None,
        ..config(3)
    };
    let mut n = net();
    let h = Trainer::new(&mut n, &train, &test, cfg).unwrap().train().unwrap();
    let rates: Vec<f32> = h.epochs.iter().map(|r| r.lr).collect();
    assert_eq!(rates, [0.001, 0.0005, 0.00025]);
}
