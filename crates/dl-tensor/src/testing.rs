//! Test support shared by the kernels' unit tests.

use ndarray::{Array1, Array4, Axis};
use rand::{Rng, SeedableRng};

use crate::reference::conv2d_reference;
use crate::{ConvGeometry, ConvKernel, Isa};

/// A random array in [-1, 1) from a seed.
pub(crate) fn random4(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_fn(shape, |_| rng.gen_range(-1.0..1.0))
}

/// The levels a kernel can be built at on this CPU (`Scalar` and `Neon`, in portable
/// Rust, everywhere), after checking that `build` declines the others.
pub(crate) fn levels<K>(build: Build<K>, w: &[f32], f: usize, g: &ConvGeometry) -> Vec<Isa> {
    let (here, elsewhere): (Vec<Isa>, Vec<Isa>) = Isa::ALL.into_iter().partition(|i| i.runs_here());
    for isa in elsewhere {
        assert!(
            build(w, f, g, isa).is_none(),
            "a kernel built at {isa}, which this CPU lacks"
        );
    }
    assert!(here.len() >= 2, "Scalar and Neon run everywhere");
    here
}

/// A test geometry: `(C, H, W, FN, FH, FW, pad)` (the stride is given apart).
pub(crate) type Case = (usize, usize, usize, usize, usize, usize, usize);

/// Builds a kernel from `W` `(FN, C*FH*FW)`, `FN`, the geometry and the level
/// (`with_isa` of a kernel).
pub(crate) type Build<K> = fn(&[f32], usize, &ConvGeometry, Isa) -> Option<K>;

/// Checks `forward_image` of the kernels `build` makes, at every level this CPU runs,
/// against the seven-loop reference convolution on every case, two images each, with
/// scratch and output full of NaN (the kernel must neither depend on the scratch's
/// content nor leave an output unwritten).
pub(crate) fn assert_forward_matches_reference<K: ConvKernel>(cases: &[Case], build: Build<K>) {
    assert_forward_matches_reference_at(cases, 1, build);
}

/// [`assert_forward_matches_reference`] at the stride `stride`.
pub(crate) fn assert_forward_matches_reference_at<K: ConvKernel>(cases: &[Case], stride: usize, build: Build<K>) {
    for (i, &(c, h, w, f, fh, fw, pad)) in cases.iter().enumerate() {
        let x = random4((2, c, h, w), i as u64);
        let wt = random4((f, c, fh, fw), 100 + i as u64);
        let b = Array1::from_shape_fn(f, |j| j as f32 * 0.25 - 1.0);
        let want = conv2d_reference(&x.view(), &wt.view(), &b.view(), stride, pad);
        let g = ConvGeometry::new(c, h, w, fh, fw, stride, pad).unwrap();
        for isa in levels(build, wt.as_slice().unwrap(), f, &g) {
            let d = build(wt.as_slice().unwrap(), f, &g, isa).expect("a geometry the kernel computes");
            assert_eq!(d.isa(), isa);
            let mut scratch = vec![f32::NAN; d.scratch_len()];
            for n in 0..2 {
                let xi = x.index_axis(Axis(0), n);
                let mut out = vec![f32::NAN; f * g.out_h * g.out_w];
                d.forward_image(
                    xi.as_standard_layout().as_slice().unwrap(),
                    Some(b.as_slice().unwrap()),
                    &mut out,
                    &mut scratch,
                );
                for (j, (got, want)) in out.iter().zip(want.index_axis(Axis(0), n).iter()).enumerate() {
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{isa}: case {i}, image {n}, value {j}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// Checks `weight_gradient_image` of the kernels `build` makes, at every level this CPU
/// runs, on every case: the gradient of one image added twice to an accumulator, handed
/// to `dw` `(FN, C*FH*FW)` and `db`, which start non-zero (`dw[j] = 0.01 j`,
/// `db[f] = f`: the sums must be added, not stored), against `dout · col^T` with the
/// plain im2col, in f64. Scratch full of NaN.
pub(crate) fn assert_weight_gradient_matches_reference<K: ConvKernel>(cases: &[Case], build: Build<K>) {
    assert_weight_gradient_matches_reference_at(cases, 1, build);
}

/// [`assert_weight_gradient_matches_reference`] at the stride `stride`.
pub(crate) fn assert_weight_gradient_matches_reference_at<K: ConvKernel>(
    cases: &[Case],
    stride: usize,
    build: Build<K>,
) {
    for (case, &(c, h, w, f, fh, fw, pad)) in cases.iter().enumerate() {
        let g = ConvGeometry::new(c, h, w, fh, fw, stride, pad).unwrap();
        let k = g.col_rows();
        let positions = g.out_h * g.out_w;
        let x = random4((1, c, h, w), 200 + case as u64);
        let dout = random4((1, f, g.out_h, g.out_w), 300 + case as u64);
        for isa in levels(build, &vec![0.0; f * k], f, &g) {
            let d = build(&vec![0.0; f * k], f, &g, isa).expect("a geometry the kernel computes");
            let mut dw: Vec<f32> = (0..f * k).map(|j| j as f32 * 0.01).collect();
            let mut db: Vec<f32> = (0..f).map(|j| j as f32).collect();
            let mut scratch = vec![f32::NAN; d.gradient_scratch_len()];
            let mut acc = d.gradient_accumulator();
            for _ in 0..2 {
                d.weight_gradient_image(x.as_slice().unwrap(), dout.as_slice().unwrap(), &mut acc, &mut scratch);
            }
            d.add_gradient(&acc, &mut dw, &mut db);
            let col = crate::reference::im2col_reference(&x.view(), fh, fw, stride, pad); // (OH*OW, K)
            let dm = dout.view().into_shape_with_order((f, positions)).unwrap();
            for fi in 0..f {
                let want_b = fi as f64 + 2.0 * dm.row(fi).iter().map(|&v| f64::from(v)).sum::<f64>();
                assert!(
                    (f64::from(db[fi]) - want_b).abs() < 1e-3,
                    "{isa}: case {case}: db[{fi}] {} vs {want_b}",
                    db[fi]
                );
                for kj in 0..k {
                    let mut want = (fi * k + kj) as f64 * 0.01;
                    for p in 0..positions {
                        want += 2.0 * f64::from(dm[[fi, p]]) * f64::from(col[[p, kj]]);
                    }
                    let got = f64::from(dw[fi * k + kj]);
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{isa}: case {case}: dW[{fi}][{kj}] {got} vs {want}"
                    );
                }
            }
        }
    }
}
