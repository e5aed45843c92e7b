//! Forward passes against the plain reference kernels, and the behaviour the book fixes.

use dl_layers::gradcheck::random_input;
use dl_layers::{
    Affine, BatchNormMode, BatchNormalization, Concat, ConvAlgo, Convolution, Dropout, Init, Labels, Layer, LayerError,
    Pooling, Relu, Residual, Sequential, SoftmaxWithLoss, Tensor,
};
use dl_tensor::reference::{conv2d_reference, pool_reference};
use ndarray::{Ix1, Ix4};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn convolution_forward_matches_direct_convolution_in_train_and_eval() {
    for (i, &(c, f, k, s, p, h, w)) in [(1, 16, 3, 1, 1, 28, 28), (3, 5, 3, 2, 2, 9, 7), (4, 6, 5, 1, 0, 8, 9)]
        .iter()
        .enumerate()
    {
        let mut conv = Convolution::new(c, f, k, k, s, p, Init::He, i as u64);
        conv.b.as_mut().unwrap().value = random_input(&[f], 0.0, 50 + i as u64);
        let x = random_input(&[3, c, h, w], 0.0, 60 + i as u64);
        let want = conv2d_reference(
            &x.view().into_dimensionality::<Ix4>().unwrap(),
            &conv.w.value.view().into_dimensionality::<Ix4>().unwrap(),
            &conv
                .b
                .as_ref()
                .unwrap()
                .value
                .view()
                .into_dimensionality::<Ix1>()
                .unwrap(),
            s,
            p,
        )
        .into_dyn();
        for train in [true, false] {
            let got = conv.forward(x.clone(), train).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-4, "case {i} train={train}");
        }
    }
}

#[test]
fn every_convolution_algorithm_agrees_with_the_lowered_path() {
    // (C, FN, FH, stride, pad, H): DeepConvNet's layers at a batch of GROUP + 2 (so two
    // groups of images in backward, one short; conv1 on the direct kernel, the others on Winograd in forward, dx and dW), 70
    // filters (lane blocks of 64 and 16), an odd output size on Winograd (tiles half
    // outside), 1x1 convolutions (no lowering at all), a 3x3 stride-2 one (ResNet's
    // downsampling) and 5x5. Every algorithm falls back to the lowered path where its
    // kernel does not apply (stride 2, or no AVX-512 on this CPU).
    let cases = [
        (8, 5, 3, 1, 1, 7),
        (1, 16, 3, 1, 1, 28),
        (16, 16, 3, 1, 1, 28),
        (32, 32, 3, 1, 2, 14),
        (64, 64, 3, 1, 1, 8),
        (5, 70, 3, 1, 1, 6),
        (16, 24, 1, 1, 0, 7),
        (16, 32, 1, 2, 0, 8),
        (16, 32, 3, 2, 1, 9),
        (3, 6, 5, 1, 2, 9),
    ];
    for (i, &(c, f, k, stride, p, h)) in cases.iter().enumerate() {
        for algo in [ConvAlgo::Auto, ConvAlgo::Direct, ConvAlgo::Winograd] {
            let mut fast = Convolution::new(c, f, k, k, stride, p, Init::He, 70 + i as u64);
            fast.b.as_mut().unwrap().value = random_input(&[f], 0.0, 80 + i as u64);
            fast.set_algo(algo);
            let mut lowered = fast.clone();
            lowered.set_algo(ConvAlgo::Lowered);
            let x = random_input(&[dl_tensor::GROUP + 2, c, h, h], 0.0, 90 + i as u64);
            let yd = fast.forward(x.clone(), true).unwrap();
            let yl = lowered.forward(x, true).unwrap();
            assert_eq!(lowered.last_kernel(), Some("lowered"));
            let scale = yl.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            assert!(max_abs_diff(&yd, &yl) < 1e-5 * scale, "case {i} {algo:?}: forward");
            let dout = random_input(yl.shape(), 0.0, 100 + i as u64);
            let dxd = fast.backward(dout.clone());
            let dxl = lowered.backward(dout);
            for (what, a, b) in [
                ("dx", &dxd, &dxl),
                ("dW", &fast.w.grad, &lowered.w.grad),
                ("db", &fast.b.as_ref().unwrap().grad, &lowered.b.as_ref().unwrap().grad),
            ] {
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                assert!(b.iter().any(|v| *v != 0.0), "case {i} {algo:?}: {what} is all zeros");
                assert!(
                    max_abs_diff(a, b) < 1e-5 * scale,
                    "case {i} {algo:?}: {what} differs by {}",
                    max_abs_diff(a, b)
                );
            }
        }
    }
}

#[test]
fn the_algorithm_picks_the_kernel_the_cpu_has() {
    // 3x3 stride 1, 16 channels to 32 filters: Winograd under Auto, the direct kernel under
    // Direct, at any vector instruction set; the direct kernel on the phases for 3x3
    // stride 2; the lowered path at the scalar level (DLFS_SIMD=scalar).
    let x = random_input(&[2, 16, 8, 8], 0.0, 1);
    let run = |algo: ConvAlgo, stride: usize| {
        let mut conv = Convolution::new(16, 32, 3, 3, stride, 1, Init::He, 2);
        conv.set_algo(algo);
        conv.forward(x.clone(), true).unwrap();
        conv.last_kernel().unwrap()
    };
    let vector = dl_tensor::Isa::active() != dl_tensor::Isa::Scalar;
    assert_eq!(run(ConvAlgo::Auto, 1), if vector { "winograd" } else { "lowered" });
    assert_eq!(run(ConvAlgo::Direct, 1), "direct");
    assert_eq!(run(ConvAlgo::Lowered, 1), "lowered");
    assert_eq!(run(ConvAlgo::Auto, 2), if vector { "direct" } else { "lowered" });
    assert_eq!(run(ConvAlgo::Lowered, 2), "lowered");
}

#[test]
fn a_convolution_without_bias_has_no_bias_parameter() {
    let mut conv = Convolution::new(2, 3, 3, 3, 1, 1, Init::He, 4).without_bias();
    let names: Vec<String> = conv.params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["W"]);
    let mut with_zero_bias = Convolution::from_params(conv.w.value.clone(), Tensor::zeros(vec![3]), 1, 1);
    let x = random_input(&[2, 2, 5, 5], 0.0, 5);
    let (y, z) = (
        conv.forward(x.clone(), true).unwrap(),
        with_zero_bias.forward(x, true).unwrap(),
    );
    assert_eq!(y, z);
    let dout = random_input(y.shape(), 0.0, 6);
    assert_eq!(conv.backward(dout.clone()), with_zero_bias.backward(dout));
    assert_eq!(conv.w.grad, with_zero_bias.w.grad);
}

#[test]
fn max_pooling_2x2_fast_path_routes_ties_like_the_general_path() {
    // Values from {0, 0.5, 1}: many windows hold ties. A 6x6 input takes the 2x2 fast
    // path; the same values with a seventh column (left out by every window) take the
    // general path, and the two must agree, gradients included.
    let mut wide = random_input(&[2, 3, 6, 7], 0.0, 7);
    wide.mapv_inplace(|v| ((v + 1.0) * 1.5).floor().min(2.0) * 0.5);
    let even = wide.slice(ndarray::s![.., .., .., 0..6]).to_owned().into_dyn();
    let (mut fast, mut general) = (Pooling::max(2, 2, 2, 0), Pooling::max(2, 2, 2, 0));
    let yf = fast.forward(even.clone(), true).unwrap();
    let yg = general.forward(wide.clone(), true).unwrap();
    assert_eq!(yf, yg);
    let dout = random_input(&[2, 3, 3, 3], 0.0, 8);
    let dxg = general.backward(dout.clone());
    let dxf = fast.backward(dout);
    assert_eq!(dxf, dxg.slice(ndarray::s![.., .., .., 0..6]).to_owned().into_dyn());
    assert!(dxf.iter().any(|v| *v != 0.0));
    let v = even.view().into_dimensionality::<Ix4>().unwrap();
    assert_eq!(yf, pool_reference(&v, 2, 2, 2, 0, false).into_dyn());
    // evaluation's maxima without positions: the same values
    assert_eq!(Pooling::max(2, 2, 2, 0).forward(even, false).unwrap(), yf);
}

