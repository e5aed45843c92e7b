//! Ensembles: combination rules against hand-computed values, save/load with every
//! failure a typed error, and training that gives the same members in turn, in parallel
//! and one by one.

use std::path::Path;

use dl_data::{ImageSet, Mnist, Pipeline, View};
use dl_layers::Tensor;
use dl_models::{Network, SimpleConvNet, SimpleConvNetConfig};
use dl_train::ensemble::{member_config, MANIFEST_FILE};
use dl_train::{evaluate, train_ensemble, Ensemble, EnsembleError, Observer, Trainer, TrainerConfig, Vote};
use ndarray::{Array2, Axis, Ix2};

fn small(seed: u64) -> Network {
    let config = SimpleConvNetConfig {
        hidden_size: 20,
        conv_param: dl_models::ConvParam {
            filter_num: 4,
            filter_size: 5,
            pad: 0,
            stride: 2,
        },
        ..SimpleConvNetConfig::default()
    };
    SimpleConvNet::new(config, seed).into_network()
}

fn mnist() -> Mnist {
    Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap()
}

fn softmax_of(net: &mut Network, x: &Tensor) -> Array2<f32> {
    let y = net
        .predict(x.clone(), false)
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap();
    dl_tensor::softmax(&y.view())
}

fn input(n: usize, seed: u64) -> Tensor {
    dl_layers::gradcheck::random_input(&[n, 1, 28, 28], 0.0, seed)
}

