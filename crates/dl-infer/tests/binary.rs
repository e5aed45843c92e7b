//! Packed 1-bit inference against the float forward of the same binarized network, bit
//! for bit, at every popcount kernel this CPU has.

use dl_infer::binary::BinaryNetwork;
use dl_infer::InferError;
use dl_layers::{Layer, Op, Tensor};
use dl_models::{BinaryConvNet, BinaryConvNetConfig, Network};
use dl_tensor::binary::PopcountKernel;
use rand::{Rng, SeedableRng};

fn images(n: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_shape_fn(vec![n, 1, 28, 28], |_| rng.gen_range(0.0..1.0))
}

/// A binarized network whose batch norms have moved from their start (a few training
/// forwards) and whose latent weights are of both signs.
fn network(config: BinaryConvNetConfig) -> Network {
    let mut net = BinaryConvNet::new(config, 3).into_network();
    for seed in 0..3 {
        net.predict(images(16, 100 + seed), true).unwrap();
    }
    // batch norms that turn some channels' signs around (a max pooling's sign is then
    // the AND of the signs, not the OR)
    for p in net.params_and_grads() {
        if p.name.ends_with("gamma") {
            p.value.iter_mut().step_by(3).for_each(|g| *g = -*g);
        }
    }
    net
}

#[test]
fn packed_scores_are_the_float_scores_bit_for_bit() {
    // the default network (channels in one word), and one whose channels span words
    // and do not fill them, with a block of three convolutions
    let wide = BinaryConvNetConfig {
        blocks: vec![(1, 70), (3, 130)],
        hidden_size: 40,
        ..Default::default()
    };
    for config in [BinaryConvNetConfig::default(), wide] {
        let mut net = network(config.clone());
        let x = images(24, 1);
        let expected = net.predict(x.clone(), false).unwrap();
        for kernel in PopcountKernel::supported_levels() {
            let packed = BinaryNetwork::new(net.root(), (1, 28, 28)).unwrap().with_kernel(kernel);
            assert_eq!(packed.kernel(), kernel);
            let scores = packed.predict(&x).unwrap();
            assert_eq!(scores.shape(), expected.shape());
            let differ = scores
                .iter()
                .zip(&expected)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differ, 0, "{kernel} on {config:?}: {differ} scores differ");
        }
    }
}

#[test]
fn each_binarized_layer_writes_signs_with_its_batch_norm_fused_in() {
    let net = network(BinaryConvNetConfig::default());
    let packed = BinaryNetwork::new(net.root(), (1, 28, 28)).unwrap();
    // conv, bn, sign | bconv, pool, bn, sign | bconv, bn, sign | bconv, pool, bn, sign |
    // baffine, bn, sign | affine
    assert_eq!(
        packed.steps(),
        [
            "conv",
            "batch-norm+sign",
            "binary+sign",
            "sign-pool",
            "binary+sign",
            "binary+sign",
            "sign-pool",
            "binary+sign",
            "affine"
        ]
    );
}

#[test]
fn binarized_weights_take_one_bit() {
    let net = network(BinaryConvNetConfig::default());
    let packed = BinaryNetwork::new(net.root(), (1, 28, 28)).unwrap();
    // the binarized weights, one bit each, each pixel's channels in whole 64-bit words:
    // 32x32x9, 64x32x9 and 64x64x9 (9 taps of one word per filter) and 3136x512 (49
    // pixels of one word); the first convolution (32x9), the batch norms and the
    // classifier in f32
    let binary_words = 9 * 32 + 9 * 64 + 9 * 64 + 49 * 512;
    let f32_values = 32 * 9 + 2 * (32 + 32 + 64 + 64 + 512) + 512 * 10 + 10;
    assert_eq!(packed.weight_bytes(), 8 * binary_words + 4 * f32_values);
    let float_bytes = 4 * net.param_count();
    assert!(
        packed.weight_bytes() * 25 < float_bytes,
        "{} vs {float_bytes}",
        packed.weight_bytes()
    );
}

#[test]
fn ops_without_a_one_bit_form_and_wrong_inputs_are_errors() {
    let net = network(BinaryConvNetConfig::default());
    let packed = BinaryNetwork::new(net.root(), (1, 28, 28)).unwrap();
    let err = packed.predict(&Tensor::zeros(vec![2, 1, 27, 28])).unwrap_err();
    assert!(matches!(err, InferError::Shape { .. }), "{err}");
    assert!(BinaryNetwork::new(net.root(), (3, 28, 28)).is_err());
    assert!(BinaryNetwork::new(net.root(), (1, 20, 28)).is_err());
    let relu = Op::Sequential(vec![Op::Relu]);
    let err = BinaryNetwork::from_op(&relu, (1, 4, 4)).unwrap_err();
    assert!(err.to_string().contains("ReLU"), "{err}");
    // a binarized layer fed real values
    let op = net.root().inference_op().unwrap();
    let Op::Sequential(parts) = op else {
        panic!("a Sequential")
    };
    let Op::Sequential(features) = &parts[0] else {
        panic!("features")
    };
    let skipped = Op::Sequential(vec![features[0].clone(), features[3].clone()]);
    let err = BinaryNetwork::from_op(&skipped, (1, 28, 28))
        .unwrap()
        .predict(&images(1, 0))
        .unwrap_err();
    assert!(err.to_string().contains("Sign"), "{err}");
}

