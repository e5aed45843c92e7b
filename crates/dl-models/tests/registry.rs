//! The model registry and the deeper models: every model builds, names its parameters
//! uniquely and as torchvision does, saves and rebuilds from its own file (batch-norm
//! statistics included), and refuses a bad configuration with a typed error.

use std::collections::{HashMap, HashSet};

use dl_layers::gradcheck::random_input;
use dl_layers::{Labels, Layer, Tensor};
use dl_models::registry::{model_config_from_bytes, read_model_config};
use dl_models::{
    build, load, ConvStack, ConvStackConfig, DeepConvNetConfig, GoogLeNet, GoogLeNetConfig, ModelConfig, ModelError,
    Network, ResNet, ResNetConfig, Vgg, VggConfig, MODEL_KINDS,
};

fn names(net: &Network) -> Vec<String> {
    net.params().into_iter().map(|(n, _)| n).collect()
}

#[test]
fn every_model_builds_with_unique_names_and_classifies_a_batch() {
    for kind in MODEL_KINDS {
        let mut net = build(kind, None, 1).unwrap();
        assert_eq!(net.kind(), kind);
        let bytes = net.params_to_bytes();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let saved: Vec<String> = st.names().into_iter().cloned().collect();
        let unique: HashSet<&String> = saved.iter().collect();
        assert_eq!(unique.len(), saved.len(), "{kind}: names are unique");
        assert!(saved.len() >= names(&net).len());
        let y = net.predict(Tensor::zeros(vec![2, 1, 28, 28]), false).unwrap();
        assert_eq!(y.shape(), &[2, 10], "{kind}");
    }
}

#[test]
fn every_model_draws_each_weight_from_its_own_seed() {
    for kind in MODEL_KINDS {
        let net = build(kind, None, 1).unwrap();
        let weights: Vec<(String, &Tensor)> = net.params().into_iter().filter(|(_, t)| t.ndim() > 1).collect();
        assert!(weights.len() >= 2, "{kind}");
        // no two weights start from the same draws, whatever their shapes and scales
        // (one seed gives values s * z0, s * z1, ...: the same z0 / z1): each layer has
        // a seed of its own
        let ratio = |t: &Tensor| {
            let mut v = t.iter();
            let (z0, z1) = (v.next().unwrap(), v.next().unwrap());
            z0 / z1
        };
        for (i, (a, ta)) in weights.iter().enumerate() {
            for (b, tb) in &weights[i + 1..] {
                assert!(ratio(ta) != ratio(tb), "{kind}: {a} and {b} start alike");
            }
        }
        // the same seed rebuilds the same weights; another seed changes every one
        let same = build(kind, None, 1).unwrap();
        let other = build(kind, None, 2).unwrap();
        for ((name, t), ((_, s), (_, o))) in net
            .params()
            .into_iter()
            .zip(same.params().into_iter().zip(other.params()))
        {
            assert_eq!(t, s, "{kind} {name}");
            if t.ndim() > 1 {
                assert_ne!(t, o, "{kind} {name}");
            }
        }
    }
}

