//! Post-training quantization: the integer network against the f32 one it came from,
//! every int8 kernel against the scalar one bit for bit, the file format against
//! itself and against broken files, and the layers that have no integer form.

use dl_infer::{InferError, Inference, Precision, QuantizedNetwork};
use dl_layers::{Op, PoolKind, Tensor};
use dl_models::{ModelConfig, Network};
use dl_tensor::int8::Int8Kernel;
use dl_tensor::Isa;
use rand::{Rng, SeedableRng};

fn images(n: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_shape_fn(vec![n, 1, 28, 28], |_| rng.gen_range(0.0..1.0))
}

/// DeepConvNet with batch norm (so that folding it is tested), its running statistics
/// moved by a few training forwards.
fn deep_convnet(batchnorm: bool) -> Network {
    let config = ModelConfig::default_for("DeepConvNet")
        .unwrap()
        .with_overrides(&format!(r#"{{"use_batchnorm": {batchnorm}}}"#))
        .unwrap();
    let mut net = config.build(7).unwrap();
    for seed in 0..3 {
        net.predict(images(8, 100 + seed), true).unwrap();
    }
    net
}

fn max_abs(a: &Tensor) -> f32 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// The f32 engine's scores of `ops` on `x`.
fn float_scores(ops: &Op, x: &Tensor) -> Tensor {
    dl_infer::InferenceNetwork::<f32>::from_op(ops)
        .unwrap()
        .predict(x)
        .unwrap()
}

/// `got` differs from `want` by at most 3% of `want`'s largest magnitude, score by score.
fn assert_close(got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape());
    let err = got.iter().zip(want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(err <= 0.03 * max_abs(want), "{err} against {}", max_abs(want));
}

#[test]
fn int8_scores_stay_close_to_f32() {
    for batchnorm in [false, true] {
        let net = deep_convnet(batchnorm);
        let q = QuantizedNetwork::quantize(net.root(), &images(64, 1)).unwrap();
        let x = images(32, 2);
        let want = Inference::new(net.root(), Precision::F32).unwrap().predict(&x).unwrap();
        let got = q.predict(&x).unwrap();
        assert_eq!(got.shape(), want.shape());
        let err = got.iter().zip(&want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
        // 8 bits through 8 layers: a few percent of the scores' range
        let bound = 0.05 * max_abs(&want);
        assert!(
            err <= bound,
            "batchnorm {batchnorm}: int8 differs by {err} (bound {bound})"
        );
        assert!(err > 0.0, "int8 is not f32");
    }
}

#[test]
fn every_kernel_gives_the_same_scores_bit_for_bit() {
    let net = deep_convnet(true);
    let q = QuantizedNetwork::quantize(net.root(), &images(16, 3)).unwrap();
    assert_eq!(q.kernel(), Int8Kernel::active());
    let x = images(13, 4);
    let scalar = q.clone().at(Isa::Scalar);
    assert_eq!(scalar.kernel(), Int8Kernel::Scalar);
    let want = scalar.predict(&x).unwrap();
    for isa in Isa::supported_levels() {
        let at = q.clone().at(isa);
        assert_eq!(at.kernel(), Int8Kernel::for_isa(isa));
        let got = at.predict(&x).unwrap();
        assert!(
            got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}",
            at.kernel()
        );
    }
}

#[test]
fn the_file_round_trips_and_is_four_times_smaller() {
    let net = deep_convnet(false);
    let q = QuantizedNetwork::quantize(net.root(), &images(16, 5)).unwrap();
    let bytes = q.to_bytes();
    assert!(QuantizedNetwork::is_quantized_file(&bytes));
    let back = QuantizedNetwork::from_bytes(&bytes).unwrap();
    assert_eq!(back.to_bytes(), bytes);
    assert_eq!(back.input_params(), q.input_params());
    let x = images(5, 6);
    assert_eq!(back.predict(&x).unwrap(), q.predict(&x).unwrap());
    let f32_bytes = net.params_to_bytes().len();
    let ratio = f32_bytes as f64 / bytes.len() as f64;
    // the weights are 4x smaller; the per-channel scales, i32 biases and header cost
    // a little of that
    assert!(
        ratio > 3.7,
        "f32 file {f32_bytes} bytes, int8 {} ({ratio:.2}x)",
        bytes.len()
    );
    let params: usize = net.params().iter().map(|(_, t)| t.len()).sum();
    let outputs: usize = net
        .params()
        .iter()
        .filter(|(n, _)| n.starts_with('b'))
        .map(|(_, t)| t.len())
        .sum();
    assert_eq!(q.weight_bytes(), (params - outputs) + 8 * outputs);
}

#[test]
fn broken_files_are_format_errors() {
    let net = deep_convnet(false);
    let bytes = QuantizedNetwork::quantize(net.root(), &images(4, 7))
        .unwrap()
        .to_bytes();
    let format = |b: &[u8]| match QuantizedNetwork::from_bytes(b) {
        Err(InferError::Format(m)) => m,
        other => panic!("expected a format error, got {other:?}"),
    };
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        format(&bytes[..cut]);
    }
    // an f32 parameter file is not a quantized one
    let plain = net.params_to_bytes();
    assert!(!QuantizedNetwork::is_quantized_file(&plain));
    assert!(format(&plain).contains("not a quantized network"));
    // hostile metadata: same tensors, edited description
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = meta.metadata().as_ref().unwrap()["dlfs-int8"].clone();
    let rewrite = |json: String, drop: Option<&str>| {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| Some(n.as_str()) != drop)
            .collect();
        let meta = std::collections::HashMap::from([("dlfs-int8".to_string(), json)]);
        safetensors::serialize(views, &Some(meta)).unwrap()
    };
    assert!(format(&rewrite(json.replace("\"version\":1", "\"version\":9"), None)).contains("version 9"));
    assert!(format(&rewrite(json.replacen("\"stride\":1", "\"stride\":0", 1), None)).contains("stride 0"));
    assert!(format(&rewrite("{".into(), None)).contains("metadata"));
    assert!(format(&rewrite(json.clone(), Some("0.bias"))).contains("`0.bias` missing"));
    let no_last = json.replace("\"output\":null", "\"output\":{\"scale\":1.0,\"zero_point\":0}");
    assert!(format(&rewrite(no_last, None)).contains("only the last layer"));
    let bad_scale = json.replacen("\"scale\":", "\"scale\":-", 2);
    assert!(format(&rewrite(bad_scale, None)).contains("scale"));
}