#[test]
fn mean_vote_averages_the_members_softmax_outputs() {
    let x = input(7, 1);
    let (mut a, mut b, mut c) = (small(1), small(2), small(3));
    let expected = (softmax_of(&mut a, &x) + softmax_of(&mut b, &x) + softmax_of(&mut c, &x)) / 3.0;
    let mut e = Ensemble::new(vec![a, b, c]).unwrap();
    // batch 3 does not divide 7: the chunks must join up in order
    let p = e.predict_proba(&x, 3).unwrap();
    assert_eq!(p.dim(), (7, 10));
    for (got, want) in p.iter().zip(expected.iter()) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    for row in p.axis_iter(Axis(0)) {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
    let classes = e.classify(&x, 3, Vote::Mean).unwrap();
    assert_eq!(classes, dl_tensor::argmax_rows(&expected.view()).to_vec());
}

#[test]
fn member_proba_gives_each_members_softmax_outputs_in_order() {
    let x = input(7, 4);
    let (mut a, mut b, mut c) = (small(21), small(22), small(23));
    let want = [softmax_of(&mut a, &x), softmax_of(&mut b, &x), softmax_of(&mut c, &x)];
    let mut e = Ensemble::new(vec![a, b, c]).unwrap();
    // batch 3 does not divide 7: each member's chunks join up in order
    let each = e.member_proba(&x, 3).unwrap();
    assert_eq!(each.len(), 3);
    for (m, (got, want)) in each.iter().zip(&want).enumerate() {
        assert_eq!(got.dim(), (7, 10), "member {m}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-6, "member {m}: {g} vs {w}");
        }
    }
    // their mean is the ensemble's output, bit for bit
    assert_eq!(dl_train::ensemble::mean_proba(&each), e.predict_proba(&x, 3).unwrap());
    // no images: an empty array for each member, and an empty mean
    let none = input(0, 4);
    let empty = e.member_proba(&none, 3).unwrap();
    assert_eq!(empty.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![0, 0, 0]);
    assert_eq!(e.predict_proba(&none, 3).unwrap().len(), 0);
}

#[test]
#[should_panic(expected = "no members")]
fn mean_proba_needs_a_member() {
    dl_train::ensemble::mean_proba(&[]);
}

#[test]
#[should_panic(expected = "differ in shape")]
fn mean_proba_needs_outputs_of_one_shape() {
    dl_train::ensemble::mean_proba(&[Array2::zeros((2, 3)), Array2::zeros((3, 3))]);
}

#[test]
fn an_ensemble_gives_its_members_by_reference_mutably_and_by_value() {
    let x = input(3, 9);
    let (mut a, mut b) = (small(11), small(12));
    let (pa, pb) = (softmax_of(&mut a, &x), softmax_of(&mut b, &x));
    let mut e = Ensemble::new(vec![a, b]).unwrap();
    assert_eq!((e.len(), e.is_empty()), (2, false));
    assert_eq!(e.members().len(), 2);
    assert_eq!(softmax_of(&mut e.members().to_vec()[1], &x), pb);
    // a change made through members_mut is the ensemble's: member 1 becomes member 0
    let weights = e.members()[0].params_to_bytes();
    let members = e.members_mut();
    assert_eq!(members.len(), 2);
    members[1]
        .load_params_from_bytes(&weights, Path::new("member 0"))
        .unwrap();
    let p = e.predict_proba(&x, 3).unwrap();
    for (got, want) in p.iter().zip(pa.iter()) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    // by value: the two members, in order
    let mut nets = e.into_members();
    assert_eq!(nets.len(), 2);
    assert_eq!(softmax_of(&mut nets[0], &x), pa);
    assert_eq!(nets[1].params_to_bytes(), weights);
}

#[test]
fn an_ensemble_of_one_is_that_network() {
    let x = input(5, 2);
    let mut net = small(4);
    let alone = net.classify(&x, 5).unwrap();
    let mut e = Ensemble::new(vec![net]).unwrap();
    assert_eq!(e.classify(&x, 2, Vote::Mean).unwrap(), alone);
    assert_eq!(e.classify(&x, 2, Vote::Majority).unwrap(), alone);
}

#[test]
fn majority_vote_counts_votes_and_breaks_ties_by_the_mean() {
    // Three members, each a net whose last layer we set by hand so that its scores are
    // known: Affine weights zero, bias = the scores we want.
    fn fixed(scores: [f32; 10]) -> Network {
        let mut net = small(0);
        let names: Vec<String> = net.params().into_iter().map(|(n, _)| n).collect();
        let last_w = names.iter().rev().find(|n| n.starts_with('W')).unwrap().clone();
        let last_b = names.iter().rev().find(|n| n.starts_with('b')).unwrap().clone();
        for p in net.params_and_grads() {
            if p.name == last_w {
                p.value.fill(0.0);
            } else if p.name == last_b {
                p.value.assign(&ndarray::arr1(&scores).into_dyn());
            }
        }
        net
    }
    let mut s = [[0.0f32; 10]; 4];
    // members 0 and 1 vote for class 2 weakly, member 2 for class 7 very strongly:
    // the vote says 2, the mean says 7
    s[0][2] = 1.0;
    s[1][2] = 1.0;
    s[2][7] = 12.0;
    let x = input(1, 3);
    let mut e = Ensemble::new(vec![fixed(s[0]), fixed(s[1]), fixed(s[2])]).unwrap();
    assert_eq!(e.classify(&x, 1, Vote::Majority).unwrap(), vec![2]);
    assert_eq!(e.classify(&x, 1, Vote::Mean).unwrap(), vec![7]);
    // a tie (one vote each for 2 and 7): the larger mean wins, whichever member says it
    s[3][7] = 0.5;
    let mut e = Ensemble::new(vec![fixed(s[0]), fixed(s[3])]).unwrap();
    assert_eq!(e.classify(&x, 1, Vote::Majority).unwrap(), vec![2]);
    let mut e = Ensemble::new(vec![fixed(s[3]), fixed(s[0])]).unwrap();
    assert_eq!(e.classify(&x, 1, Vote::Majority).unwrap(), vec![2]);
}

#[test]
fn an_empty_ensemble_is_an_error() {
    assert!(matches!(Ensemble::new(vec![]), Err(EnsembleError::Empty)));
}

#[test]
fn evaluate_counts_members_and_both_votes_against_the_labels() {
    let data = mnist();
    let test = data.test.take(300);
    let mut nets = vec![small(5), small(6), small(7)];
    let singles: Vec<_> = nets.iter_mut().map(|n| evaluate(n, &test, None, 64).unwrap()).collect();
    let (x, t) = test.batch(&(0..300).collect::<Vec<_>>());
    let mut e = Ensemble::new(nets).unwrap();
    let ev = e.evaluate(&test, None, 64).unwrap();
    assert_eq!(ev.members, singles);
    let right = |p: Vec<usize>| p.iter().zip(&t).filter(|(a, b)| a == b).count();
    assert_eq!(ev.mean.correct, right(e.classify(&x, 50, Vote::Mean).unwrap()));
    assert_eq!(ev.majority.correct, right(e.classify(&x, 50, Vote::Majority).unwrap()));
    assert_eq!(ev.mean.total, 300);
    assert_eq!(ev.by(Vote::Majority), ev.majority);
}

#[test]
fn save_and_load_give_the_same_predictions_and_check_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let x = input(6, 9);
    let mut e = Ensemble::new(vec![small(11), small(12)]).unwrap();
    let before = e.predict_proba(&x, 6).unwrap();
    let manifest = e.save(dir.path(), Vote::Mean, Some(&[11, 12]), None, "test").unwrap();
    assert_eq!(manifest.members.len(), 2);
    assert_eq!(manifest.members[1].seed, Some(12));
    assert_eq!(manifest.members[0].model, "SimpleConvNet");
    let (mut loaded, m) = Ensemble::load(dir.path()).unwrap();
    assert_eq!(m, manifest);
    assert_eq!(loaded.predict_proba(&x, 6).unwrap(), before);

    // a changed member file
    let member = dir.path().join(&manifest.members[1].file);
    let mut bytes = std::fs::read(&member).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&member, &bytes).unwrap();
    assert!(matches!(
        Ensemble::load(dir.path()),
        Err(EnsembleError::Checksum { .. })
    ));
    bytes[last] ^= 1;
    std::fs::write(&member, &bytes).unwrap();
    Ensemble::load(dir.path()).unwrap();

    // a manifest that names another model than the file holds
    let path = dir.path().join(MANIFEST_FILE);
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("\"SimpleConvNet\"", "\"DeepConvNet\"")).unwrap();
    let err = Ensemble::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, EnsembleError::Manifest { .. }) && err.to_string().contains("holds a SimpleConvNet"),
        "{err}"
    );
    std::fs::write(&path, &good).unwrap();

    // manifests this version does not read
    let path = dir.path().join(MANIFEST_FILE);
    let good = std::fs::read_to_string(&path).unwrap();
    for (bad, says) in [
        (good.replace("dlfs-ensemble", "other"), "format"),
        (good.replace("\"version\": 1", "\"version\": 9"), "version"),
        (
            good.replace("member-0.safetensors", "../member-0.safetensors"),
            "plain name",
        ),
        (good[..good.len() / 2].to_string(), "not a valid manifest"),
    ] {
        std::fs::write(&path, bad).unwrap();
        let err = Ensemble::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, EnsembleError::Manifest { .. }) && err.to_string().contains(says),
            "{err}"
        );
    }
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(Ensemble::load(dir.path()), Err(EnsembleError::Io { .. })));
}

