//! The deskewing layer: what it does to slanted, upright, blank and one-row images, its
//! forward and backward against an independent implementation (PyTorch's own operations
//! and `grid_sample`, in float64: `scripts/torch_models.py deskew`), and its backward
//! (the centre and the skew moving with the input) against the numerical gradient.

use dl_layers::gradcheck::{check_layer, random_input};
use dl_layers::{Deskew, Layer, Tensor};
use ndarray::s;

/// A 1-channel image with ink `value` at each `(row, column)`.
fn image(h: usize, w: usize, ink: &[(usize, usize, f32)]) -> Tensor {
    let mut x = Tensor::zeros(vec![1, 1, h, w]);
    for &(r, c, v) in ink {
        x[[0, 0, r, c]] = v;
    }
    x
}

fn deskew(x: &Tensor) -> Tensor {
    Deskew::new().forward(x.clone(), false).unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}: element {i}: {x} vs {y}");
    }
}

#[test]
fn a_slanted_stroke_becomes_upright_and_centred() {
    // rows 8..=18, columns 4 + (r - 8) / 2: a slope of 1/2, off-centre
    let ink: Vec<_> = (8..19).map(|r| (r, 4 + (r - 8) / 2, 1.0)).collect();
    let x = image(28, 28, &ink);
    let y = deskew(&x);
    // the ink keeps its mass and its centre of mass moves to (14, 14)
    let mass: f32 = y.iter().sum();
    assert!((mass - 11.0).abs() < 1e-3, "mass {mass}");
    let (mut cr, mut cc) = (0.0, 0.0);
    for ((_, _, r, c), &v) in y.indexed_iter().map(|(i, v)| ((i[0], i[1], i[2], i[3]), v)) {
        cr += r as f32 * v;
        cc += c as f32 * v;
    }
    assert!(
        (cr / mass - 14.0).abs() < 1e-3 && (cc / mass - 14.0).abs() < 1e-3,
        "centre {} {}",
        cr / mass,
        cc / mass
    );
    // and its column no longer follows its row: the covariance is gone
    let (mut cov, mut var) = (0.0, 0.0);
    for (i, &v) in y.indexed_iter() {
        let (dr, dc) = (i[2] as f32 - 14.0, i[3] as f32 - 14.0);
        cov += v * dr * dc;
        var += v * dr * dr;
    }
    let mean_col = ink.iter().map(|&(_, c, _)| c as f32).sum::<f32>() / 11.0;
    let before: f32 = ink
        .iter()
        .map(|&(r, c, _)| (r as f32 - 13.0) * (c as f32 - mean_col))
        .sum();
    assert!(before > 5.0, "the test image is slanted: {before}");
    assert!(cov.abs() < 0.05 * var, "cov {cov}, var {var}");
}

#[test]
fn an_exact_shear_is_undone_exactly() {
    // the stroke (r, r) for r in 6..=22: centre (14, 14), skew 1; output (i, 14) samples
    // input (i, i), a grid point, so the result is exact
    let x = image(28, 28, &(6..23).map(|r| (r, r, 1.0)).collect::<Vec<_>>());
    let y = deskew(&x);
    let mut want = Tensor::zeros(vec![1, 1, 28, 28]);
    for r in 6..23 {
        want[[0, 0, r, 14]] = 1.0;
    }
    assert_close(&y, &want, 1e-6, "sheared stroke");
}

#[test]
fn an_upright_centred_digit_is_unchanged() {
    // symmetric about row 14 and column 14: no skew, centred already
    let mut ink = Vec::new();
    for r in 8..21 {
        ink.push((r, 11, 0.7));
        ink.push((r, 17, 0.7));
    }
    for c in 11..18 {
        ink.push((8, c, 1.0));
        ink.push((20, c, 1.0));
    }
    let x = image(28, 28, &ink);
    assert_close(&deskew(&x), &x, 1e-6, "upright digit");
}

#[test]
fn an_off_centre_image_is_moved_by_whole_pixels_exactly() {
    let x = image(28, 28, &[(3, 5, 1.0), (5, 5, 1.0), (4, 4, 0.5), (4, 6, 0.5)]);
    let want = image(28, 28, &[(13, 14, 1.0), (15, 14, 1.0), (14, 13, 0.5), (14, 15, 0.5)]);
    assert_close(&deskew(&x), &want, 1e-6, "moved");
}

