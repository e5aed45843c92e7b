use dl_layers::gradcheck::random_input;
use dl_layers::{Labels, Layer, Tensor};
use dl_models::{DeepConvNet, DeepConvNetConfig, ModelError, Network, SimpleConvNet, SimpleConvNetConfig};

fn deep(seed: u64) -> Network {
    DeepConvNet::new(DeepConvNetConfig::default(), seed).into_network()
}

#[test]
fn deep_convnet_has_the_books_layers_names_and_shapes() {
    let net = deep(0);
    let layers: Vec<&str> = net.layers().iter().map(|l| l.name()).collect();
    let conv_block = ["Convolution", "Relu", "Convolution", "Relu", "Pooling"];
    let mut want: Vec<&str> = conv_block.iter().cycle().take(15).copied().collect();
    want.extend(["Affine", "Relu", "Dropout", "Affine", "Dropout"]);
    assert_eq!(layers, want);
    let shapes: Vec<(String, Vec<usize>)> = net.params().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    let expect = [
        ("W1", vec![16, 1, 3, 3]),
        ("b1", vec![16]),
        ("W2", vec![16, 16, 3, 3]),
        ("b2", vec![16]),
        ("W3", vec![32, 16, 3, 3]),
        ("b3", vec![32]),
        ("W4", vec![32, 32, 3, 3]),
        ("b4", vec![32]),
        ("W5", vec![64, 32, 3, 3]),
        ("b5", vec![64]),
        ("W6", vec![64, 64, 3, 3]),
        ("b6", vec![64]),
        ("W7", vec![1024, 50]),
        ("b7", vec![50]),
        ("W8", vec![50, 10]),
        ("b8", vec![10]),
    ];
    let expect: Vec<(String, Vec<usize>)> = expect.iter().map(|(n, s)| (n.to_string(), s.clone())).collect();
    assert_eq!(shapes, expect);
}

#[test]
fn a_deep_convnet_with_batch_norm_numbers_each_norm_after_its_layer() {
    let config = DeepConvNetConfig {
        use_batchnorm: true,
        ..DeepConvNetConfig::default()
    };
    let net = DeepConvNet::new(config, 0).into_network();
    let names: Vec<String> = net.params().into_iter().chain(net.buffers()).map(|(n, _)| n).collect();
    let mut want = Vec::new();
    for k in 1..=7 {
        for n in ["W", "b", "gamma", "beta", "running_mean", "running_var"] {
            want.push(format!("{n}{k}"));
        }
    }
    want.extend(["W8".into(), "b8".into()]);
    let mut sorted = names.clone();
    sorted.sort();
    want.sort();
    assert_eq!(sorted, want, "{names:?}");
}

#[test]
fn derive_seed_is_splitmix64_of_seed_and_index() {
    // values from an independent implementation (Python integers modulo 2^64) of
    // z = seed ^ (k * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019), then SplitMix64's mix;
    // saved seeds rebuild the same networks only while these stay fixed
    let cases = [
        (0, 0, 0x6db6_ca64_564d_aeaa),
        (42, 7, 0x2448_0789_cc68_6d62),
        (u64::MAX, 3, 0x9207_3baf_5d33_6b35),
        (1, 101, 0x85c6_ed6a_b25a_62fb),
    ];
    for (seed, k, want) in cases {
        assert_eq!(dl_models::derive_seed(seed, k), want, "derive_seed({seed}, {k})");
    }
}

#[test]
fn a_network_debug_prints_its_kind_and_layers() {
    let text = format!("{:?}", deep(0));
    assert!(text.starts_with("Network { kind: \"DeepConvNet\""), "{text}");
    assert!(text.contains("Convolution") && text.contains("Affine"), "{text}");
}

#[test]
fn he_initialisation_and_seeding() {
    let net = deep(3);
    for (name, t) in net.params() {
        if name.starts_with('b') {
            assert!(t.iter().all(|&v| v == 0.0), "{name} starts at zero");
            continue;
        }
        let fan_in: usize = if t.ndim() == 4 {
            t.shape()[1..].iter().product()
        } else {
            t.shape()[0]
        };
        let n = t.len() as f32;
        let std = (t.iter().map(|v| v * v).sum::<f32>() / n).sqrt();
        let want = (2.0 / fan_in as f32).sqrt();
        assert!((std / want - 1.0).abs() < 0.25, "{name}: std {std}, He {want}");
    }
    let same = deep(3);
    assert!(net.params().iter().zip(same.params()).all(|(a, b)| a.1 == b.1));
    let other = deep(4);
    assert!(net.params()[0].1 != other.params()[0].1);
}

