//! Every model of the registry, run by the inference engine at each precision, against
//! the training code's own evaluation forward.

use dl_infer::{InferError, Inference, InferenceNetwork, Precision};
use dl_layers::{Layer, Tensor};
use dl_models::{ModelConfig, Network, MODEL_KINDS};
use rand::{Rng, SeedableRng};

fn images(n: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_shape_fn(vec![n, 1, 28, 28], |_| rng.gen_range(0.0..1.0))
}

/// The model of `kind` (with batch norm in DeepConvNet too), its batch-norm running
/// statistics moved away from their starting values by a few training forwards, so
/// that the folded scale and shift are not the identity.
fn model(kind: &str) -> Network {
    let mut config = ModelConfig::default_for(kind).unwrap();
    if kind == "DeepConvNet" {
        config = config.with_overrides(r#"{"use_batchnorm": true}"#).unwrap();
    }
    let mut net = config.build(7).unwrap();
    for seed in 0..3 {
        net.predict(images(8, 100 + seed), true).unwrap();
    }
    net
}

fn max_abs(a: &Tensor) -> f32 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[test]
fn f32_inference_is_the_networks_evaluation_forward() {
    for kind in MODEL_KINDS {
        let mut net = model(kind);
        let x = images(6, 1);
        let want = net.predict(x.clone(), false).unwrap();
        let engine = InferenceNetwork::<f32>::new(net.root()).unwrap();
        let got = engine.predict(&x).unwrap();
        assert_eq!(got.shape(), want.shape(), "{kind}");
        // Same formulas, summed in another order (GEMM blocks, Winograd, folded BN).
        let tol = 1e-4 * max_abs(&want).max(1.0);
        let err = got.iter().zip(&want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(err <= tol, "{kind}: f32 inference differs by {err} (tolerance {tol})");
    }
}

/// At 16 bits every score is the f32 one within what the stored precision allows: the
/// relative error of one rounding (2^-11 for f16, 2^-8 for bf16) grown over the
/// network's depth, and every image whose two best f32 scores lie further apart than
/// that error gets f32's class.
#[test]
fn sixteen_bit_inference_stays_close_to_f32() {
    // not a binarized network: a value rounded to 16 bits just above or below zero flips
    // a sign, and a flipped sign moves every sum it feeds by 2; its 16-bit form is no
    // approximation of its f32 one (dl_infer::binary runs it exactly instead)
    for kind in MODEL_KINDS.into_iter().filter(|&k| k != "BinaryConvNet") {
        let net = model(kind);
        let x = images(32, 2);
        let full = Inference::new(net.root(), Precision::F32).unwrap();
        let want = full.predict(&x).unwrap();
        let scale = max_abs(&want).max(1e-3);
        for (precision, bound) in [(Precision::F16, 0.02), (Precision::Bf16, 0.1)] {
            let half = Inference::new(net.root(), precision).unwrap();
            assert_eq!(half.precision(), precision);
            let got = half.predict(&x).unwrap();
            let err = got.iter().zip(&want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs())) / scale;
            assert!(err < bound, "{kind} {precision}: relative error {err}");
            assert!(err > 0.0, "{kind} {precision}: 16 bits must round somewhere");
            // wherever f32's two best scores are further apart than twice the largest
            // error, 16 bits pick the same class
            let (classes, half_classes) = (full.classify(&x, 8).unwrap(), half.classify(&x, 8).unwrap());
            let mut clear = 0;
            for (i, row) in want.outer_iter().enumerate() {
                let mut scores: Vec<f32> = row.iter().copied().collect();
                scores.sort_by(|a, b| b.total_cmp(a));
                if scores[0] - scores[1] > 2.0 * err * scale {
                    clear += 1;
                    assert_eq!(classes[i], half_classes[i], "{kind} {precision}: image {i}");
                }
            }
            assert!(
                clear >= 16,
                "{kind} {precision}: {clear} of 32 images are clear of the error"
            );
            assert_eq!(2 * half.weight_bytes(), full.weight_bytes(), "{kind}");
        }
    }
}

/// Each batch norm's gamma and beta become a scale and a shift, its running statistics
/// are folded in: the stored values are the parameters, two bytes each.
#[test]
fn weight_bytes_count_every_parameter() {
    for kind in MODEL_KINDS {
        let net = model(kind);
        let engine = Inference::new(net.root(), Precision::F16).unwrap();
        assert_eq!(engine.weight_bytes(), 2 * net.param_count(), "{kind}");
    }
}

#[test]
fn one_network_serves_many_threads_with_the_same_answers() {
    let net = model("ResNet");
    let engine = Inference::new(net.root(), Precision::F16).unwrap();
    let x = images(4, 3);
    let want = engine.predict(&x).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| engine.predict(&x).unwrap())).collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), want);
        }
    });
}

