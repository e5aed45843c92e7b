use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Checks the shapes of `c = a · b`, naming all three otherwise.
pub(crate) fn check(
    what: &str,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    c: &ArrayViewMut2<f32>,
) -> (usize, usize, usize) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert!(
        k == k2 && c.dim() == (m, n),
        "{what}: shapes do not agree: a {:?} · b {:?} -> c {:?}",
        a.dim(),
        b.dim(),
        c.dim()
    );
    (m, k, n)
}

/// `c = alpha · a · b + beta · c` on any strided 2-D views (transposed views included:
/// pass `x.t()`), single-threaded. This is the one GEMM every layer calls. On x86-64 it
/// runs on the `gemm` crate's kernels (AVX-512 where the CPU has it, chosen at run
/// time), which beat `matrixmultiply` on this network's shapes (`docs/PERFORMANCE.md`);
/// elsewhere on [`gemm_matrixmultiply`], the same product on `matrixmultiply`, because
/// the `gemm` crate's aarch64 kernels sum a row of 32 differently from the same row
/// among 70, and a batch's scores must not depend on how it is split.
///
/// Each output's bits depend on its row of `a` and column of `b` only, not on the
/// other rows or columns, except that on x86-64 a product of one row (`M = 1`) takes
/// the `gemm` crate's vector path, which orders its sums otherwise.
///
/// Shapes: `a` `(M, K)`, `b` `(K, N)`, `c` `(M, N)`. With `beta == 0` the old content of
/// `c` is ignored (even NaN), so `c` need not be initialised.
///
/// # Panics
/// If the shapes do not agree (a programmer error); the message gives all three.
pub fn gemm(alpha: f32, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
    let (m, k, n) = check("gemm", a, b, c);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.mapv_inplace(|v| if beta == 0.0 { 0.0 } else { beta * v });
        return;
    }
    if cfg!(target_arch = "x86_64") {
        gemm_crate((m, k, n), alpha, a, b, beta, c);
    } else {
        gemm_matrixmultiply(alpha, a, b, beta, c);
    }
}