#[test]
fn views_average_each_member_over_the_image_and_its_views() {
    let x = input(5, 21);
    let views = vec![View::Shift { dy: 1.0, dx: 0.0 }, View::Rotate { degrees: -8.0 }];
    let viewed = |v: &View| {
        let mut b = x.clone();
        v.apply_planes(b.as_slice_mut().unwrap(), 28, 28);
        b
    };
    let (mut a, mut b) = (small(31), small(32));
    let mut per_member = Vec::new();
    for net in [&mut a, &mut b] {
        let p = softmax_of(net, &x) + softmax_of(net, &viewed(&views[0])) + softmax_of(net, &viewed(&views[1]));
        per_member.push(p / 3.0);
    }
    let plain = (softmax_of(&mut a, &x) + softmax_of(&mut b, &x)) / 2.0;
    let want = (&per_member[0] + &per_member[1]) / 2.0;
    let mut e = Ensemble::new(vec![a, b]).unwrap().with_views(views.clone());
    assert_eq!(e.views(), &views[..]);
    // batch 2 does not divide 5: each chunk gets its own views
    let p = e.predict_proba(&x, 2).unwrap();
    for (got, want) in p.iter().zip(want.iter()) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    let moved = p
        .iter()
        .zip(plain.iter())
        .map(|(g, q)| (g - q).abs())
        .fold(0.0, f32::max);
    assert!(moved > 1e-5, "the views changed the outputs by {moved} only");
    // the majority counts each member's view-averaged vote
    let majority = e.classify(&x, 2, Vote::Majority).unwrap();
    assert_eq!(majority, dl_train::ensemble::combine(&per_member, Vote::Majority));
    // views of images that are not (N, C, H, W) are refused
    let flat = Tensor::zeros(ndarray::IxDyn(&[2, 784]));
    let err = e.predict_proba(&flat, 2).unwrap_err();
    assert!(err.to_string().contains("(N, C, H, W)"), "{err}");
    // no views: the plain ensemble again
    let mut off = e.with_views(Vec::new());
    assert_eq!(off.predict_proba(&x, 2).unwrap(), {
        let mut again = Ensemble::new(off.members().to_vec()).unwrap();
        again.predict_proba(&x, 2).unwrap()
    });
}