#[test]
fn classify_and_accuracy_go_batch_by_batch() {
    let net = model("SimpleConvNet");
    let engine = Inference::new(net.root(), Precision::Bf16).unwrap();
    let x = images(7, 4);
    let whole = engine.classify(&x, 7).unwrap();
    assert_eq!(engine.classify(&x, 3).unwrap(), whole);
    assert_eq!(engine.accuracy(&x, &whole, 2).unwrap(), 1.0);
    let mut wrong = whole.clone();
    wrong[0] = (wrong[0] + 1) % 10;
    wrong[5] = (wrong[5] + 1) % 10;
    assert_eq!(engine.accuracy(&x, &wrong, 4).unwrap(), 5.0 / 7.0);
    assert!(matches!(
        engine.accuracy(&x, &whole[1..], 4),
        Err(InferError::Invalid { .. })
    ));
}

#[test]
fn bad_input_is_a_typed_error() {
    let net = model("DeepConvNet");
    let engine = Inference::new(net.root(), Precision::F16).unwrap();
    let err = engine.predict(&Tensor::zeros(vec![2, 3, 28, 28])).unwrap_err();
    assert!(
        matches!(&err, InferError::Shape { op: "Convolution", given, .. } if given == &[2, 3, 28, 28]),
        "{err}"
    );
    let err = engine.predict(&Tensor::zeros(vec![2, 1, 2, 2])).unwrap_err();
    assert!(matches!(err, InferError::Invalid { op: "Pooling", .. }), "{err}");
}

/// A layer without an inference form is refused by name.
#[test]
fn a_layer_without_an_inference_form_is_refused() {
    #[derive(Clone)]
    struct Custom;
    impl Layer for Custom {
        fn name(&self) -> &str {
            "Custom"
        }
        fn forward(&mut self, x: Tensor, _: bool) -> Result<Tensor, dl_layers::LayerError> {
            Ok(x)
        }
        fn backward(&mut self, dout: Tensor) -> Tensor {
            dout
        }
        fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, dl_layers::LayerError> {
            Ok(input.to_vec())
        }
        fn clone_box(&self) -> Box<dyn Layer> {
            Box::new(self.clone())
        }
    }
    let root = dl_layers::Sequential::new().with(dl_layers::Relu::new()).with(Custom);
    let err = Inference::new(&root, Precision::F16).unwrap_err();
    assert!(err.to_string().contains("Custom"), "{err}");
}

