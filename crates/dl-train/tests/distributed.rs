//! Data-parallel training over threads ([`ThreadGroup`]): the collectives, the slices,
//! and the run itself, which gives the model one process gives, whatever the number of
//! ranks; and ranks that stop agreeing are caught.

use std::path::Path;

use dl_data::{ImageSet, Mnist, Pipeline};
use dl_models::{DeepConvNet, DeepConvNetConfig, Network};
use dl_train::distributed::{self, share, Communicator, Distributed, ThreadGroup};
use dl_train::{Evaluation, History, IterationInfo, Observer, TrainError, Trainer, TrainerConfig};

fn sets(train: usize) -> (ImageSet, ImageSet) {
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    (mnist.train.take(train), mnist.test.take(100))
}

/// The book's network and run (Adam, dropout on two layers), with augmentation.
fn config(epochs: usize) -> TrainerConfig {
    TrainerConfig {
        epochs,
        mini_batch_size: 50,
        seed: 7,
        evaluate_sample_num_per_epoch: Some(50),
        augment: Some(Pipeline::mnist(false, 7)),
        ..TrainerConfig::default()
    }
}

fn net(seed: u64) -> Network {
    DeepConvNet::new(DeepConvNetConfig::default(), seed).into_network()
}

fn flat(net: &mut Network) -> Vec<f32> {
    let mut out = Vec::new();
    net.visit_state_mut(|t| out.extend(t.iter().copied()));
    out
}

/// `|a - b| / |a|` over the whole parameter vector.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let n: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    (d / n).sqrt()
}

/// Trains on `ranks` threads, every rank's network built as one process builds it (the
/// seed also fixes the dropout layers' streams). Returns every rank's parameters and
/// history.
fn train_on(ranks: usize, train: &ImageSet, test: &ImageSet, cfg: &TrainerConfig) -> Vec<(Vec<f32>, History)> {
    ThreadGroup::run(ranks, |comm| {
        let mut n = net(0);
        // the replicas compared after every step
        let dist = Distributed { comm, check_every: 1 };
        let h = Trainer::new(&mut n, train, test, cfg.clone())
            .unwrap()
            .distributed(dist)
            .train()
            .unwrap();
        (flat(&mut n), h)
    })
}

#[test]
fn the_slices_cover_the_batch_once_and_differ_by_at_most_one() {
    for n in [0, 1, 2, 5, 50, 101] {
        for size in 1..=4 {
            let slices: Vec<_> = (0..size).map(|r| share(n, r, size)).collect();
            assert_eq!(slices[0].start, 0);
            assert_eq!(slices[size - 1].end, n);
            for w in slices.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let lens: Vec<usize> = slices.iter().map(|s| s.len()).collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} over {size}: {lens:?}");
        }
    }
    assert_eq!(share(5, 1, 2), 2..5);
}

#[test]
fn the_thread_collectives_broadcast_sum_in_rank_order_and_gather() {
    let out = ThreadGroup::run(3, |c| {
        assert_eq!(c.size(), 3);
        let r = c.rank();
        let mut b = vec![r as f32; 4];
        c.broadcast(&mut b, 2);
        let mut d = [r as f64 + 0.25];
        c.broadcast_f64(&mut d, 1);
        // 1e8 + 1 - 1e8 in f32 depends on the order: rank order gives (1e8 + 1) - 1e8 = 0
        let mut s = vec![[1e8f32, 1.0, -1e8][r], r as f32];
        c.all_reduce_sum(&mut s);
        let g = c.all_gather_u64(10 + r as u64);
        (b, d[0], s, g)
    });
    for (b, d, s, g) in out {
        assert_eq!(b, [2.0; 4]);
        assert_eq!(d, 1.25);
        assert_eq!(s, [0.0, 3.0]);
        assert_eq!(g, [10, 11, 12]);
    }
}

#[test]
fn a_rank_that_panics_ends_the_others_and_run_gives_its_panic() {
    for dying in [0, 2] {
        let caught = std::panic::catch_unwind(|| {
            ThreadGroup::run(3, |c| {
                let mut b = vec![1.0f32; 8];
                c.all_reduce_sum(&mut b);
                if c.rank() == dying {
                    panic!("rank {dying} fails");
                }
                // the others wait here for a rank that will never come
                c.all_reduce_sum(&mut b);
                c.all_gather_u64(0)
            })
        });
        let payload = caught.expect_err("run must panic");
        let message = payload.downcast_ref::<String>().map(String::as_str).unwrap_or("");
        assert_eq!(message, format!("rank {dying} fails"));
    }
    // a group whose ranks all return is unaffected, and results come in rank order
    assert_eq!(ThreadGroup::run(3, |c| c.rank() * 10), [0, 10, 20]);
}

#[test]
fn the_settings_show_the_rank_the_size_and_the_check_interval() {
    let shown = ThreadGroup::run(2, |c| format!("{:?}", Distributed::new(c)));
    assert_eq!(shown[1], "Distributed { rank: 1, size: 2, check_every: 100 }");
}