#[test]
fn save_and_load_round_trip_gives_identical_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.safetensors");
    let mut a = deep(1);
    a.save_params(&path).unwrap();
    let mut b = deep(2);
    let x = random_input(&[3, 1, 28, 28], 0.0, 5).mapv(f32::abs);
    assert_ne!(
        a.predict(x.clone(), false).unwrap(),
        b.predict(x.clone(), false).unwrap()
    );
    b.load_params(&path).unwrap();
    assert_eq!(a.predict(x.clone(), false).unwrap(), b.predict(x, false).unwrap());
    // nothing but the file itself is left in the folder (atomic write)
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // the file is plain safetensors with the book's names
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("W7").unwrap().shape(), &[1024, 50]);
}

#[test]
fn loading_a_wrong_file_is_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let simple = dir.path().join("simple.safetensors");
    SimpleConvNet::new(SimpleConvNetConfig::default(), 0)
        .save_params(&simple)
        .unwrap();
    let mut net = deep(1);
    let before: Vec<Tensor> = net.params().into_iter().map(|(_, t)| t.clone()).collect();
    let e = net.load_params(&simple).unwrap_err();
    assert!(matches!(e, ModelError::Shape { ref name, .. } if name == "W1"), "{e}");
    assert!(
        e.to_string().contains("[16, 1, 3, 3]") && e.to_string().contains("[30, 1, 5, 5]"),
        "{e}"
    );
    let after: Vec<Tensor> = net.params().into_iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(before, after);

    // a file missing a tensor
    let bytes = {
        let w = vec![0u8; 16 * 9 * 4];
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![16, 1, 3, 3], &w).unwrap();
        safetensors::serialize(vec![("W1", v)], &None).unwrap()
    };
    let e = net.load_params_from_bytes(&bytes, "partial".as_ref()).unwrap_err();
    assert!(matches!(e, ModelError::Missing { ref name, .. } if name == "b1"), "{e}");

    // a file of another dtype
    let bytes = {
        let w = vec![0u8; 16 * 9 * 8];
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![16, 1, 3, 3], &w).unwrap();
        safetensors::serialize(vec![("W1", v)], &None).unwrap()
    };
    assert!(matches!(
        net.load_params_from_bytes(&bytes, "f64".as_ref()),
        Err(ModelError::DType { .. })
    ));

    // extra tensors
    let mut full = deep(1).params_to_bytes();
    let mut other = Network::new("x", dl_layers::Sequential::new());
    assert!(matches!(
        other.load_params_from_bytes(&full, "extra".as_ref()),
        Err(ModelError::Unexpected { .. })
    ));

    // garbage and truncation
    full.truncate(full.len() / 2);
    assert!(matches!(
        net.load_params_from_bytes(&full, "cut".as_ref()),
        Err(ModelError::Format { .. })
    ));
    assert!(matches!(
        net.load_params(dir.path().join("nope")),
        Err(ModelError::Io { .. })
    ));
    let after: Vec<Tensor> = net.params().into_iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(before, after);
}

#[test]
fn saving_into_a_missing_folder_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let e = deep(0)
        .save_params(dir.path().join("no/such/dir/p.safetensors"))
        .unwrap_err();
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
}

#[test]
fn network_gradient_matches_numerical_gradient() {
    // A small SimpleConvNet (He init so gradients are not tiny) on 8x8 images.
    let cfg = SimpleConvNetConfig {
        input_dim: (1, 8, 8),
        conv_param: dl_models::ConvParam {
            filter_num: 3,
            filter_size: 3,
            pad: 1,
            stride: 1,
        },
        hidden_size: 6,
        output_size: 4,
        weight_init_std: None,
    };
    let mut net = SimpleConvNet::new(cfg, 9).into_network();
    let x = random_input(&[3, 1, 8, 8], 0.0, 1);
    let t = [0usize, 3, 1];
    net.gradient(x.clone(), Labels::Indices(&t)).unwrap();
    let grads: Vec<(String, Tensor)> = net.grads().into_iter().map(|(n, g)| (n, g.clone())).collect();
    // A small step keeps the differences from straddling ReLU and max-pool kinks; the loss
    // is an f32 near 1, so allow for its rounding (2.4e-7 / 2e-4 ~ 1e-3) in the tolerance.
    let eps = 1e-4f32;
    let mut worst = 0.0f32;
    for (k, (name, g)) in grads.iter().enumerate() {
        for i in (0..g.len()).step_by(1 + g.len() / 25) {
            let loss_at = |delta: f32| {
                let mut n = net.clone();
                let mut pg = n.params_and_grads();
                pg[k].value.as_slice_mut().unwrap()[i] += delta;
                drop(pg);
                n.loss(x.clone(), Labels::Indices(&t)).unwrap()
            };
            let num = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
            let a = g.as_slice().unwrap()[i];
            let err = (a - num).abs();
            worst = worst.max(err);
            assert!(
                err <= 3e-3 + 3e-2 * num.abs(),
                "{name}[{i}]: analytic {a}, numerical {num}"
            );
        }
    }
    assert!(worst.is_finite());
}