#[test]
fn the_deeper_models_name_their_parameters_as_torchvision_does() {
    let net = ResNet::new(ResNetConfig::default(), 0);
    let n = names(&net);
    // ResNet-20: conv1 + 3 stages x 3 blocks x 2 convolutions + fc, two projections
    assert_eq!(n.iter().filter(|s| s.ends_with(".W")).count(), 1 + 18 + 2 + 1);
    for want in [
        "conv1.W",
        "bn1.gamma",
        "layer1.0.conv1.W",
        "layer1.2.bn2.beta",
        "layer2.0.downsample.0.W",
        "layer2.0.downsample.1.gamma",
        "layer3.2.conv2.W",
        "fc.W",
        "fc.b",
    ] {
        assert!(n.iter().any(|s| s == want), "ResNet has {want}");
    }
    assert!(
        !n.iter().any(|s| s.starts_with("layer1.0.downsample")),
        "layer1 keeps the identity"
    );
    let buffers: Vec<String> = {
        let bytes = net.params_to_bytes();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.names().into_iter().cloned().collect()
    };
    assert!(buffers.iter().any(|s| s == "layer3.1.bn1.running_var"));

    let n = names(&GoogLeNet::new(GoogLeNetConfig::default(), 0));
    for want in [
        "conv1.conv.W",
        "conv1.bn.gamma",
        "inception3a.branch1.conv.W",
        "inception3a.branch2.1.conv.W",
        "inception3b.branch3.1.bn.beta",
        "inception4b.branch4.1.conv.W",
        "fc.W",
    ] {
        assert!(n.iter().any(|s| s == want), "GoogLeNet has {want}");
    }
    let n = names(&Vgg::new(VggConfig::default(), 0));
    assert_eq!(
        n[..4],
        ["features.0.W", "features.0.b", "features.1.gamma", "features.1.beta"]
    );
    assert_eq!(n[n.len() - 2..], ["classifier.3.W", "classifier.3.b"]);

    // An et al.'s M3: ten 3x3 convolutions without bias (batch norm follows each), 28
    // shrinking to 8, 176 channels of 8x8 into the classifier
    let net = ConvStack::new(ConvStackConfig::default(), 0);
    let n = names(&net);
    assert_eq!(
        n[..4],
        ["features.0.W", "features.1.gamma", "features.1.beta", "features.3.W"]
    );
    assert_eq!(n.iter().filter(|s| s.ends_with(".W")).count(), 11);
    let shapes: HashMap<String, Vec<usize>> = net.params().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    assert_eq!(shapes["features.27.W"], [176, 160, 3, 3]);
    assert_eq!(shapes["classifier.0.W"], [176 * 8 * 8, 10]);
    // without batch norm each convolution has its bias
    let plain = ConvStackConfig {
        kernel_size: 5,
        channels: vec![4, 6],
        use_batchnorm: false,
        ..ConvStackConfig::default()
    };
    let net = ConvStack::new(plain, 0);
    let n = names(&net);
    assert_eq!(
        n,
        [
            "features.0.W",
            "features.0.b",
            "features.2.W",
            "features.2.b",
            "classifier.0.W",
            "classifier.0.b"
        ]
    );
    assert_eq!(net.params()[4].1.shape(), &[6 * 20 * 20, 10]);
}

#[test]
fn a_trained_model_rebuilds_from_its_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    // a non-default configuration with 3-channel input: the file must carry it
    let config = ResNetConfig {
        input_dim: (3, 12, 12),
        blocks_per_stage: 1,
        widths: vec![4, 8],
        output_size: 5,
    };
    let mut net = ResNet::new(config.clone(), 7).into_network();
    let x = random_input(&[4, 3, 12, 12], 0.0, 1);
    // one training step moves the batch-norm running statistics off their start
    net.gradient(x.clone(), Labels::Indices(&[0, 1, 2, 4])).unwrap();
    let before = net.predict(x.clone(), false).unwrap();
    let path = dir.path().join("resnet.safetensors");
    net.save_params(&path).unwrap();
    assert_eq!(read_model_config(&path).unwrap(), ModelConfig::ResNet(config));
    let mut again = load(&path).unwrap();
    assert_eq!(again.kind(), "ResNet");
    assert_eq!(again.predict(x.clone(), false).unwrap(), before);
    // the running statistics came along: a fresh model predicts otherwise
    let mut fresh = load(&path).unwrap();
    for (_, b) in fresh.root_mut().buffers_mut().into_iter() {
        b.fill(0.5);
    }
    assert_ne!(fresh.predict(x, false).unwrap(), before);
}