#[test]
fn the_packed_file_is_32x_smaller_and_gives_the_same_scores() {
    let net = network(BinaryConvNetConfig::default());
    let packed = BinaryNetwork::new(net.root(), (1, 28, 28)).unwrap();
    let bytes = packed.to_bytes();
    assert!(BinaryNetwork::is_binary_file(&bytes));
    assert!(!BinaryNetwork::is_binary_file(&net.params_to_bytes()));
    let float_file = net.params_to_bytes().len();
    // the binarized weights at one bit (1,675,200 / 8 bytes), the rest at 32
    assert!(bytes.len() * 28 < float_file, "{} vs {float_file}", bytes.len());
    let signs = (32 * 32 * 9 + 64 * 32 * 9 + 64 * 64 * 9 + 3136 * 512) / 8;
    let floats = 4 * (32 * 9 + 2 * (32 + 32 + 64 + 64 + 512) + 512 * 10 + 10);
    assert!(
        bytes.len() >= signs + floats && bytes.len() < signs + floats + 4096,
        "{}",
        bytes.len()
    );
    let back = BinaryNetwork::from_bytes(&bytes).unwrap();
    let x = images(10, 5);
    assert_eq!(back.predict(&x).unwrap(), packed.predict(&x).unwrap());
    assert_eq!(back.to_bytes(), bytes, "the same bytes again");
}

#[test]
fn broken_packed_files_are_format_errors() {
    let net = network(BinaryConvNetConfig {
        blocks: vec![(1, 8), (1, 8)],
        hidden_size: 16,
        ..Default::default()
    });
    let bytes = BinaryNetwork::new(net.root(), (1, 28, 28)).unwrap().to_bytes();
    for cut in [0, 8, bytes.len() / 2, bytes.len() - 1] {
        let err = BinaryNetwork::from_bytes(&bytes[..cut]).unwrap_err();
        assert!(matches!(err, InferError::Format(_)), "cut at {cut}: {err}");
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let edit = |from: &str, to: &str| {
        let header = &text[8..8 + header_len];
        assert!(header.contains(from), "{from} in {header}");
        let new_header = header.replacen(from, to, 1);
        let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(new_header.as_bytes());
        out.extend_from_slice(&bytes[8 + header_len..]);
        out
    };
    for (from, to) in [
        (r#"\"version\":1"#, r#"\"version\":2"#),
        (r#"\"dims\":[8,8,3,3]"#, r#"\"dims\":[8,9,3,3]"#),
        (
            r#"\"dims\":[8,8,3,3]"#,
            r#"\"dims\":[4000000000,4000000000,4000000000,3]"#,
        ),
        (r#"\"op\":\"sign\""#, r#"\"op\":\"relu\""#),
        (r#"\"pad\":1"#, r#"\"pad\":100000"#),
    ] {
        let err = BinaryNetwork::from_bytes(&edit(from, to)).unwrap_err();
        assert!(matches!(err, InferError::Format(_)), "{to}: {err}");
    }
}

#[test]
fn signs_without_a_batch_norm_and_a_batch_norm_without_a_sign_run_as_in_f32() {
    use dl_layers::{Affine, BatchNormalization, BinaryConvolution, Convolution, Init, Pooling, Sequential, Sign};
    // a sign straight after a binarized convolution (of its sums), a batch norm whose
    // output is not binarized (the classifier reads its reals), a pool of reals
    let mut root = Sequential::new()
        .with(Convolution::new(1, 6, 3, 3, 1, 1, Init::He, 1))
        .with(Pooling::max(2, 2, 2, 0))
        .with(Sign::new())
        .with(BinaryConvolution::new(6, 70, 3, 3, 1, 1, Init::Xavier, 2))
        .with(Sign::new())
        .with(BinaryConvolution::new(70, 9, 3, 3, 2, 0, Init::Xavier, 3))
        .with(BatchNormalization::torchvision(9))
        .with(Affine::new(9 * 6 * 6, 4, Init::He, 4));
    for seed in 0..2 {
        root.forward(images(8, 50 + seed), true).unwrap();
    }
    let x = images(5, 9);
    let expected = root.forward(x.clone(), false).unwrap();
    for kernel in PopcountKernel::supported_levels() {
        let packed = BinaryNetwork::new(&root, (1, 28, 28)).unwrap().with_kernel(kernel);
        assert_eq!(packed.predict(&x).unwrap(), expected, "{kernel}");
    }
}

#[test]
fn a_batch_norm_per_activation_after_a_convolution_keeps_its_sums() {
    use dl_layers::{
        Affine, BatchNormMode, BatchNormalization, BinaryConvolution, Convolution, Init, Sequential, Sign,
    };
    // a scale and shift per pixel and channel: not thresholds per channel, so the engine
    // keeps the sums and applies the batch norm to them
    let mut root = Sequential::new()
        .with(Convolution::new(1, 4, 3, 3, 2, 1, Init::He, 1))
        .with(Sign::new())
        .with(BinaryConvolution::new(4, 5, 3, 3, 2, 1, Init::Xavier, 2))
        .with(BatchNormalization::new(5 * 7 * 7, BatchNormMode::PerActivation))
        .with(Sign::new())
        .with(Affine::new(5 * 7 * 7, 3, Init::He, 3));
    for seed in 0..2 {
        root.forward(images(8, 70 + seed), true).unwrap();
    }
    let x = images(6, 11);
    let expected = root.forward(x.clone(), false).unwrap();
    let packed = BinaryNetwork::new(&root, (1, 28, 28)).unwrap();
    assert_eq!(packed.steps(), ["conv", "sign", "binary", "batch-norm+sign", "affine"]);
    assert_eq!(packed.predict(&x).unwrap(), expected);
}