/// An evaluation forward between a training forward and its backward (a validation
/// pass, say, of another batch size and shape) leaves the backward as it was.
#[test]
fn pooling_evaluation_between_a_training_forward_and_its_backward_changes_nothing() {
    for (h, w) in [(6, 6), (7, 5)] {
        let x = random_input(&[2, 3, h, w], 0.0, 11);
        let mut alone = Pooling::max(2, 2, 2, 0);
        let y = alone.forward(x.clone(), true).unwrap();
        let dout = random_input(y.shape(), 0.0, 12);
        let want = alone.backward(dout.clone());
        let mut pool = Pooling::max(2, 2, 2, 0);
        pool.forward(x, true).unwrap();
        // 2x2 windows over an even and an odd size: the fast and the general path
        for other in [[5, 3, 8, 8], [1, 3, 9, 7]] {
            pool.forward(random_input(&other, 0.0, 13), false).unwrap();
        }
        assert_eq!(pool.backward(dout), want, "{h} x {w}");
    }
}

#[test]
fn pooling_forward_matches_reference() {
    // square windows, then the geometries next to the 2x2 stride-2 fast path's: one
    // side of 1 or 3, padding, odd sizes
    let cases = [
        (2, 2, 2, 0, 8, 8),
        (3, 3, 2, 0, 7, 6),
        (3, 3, 2, 1, 5, 6),
        (2, 2, 1, 0, 4, 5),
        (3, 2, 2, 0, 6, 6),
        (2, 3, 2, 0, 6, 6),
        (1, 2, 2, 0, 6, 6),
        (2, 1, 2, 0, 6, 6),
        (2, 2, 2, 1, 6, 6),
        (2, 2, 2, 0, 5, 7),
        (3, 3, 1, 1, 7, 9),
        (3, 3, 1, 1, 1, 2),
    ];
    for (i, &(ph, pw, s, p, h, w)) in cases.iter().enumerate() {
        let x = random_input(&[2, 3, h, w], 0.0, i as u64);
        let v = x.view().into_dimensionality::<Ix4>().unwrap();
        let got = Pooling::max(ph, pw, s, p).forward(x.clone(), false).unwrap();
        assert_eq!(got, pool_reference(&v, ph, pw, s, p, false).into_dyn(), "max case {i}");
        let got = Pooling::average(ph, pw, s, p).forward(x.clone(), false).unwrap();
        let want = pool_reference(&v, ph, pw, s, p, true).into_dyn();
        assert!(max_abs_diff(&got, &want) < 1e-6, "avg case {i}");
    }
}

/// Padding must be smaller than the window in each direction: a padded row or column
/// of windows would hold nothing else.
#[test]
fn pooling_refuses_padding_as_wide_as_its_window() {
    let x = Tensor::zeros(vec![1, 1, 6, 6]);
    for (ph, pw) in [(3, 1), (1, 3), (1, 1)] {
        let e = Pooling::max(ph, pw, 1, 1).forward(x.clone(), false).err();
        assert!(matches!(e, Some(LayerError::Invalid { .. })), "{ph}x{pw}: {e:?}");
        assert!(Pooling::max(ph, pw, 1, 1).output_shape(x.shape()).is_err());
    }
    assert!(Pooling::max(2, 2, 1, 1).forward(x, false).is_ok());
}

/// A 2x2 window whose values are all -inf (or NaN) has no strictly larger value than
/// the start of the scan: its first element is the winner, and gets the gradient.
#[test]
fn max_pooling_sends_a_window_without_a_largest_value_to_its_first_element() {
    for fill in [f32::NEG_INFINITY, f32::NAN] {
        // the window of output (1, ox): rows 2-3, columns 2 ox and 2 ox + 1, at each ox
        for ox in 0..3 {
            let mut x = random_input(&[1, 1, 4, 6], 0.0, 3);
            for (y, c) in [(2, 2 * ox), (2, 2 * ox + 1), (3, 2 * ox), (3, 2 * ox + 1)] {
                x[[0, 0, y, c]] = fill;
            }
            let mut pool = Pooling::max(2, 2, 2, 0);
            let y = pool.forward(x.clone(), true).unwrap();
            assert_eq!(y[[0, 0, 1, ox]], f32::NEG_INFINITY, "{fill} at {ox}");
            assert_eq!(Pooling::max(2, 2, 2, 0).forward(x, false).unwrap(), y, "{fill} at {ox}");
            let dx = pool.backward(Tensor::ones(vec![1, 1, 2, 3]));
            assert_eq!(dx[[0, 0, 2, 2 * ox]], 1.0, "{fill} at {ox}");
            assert_eq!(dx.iter().sum::<f32>(), 6.0, "{fill} at {ox}");
        }
        // the general path: 3x3 windows, stride 2, padding 1; the window of output
        // (1, 1) covers rows 1-3 and columns 1-3
        let mut x = random_input(&[1, 1, 5, 6], 0.0, 4);
        for y in 1..4 {
            for c in 1..4 {
                x[[0, 0, y, c]] = fill;
            }
        }
        let mut pool = Pooling::max(3, 3, 2, 1);
        let y = pool.forward(x, true).unwrap();
        let dx = pool.backward(Tensor::ones(y.raw_dim()));
        assert_eq!(dx[[0, 0, 1, 1]], 1.0, "{fill}");
        assert_eq!(dx.iter().sum::<f32>(), y.len() as f32, "{fill}");
    }
}

#[test]
fn sigmoid_is_the_logistic_function() {
    let x = Tensor::from_shape_vec(vec![1, 5], vec![-2.0, -0.5, 0.0, 1.0, 3.0]).unwrap();
    let y = dl_layers::Sigmoid::new().forward(x.clone(), false).unwrap();
    for (&v, &got) in x.iter().zip(y.iter()) {
        let want = 1.0 / (1.0 + (-f64::from(v)).exp());
        assert!(
            (f64::from(got) - want).abs() < 1e-6,
            "sigmoid({v}) = {got}, want {want}"
        );
    }
}

#[test]
fn labels_count_their_samples_in_either_form() {
    let one_hot = ndarray::Array2::<f32>::eye(3);
    let cases = [
        (Labels::Indices(&[]), 0),
        (Labels::Indices(&[2, 0]), 2),
        (Labels::OneHot(one_hot.view()), 3),
        (Labels::OneHot(one_hot.slice(ndarray::s![..0, ..])), 0),
    ];
    for (labels, n) in cases {
        assert_eq!((labels.len(), labels.is_empty()), (n, n == 0), "{labels:?}");
    }
    // the loss keeps the last forward's softmax
    let mut loss = SoftmaxWithLoss::new();
    assert!(loss.probabilities().is_none());
    let x = Tensor::from_shape_vec(vec![1, 3], vec![0.0, 1.0f32.ln(), 2.0f32.ln()]).unwrap();
    loss.forward(&x, Labels::Indices(&[2])).unwrap();
    let p = loss.probabilities().unwrap();
    for (got, want) in p.iter().zip([0.25, 0.25, 0.5]) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}

#[test]
fn book_dropout_scales_by_keep_ratio_in_eval_and_masks_in_train() {
    let x = Tensor::ones(vec![100, 100]);
    let mut d = Dropout::new(0.5, 1);
    assert_eq!(
        d.forward(x.clone(), false).unwrap(),
        Tensor::from_elem(vec![100, 100], 0.5)
    );
    let y = d.forward(x.clone(), true).unwrap();
    let kept = y.iter().filter(|&&v| v == 1.0).count();
    assert_eq!(kept + y.iter().filter(|&&v| v == 0.0).count(), 10_000);
    assert!((4_700..5_300).contains(&kept), "{kept}");
    // same seed, same mask; next call, a new mask
    assert_eq!(Dropout::new(0.5, 1).forward(x.clone(), true).unwrap(), y);
    assert_ne!(d.forward(x.clone(), true).unwrap(), y);
    // inverted: eval is the identity, training keeps 3/4 of the units scaled by 4/3, so
    // the expected train output is the input; backward scales the same units alike
    let mut inv = Dropout::inverted(0.25, 1);
    assert_eq!((d.ratio(), inv.ratio()), (0.5, 0.25));
    assert_eq!(inv.forward(x.clone(), false).unwrap(), x);
    let y = inv.forward(x.clone(), true).unwrap();
    let kept = y.iter().filter(|&&v| v == 1.0 / 0.75).count();
    assert_eq!(kept + y.iter().filter(|&&v| v == 0.0).count(), 10_000);
    assert!((7_200..7_800).contains(&kept), "{kept}");
    assert_eq!(inv.backward(x.clone()), y);
    // the inference engine's forms: the book's scaling, and nothing for the inverted one
    assert_eq!(
        Dropout::new(0.25, 1).inference_op().unwrap(),
        dl_layers::Op::Multiply(0.75)
    );
    assert_eq!(inv.inference_op().unwrap(), dl_layers::Op::Sequential(Vec::new()));
}

