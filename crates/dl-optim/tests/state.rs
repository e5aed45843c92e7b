//! An optimizer's state exported after some steps and loaded into a fresh optimizer
//! continues exactly as the original would have; a state that does not fit is refused
//! with the optimizer left as it was.

use dl_optim::{by_name, OptimError, Optimizer, OptimizerState};
use dl_tensor::{ParamMut, Tensor};

const NAMES: [&str; 6] = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"];

/// Two parameters (a weight matrix and a bias) and a gradient that changes per step.
struct Problem {
    w: Tensor,
    b: Tensor,
}

impl Problem {
    fn new() -> Self {
        Self {
            w: Tensor::from_shape_vec(vec![2, 2], vec![1.0, -0.5, 0.25, 2.0]).unwrap(),
            b: Tensor::from_shape_vec(vec![2], vec![0.1, -0.3]).unwrap(),
        }
    }

    fn step(&mut self, opt: &mut dyn Optimizer, k: usize) {
        // gradient of sum(w^2)/2 + sum(b^2)/2 plus a step-dependent push
        let gw = self.w.mapv(|v| v + 0.1 * k as f32);
        let gb = self.b.mapv(|v| v - 0.05 * k as f32);
        opt.update(&mut [
            ParamMut {
                name: "conv1.W".into(),
                value: &mut self.w,
                grad: &gw,
            },
            ParamMut {
                name: "conv1.b".into(),
                value: &mut self.b,
                grad: &gb,
            },
        ]);
    }

    fn params(&self) -> Vec<(String, &Tensor)> {
        vec![("conv1.W".into(), &self.w), ("conv1.b".into(), &self.b)]
    }
}

#[test]
fn a_loaded_state_continues_bit_for_bit() {
    for name in NAMES {
        let mut straight = Problem::new();
        let mut opt = by_name(name, 0.05).unwrap();
        for k in 0..5 {
            straight.step(opt.as_mut(), k);
        }

        let mut resumed = Problem::new();
        let mut first = by_name(name, 0.05).unwrap();
        for k in 0..2 {
            resumed.step(first.as_mut(), k);
        }
        let state = first.state();
        let mut second = by_name(name, 0.05).unwrap();
        second.load_state(&state, &resumed.params()).unwrap();
        assert_eq!(second.state(), state, "{name}: the loaded state reads back the same");
        for k in 2..5 {
            resumed.step(second.as_mut(), k);
        }
        assert_eq!(straight.w, resumed.w, "{name}: W after 2 + 3 steps");
        assert_eq!(straight.b, resumed.b, "{name}: b after 2 + 3 steps");

        // without the state the continuation differs (except for plain SGD, which has none)
        let mut fresh = Problem::new();
        let mut f1 = by_name(name, 0.05).unwrap();
        for k in 0..2 {
            fresh.step(f1.as_mut(), k);
        }
        let mut f2 = by_name(name, 0.05).unwrap();
        for k in 2..5 {
            fresh.step(f2.as_mut(), k);
        }
        assert_eq!(name == "sgd", fresh.w == straight.w, "{name}: the state matters");
    }
}

#[test]
fn the_state_holds_each_slot_per_parameter_and_adams_step_count() {
    let mut p = Problem::new();
    let mut adam = by_name("adam", 0.01).unwrap();
    for k in 0..3 {
        p.step(adam.as_mut(), k);
    }
    let s = adam.state();
    assert_eq!(s.optimizer, "Adam");
    assert_eq!(s.steps, 3);
    let keys: Vec<&str> = s.tensors.keys().map(String::as_str).collect();
    assert_eq!(keys, ["m/conv1.W", "m/conv1.b", "v/conv1.W", "v/conv1.b"]);
    // Adam's first moment after one step of gradient g is 0.1 g
    let mut one = Problem::new();
    let mut a1 = by_name("adam", 0.01).unwrap();
    one.step(a1.as_mut(), 0);
    let m = &a1.state().tensors["m/conv1.W"];
    let want = [0.1, -0.05, 0.025, 0.2];
    for (got, want) in m.iter().zip(want) {
        assert!((got - want).abs() < 1e-7, "{got} vs {want}");
    }
    let mut mom = by_name("momentum", 0.01).unwrap();
    p.step(mom.as_mut(), 0);
    let keys: Vec<String> = mom.state().tensors.into_keys().collect();
    assert_eq!(keys, ["v/conv1.W", "v/conv1.b"]);
    assert_eq!(mom.state().steps, 0);
    for (name, slot) in [("adagrad", "h"), ("rmsprop", "h"), ("nesterov", "v")] {
        let mut o = by_name(name, 0.01).unwrap();
        p.step(o.as_mut(), 0);
        assert!(
            o.state().tensors.keys().all(|k| k.starts_with(&format!("{slot}/"))),
            "{name}"
        );
        assert_eq!(o.state().tensors.len(), 2, "{name}");
    }
    assert!(by_name("sgd", 0.1).unwrap().state().tensors.is_empty());
}

fn refused(opt: &mut dyn Optimizer, state: &OptimizerState, params: &[(String, &Tensor)], what: &str) {
    let before = opt.state();
    match opt.load_state(state, params) {
        Err(OptimError::State(msg)) => assert!(msg.contains(what), "{msg:?} should mention {what:?}"),
        other => panic!("expected a State error mentioning {what:?}, got {other:?}"),
    }
    assert_eq!(opt.state(), before, "a refused state leaves the optimizer unchanged");
}

#[test]
fn a_state_that_does_not_fit_is_refused() {
    let mut p = Problem::new();
    let mut adam = by_name("adam", 0.01).unwrap();
    p.step(adam.as_mut(), 0);
    let good = adam.state();
    let mut target = by_name("adam", 0.01).unwrap();
    p.step(target.as_mut(), 1);
    let params = p.params();

    // another optimizer's state, into one with state and into one without
    let mut mom = by_name("momentum", 0.01).unwrap();
    refused(mom.as_mut(), &good, &params, "Adam");
    let mut sgd = by_name("sgd", 0.01).unwrap();
    refused(sgd.as_mut(), &good, &params, "Adam");
    sgd.load_state(&sgd.state(), &params).unwrap();
    // an unknown slot, a key without a slot, an unknown parameter, a wrong shape
    let mut s = good.clone();
    s.tensors.insert("h/conv1.W".into(), p.w.clone());
    refused(target.as_mut(), &s, &params, "slot \"h\"");
    let mut s = good.clone();
    s.tensors.insert("conv1.W".into(), p.w.clone());
    refused(target.as_mut(), &s, &params, "slot/parameter");
    let mut s = good.clone();
    s.tensors.insert("m/fc.W".into(), p.w.clone());
    refused(target.as_mut(), &s, &params, "no parameter \"fc.W\"");
    let mut s = good.clone();
    s.tensors.insert("v/conv1.b".into(), Tensor::zeros(vec![3]));
    refused(target.as_mut(), &s, &params, "shape [3]");
}
