//! Frozen layers (`set_trainable(false)`): the gradient passes through them unchanged,
//! they compute none of their own, a frozen batch norm keeps its statistics, and no
//! layer below the lowest trainable one runs its backward at all.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use dl_layers::gradcheck::{check_layer, random_input};
use dl_layers::{
    Affine, BatchNormMode, BatchNormalization, Concat, Convolution, Init, Layer, LayerError, Param, Pooling, Relu,
    Residual, Sequential, Tensor,
};

/// conv - bn - relu - conv - bn - relu - pool - affine, with running statistics that
/// are not the defaults.
fn chain() -> Sequential {
    let mut bn1 = BatchNormalization::new(3, BatchNormMode::PerChannel);
    let mut bn2 = BatchNormalization::new(3, BatchNormMode::PerChannel);
    for (k, bn) in [&mut bn1, &mut bn2].into_iter().enumerate() {
        bn.gamma.value = random_input(&[3], 0.2, 40 + k as u64);
        bn.running_mean = random_input(&[3], 0.0, 50 + k as u64);
        bn.running_var = random_input(&[3], 0.5, 60 + k as u64).mapv(f32::abs);
    }
    Sequential::new()
        .with(Convolution::new(2, 3, 3, 3, 1, 1, Init::He, 1))
        .with(bn1)
        .with(Relu::new())
        .with(Convolution::new(3, 3, 3, 3, 1, 1, Init::He, 2))
        .with(bn2)
        .with(Relu::new())
        .with(Pooling::max(2, 2, 2, 0))
        .with(Affine::new(3 * 2 * 2, 4, Init::He, 3))
}

/// Every parameter gradient set to `v`.
fn fill_grads(net: &mut Sequential, v: f32) {
    net.params_mut().into_iter().for_each(|(_, p)| p.grad.fill(v));
}

fn grads(net: &Sequential) -> Vec<(String, Tensor)> {
    net.params().into_iter().map(|(n, p)| (n, p.grad.clone())).collect()
}

#[test]
fn a_frozen_layer_passes_the_gradient_through_and_computes_none_of_its_own() {
    let x = random_input(&[2, 2, 4, 4], 0.0, 3);
    let dout = random_input(&[2, 4], 0.0, 4);
    // the reference: the same forward (the second batch norm on its running
    // statistics), every parameter learning; checked against the numerical gradient
    let mut reference = {
        let mut c = chain();
        let mut bn = BatchNormalization::new(3, BatchNormMode::PerChannel);
        bn.gamma.value = random_input(&[3], 0.2, 41);
        bn.running_mean = random_input(&[3], 0.0, 51);
        bn.running_var = random_input(&[3], 0.5, 61).mapv(f32::abs);
        bn.set_frozen(true);
        c.layers_mut()[4] = Box::new(bn);
        c
    };
    let r = check_layer(&reference, &x, 1e-3, 7);
    assert!(
        r.max_error < 1e-3,
        "reference: max error {} at {}",
        r.max_error,
        r.worst
    );

    // the second convolution and batch norm frozen
    let mut frozen = chain();
    frozen.child_mut("3").unwrap().set_trainable(false);
    frozen.child_mut("4").unwrap().set_trainable(false);
    assert!(frozen.is_trainable());
    fill_grads(&mut frozen, 7.0);
    fill_grads(&mut reference, 7.0);
    let mean_before = frozen.buffers()[2].1.clone();
    let y = frozen.forward(x.clone(), true).unwrap();
    assert_eq!(y, reference.forward(x.clone(), true).unwrap());
    let dx = frozen.backward(dout.clone());
    assert_eq!(
        dx,
        reference.backward(dout.clone()),
        "dx passes through the frozen layers"
    );
    assert_eq!(
        frozen.buffers()[2].1,
        &mean_before,
        "the frozen batch norm keeps its statistics"
    );
    for ((name, mine), (_, theirs)) in grads(&frozen).into_iter().zip(grads(&reference)) {
        if name.starts_with("3.") || name.starts_with("4.") {
            assert!(
                mine.iter().all(|&v| v == 7.0),
                "{name}: a frozen gradient is left alone"
            );
            assert!(theirs.iter().any(|&v| v != 7.0), "{name}");
        } else {
            assert_eq!(mine, theirs, "{name}");
        }
    }
    let names: Vec<String> = frozen.trainable_params_mut().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.W", "0.b", "1.gamma", "1.beta", "7.W", "7.b"]);
    // and released again: every parameter learns
    frozen.set_trainable(true);
    assert_eq!(frozen.trainable_params_mut().len(), frozen.params().len());
}