#[test]
fn dropout_masks_of_an_iteration_depend_on_the_seed_and_the_iteration_only() {
    let x = Tensor::ones(vec![20, 50]);
    let mask_at = |d: &mut Dropout, it: u64| {
        d.set_iteration(it);
        d.forward(x.clone(), true).unwrap()
    };
    // a layer that ran iterations 0..5 and a fresh one told "iteration 5" draw the same
    let mut run = Dropout::new(0.5, 7);
    for it in 0..5 {
        mask_at(&mut run, it);
    }
    let fifth = mask_at(&mut run, 5);
    assert_eq!(mask_at(&mut Dropout::new(0.5, 7), 5), fifth);
    // inside a container too
    let mut seq = Sequential::new().with(Dropout::new(0.5, 7));
    seq.set_iteration(5);
    assert_eq!(seq.forward(x.clone(), true).unwrap(), fifth);
    // a residual block passes the iteration to its body and its shortcut
    let (mut body, mut short) = (Dropout::new(0.5, 7), Dropout::new(0.5, 9));
    let want = mask_at(&mut body, 5) + mask_at(&mut short, 5);
    let mut res = Residual::new(
        Sequential::new().with(Dropout::new(0.5, 7)),
        Some(Sequential::new().with(Dropout::new(0.5, 9))),
    );
    res.set_iteration(5);
    assert_eq!(res.forward(x.clone(), true).unwrap(), want);
    // a concatenation, to each branch
    let mut cat = Concat::new()
        .with_branch("a", Sequential::new().with(Dropout::new(0.5, 9)))
        .with_branch("b", Sequential::new().with(Dropout::new(0.5, 7)));
    cat.set_iteration(5);
    let y = cat
        .forward(x.clone().into_shape_with_order(vec![20, 50, 1, 1]).unwrap(), true)
        .unwrap();
    let want = ndarray::concatenate(ndarray::Axis(1), &[mask_at(&mut short, 5).view(), fifth.view()]).unwrap();
    assert_eq!(y.into_shape_with_order(vec![20, 100]).unwrap(), want.into_dyn());
    // another iteration or another seed: another mask
    assert_ne!(mask_at(&mut Dropout::new(0.5, 7), 6), fifth);
    assert_ne!(mask_at(&mut Dropout::new(0.5, 8), 5), fifth);
    // reseed moves the iteration's draws to the new seed
    let mut d = Dropout::new(0.5, 8);
    d.reseed(7);
    assert_eq!(mask_at(&mut d, 5), fifth);
}

#[test]
fn a_slice_of_a_batch_draws_the_masks_its_samples_get_in_the_whole_batch() {
    let x = Tensor::from_shape_fn(vec![7, 3, 2, 2], |i| 1.0 + i[0] as f32);
    let mut whole = Dropout::new(0.5, 3);
    whole.set_iteration(4);
    let want = whole.forward(x.clone(), true).unwrap();
    for (first, last) in [(0, 3), (3, 7), (6, 7)] {
        let part = x.slice(ndarray::s![first..last, .., .., ..]).to_owned().into_dyn();
        let mut d = Dropout::new(0.5, 3);
        d.set_iteration(4);
        // through a container too
        let mut seq = Sequential::new().with(d);
        seq.set_iteration(4);
        seq.set_batch_offset(first as u64);
        let got = seq.forward(part, true).unwrap();
        assert_eq!(
            got,
            want.slice(ndarray::s![first..last, .., .., ..]).to_owned().into_dyn(),
            "{first}..{last}"
        );
    }
    // the offset lasts one forward, and a new iteration clears it
    let mut d = Dropout::new(0.5, 3);
    d.set_iteration(4);
    d.set_batch_offset(3);
    let a = d.forward(x.clone(), true).unwrap();
    d.set_iteration(4);
    d.set_batch_offset(3);
    d.set_iteration(4);
    assert_eq!(d.forward(x.clone(), true).unwrap(), want);
    assert_ne!(a, want);
    // a block passes it on: to a residual's body and shortcut, to a concatenation's branches
    let part = x.slice(ndarray::s![3..7, .., .., ..]).to_owned().into_dyn();
    let mut res = Residual::new(
        Sequential::new().with(Dropout::new(0.5, 3)),
        Some(Sequential::new().with(Dropout::new(0.5, 3))),
    );
    res.set_iteration(4);
    res.set_batch_offset(3);
    let slice = want.slice(ndarray::s![3..7, .., .., ..]).to_owned().into_dyn();
    assert_eq!(res.forward(part.clone(), true).unwrap(), &slice + &slice);
    let mut cat = Concat::new()
        .with_branch("a", Sequential::new().with(Dropout::new(0.5, 3)))
        .with_branch("b", Sequential::new().with(Dropout::new(0.5, 3)));
    cat.set_iteration(4);
    cat.set_batch_offset(3);
    let y = cat.forward(part, true).unwrap();
    let want_cat = ndarray::concatenate(ndarray::Axis(1), &[slice.view(), slice.view()]).unwrap();
    assert_eq!(y, want_cat);
}

#[test]
fn batch_normalization_normalises_in_train_and_uses_running_stats_in_eval() {
    let mut bn = BatchNormalization::new(4, BatchNormMode::PerActivation);
    let x = random_input(&[50, 4], 0.0, 3) * 3.0 + 2.0;
    let y = bn.forward(x.clone(), true).unwrap();
    for col in y.view().into_dimensionality::<ndarray::Ix2>().unwrap().columns() {
        let m = col.mean().unwrap();
        let v = col.mapv(|a| (a - m) * (a - m)).mean().unwrap();
        assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-3, "mean {m} var {v}");
    }
    // after one step with momentum 0.9 the running mean is 0.1 * batch mean
    let batch_mean = x
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap()
        .mean_axis(ndarray::Axis(0))
        .unwrap();
    for (r, m) in bn.running_mean.iter().zip(batch_mean.iter()) {
        assert!((r - 0.1 * m).abs() < 1e-5);
    }
    // eval: (x - running_mean) / sqrt(running_var + 1e-6)
    bn.running_mean.fill(1.0);
    bn.running_var.fill(4.0);
    let y = bn.forward(Tensor::from_elem(vec![2, 4], 3.0), false).unwrap();
    assert!(y.iter().all(|&v| (v - 1.0).abs() < 1e-5));
    // per-channel statistics span N, H and W
    let mut bn = BatchNormalization::new(2, BatchNormMode::PerChannel);
    let x = random_input(&[3, 2, 4, 4], 0.0, 4) + 5.0;
    let y = bn.forward(x, true).unwrap();
    let ch0: Vec<f32> = y.slice(ndarray::s![.., 0, .., ..]).iter().copied().collect();
    assert!((ch0.iter().sum::<f32>() / ch0.len() as f32).abs() < 1e-5);
}

/// One training step's running statistics, by the book's rule (biased variance, the
/// running variance from 0) and torchvision's (unbiased variance `m / (m - 1)` times the
/// biased one, from 1), against the formulas in f64.
#[test]
fn batch_normalization_running_statistics_follow_each_convention() {
    // per channel: channel c of (2, 2, 1, 2) holds 4 values, so m = 4
    let x = Tensor::from_shape_vec(vec![2, 2, 1, 2], vec![1.0, 2.0, -3.0, 0.5, 4.0, 7.0, 1.5, -2.0]).unwrap();
    let channel = |c: usize| -> Vec<f64> {
        let v = x.slice(ndarray::s![.., c, .., ..]);
        v.iter().map(|&a| f64::from(a)).collect()
    };
    let stats = |c: usize| {
        let v = channel(c);
        let m = v.len() as f64;
        let mean = v.iter().sum::<f64>() / m;
        (mean, v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / m, m)
    };
    let close = |got: f32, want: f64| (f64::from(got) - want).abs() <= 1e-6 * (1.0 + want.abs());
    let mut book = BatchNormalization::new(2, BatchNormMode::PerChannel);
    let mut torch = BatchNormalization::torchvision(2).with_momentum(0.75);
    book.forward(x.clone(), true).unwrap();
    torch.forward(x.clone(), true).unwrap();
    for c in 0..2 {
        let (mean, var, m) = stats(c);
        assert!(close(book.running_mean[c], 0.1 * mean), "{c}: {}", book.running_mean[c]);
        assert!(close(book.running_var[c], 0.1 * var), "{c}: {}", book.running_var[c]);
        assert!(
            close(torch.running_mean[c], 0.25 * mean),
            "{c}: {}",
            torch.running_mean[c]
        );
        let unbiased = var * m / (m - 1.0);
        assert!(
            close(torch.running_var[c], 0.75 + 0.25 * unbiased),
            "{c}: {}",
            torch.running_var[c]
        );
    }
    // one value per channel (m = 1): no unbiased variance exists; the batch's (0) is used
    let mut single = BatchNormalization::torchvision(2);
    single
        .forward(x.slice(ndarray::s![..1, .., .., ..1]).to_owned().into_dyn(), true)
        .unwrap();
    for c in 0..2 {
        assert!(close(single.running_var[c], 0.9), "{c}: {}", single.running_var[c]);
    }
}