#[test]
fn a_blank_image_passes_and_a_single_row_is_centred_without_a_shear() {
    let blank = Tensor::zeros(vec![2, 1, 6, 5]);
    assert_close(&deskew(&blank), &blank, 0.0, "blank");
    // one row of ink: its row variance is 0, so only the centring applies
    let x = image(8, 8, &[(1, 1, 1.0), (1, 2, 1.0), (1, 3, 1.0)]);
    let want = image(8, 8, &[(4, 3, 1.0), (4, 4, 1.0), (4, 5, 1.0)]);
    assert_close(&deskew(&x), &want, 1e-6, "one row");
    // the gradient of a blank image passes through unchanged
    let mut layer = Deskew::new();
    layer.forward(blank.clone(), true).unwrap();
    let g = random_input(&[2, 1, 6, 5], 0.0, 3);
    assert_close(&layer.backward(g.clone()), &g, 0.0, "blank backward");
}

#[test]
fn every_channel_takes_the_warp_of_the_summed_ink() {
    // channel 0 holds the stroke, channel 1 a copy at half strength: both come out as
    // the 1-channel result of the summed ink, scaled
    let one = image(28, 28, &(6..23).map(|r| (r, r, 1.0)).collect::<Vec<_>>());
    let mut x = Tensor::zeros(vec![1, 2, 28, 28]);
    x.slice_mut(s![.., 0..1, .., ..]).assign(&one);
    x.slice_mut(s![.., 1..2, .., ..]).assign(&(&one * 0.5));
    let y = deskew(&x);
    let single = deskew(&one);
    assert_close(
        &y.slice(s![.., 0..1, .., ..]).to_owned().into_dyn(),
        &single,
        1e-6,
        "channel 0",
    );
    assert_close(
        &y.slice(s![.., 1..2, .., ..]).to_owned().into_dyn(),
        &(&single * 0.5),
        1e-6,
        "channel 1",
    );
}

#[test]
fn each_image_of_a_batch_is_deskewed_on_its_own() {
    let x = random_input(&[3, 1, 9, 8], 0.0, 11).mapv(f32::abs);
    let y = deskew(&x);
    for n in 0..3 {
        let alone = deskew(&x.slice(s![n..n + 1, .., .., ..]).to_owned().into_dyn());
        assert_close(
            &y.slice(s![n..n + 1, .., .., ..]).to_owned().into_dyn(),
            &alone,
            0.0,
            "image",
        );
    }
}

#[test]
fn backward_matches_numerical_gradient() {
    // non-negative ink, as images have; two channels, a non-square frame, a batch of 2.
    // The bound of the other layers' checks (tests/gradients.rs): the worst error here
    // is about 2e-5 at this step.
    for (shape, seed) in [
        (&[2, 1, 9, 8][..], 21),
        (&[2, 2, 7, 9][..], 22),
        (&[1, 1, 12, 12][..], 23),
    ] {
        let x = random_input(shape, 0.05, seed).mapv(f32::abs);
        let r = check_layer(&Deskew::new(), &x, 1e-2, seed);
        assert_eq!(r.checked, x.len());
        assert!(
            r.max_error < 1e-3,
            "{shape:?}: max error {} at {}",
            r.max_error,
            r.worst
        );
    }
}

#[test]
fn a_wrong_shape_is_an_error_naming_the_layer() {
    let mut layer = Deskew::new();
    for bad in [&[2, 28, 28][..], &[1, 0, 28, 28], &[1, 1, 0, 28], &[1, 1, 28, 0]] {
        let err = layer.forward(Tensor::zeros(bad.to_vec()), false).unwrap_err();
        assert!(err.to_string().contains("Deskew"), "{err}");
    }
    assert_eq!(layer.output_shape(&[4, 1, 28, 28]).unwrap(), vec![4, 1, 28, 28]);
    assert_eq!(layer.name(), "Deskew");
}

/// The golden file's tensor `name` (float64) as `f32` values and its shape.
fn golden(st: &safetensors::SafeTensors<'_>, name: &str) -> Tensor {
    let view = st.tensor(name).unwrap();
    let values: Vec<f32> = view
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
        .collect();
    Tensor::from_shape_vec(view.shape().to_vec(), values).unwrap()
}

#[test]
fn forward_and_backward_match_pytorch() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/deskew.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // sparse random ink: (3, 1, 28, 28) and (2, 2, 9, 8)
    for case in 0..2 {
        let (x, r) = (golden(&st, &format!("{case}.x")), golden(&st, &format!("{case}.r")));
        let mut layer = Deskew::new();
        let y = layer.forward(x.clone(), true).unwrap();
        // both compute in float64 and round once: they agree to the last bit or so
        assert_close(&y, &golden(&st, &format!("{case}.y")), 1e-6, "forward");
        let dx = layer.backward(r);
        let want = golden(&st, &format!("{case}.dx"));
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert_close(&dx, &want, 1e-6 * scale, "backward");
    }
}