#[test]
fn frozen_layers_are_left_out_of_the_optimizer() {
    let mut net = deep(0);
    assert_eq!(net.params_and_grads().len(), 16);
    net.set_trainable("0", false).unwrap();
    let names: Vec<String> = net.params_and_grads().into_iter().map(|p| p.name).collect();
    assert_eq!(names.len(), 14);
    assert!(!names.contains(&"W1".to_string()));
}

#[test]
fn wrong_input_is_an_error_naming_the_layer() {
    let mut net = deep(0);
    let e = net.predict(Tensor::zeros(vec![2, 3, 28, 28]), false).unwrap_err();
    assert!(
        e.to_string().contains("Convolution") && e.to_string().contains("(N, 1, H, W)"),
        "{e}"
    );
    let e = net.accuracy(&Tensor::zeros(vec![2, 1, 28, 28]), &[1], 100).unwrap_err();
    assert!(e.to_string().contains("2 inputs but 1 labels"), "{e}");
    let e = net.predict(Tensor::zeros(vec![2, 1, 20, 20]), false).unwrap_err();
    assert!(e.to_string().starts_with("Affine"), "{e}");
}

#[test]
fn a_file_with_training_state_loads_as_parameters_and_keeps_its_extras() {
    let a = deep(1);
    let m = Tensor::from_elem(vec![2, 3], 0.5);
    let meta = std::collections::BTreeMap::from([
        ("step".to_string(), "7".to_string()),
        ("dlfs".to_string(), "not the model's".to_string()),
    ]);
    let bytes = a.params_to_bytes_with(&[("m/W1".into(), &m)], &meta);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(&format!("{}m/W1", dl_models::TRAINING_PREFIX)).unwrap();
    assert_eq!(view.shape(), &[2, 3]);
    assert_eq!(&view.data()[..4], &0.5f32.to_le_bytes());
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let info = header.metadata().as_ref().unwrap();
    assert_eq!(info["step"], "7");
    assert!(
        info["dlfs"].contains("DeepConvNet"),
        "the model's own entry wins: {}",
        info["dlfs"]
    );
    // the network's tensors are those of the plain file
    let plain_bytes = a.params_to_bytes();
    let plain = safetensors::SafeTensors::deserialize(&plain_bytes).unwrap();
    assert_eq!(st.names().len(), plain.names().len() + 1);
    // it loads as a parameter file, directly or through the registry
    let mut b = deep(2);
    b.load_params_from_bytes(&bytes, "checkpoint".as_ref()).unwrap();
    assert!(a.params().iter().zip(b.params()).all(|(x, y)| x == &y));
    let c = dl_models::registry::load_from_bytes(&bytes, "checkpoint".as_ref()).unwrap();
    assert_eq!(c.kind(), "DeepConvNet");
    // a name outside the prefix that the network does not have is still refused
    let mut wrong = bytes.clone();
    let pos = wrong.windows(9).position(|w| w == b"training/").unwrap();
    wrong[pos..pos + 9].copy_from_slice(b"trainingX");
    assert!(matches!(
        b.load_params_from_bytes(&wrong, "x".as_ref()),
        Err(ModelError::Unexpected { .. })
    ));
}