/// Epsilon is added to the variance: a feature of variance 0 is divided by `sqrt(eps)`
/// in evaluation, and gives `beta` in training.
#[test]
fn batch_normalization_adds_epsilon_to_the_variance() {
    let mut bn = BatchNormalization::new(2, BatchNormMode::PerChannel).with_eps(0.01);
    bn.running_mean = Tensor::from_shape_vec(vec![2], vec![1.0, 0.0]).unwrap();
    bn.running_var = Tensor::from_shape_vec(vec![2], vec![0.0, 0.03]).unwrap();
    let x = Tensor::from_shape_vec(vec![1, 2, 1, 2], vec![1.1, 0.9, 0.2, -0.4]).unwrap();
    let y = bn.forward(x, false).unwrap();
    let want = [1.0, -1.0, 1.0, -2.0]; // (x - mean) / sqrt(var + 0.01)
    for (got, want) in y.iter().zip(want) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    bn.beta.value = Tensor::from_shape_vec(vec![2], vec![0.5, -0.25]).unwrap();
    let y = bn.forward(Tensor::from_elem(vec![3, 2, 1, 2], 7.0), true).unwrap();
    for (idx, &v) in y.indexed_iter() {
        let want = [0.5, -0.25][idx[1]];
        assert!((v - want).abs() < 1e-6, "{idx:?}: {v}");
    }
}

/// The inference engine's form of batch norm, `x * scale + shift` per feature, is the
/// evaluation forward, per channel and per activation.
#[test]
fn batch_normalizations_inference_op_is_its_evaluation_forward() {
    for (mode, x) in [
        (BatchNormMode::PerChannel, random_input(&[2, 3, 2, 2], 0.0, 70) * 3.0),
        (BatchNormMode::PerActivation, random_input(&[4, 3], 0.0, 71) * 3.0),
    ] {
        let mut bn = BatchNormalization::new(3, mode).with_eps(0.05);
        bn.gamma.value = random_input(&[3], 0.2, 72) * 2.0;
        bn.beta.value = random_input(&[3], 0.0, 73);
        bn.running_mean = random_input(&[3], 0.0, 74);
        bn.running_var = random_input(&[3], 0.0, 75).mapv(|v| v * v);
        let Ok(dl_layers::Op::Scale {
            scale,
            shift,
            per_channel,
        }) = bn.inference_op()
        else {
            panic!("{mode:?}: not a Scale");
        };
        assert_eq!(per_channel, mode == BatchNormMode::PerChannel);
        let y = bn.forward(x.clone(), false).unwrap();
        for ((idx, &v), &want) in x.indexed_iter().zip(y.iter()) {
            let f = idx[1];
            let got = v * scale[f] + shift[f];
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{mode:?} {idx:?}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn batch_normalization_in_eval_is_its_formula_per_feature() {
    let mut bn = BatchNormalization::new(3, BatchNormMode::PerChannel);
    let vec3 = |v: [f32; 3]| Tensor::from_shape_vec(vec![3], v.to_vec()).unwrap();
    let (gamma, beta) = ([1.5, -0.5, 2.0], [0.25, 1.0, -3.0]);
    let (mean, var) = ([2.0, -1.0, 0.5], [4.0, 0.25, 9.0]);
    bn.gamma.value = vec3(gamma);
    bn.beta.value = vec3(beta);
    bn.running_mean = vec3(mean);
    bn.running_var = vec3(var);
    let x = random_input(&[2, 3, 4, 4], 0.0, 8) * 3.0;
    let y = bn.forward(x.clone(), false).unwrap();
    for ((idx, &v), &got) in x.indexed_iter().zip(y.iter()) {
        let c = idx[1];
        let want = gamma[c] * (v - mean[c]) / (var[c] + 1e-6f32).sqrt() + beta[c];
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{idx:?}: {got} vs {want}"
        );
    }
}

#[test]
fn batch_normalization_trains_on_batches_of_changing_size() {
    // the kept normalised input is reused only when it fits
    let mut bn = BatchNormalization::new(3, BatchNormMode::PerChannel);
    let mut fresh = bn.clone();
    bn.forward(random_input(&[4, 3, 5, 5], 0.0, 9), true).unwrap();
    bn.backward(random_input(&[4, 3, 5, 5], 0.0, 10));
    let x = random_input(&[2, 3, 5, 5], 0.0, 11);
    let dout = random_input(&[2, 3, 5, 5], 0.0, 12);
    assert_eq!(bn.forward(x.clone(), true).unwrap(), fresh.forward(x, true).unwrap());
    assert_eq!(bn.backward(dout.clone()), fresh.backward(dout));
}

#[test]
fn wrong_input_shapes_are_errors_that_name_layer_and_shapes() {
    let mut conv = Convolution::new(1, 16, 3, 3, 1, 1, Init::He, 0);
    let e = conv.forward(Tensor::zeros(vec![2, 3, 28, 28]), true).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Convolution: expected input of shape (N, 1, H, W), got [2, 3, 28, 28]"
    );
    let e = conv.forward(Tensor::zeros(vec![28, 28]), true).unwrap_err();
    assert!(matches!(e, LayerError::Shape { .. }));
    let e = Affine::new(1024, 50, Init::He, 0)
        .forward(Tensor::zeros(vec![5, 1000]), true)
        .unwrap_err();
    assert!(
        e.to_string().starts_with("Affine: expected input of shape (N, 1024)"),
        "{e}"
    );
    assert!(e.to_string().contains("[5, 1000]"), "{e}");
    let e = Pooling::max(2, 2, 2, 0)
        .forward(Tensor::zeros(vec![1, 1, 1, 1]), true)
        .unwrap_err();
    assert!(e.to_string().starts_with("Pooling:"), "{e}");
    let e = BatchNormalization::new(3, BatchNormMode::PerChannel)
        .forward(Tensor::zeros(vec![2, 4, 2, 2]), true)
        .unwrap_err();
    assert!(e.to_string().contains("BatchNormalization") && e.to_string().contains("(N, 3, H, W)"));
    let mut loss = SoftmaxWithLoss::new();
    let e = loss
        .forward(&Tensor::zeros(vec![2, 10]), Labels::Indices(&[1, 10]))
        .unwrap_err();
    assert_eq!(e.to_string(), "SoftmaxWithLoss: label 10 out of range 0..10");
    let e = loss
        .forward(&Tensor::zeros(vec![2, 10]), Labels::Indices(&[1]))
        .unwrap_err();
    assert!(e.to_string().contains("2 score rows but 1 labels"));
}

#[test]
fn sequential_reports_output_shape_and_the_first_failing_layer() {
    let net = Sequential::new()
        .with(Convolution::new(1, 4, 3, 3, 1, 1, Init::He, 0))
        .with(Relu::new())
        .with(Pooling::max(2, 2, 2, 0))
        .with(Affine::new(4 * 14 * 14, 10, Init::He, 1));
    assert_eq!(net.output_shape(&[7, 1, 28, 28]).unwrap(), vec![7, 10]);
    let e = net.output_shape(&[7, 1, 30, 30]).unwrap_err();
    assert!(e.to_string().starts_with("Affine"), "{e}");
}

#[test]
#[should_panic(expected = "Convolution::backward: dout has shape")]
fn backward_with_a_wrong_dout_names_the_layer() {
    let mut conv = Convolution::new(1, 2, 3, 3, 1, 1, Init::He, 0);
    conv.forward(Tensor::zeros(vec![1, 1, 4, 4]), true).unwrap();
    conv.backward(Tensor::zeros(vec![1, 3, 4, 4]));
}

#[test]
fn convolution_gradients_do_not_depend_on_the_thread_count() {
    let conv = Convolution::new(3, 8, 3, 3, 1, 1, Init::He, 1);
    let x = random_input(&[13, 3, 9, 9], 0.0, 2);
    let dout = random_input(&[13, 8, 9, 9], 0.0, 3);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut c = conv.clone();
            c.forward(x.clone(), true).unwrap();
            let dx = c.backward(dout.clone());
            (dx, c.w.grad.clone(), c.b.as_ref().unwrap().grad.clone())
        })
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}

