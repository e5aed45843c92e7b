//! The batch-norm loops against plain formulas, and every instruction-set level this CPU
//! has against the scalar one, bit for bit.

use dl_tensor::norm::{self, Dims};
use dl_tensor::Isa;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Shapes `(N, F, S)`: rows shorter than the 32 sum lanes, not a multiple of them,
/// exactly one and many; one position per feature (the per-activation form); the
/// ResNet stages' 28x28, 14x14 and 7x7 planes.
const DIMS: [Dims; 8] = [
    (2, 3, 7),
    (3, 2, 33),
    (2, 2, 32),
    (4, 3, 100),
    (5, 6, 1),
    (2, 4, 784),
    (3, 5, 196),
    (4, 7, 49),
];

fn values(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-3.0f32..3.0)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Per-feature parameters of the test's shape.
struct Case {
    dims: Dims,
    a: Vec<f32>,
    b: Vec<f32>,
    p: [Vec<f32>; 4],
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    DIMS.iter()
        .map(|&dims| {
            let (n, f, s) = dims;
            let len = n * f * s;
            let p = [(); 4].map(|_| values(f, &mut rng));
            Case {
                dims,
                a: values(len, &mut rng),
                b: values(len, &mut rng),
                p,
            }
        })
        .collect()
}

#[test]
fn the_sums_are_the_sums_of_each_feature() {
    for c in cases() {
        let (n, f, s) = c.dims;
        let sums = norm::channel_sums(Isa::Scalar, &c.a, &c.b, c.dims);
        assert_eq!(sums.len(), f);
        for (fi, &(sa, sab)) in sums.iter().enumerate() {
            let (mut ea, mut eab, mut scale) = (0.0f64, 0.0f64, 0.0f64);
            for ni in 0..n {
                for j in 0..s {
                    let at = (ni * f + fi) * s + j;
                    let (x, y) = (f64::from(c.a[at]), f64::from(c.b[at]));
                    ea += x;
                    eab += x * y;
                    scale += (x * y).abs() + x.abs();
                }
            }
            // f32 partial sums: within a few roundings of the magnitudes summed
            let tol = 1e-6 * scale + 1e-12;
            assert!(
                (sa - ea).abs() <= tol,
                "{:?} feature {fi}: Σa {sa} against {ea}",
                c.dims
            );
            assert!(
                (sab - eab).abs() <= tol,
                "{:?} feature {fi}: Σab {sab} against {eab}",
                c.dims
            );
        }
    }
}

/// The order of the additions, where it shows: 2^60 + 1 is 2^60 in `f64`.
#[test]
fn the_lanes_are_added_by_halves_and_the_rows_in_sample_order() {
    let big = 2f32.powi(60);
    for isa in Isa::supported_levels() {
        // one row of 32: lane 0 meets lane 16 first, so the 1 of lane 1 survives
        // (lane by lane in order it would be lost: (2^60 + 1) - 2^60 = 0)
        let mut a = vec![0.0f32; 32];
        (a[0], a[1], a[16]) = (big, 1.0, -big);
        assert_eq!(
            norm::channel_sums(isa, &a, &[1.0; 32], (1, 1, 32)),
            vec![(1.0, 1.0)],
            "{isa}"
        );
        // a row of 40: the 8 after the first 32 go to lanes 0-7 (value 33 to lane 1);
        // lane 0 (2^60) absorbs lane 16's 1, then lane 1 (-2^60) cancels it
        let mut a = vec![0.0f32; 40];
        (a[0], a[16], a[33]) = (big, 1.0, -big);
        assert_eq!(norm::channel_sums(isa, &a, &[1.0; 40], (1, 1, 40))[0].0, 0.0, "{isa}");
        // three samples of one value each, added in sample order: (2^60 + 1) - 2^60
        let a = [big, 1.0, -big];
        assert_eq!(
            norm::channel_sums(isa, &a, &[1.0; 3], (3, 1, 1)),
            vec![(0.0, 0.0)],
            "{isa}"
        );
        // and per feature: two features, two samples
        let a = [big, 1.0, -big, 2.0];
        assert_eq!(
            norm::channel_sums(isa, &a, &[1.0; 4], (2, 2, 1)),
            vec![(0.0, 0.0), (3.0, 3.0)],
            "{isa}"
        );
    }
}