#[test]
fn views_are_saved_in_a_version_2_manifest_and_loaded_back() {
    let dir = tempfile::tempdir().unwrap();
    let x = input(4, 5);
    let views = vec![View::Shift { dy: 0.0, dx: -1.0 }, View::Scale { factor: 1.1 }];
    let mut e = Ensemble::new(vec![small(41), small(42)])
        .unwrap()
        .with_views(views.clone());
    let before = e.predict_proba(&x, 4).unwrap();
    let manifest = e.save(dir.path(), Vote::Mean, None, None, "views").unwrap();
    assert_eq!((manifest.version, &manifest.views), (2, &views));
    let (mut loaded, m) = Ensemble::load(dir.path()).unwrap();
    assert_eq!(m, manifest);
    assert_eq!(loaded.views(), &views[..]);
    assert_eq!(loaded.predict_proba(&x, 4).unwrap(), before);
    // a version-1 manifest cannot carry views: an older reader would drop them unseen
    let path = dir.path().join(MANIFEST_FILE);
    let good = std::fs::read_to_string(&path).unwrap();
    assert!(good.contains("\"version\": 2"), "{good}");
    std::fs::write(&path, good.replace("\"version\": 2", "\"version\": 1")).unwrap();
    let err = Ensemble::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("need version 2"), "{err}");
    // without views the manifest stays version 1 and records none
    let plain = Ensemble::new(vec![small(41)]).unwrap();
    let m = plain.save(dir.path(), Vote::Mean, None, None, "plain").unwrap();
    assert_eq!((m.version, m.views.len()), (1, 0));
    assert!(!std::fs::read_to_string(&path).unwrap().contains("views"));
    assert!(Ensemble::load(dir.path()).unwrap().0.views().is_empty());
}

struct Count(usize);
impl Observer for Count {
    fn on_epoch(&mut self, _: &dl_train::EpochRecord) {
        self.0 += 1;
    }
}

#[test]
fn members_are_the_same_trained_in_turn_in_parallel_or_alone() {
    let data = mnist();
    let train: ImageSet = data.train.take(400);
    let test = data.test.take(200);
    let config = TrainerConfig {
        epochs: 1,
        mini_batch_size: 50,
        evaluate_sample_num_per_epoch: Some(100),
        seed: 20,
        augment: Some(Pipeline::mnist(false, 20)),
        ..TrainerConfig::default()
    };
    let build = |_: usize, seed: u64| small(seed);
    // in a pool of 4 threads: in turn, each member has the 4; two at once, 2 each
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    let run =
        |parallel| pool.install(|| train_ensemble(build, &train, &test, &config, 3, parallel, |_| Count(0)).unwrap());
    let in_turn = run(1);
    let parallel = run(2);
    assert_eq!(in_turn.seeds, vec![20, 21, 22]);
    let threads = |r: &dl_train::ensemble::EnsembleRun| r.histories.iter().map(|h| h.threads).collect::<Vec<_>>();
    assert_eq!(threads(&in_turn), [4, 4, 4]);
    assert_eq!(threads(&parallel), [2, 2, 2]);
    for (a, b) in in_turn.ensemble.members().iter().zip(parallel.ensemble.members()) {
        assert_eq!(a.params_to_bytes(), b.params_to_bytes());
    }
    // member 2 alone, trained as a single network with member_config
    let cfg = member_config(&config, 2);
    assert_eq!(cfg.seed, 22);
    assert_eq!(cfg.augment.as_ref().unwrap().seed, 22);
    let mut alone = small(cfg.seed);
    let h = Trainer::new(&mut alone, &train, &test, cfg).unwrap().train().unwrap();
    assert_eq!(alone.params_to_bytes(), in_turn.ensemble.members()[2].params_to_bytes());
    assert_eq!(h.train_loss_list, in_turn.histories[2].train_loss_list);
    // the members differ from one another
    assert_ne!(
        in_turn.ensemble.members()[0].params_to_bytes(),
        in_turn.ensemble.members()[1].params_to_bytes()
    );
    assert!(matches!(
        train_ensemble(build, &train, &test, &config, 0, 1, |_| Count(0)),
        Err(EnsembleError::Empty)
    ));
}