#[test]
fn a_sequential_names_its_layers_by_position_or_by_name() {
    let mut s = Sequential::new()
        .with(Relu::new())
        .with_named("conv", Convolution::new(1, 2, 3, 3, 1, 1, Init::He, 1));
    s.push(Box::new(Relu::new()));
    s.push_named("pool", Box::new(Pooling::max(2, 2, 2, 0)));
    assert_eq!(s.names(), ["0", "conv", "2", "pool"]);
    assert_eq!((s.len(), s.is_empty(), Sequential::new().is_empty()), (4, false, true));
    assert_eq!(
        format!("{s:?}"),
        r#"{"0": "Relu", "conv": "Convolution", "2": "Relu", "pool": "Pooling"}"#
    );
    let names: Vec<String> = s.params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["conv.W", "conv.b"]);
    // buffers by path too, and writable through buffers_mut
    let mut with_bn = Sequential::new().with(Relu::new()).with_named(
        "block",
        Sequential::new().with(BatchNormalization::new(3, BatchNormMode::PerChannel)),
    );
    let bnames: Vec<String> = with_bn.buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(bnames, ["block.0.running_mean", "block.0.running_var"]);
    for (_, b) in with_bn.buffers_mut() {
        b.fill(2.5);
    }
    assert!(with_bn
        .buffers()
        .iter()
        .all(|(_, b)| b.iter().all(|&v| v == 2.5) && b.len() == 3));
    let collected: Sequential = vec![Box::new(Relu::new()) as Box<dyn Layer>, Box::new(Relu::new())]
        .into_iter()
        .collect();
    assert_eq!(collected.names(), ["0", "1"]);
    for bad in ["", "a.b", "conv"] {
        let mut s = s.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.push_named(bad, Box::new(Relu::new()))
        }));
        assert!(r.is_err(), "{bad:?} is refused");
    }
}

#[test]
fn layers_without_parameters_or_buffers_report_none() {
    use dl_layers::{BinaryAffine, BinaryConvolution, GlobalAveragePooling, PoolKind, Sigmoid, Sign};
    let mut without_params: Vec<Box<dyn Layer>> = vec![
        Box::new(Relu::new()),
        Box::new(Sigmoid::new()),
        Box::new(Sign::new()),
        Box::new(Dropout::new(0.5, 1)),
        Box::new(Pooling::new(PoolKind::Max, 2, 2, 2, 0)),
        Box::new(GlobalAveragePooling::new()),
    ];
    for layer in &mut without_params {
        let name = layer.name().to_string();
        assert!(layer.params().is_empty(), "{name}");
        assert!(layer.params_mut().is_empty(), "{name}");
        assert!(!layer.is_trainable(), "{name}");
    }
    // the parameterised layers without running statistics save no buffers
    let mut without_buffers: Vec<Box<dyn Layer>> = vec![
        Box::new(Affine::new(3, 2, Init::He, 1)),
        Box::new(Convolution::new(1, 2, 3, 3, 1, 1, Init::He, 2)),
        Box::new(BinaryAffine::new(3, 2, Init::Xavier, 3)),
        Box::new(BinaryConvolution::new(1, 2, 3, 3, 1, 1, Init::Xavier, 4)),
    ];
    for layer in without_params.iter_mut().chain(&mut without_buffers) {
        let name = layer.name().to_string();
        assert!(layer.buffers().is_empty(), "{name}");
        assert!(layer.buffers_mut().is_empty(), "{name}");
    }
    for layer in &without_buffers {
        assert!(!layer.params().is_empty(), "{}", layer.name());
    }
}

#[test]
fn every_layer_answers_to_the_books_name() {
    use dl_layers::{BinaryAffine, BinaryConvolution, GlobalAveragePooling, PoolKind, Sigmoid, Sign};
    let layers: Vec<(Box<dyn Layer>, &str)> = vec![
        (Box::new(Affine::new(3, 2, Init::He, 1)), "Affine"),
        (Box::new(Convolution::new(1, 2, 3, 3, 1, 1, Init::He, 2)), "Convolution"),
        (
            Box::new(BatchNormalization::new(2, BatchNormMode::PerChannel)),
            "BatchNormalization",
        ),
        (Box::new(Relu::new()), "Relu"),
        (Box::new(Sigmoid::new()), "Sigmoid"),
        (Box::new(Pooling::new(PoolKind::Max, 2, 2, 2, 0)), "Pooling"),
        (Box::new(Dropout::new(0.5, 1)), "Dropout"),
        (Box::new(GlobalAveragePooling::new()), "GlobalAveragePooling"),
        (Box::new(Sequential::new()), "Sequential"),
        (Box::new(Concat::new()), "Concat"),
        (Box::new(Residual::new(Sequential::new(), None)), "Residual"),
        (Box::new(Sign::new()), "Sign"),
        (Box::new(BinaryAffine::new(3, 2, Init::Xavier, 3)), "BinaryAffine"),
        (
            Box::new(BinaryConvolution::new(1, 2, 3, 3, 1, 1, Init::Xavier, 4)),
            "BinaryConvolution",
        ),
    ];
    for (layer, name) in &layers {
        assert_eq!(layer.name(), *name);
    }
}

/// Every layer's `output_shape` is the shape its forward gives, in training and in
/// evaluation.
#[test]
fn every_layers_output_shape_is_the_shape_of_its_output() {
    use dl_layers::{BinaryAffine, BinaryConvolution, GlobalAveragePooling, PoolKind, Sigmoid, Sign};
    let image = [3, 2, 6, 5];
    let layers: Vec<(Box<dyn Layer>, &[usize])> = vec![
        (Box::new(Affine::new(60, 4, Init::He, 1)), &image),
        (Box::new(Convolution::new(2, 3, 3, 3, 2, 1, Init::He, 2)), &image),
        (Box::new(BatchNormalization::new(2, BatchNormMode::PerChannel)), &image),
        (
            Box::new(BatchNormalization::new(60, BatchNormMode::PerActivation)),
            &image,
        ),
        (Box::new(Relu::new()), &image),
        (Box::new(Sigmoid::new()), &image),
        (Box::new(Pooling::new(PoolKind::Max, 2, 2, 2, 0)), &image),
        (Box::new(Pooling::new(PoolKind::Average, 3, 2, 1, 1)), &image),
        (Box::new(Dropout::new(0.5, 1)), &image),
        (Box::new(GlobalAveragePooling::new()), &image),
        (
            Box::new(
                Concat::new()
                    .with_branch(
                        "a",
                        Sequential::new().with(Convolution::new(2, 1, 1, 1, 1, 0, Init::He, 3)),
                    )
                    .with_branch(
                        "b",
                        Sequential::new().with(Convolution::new(2, 4, 3, 3, 1, 1, Init::He, 4)),
                    ),
            ),
            &image,
        ),
        (
            Box::new(Residual::new(Sequential::new().with(Relu::new()), None)),
            &image,
        ),
        (Box::new(Sign::new()), &image),
        (Box::new(BinaryAffine::new(60, 4, Init::Xavier, 5)), &image),
        (
            Box::new(BinaryConvolution::new(2, 3, 3, 3, 1, 1, Init::Xavier, 6)),
            &image,
        ),
    ];
    for (mut layer, input) in layers {
        let x = random_input(input, 0.0, 7);
        let want = layer.output_shape(input).unwrap();
        for train in [true, false] {
            let y = layer.forward(x.clone(), train).unwrap();
            assert_eq!(y.shape(), want.as_slice(), "{} (train {train})", layer.name());
        }
    }
}

