//! Every layer's backward against the numerical gradient: input gradient and every
//! parameter gradient, on small odd shapes, batch > 1, stride 2, pad 2.

mod common;

use common::CONV_CASES;
use dl_layers::gradcheck::{check_layer, random_input};
use dl_layers::{
    Affine, BatchNormMode, BatchNormalization, Concat, Convolution, Dropout, GlobalAveragePooling, Init, Labels, Layer,
    Pooling, Relu, Residual, Sequential, Sigmoid, SoftmaxWithLoss, Tensor,
};

/// The bound on every check's relative error. The step is 1e-2 throughout: the central
/// difference's truncation error, `eps² f''' / 6`, is zero for the piecewise-linear
/// layers (ReLU, pooling, affine, convolution: no kink within `eps` of any input) and
/// about 1e-5 for sigmoid, softmax and batch norm on unit-scale inputs; the rounding of
/// the f32 forward pass adds about `2^-24 Σ|out r| / eps`, up to 5e-4 on the largest
/// outputs here (the max pooling case), at most 4e-5 elsewhere. So 1e-3 holds every
/// correct layer, and a backward off by 1% (relative error 1e-2) fails it tenfold.
const TOL: f64 = 1e-3;

fn assert_grads<L: Layer + Clone>(what: &str, layer: &L, x: &Tensor, eps: f32) {
    let r = check_layer(layer, x, eps, 7);
    assert!(r.checked >= x.len(), "{what}: too few elements checked");
    assert!(r.max_error < TOL, "{what}: max error {} at {}", r.max_error, r.worst);
}

#[test]
fn relu_backward_matches_numerical_gradient() {
    assert_grads("Relu", &Relu::new(), &random_input(&[3, 2, 3, 5], 0.05, 1), 1e-2);
}

#[test]
fn sigmoid_backward_matches_numerical_gradient() {
    assert_grads("Sigmoid", &Sigmoid::new(), &random_input(&[4, 7], 0.0, 2), 1e-2);
}

#[test]
fn affine_backward_matches_numerical_gradient_2d_and_4d() {
    let layer = Affine::new(7, 5, Init::He, 3);
    assert_grads("Affine 2-D", &layer, &random_input(&[3, 7], 0.0, 4), 1e-2);
    let layer = Affine::new(2 * 3 * 3, 4, Init::Xavier, 5);
    assert_grads("Affine 4-D", &layer, &random_input(&[3, 2, 3, 3], 0.0, 6), 1e-2);
}

#[test]
fn affine_restores_the_input_shape_on_backward() {
    let mut layer = Affine::new(2 * 3 * 3, 4, Init::He, 5);
    let y = layer.forward(random_input(&[3, 2, 3, 3], 0.0, 6), true).unwrap();
    assert_eq!(y.shape(), &[3, 4]);
    assert_eq!(layer.backward(Tensor::ones(vec![3, 4])).shape(), &[3, 2, 3, 3]);
}

#[test]
fn convolution_backward_matches_numerical_gradient() {
    for (i, &(c, f, fh, fw, s, p, shape)) in CONV_CASES.iter().enumerate() {
        let mut layer = Convolution::new(c, f, fh, fw, s, p, Init::He, 10 + i as u64);
        layer.b.as_mut().unwrap().value = random_input(&[f], 0.0, 20 + i as u64);
        let x = random_input(&shape, 0.0, 30 + i as u64);
        assert_grads(&format!("Convolution case {i}"), &layer, &x, 1e-2);
    }
}

#[test]
fn convolution_told_that_nobody_reads_dx_keeps_its_parameter_gradients() {
    let x = random_input(&[3, 2, 6, 6], 0.0, 40);
    let dout = random_input(&[3, 4, 6, 6], 0.0, 41);
    let mut full = Convolution::new(2, 4, 3, 3, 1, 1, Init::He, 42);
    let mut lean = full.clone();
    lean.set_input_gradient_needed(false);
    full.forward(x.clone(), true).unwrap();
    lean.forward(x, true).unwrap();
    let dx_full = full.backward(dout.clone());
    let dx_lean = lean.backward(dout);
    assert_eq!(full.w.grad, lean.w.grad);
    assert_eq!(full.b, lean.b);
    assert!(dx_full.iter().any(|v| *v != 0.0));
    assert!(dx_lean.iter().all(|v| *v == 0.0));
    assert_eq!(dx_lean.shape(), dx_full.shape());
}

