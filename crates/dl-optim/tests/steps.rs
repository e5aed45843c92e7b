//! Each optimizer's first steps against numbers computed by hand, and each one driving
//! the book's ill-conditioned `f(x, y) = x^2 / 20 + y^2` toward its minimum.

use dl_optim::{by_name, by_name_with_decay, AdaGrad, Adam, Momentum, Nesterov, Optimizer, RmsProp, Sgd};
use dl_tensor::{ParamMut, Tensor};

/// Two steps on a 1-D parameter starting at 1.0 with a constant gradient 0.5.
fn two_steps(opt: &mut dyn Optimizer) -> (f32, f32) {
    let mut w = Tensor::from_elem(vec![1], 1.0);
    let g = Tensor::from_elem(vec![1], 0.5);
    opt.update(&mut [ParamMut {
        name: "w".into(),
        value: &mut w,
        grad: &g,
    }]);
    let first = w[0];
    opt.update(&mut [ParamMut {
        name: "w".into(),
        value: &mut w,
        grad: &g,
    }]);
    (first, w[0])
}

fn close(got: (f32, f32), want: (f32, f32), what: &str) {
    assert!(
        (got.0 - want.0).abs() < 1e-5 && (got.1 - want.1).abs() < 1e-5,
        "{what}: got {got:?}, want {want:?}"
    );
}

#[test]
fn first_steps_match_hand_computed_values() {
    // w1 = 1 - 0.1*0.5; w2 = w1 - 0.05
    close(two_steps(&mut Sgd::new(0.1)), (0.95, 0.90), "SGD");
    // v1 = -0.05, w1 = 0.95; v2 = 0.9*(-0.05) - 0.05 = -0.095, w2 = 0.855
    close(two_steps(&mut Momentum::new(0.1, 0.9)), (0.95, 0.855), "Momentum");
    // v1 = -0.05, w1 = 1 + 0.81*(-0.05) - 1.9*0.05 = 0.8645; v2 = -0.095,
    // w2 = 0.8645 + 0.81*(-0.095) - 0.095 = 0.69255
    close(two_steps(&mut Nesterov::new(0.1, 0.9)), (0.8645, 0.69255), "Nesterov");
    // h1 = 0.25: w1 = 1 - 0.1*0.5/0.5 = 0.9; h2 = 0.5: w2 = 0.9 - 0.05/sqrt(0.5)
    close(two_steps(&mut AdaGrad::new(0.1)), (0.9, 0.829_289_3), "AdaGrad");
    // h1 = 0.0025: w1 = 1 - 0.05/0.05 = 0; h2 = 0.004975: w2 = -0.05/sqrt(0.004975)
    close(two_steps(&mut RmsProp::new(0.1, 0.99)), (0.0, -0.708_878_2), "RMSprop");
    // With a constant gradient the bias-corrected Adam step is lr each time.
    close(two_steps(&mut Adam::new(0.1)), (0.9, 0.8), "Adam");
}

#[test]
fn weight_decay_applies_to_weights_not_biases() {
    let mut opt = Sgd::new(0.1);
    opt.weight_decay = 0.1;
    let mut w = Tensor::from_elem(vec![1, 1], 1.0);
    let mut b = Tensor::from_elem(vec![1], 1.0);
    let g = Tensor::from_elem(vec![1, 1], 0.5);
    let gb = Tensor::from_elem(vec![1], 0.5);
    opt.update(&mut [
        ParamMut {
            name: "W1".into(),
            value: &mut w,
            grad: &g,
        },
        ParamMut {
            name: "b1".into(),
            value: &mut b,
            grad: &gb,
        },
    ]);
    assert!((w[[0, 0]] - 0.94).abs() < 1e-6, "{}", w[[0, 0]]);
    assert!((b[0] - 0.95).abs() < 1e-6, "{}", b[0]);
    let mut adam = Adam::new(0.1);
    adam.weight_decay = 1.0;
    let mut w = Tensor::from_elem(vec![1, 1], 1.0);
    let zero = Tensor::zeros(vec![1, 1]);
    adam.update(&mut [ParamMut {
        name: "W".into(),
        value: &mut w,
        grad: &zero,
    }]);
    assert!(w[[0, 0]] < 1.0, "decay alone must shrink the weight");
}