/// A container told an algorithm tells every convolution in it: its forward is, bit
/// for bit, that of the same container built from convolutions set to that algorithm.
#[test]
fn containers_pass_the_convolution_algorithm_to_every_convolution() {
    let conv = |algo: Option<ConvAlgo>| {
        let mut c = Convolution::new(16, 16, 3, 3, 1, 1, Init::He, 11);
        if let Some(a) = algo {
            c.set_algo(a);
            assert_eq!(c.algo(), a);
        }
        c
    };
    type Build = fn(Convolution) -> Box<dyn Layer>;
    let containers: [(&str, Build); 3] = [
        ("Sequential", |c| Box::new(Sequential::new().with(c))),
        ("Concat", |c| {
            Box::new(Concat::new().with_branch("a", Sequential::new().with(c)))
        }),
        ("Residual", |c| Box::new(Residual::new(Sequential::new().with(c), None))),
    ];
    let x = random_input(&[1, 16, 8, 8], 0.0, 12);
    for (name, build) in containers {
        let mut outputs = Vec::new();
        for algo in [ConvAlgo::Direct, ConvAlgo::Winograd] {
            let want = build(conv(Some(algo))).forward(x.clone(), true).unwrap();
            let mut told = build(conv(None));
            told.set_conv_algo(algo);
            assert_eq!(told.forward(x.clone(), true).unwrap(), want, "{name} {algo:?}");
            outputs.push(want);
        }
        assert_ne!(outputs[0], outputs[1], "{name}: the two algorithms round differently");
    }
}

/// The containers' inference forms hold their layers' forms, in order.
#[test]
fn containers_give_their_layers_inference_ops_in_order() {
    use dl_layers::Op;
    let body = || Sequential::new().with(Relu::new()).with(Dropout::new(0.25, 1));
    let seq = body();
    assert_eq!(seq.layers().len(), 2);
    assert_eq!(seq.layers()[1].name(), "Dropout");
    let ops = vec![Op::Relu, Op::Multiply(0.75)];
    assert_eq!(seq.inference_ops().unwrap(), ops);
    assert_eq!(seq.inference_op().unwrap(), Op::Sequential(ops.clone()));
    let block = Residual::new(body(), Some(Sequential::new().with(Relu::new())));
    assert_eq!(
        block.inference_op().unwrap(),
        Op::Residual {
            body: ops.clone(),
            shortcut: Some(vec![Op::Relu]),
        }
    );
    let module = Concat::new()
        .with_branch("a", body())
        .with_branch("b", Sequential::new());
    assert_eq!(module.inference_op().unwrap(), Op::Concat(vec![ops, vec![]]));
}

#[test]
fn a_residual_block_names_its_body_and_shortcut_state_by_path() {
    let bn = || BatchNormalization::new(2, BatchNormMode::PerChannel);
    let mut res = Residual::new(
        Sequential::new()
            .with_named("conv1", Convolution::new(1, 2, 3, 3, 1, 1, Init::He, 1))
            .with_named("bn1", bn()),
        Some(
            Sequential::new()
                .with_named("0", Convolution::new(1, 2, 1, 1, 1, 0, Init::He, 2))
                .with_named("1", bn()),
        ),
    );
    let names = |v: Vec<String>| v.join(" ");
    let params =
        "conv1.W conv1.b bn1.gamma bn1.beta downsample.0.W downsample.0.b downsample.1.gamma downsample.1.beta";
    let buffers = "bn1.running_mean bn1.running_var downsample.1.running_mean downsample.1.running_var";
    assert_eq!(names(res.params().into_iter().map(|(n, _)| n).collect()), params);
    assert_eq!(names(res.params_mut().into_iter().map(|(n, _)| n).collect()), params);
    assert_eq!(names(res.buffers().into_iter().map(|(n, _)| n).collect()), buffers);
    assert_eq!(names(res.buffers_mut().into_iter().map(|(n, _)| n).collect()), buffers);
}

#[test]
fn an_inception_module_names_its_branches_state_by_path() {
    let branch = |c_out: usize, seed: u64| {
        Sequential::new()
            .with_named("0", Convolution::new(1, c_out, 1, 1, 1, 0, Init::He, seed))
            .with_named("1", BatchNormalization::new(c_out, BatchNormMode::PerChannel))
    };
    let mut module = Concat::new()
        .with_branch("branch1", branch(2, 1))
        .with_branch("branch2", branch(3, 2));
    let names = |v: Vec<String>| v.join(" ");
    let params = "branch1.0.W branch1.0.b branch1.1.gamma branch1.1.beta \
                  branch2.0.W branch2.0.b branch2.1.gamma branch2.1.beta";
    let buffers = "branch1.1.running_mean branch1.1.running_var branch2.1.running_mean branch2.1.running_var";
    let params = params.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(names(module.params().into_iter().map(|(n, _)| n).collect()), params);
    assert_eq!(names(module.params_mut().into_iter().map(|(n, _)| n).collect()), params);
    assert_eq!(names(module.buffers().into_iter().map(|(n, _)| n).collect()), buffers);
    assert_eq!(
        names(module.buffers_mut().into_iter().map(|(n, _)| n).collect()),
        buffers
    );
    // the buffers handed out are the branches' own: a write shows in the next read
    for (_, t) in module.buffers_mut() {
        t.fill(0.5);
    }
    assert!(module.buffers().iter().all(|(_, t)| t.iter().all(|&v| v == 0.5)));
}

#[test]
fn an_inception_module_passes_on_whether_its_input_gradient_is_read() {
    let x = random_input(&[2, 1, 4, 4], 0.0, 3);
    let dout = random_input(&[2, 5, 4, 4], 0.0, 4);
    let module = Concat::new()
        .with_branch(
            "a",
            Sequential::new().with(Convolution::new(1, 2, 3, 3, 1, 1, Init::He, 5)),
        )
        .with_branch(
            "b",
            Sequential::new().with(Convolution::new(1, 3, 1, 1, 1, 0, Init::He, 6)),
        );
    let dx = |needed: bool| {
        let mut m = module.clone();
        m.set_input_gradient_needed(needed);
        m.forward(x.clone(), true).unwrap();
        m.backward(dout.clone())
    };
    let (read, unread) = (dx(true), dx(false));
    assert_eq!(read.shape(), x.shape());
    assert_eq!(unread.shape(), x.shape());
    assert!(read.iter().any(|&v| v != 0.0));
    assert!(
        unread.iter().all(|&v| v == 0.0),
        "no branch computes an unread gradient"
    );
}

#[test]
fn batch_norm_refuses_inputs_of_the_wrong_size() {
    let x = |shape: &[usize]| Tensor::zeros(shape.to_vec());
    let mut per_activation = BatchNormalization::new(4, BatchNormMode::PerActivation);
    for shape in [&[2, 3][..], &[2, 5], &[2, 2, 3], &[4]] {
        let e = per_activation.forward(x(shape), true).err();
        assert!(matches!(e, Some(LayerError::Shape { .. })), "{shape:?}: {e:?}");
    }
    assert!(per_activation.forward(x(&[3, 2, 2]), true).is_ok());
    let mut per_channel = BatchNormalization::new(2, BatchNormMode::PerChannel);
    for shape in [&[2, 3, 4, 4][..], &[2, 2, 4], &[2, 8]] {
        let e = per_channel.forward(x(shape), true).err();
        assert!(matches!(e, Some(LayerError::Shape { .. })), "{shape:?}: {e:?}");
    }
    assert!(per_channel.forward(x(&[3, 2, 4, 4]), false).is_ok());
}

/// A layer that passes its input through, and marks a fused ReLU by giving -42
/// everywhere (which a ReLU run after it would turn to 0).
#[derive(Clone)]
struct FusionProbe;

impl Layer for FusionProbe {
    fn name(&self) -> &str {
        "FusionProbe"
    }
    fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, LayerError> {
        Ok(x)
    }
    fn forward_relu(&mut self, x: Tensor) -> Result<Tensor, LayerError> {
        Ok(x.mapv(|_| -42.0))
    }
    fn backward(&mut self, dout: Tensor) -> Tensor {
        dout
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }
    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}

/// Named `Relu` but computing something else: not fused.
#[derive(Clone)]
struct NotARelu;

impl Layer for NotARelu {
    fn name(&self) -> &str {
        "Relu"
    }
    fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, LayerError> {
        Ok(x)
    }
    fn backward(&mut self, dout: Tensor) -> Tensor {
        dout
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }
    fn inference_op(&self) -> Result<dl_layers::Op, LayerError> {
        Ok(dl_layers::Op::Sigmoid)
    }
    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}

