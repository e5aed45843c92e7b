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
