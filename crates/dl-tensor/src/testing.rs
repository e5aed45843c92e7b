//! Test support shared by the kernels' unit tests.

use ndarray::Array4;
use rand::{Rng, SeedableRng};

use crate::DirectConv;

/// A random array in [-1, 1) from a seed.
pub(crate) fn random4(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_fn(shape, |_| rng.gen_range(-1.0..1.0))
}

/// Whether the CPU runs the AVX-512 kernels; says so on stderr when it does not (the
/// tests of those kernels then have nothing to check: their `new` returns `None`).
pub(crate) fn avx512_or_say() -> bool {
    let yes = DirectConv::is_supported();
    if !yes {
        eprintln!("no AVX-512 on this CPU: the direct and Winograd convolutions are not used here, nothing to test");
    }
    yes
}

/// Checks a filter-gradient kernel: `accumulate(dw, db)` must add the gradient of the
/// image `x` `(1, C, H, W)` and `dout` `(1, FN, OH, OW)` twice to `dw` `(FN, C*FH*FW)`
/// and `db`, which start non-zero (`dw[j] = 0.01 j`, `db[f] = f`: the sums must be
/// added, not stored). The reference is `dout · col^T` with the plain im2col, in f64.
pub(crate) fn assert_adds_the_weight_gradient_twice(
    case: usize,
    x: &Array4<f32>,
    dout: &Array4<f32>,
    (fh, fw, pad): (usize, usize, usize),
    accumulate: impl FnOnce(&mut [f32], &mut [f32]),
) {
    let f = dout.dim().1;
    let k = x.dim().1 * fh * fw;
    let positions = dout.dim().2 * dout.dim().3;
    let mut dw: Vec<f32> = (0..f * k).map(|j| j as f32 * 0.01).collect();
    let mut db: Vec<f32> = (0..f).map(|j| j as f32).collect();
    accumulate(&mut dw, &mut db);
    let col = crate::reference::im2col_reference(&x.view(), fh, fw, 1, pad); // (OH*OW, K)
    let dm = dout.view().into_shape_with_order((f, positions)).unwrap();
    for fi in 0..f {
        let want_b = fi as f64 + 2.0 * dm.row(fi).iter().map(|&v| f64::from(v)).sum::<f64>();
        assert!(
            (f64::from(db[fi]) - want_b).abs() < 1e-3,
            "case {case}: db[{fi}] {} vs {want_b}",
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
                "case {case}: dW[{fi}][{kj}] {got} vs {want}"
            );
        }
    }
}