#[test]
fn pooling_backward_matches_numerical_gradient() {
    // Values on a grid 0.1 apart: no two values in a window are within 2*eps.
    let grid = |shape: &[usize], seed: u64| {
        let mut x = random_input(shape, 0.0, seed);
        let n = x.len();
        for (k, v) in x.iter_mut().enumerate() {
            *v = ((k * 37 + seed as usize) % n) as f32 * 0.1 - 1.0;
        }
        x
    };
    assert_grads(
        "Pooling max 2x2/2",
        &Pooling::max(2, 2, 2, 0),
        &grid(&[2, 3, 6, 6], 1),
        1e-3,
    );
    assert_grads(
        "Pooling max 3x3/2 odd",
        &Pooling::max(3, 3, 2, 0),
        &grid(&[2, 2, 7, 5], 2),
        1e-3,
    );
    assert_grads(
        "Pooling max 3x3/1 pad1 (GoogLeNet's pool branches)",
        &Pooling::max(3, 3, 1, 1),
        &grid(&[2, 2, 5, 6], 4),
        1e-3,
    );
    assert_grads(
        "Pooling max 3x3/2 pad1",
        &Pooling::max(3, 3, 2, 1),
        &grid(&[1, 2, 5, 5], 3),
        1e-3,
    );
    assert_grads(
        "Pooling avg 2x2/2",
        &Pooling::average(2, 2, 2, 0),
        &grid(&[2, 2, 5, 5], 4),
        1e-2,
    );
    // even sizes: whole 2x2 windows, which max pooling's backward takes on its own path
    assert_grads(
        "Pooling avg 2x2/2 even",
        &Pooling::average(2, 2, 2, 0),
        &grid(&[2, 2, 4, 6], 6),
        1e-2,
    );
    assert_grads(
        "Pooling avg 3x3/1 pad2",
        &Pooling::average(3, 3, 1, 2),
        &grid(&[1, 2, 4, 5], 5),
        1e-2,
    );
}

#[test]
fn dropout_backward_matches_numerical_gradient_in_both_forms() {
    assert_grads("Dropout", &Dropout::new(0.5, 3), &random_input(&[4, 6], 0.0, 9), 1e-2);
    assert_grads(
        "Dropout inverted",
        &Dropout::inverted(0.3, 3),
        &random_input(&[2, 3, 2, 2], 0.0, 9),
        1e-2,
    );
}

#[test]
fn batch_normalization_backward_matches_numerical_gradient_in_train_mode() {
    let mut bn = BatchNormalization::new(5, BatchNormMode::PerActivation);
    bn.gamma.value = random_input(&[5], 0.2, 11);
    bn.beta.value = random_input(&[5], 0.0, 12);
    assert_grads("BatchNormalization 2-D", &bn, &random_input(&[6, 5], 0.0, 13), 1e-2);

    let mut bn = BatchNormalization::new(2 * 3 * 3, BatchNormMode::PerActivation);
    bn.gamma.value = random_input(&[18], 0.2, 14);
    assert_grads(
        "BatchNormalization flattened 4-D",
        &bn,
        &random_input(&[4, 2, 3, 3], 0.0, 15),
        1e-2,
    );

    let mut bn = BatchNormalization::new(3, BatchNormMode::PerChannel);
    bn.gamma.value = random_input(&[3], 0.2, 16);
    bn.beta.value = random_input(&[3], 0.0, 17);
    assert_grads(
        "BatchNormalization per channel",
        &bn,
        &random_input(&[3, 3, 4, 3], 0.0, 18),
        1e-2,
    );
}