#[test]
fn load_matching_takes_the_backbone_and_reports_the_new_head() {
    use dl_models::{ResNet, ResNetConfig, TransferReport};
    let small = |out: usize, seed: u64| {
        let config = ResNetConfig {
            blocks_per_stage: 1,
            widths: vec![4, 8, 8],
            output_size: out,
            ..ResNetConfig::default()
        };
        ResNet::try_new(config, seed).unwrap().into_network()
    };
    let pretrained = small(10, 1);
    let bytes = pretrained.params_to_bytes();
    // a new head of 5 classes: everything but fc.W and fc.b comes from the file
    let mut target = small(5, 2);
    let head_before: Vec<Tensor> = target
        .params()
        .into_iter()
        .filter(|(n, _)| n.starts_with("fc."))
        .map(|(_, t)| t.clone())
        .collect();
    let report = target.load_matching_from_bytes(&bytes, "pre".as_ref()).unwrap();
    let skipped = [
        ("fc.W", "shape [8, 5] here, [8, 10] in the file"),
        ("fc.b", "shape [5] here, [10] in the file"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(report.skipped, skipped);
    assert!(report.missing.is_empty(), "{report}");
    let theirs: std::collections::HashMap<String, Tensor> =
        pretrained.params().into_iter().map(|(n, t)| (n, t.clone())).collect();
    let mut loaded = 0;
    for (name, t) in target.params() {
        if name.starts_with("fc.") {
            continue;
        }
        assert_eq!(t, &theirs[&name], "{name}");
        loaded += 1;
    }
    let head_after: Vec<Tensor> = target
        .params()
        .into_iter()
        .filter(|(n, _)| n.starts_with("fc."))
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(head_before, head_after, "the new head keeps its initial values");
    // the batch-norm statistics come along (parameters + buffers)
    assert!(report.loaded.iter().any(|n| n.ends_with("running_var")));
    assert_eq!(
        report.loaded.len(),
        loaded + report.loaded.iter().filter(|n| n.contains("running")).count()
    );

    // a file with a tensor the network lacks, and lacking one the network has
    let mut fewer = small(10, 3);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().filter(|(n, _)| n != "conv1.W").collect();
    let extra = vec![0u8; 8];
    views.push((
        "aux.W".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &extra).unwrap(),
    ));
    let partial = safetensors::serialize(views, &None).unwrap();
    let conv1_before = fewer.params()[0].1.clone();
    let r: TransferReport = fewer.load_matching_from_bytes(&partial, "partial".as_ref()).unwrap();
    assert_eq!(r.missing, ["conv1.W"]);
    assert_eq!(r.skipped, [("aux.W".to_string(), "not in this network".to_string())]);
    assert_eq!(fewer.params()[0].1, &conv1_before);
    let text = r.to_string();
    assert!(
        text.contains("kept: conv1.W") && text.contains("skipped: aux.W (not in this network)"),
        "{text}"
    );
    assert!(
        text.starts_with(&format!("{} tensors loaded, 1 kept", r.loaded.len())),
        "{text}"
    );

    // not safetensors, or a tensor of another dtype: an error, nothing changed
    let before = fewer.params_to_bytes();
    assert!(matches!(
        fewer.load_matching_from_bytes(b"nonsense", "x".as_ref()),
        Err(ModelError::Format { .. })
    ));
    let w = vec![0u8; 8 * 4];
    let f64_file = safetensors::serialize(
        vec![(
            "conv1.W",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![4], &w).unwrap(),
        )],
        &None,
    )
    .unwrap();
    assert!(matches!(
        fewer.load_matching_from_bytes(&f64_file, "x".as_ref()),
        Err(ModelError::DType { .. })
    ));
    assert!(fewer.params_to_bytes() == before);
    assert!(fewer.load_matching("/nonexistent/file").is_err());
}

#[test]
fn set_iteration_fixes_the_dropout_masks_of_a_training_forward() {
    let x = random_input(&[4, 1, 28, 28], 0.0, 9).mapv(f32::abs);
    let mut a = deep(1);
    let mut b = deep(1);
    // b has run other iterations before; told the same iteration, both drop the same
    for it in 0..3 {
        b.set_iteration(it);
        b.predict(x.clone(), true).unwrap();
    }
    a.set_iteration(7);
    b.set_iteration(7);
    let ya = a.predict(x.clone(), true).unwrap();
    assert_eq!(ya, b.predict(x.clone(), true).unwrap());
    b.set_iteration(8);
    assert_ne!(ya, b.predict(x, true).unwrap());
}

/// The book's network (dropout on two layers), a batch of 6 cut into slices of 2 and
/// 4: each slice told where it starts, the slices' gradients add up to the whole
/// batch's and their losses to its loss; a slice not told draws other masks.
#[test]
fn the_gradients_of_a_batchs_slices_add_up_to_the_whole_batchs() {
    let x = random_input(&[6, 1, 28, 28], 0.0, 4).mapv(f32::abs);
    let t = [3, 1, 4, 1, 5, 9];
    let mut whole = deep(2);
    whole.set_iteration(5);
    let loss = whole.gradient(x.clone(), Labels::Indices(&t)).unwrap();
    let slice_of = |a: usize, b: usize, told: bool| {
        let mut part = deep(2);
        part.set_iteration(5);
        if told {
            part.set_batch_offset(a as u64);
        }
        let xs = x.slice(ndarray::s![a..b, .., .., ..]).to_owned().into_dyn();
        let l = part.gradient_of_slice(xs, Labels::Indices(&t[a..b]), 6).unwrap();
        let grads: Vec<Tensor> = part.grads().into_iter().map(|(_, g)| g.clone()).collect();
        (l, grads)
    };
    let sum_of = |told: bool| {
        let ((la, ga), (lb, gb)) = (slice_of(0, 2, told), slice_of(2, 6, told));
        let grads: Vec<Tensor> = ga.iter().zip(&gb).map(|(a, b)| a + b).collect();
        ((la * 2.0 + lb * 4.0) / 6.0, grads)
    };
    let (sliced_loss, sliced) = sum_of(true);
    assert!((sliced_loss - loss).abs() < 1e-5 * loss, "{sliced_loss} vs {loss}");
    let mut worst = 0.0f32;
    for ((name, g), s) in whole.grads().iter().zip(&sliced) {
        let scale = g.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let d = g.iter().zip(s).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(d < 1e-4, "{name}: {d}");
        worst = worst.max(d);
    }
    assert!(worst > 0.0, "summed in slices, the rounding differs somewhere");
    // without the offset the second slice draws the first samples' dropout masks
    let (_, untold) = sum_of(false);
    let off = whole.grads().iter().zip(&untold).any(|((_, g), s)| {
        let scale = g.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        g.iter().zip(s).any(|(a, b)| (a - b).abs() > 1e-2 * scale)
    });
    assert!(off, "set_batch_offset must matter");
}