#[test]
fn state_is_kept_per_parameter_name() {
    let mut opt = Momentum::new(0.1, 0.9);
    let g = Tensor::from_elem(vec![1], 0.5);
    let mut a = Tensor::from_elem(vec![1], 1.0);
    let mut b = Tensor::from_elem(vec![1], 1.0);
    opt.update(&mut [ParamMut {
        name: "a".into(),
        value: &mut a,
        grad: &g,
    }]);
    opt.update(&mut [ParamMut {
        name: "b".into(),
        value: &mut b,
        grad: &g,
    }]);
    // b's first step has no velocity from a's
    assert!((b[0] - 0.95).abs() < 1e-6);
}

/// Runs `steps` updates on the book's `f(x, y) = x^2/20 + y^2` from (-7, 2).
fn minimise(opt: &mut dyn Optimizer, steps: usize) -> f32 {
    let mut x = Tensor::from_elem(vec![1], -7.0);
    let mut y = Tensor::from_elem(vec![1], 2.0);
    for _ in 0..steps {
        let gx = &x / 10.0;
        let gy = &y * 2.0;
        opt.update(&mut [
            ParamMut {
                name: "x".into(),
                value: &mut x,
                grad: &gx,
            },
            ParamMut {
                name: "y".into(),
                value: &mut y,
                grad: &gy,
            },
        ]);
    }
    x[0] * x[0] / 20.0 + y[0] * y[0]
}

#[test]
fn every_optimizer_descends_the_books_quadratic() {
    let start = 49.0 / 20.0 + 4.0;
    // the book's figure 6-8 learning rates
    for (name, lr) in [
        ("sgd", 0.95),
        ("momentum", 0.1),
        ("nesterov", 0.1),
        ("adagrad", 1.5),
        ("rmsprop", 0.1),
        ("adam", 0.3),
    ] {
        let mut opt = by_name(name, lr).unwrap();
        let f = minimise(opt.as_mut(), 200);
        assert!(f < 0.01 * start, "{name}: f = {f} after 200 steps (start {start})");
    }
}

#[test]
fn by_name_rejects_unknown_names_and_bad_rates() {
    assert_eq!(by_name("ADAM", 0.001).unwrap().name(), "Adam");
    let e = by_name("adamw", 0.001).err().unwrap().to_string();
    assert!(e.contains("unknown optimizer \"adamw\""), "{e}");
    for bad in [-1.0, 0.0, f32::NAN, f32::INFINITY] {
        assert!(by_name("sgd", bad).is_err(), "rate {bad}");
    }
    // each optimizer answers to its book name, which its saved state carries
    for (name, book) in [
        ("sgd", "SGD"),
        ("momentum", "Momentum"),
        ("nesterov", "Nesterov"),
        ("adagrad", "AdaGrad"),
        ("rmsprop", "RMSprop"),
        ("adam", "Adam"),
    ] {
        assert_eq!(by_name(name, 0.01).unwrap().name(), book);
    }
}

#[test]
fn by_name_with_decay_sets_the_decay_of_every_optimizer() {
    // one step on a weight matrix w = 1 with gradient 0.5 and decay 0.1: the gradient
    // used is 0.6, and each optimizer's first step with it is computed by hand
    let step = |name: &str, wd: f32| run_steps(name, 0.1, wd, 1.0, 0.5, 1)[0];
    let near = |a: f32, b: f32, what: &str| assert!((a - b).abs() < 1e-5, "{what}: {a} vs {b}");
    near(step("sgd", 0.1), 1.0 - 0.06, "SGD");
    near(step("momentum", 0.1), 1.0 - 0.06, "Momentum");
    near(step("nesterov", 0.1), 1.0 + 0.81 * -0.06 - 1.9 * 0.06, "Nesterov");
    // the adaptive ones normalise the gradient: a first step of lr whatever its size,
    // so the decay shows in the second step only; compare with and without it
    for name in ["adagrad", "rmsprop", "adam"] {
        let two = |wd: f32| run_steps(name, 0.1, wd, 1.0, 0.5, 2)[1];
        assert_ne!(two(0.1), two(0.0), "{name} applies the decay");
    }
    near(step("adam", 0.0), 0.9, "no decay");
    for bad in [-0.1, f32::NAN, f32::INFINITY] {
        assert!(by_name_with_decay("sgd", 0.1, bad).is_err(), "decay {bad}");
    }
}