/// Ops whose parts do not fit are refused when the network is built, never at run time.
#[test]
fn ops_that_do_not_fit_are_refused_by_name() {
    use dl_layers::{Op, PoolKind};
    let t = |shape: &[usize]| Tensor::zeros(shape.to_vec());
    let conv = |w: &[usize], b: Option<&[usize]>, stride| Op::Convolution {
        w: t(w),
        b: b.map(t),
        stride,
        pad: 0,
    };
    let refused = [
        (conv(&[4, 1, 3], None, 1), "Convolution"),
        (conv(&[4, 1, 3, 3], Some(&[3]), 1), "Convolution"),
        (conv(&[4, 1, 3, 3], None, 0), "Convolution"),
        (conv(&[0, 1, 3, 3], None, 1), "Convolution"),
        (
            Op::Affine {
                w: t(&[5, 3]),
                b: t(&[5]),
            },
            "Affine",
        ),
        (
            Op::Affine {
                w: t(&[0, 3]),
                b: t(&[3]),
            },
            "Affine",
        ),
        (
            Op::Pooling {
                kind: PoolKind::Max,
                ph: 2,
                pw: 2,
                stride: 2,
                pad: 2,
            },
            "Pooling",
        ),
        (
            Op::Pooling {
                kind: PoolKind::Average,
                ph: 3,
                pw: 2,
                stride: 1,
                pad: 2,
            },
            "Pooling",
        ),
        (
            Op::Scale {
                scale: vec![1.0; 3],
                shift: vec![0.0; 2],
                per_channel: true,
            },
            "BatchNormalization",
        ),
        (Op::Concat(Vec::new()), "Concat"),
    ];
    for (op, name) in refused {
        // inside a block as well as at the top
        for op in [
            op.clone(),
            Op::Residual {
                body: vec![op],
                shortcut: None,
            },
        ] {
            match InferenceNetwork::<f32>::from_op(&op) {
                Err(InferError::Invalid { op, .. }) => assert_eq!(op, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    let fine = Op::Sequential(vec![conv(&[2, 1, 3, 3], Some(&[2]), 1), Op::Relu]);
    let engine = InferenceNetwork::<f32>::from_op(&fine).unwrap();
    let y = engine.predict(&t(&[1, 1, 4, 4])).unwrap();
    assert_eq!(y.shape(), &[1, 2, 2, 2]);
}

/// A network that takes images of any size keeps one convolution plan per size, and
/// each size gets its own: the same answers as a network that saw only that size.
#[test]
fn each_image_size_gets_its_own_plan() {
    use dl_layers::{Affine, Convolution, GlobalAveragePooling, Init, Relu, Sequential};
    let root = Sequential::new()
        .with(Convolution::new(1, 4, 3, 3, 1, 1, Init::He, 1))
        .with(Relu::new())
        .with(GlobalAveragePooling::new())
        .with(Affine::new(4, 3, Init::He, 2));
    let engine = InferenceNetwork::<f32>::new(&root).unwrap();
    let (big, small) = (
        images(2, 5),
        images(2, 6).slice_move(ndarray::s![.., .., ..20, ..17]).into_dyn(),
    );
    let big_first = engine.predict(&big).unwrap();
    assert_eq!(engine.predict(&big).unwrap(), big_first, "the cached plan");
    let small_after = engine.predict(&small).unwrap();
    let fresh = InferenceNetwork::<f32>::new(&root).unwrap();
    assert_eq!(small_after, fresh.predict(&small).unwrap());
    assert_eq!(engine.predict(&big).unwrap(), big_first);
}

/// The element-wise ops against their formulas, at f32 (exact) and f16 (rounded once).
#[test]
fn sigmoid_and_both_batch_norm_forms_compute_their_formulas() {
    use dl_layers::Op;
    let x = Tensor::from_shape_vec(vec![1, 2, 1, 2], vec![-2.0, -0.5, 0.25, 3.0]).unwrap();
    let run = |op: Op| InferenceNetwork::<f32>::from_op(&op).unwrap().predict(&x).unwrap();
    let sigmoid = run(Op::Sigmoid);
    for (y, v) in sigmoid.iter().zip(&x) {
        assert_eq!(*y, 1.0 / (1.0 + (-v).exp()));
    }
    // the book's form: one scale per value of the flattened image
    let flat = run(Op::Scale {
        scale: vec![1.0, 2.0, 3.0, 4.0],
        shift: vec![0.5, 0.0, -1.0, 0.0],
        per_channel: false,
    });
    assert_eq!(flat.as_slice().unwrap(), &[-1.5, -1.0, -0.25, 12.0]);
    // per channel: one scale per channel of (N, C, H, W)
    let channels = run(Op::Scale {
        scale: vec![2.0, -1.0],
        shift: vec![1.0, 0.5],
        per_channel: true,
    });
    assert_eq!(channels.as_slice().unwrap(), &[-3.0, 0.0, 0.25, -2.5]);
    let half = InferenceNetwork::<dl_infer::f16>::from_op(&Op::Sigmoid)
        .unwrap()
        .predict(&x)
        .unwrap();
    for (h, f) in half.iter().zip(&sigmoid) {
        assert_eq!(*h, dl_infer::f16::from_f32(*f).to_f32());
    }
}

#[test]
fn inputs_of_the_wrong_shape_are_refused_by_each_op() {
    use dl_layers::Op;
    let t = |shape: &[usize]| Tensor::zeros(shape.to_vec());
    let affine = InferenceNetwork::<f32>::from_op(&Op::Affine {
        w: t(&[6, 3]),
        b: t(&[3]),
    })
    .unwrap();
    assert_eq!(affine.predict(&t(&[2, 2, 3])).unwrap().shape(), &[2, 3]);
    for bad in [t(&[2, 7]), t(&[6])] {
        let err = affine.predict(&bad).unwrap_err();
        assert!(matches!(err, InferError::Shape { op: "Affine", .. }), "{err}");
    }
    for per_channel in [false, true] {
        let scale = Op::Scale {
            scale: vec![1.0; 3],
            shift: vec![0.0; 3],
            per_channel,
        };
        let engine = InferenceNetwork::<f32>::from_op(&scale).unwrap();
        let fits = if per_channel { t(&[2, 3, 4, 4]) } else { t(&[2, 3]) };
        assert_eq!(engine.predict(&fits).unwrap().shape(), fits.shape());
        for bad in [t(&[2, 4, 1, 1]), t(&[3])] {
            let err = engine.predict(&bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    InferError::Shape {
                        op: "BatchNormalization",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}

/// Branches are joined only along the channels; a residual block adds only outputs of
/// one shape.
#[test]
fn blocks_join_only_outputs_that_fit() {
    use dl_layers::{Op, PoolKind};
    use ndarray::Dimension;
    let t = |shape: &[usize]| Tensor::from_shape_fn(shape.to_vec(), |d| d.as_array_view().sum() as f32);
    let identity = || Vec::new();
    let pool = || {
        vec![Op::Pooling {
            kind: PoolKind::Max,
            ph: 2,
            pw: 2,
            stride: 2,
            pad: 0,
        }]
    };
    let engine = |op: Op| InferenceNetwork::<f32>::from_op(&op).unwrap();
    let x = t(&[2, 3, 4, 4]);
    // outputs of (N, C) join too: two global average poolings
    let gap = engine(Op::Concat(vec![
        vec![Op::GlobalAveragePooling],
        vec![Op::GlobalAveragePooling],
    ]));
    let y = gap.predict(&x).unwrap();
    assert_eq!(y.shape(), &[2, 6]);
    let row: Vec<f32> = y.iter().skip(6).copied().collect();
    assert_eq!(row[..3], row[3..]);
    assert_eq!(
        row[..3],
        [4.0, 5.0, 6.0],
        "image 1: the mean of 1 + c + h + w over h, w < 4"
    );
    for (branches, input) in [
        // other heights and widths
        (vec![pool(), identity()], x.clone()),
        // other ranks
        (vec![vec![Op::GlobalAveragePooling], identity()], x.clone()),
        // no channel axis at all
        (vec![identity(), identity()], t(&[5])),
    ] {
        let err = engine(Op::Concat(branches)).predict(&input).unwrap_err();
        assert!(matches!(err, InferError::Invalid { op: "Concat", .. }), "{err}");
    }
    let residual = engine(Op::Residual {
        body: pool(),
        shortcut: None,
    });
    let err = residual.predict(&x).unwrap_err();
    assert!(matches!(err, InferError::Shape { op: "Residual", .. }), "{err}");
    let fits = engine(Op::Residual {
        body: pool(),
        shortcut: Some(pool()),
    });
    let y = fits.predict(&x).unwrap();
    let pooled = engine(Op::Sequential(pool())).predict(&x).unwrap();
    assert_eq!(y, pooled.mapv(|v| 2.0 * v), "relu(pool + pool) of non-negative values");
}
