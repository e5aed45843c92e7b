//! The fuzzers' seeds (fuzz/seeds) and corpora (fuzz/corpus) of the packed networks'
//! readers replayed through the same readers as the fuzz targets: every input gives a
//! network or a typed error, never a panic, and each seed (`seed*`, the file of a tiny
//! network built here, which `DLFS_BLESS=1` writes again) reads back whole: the same
//! bytes again when written, scores of the right shape.

use std::path::PathBuf;

use dl_infer::{BinaryNetwork, InferError, QuantizedNetwork};
use dl_layers::{
    Affine, BatchNormMode, BatchNormalization, BinaryAffine, BinaryConvolution, Convolution, Init, Pooling, Relu,
    Sequential, Sign, Tensor,
};
use rand::{Rng, SeedableRng};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn images(n: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_shape_fn(vec![n, 1, 8, 8], |_| rng.gen_range(0.0..1.0))
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for dir in [
        fuzz_dir().join("seeds").join(target),
        fuzz_dir().join("corpus").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            files.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            ));
        }
    }
    files.sort();
    files
}

/// With `DLFS_BLESS=1`, writes `bytes` as the seed `name` of `target`. (The seeds are
/// not compared with a fresh build: calibration runs float kernels, which may round
/// differently on another CPU.)
fn bless(target: &str, name: &str, bytes: &[u8]) {
    if std::env::var_os("DLFS_BLESS").is_some() {
        let path = fuzz_dir().join("seeds").join(target).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
}

/// A binarized network of every op the packed format holds, on 8x8 images.
fn tiny_binary() -> Sequential {
    Sequential::new()
        .with(Convolution::new(1, 4, 3, 3, 2, 1, Init::He, 1))
        .with(BatchNormalization::torchvision(4))
        .with(Sign::new())
        .with(BinaryConvolution::new(4, 8, 3, 3, 1, 1, Init::Xavier, 2))
        .with(Pooling::max(2, 2, 2, 0))
        .with(BatchNormalization::torchvision(8))
        .with(Sign::new())
        .with(BinaryAffine::new(8 * 2 * 2, 6, Init::Xavier, 3))
        .with(BatchNormalization::new(6, BatchNormMode::PerActivation))
        .with(Sign::new())
        .with(Affine::new(6, 3, Init::He, 4))
}

/// A float network for 8-bit quantization, on 8x8 images.
fn tiny_float() -> Sequential {
    Sequential::new()
        .with(Convolution::new(1, 4, 3, 3, 1, 1, Init::He, 5))
        .with(Relu::new())
        .with(Pooling::max(2, 2, 2, 0))
        .with(Affine::new(4 * 4 * 4, 3, Init::He, 6))
}

/// Every input of `target` through `read`: a value or a format error; the seeds whole.
fn replay<T>(target: &str, read: impl Fn(&[u8]) -> Result<T, InferError>, check_seed: impl Fn(&T, &[u8])) {
    let files = corpus(target);
    assert!(files.iter().any(|(n, _)| n.starts_with("seed")), "{target}: no seed");
    for (name, bytes) in files {
        match read(&bytes) {
            Ok(net) if name.starts_with("seed") => check_seed(&net, &bytes),
            Ok(_) | Err(InferError::Format(_)) => {}
            Err(e) if name.starts_with("seed") => panic!("{target}/{name}: {e}"),
            Err(e) => panic!("{target}/{name}: not a format error: {e}"),
        }
    }
}

#[test]
fn the_binary_network_corpus_reads_without_a_panic() {
    let packed = BinaryNetwork::new(&tiny_binary(), (1, 8, 8)).unwrap();
    bless("binary_network", "seed-tiny", &packed.to_bytes());
    replay("binary_network", BinaryNetwork::from_bytes, |net, bytes| {
        assert!(net.to_bytes() == bytes, "the seed written again");
        assert_eq!(net.predict(&images(3, 2)).unwrap().shape(), [3, 3]);
    });
}

#[test]
fn the_quantized_network_corpus_reads_without_a_panic() {
    let q = QuantizedNetwork::quantize(&tiny_float(), &images(8, 3)).unwrap();
    bless("quantized_network", "seed-tiny", &q.to_bytes());
    replay("quantized_network", QuantizedNetwork::from_bytes, |net, bytes| {
        assert!(net.to_bytes() == bytes, "the seed written again");
        assert_eq!(net.predict(&images(3, 4)).unwrap().shape(), [3, 3]);
    });
}
