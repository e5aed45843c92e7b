//! The binarized layers: the sign and its straight-through estimator, and the binarized
//! convolution and affine layers against the float layers with the signs as weights;
//! the input gradients (where a derivative exists) against central differences.

use dl_layers::gradcheck::{check_input, random_input};
use dl_layers::{
    sign, Affine, BinaryAffine, BinaryConvolution, Concat, ConvAlgo, Convolution, Init, Layer, Op, Residual,
    Sequential, Sign, Tensor,
};

#[test]
fn sign_is_plus_one_from_zero_up_and_minus_one_below() {
    assert_eq!(
        [-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0].map(sign),
        [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    );
    let mut layer = Sign::new();
    let x = Tensor::from_shape_vec(vec![2, 3], vec![-1.5, -1.0, -0.2, 0.0, 1.0, 2.5]).unwrap();
    for train in [false, true] {
        let y = layer.forward(x.clone(), train).unwrap();
        assert_eq!(y.as_slice().unwrap(), &[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]);
    }
    assert_eq!(layer.inference_op().unwrap(), Op::Sign);
}

#[test]
fn the_straight_through_estimator_passes_the_gradient_where_the_input_is_within_one() {
    let mut layer = Sign::new();
    let x = Tensor::from_shape_vec(vec![1, 7], vec![-1.5, -1.0, -0.99, 0.0, 0.5, 1.0, 1.01]).unwrap();
    layer.forward(x, true).unwrap();
    let dout = Tensor::from_shape_vec(vec![1, 7], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).unwrap();
    // the gradient of htanh(x) = clip(x, -1, 1): 1 on [-1, 1], 0 outside
    let dx = layer.backward(dout);
    assert_eq!(dx.as_slice().unwrap(), &[0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]);
}

/// Latent weights of both signs, some beyond [-1, 1].
fn latent(shape: &[usize], seed: u64) -> Tensor {
    random_input(shape, 0.05, seed).mapv(|v| v * 1.6)
}

#[test]
fn a_binary_convolution_is_the_convolution_with_the_signs_and_passes_their_gradient_through() {
    let w = latent(&[5, 3, 3, 3], 1);
    let mut binary = BinaryConvolution::from_params(w.clone(), 2, 1);
    // the constructor clips the latent weights to [-1, 1]
    assert_eq!(binary.w.value, w.mapv(|v| v.clamp(-1.0, 1.0)));
    let signs = w.mapv(sign);
    let mut float = Convolution::from_params(signs.clone(), Tensor::zeros(vec![5]), 2, 1).without_bias();
    float.set_algo(ConvAlgo::Lowered);
    let x = random_input(&[2, 3, 7, 6], 0.0, 2);
    for round in 0..2 {
        // the same forward in training and evaluation
        assert_eq!(
            binary.forward(x.clone(), false).unwrap(),
            float.forward(x.clone(), false).unwrap()
        );
        let y = binary.forward(x.clone(), true).unwrap();
        assert_eq!(y, float.forward(x.clone(), true).unwrap());
        let dout = random_input(y.shape(), 0.0, 3 + round);
        let dx = binary.backward(dout.clone());
        let dx_float = float.backward(dout);
        assert!(dx
            .iter()
            .zip(&dx_float)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)));
        // dL/dW of the latent weights is dL/dsign(W), overwritten by every backward
        assert!(binary
            .w
            .grad
            .iter()
            .zip(&float.w.grad)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)));
    }
    assert_eq!(binary.params().len(), 1);
    assert_eq!(
        binary.inference_op().unwrap(),
        Op::BinaryConvolution {
            w: signs,
            stride: 2,
            pad: 1
        }
    );
}

#[test]
fn a_binary_affine_layer_is_the_affine_layer_with_the_signs() {
    let w = latent(&[12, 4], 4);
    let mut binary = BinaryAffine::from_params(w.clone());
    assert_eq!(binary.w.value, w.mapv(|v| v.clamp(-1.0, 1.0)));
    let signs = w.mapv(sign);
    let mut float = Affine::from_params(signs.clone(), Tensor::zeros(vec![4]));
    let x = random_input(&[3, 3, 2, 2], 0.0, 5);
    let y = binary.forward(x.clone(), true).unwrap();
    assert_eq!(y, float.forward(x.clone(), true).unwrap());
    let dout = random_input(&[3, 4], 0.0, 6);
    assert_eq!(binary.backward(dout.clone()), float.backward(dout));
    assert_eq!(binary.w.grad, float.w.grad);
    assert_eq!(binary.inference_op().unwrap(), Op::BinaryAffine { w: signs });
}