#[test]
fn a_sequential_block_backpropagates_through_all_its_layers() {
    let net = Sequential::new()
        .with(Convolution::new(2, 3, 3, 3, 1, 1, Init::He, 1))
        .with(BatchNormalization::new(3, BatchNormMode::PerChannel))
        .with(Relu::new())
        .with(Pooling::max(2, 2, 2, 0))
        .with(Affine::new(3 * 2 * 2, 4, Init::He, 2));
    let x = random_input(&[2, 2, 4, 4], 0.0, 3);
    // ReLU and max-pool kinks make finite differences fragile: use a small step.
    let r = check_layer(&net, &x, 1e-3, 7);
    assert!(r.max_error < TOL, "max error {} at {}", r.max_error, r.worst);
    assert_eq!(net.params().len(), 2 + 2 + 2);
}

#[test]
fn batch_normalization_with_torchvision_settings_and_frozen_statistics_matches_numerical_gradient() {
    let mut bn = BatchNormalization::torchvision(3);
    bn.gamma.value = random_input(&[3], 0.2, 31);
    bn.beta.value = random_input(&[3], 0.0, 32);
    let x = random_input(&[2, 3, 3, 4], 0.0, 33);
    assert_grads("BatchNormalization torchvision", &bn, &x, 1e-2);
    // frozen: the running statistics are constants, and the gradient is gamma / std
    bn.running_mean = random_input(&[3], 0.0, 34);
    bn.running_var = random_input(&[3], 0.5, 35).mapv(f32::abs);
    bn.set_frozen(true);
    assert_grads("BatchNormalization frozen", &bn, &x, 1e-2);
}

#[test]
fn global_average_pooling_backward_matches_numerical_gradient() {
    let x = random_input(&[3, 4, 3, 5], 0.0, 36);
    assert_grads("GlobalAveragePooling", &GlobalAveragePooling::new(), &x, 1e-2);
    let mut gap = GlobalAveragePooling::new();
    assert_eq!(gap.name(), "GlobalAveragePooling");
    let y = gap.forward(x.clone(), false).unwrap();
    assert_eq!(y.shape(), &[3, 4]);
    let mean: f32 = x.slice(ndarray::s![1, 2, .., ..]).iter().sum::<f32>() / 15.0;
    assert!((y[[1, 2]] - mean).abs() < 1e-6);
    for bad in [&[3, 4, 5][..], &[3, 4, 0, 5], &[3, 4, 5, 0]] {
        assert!(gap.output_shape(bad).is_err(), "{bad:?}");
    }
}

/// `conv - bn - relu - conv - bn`, ResNet's basic block body.
fn basic_body(c_in: usize, c_out: usize, stride: usize, seed: u64) -> Sequential {
    let bn = |c, s| {
        let mut bn = BatchNormalization::torchvision(c);
        bn.gamma.value = random_input(&[c], 0.3, s);
        bn.beta.value = random_input(&[c], 0.0, s + 1);
        bn
    };
    Sequential::new()
        .with_named(
            "conv1",
            Convolution::new(c_in, c_out, 3, 3, stride, 1, Init::He, seed).without_bias(),
        )
        .with_named("bn1", bn(c_out, seed + 1))
        .with_named("relu", Relu::new())
        .with_named(
            "conv2",
            Convolution::new(c_out, c_out, 3, 3, 1, 1, Init::He, seed + 3).without_bias(),
        )
        .with_named("bn2", bn(c_out, seed + 4))
}