#[test]
fn in_evaluation_a_layer_and_the_relu_after_it_run_as_one() {
    let x = random_input(&[2, 3, 4, 4], 0.0, 7);
    let relu = x.mapv(|v| v.max(0.0));
    let run = |seq: Sequential, train: bool| {
        let mut seq = seq;
        seq.forward(x.clone(), train).unwrap()
    };
    let fused = x.mapv(|_| -42.0);
    // followed by a ReLU in evaluation: fused, and the ReLU not run again
    assert_eq!(run(Sequential::new().with(FusionProbe).with(Relu::new()), false), fused);
    assert_eq!(
        run(
            Sequential::new()
                .with(FusionProbe)
                .with(Relu::new())
                .with(FusionProbe)
                .with(Relu::new()),
            false
        ),
        fused
    );
    // in training, each layer on its own
    assert_eq!(run(Sequential::new().with(FusionProbe).with(Relu::new()), true), relu);
    // no ReLU after it, or one only in name, or the ReLU first
    assert_eq!(run(Sequential::new().with(FusionProbe), false), x);
    assert_eq!(run(Sequential::new().with(FusionProbe).with(NotARelu), false), x);
    assert_eq!(run(Sequential::new().with(Relu::new()).with(FusionProbe), false), relu);
}

#[test]
fn forward_relu_is_the_evaluation_forward_then_the_relu() {
    // a convolution on each algorithm (its own fused pass), and an affine layer (the
    // trait's default: the two one after the other)
    let x = random_input(&[3, 16, 7, 7], 0.0, 11);
    for algo in [ConvAlgo::Auto, ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd] {
        let mut conv = Convolution::new(16, 32, 3, 3, 1, 1, Init::He, 12);
        conv.b.as_mut().unwrap().value = random_input(&[32], 0.0, 13);
        conv.set_algo(algo);
        let want = conv.forward(x.clone(), false).unwrap().mapv(|v| v.max(0.0));
        assert!(want.iter().any(|v| *v == 0.0) && want.iter().any(|v| *v > 0.0));
        assert_eq!(conv.forward_relu(x.clone()).unwrap(), want, "{algo:?}");
    }
    let mut affine = Affine::new(16 * 7 * 7, 10, Init::He, 14);
    let want = affine.forward(x.clone(), false).unwrap().mapv(|v| v.max(0.0));
    assert!(want.iter().any(|v| *v == 0.0) && want.iter().any(|v| *v > 0.0));
    assert_eq!(affine.forward_relu(x).unwrap(), want);
}

/// A layer that passes its input through and runs the ReLU after it in training too,
/// marking that by giving -42 everywhere forward and twice the gradient backward.
#[derive(Clone)]
struct TrainingFusionProbe;

impl Layer for TrainingFusionProbe {
    fn name(&self) -> &str {
        "TrainingFusionProbe"
    }
    fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, LayerError> {
        Ok(x)
    }
    fn fuses_relu_in_training(&self) -> bool {
        true
    }
    fn forward_relu_train(&mut self, x: Tensor) -> Result<Tensor, LayerError> {
        Ok(x.mapv(|_| -42.0))
    }
    fn backward(&mut self, dout: Tensor) -> Tensor {
        dout * 2.0
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }
    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}

#[test]
fn in_training_a_layer_that_fuses_the_relu_runs_it_and_the_relu_is_skipped_both_ways() {
    let x = random_input(&[2, 3, 4, 4], 0.0, 17);
    let dout = random_input(&[2, 3, 4, 4], 0.0, 18);
    let mut seq = Sequential::new().with(TrainingFusionProbe).with(Relu::new());
    assert_eq!(seq.forward(x.clone(), true).unwrap(), x.mapv(|_| -42.0));
    // the ReLU, never run forward, is not run backward (its backward would panic)
    assert_eq!(seq.backward(dout.clone()), &dout * 2.0);
    // a fusing layer with no ReLU after it runs its own two passes
    let mut seq = Sequential::new()
        .with(TrainingFusionProbe)
        .with(Relu::new())
        .with(TrainingFusionProbe);
    assert_eq!(seq.forward(x.clone(), true).unwrap(), x.mapv(|_| -42.0));
    assert_eq!(seq.backward(dout.clone()), &dout * 4.0);
    // a layer that does not fuse in training says so, and runs beside its ReLU
    let mut affine = Affine::new(3 * 4 * 4, 5, Init::He, 19);
    assert!(!affine.fuses_relu_in_training());
    assert!(matches!(
        affine.forward_relu_train(x.clone()),
        Err(LayerError::Invalid { .. })
    ));
    let mut seq = Sequential::new().with(FusionProbe).with(Relu::new());
    assert_eq!(seq.forward(x.clone(), true).unwrap(), x.mapv(|v| v.max(0.0)));
    let mask = x.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
    assert_eq!(seq.backward(dout.clone()), &dout * &mask);
}

#[test]
fn in_training_convolutions_and_their_relus_as_one_give_the_layers_one_by_one_bit_for_bit() {
    let x = random_input(&[5, 3, 9, 9], 0.0, 21);
    let dout = random_input(&[5, 16, 9, 9], 0.0, 22);
    for algo in [ConvAlgo::Auto, ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd] {
        let conv = |c, f, seed| {
            let mut conv = Convolution::new(c, f, 3, 3, 1, 1, Init::He, seed);
            conv.b.as_mut().unwrap().value = random_input(&[f], 0.0, seed + 1);
            conv.set_algo(algo);
            conv
        };
        let layers: Vec<Box<dyn Layer>> = vec![
            Box::new(conv(3, 16, 23)),
            Box::new(Relu::new()),
            Box::new(conv(16, 16, 25)),
            Box::new(Relu::new()),
        ];
        let mut seq: Sequential = layers.iter().map(|l| l.clone_box()).collect();
        let mut one_by_one = layers;
        let y = seq.forward(x.clone(), true).unwrap();
        let want = one_by_one
            .iter_mut()
            .try_fold(x.clone(), |x, l| l.forward(x, true))
            .unwrap();
        assert!(want.iter().any(|v| *v == 0.0) && want.iter().any(|v| *v > 0.0));
        assert_eq!(y, want, "{algo:?}");
        let dx = seq.backward(dout.clone());
        let want_dx = one_by_one.iter_mut().rev().fold(dout.clone(), |d, l| l.backward(d));
        assert_eq!(dx, want_dx, "{algo:?}");
        let grads =
            |p: Vec<(String, &dl_layers::Param)>| p.into_iter().map(|(_, p)| p.grad.clone()).collect::<Vec<_>>();
        let want_grads: Vec<Tensor> = one_by_one.iter().flat_map(|l| grads(l.params())).collect();
        assert_eq!(grads(seq.params()), want_grads, "{algo:?}");
        // the convolution's own contract: the ReLU's output forward, and backward the
        // gradient with respect to it, masked inside
        let (mut fused, mut plain) = (conv(3, 16, 27), conv(3, 16, 27));
        assert!(fused.fuses_relu_in_training());
        let y = plain.forward(x.clone(), true).unwrap();
        assert_eq!(fused.forward_relu_train(x.clone()).unwrap(), y.mapv(|v| v.max(0.0)));
        let masked = ndarray::Zip::from(&dout)
            .and(&y)
            .map_collect(|d, y| if *y > 0.0 { *d } else { 0.0 });
        assert_eq!(fused.backward(dout.clone()), plain.backward(masked), "{algo:?}");
        assert_eq!(fused.w.grad, plain.w.grad, "{algo:?}");
    }
}