/// `trainable_grads_mut` reaches the gradients `params_and_grads` hands an optimizer, in
/// its order; `visit_state_mut` every parameter, then every buffer, as the file keeps
/// them.
#[test]
fn the_mutable_views_reach_every_gradient_and_every_saved_tensor_in_order() {
    let cfg = DeepConvNetConfig {
        use_batchnorm: true,
        ..DeepConvNetConfig::default()
    };
    let mut net = DeepConvNet::new(cfg, 0).into_network();
    net.set_trainable("0", false).unwrap();
    let trainable: Vec<String> = net.params_and_grads().into_iter().map(|p| p.name).collect();
    let grads = net.trainable_grads_mut();
    assert_eq!(grads.len(), trainable.len());
    for (i, g) in grads.into_iter().enumerate() {
        g.fill(i as f32 + 1.0);
    }
    let by_name: std::collections::HashMap<String, Tensor> =
        net.grads().into_iter().map(|(n, g)| (n, g.clone())).collect();
    for (i, name) in trainable.iter().enumerate() {
        assert!(by_name[name].iter().all(|&v| v == i as f32 + 1.0), "{name}");
    }
    let frozen: Vec<&String> = by_name.keys().filter(|n| !trainable.contains(n)).collect();
    assert!(!frozen.is_empty());
    for name in frozen {
        assert!(by_name[name].iter().all(|&v| v == 0.0), "{name} is frozen: untouched");
    }
    let mut i = 0.0f32;
    net.visit_state_mut(|t| {
        t.fill(i);
        i += 1.0;
    });
    let (params, buffers) = (net.params(), net.buffers());
    assert!(!buffers.is_empty());
    assert_eq!(i as usize, params.len() + buffers.len());
    for (k, (name, t)) in params.iter().chain(&buffers).enumerate() {
        assert!(t.iter().all(|&v| v == k as f32), "{name}");
    }
}

#[test]
fn a_safetensors_file_whose_header_length_starts_like_a_pickle_loads() {
    // a header of 0x..80 bytes makes the file's first byte the pickle protocol byte;
    // the tiny network's file is mostly header
    let tiny = r#"{"input_dim":[1,4,4],"conv_param":{"filter_num":2,"filter_size":1,"pad":0,"stride":1},"hidden_size":3,"output_size":2,"weight_init_std":null}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.safetensors");
    for net in [deep(3), dl_models::build("SimpleConvNet", Some(tiny), 3).unwrap()] {
        let bytes = (0..300)
            .map(|k| {
                let meta = std::collections::BTreeMap::from([("pad".to_string(), "x".repeat(k))]);
                net.params_to_bytes_with(&[], &meta)
            })
            .find(|b| b[0] == 0x80)
            .expect("some padding gives a header length of 0x..80");
        std::fs::write(&path, &bytes).unwrap();
        let loaded = dl_models::load(&path).unwrap();
        assert!(loaded.params_to_bytes() == net.params_to_bytes());
    }
    // a real pickle still goes to the pickle reader: its error says so
    let pkl = dir.path().join("empty.pkl");
    std::fs::write(&pkl, [0x80, 0x02, b'}', b'.']).unwrap();
    let e = dl_models::load(&pkl).unwrap_err().to_string();
    assert!(e.contains("has no tensor \"W1\""), "{e}");
    // a pickle whose first 8 bytes, read as a header length, claim a few bytes more
    // than the file has, and whose ninth byte is '{': still a pickle
    let mut odd = 128u64.to_le_bytes().to_vec();
    odd.push(b'{');
    odd.resize(130, b' ');
    std::fs::write(&pkl, &odd).unwrap();
    let e = dl_models::load(&pkl).unwrap_err();
    assert!(matches!(e, ModelError::Pickle(_)), "{e}");
}