#[test]
fn the_network_broadcast_copies_rank_0s_parameters_and_the_checksum_sees_one_bit() {
    let sums = ThreadGroup::run(2, |c| {
        let mut n = net(c.rank() as u64 + 1);
        let before = distributed::checksum(&mut n);
        distributed::broadcast_network(c, &mut n);
        (before, distributed::checksum(&mut n), flat(&mut n))
    });
    assert_ne!(sums[0].0, sums[1].0, "two seeds, two networks");
    assert_eq!(sums[0].1, sums[0].0, "rank 0 keeps its own");
    assert_eq!(sums[1].1, sums[0].0);
    assert_eq!(sums[1].2, flat(&mut net(1)));
    let mut n = net(1);
    let a = distributed::checksum(&mut n);
    let mut first = true;
    n.visit_state_mut(|t| {
        if std::mem::take(&mut first) {
            let v = &mut t.as_slice_mut().unwrap()[0];
            *v = f32::from_bits(v.to_bits() ^ 1);
        }
    });
    assert_ne!(distributed::checksum(&mut n), a);
}

/// 201 images in batches of 50: every epoch ends on a batch of 1, which leaves some
/// ranks an empty slice; 2 epochs, 10 steps, with dropout and augmentation. `R` ranks
/// give, bit for bit, what one process gives that adds up the gradients of the same `R`
/// slices (`micro_batches`).
#[test]
fn r_ranks_train_bit_for_bit_the_model_of_one_process_summing_r_slices() {
    let (train, test) = sets(201);
    for ranks in [2, 3] {
        let cfg = TrainerConfig {
            micro_batches: ranks,
            ..config(2)
        };
        let mut one = net(0);
        let single = Trainer::new(&mut one, &train, &test, cfg).unwrap().train().unwrap();
        let one = flat(&mut one);
        assert_eq!(single.ranks, 1);
        assert_eq!(single.test_evaluation.total, 100, "the whole test set, evaluated");
        assert_eq!(single.communication_seconds, 0.0);
        let runs = train_on(ranks, &train, &test, &config(2));
        for (r, (p, h)) in runs.iter().enumerate() {
            assert!(
                p == &one,
                "rank {r} of {ranks}: relative difference {:e}",
                relative(&one, p)
            );
            assert_eq!(h.ranks, ranks);
            assert!(h.communication_seconds > 0.0, "the all-reduce's time, counted");
            assert_eq!(
                h.train_loss_list, single.train_loss_list,
                "the summed loss, bit for bit"
            );
            assert_eq!(
                h.test_evaluation, single.test_evaluation,
                "rank 0's evaluation on every rank"
            );
            assert_eq!(h.epochs.len(), 2);
            assert_eq!(h.epochs[1].test_acc, single.epochs[1].test_acc);
        }
    }
}

/// Ranks that each sum slices of their own: 2 ranks of 2 micro-batches compute the
/// slices one process of 4 computes (the sums associate differently:
/// `(g0 + g1) + (g2 + g3)` against `((g0 + g1) + g2) + g3`, so to rounding, over one
/// step: later steps drift apart, as in the test below).
#[test]
fn ranks_of_several_micro_batches_are_one_process_of_all_their_slices() {
    let (train, test) = sets(50);
    let with = |micro| TrainerConfig {
        micro_batches: micro,
        ..config(1)
    };
    let mut one = net(0);
    Trainer::new(&mut one, &train, &test, with(4)).unwrap().train().unwrap();
    let runs = train_on(2, &train, &test, &with(2));
    let rel = relative(&flat(&mut one), &runs[0].0);
    assert!(rel < 1e-6, "{rel:e}");
}

/// Against one process computing each mini-batch at once, only the rounding of the
/// sums differs: after one step the parameters agree to 1e-7 (later the runs drift
/// apart: a convolution's rounding, F(4x4, 3x3)'s above all, changes with the last bit
/// of its input, and inputs near a ReLU's or a max-pool's kink go the other way:
/// docs/ARCHITECTURE.md).
#[test]
fn ranks_and_one_process_computing_whole_batches_differ_only_by_rounding() {
    let (train, test) = sets(50);
    let cfg = TrainerConfig {
        augment: None,
        ..config(1)
    };
    let mut one = net(0);
    Trainer::new(&mut one, &train, &test, cfg.clone())
        .unwrap()
        .train()
        .unwrap();
    let one = flat(&mut one);
    for ranks in [2, 3] {
        let runs = train_on(ranks, &train, &test, &cfg);
        let rel = relative(&one, &runs[0].0);
        assert!(rel > 0.0 && rel <= 1e-7, "{ranks} ranks: relative difference {rel:e}");
    }
}