#[test]
fn residual_blocks_backpropagate_through_body_and_shortcut() {
    // Looser than TOL (5e-2): the ReLUs inside the body and after the add see
    // activations that no input margin keeps away from their kink, and a step across a
    // kink is wrong by up to its share of the sum (3e-2 seen at conv1.W). The block's
    // backward is held tighter elsewhere: ResNet's every gradient against PyTorch's in
    // f64 to 1e-4 (`dl-models/tests/golden.rs`).
    // identity shortcut
    let block = Residual::new(basic_body(3, 3, 1, 40), None);
    let x = random_input(&[2, 3, 4, 4], 0.0, 41);
    let r = check_layer(&block, &x, 1e-3, 7);
    assert!(r.max_error < 5e-2, "identity: max error {} at {}", r.max_error, r.worst);
    // projection: 1x1 stride-2 convolution and batch norm, the body halving the size
    let shortcut = Sequential::new()
        .with(Convolution::new(2, 4, 1, 1, 2, 0, Init::He, 42).without_bias())
        .with(BatchNormalization::torchvision(4));
    let block = Residual::new(basic_body(2, 4, 2, 43), Some(shortcut));
    let x = random_input(&[2, 2, 6, 6], 0.0, 44);
    let r = check_layer(&block, &x, 1e-3, 7);
    assert!(
        r.max_error < 5e-2,
        "projection: max error {} at {}",
        r.max_error,
        r.worst
    );
    let names: Vec<String> = block.params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "conv1.W",
            "bn1.gamma",
            "bn1.beta",
            "conv2.W",
            "bn2.gamma",
            "bn2.beta",
            "downsample.0.W",
            "downsample.1.gamma",
            "downsample.1.beta"
        ]
    );
    assert_eq!(block.name(), "Residual");
    assert_eq!(block.body().len(), 5);
    assert_eq!(block.shortcut().map(|s| s.len()), Some(2));
    assert!(Residual::new(basic_body(3, 3, 1, 40), None).shortcut().is_none());
    // a body that changes the shape without a projection is an error, not a panic
    let mut bad = Residual::new(basic_body(2, 4, 2, 45), None);
    assert!(bad.forward(x.clone(), false).is_err());
    assert!(bad.output_shape(x.shape()).is_err());
}

#[test]
fn a_residual_block_computes_relu_of_body_plus_shortcut_in_both_modes() {
    let body = Sequential::new()
        .with(Convolution::new(2, 2, 3, 3, 1, 1, Init::He, 70))
        .with(Relu::new())
        .with(Convolution::new(2, 2, 3, 3, 1, 1, Init::He, 71));
    let shortcut = Sequential::new().with(Convolution::new(2, 2, 1, 1, 1, 0, Init::He, 72));
    let x = random_input(&[2, 2, 5, 5], 0.0, 73);
    for sc in [None, Some(shortcut)] {
        let mut block = Residual::new(body.clone(), sc.clone());
        let y_body = body.clone().forward(x.clone(), false).unwrap();
        let y_short = match sc {
            Some(mut s) => s.forward(x.clone(), false).unwrap(),
            None => x.clone(),
        };
        let want = (&y_body + &y_short).mapv(|v| v.max(0.0));
        assert!(want.iter().any(|&v| v == 0.0) && want.iter().any(|&v| v > 0.0));
        for train in [false, true] {
            let y = block.forward(x.clone(), train).unwrap();
            assert_eq!(y.shape(), want.shape());
            let err = y.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-6, "train {train}: {err}");
        }
    }
}

