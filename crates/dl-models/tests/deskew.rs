//! A network that deskews its images: what it computes, in evaluation and in training,
//! and how its files record it.

use dl_layers::gradcheck::random_input;
use dl_layers::{Deskew, Labels, Layer, Tensor};
use dl_models::registry::load_from_bytes;
use dl_models::{build, load, ModelError, Network};
use std::path::Path;

fn simple(seed: u64) -> Network {
    build("SimpleConvNet", None, seed).unwrap()
}

fn images(n: usize, seed: u64) -> Tensor {
    random_input(&[n, 1, 28, 28], 0.0, seed).mapv(f32::abs)
}

fn deskewed(x: &Tensor) -> Tensor {
    Deskew::new().forward(x.clone(), false).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn a_deskewing_network_scores_the_deskewed_images() {
    let x = images(6, 1);
    let mut plain = simple(2);
    let mut net = simple(2);
    assert!(!net.deskews());
    net.set_deskew(true);
    assert!(net.deskews());
    let want = plain.predict(deskewed(&x), false).unwrap();
    assert_eq!(bits(&net.predict(x.clone(), false).unwrap()), bits(&want));
    assert_eq!(bits(&net.prepare_input(x.clone()).unwrap()), bits(&deskewed(&x)));
    // and they differ from the raw images' scores
    assert_ne!(bits(&plain.predict(x.clone(), false).unwrap()), bits(&want));
    // an inference copy deskews too
    let mut copy = net.clone_for_inference();
    assert_eq!(bits(&copy.predict(x.clone(), false).unwrap()), bits(&want));
    // and a network that stops deskewing scores the raw images again
    net.set_deskew(false);
    assert_eq!(bits(&net.prepare_input(x.clone()).unwrap()), bits(&x));
    assert_eq!(
        bits(&net.predict(x.clone(), false).unwrap()),
        bits(&plain.predict(x, false).unwrap())
    );
}

#[test]
fn training_steps_see_the_deskewed_images() {
    let x = images(5, 3);
    let t = [1usize, 4, 0, 9, 2];
    let mut plain = simple(4);
    let mut net = simple(4);
    net.set_deskew(true);
    let want = plain.gradient(deskewed(&x), Labels::Indices(&t)).unwrap();
    assert_eq!(
        net.gradient(x.clone(), Labels::Indices(&t)).unwrap().to_bits(),
        want.to_bits()
    );
    for ((name, a), (_, b)) in net.grads().into_iter().zip(plain.grads()) {
        assert_eq!(bits(a), bits(b), "{name}");
    }
    let slice = net.gradient_of_slice(x.clone(), Labels::Indices(&t), 10).unwrap();
    assert_eq!(
        slice.to_bits(),
        plain
            .gradient_of_slice(deskewed(&x), Labels::Indices(&t), 10)
            .unwrap()
            .to_bits()
    );
    assert_eq!(
        net.loss(x.clone(), Labels::Indices(&t)).unwrap().to_bits(),
        plain.loss(deskewed(&x), Labels::Indices(&t)).unwrap().to_bits()
    );
}

#[test]
fn a_saved_file_records_the_deskewing_and_loading_restores_it() {
    let x = images(4, 5);
    let mut net = simple(6);
    net.set_deskew(true);
    assert_eq!(net.metadata().get("input").map(String::as_str), Some("deskew"));
    let bytes = net.params_to_bytes();
    let mut back = load_from_bytes(&bytes, Path::new("mem")).unwrap();
    assert!(back.deskews());
    assert_eq!(
        bits(&back.predict(x.clone(), false).unwrap()),
        bits(&net.predict(x.clone(), false).unwrap())
    );
    let dir = std::env::temp_dir().join(format!("dlfs-deskew-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("n.safetensors");
    net.save_params(&path).unwrap();
    assert!(load(&path).unwrap().deskews());
    // loading parameters into a built network takes the file's input stage, both ways
    let mut plain = simple(7);
    plain.load_params(&path).unwrap();
    assert!(plain.deskews());
    let plain_bytes = simple(8).params_to_bytes();
    plain.load_params_from_bytes(&plain_bytes, Path::new("plain")).unwrap();
    assert!(!plain.deskews());
    assert!(!plain.metadata().contains_key("input"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unknown_input_stage_is_a_typed_error_and_changes_nothing() {
    let mut net = simple(9);
    net.set_metadata("input", "whiten".into());
    let bytes = net.params_to_bytes();
    let err = load_from_bytes(&bytes, Path::new("odd.safetensors")).unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }), "{err:?}");
    assert!(err.to_string().contains("whiten"), "{err}");
    let mut other = simple(10);
    let before = other.params_to_bytes();
    assert!(other.load_params_from_bytes(&bytes, Path::new("odd")).is_err());
    assert_eq!(other.params_to_bytes(), before);
    assert!(!other.deskews());
}