#[test]
fn one_micro_batch_per_sample_is_the_whole_batchs_gradient() {
    // slices of 1 to 2 images, summed, against the whole batch of 5
    let (train, test) = sets(5);
    let cfg = |micro| TrainerConfig {
        epochs: 1,
        mini_batch_size: 5,
        micro_batches: micro,
        optimizer: "sgd".into(),
        lr: 0.1,
        ..config(1)
    };
    let mut a = net(0);
    let ha = Trainer::new(&mut a, &train, &test, cfg(1)).unwrap().train().unwrap();
    let mut b = net(0);
    let hb = Trainer::new(&mut b, &train, &test, cfg(3)).unwrap().train().unwrap();
    let rel = relative(&flat(&mut a), &flat(&mut b));
    assert!(rel > 0.0 && rel < 1e-7, "{rel:e}");
    assert!((ha.train_loss_list[0] - hb.train_loss_list[0]).abs() < 1e-6);
    let zero = Trainer::new(&mut b, &train, &test, cfg(0));
    assert!(matches!(zero, Err(TrainError::Config(_))));
}

#[test]
fn ranks_that_take_different_steps_are_caught_at_the_next_check() {
    let (train, test) = sets(100);
    let err = ThreadGroup::run(2, |comm| {
        let mut n = net(0);
        let mut cfg = config(1);
        // rank 1 steps with another learning rate
        cfg.lr *= 1.0 + comm.rank() as f32;
        let dist = Distributed { comm, check_every: 2 };
        Trainer::new(&mut n, &train, &test, cfg)
            .unwrap()
            .distributed(dist)
            .train()
            .unwrap_err()
    });
    for e in err {
        match e {
            TrainError::ReplicasDiverged { iteration, checksums } => {
                assert_eq!(iteration, 2);
                assert_eq!(checksums.len(), 2);
                assert_ne!(checksums[0], checksums[1]);
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn settings_and_histories_written_before_data_parallelism_read_as_one_process() {
    let mut v = serde_json::to_value(TrainerConfig::default()).unwrap();
    assert_eq!(v["micro_batches"], 1);
    v.as_object_mut().unwrap().remove("micro_batches");
    let cfg: TrainerConfig = serde_json::from_value(v).unwrap();
    assert_eq!(cfg.micro_batches, 1);
    let h = History {
        config: cfg,
        train_loss_list: vec![0.5],
        epochs: Vec::new(),
        test_accuracy: 0.5,
        test_evaluation: Evaluation { correct: 1, total: 2 },
        total_seconds: 1.0,
        threads: 2,
        evaluated_on: None,
        ranks: 3,
        communication_seconds: 0.25,
    };
    let mut v = serde_json::to_value(&h).unwrap();
    assert_eq!(
        (v["ranks"].clone(), v["communication_seconds"].clone()),
        (3.into(), 0.25.into())
    );
    let o = v.as_object_mut().unwrap();
    o.remove("ranks");
    o.remove("communication_seconds");
    let old: History = serde_json::from_value(v).unwrap();
    assert_eq!((old.ranks, old.communication_seconds), (1, 0.0));
}

/// Asks for an evaluation after every step, and stops the run at the first.
struct Impatient {
    asked: usize,
}

impl Observer for Impatient {
    fn evaluate_now(&mut self, _info: &IterationInfo) -> bool {
        self.asked += 1;
        true
    }
    fn on_evaluation(&mut self, _: &IterationInfo, _: &Evaluation, _: f64) -> std::ops::ControlFlow<()> {
        std::ops::ControlFlow::Break(())
    }
}

#[test]
fn a_distributed_run_does_not_ask_for_evaluations_between_steps() {
    let (train, test) = sets(100);
    // one process: asked after the first step, which ends the run
    let mut n = net(0);
    let mut alone = Impatient { asked: 0 };
    let h = Trainer::new(&mut n, &train, &test, config(1))
        .unwrap()
        .train_with(&mut alone)
        .unwrap();
    assert_eq!((alone.asked, h.train_loss_list.len()), (1, 1));
    // ranks: never asked (a rank that stopped alone would leave the others waiting)
    let asked = ThreadGroup::run(2, |comm| {
        let mut n = net(0);
        let mut o = Impatient { asked: 0 };
        let t = Trainer::new(&mut n, &train, &test, config(1)).unwrap();
        let h = t.distributed(Distributed::new(comm)).train_with(&mut o).unwrap();
        (o.asked, h.train_loss_list.len())
    });
    assert_eq!(asked, [(0, 2), (0, 2)]);
}

#[test]
fn ranks_with_different_networks_are_refused_on_every_rank() {
    let (train, test) = sets(100);
    let errors = ThreadGroup::run(2, |comm| {
        let cfg = DeepConvNetConfig {
            hidden_size: 50 + comm.rank(),
            ..DeepConvNetConfig::default()
        };
        let mut n = DeepConvNet::new(cfg, 0).into_network();
        let t = Trainer::new(&mut n, &train, &test, config(1)).unwrap();
        t.distributed(Distributed::new(comm)).train().unwrap_err().to_string()
    });
    for e in errors {
        assert!(e.contains("the ranks hold different networks"), "{e}");
    }
}