#[test]
fn concat_backpropagates_through_every_branch() {
    let module = Concat::new()
        .with_branch(
            "branch1",
            Sequential::new().with(Convolution::new(3, 2, 1, 1, 1, 0, Init::He, 50)),
        )
        .with_branch(
            "branch2",
            Sequential::new()
                .with(Convolution::new(3, 2, 1, 1, 1, 0, Init::He, 51))
                .with(Convolution::new(2, 3, 3, 3, 1, 1, Init::He, 52)),
        )
        .with_branch(
            "branch3",
            Sequential::new()
                .with(Pooling::max(3, 3, 1, 1))
                .with(Convolution::new(3, 1, 1, 1, 1, 0, Init::He, 53)),
        );
    // values on a grid, so no max-pool window holds two values within 2 eps
    let mut x = random_input(&[2, 3, 4, 5], 0.0, 54);
    let n = x.len();
    for (k, v) in x.iter_mut().enumerate() {
        *v = ((k * 37) % n) as f32 * 0.02 - 1.0;
    }
    assert_eq!(module.output_shape(x.shape()).unwrap(), [2, 6, 4, 5]);
    let r = check_layer(&module, &x, 1e-3, 7);
    assert!(r.max_error < TOL, "max error {} at {}", r.max_error, r.worst);
    let names: Vec<String> = module.params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "branch1.0.W",
            "branch1.0.b",
            "branch2.0.W",
            "branch2.0.b",
            "branch2.1.W",
            "branch2.1.b",
            "branch3.1.W",
            "branch3.1.b"
        ]
    );
    // the output is the branches' outputs side by side, in order
    let y = module.clone().forward(x.clone(), false).unwrap();
    let mut at = 0;
    for b in module.branches() {
        let part = b.clone().forward(x.clone(), false).unwrap();
        let c = part.shape()[1];
        assert_eq!(y.slice(ndarray::s![.., at..at + c, .., ..]).into_dyn(), part.view());
        at += c;
    }
    assert_eq!(module.name(), "Concat");
    assert_eq!(module.branches().len(), 3);
    assert_eq!(module.branches()[1].len(), 2);
    // branches whose outputs differ in size, or in rank, are an error
    let mut bad = Concat::new()
        .with_branch("a", Sequential::new().with(Pooling::max(2, 2, 2, 0)))
        .with_branch("b", Sequential::new().with(Relu::new()));
    assert!(bad.forward(x.clone(), false).is_err());
    assert!(bad.output_shape(x.shape()).is_err());
    let mut ranks = Concat::new()
        .with_branch("a", Sequential::new().with(GlobalAveragePooling::new()))
        .with_branch("b", Sequential::new().with(Relu::new()));
    assert!(ranks.forward(x.clone(), false).is_err());
    assert!(ranks.output_shape(x.shape()).is_err());
    let mut flat = Concat::new().with_branch("a", Sequential::new().with(GlobalAveragePooling::new()));
    assert!(flat.forward(x.clone(), false).is_ok(), "(N, C) outputs join on C");
    assert_eq!(flat.output_shape(x.shape()).unwrap(), [x.shape()[0], x.shape()[1]]);
    // a branch that keeps every size but the batch's (a layer of the user's) does not join
    #[derive(Clone)]
    struct FirstImage;
    impl Layer for FirstImage {
        fn name(&self) -> &str {
            "FirstImage"
        }
        fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, dl_layers::LayerError> {
            Ok(x.slice_axis(ndarray::Axis(0), ndarray::Slice::from(..1)).to_owned())
        }
        fn backward(&mut self, dout: Tensor) -> Tensor {
            dout
        }
        fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, dl_layers::LayerError> {
            Ok([&[1], &input[1..]].concat())
        }
        fn clone_box(&self) -> Box<dyn Layer> {
            Box::new(self.clone())
        }
    }
    let mut batches = Concat::new()
        .with_branch("a", Sequential::new().with(FirstImage))
        .with_branch("b", Sequential::new().with(Relu::new()));
    assert!(x.shape()[0] > 1);
    assert!(batches.forward(x.clone(), false).is_err());
    assert!(batches.output_shape(x.shape()).is_err());
    assert!(Concat::new().forward(x.clone(), false).is_err());
    assert!(Concat::new().output_shape(x.shape()).is_err());
}

#[test]
fn a_convolution_without_bias_matches_numerical_gradient() {
    let layer = Convolution::new(2, 3, 3, 3, 2, 1, Init::He, 60).without_bias();
    assert_grads(
        "Convolution without bias",
        &layer,
        &random_input(&[2, 2, 5, 5], 0.0, 61),
        1e-2,
    );
}