/// [`gemm()`] on the `gemm` crate's kernels, for shapes [`check`]ed and not empty.
fn gemm_crate(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    let (rsc, csc) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were
    // checked above, so every element the kernel addresses (i*rs + j*cs for i < rows,
    // j < cols) lies inside the viewed memory. `c` is a unique mutable view, so it
    // aliases neither `a` nor `b`, and a mutable ndarray view never aliases itself.
    // The gemm crate computes dst = alpha·dst + beta·lhs·rhs, reading dst only when
    // asked: its alpha is our beta and its beta our alpha.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            csc,
            rsc,
            beta != 0.0,
            a.as_ptr(),
            csa,
            rsa,
            b.as_ptr(),
            csb,
            rsb,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// [`gemm()`] computed by `matrixmultiply`'s packed kernels: kept as the second backend
/// the benchmarks compare against and the tests check.
pub fn gemm_matrixmultiply(
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    let (m, k, n) = check("gemm_matrixmultiply", a, b, c);
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    let (rsc, csc) = (c.strides()[0], c.strides()[1]);
    // SAFETY: as in `gemm`: shapes checked, pointers and strides from live views, `c`
    // unique and not aliasing the inputs.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
}

/// Below this many multiply-adds a product is not worth splitting across threads.
const PAR_MIN_MACS: usize = 1 << 20;

/// Like [`gemm()`], but splits the larger output dimension into blocks computed on the
/// rayon pool when the product is large enough to pay for it. The blocks give the
/// bits [`gemm()`] gives the whole product, whatever the thread count: a block of rows
/// is never a single row (see [`gemm()`]).
pub fn par_gemm(alpha: f32, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < PAR_MIN_MACS {
        return gemm(alpha, a, b, beta, c);
    }
    assert!(
        b.dim().0 == k && c.dim() == (m, n),
        "par_gemm: shapes do not agree: a {:?} · b {:?} -> c {:?}",
        a.dim(),
        b.dim(),
        c.dim()
    );
    let parts = threads * 2;
    if m >= n {
        let chunk = row_block(m, parts);
        c.axis_chunks_iter_mut(Axis(0), chunk)
            .into_par_iter()
            .zip(a.axis_chunks_iter(Axis(0), chunk).into_par_iter())
            .for_each(|(mut cc, aa)| gemm(alpha, &aa, b, beta, &mut cc));
    } else {
        let chunk = n.div_ceil(parts).max(8);
        c.axis_chunks_iter_mut(Axis(1), chunk)
            .into_par_iter()
            .zip(b.axis_chunks_iter(Axis(1), chunk).into_par_iter())
            .for_each(|(mut cc, bb)| gemm(alpha, a, &bb, beta, &mut cc));
    }
}

/// Rows a block of `par_gemm` takes of `m` split into about `parts`: at least 8, and
/// never leaving a last block of a single row.
fn row_block(m: usize, parts: usize) -> usize {
    let mut chunk = m.div_ceil(parts).max(8);
    while chunk < m && m % chunk == 1 {
        chunk += 1;
    }
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::matmul_reference;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    fn random(m: usize, n: usize, seed: u64) -> Array2<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((m, n), |_| rng.gen_range(-1.0..1.0))
    }

    fn bits(c: &Array2<f32>) -> Vec<u32> {
        c.iter().map(|v| v.to_bits()).collect()
    }

    fn close(a: &Array2<f32>, b: &Array2<f32>) {
        assert_eq!(a.dim(), b.dim());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn gemm_matches_reference_with_transposes_alpha_beta() {
        for &(m, k, n) in &[(1, 1, 1), (7, 5, 3), (16, 144, 784), (33, 17, 65)] {
            let a = random(m, k, 1);
            let b = random(k, n, 2);
            let c0 = random(m, n, 3);
            let want = matmul_reference(&a.view(), &b.view()) * 0.5 + &c0 * 2.0;
            let mut c = c0.clone();
            gemm(0.5, &a.view(), &b.view(), 2.0, &mut c.view_mut());
            close(&c, &want);
            let mut c = c0.clone();
            gemm_matrixmultiply(0.5, &a.view(), &b.view(), 2.0, &mut c.view_mut());
            close(&c, &want);
            // the same product through transposed (column-major) views
            let at = a.t().to_owned();
            let bt = b.t().to_owned();
            let mut c = c0.clone();
            gemm(0.5, &at.t(), &bt.t(), 2.0, &mut c.view_mut());
            close(&c, &want);
            // beta = 0 ignores NaN in c
            let mut c = Array2::from_elem((m, n), f32::NAN);
            gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
            close(&c, &matmul_reference(&a.view(), &b.view()));
        }
    }

    /// `gemm` runs on the `gemm` crate on x86-64 and on `matrixmultiply` elsewhere: the
    /// two round this product differently, so its bits tell which ran.
    #[test]
    fn gemm_runs_on_the_backend_of_its_architecture() {
        let (m, k, n) = (70, 1024, 50);
        let (a, b) = (random(m, k, 16), random(k, n, 17));
        let mut got = Array2::zeros((m, n));
        gemm(1.0, &a.view(), &b.view(), 0.0, &mut got.view_mut());
        let mut by_crate = Array2::zeros((m, n));
        gemm_crate((m, k, n), 1.0, &a.view(), &b.view(), 0.0, &mut by_crate.view_mut());
        let mut by_matrixmultiply = Array2::zeros((m, n));
        gemm_matrixmultiply(1.0, &a.view(), &b.view(), 0.0, &mut by_matrixmultiply.view_mut());
        assert_ne!(bits(&by_crate), bits(&by_matrixmultiply));
        let want = if cfg!(target_arch = "x86_64") {
            by_crate
        } else {
            by_matrixmultiply
        };
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn row_blocks_are_8_rows_or_more_and_never_leave_one_row() {
        assert_eq!(row_block(70, 4), 18);
        assert_eq!(row_block(100, 8), 13);
        assert_eq!(row_block(20, 4), 8);
        assert_eq!(row_block(25, 4), 9);
        assert_eq!(row_block(17, 8), 9);
        // 73 = 9 x 8 + 1 = 8 x 9 + 1: by 10 the last block has 3 rows
        assert_eq!(row_block(73, 10), 10);
        assert_eq!(row_block(5, 4), 8);
        assert_eq!(row_block(1, 4), 8);
        for m in 1..300 {
            for parts in 1..12 {
                let b = row_block(m, parts);
                assert!(b >= 8 && (b >= m || m % b != 1), "{m} rows in {parts}: {b}");
            }
        }
    }

    /// 25 and 17 rows on 2 to 4 threads: blocks of 8 would leave one row alone (9, 9
    /// and 7; 9 and 8 instead).
    #[test]
    fn par_gemm_gives_gemms_bits_whatever_the_thread_count() {
        // rows split where `m >= n`, columns otherwise; at least 2^20 multiply-adds
        for (m, k, n) in [(25, 2048, 24), (17, 4096, 16), (300, 64, 200), (16, 144, 1000)] {
            let (a, b) = (random(m, k, 14), random(k, n, 15));
            let mut want = Array2::zeros((m, n));
            gemm(1.0, &a.view(), &b.view(), 0.0, &mut want.view_mut());
            for threads in [2, 3, 4] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut c = Array2::zeros((m, n));
                pool.install(|| par_gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut()));
                assert_eq!(bits(&c), bits(&want), "{m}x{k}x{n} on {threads} threads");
            }
        }
    }

    #[test]
    fn par_gemm_matches_reference_both_split_directions() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            for &(m, k, n) in &[(300, 64, 200), (16, 144, 1000), (1000, 9, 16)] {
                let a = random(m, k, 4);
                let b = random(k, n, 5);
                let mut c = Array2::zeros((m, n));
                par_gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
                close(&c, &matmul_reference(&a.view(), &b.view()));
            }
        });
    }

    /// Each output is the same sum whatever else the product computes: rows taken in
    /// blocks of another size (a batch split across threads or into evaluation chunks)
    /// or columns in blocks (`par_gemm`'s other split) give the whole product's bits.
    /// Blocks of a single row are left out on x86-64 (the `gemm` crate's vector path).
    #[test]
    fn a_block_of_rows_or_columns_gives_the_whole_products_bits() {
        // DeepConvNet's two Affine layers at batch 70, a lowered convolution's product
        for (m, k, n) in [(70, 1024, 50), (70, 50, 10), (16, 144, 1000)] {
            let (a, b) = (random(m, k, 11), random(k, n, 12));
            let c0 = random(m, n, 13);
            for beta in [0.0, 1.0] {
                let mut whole = c0.clone();
                gemm(1.0, &a.view(), &b.view(), beta, &mut whole.view_mut());
                for split in [1, 4, 6, 32] {
                    // the last block of 70 rows by 4, 6 or 32 has 2, 4 or 6 rows; of 16 by 6, 4
                    let single_rows = cfg!(target_arch = "x86_64") && (split == 1 || m % split == 1);
                    let mut rows = c0.clone();
                    for (mut cc, aa) in rows
                        .axis_chunks_iter_mut(Axis(0), split)
                        .zip(a.axis_chunks_iter(Axis(0), split))
                    {
                        gemm(1.0, &aa, &b.view(), beta, &mut cc);
                    }
                    if !single_rows {
                        assert_eq!(bits(&rows), bits(&whole), "{m}x{k}x{n}, rows by {split}, beta {beta}");
                    }
                    let mut cols = c0.clone();
                    for (mut cc, bb) in cols
                        .axis_chunks_iter_mut(Axis(1), split)
                        .zip(b.axis_chunks_iter(Axis(1), split))
                    {
                        gemm(1.0, &a.view(), &bb, beta, &mut cc);
                    }
                    assert_eq!(
                        bits(&cols),
                        bits(&whole),
                        "{m}x{k}x{n}, columns by {split}, beta {beta}"
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_handles_empty_inner_dimension_and_negative_strides() {
        let a = Array2::<f32>::zeros((3, 0));
        let b = Array2::<f32>::zeros((0, 2));
        let mut c = Array2::from_elem((3, 2), 5.0f32);
        gemm(1.0, &a.view(), &b.view(), 0.5, &mut c.view_mut());
        assert!(c.iter().all(|&v| v == 2.5));
        let a = random(4, 5, 8);
        let b = random(5, 3, 9);
        let flipped = a.slice(ndarray::s![..;-1, ..]);
        let mut c = Array2::zeros((4, 3));
        gemm(1.0, &flipped, &b.view(), 0.0, &mut c.view_mut());
        close(&c, &matmul_reference(&flipped, &b.view()));
    }

    #[test]
    fn gemm_with_an_empty_output_does_nothing() {
        // none of the three products fails on an output with no elements
        for (m, k, n) in [(0, 3, 2), (3, 4, 0), (0, 0, 0), (0, 2, 0)] {
            let (a, b) = (random(m, k, 1), random(k, n, 2));
            let mut c = Array2::<f32>::zeros((m, n));
            gemm(1.0, &a.view(), &b.view(), 0.5, &mut c.view_mut());
            par_gemm(1.0, &a.view(), &b.view(), 0.5, &mut c.view_mut());
            gemm_matrixmultiply(1.0, &a.view(), &b.view(), 0.5, &mut c.view_mut());
        }
    }

    #[test]
    #[should_panic(expected = "gemm: shapes do not agree")]
    fn gemm_names_the_shapes_on_mismatch() {
        let a = Array2::<f32>::zeros((2, 3));
        let b = Array2::<f32>::zeros((4, 5));
        let mut c = Array2::<f32>::zeros((2, 5));
        gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
    }
}
