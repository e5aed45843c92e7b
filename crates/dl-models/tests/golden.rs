//! Every model against golden outputs from an independent implementation: PyTorch, in
//! float64, from `scripts/torch_models.py golden` (the files in `tests/golden/`, so the
//! test needs no Python). For each model the script wrote a dlfs parameter file (random
//! weights and batch-norm statistics, with the model's kind and configuration in its
//! metadata, as dlfs writes them) and a fixed input batch with: the logits in evaluation
//! mode; after one training-mode forward and backward, the logits, the loss, every
//! parameter's gradient and the updated running statistics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dl_layers::{Labels, Tensor};
use safetensors::SafeTensors;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The float64 tensors of a golden file, by name, with their shapes.
fn read_f64(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F64, "{name}");
            let data = v
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

fn tensor(t: &(Vec<usize>, Vec<f64>)) -> Tensor {
    Tensor::from_shape_vec(t.0.clone(), t.1.iter().map(|&v| v as f32).collect()).unwrap()
}

/// Largest `|a - b|`, and the largest `|b|`.
fn diff(a: &Tensor, b: &(Vec<usize>, Vec<f64>)) -> (f64, f64) {
    assert_eq!(a.shape(), &b.0[..]);
    let d = a
        .iter()
        .zip(&b.1)
        .map(|(&x, &y)| (f64::from(x) - y).abs())
        .fold(0.0, f64::max);
    (d, b.1.iter().map(|v| v.abs()).fold(0.0, f64::max))
}

fn check(kind: &str) {
    let dir = golden_dir();
    let stem = kind.to_lowercase();
    let mut net = dl_models::load(dir.join(format!("{stem}.safetensors"))).unwrap();
    assert_eq!(net.kind(), kind);
    let g = read_f64(&dir.join(format!("{stem}-golden.safetensors")));
    let x = tensor(&g["input"]);
    let labels: Vec<usize> = g["labels"].1.iter().map(|&v| v as usize).collect();

    // evaluation mode: the running statistics, no dropout
    let y = net.predict(x.clone(), false).unwrap();
    let (d, scale) = diff(&y, &g["logits_eval"]);
    assert!(
        d <= 1e-4,
        "{kind}: evaluation logits differ by {d:e} (largest logit {scale})"
    );

    // training mode: batch statistics, then the gradients of the mean cross-entropy
    let y = net.predict(x.clone(), true).unwrap();
    let (d, _) = diff(&y, &g["logits_train"]);
    assert!(d <= 1e-4, "{kind}: training logits differ by {d:e}");
    let mut net = dl_models::load(dir.join(format!("{stem}.safetensors"))).unwrap();
    let loss = net.gradient(x, Labels::Indices(&labels)).unwrap();
    let want = g["loss_train"].1[0];
    assert!(
        (f64::from(loss) - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{kind}: loss {loss} vs {want}"
    );
    let grads = net.grads();
    let mut checked = 0;
    for (name, grad) in &grads {
        let want = &g[&format!("grad.{name}")];
        let (d, scale) = diff(grad, want);
        assert!(
            d <= 1e-4 * scale + 1e-5,
            "{kind}: gradient of {name} differs by {d:e} (largest {scale:e})"
        );
        checked += 1;
    }
    let expected = g.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        checked, expected,
        "{kind}: every gradient of the golden file is compared"
    );
    // the running statistics after one training forward (PyTorch's update rule)
    let saved = dl_models::registry::read_model_config(dir.join(format!("{stem}.safetensors"))).unwrap();
    assert_eq!(saved.kind(), kind);
    let bytes = net.params_to_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (key, want) in g.iter().filter(|(k, _)| k.starts_with("after.")) {
        let name = &key["after.".len()..];
        let v = st.tensor(name).unwrap();
        let got: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let got = Tensor::from_shape_vec(v.shape().to_vec(), got).unwrap();
        let (d, scale) = diff(&got, want);
        assert!(
            d <= 1e-5 * scale.max(1.0),
            "{kind}: {name} after training differs by {d:e}"
        );
    }
}

#[test]
fn deep_convnet_matches_pytorch() {
    check("DeepConvNet");
}

#[test]
fn vgg_matches_pytorch() {
    check("Vgg");
}

#[test]
fn resnet_matches_pytorch() {
    check("ResNet");
}

#[test]
fn googlenet_matches_pytorch() {
    check("GoogLeNet");
}

#[test]
fn binary_convnet_matches_pytorch() {
    // the script drew the input so that no sign's input lies within 1e-5 of a jump of
    // the sign (0) or of its gradient (+-1): float32's error cannot flip one
    check("BinaryConvNet");
}

#[test]
fn conv_stack_matches_pytorch() {
    check("ConvStack");
}