#[test]
fn the_elementwise_loops_compute_their_formulas() {
    for c in cases() {
        let (_, f, s) = c.dims;
        let feature = |i: usize| (i / s) % f;
        let [p0, p1, p2, p3] = &c.p;
        // the training forward
        let (mut x, mut xn) = (c.a.clone(), vec![f32::NAN; c.a.len()]);
        norm::normalize(Isa::Scalar, &mut x, &mut xn, p0, p1, p2, p3, c.dims);
        for (i, &v) in c.a.iter().enumerate() {
            let fi = feature(i);
            let n = (v - p0[fi]) * p1[fi];
            assert_eq!(xn[i].to_bits(), n.to_bits(), "{:?} xn[{i}]", c.dims);
            assert_eq!(x[i].to_bits(), (n * p2[fi] + p3[fi]).to_bits(), "{:?} x[{i}]", c.dims);
        }
        // the evaluation forward
        let mut y = c.a.clone();
        norm::scale_shift(Isa::Scalar, &mut y, p0, p1, c.dims);
        for (i, &v) in c.a.iter().enumerate() {
            let fi = feature(i);
            assert_eq!(y[i].to_bits(), (v * p0[fi] + p1[fi]).to_bits(), "{:?} y[{i}]", c.dims);
        }
        // the input gradient
        let mut d = c.a.clone();
        norm::normalize_backward(Isa::Scalar, &mut d, &c.b, p0, p1, p2, c.dims);
        for (i, &v) in c.a.iter().enumerate() {
            let fi = feature(i);
            let e = p0[fi] * (v - p1[fi] - c.b[i] * p2[fi]);
            assert_eq!(d[i].to_bits(), e.to_bits(), "{:?} d[{i}]", c.dims);
        }
    }
}

#[test]
fn every_level_gives_the_scalar_bits() {
    let levels = Isa::supported_levels();
    for c in cases() {
        let [p0, p1, p2, p3] = &c.p;
        let run = |isa: Isa| {
            let sums = norm::channel_sums(isa, &c.a, &c.b, c.dims);
            let (mut x, mut xn) = (c.a.clone(), vec![0.0; c.a.len()]);
            norm::normalize(isa, &mut x, &mut xn, p0, p1, p2, p3, c.dims);
            let mut y = c.a.clone();
            norm::scale_shift(isa, &mut y, p0, p1, c.dims);
            let mut d = c.a.clone();
            norm::normalize_backward(isa, &mut d, &c.b, p0, p1, p2, c.dims);
            let sums: Vec<(u64, u64)> = sums.iter().map(|(a, b)| (a.to_bits(), b.to_bits())).collect();
            (sums, bits(&x), bits(&xn), bits(&y), bits(&d))
        };
        let scalar = run(Isa::Scalar);
        for &isa in &levels {
            assert!(run(isa) == scalar, "{:?} at {isa} differs from scalar", c.dims);
        }
    }
}

#[test]
fn the_sums_do_not_depend_on_the_thread_count() {
    let c = &cases()[5];
    let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let one = pool(1).install(|| norm::channel_sums(Isa::active(), &c.a, &c.b, c.dims));
    let three = pool(3).install(|| norm::channel_sums(Isa::active(), &c.a, &c.b, c.dims));
    assert_eq!(one, three);
}

#[test]
fn each_level_runs_its_own_build() {
    assert_eq!(norm::level(Isa::Scalar), Isa::Scalar);
    assert_eq!(
        norm::level(Isa::Neon),
        Isa::Scalar,
        "NEON is the plain build's baseline"
    );
    for isa in [Isa::Avx2, Isa::Avx512] {
        let expected = if cfg!(target_arch = "x86_64") && isa.supported() {
            isa
        } else {
            Isa::Scalar
        };
        assert_eq!(norm::level(isa), expected, "{isa}");
    }
}

#[test]
#[should_panic(expected = "data length")]
fn a_short_input_is_refused() {
    norm::channel_sums(Isa::active(), &[1.0; 5], &[1.0; 6], (2, 1, 3));
}

#[test]
#[should_panic(expected = "per-feature length")]
fn parameters_of_another_feature_count_are_refused() {
    let mut x = [1.0f32; 6];
    norm::scale_shift(Isa::active(), &mut x, &[1.0; 2], &[0.0; 3], (2, 3, 1));
}