/// A file saved at 16 bits holds every tensor as F16 or BF16 (half the bytes), and
/// every loader reads it back as the values rounded to that precision.
#[test]
fn parameters_save_and_load_at_sixteen_bits() {
    use dl_tensor::lowp::{bf16, f16, Precision};
    let net = dl_models::build("ResNet", None, 3).unwrap();
    let full = net.params_to_bytes();
    assert_eq!(net.params_to_bytes_as(Precision::F32), full);
    for (precision, dtype) in [
        (Precision::F16, safetensors::Dtype::F16),
        (Precision::Bf16, safetensors::Dtype::BF16),
    ] {
        let round = |v: f32| match precision {
            Precision::F16 => f16::from_f32(v).to_f32(),
            _ => bf16::from_f32(v).to_f32(),
        };
        let bytes = net.params_to_bytes_as(precision);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.tensors().iter().all(|(_, v)| v.dtype() == dtype));
        let values: usize = net.params().iter().chain(&net.buffers()).map(|(_, t)| t.len()).sum();
        let data = |b: &[u8]| b.len() - 8 - u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        assert_eq!((data(&full), data(&bytes)), (4 * values, 2 * values), "{precision}");
        // the registry rebuilds the model from the 16-bit file alone
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("resnet-{precision}.safetensors"));
        net.save_params_as(&path, precision).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let loaded = dl_models::load(&path).unwrap();
        for ((name, a), (_, b)) in net.params().iter().zip(loaded.params()) {
            let want: Vec<f32> = a.iter().map(|&v| round(v)).collect();
            assert_eq!(b.as_slice().unwrap(), &want[..], "{precision} {name}");
        }
        assert_ne!(net.params(), loaded.params(), "{precision}: the weights must round");
        for ((name, a), (_, b)) in net.buffers().iter().zip(loaded.buffers()) {
            let want: Vec<f32> = a.iter().map(|&v| round(v)).collect();
            assert_eq!(b.as_slice().unwrap(), &want[..], "{precision} {name}");
        }
        // load_params and load_matching take it too
        let mut other = dl_models::build("ResNet", None, 4).unwrap();
        other.load_params_from_bytes(&bytes, "x".as_ref()).unwrap();
        assert_eq!(other.params(), loaded.params());
        let mut other = dl_models::build("ResNet", None, 5).unwrap();
        let report = other.load_matching_from_bytes(&bytes, "x".as_ref()).unwrap();
        assert!(report.missing.is_empty() && report.skipped.is_empty());
        assert_eq!(other.params(), loaded.params());
    }
    assert!(net
        .save_params_as("/nonexistent/dir/x.safetensors", Precision::F16)
        .is_err());
}

/// What `Network` hands to its root layer (the convolution algorithm, bf16 products,
/// clipping) reaches the layers exactly as setting the root directly does.
#[test]
fn a_network_passes_its_settings_to_every_layer() {
    use dl_layers::{Bf16Kernel, ConvAlgo, Layer};
    let x = random_input(&[3, 1, 28, 28], 0.5, 9);
    let run = |net: &mut Network| net.predict(x.clone(), false).unwrap();
    let mut outputs = Vec::new();
    for algo in [ConvAlgo::Lowered, ConvAlgo::Winograd] {
        let (mut by_network, mut by_root) = (deep(0), deep(0));
        by_network.set_conv_algo(algo);
        by_root.root_mut().set_conv_algo(algo);
        let y = run(&mut by_network);
        assert!(y == run(&mut by_root), "{algo:?}");
        outputs.push(y);
    }
    assert!(outputs[0] != outputs[1], "the algorithms round differently");
    let (mut by_network, mut by_root, mut plain) = (deep(0), deep(0), deep(0));
    by_network.set_bf16_products(Some(Bf16Kernel::Rounded));
    by_root.root_mut().set_bf16_products(Some(Bf16Kernel::Rounded));
    let y = run(&mut by_network);
    assert!(y == run(&mut by_root));
    assert!(y != run(&mut plain), "bf16 products round");
    // clipping: a binarized layer's latent weights go back to [-1, 1], the others stay
    let mut net = dl_models::build("BinaryConvNet", None, 0).unwrap();
    net.visit_state_mut(|t| t.fill(5.0));
    net.clip_params();
    let params = net.params();
    let clipped = params.iter().filter(|(_, t)| t.iter().all(|&v| v == 1.0)).count();
    let kept = params.iter().filter(|(_, t)| t.iter().all(|&v| v == 5.0)).count();
    assert!(
        clipped >= 3 && kept >= 3 && clipped + kept == params.len(),
        "{clipped} {kept}"
    );
    // the root and its layers, read and written through the network
    let mut net = deep(0);
    assert_eq!(net.root().layers().len(), 20);
    assert_eq!(net.layers_mut().len(), 20);
    net.layers_mut()[0].set_trainable(false);
    assert!(!net.params_and_grads().iter().any(|p| p.name == "W1"));
}