#[test]
fn softmax_with_loss_backward_matches_numerical_gradient() {
    let x = random_input(&[4, 5], 0.0, 21);
    let labels = [0usize, 4, 2, 2];
    let mut onehot = ndarray::Array2::<f32>::zeros((4, 5));
    for (i, &c) in labels.iter().enumerate() {
        onehot[[i, c]] = 1.0;
    }
    for t in [Labels::Indices(&labels), Labels::OneHot(onehot.view())] {
        let mut layer = SoftmaxWithLoss::new();
        layer.forward(&x, t).unwrap();
        let dx = layer.backward();
        let eps = 1e-3f32;
        for i in 0..x.len() {
            let mut xp = x.clone();
            xp.as_slice_mut().unwrap()[i] += eps;
            let mut xm = x.clone();
            xm.as_slice_mut().unwrap()[i] -= eps;
            let lp = SoftmaxWithLoss::new().forward(&xp, t).unwrap();
            let lm = SoftmaxWithLoss::new().forward(&xm, t).unwrap();
            let num = (lp - lm) / (2.0 * eps);
            let a = dx.as_slice().unwrap()[i];
            assert!((a - num).abs() < 2e-3, "element {i}: analytic {a}, numerical {num}");
        }
    }
}

#[test]
fn gradcheck_detects_a_wrong_backward() {
    // A layer whose backward is off by a factor must fail the check, or the check proves
    // nothing.
    #[derive(Clone)]
    struct Wrong(Relu, f32);
    impl Layer for Wrong {
        fn name(&self) -> &str {
            "Wrong"
        }
        fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, dl_layers::LayerError> {
            self.0.forward(x, train)
        }
        fn backward(&mut self, dout: Tensor) -> Tensor {
            self.0.backward(dout) * self.1
        }
        fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, dl_layers::LayerError> {
            Ok(input.to_vec())
        }
        fn clone_box(&self) -> Box<dyn Layer> {
            Box::new(self.clone())
        }
    }
    let x = random_input(&[2, 3], 0.1, 1);
    // off by 10% and by 1%: each fails the bound every layer is held to; right, it holds
    for factor in [1.1, 1.01] {
        let r = check_layer(&Wrong(Relu::new(), factor), &x, 1e-2, 7);
        assert!(r.max_error > TOL, "{factor}: {r:?}");
    }
    let r = check_layer(&Wrong(Relu::new(), 1.0), &x, 1e-2, 7);
    assert!(r.max_error < TOL, "{r:?}");
}

/// The check reports the error relative to the larger magnitude, and the first place
/// where it is largest.
#[test]
fn gradcheck_reports_the_relative_error_and_where_it_is_worst() {
    // y = 100 x, whose backward is 110 dout at element `wrong_at`
    #[derive(Clone)]
    struct Scaled(Option<usize>);
    impl Layer for Scaled {
        fn name(&self) -> &str {
            "Scaled"
        }
        fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, dl_layers::LayerError> {
            Ok(x * 100.0)
        }
        fn backward(&mut self, dout: Tensor) -> Tensor {
            let mut dx = dout * 100.0;
            if let Some(i) = self.0 {
                dx.as_slice_mut().unwrap()[i] *= 1.1;
            }
            dx
        }
        fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, dl_layers::LayerError> {
            Ok(input.to_vec())
        }
        fn clone_box(&self) -> Box<dyn Layer> {
            Box::new(self.clone())
        }
    }
    let x = random_input(&[2, 3], 0.1, 1);
    // the test inputs keep `margin` away from 0, on both sides
    let many = random_input(&[1000], 0.25, 2);
    assert!(many.iter().all(|v| (0.25..1.0).contains(&v.abs())));
    assert!(many.iter().any(|&v| v < 0.0) && many.iter().any(|&v| v > 0.0));
    let right = check_layer(&Scaled(None), &x, 1e-2, 7);
    assert_eq!(right.checked, 6);
    assert!(right.max_error < 1e-4, "{right:?}");
    let wrong = check_layer(&Scaled(Some(3)), &x, 1e-2, 7);
    assert_eq!(wrong.worst, "x[3]");
    // |110 g - 100 g| / |110 g|, the gradient g being above 1/110 here
    assert!((wrong.max_error - 1.0 / 11.0).abs() < 1e-4, "{wrong:?}");
    // a layer with no gradient at all: every error is 0, the first place is reported
    let zero = check_layer(&(Relu::new()), &(x.mapv(|v| -v.abs())), 1e-2, 7);
    assert_eq!((zero.max_error, zero.worst.as_str()), (0.0, "x[0]"));
}