/// A layer that says whether its backward ran and what it was told.
#[derive(Clone)]
struct Spy {
    backwards: Arc<AtomicUsize>,
    told_needed: Arc<AtomicBool>,
    trainable: bool,
    p: Param,
}

impl Layer for Spy {
    fn name(&self) -> &str {
        "Spy"
    }
    fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, LayerError> {
        Ok(x)
    }
    fn backward(&mut self, dout: Tensor) -> Tensor {
        self.backwards.fetch_add(1, Ordering::SeqCst);
        dout
    }
    fn params(&self) -> Vec<(String, &Param)> {
        vec![("p".into(), &self.p)]
    }
    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        vec![("p".into(), &mut self.p)]
    }
    fn set_input_gradient_needed(&mut self, needed: bool) {
        self.told_needed.store(needed, Ordering::SeqCst);
    }
    fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
    }
    fn is_trainable(&self) -> bool {
        self.trainable
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }
    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}

#[test]
fn nothing_below_the_lowest_trainable_layer_runs_its_backward() {
    let backwards = Arc::new(AtomicUsize::new(0));
    let told = Arc::new(AtomicBool::new(true));
    let spy = Spy {
        backwards: backwards.clone(),
        told_needed: told.clone(),
        trainable: false,
        p: Param::new(Tensor::zeros(vec![1])),
    };
    let mut net = Sequential::new()
        .with(spy)
        .with(Convolution::new(2, 3, 3, 3, 1, 1, Init::He, 1))
        .with(Relu::new())
        .with(Affine::new(3 * 4 * 4, 2, Init::He, 2));
    net.child_mut("1").unwrap().set_trainable(false);
    // as a network's root: nobody reads the input gradient
    net.set_input_gradient_needed(false);
    assert!(!told.load(Ordering::SeqCst));
    let x = random_input(&[2, 2, 4, 4], 0.0, 5);
    let step = |net: &mut Sequential| {
        fill_grads(net, 7.0);
        net.forward(x.clone(), true).unwrap();
        net.backward(random_input(&[2, 2], 0.0, 6))
    };
    let dx = step(&mut net);
    assert_eq!(dx.shape(), x.shape());
    assert!(dx.iter().all(|&v| v == 0.0));
    assert_eq!(
        backwards.load(Ordering::SeqCst),
        0,
        "the backward stops above the frozen convolution"
    );
    let g = grads(&net);
    assert!(
        g[1].1.iter().all(|&v| v == 7.0),
        "the frozen convolution computed no dW"
    );
    assert!(g[3].1.iter().any(|&v| v != 7.0), "the Affine layer learns");
    // the convolution learns again: it runs, but the spy below it still does not
    net.child_mut("1").unwrap().set_trainable(true);
    net.set_input_gradient_needed(false);
    step(&mut net);
    assert_eq!(backwards.load(Ordering::SeqCst), 0);
    assert!(grads(&net)[1].1.iter().any(|&v| v != 7.0));
    // the spy learns: it runs (though nobody reads the dx it returns)
    net.child_mut("0").unwrap().set_trainable(true);
    net.set_input_gradient_needed(false);
    step(&mut net);
    assert_eq!(backwards.load(Ordering::SeqCst), 1);
    assert!(!told.load(Ordering::SeqCst));
    // a chain whose input gradient is read runs every backward
    net.set_trainable(false);
    net.set_input_gradient_needed(true);
    assert!(told.load(Ordering::SeqCst));
    let dx = step(&mut net);
    assert_eq!(backwards.load(Ordering::SeqCst), 2);
    assert!(dx.iter().any(|&v| v != 0.0));
    assert!(
        grads(&net).iter().all(|(_, g)| g.iter().all(|&v| v == 7.0)),
        "all frozen"
    );
    assert!(net.child_mut("9").is_none());
}