#[test]
fn classify_and_accuracy_take_the_argmax_in_chunks() {
    let mut net = deep(2);
    let x = random_input(&[7, 1, 28, 28], 0.5, 3);
    let scores = net.predict(x.clone(), false).unwrap();
    let want: Vec<usize> = scores
        .outer_iter()
        .map(|row| (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }))
        .collect();
    for batch in [1, 3, 7, 100] {
        assert_eq!(net.classify(&x, batch).unwrap(), want, "batch {batch}");
    }
    assert_eq!(net.accuracy(&x, &want, 3).unwrap(), 1.0);
    let mut half: Vec<usize> = want.clone();
    for t in half.iter_mut().take(4).skip(1) {
        *t = (*t + 1) % 10;
    }
    assert_eq!(net.accuracy(&x, &half, 3).unwrap(), 4.0 / 7.0);
}

#[test]
fn a_network_keeps_its_configuration_in_its_metadata() {
    let mut net = deep(0);
    let config: DeepConvNetConfig = serde_json::from_str(&net.metadata()["config"]).unwrap();
    assert_eq!(config, DeepConvNetConfig::default());
    assert_eq!(net.metadata().len(), 1);
    net.set_metadata("note", "hello".into());
    assert_eq!(net.metadata().get("note").map(String::as_str), Some("hello"));
}

/// `predict` in evaluation on a pool of `threads` threads.
fn predict_on(net: &mut Network, x: &Tensor, threads: usize) -> Tensor {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| net.predict(x.clone(), false)).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn evaluation_scores_do_not_depend_on_the_thread_count() {
    // the book's network and ResNet-20 (batch norm, residual blocks), batches that split
    // evenly, unevenly and not at all (fewer than two images per thread)
    let config = dl_models::ResNetConfig {
        blocks_per_stage: 1,
        ..dl_models::ResNetConfig::default()
    };
    for mut net in [deep(3), dl_models::ResNet::new(config, 4).into_network()] {
        // 70 and 140: passes of EVAL_CHUNK images on one thread (32 and 38; 32, 32, 32
        // and 44) and on two (140: 32 and 38 a share)
        assert_eq!(dl_models::EVAL_CHUNK, 32);
        for n in [1usize, 3, 4, 5, 7, 20, 33, 70, 140] {
            let x = random_input(&[n, 1, 28, 28], 0.0, 5 + n as u64);
            let one = predict_on(&mut net, &x, 1);
            assert_eq!(one.shape(), &[n, 10]);
            // the root's own forward on the whole batch at once
            let whole = net.root_mut().forward(x.clone(), false).unwrap();
            assert_eq!(bits(&one), bits(&whole), "{} on {n} images", net.kind());
            for threads in [2, 3, 4] {
                let many = predict_on(&mut net, &x, threads);
                assert_eq!(
                    bits(&many),
                    bits(&one),
                    "{} on {n} images, {threads} threads",
                    net.kind()
                );
            }
        }
    }
}

#[test]
fn evaluation_on_several_threads_sees_every_change_to_the_network() {
    let x = random_input(&[8, 1, 28, 28], 0.0, 9);
    let mut net = deep(0);
    // the replicas made here must not outlive what changes below
    let before = predict_on(&mut net, &x, 2);
    let fresh = |net: &Network| predict_on(&mut net.clone(), &x, 1);
    let check = |net: &mut Network, what: &str| {
        let want = fresh(net);
        assert_ne!(bits(&want), bits(&before), "{what} changed nothing");
        assert_eq!(bits(&predict_on(net, &x, 2)), bits(&want), "{what}");
    };
    // an optimizer step, through params_and_grads
    for p in net.params_and_grads() {
        p.value.mapv_inplace(|v| v * 1.5);
    }
    check(&mut net, "params_and_grads");
    let before = predict_on(&mut net, &x, 2);
    net.visit_state_mut(|t| t.mapv_inplace(|v| v * 0.5));
    assert_ne!(bits(&predict_on(&mut net, &x, 2)), bits(&before), "visit_state_mut");
    assert_eq!(
        bits(&predict_on(&mut net, &x, 2)),
        bits(&fresh(&net)),
        "visit_state_mut"
    );
    for (what, change) in [
        (
            "root_mut",
            (|n: &mut Network| n.root_mut().params_mut()[0].1.value.fill(0.25)) as fn(&mut Network),
        ),
        ("layers_mut", |n| n.layers_mut()[0].params_mut()[1].1.value.fill(-0.5)),
        ("set_conv_algo", |n| n.set_conv_algo(dl_layers::ConvAlgo::Lowered)),
    ] {
        let before = predict_on(&mut net, &x, 2);
        change(&mut net);
        let after = predict_on(&mut net, &x, 2);
        assert_ne!(bits(&after), bits(&before), "{what}");
        assert_eq!(bits(&after), bits(&fresh(&net)), "{what}");
    }
    // a file loaded over the network
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    deep(7).save_params(&path).unwrap();
    let before = predict_on(&mut net, &x, 2);
    net.load_params(&path).unwrap();
    let after = predict_on(&mut net, &x, 2);
    assert_ne!(bits(&after), bits(&before), "load_params");
    assert_eq!(bits(&after), bits(&fresh(&net)), "load_params");
    // the file's parameters, whatever the algorithm set before
    net.set_conv_algo(dl_layers::ConvAlgo::Auto);
    let mut other = deep(7);
    assert_eq!(bits(&predict_on(&mut net, &x, 2)), bits(&predict_on(&mut other, &x, 1)));
}