#[test]
fn convolutions_their_relus_and_the_2x2_pooling_as_one_give_the_layers_one_by_one_bit_for_bit() {
    // 10 x 10 outputs pool as one pass; 9 x 9 ones (an odd side) take the layers'
    // own passes; a pooling of another window is never fused
    for (side, pool) in [
        (10, Pooling::max(2, 2, 2, 0)),
        (9, Pooling::max(2, 2, 2, 0)),
        (10, Pooling::max(3, 3, 2, 0)),
    ] {
        let x = random_input(&[7, 3, side, side], 0.0, 31);
        for algo in [ConvAlgo::Auto, ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd] {
            let conv = |c, f, seed| {
                let mut conv = Convolution::new(c, f, 3, 3, 1, 1, Init::He, seed);
                conv.b.as_mut().unwrap().value = random_input(&[f], 0.0, seed + 1);
                conv.set_algo(algo);
                conv
            };
            let layers: Vec<Box<dyn Layer>> = vec![
                Box::new(conv(3, 16, 33)),
                Box::new(Relu::new()),
                Box::new(conv(16, 16, 35)),
                Box::new(Relu::new()),
                Box::new(pool.clone()),
            ];
            let at = format!("{algo:?}, {side} x {side}, {:?}", pool.inference_op().unwrap());
            assert_eq!(layers[2].fuses_relu_pool(&[7, 16, side, side]), side % 2 == 0, "{at}");
            let mut seq: Sequential = layers.iter().map(|l| l.clone_box()).collect();
            let mut one_by_one = layers;
            // evaluation, then training
            let want = one_by_one
                .iter_mut()
                .try_fold(x.clone(), |x, l| l.forward(x, false))
                .unwrap();
            assert_eq!(seq.forward(x.clone(), false).unwrap(), want, "{at}");
            let y = seq.forward(x.clone(), true).unwrap();
            let want = one_by_one
                .iter_mut()
                .try_fold(x.clone(), |x, l| l.forward(x, true))
                .unwrap();
            assert!(want.iter().any(|v| *v == 0.0) && want.iter().any(|v| *v > 0.0));
            assert_eq!(y, want, "{at}");
            let dout = random_input(y.shape(), 0.0, 37);
            let dx = seq.backward(dout.clone());
            let want_dx = one_by_one.iter_mut().rev().fold(dout.clone(), |d, l| l.backward(d));
            assert_eq!(dx, want_dx, "{at}");
            let grads =
                |p: Vec<(String, &dl_layers::Param)>| p.into_iter().map(|(_, p)| p.grad.clone()).collect::<Vec<_>>();
            let want_grads: Vec<Tensor> = one_by_one.iter().flat_map(|l| grads(l.params())).collect();
            assert_eq!(grads(seq.params()), want_grads, "{at}");
        }
    }
    // the convolution's own contract: an error where it cannot pool, and the default
    // of a layer that cannot
    let mut conv = Convolution::new(3, 4, 3, 3, 1, 1, Init::He, 39);
    let odd = random_input(&[2, 3, 9, 9], 0.0, 40);
    assert!(!conv.fuses_relu_pool(&[2, 3, 9, 9]) && !conv.fuses_relu_pool(&[2, 5, 10, 10]));
    assert!(matches!(
        conv.forward_relu_pool(odd.clone(), true),
        Err(LayerError::Invalid { .. })
    ));
    let mut affine = Affine::new(3 * 9 * 9, 5, Init::He, 41);
    assert!(!affine.fuses_relu_pool(&[2, 3, 9, 9]));
    assert!(matches!(
        affine.forward_relu_pool(odd, false),
        Err(LayerError::Invalid { .. })
    ));
}

/// A layer that passes its input through and runs the ReLU and the 2x2 pooling after it
/// when asked, marking that by giving -42 everywhere (unpooled: the marker, not the
/// values) and twice the gradient backward.
#[derive(Clone)]
struct PoolFusionProbe;

impl Layer for PoolFusionProbe {
    fn name(&self) -> &str {
        "PoolFusionProbe"
    }
    fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, LayerError> {
        Ok(x)
    }
    fn fuses_relu_pool(&self, _input: &[usize]) -> bool {
        true
    }
    fn forward_relu_pool(&mut self, x: Tensor, _train: bool) -> Result<Tensor, LayerError> {
        Ok(x.mapv(|_| -42.0))
    }
    fn backward(&mut self, dout: Tensor) -> Tensor {
        dout * 2.0
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }
    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}

#[test]
fn a_layer_the_relu_and_the_2x2_pooling_run_as_one_wherever_they_stand_and_are_skipped_backward() {
    let x = random_input(&[2, 3, 4, 4], 0.0, 51);
    let marker = x.mapv(|_| -42.0);
    let pool = || Pooling::max(2, 2, 2, 0);
    for train in [false, true] {
        // first in the chain, and after another layer
        let mut first = Sequential::new().with(PoolFusionProbe).with(Relu::new()).with(pool());
        assert_eq!(first.forward(x.clone(), train).unwrap(), marker, "train {train}");
        let mut second = Sequential::new()
            .with(FusionProbe)
            .with(PoolFusionProbe)
            .with(Relu::new())
            .with(pool());
        assert_eq!(second.forward(x.clone(), train).unwrap(), marker, "train {train}");
        if train {
            // the ReLU and the pooling, never run forward, are not run backward (their
            // backward would panic)
            let dout = random_input(&[2, 3, 4, 4], 0.0, 52);
            assert_eq!(first.backward(dout.clone()), &dout * 2.0);
            assert_eq!(second.backward(dout.clone()), &dout * 2.0);
        }
    }
    // a pooling of another window, or no ReLU between: the layers one by one
    let mut other = Sequential::new()
        .with(PoolFusionProbe)
        .with(Relu::new())
        .with(Pooling::max(2, 2, 1, 0));
    assert_eq!(other.forward(x.clone(), false).unwrap().shape(), &[2, 3, 3, 3]);
    let mut no_relu = Sequential::new().with(PoolFusionProbe).with(pool());
    assert_eq!(no_relu.forward(x.clone(), false).unwrap().shape(), &[2, 3, 2, 2]);
}

/// Every layer's copy for inference evaluates as the layer does, bit for bit, and keeps
/// nothing of the training forward before it: its `backward` wants one of its own.
#[test]
fn every_layers_copy_for_inference_evaluates_alike_and_keeps_no_training_state() {
    use dl_layers::{BinaryAffine, BinaryConvolution, GlobalAveragePooling, PoolKind, Sigmoid, Sign};
    let image = [3, 2, 6, 4];
    let conv = |c, f, k, seed| Convolution::new(c, f, k, k, 1, k / 2, Init::He, seed);
    let layers: Vec<Box<dyn Layer>> = vec![
        Box::new(Affine::new(48, 4, Init::He, 1)),
        Box::new(conv(2, 3, 3, 2)),
        Box::new(BatchNormalization::new(2, BatchNormMode::PerChannel)),
        Box::new(BatchNormalization::new(48, BatchNormMode::PerActivation)),
        Box::new(Relu::new()),
        Box::new(Sigmoid::new()),
        Box::new(Pooling::new(PoolKind::Max, 2, 2, 2, 0)),
        Box::new(Pooling::new(PoolKind::Average, 3, 2, 1, 1)),
        Box::new(Dropout::new(0.5, 1)),
        Box::new(GlobalAveragePooling::new()),
        Box::new(
            Concat::new()
                .with_branch("a", Sequential::new().with(conv(2, 1, 1, 3)))
                .with_branch("b", Sequential::new().with(conv(2, 4, 3, 4)).with(Relu::new())),
        ),
        Box::new(Residual::new(
            Sequential::new().with(conv(2, 2, 3, 5)).with(Relu::new()),
            None,
        )),
        Box::new(Residual::new(
            Sequential::new().with(conv(2, 3, 3, 6)),
            Some(Sequential::new().with(conv(2, 3, 1, 7))),
        )),
        Box::new(
            Sequential::new()
                .with(conv(2, 3, 3, 8))
                .with(Relu::new())
                .with(Pooling::max(2, 2, 2, 0)),
        ),
        Box::new(Sign::new()),
        Box::new(BinaryAffine::new(48, 4, Init::Xavier, 5)),
        Box::new(BinaryConvolution::new(2, 3, 3, 3, 1, 1, Init::Xavier, 6)),
    ];
    let x = random_input(&image, 0.0, 7);
    let other = random_input(&image, 0.0, 8);
    for mut layer in layers {
        let name = layer.name().to_string();
        let y = layer.forward(x.clone(), true).unwrap();
        let mut copy = layer.clone_for_inference();
        assert_eq!(copy.name(), name);
        let want = layer.forward(other.clone(), false).unwrap();
        let got = copy.forward(other.clone(), false).unwrap();
        let bits = |t: &Tensor| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{name}: evaluation");
        let dout = random_input(y.shape(), 0.0, 9);
        let orphan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| copy.backward(dout.clone())));
        assert!(orphan.is_err(), "{name}: the copy kept the training forward");
        // the layer itself still has it
        assert_eq!(layer.backward(dout).shape(), &image, "{name}");
    }
}