fn trainable_names(l: &mut dyn Layer) -> Vec<String> {
    l.trainable_params_mut().into_iter().map(|(n, _)| n).collect()
}

#[test]
fn layers_without_parameters_never_count_as_trainable() {
    assert!(!Relu::new().is_trainable());
    assert!(!Pooling::max(2, 2, 2, 0).is_trainable());
    let mut chain = Sequential::new().with(Relu::new()).with(Pooling::max(2, 2, 2, 0));
    assert!(!chain.is_trainable());
    chain.set_trainable(true);
    assert!(!chain.is_trainable());
    // nor does a frozen Affine layer; a frozen one leaves its gradients alone
    let mut fc = Affine::new(3, 2, Init::He, 1);
    assert!(fc.is_trainable());
    fc.set_trainable(false);
    assert!(!fc.is_trainable());
    assert!(trainable_names(&mut fc).is_empty());
    fc.w.grad.fill(7.0);
    fc.b.grad.fill(7.0);
    let x = random_input(&[4, 3], 0.0, 2);
    fc.forward(x.clone(), true).unwrap();
    let dx = fc.backward(random_input(&[4, 2], 0.0, 3));
    assert!(fc.w.grad.iter().chain(fc.b.grad.iter()).all(|&v| v == 7.0));
    assert!(dx.iter().any(|&v| v != 0.0));
}

#[test]
fn an_affine_layer_told_that_nobody_reads_dx_keeps_its_parameter_gradients() {
    let mut a = Affine::new(5, 3, Init::He, 4);
    let mut b = a.clone();
    b.set_input_gradient_needed(false);
    let x = random_input(&[2, 5], 0.0, 5);
    let dout = random_input(&[2, 3], 0.0, 6);
    a.forward(x.clone(), true).unwrap();
    b.forward(x, true).unwrap();
    let (da, db) = (a.backward(dout.clone()), b.backward(dout));
    assert!(da.iter().any(|&v| v != 0.0));
    assert!(db.iter().all(|&v| v == 0.0));
    assert_eq!(db.shape(), da.shape());
    assert_eq!(a.w.grad, b.w.grad);
    assert_eq!(a.b.grad, b.b.grad);
}

fn body(c_in: usize, c_out: usize, seed: u64) -> Sequential {
    Sequential::new()
        .with_named("conv1", Convolution::new(c_in, c_out, 3, 3, 1, 1, Init::He, seed))
        .with_named("bn1", BatchNormalization::torchvision(c_out))
        .with_named("relu", Relu::new())
        .with_named("conv2", Convolution::new(c_out, c_out, 3, 3, 1, 1, Init::He, seed + 1))
}

#[test]
fn a_residual_block_freezes_by_path_and_passes_what_it_is_told() {
    let shortcut = Sequential::new().with(Convolution::new(2, 3, 1, 1, 1, 0, Init::He, 9));
    let mut block = Residual::new(body(2, 3, 7), Some(shortcut));
    let all = trainable_names(&mut block);
    assert_eq!(all.len(), 8);
    // the projection by its name, a body layer by its own
    block.child_mut("downsample").unwrap().set_trainable(false);
    assert_eq!(trainable_names(&mut block), all[..6]);
    block.child_mut("conv2").unwrap().set_trainable(false);
    assert_eq!(
        trainable_names(&mut block),
        ["conv1.W", "conv1.b", "bn1.gamma", "bn1.beta"]
    );
    assert!(block.child_mut("conv3").is_none());
    block.set_trainable(false);
    assert!(!block.is_trainable());
    assert!(trainable_names(&mut block).is_empty());
    // one trainable part, body or shortcut, makes the block trainable
    block.child_mut("downsample").unwrap().set_trainable(true);
    assert!(block.is_trainable());
    assert_eq!(trainable_names(&mut block), ["downsample.0.W", "downsample.0.b"]);
    block.child_mut("downsample").unwrap().set_trainable(false);
    block.child_mut("conv1").unwrap().set_trainable(true);
    assert!(block.is_trainable());
    block.set_trainable(true);
    assert_eq!(trainable_names(&mut block), all);
    // told that nobody reads its dx, neither path computes one
    let x = random_input(&[2, 2, 4, 4], 0.0, 10);
    let dout = random_input(&[2, 3, 4, 4], 0.0, 11);
    block.forward(x.clone(), true).unwrap();
    assert!(block.backward(dout.clone()).iter().any(|&v| v != 0.0));
    block.set_input_gradient_needed(false);
    block.forward(x, true).unwrap();
    assert!(block.backward(dout).iter().all(|&v| v == 0.0));
    // an identity shortcut has no name to reach
    let mut plain = Residual::new(body(3, 3, 12), None);
    assert!(plain.child_mut("downsample").is_none());
}