#[test]
fn bad_kinds_configurations_and_files_are_typed_errors() {
    assert!(matches!(
        build("AlexNet", None, 0),
        Err(ModelError::UnknownModel { .. })
    ));
    for (kind, json) in [
        ("Vgg", "{}"),
        (
            "Vgg",
            r#"{"input_dim":[1,28,28],"blocks":[],"hidden_size":8,"output_size":10,"dropout_ratio":0.5,"use_batchnorm":true}"#,
        ),
        (
            "Vgg",
            r#"{"input_dim":[1,4,4],"blocks":[[1,4],[1,4],[1,4]],"hidden_size":8,"output_size":10,"dropout_ratio":0.5,"use_batchnorm":true}"#,
        ),
        (
            "Vgg",
            r#"{"input_dim":[1,28,28],"blocks":[[1,4]],"hidden_size":8,"output_size":10,"dropout_ratio":1.5,"use_batchnorm":true}"#,
        ),
        (
            "ResNet",
            r#"{"input_dim":[1,28,28],"blocks_per_stage":3,"widths":[16,32,99999999],"output_size":10}"#,
        ),
        (
            "ResNet",
            r#"{"input_dim":[0,28,28],"blocks_per_stage":3,"widths":[16],"output_size":10}"#,
        ),
        (
            "GoogLeNet",
            r#"{"input_dim":[1,28,28],"stem_channels":8,"stages":[[]],"dropout_ratio":0.2,"output_size":10}"#,
        ),
        (
            "DeepConvNet",
            r#"{"input_dim":[1,5,5],"conv_params":[{"filter_num":4,"filter_size":3,"pad":0,"stride":1},{"filter_num":4,"filter_size":3,"pad":0,"stride":1},{"filter_num":4,"filter_size":3,"pad":0,"stride":1},{"filter_num":4,"filter_size":3,"pad":0,"stride":1},{"filter_num":4,"filter_size":3,"pad":0,"stride":1},{"filter_num":4,"filter_size":3,"pad":0,"stride":1}],"hidden_size":5,"output_size":10,"dropout_ratio":0.5,"inverted_dropout":false}"#,
        ),
        (
            "SimpleConvNet",
            r#"{"input_dim":[1,3,3],"conv_param":{"filter_num":4,"filter_size":5,"pad":0,"stride":1},"hidden_size":5,"output_size":10,"weight_init_std":null}"#,
        ),
        (
            "ConvStack",
            r#"{"input_dim":[1,28,28],"kernel_size":3,"channels":[],"output_size":10,"use_batchnorm":true}"#,
        ),
        (
            "ConvStack",
            r#"{"input_dim":[1,28,28],"kernel_size":0,"channels":[4],"output_size":10,"use_batchnorm":true}"#,
        ),
        (
            "ConvStack",
            r#"{"input_dim":[1,28,28],"kernel_size":3,"channels":[4,0],"output_size":10,"use_batchnorm":true}"#,
        ),
        (
            "ConvStack",
            r#"{"input_dim":[1,28,28],"kernel_size":3,"channels":[4],"output_size":0,"use_batchnorm":true}"#,
        ),
    ] {
        let err = build(kind, Some(json), 0).unwrap_err();
        assert!(matches!(err, ModelError::Config { .. }), "{kind} {json}: {err}");
        assert!(err.to_string().contains(kind), "{err}");
    }
    // a safetensors file without the model's metadata
    let bare = safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(), &None).unwrap();
    let err = model_config_from_bytes(&bare, "x".as_ref()).unwrap_err();
    assert!(matches!(err, ModelError::NoModel { .. }), "{err}");
    // not a safetensors file at all, and a missing file
    assert!(matches!(
        model_config_from_bytes(b"garbage", "x".as_ref()),
        Err(ModelError::Format { .. })
    ));
    assert!(matches!(load("/nonexistent/x.safetensors"), Err(ModelError::Io { .. })));
}