/// The book's update rules in f64 on one scalar weight `w` with L2 decay `wd`: the
/// weight after each step of the constant gradient `g`.
fn book_steps(name: &str, lr: f64, wd: f64, mut w: f64, g: f64, steps: usize) -> Vec<f64> {
    const EPS: f64 = 1e-7;
    let (mut v, mut h, mut m) = (0.0, 0.0, 0.0);
    (1..=steps)
        .map(|t| {
            let g = g + wd * w;
            match name {
                "sgd" => w -= lr * g,
                "momentum" => {
                    v = 0.9 * v - lr * g;
                    w += v;
                }
                "nesterov" => {
                    v = 0.9 * v - lr * g;
                    w += 0.81 * v - 1.9 * lr * g;
                }
                "adagrad" => {
                    h += g * g;
                    w -= lr * g / (h.sqrt() + EPS);
                }
                "rmsprop" => {
                    h = 0.99 * h + 0.01 * g * g;
                    w -= lr * g / (h.sqrt() + EPS);
                }
                "adam" => {
                    let lr_t = lr * (1.0 - 0.999f64.powi(t as i32)).sqrt() / (1.0 - 0.9f64.powi(t as i32));
                    m += 0.1 * (g - m);
                    h += 0.001 * (g * g - h);
                    w -= lr_t * m / (h.sqrt() + EPS);
                }
                _ => unreachable!(),
            }
            w
        })
        .collect()
}

const NAMES: [&str; 6] = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"];

/// `steps` updates of the optimizer `name` on a weight matrix of one value `w` with the
/// constant gradient `g`: the value after each.
fn run_steps(name: &str, lr: f32, wd: f32, w: f32, g: f32, steps: usize) -> Vec<f32> {
    let mut o = by_name_with_decay(name, lr, wd).unwrap();
    let mut w = Tensor::from_elem(vec![1, 1], w);
    let g = Tensor::from_elem(vec![1, 1], g);
    (0..steps)
        .map(|_| {
            o.update(&mut [ParamMut {
                name: "W".into(),
                value: &mut w,
                grad: &g,
            }]);
            w[[0, 0]]
        })
        .collect()
}

#[test]
fn the_decay_adds_lambda_times_the_weight_to_every_optimizers_gradient() {
    // w = 2, not 1, so that `wd * w` differs from `wd / w` and from `wd`; three steps,
    // so the adaptive optimizers' accumulated squares include the decay's term
    for name in NAMES {
        let got = run_steps(name, 0.1, 0.1, 2.0, 0.5, 3);
        let want = book_steps(name, 0.1, 0.1, 2.0, 0.5, 3);
        for (t, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(a) - b).abs() < 1e-5 * b.abs().max(1.0),
                "{name} step {t}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn epsilon_is_added_to_the_root_of_a_tiny_accumulated_square() {
    // a gradient of 1e-7 has a root of its squares near EPS = 1e-7, so the step
    // depends on EPS being added: AdaGrad's first step is lr * g / (g + EPS) = lr / 2
    for name in ["adagrad", "rmsprop", "adam"] {
        let got = run_steps(name, 0.1, 0.0, 1.0, 1e-7, 2);
        let want = book_steps(name, 0.1, 0.0, 1.0, 1e-7, 2);
        for (t, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert!((1.0 - f64::from(a)) > 0.0, "{name} step {t}: the weight went up to {a}");
            let (da, db) = (1.0 - f64::from(a), 1.0 - b);
            assert!(
                (da - db).abs() < 1e-3 * db,
                "{name} step {t}: moved {da}, the book {db}"
            );
        }
    }
    assert!((1.0 - run_steps("adagrad", 0.1, 0.0, 1.0, 1e-7, 1)[0] - 0.05).abs() < 1e-6);
}

#[test]
fn adam_counts_its_steps() {
    let mut adam = Adam::new(0.1);
    assert_eq!(adam.iterations(), 0);
    two_steps(&mut adam);
    assert_eq!(adam.iterations(), 2);
    two_steps(&mut adam);
    assert_eq!(adam.iterations(), 4);
}

/// Two steps of `opt` on two parameters, `backbone.W` and `head.W`, each starting at 1.0
/// with a constant gradient 0.5 and a weight decay of 0.1: their values after each step.
fn two_steps_grouped(opt: &mut dyn Optimizer) -> [(f32, f32); 2] {
    let mut a = Tensor::from_elem(vec![1, 1], 1.0);
    let mut b = Tensor::from_elem(vec![1, 1], 1.0);
    let g = Tensor::from_elem(vec![1, 1], 0.5);
    let mut first = (0.0, 0.0);
    for step in 0..2 {
        opt.update(&mut [
            ParamMut {
                name: "backbone.W".into(),
                value: &mut a,
                grad: &g,
            },
            ParamMut {
                name: "head.W".into(),
                value: &mut b,
                grad: &g,
            },
        ]);
        if step == 0 {
            first = (a[[0, 0]], b[[0, 0]]);
        }
    }
    [(first.0, a[[0, 0]]), (first.1, b[[0, 0]])]
}

#[test]
fn a_group_learns_at_its_factor_of_the_rate() {
    use dl_optim::LrGroups;
    let mut groups = LrGroups::new();
    groups.set("backbone", 0.25).unwrap();
    for name in ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"] {
        // each parameter alone at the rate it should get, against both in one grouped
        // optimizer
        let alone = |lr: f32| {
            let mut o = by_name_with_decay(name, lr, 0.1).unwrap();
            two_steps_grouped(o.as_mut())
        };
        let mut grouped = by_name_with_decay(name, 0.2, 0.1).unwrap();
        grouped.set_lr_groups(groups.clone());
        assert_eq!(grouped.lr_groups(), &groups);
        let got = two_steps_grouped(grouped.as_mut());
        assert_eq!(got[1], alone(0.2)[1], "{name}: the head at the full rate");
        let want = alone(0.05)[0];
        close(got[0], want, name);
        assert_ne!(got[0], alone(0.2)[0], "{name}: the backbone is slower");
    }
    // by hand, SGD: the gradient with decay is 0.5 + 0.1 w; the backbone's rate 0.05
    let mut sgd = Sgd::new(0.2);
    sgd.weight_decay = 0.1;
    sgd.lr_groups = groups;
    let [backbone, head] = two_steps_grouped(&mut sgd);
    let w1 = 1.0 - 0.05 * 0.6;
    close(backbone, (w1, w1 - 0.05 * (0.5 + 0.1 * w1)), "SGD backbone");
    let h1 = 1.0 - 0.2 * 0.6;
    close(head, (h1, h1 - 0.2 * (0.5 + 0.1 * h1)), "SGD head");
}