#[test]
fn a_concat_freezes_its_branches_by_name() {
    let mut module = Concat::new()
        .with_branch(
            "a",
            Sequential::new().with(Convolution::new(2, 2, 1, 1, 1, 0, Init::He, 1)),
        )
        .with_branch(
            "b",
            Sequential::new().with(Convolution::new(2, 1, 3, 3, 1, 1, Init::He, 2)),
        );
    assert!(module.is_trainable());
    module.set_trainable(false);
    assert!(!module.is_trainable());
    assert!(trainable_names(&mut module).is_empty());
    module.child_mut("b").unwrap().set_trainable(true);
    assert!(module.is_trainable());
    assert_eq!(trainable_names(&mut module), ["b.0.W", "b.0.b"]);
    module.child_mut("a").unwrap().set_trainable(true);
    module.child_mut("b").unwrap().set_trainable(false);
    assert_eq!(trainable_names(&mut module), ["a.0.W", "a.0.b"]);
    assert!(module.child_mut("c").is_none());
}

/// Every layer with parameters answers `is_trainable` as told, and with its input
/// gradient unread returns zeros of the input's shape where it would return a gradient.
#[test]
fn every_layer_with_parameters_is_frozen_and_spared_its_input_gradient_as_told() {
    use dl_layers::{BinaryAffine, BinaryConvolution};
    let conv = || Convolution::new(2, 3, 3, 3, 1, 1, Init::He, 1);
    let layers: Vec<(Box<dyn Layer>, bool)> = vec![
        (Box::new(Affine::new(32, 4, Init::He, 2)), true),
        (Box::new(conv()), true),
        (Box::new(BinaryAffine::new(32, 4, Init::Xavier, 3)), true),
        (
            Box::new(BinaryConvolution::new(2, 3, 3, 3, 1, 1, Init::Xavier, 4)),
            true,
        ),
        (Box::new(BatchNormalization::new(2, BatchNormMode::PerChannel)), false),
        (Box::new(Sequential::new().with(conv())), true),
        (
            Box::new(Concat::new().with_branch("a", Sequential::new().with(conv()))),
            true,
        ),
    ];
    let x = random_input(&[2, 2, 4, 4], 0.0, 5);
    for (layer, spares) in layers {
        let name = layer.name().to_string();
        let mut frozen = layer.clone_box();
        assert!(frozen.is_trainable(), "{name}");
        frozen.set_trainable(false);
        assert!(!frozen.is_trainable(), "{name}");
        frozen.set_trainable(true);
        assert!(frozen.is_trainable(), "{name}");
        let dx = |needed: bool| {
            let mut l = layer.clone_box();
            l.set_input_gradient_needed(needed);
            let y = l.forward(x.clone(), true).unwrap();
            l.backward(random_input(y.shape(), 0.0, 6))
        };
        let (read, unread) = (dx(true), dx(false));
        assert_eq!(unread.shape(), x.shape(), "{name}");
        assert!(read.iter().any(|&v| v != 0.0), "{name}");
        assert_eq!(unread.iter().all(|&v| v == 0.0), spares, "{name}");
    }
    let mut block = Residual::new(
        Sequential::new().with(Convolution::new(2, 2, 3, 3, 1, 1, Init::He, 7)),
        None,
    );
    block.set_trainable(false);
    assert!(!block.is_trainable());
}