#[test]
fn binary_layers_input_gradients_match_central_differences() {
    // the output is linear in x for fixed signs: central differences are exact up to
    // f32 rounding of the sums (step 1e-2 on values of magnitude 1), so 1e-3 is tight
    let conv = BinaryConvolution::new(2, 3, 3, 3, 1, 1, Init::Xavier, 7);
    let r = check_input(&conv, &random_input(&[2, 2, 5, 4], 0.0, 8), 1e-2, 9);
    assert!(r.max_error < 1e-3, "BinaryConvolution: {} at {}", r.max_error, r.worst);
    let affine = BinaryAffine::new(10, 4, Init::Xavier, 10);
    let r = check_input(&affine, &random_input(&[3, 10], 0.0, 11), 1e-2, 12);
    assert!(r.max_error < 1e-3, "BinaryAffine: {} at {}", r.max_error, r.worst);
    assert_eq!(r.checked, 30, "the input only");
}

#[test]
fn clip_params_keeps_latent_weights_in_plus_minus_one_through_containers() {
    let mut net = Sequential::new()
        .with(BinaryConvolution::new(1, 2, 3, 3, 1, 1, Init::Xavier, 1))
        .with(Sign::new())
        .with(BinaryAffine::new(2 * 4 * 4, 3, Init::Xavier, 2))
        .with(Affine::new(3, 2, Init::He, 3))
        .with(Concat::new().with_branch("a", Sequential::new().with(BinaryAffine::new(2, 2, Init::Xavier, 4))))
        .with(Residual::new(
            Sequential::new().with(BinaryAffine::new(2, 2, Init::Xavier, 5)),
            None,
        ));
    let before: Vec<Tensor> = net.params().iter().map(|(_, p)| p.value.clone()).collect();
    for (_, p) in net.params_mut() {
        p.value.mapv_inplace(|v| v * 100.0);
    }
    net.clip_params();
    let after: Vec<Tensor> = net.params().iter().map(|(_, p)| p.value.clone()).collect();
    // the binarized layers' weights are clipped, the float layer's are not
    for k in 0..2 {
        assert!(after[k].iter().all(|v| v.abs() <= 1.0));
        assert!(after[k]
            .iter()
            .zip(&before[k])
            .all(|(a, b)| *a == (b * 100.0).clamp(-1.0, 1.0)));
    }
    assert!(after[2].iter().zip(&before[2]).all(|(a, b)| *a == b * 100.0));
    // and inside an inception module and a residual block
    for k in [4, 5] {
        assert!(after[k].iter().all(|v| v.abs() <= 1.0));
        assert!(after[k]
            .iter()
            .zip(&before[k])
            .all(|(a, b)| *a == (b * 100.0).clamp(-1.0, 1.0)));
    }
}

#[test]
fn binary_layers_never_run_winograd_and_name_themselves_in_errors() {
    let mut conv = BinaryConvolution::new(2, 4, 3, 3, 1, 1, Init::Xavier, 1);
    conv.set_conv_algo(ConvAlgo::Winograd);
    let x = random_input(&[1, 2, 8, 8], 0.0, 2).mapv(sign);
    let y = conv.forward(x, false).unwrap();
    // sums of 18 products of +-1: integers of the parity of 18
    assert!(y.iter().all(|v| v.fract() == 0.0 && (*v as i32).rem_euclid(2) == 0));
    let err = conv.forward(Tensor::zeros(vec![1, 3, 8, 8]), false).unwrap_err();
    assert!(err.to_string().starts_with("BinaryConvolution"), "{err}");
    let mut affine = BinaryAffine::new(5, 2, Init::Xavier, 1);
    let err = affine.forward(Tensor::zeros(vec![1, 6]), false).unwrap_err();
    assert!(err.to_string().starts_with("BinaryAffine"), "{err}");
}

/// Told any algorithm, a binary convolution runs an exact one: on a geometry where
/// `Auto` picks Winograd, its forward is the direct kernel's, bit for bit; and it
/// passes on whether its input gradient is read, whether it trains and bf16 products.
#[test]
fn a_binary_convolution_runs_the_direct_kernel_where_auto_would_pick_winograd() {
    let w = latent(&[32, 16, 3, 3], 4);
    let x = random_input(&[1, 16, 8, 8], 0.0, 5);
    let mut auto = Convolution::from_params(w.mapv(sign), Tensor::zeros(vec![32]), 1, 1).without_bias();
    let mut direct = auto.clone();
    direct.set_algo(ConvAlgo::Direct);
    let y_auto = auto.forward(x.clone(), true).unwrap();
    let y_direct = direct.forward(x.clone(), true).unwrap();
    if auto.last_kernel() != Some("winograd") {
        eprintln!("skipped: Auto runs {:?} here, not Winograd", auto.last_kernel());
        return;
    }
    assert_ne!(y_auto, y_direct, "Winograd rounds otherwise than the direct kernel");
    for algo in [ConvAlgo::Auto, ConvAlgo::Winograd, ConvAlgo::Direct] {
        let mut binary = BinaryConvolution::from_params(w.clone(), 1, 1);
        binary.set_conv_algo(algo);
        assert_eq!(binary.forward(x.clone(), true).unwrap(), y_direct, "{algo:?}");
    }
}