#[test]
fn the_longest_group_prefix_decides_and_bad_factors_are_refused() {
    use dl_optim::{LrGroups, OptimError};
    let mut g = LrGroups::new();
    assert_eq!(g.factor("anything"), 1.0);
    g.set("layer1", 0.5).unwrap();
    g.set("layer1.0", 0.0).unwrap();
    g.set("", 0.1).unwrap();
    assert_eq!(g.factor("layer1.0.conv1.W"), 0.0);
    assert_eq!(g.factor("layer1.1.conv1.W"), 0.5);
    assert_eq!(g.factor("layer1"), 0.5);
    assert_eq!(g.factor("layer10.W"), 0.1, "a prefix is whole path components");
    assert_eq!(g.factor("fc.W"), 0.1);
    // setting a prefix again replaces its factor
    g.set("layer1", 2.0).unwrap();
    assert_eq!(g.factor("layer1.1.W"), 2.0);
    assert_eq!(g.pairs().len(), 3);
    for bad in [-0.5, f32::NAN, f32::INFINITY] {
        assert!(matches!(g.set("x", bad), Err(OptimError::InvalidHyperParameter { .. })));
    }
    assert_eq!(g.pairs().len(), 3, "a refused factor changes nothing");
    let pairs = [("a".to_string(), 0.5), ("a".to_string(), 0.25)];
    assert_eq!(LrGroups::from_pairs(&pairs).unwrap().factor("a.W"), 0.25);
    assert!(LrGroups::from_pairs(&[("a".to_string(), -1.0)]).is_err());
}

#[test]
fn a_group_no_parameter_lies_under_is_named() {
    use dl_optim::LrGroups;
    let names = ["layer1.0.conv1.W", "layer10.W", "fc.W", "fc.b"];
    let pairs = [
        ("".to_string(), 0.1),
        ("layer1.0".to_string(), 0.5),
        ("layer1.0.conv".to_string(), 0.5),
        ("fc.W".to_string(), 1.0),
        ("layer2".to_string(), 0.2),
    ];
    let groups = LrGroups::from_pairs(&pairs).unwrap();
    // a prefix is whole path components: "layer1.0.conv" holds no "layer1.0.conv1.W"
    assert_eq!(groups.unmatched(&names), ["layer1.0.conv", "layer2"]);
    assert_eq!(
        groups.unmatched(&[] as &[&str]),
        ["", "layer1.0", "layer1.0.conv", "fc.W", "layer2"]
    );
    assert!(LrGroups::new().unmatched(&names).is_empty());
}