#[test]
fn a_training_forward_updates_what_evaluation_on_several_threads_uses() {
    // batch norm's running statistics move in a training forward
    let config = DeepConvNetConfig {
        use_batchnorm: true,
        ..DeepConvNetConfig::default()
    };
    let mut net = DeepConvNet::new(config, 0).into_network();
    let x = random_input(&[8, 1, 28, 28], 0.0, 10);
    let before = predict_on(&mut net, &x, 2);
    for train in [
        (|n: &mut Network, x: &Tensor| drop(n.predict(x.clone(), true).unwrap())) as fn(&mut Network, &Tensor),
        |n, x| {
            n.loss(x.clone(), Labels::Indices(&[1; 8])).unwrap();
        },
        |n, x| {
            n.gradient(x.clone(), Labels::Indices(&[2; 8])).unwrap();
        },
        |n, x| {
            n.gradient_of_slice(x.clone(), Labels::Indices(&[3; 8]), 16).unwrap();
        },
    ] {
        let before_step = predict_on(&mut net, &x, 2);
        train(&mut net, &(x.clone() * 3.0 + 1.0));
        let after = predict_on(&mut net, &x, 2);
        assert_ne!(bits(&after), bits(&before_step));
        assert_eq!(bits(&after), bits(&predict_on(&mut net.clone(), &x, 1)));
    }
    assert_ne!(bits(&predict_on(&mut net, &x, 2)), bits(&before));
}

/// Records the batch size of every forward and counts its copies.
#[derive(Clone)]
struct ShareProbe {
    sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    copies: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Layer for ShareProbe {
    fn name(&self) -> &str {
        "ShareProbe"
    }
    fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, dl_layers::LayerError> {
        self.sizes.lock().unwrap().push(x.shape()[0]);
        Ok(x)
    }
    fn backward(&mut self, dout: Tensor) -> Tensor {
        dout
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, dl_layers::LayerError> {
        Ok(input.to_vec())
    }
    fn clone_box(&self) -> Box<dyn Layer> {
        self.copies.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::new(self.clone())
    }
}

#[test]
fn evaluation_gives_each_thread_a_share_of_two_images_or_more_on_one_copy_each() {
    let probe = ShareProbe {
        sizes: Default::default(),
        copies: Default::default(),
    };
    let mut net = Network::new("probe", dl_layers::Sequential::new().with(probe.clone()));
    // (images, threads, training): the shares each forward saw, and the copies made by
    // this call (a training forward drops the copies: the next evaluation makes new ones);
    // a share of 2 EVAL_CHUNK (64) images or more in passes of EVAL_CHUNK, the last with
    // the rest
    let cases: [(usize, usize, bool, &[usize], usize); 14] = [
        (8, 2, false, &[4, 4], 1),
        (8, 2, false, &[4, 4], 0),
        (7, 3, false, &[2, 2, 3], 1),
        (9, 4, false, &[2, 2, 2, 3], 1),
        (3, 2, false, &[3], 0),
        (5, 1, false, &[5], 0),
        (8, 2, true, &[8], 0),
        (8, 2, false, &[4, 4], 1),
        (63, 1, false, &[63], 0),
        (64, 1, false, &[32, 32], 0),
        (95, 1, false, &[32, 63], 0),
        (96, 1, false, &[32, 32, 32], 0),
        (127, 2, false, &[32, 32, 63], 0),
        (200, 2, false, &[32, 32, 32, 32, 36, 36], 0),
    ];
    assert_eq!(dl_models::EVAL_CHUNK, 32);
    for (i, &(n, threads, train, shares, copies)) in cases.iter().enumerate() {
        probe.sizes.lock().unwrap().clear();
        let before = probe.copies.load(std::sync::atomic::Ordering::SeqCst);
        let x = random_input(&[n, 1, 2, 2], 0.0, i as u64);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let y = pool.install(|| net.predict(x.clone(), train)).unwrap();
        assert_eq!(y, x, "case {i}: the shares' outputs in order");
        let mut seen = probe.sizes.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, shares, "case {i}");
        let made = probe.copies.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(made, copies, "case {i}: copies made");
    }
}