#[test]
fn an_ensemble_of_different_models_saves_and_loads_each_as_its_own_kind() {
    use dl_models::{GoogLeNet, GoogLeNetConfig, InceptionParam, ResNet, ResNetConfig};
    let dir = tempfile::tempdir().unwrap();
    let x = input(3, 4);
    let resnet = ResNet::new(
        ResNetConfig {
            blocks_per_stage: 1,
            widths: vec![4, 8],
            ..ResNetConfig::default()
        },
        1,
    )
    .into_network();
    let p = InceptionParam {
        ch1x1: 2,
        ch3x3red: 2,
        ch3x3: 2,
        ch5x5red: 2,
        ch5x5: 2,
        pool_proj: 2,
    };
    let googlenet = GoogLeNet::new(
        GoogLeNetConfig {
            stem_channels: 4,
            stages: vec![vec![p]],
            ..GoogLeNetConfig::default()
        },
        2,
    )
    .into_network();
    let mut e = Ensemble::new(vec![small(3), resnet, googlenet]).unwrap();
    let before = e.predict_proba(&x, 3).unwrap();
    let manifest = e.save(dir.path(), Vote::Mean, None, None, "mixed").unwrap();
    let kinds: Vec<&str> = manifest.members.iter().map(|m| m.model.as_str()).collect();
    assert_eq!(kinds, ["SimpleConvNet", "ResNet", "GoogLeNet"]);
    let (mut loaded, _) = Ensemble::load(dir.path()).unwrap();
    assert_eq!(loaded.predict_proba(&x, 3).unwrap(), before);
}

/// `combine` on outputs computed elsewhere: the mean's top class, or the most votes with
/// ties to the larger mean.
#[test]
fn combine_takes_outputs_computed_elsewhere() {
    use dl_train::ensemble::combine;
    let p = |rows: &[[f32; 3]]| Array2::from_shape_fn((rows.len(), 3), |(r, c)| rows[r][c]);
    // image 0: two members say class 0 weakly, one says class 2 strongly
    // image 1: every member says class 1
    let probs = [
        p(&[[0.5, 0.1, 0.4], [0.1, 0.8, 0.1]]),
        p(&[[0.5, 0.1, 0.4], [0.2, 0.7, 0.1]]),
        p(&[[0.0, 0.0, 1.0], [0.3, 0.6, 0.1]]),
    ];
    assert_eq!(combine(&probs, Vote::Mean), vec![2, 1]);
    assert_eq!(combine(&probs, Vote::Majority), vec![0, 1]);
    // a tie of votes (one each) goes to the larger mean: class 2 here
    let tie = [p(&[[0.6, 0.0, 0.4]]), p(&[[0.0, 0.1, 0.9]])];
    assert_eq!(combine(&tie, Vote::Majority), vec![2]);
    assert_eq!(combine(&probs[..1], Vote::Mean), vec![0, 1]);
}

#[test]
#[should_panic(expected = "no members")]
fn combine_needs_a_member() {
    dl_train::ensemble::combine(&[], Vote::Mean);
}

#[test]
#[should_panic(expected = "differ in shape")]
fn combine_needs_outputs_of_one_shape() {
    dl_train::ensemble::combine(&[Array2::zeros((2, 3)), Array2::zeros((2, 4))], Vote::Mean);
}

/// Members training at once share the pool's threads equally, each at least one.
#[test]
fn members_at_once_share_the_pools_threads() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    let shares: Vec<usize> = pool.install(|| {
        [0, 1, 2, 3, 4, 8]
            .iter()
            .map(|&p| dl_train::ensemble::threads_per_member(p))
            .collect()
    });
    assert_eq!(shares, [4, 4, 2, 1, 1, 1]);
}