#[test]
fn each_configuration_guard_says_what_is_wrong() {
    let binary =
        |dim: &str, blocks: &str| format!(r#"{{"input_dim":{dim},"blocks":{blocks},"hidden_size":6,"output_size":3}}"#);
    let simple = |pad: usize| {
        format!(
            r#"{{"input_dim":[1,4,4],"conv_param":{{"filter_num":2,"filter_size":1,"pad":{pad},"stride":64}},"hidden_size":3,"output_size":2,"weight_init_std":null}}"#
        )
    };
    let stack = |dim: &str, k: usize, channels: &str| {
        format!(r#"{{"input_dim":{dim},"kernel_size":{k},"channels":{channels},"output_size":3,"use_batchnorm":true}}"#)
    };
    let cases = [
        // an image too small to halve once per block, in either direction
        (
            "BinaryConvNet",
            binary("[1,3,12]", "[[1,3],[1,3]]"),
            "a 3x12 image cannot be halved 2 times",
        ),
        (
            "BinaryConvNet",
            binary("[1,12,3]", "[[1,3],[1,3]]"),
            "a 12x3 image cannot be halved 2 times",
        ),
        ("SimpleConvNet", simple(64), "pad is 64, must be at most 63"),
        // a stack of unpadded convolutions that leaves no pixel, in either direction
        (
            "ConvStack",
            stack("[1,6,28]", 5, "[2,2,2]"),
            "a 6x28 image is too small for 3 convolutions of 5x5",
        ),
        (
            "ConvStack",
            stack("[1,28,4]", 3, "[2,2]"),
            "a 28x4 image is too small for 2 convolutions of 3x3",
        ),
    ];
    for (kind, json, want) in cases {
        let err = build(kind, Some(&json), 0).unwrap_err();
        assert!(
            matches!(err, ModelError::Config { .. }) && err.to_string().contains(want),
            "{kind} {json}: {err}, want {want:?}"
        );
    }
    // the smallest image that two halvings leave at least one pixel wide builds
    build("BinaryConvNet", Some(&binary("[1,4,4]", "[[1,3],[1,3]]")), 0).unwrap();
    // the widest padding allowed
    build("SimpleConvNet", Some(&simple(63)), 0).unwrap();
    // the smallest images the stacks leave one pixel of
    build("ConvStack", Some(&stack("[1,13,28]", 5, "[2,2,2]")), 0).unwrap();
    build("ConvStack", Some(&stack("[1,28,5]", 3, "[2,2]")), 0).unwrap();
    // Vgg and GoogLeNet halve the image once per block or stage too
    let (blocks, stages) = (
        VggConfig::default().blocks.len(),
        GoogLeNetConfig::default().stages.len(),
    );
    for (short_h, short_w) in [(true, false), (false, true)] {
        let dim = |n: usize| {
            let side = |short| if short { (1 << n) - 1 } else { 28 };
            (1, side(short_h), side(short_w))
        };
        let vgg = Vgg::try_new(
            VggConfig {
                input_dim: dim(blocks),
                ..VggConfig::default()
            },
            0,
        );
        let googlenet = GoogLeNet::try_new(
            GoogLeNetConfig {
                input_dim: dim(stages),
                ..GoogLeNetConfig::default()
            },
            0,
        );
        for (err, n) in [(vgg.map(|_| ()), blocks), (googlenet.map(|_| ()), stages)] {
            let (_, h, w) = dim(n);
            let want = format!("a {h}x{w} image cannot be halved {n} times");
            let err = err.unwrap_err();
            assert!(err.to_string().contains(&want), "{err}, want {want:?}");
        }
    }
}

#[test]
fn a_frozen_backbone_changes_nothing_while_its_head_learns() {
    // ResNet with batch norm everywhere: everything frozen but the classifier
    let mut net = ResNet::new(ResNetConfig::default(), 0).into_network();
    net.set_trainable("", false).unwrap();
    net.set_trainable("fc", true).unwrap();
    let names: Vec<String> = net.params_and_grads().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["fc.W", "fc.b"]);
    let before = net.params_to_bytes();
    let values = |net: &dl_models::Network| -> Vec<(String, Vec<f32>)> {
        net.params()
            .into_iter()
            .map(|(n, t)| (n, t.iter().copied().collect()))
            .collect()
    };
    let buffers = |net: &dl_models::Network| -> Vec<(String, Tensor)> {
        net.buffers().into_iter().map(|(n, t)| (n, t.clone())).collect()
    };
    let (params0, buffers0) = (values(&net), buffers(&net));
    assert_eq!(buffers0.len(), 2 * 21, "21 batch norms, two of them in projections");
    let x = random_input(&[4, 1, 28, 28], 0.0, 1);
    for _ in 0..2 {
        net.gradient(x.clone(), Labels::Indices(&[1, 2, 3, 4])).unwrap();
        for p in net.params_and_grads() {
            p.value.scaled_add(-0.1, p.grad);
        }
    }
    assert_ne!(net.params_to_bytes(), before);
    for ((name, a), (_, b)) in values(&net).iter().zip(&params0) {
        assert_eq!(a == b, !name.starts_with("fc."), "{name}");
    }
    assert_eq!(buffers(&net), buffers0, "the running statistics are frozen too");
    // no gradient was computed for the frozen layers
    assert!(net
        .grads()
        .iter()
        .filter(|(n, _)| !n.starts_with("fc."))
        .all(|(_, g)| g.iter().all(|&v| v == 0.0)));
    assert!(net.set_trainable("fc.W", true).is_err(), "a parameter is not a layer");
}

#[test]
fn freezing_by_path_leaves_exactly_that_block_to_the_optimizer() {
    let mut net = ResNet::new(ResNetConfig::default(), 0).into_network();
    let all = net.params_and_grads().len();
    net.set_trainable("layer1", false).unwrap();
    let left: Vec<String> = net.params_and_grads().into_iter().map(|p| p.name).collect();
    assert!(left.iter().all(|n| !n.starts_with("layer1.")));
    // 3 blocks x (2 convolutions + 2 batch norms x 2) = 18 parameters in layer1
    assert_eq!(left.len(), all - 18);
    net.set_trainable("layer1", true).unwrap();
    assert_eq!(net.params_and_grads().len(), all);
    // a path names layers: "layer" is none, nor is a parameter
    assert!(net.set_trainable("layer", false).is_err());
    assert!(net.set_trainable("conv1.W", false).is_err());
}

#[test]
fn any_model_takes_a_new_head_of_any_size() {
    for kind in MODEL_KINDS {
        let config = ModelConfig::default_for(kind).unwrap();
        let five = config.with_output_size(5).unwrap();
        assert_eq!(five.kind(), kind);
        assert_eq!(ModelConfig::from_json(kind, &five.to_json()).unwrap(), five);
        let mut net = five.build(0).unwrap();
        let y = net.predict(Tensor::zeros(vec![2, 1, 28, 28]), false).unwrap();
        assert_eq!(y.shape(), [2, 5], "{kind}");
        assert!(
            config.with_output_size(0).unwrap().build(0).is_err(),
            "{kind}: no class"
        );
    }
}

#[test]
fn a_configuration_counts_its_parameters_before_anything_is_built() {
    let configs = [
        ("DeepConvNet", None),
        (
            "DeepConvNet",
            Some(
                r#"{"input_dim":[3,20,24],"conv_params":[{"filter_num":4,"filter_size":3,"pad":1,"stride":2},{"filter_num":5,"filter_size":3,"pad":0,"stride":1},{"filter_num":6,"filter_size":1,"pad":0,"stride":1},{"filter_num":7,"filter_size":3,"pad":1,"stride":1},{"filter_num":2,"filter_size":2,"pad":1,"stride":1},{"filter_num":3,"filter_size":3,"pad":2,"stride":1}],"hidden_size":9,"output_size":4,"dropout_ratio":0.5,"inverted_dropout":true,"use_batchnorm":true}"#,
            ),
        ),
        ("SimpleConvNet", None),
        (
            "SimpleConvNet",
            Some(
                r#"{"input_dim":[2,13,11],"conv_param":{"filter_num":3,"filter_size":4,"pad":1,"stride":2},"hidden_size":7,"output_size":5,"weight_init_std":null}"#,
            ),
        ),
        ("Vgg", None),
        (
            "Vgg",
            Some(
                r#"{"input_dim":[2,17,12],"blocks":[[1,3],[2,5]],"hidden_size":6,"output_size":3,"dropout_ratio":0.5,"use_batchnorm":false}"#,
            ),
        ),
        ("ResNet", None),
        (
            "ResNet",
            Some(r#"{"input_dim":[1,12,12],"blocks_per_stage":2,"widths":[4,4,6],"output_size":3}"#),
        ),
        ("GoogLeNet", None),
        ("BinaryConvNet", None),
        (
            "BinaryConvNet",
            Some(r#"{"input_dim":[2,16,12],"blocks":[[1,3],[2,5]],"hidden_size":6,"output_size":3}"#),
        ),
        ("ConvStack", None),
        (
            "ConvStack",
            Some(r#"{"input_dim":[2,13,11],"kernel_size":4,"channels":[3,5],"output_size":4,"use_batchnorm":false}"#),
        ),
        (
            "ConvStack",
            Some(r#"{"input_dim":[3,9,12],"kernel_size":2,"channels":[4,6,2],"output_size":5,"use_batchnorm":true}"#),
        ),
    ];
    for (kind, json) in configs {
        let config = match json {
            Some(j) => ModelConfig::from_json(kind, j).unwrap(),
            None => ModelConfig::default_for(kind).unwrap(),
        };
        let net = config.build(0).unwrap();
        assert_eq!(config.param_count(), net.param_count() as u128, "{kind} {json:?}");
    }
    // beyond the bound: refused before the 64 convolutions of 4096 x 4096 (40 GB) exist
    let huge = r#"{"input_dim":[1,256,256],"blocks":[[8,4096],[8,4096],[8,4096],[8,4096],[8,4096],[8,4096],[8,4096],[8,4096]],"hidden_size":8,"output_size":2,"dropout_ratio":0.5,"use_batchnorm":true}"#;
    let err = build("Vgg", Some(huge), 0).unwrap_err();
    assert!(
        matches!(err, ModelError::Config { .. }) && err.to_string().contains(&dl_models::MAX_PARAMS.to_string()),
        "{err}"
    );
    // just under it builds; just over it does not
    let wide = |hidden: usize| {
        format!(
            r#"{{"input_dim":[1,2,2],"conv_param":{{"filter_num":1,"filter_size":1,"pad":0,"stride":1}},"hidden_size":{hidden},"output_size":1,"weight_init_std":null}}"#
        )
    };
    let fits = ModelConfig::from_json("SimpleConvNet", &wide(1)).unwrap();
    assert!(fits.param_count() <= dl_models::MAX_PARAMS);
    let over = ModelConfig::from_json("SimpleConvNet", &wide(4096)).unwrap();
    assert_eq!(over.param_count(), 2 + (4096 + 4096) + (4096 + 1));
}

/// A saved file with the first `from` in its header replaced by `to` (which must be
/// there), the tensors' bytes unchanged.
fn forge_header(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let forged = header.replacen(from, to, 1);
    assert_ne!(forged, header, "the header holds {from}");
    let mut out = (forged.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(forged.as_bytes());
    out.extend_from_slice(&bytes[8 + header_len..]);
    out
}

#[test]
fn a_small_file_cannot_ask_for_a_large_model() {
    // a real file whose configuration claims far more parameters than it holds
    let net = build("SimpleConvNet", None, 0).unwrap();
    let bytes = net.params_to_bytes();
    let forged = forge_header(&bytes, ":100,", ":4000,");
    let err = dl_models::registry::load_from_bytes(&forged, std::path::Path::new("forged")).unwrap_err();
    assert!(
        matches!(err, ModelError::Format { .. }) && err.to_string().contains("more than the file"),
        "{err}"
    );
    // the true file loads
    dl_models::registry::load_from_bytes(&bytes, std::path::Path::new("true")).unwrap();
}

#[test]
fn numbers_and_lists_past_any_model_are_refused_before_they_are_counted() {
    let max = u64::MAX;
    let cases = [
        (
            "Vgg",
            format!(
                r#"{{"input_dim":[1,28,28],"blocks":[[1,{max}]],"hidden_size":8,"output_size":10,"dropout_ratio":0.5,"use_batchnorm":true}}"#
            ),
            "`blocks[0][1]` is 18446744073709551615",
        ),
        (
            "ConvStack",
            format!(r#"{{"input_dim":[1,28,28],"kernel_size":3,"channels":[4,{max}],"output_size":10,"use_batchnorm":true}}"#),
            "`channels[1]` is",
        ),
        (
            "SimpleConvNet",
            r#"{"input_dim":[1,28,28],"conv_param":{"filter_num":4,"filter_size":5,"pad":0,"stride":4097},"hidden_size":5,"output_size":10,"weight_init_std":null}"#.to_string(),
            "`conv_param.stride` is 4097, more than any size a model takes (4096)",
        ),
        (
            "ConvStack",
            format!(
                r#"{{"input_dim":[1,28,28],"kernel_size":1,"channels":[{}],"output_size":10,"use_batchnorm":true}}"#,
                ["2"; 65].join(",")
            ),
            "`channels` lists 65 items, more than any list a model takes (64)",
        ),
        ("Vgg", "5000".to_string(), "the configuration is 5000"),
    ];
    for (kind, json, want) in &cases {
        let err = ModelConfig::from_json(kind, json).unwrap_err();
        assert!(
            matches!(err, ModelError::Config { .. }) && err.to_string().contains(want),
            "{kind}: {err}, want {want:?}"
        );
    }
    // at the bounds the configuration parses, and counts
    let at_bound = ModelConfig::from_json(
        "ConvStack",
        &format!(
            r#"{{"input_dim":[1,28,4096],"kernel_size":1,"channels":[{}],"output_size":10,"use_batchnorm":true}}"#,
            ["2"; 64].join(",")
        ),
    )
    .unwrap();
    // 64 convolutions without bias (1 -> 2, then 2 -> 2), 64 batch norms of 2, the Affine
    assert_eq!(
        at_bound.param_count(),
        (2 + 63 * 4) + 64 * 4 + (2 * 28 * 4096 * 10 + 10)
    );
    // a file whose configuration asks for a size past any model: a typed error
    let bytes = build("ConvStack", None, 0).unwrap().params_to_bytes();
    let forged = forge_header(&bytes, "176", &max.to_string());
    let err = dl_models::registry::load_from_bytes(&forged, std::path::Path::new("forged")).unwrap_err();
    assert!(
        matches!(err, ModelError::Config { .. }) && err.to_string().contains("more than any size"),
        "{err}"
    );
}

#[test]
fn the_head_is_what_depends_on_the_classes_and_can_start_fresh_for_as_many_classes() {
    let heads = [
        ("DeepConvNet", vec!["W8", "b8"]),
        ("SimpleConvNet", vec!["W3", "b3"]),
        ("Vgg", vec!["classifier.3.W", "classifier.3.b"]),
        ("ResNet", vec!["fc.W", "fc.b"]),
        ("GoogLeNet", vec!["fc.W", "fc.b"]),
        ("ConvStack", vec!["classifier.0.W", "classifier.0.b"]),
    ];
    for (kind, want) in heads {
        assert_eq!(
            ModelConfig::default_for(kind).unwrap().head_names().unwrap(),
            want,
            "{kind}"
        );
    }
    // a trained file into a network of as many classes, its head left as it starts
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pre.safetensors");
    build("SimpleConvNet", None, 1).unwrap().save_params(&file).unwrap();
    let pre = load(&file).unwrap();
    let mut net = build("SimpleConvNet", None, 2).unwrap();
    let fresh = build("SimpleConvNet", None, 2).unwrap();
    let head = vec!["W3".to_string(), "b3".to_string()];
    let report = net.load_matching_except(&file, &head).unwrap();
    let value = |n: &Network, name: &str| n.params().into_iter().find(|(p, _)| p == name).unwrap().1.clone();
    for name in ["W1", "b1", "W2", "b2"] {
        assert_eq!(value(&net, name), value(&pre, name), "{name} from the file");
    }
    for name in ["W3", "b3"] {
        assert_eq!(value(&net, name), value(&fresh, name), "{name} as it started");
    }
    assert_ne!(
        value(&net, "W3"),
        value(&pre, "W3"),
        "not the file's (biases start at 0 in both)"
    );
    assert_eq!(report.loaded, ["W1", "W2", "b1", "b2"]);
    let skipped: Vec<&str> = report.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, ["W3", "b3"]);
    assert!(report.skipped[0].1.contains("new head"));
    // a one-class model has a head too
    let one = r#"{"input_dim":[1,28,28],"conv_param":{"filter_num":2,"filter_size":5,"pad":0,"stride":1},"hidden_size":3,"output_size":1,"weight_init_std":null}"#;
    let one = ModelConfig::from_json("SimpleConvNet", one).unwrap();
    assert_eq!(one.head_names().unwrap(), ["W3", "b3"]);
    // from bytes, as from the file
    let bytes = std::fs::read(&file).unwrap();
    let mut other = build("SimpleConvNet", None, 3).unwrap();
    let report = other.load_matching_from_bytes(&bytes, &file).unwrap();
    assert_eq!(report.loaded.len(), 6);
    assert_eq!(value(&other, "W3"), value(&pre, "W3"));
    // without the exception everything is loaded
    let report = net.load_matching(&file).unwrap();
    assert!(report.skipped.is_empty() && report.loaded.len() == 6);
    assert_eq!(value(&net, "W3"), value(&pre, "W3"));
}

#[test]
fn overrides_replace_the_named_fields_and_refuse_unknown_ones() {
    let deep = ModelConfig::default_for("DeepConvNet").unwrap();
    let changed = deep
        .with_overrides(r#"{"dropout_ratio": 0.0, "hidden_size": 64}"#)
        .unwrap();
    let ModelConfig::DeepConvNet(c) = &changed else {
        panic!("kind changed: {changed:?}")
    };
    assert_eq!((c.dropout_ratio, c.hidden_size), (0.0, 64));
    let ModelConfig::DeepConvNet(d) = &deep else {
        unreachable!()
    };
    // every other field as it was
    assert_eq!(
        DeepConvNetConfig {
            dropout_ratio: d.dropout_ratio,
            hidden_size: d.hidden_size,
            ..c.clone()
        },
        d.clone()
    );
    assert_eq!(deep.with_overrides("{}").unwrap(), deep);
    for bad in [
        r#"{"dropout": 0.0}"#,
        r#"{"hidden_size": "wide"}"#,
        "[1, 2]",
        "not json",
    ] {
        let err = deep.with_overrides(bad).unwrap_err();
        assert!(matches!(err, ModelError::Config { .. }), "{bad}: {err:?}");
    }
    let message = deep.with_overrides(r#"{"dropout": 0.0}"#).unwrap_err().to_string();
    assert!(message.contains("dropout_ratio"), "{message}");
    // any kind
    for kind in MODEL_KINDS {
        let config = ModelConfig::default_for(kind).unwrap();
        assert_eq!(
            config.with_overrides(r#"{"output_size": 3}"#).unwrap(),
            config.with_output_size(3).unwrap()
        );
    }
}