#[test]
fn layers_without_an_integer_form_are_refused() {
    let conv = || Op::Convolution {
        w: Tensor::from_elem(vec![2, 1, 3, 3], 0.1),
        b: None,
        stride: 1,
        pad: 1,
    };
    let x = images(2, 8);
    let refuse = |ops: Vec<Op>, want: &str| {
        let err = QuantizedNetwork::quantize_op(&Op::Sequential(ops), &x).unwrap_err();
        assert!(matches!(err, InferError::Invalid { op: "int8", .. }), "{err}");
        assert!(err.to_string().contains(want), "{err} lacks {want:?}");
    };
    refuse(vec![conv(), Op::Sigmoid], "sigmoid");
    refuse(
        vec![
            conv(),
            Op::Pooling {
                kind: PoolKind::Average,
                ph: 2,
                pw: 2,
                stride: 2,
                pad: 0,
            },
        ],
        "average pooling",
    );
    refuse(vec![conv(), Op::GlobalAveragePooling], "global average");
    refuse(
        vec![Op::Residual {
            body: vec![conv()],
            shortcut: None,
        }],
        "residual",
    );
    refuse(vec![Op::Concat(vec![vec![conv()]])], "inception");
    refuse(vec![Op::Relu, conv()], "before any convolution");
    refuse(vec![conv(), Op::Multiply(-1.0)], "multiplier of -1");
    let bn = Op::Scale {
        scale: vec![1.0, 2.0],
        shift: vec![0.0, 1.0],
        per_channel: true,
    };
    refuse(vec![conv(), Op::Relu, bn.clone()], "batch norm after ReLU");
    let flat_bn = Op::Scale {
        scale: vec![1.0, 2.0],
        shift: vec![0.0, 1.0],
        per_channel: false,
    };
    refuse(vec![conv(), flat_bn], "batch norm of 2 features");
    refuse(
        vec![
            conv(),
            Op::Pooling {
                kind: PoolKind::Max,
                ph: 2,
                pw: 2,
                stride: 2,
                pad: 0,
            },
        ],
        "must end with",
    );
    let err = QuantizedNetwork::quantize_op(&Op::Sequential(vec![conv()]), &images(0, 1)).unwrap_err();
    assert!(err.to_string().contains("no calibration"), "{err}");
    // folded: batch norm straight after the convolution, dropout and ReLU after pooling
    let ok = QuantizedNetwork::quantize_op(
        &Op::Sequential(vec![
            conv(),
            bn,
            Op::Pooling {
                kind: PoolKind::Max,
                ph: 2,
                pw: 2,
                stride: 2,
                pad: 0,
            },
            Op::Relu,
            Op::Multiply(0.5),
            Op::Affine {
                w: Tensor::from_elem(vec![2 * 14 * 14, 3], 0.01),
                b: Tensor::zeros(vec![3]),
            },
        ]),
        &x,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn folded_layers_compute_what_the_float_network_does() {
    // conv -> BN -> max pool -> ReLU -> dropout x0.5 -> affine: the integer network's
    // scores against the f32 engine's on the same ops
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let w = Tensor::from_shape_fn(vec![4, 1, 3, 3], |_| rng.gen_range(-0.5..0.5));
    let ops = Op::Sequential(vec![
        Op::Convolution {
            w,
            b: Some(Tensor::from_shape_vec(vec![4], vec![0.1, -0.2, 0.3, 0.0]).unwrap()),
            stride: 1,
            pad: 1,
        },
        Op::Scale {
            scale: vec![1.5, 0.5, 2.0, 1.0],
            shift: vec![0.1, 0.0, -0.3, 0.2],
            per_channel: true,
        },
        Op::Pooling {
            kind: PoolKind::Max,
            ph: 2,
            pw: 2,
            stride: 2,
            pad: 0,
        },
        Op::Relu,
        Op::Multiply(0.5),
        Op::Affine {
            w: Tensor::from_shape_fn(vec![4 * 14 * 14, 5], |_| rng.gen_range(-0.1..0.1)),
            b: Tensor::from_shape_vec(vec![5], vec![0.0, 0.1, 0.2, -0.1, 0.05]).unwrap(),
        },
    ]);
    let x = images(20, 10);
    let q = QuantizedNetwork::quantize_op(&ops, &x).unwrap();
    let want = float_scores(&ops, &x);
    let got = q.predict(&x).unwrap();
    assert_close(&got, &want);
}

#[test]
fn a_network_that_ends_in_a_convolution_scores_every_image() {
    // the last layer a convolution: its f32 maps, in NCHW order, for every image of
    // every chunk
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(41);
    let ops = Op::Sequential(vec![
        Op::Convolution {
            w: Tensor::from_shape_fn(vec![4, 1, 3, 3], |_| rng.gen_range(-0.5..0.5)),
            b: Some(Tensor::from_shape_fn(vec![4], |_| rng.gen_range(-0.1..0.1))),
            stride: 1,
            pad: 1,
        },
        Op::Relu,
        Op::Convolution {
            w: Tensor::from_shape_fn(vec![3, 4, 3, 3], |_| rng.gen_range(-0.5..0.5)),
            b: None,
            stride: 2,
            pad: 0,
        },
    ]);
    let x = images(13, 42);
    let q = QuantizedNetwork::quantize_op(&ops, &x).unwrap();
    let got = q.predict(&x).unwrap();
    assert_eq!(got.shape(), [13, 3, 13, 13]);
    assert_close(&got, &float_scores(&ops, &x));
    for i in [0, 1, 7, 12] {
        let one = x.slice_axis(ndarray::Axis(0), (i..i + 1).into()).to_owned();
        let alone = q.predict(&one).unwrap();
        assert_eq!(
            alone.as_slice().unwrap(),
            got.slice_axis(ndarray::Axis(0), (i..i + 1).into()).as_slice().unwrap()
        );
    }
}

#[test]
fn wrong_inputs_are_shape_errors() {
    let net = deep_convnet(false);
    let q = QuantizedNetwork::quantize(net.root(), &images(4, 11)).unwrap();
    let err = q.predict(&Tensor::zeros(vec![2, 3, 28, 28])).unwrap_err();
    assert!(matches!(err, InferError::Shape { .. }), "{err}");
    let err = q.predict(&Tensor::zeros(vec![5])).unwrap_err();
    assert!(matches!(err, InferError::Shape { .. }), "{err}");
    let err = q.predict(&Tensor::zeros(vec![2, 1, 20, 20])).unwrap_err();
    assert!(matches!(err, InferError::Shape { op: "Affine", .. }), "{err}");
    assert_eq!(q.predict(&Tensor::zeros(vec![0, 1, 28, 28])).unwrap().shape(), [0, 10]);
    let t = vec![0usize; 3];
    let acc = q.accuracy(&images(3, 12), &t, 2).unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(q.accuracy(&images(3, 12), &t[..2], 2).is_err());
}

/// The shipped DeepConvNet, calibrated on 1000 training images, classifies 2000 other
/// training images as f32 does on all but a handful (the test set is left to
/// `cargo xtask eval --precision int8`).
#[test]
fn the_shipped_network_keeps_its_answers_in_int8() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let net = dl_models::load(root.join("crates/dl-models/weights/deep_convnet.safetensors")).unwrap();
    let mnist = dl_data::Mnist::load(root.join("datasets/mnist")).unwrap();
    let take = |from: usize, n: usize| {
        let px = &mnist.train.images[from * 784..(from + n) * 784];
        Tensor::from_shape_vec(vec![n, 1, 28, 28], px.iter().map(|&v| f32::from(v) / 255.0).collect()).unwrap()
    };
    let q = QuantizedNetwork::quantize(net.root(), &take(0, 1000)).unwrap();
    assert_eq!(q.input_params().zero_point, 0);
    assert_eq!(q.input_params().scale, 1.0 / 255.0);
    let x = take(20_000, 2000);
    let full = Inference::new(net.root(), Precision::F32)
        .unwrap()
        .classify(&x, 100)
        .unwrap();
    let int8 = q.classify(&x, 100).unwrap();
    let differ = full.iter().zip(&int8).filter(|(a, b)| a != b).count();
    assert!(differ <= 4, "{differ} of 2000 classes differ");
}

#[test]
fn a_batch_gives_each_image_the_scores_it_gets_alone() {
    // the batch is cut into chunks of a few images that run on their own threads and
    // buffers: any cut gives the same bytes
    let net = deep_convnet(true);
    let q = QuantizedNetwork::quantize(net.root(), &images(16, 30)).unwrap();
    let x = images(37, 31);
    let whole = q.predict(&x).unwrap();
    assert_eq!(whole.shape(), [37, 10]);
    for i in [0, 1, 17, 36] {
        let one = q
            .predict(&x.slice_axis(ndarray::Axis(0), (i..i + 1).into()).to_owned())
            .unwrap();
        assert_eq!(
            one.index_axis(ndarray::Axis(0), 0),
            whole.index_axis(ndarray::Axis(0), i),
            "image {i}"
        );
    }
    let two = (0..37)
        .step_by(5)
        .flat_map(|s| {
            let part = x.slice_axis(ndarray::Axis(0), (s..(s + 5).min(37)).into()).to_owned();
            q.predict(&part).unwrap().into_iter()
        })
        .collect::<Vec<_>>();
    assert_eq!(two, whole.iter().copied().collect::<Vec<_>>());
}

#[test]
fn a_multi_channel_input_is_read_in_its_channel_order() {
    // three input channels, each with its own filters, then a second network of
    // another shape in turn on the same threads (whose buffers serve both)
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(32);
    let ops = Op::Sequential(vec![
        Op::Convolution {
            w: Tensor::from_shape_fn(vec![8, 3, 3, 3], |_| rng.gen_range(-0.5..0.5)),
            b: Some(Tensor::from_shape_fn(vec![8], |_| rng.gen_range(-0.1..0.1))),
            stride: 1,
            pad: 1,
        },
        Op::Relu,
        Op::Affine {
            w: Tensor::from_shape_fn(vec![8 * 6 * 5, 4], |_| rng.gen_range(-0.1..0.1)),
            b: Tensor::zeros(vec![4]),
        },
    ]);
    // each channel on its own scale, so that reading them in another order would show
    let x = Tensor::from_shape_fn(vec![9, 3, 6, 5], |i| (i[1] as f32 + 1.0) * rng.gen_range(0.0..1.0));
    let q = QuantizedNetwork::quantize_op(&ops, &x).unwrap();
    let want = float_scores(&ops, &x);
    let got = q.predict(&x).unwrap();
    assert_eq!(got.shape(), [9, 4]);
    assert_close(&got, &want);
    // the same images straight into an affine layer, which reads them in (C, H, W)
    // order
    let affine = Op::Sequential(vec![Op::Affine {
        w: Tensor::from_shape_fn(vec![3 * 6 * 5, 4], |_| rng.gen_range(-0.3..0.3)),
        b: Tensor::zeros(vec![4]),
    }]);
    let qa = QuantizedNetwork::quantize_op(&affine, &x).unwrap();
    let want = float_scores(&affine, &x);
    assert_close(&qa.predict(&x).unwrap(), &want);
    // and into an affine layer that is not the last
    let two = Op::Sequential(vec![
        Op::Affine {
            w: Tensor::from_shape_fn(vec![3 * 6 * 5, 6], |_| rng.gen_range(-0.3..0.3)),
            b: Tensor::zeros(vec![6]),
        },
        Op::Relu,
        Op::Affine {
            w: Tensor::from_shape_fn(vec![6, 4], |_| rng.gen_range(-0.5..0.5)),
            b: Tensor::zeros(vec![4]),
        },
    ]);
    let q2 = QuantizedNetwork::quantize_op(&two, &x).unwrap();
    assert_close(&q2.predict(&x).unwrap(), &float_scores(&two, &x));
    let deep = deep_convnet(false);
    let qd = QuantizedNetwork::quantize(deep.root(), &images(8, 33)).unwrap();
    let d = images(20, 34);
    let want_deep = qd.predict(&d).unwrap();
    for _ in 0..3 {
        assert_eq!(q.predict(&x).unwrap(), got);
        assert_eq!(qd.predict(&d).unwrap(), want_deep);
    }
}

#[test]
fn a_flat_input_runs_through_affine_layers() {
    // the book's two-layer net on (N, 784) rows, with a signed input range (zero
    // point above 0)
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let ops = Op::Sequential(vec![
        Op::Affine {
            w: Tensor::from_shape_fn(vec![784, 50], |_| rng.gen_range(-0.1..0.1)),
            b: Tensor::from_shape_fn(vec![50], |_| rng.gen_range(-0.1..0.1)),
        },
        Op::Relu,
        Op::Affine {
            w: Tensor::from_shape_fn(vec![50, 10], |_| rng.gen_range(-0.3..0.3)),
            b: Tensor::zeros(vec![10]),
        },
    ]);
    let x = Tensor::from_shape_fn(vec![40, 784], |_| rng.gen_range(-1.0..1.0));
    let q = QuantizedNetwork::quantize_op(&ops, &x).unwrap();
    assert!(q.input_params().zero_point > 100 && q.input_params().zero_point < 155);
    let want = float_scores(&ops, &x);
    let got = q.predict(&x).unwrap();
    assert_eq!(got.shape(), [40, 10]);
    assert_close(&got, &want);
    let back = QuantizedNetwork::from_bytes(&q.to_bytes()).unwrap();
    assert_eq!(back.predict(&x).unwrap(), got);
}

#[test]
fn ops_whose_parts_do_not_fit_are_refused() {
    let x = images(2, 14);
    let refuse = |op: Op, want: &str| {
        let err = QuantizedNetwork::quantize_op(&Op::Sequential(vec![op]), &x).unwrap_err();
        assert!(matches!(err, InferError::Invalid { op: "int8", .. }), "{err}");
        assert!(err.to_string().contains(want), "{err} lacks {want:?}");
    };
    let conv = |shape: Vec<usize>, b: Option<Tensor>, stride: usize| Op::Convolution {
        w: Tensor::from_elem(shape, 0.1),
        b,
        stride,
        pad: 1,
    };
    refuse(conv(vec![2, 1, 3], None, 1), "filters of shape [2, 1, 3]");
    refuse(conv(vec![2, 0, 3, 3], None, 1), "filters of shape [2, 0, 3, 3]");
    refuse(conv(vec![2, 1, 3, 3], None, 0), "stride 0");
    refuse(
        conv(vec![2, 1, 3, 3], Some(Tensor::zeros(vec![3])), 1),
        "bias of shape [3] for 2 filters",
    );
    let affine = |w: Vec<usize>, b: usize| Op::Affine {
        w: Tensor::from_elem(w, 0.1),
        b: Tensor::zeros(vec![b]),
    };
    refuse(affine(vec![784, 10], 9), "affine weights [784, 10] and bias [9]");
    refuse(affine(vec![784, 0], 0), "affine weights [784, 0]");
    refuse(affine(vec![784, 10, 1], 10), "affine weights [784, 10, 1]");
    for k in [0.0, -2.0, f32::NAN, f32::INFINITY] {
        let err = QuantizedNetwork::quantize_op(
            &Op::Sequential(vec![conv(vec![2, 1, 3, 3], None, 1), Op::Multiply(k)]),
            &x,
        )
        .unwrap_err();
        assert!(err.to_string().contains("multiplier"), "{k}: {err}");
    }
    for (ph, pw, stride, pad) in [(2, 4, 2, 2), (4, 2, 2, 2), (2, 2, 0, 0)] {
        let pool = Op::Pooling {
            kind: PoolKind::Max,
            ph,
            pw,
            stride,
            pad,
        };
        let err = QuantizedNetwork::quantize_op(&Op::Sequential(vec![conv(vec![2, 1, 3, 3], None, 1), pool]), &x)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("pooling {ph}x{pw} stride {stride} pad {pad}")),
            "{err}"
        );
    }
    // dropout then ReLU then pooling all fold into the layer before them
    let ok = QuantizedNetwork::quantize_op(
        &Op::Sequential(vec![
            conv(vec![2, 1, 3, 3], Some(Tensor::zeros(vec![2])), 1),
            Op::Multiply(0.5),
            Op::Relu,
            Op::Relu,
        ]),
        &x,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn files_whose_parts_do_not_fit_are_refused() {
    let net = deep_convnet(false);
    let bytes = QuantizedNetwork::quantize(net.root(), &images(4, 15))
        .unwrap()
        .to_bytes();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = meta.metadata().as_ref().unwrap()["dlfs-int8"].clone();
    // the tensors of `bytes` with `name` replaced by (dtype, shape, data)
    let with = |name: &str, dtype: safetensors::Dtype, shape: Vec<usize>, data: Vec<u8>, json: &str| {
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            st.tensors().into_iter().filter(|(n, _)| n != name).collect();
        views.push((
            name.to_string(),
            safetensors::tensor::TensorView::new(dtype, shape, &data).unwrap(),
        ));
        let meta = std::collections::HashMap::from([("dlfs-int8".to_string(), json.to_string())]);
        let out = safetensors::serialize(views, &Some(meta)).unwrap();
        match QuantizedNetwork::from_bytes(&out) {
            Err(InferError::Format(m)) => m,
            other => panic!("expected a format error, got {other:?}"),
        }
    };
    use safetensors::Dtype::{F32, I32, I8};
    let m = with("0.weight", F32, vec![16, 1, 3, 3], vec![0; 16 * 9 * 4], &json);
    assert!(m.contains("`0.weight` is F32, expected I8"), "{m}");
    let m = with("0.weight", I8, vec![16, 9], vec![0; 16 * 9], &json);
    assert!(m.contains("step 0: weight of shape [16, 9]"), "{m}");
    let m = with("0.weight_scale", F32, vec![15], vec![0; 15 * 4], &json);
    assert!(m.contains("scales [15] and bias [16] for 16 outputs"), "{m}");
    let m = with("0.bias", I32, vec![17], vec![0; 17 * 4], &json);
    assert!(m.contains("scales [16] and bias [17]"), "{m}");
    let m = with("0.weight_scale", F32, vec![16], vec![0; 16 * 4], &json);
    assert!(m.contains("weight scales"), "{m}");
    let bad_pool = json.replacen("\"size\":[2,2]", "\"size\":[2,0]", 1);
    let m = with("0.bias", I32, vec![16], vec![0; 16 * 4], &bad_pool);
    assert!(m.contains("pooling [2, 0]"), "{m}");
    let bad_pool = json.replacen("\"size\":[2,2]", "\"size\":[0,2]", 1);
    let m = with("0.bias", I32, vec![16], vec![0; 16 * 4], &bad_pool);
    assert!(m.contains("pooling [0, 2]"), "{m}");
    let bad_pool = json.replacen("\"stride\":2,\"pad\":0", "\"stride\":0,\"pad\":0", 1);
    let m = with("0.bias", I32, vec![16], vec![0; 16 * 4], &bad_pool);
    assert!(m.contains("stride 0"), "{m}");
    // the affine layers' weights are (out, in)
    let last = json.matches("\"op\"").count() - 1;
    let m = with(&format!("{last}.weight"), I8, vec![10, 50, 1, 1], vec![0; 500], &json);
    assert!(m.contains("weight of shape [10, 50, 1, 1]"), "{m}");
    // a file that ends with a pooling step
    let pooled_end = json.replacen(
        "]}",
        ",{\"op\":\"max_pooling\",\"size\":[2,2],\"stride\":2,\"pad\":0}]}",
        1,
    );
    let m = with(
        "0.bias",
        I32,
        vec![16],
        vec![0; 16 * 4],
        &pooled_end.replace("\"output\":null", "\"output\":{\"scale\":1.0,\"zero_point\":0}"),
    );
    assert!(m.contains("must end with"), "{m}");
}
