//! Products in bfloat16 with `f32` sums: the GEMM of mixed-precision training, on
//! AVX-512 BF16's `vdpbf16ps` where the CPU has it.
//!
//! [`gemm_bf16`] computes `c = a · b + beta · c` with every element of `a` and `b`
//! rounded to bf16 (to nearest, ties to even) and the products summed in `f32`, as the
//! instruction sums them: each output lane takes the operands two at a time along the
//! inner dimension, `acc += a[k+1]·b[k+1]` then `acc += a[k]·b[k]`, each step a fused
//! multiply-add (the product of two bf16 values is exact in `f32`) rounded to nearest,
//! with subnormal inputs read as zero and subnormal results flushed to zero. An odd
//! inner dimension ends with a zero pair element.
//!
//! [`Bf16Kernel`] names the ways a layer can form its bf16 products:
//! - [`Bf16Kernel::Rounded`]: the operands rounded to bf16 and the layer's own `f32`
//!   kernels run on them (Winograd, direct or lowered); the same products, summed in
//!   another order. Fast on every CPU.
//! - [`Bf16Kernel::Scalar`]: this module's GEMM in plain Rust, the instruction's exact
//!   sums on any CPU: the reference the vector kernel is tested against bit for bit.
//! - [`Bf16Kernel::Avx512`]: the same GEMM on `vdpbf16ps` (two bf16 products per `f32`
//!   lane and instruction), where the CPU has AVX-512 BF16 (Zen 4, Sapphire Rapids).
//!
//! ```
//! use dl_tensor::dpbf16::{gemm_bf16, Bf16Kernel};
//! use ndarray::array;
//!
//! let a = array![[1.0f32, 2.0, 3.0]];
//! let b = array![[1.0f32], [1.0 / 3.0], [0.5]];
//! let mut c = array![[10.0f32]];
//! // 1/3 is 0.333984375 in bf16: 10 + 1 + 2 * 0.333984375 + 1.5
//! gemm_bf16(Bf16Kernel::Scalar, &a.view(), &b.view(), 1.0, &mut c.view_mut());
//! assert_eq!(c[[0, 0]], 13.16796875);
//! ```

use ndarray::{ArrayView2, ArrayViewMut2};

/// How a layer forms its bf16 products (see the [module](self) documentation).
///
/// The default is `Rounded`, the fastest on every CPU measured: on a Sapphire Rapids
/// Xeon `vdpbf16ps` retires about one instruction per nanosecond where `vfmadd231ps`
/// retires four, so its 32 products per instruction come at under half the rate of
/// `f32`'s, and the GEMM it serves cannot use Winograd's savings
/// (`docs/RESULTS.md`, "Training with bf16 products").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bf16Kernel {
    /// Operands rounded to bf16, then the layer's `f32` kernels.
    #[default]
    Rounded,
    /// This module's GEMM in plain Rust: `vdpbf16ps`'s sums on any CPU.
    Scalar,
    /// This module's GEMM on AVX-512 BF16's `vdpbf16ps`.
    Avx512,
}

impl Bf16Kernel {
    /// Every kernel.
    pub const ALL: [Bf16Kernel; 3] = [Bf16Kernel::Rounded, Bf16Kernel::Scalar, Bf16Kernel::Avx512];

    /// The name reports use: `"rounded"`, `"scalar"`, `"avx512-bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Rounded => "rounded",
            Bf16Kernel::Scalar => "scalar",
            Bf16Kernel::Avx512 => "avx512-bf16",
        }
    }

    /// Whether this CPU can run the kernel (`Avx512` needs AVX-512F and AVX-512 BF16,
    /// and runs whatever `DLFS_SIMD` says: it is chosen by name, never by default).
    pub fn supported(self) -> bool {
        match self {
            Bf16Kernel::Rounded | Bf16Kernel::Scalar => true,
            Bf16Kernel::Avx512 => avx512_bf16(),
        }
    }

    /// Whether the kernel is this module's GEMM (every kernel but `Rounded`).
    pub fn is_gemm(self) -> bool {
        self != Bf16Kernel::Rounded
    }
}

impl std::fmt::Display for Bf16Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows of `a` per packed panel (and per register tile).
const MR: usize = 8;
/// Columns of `b` per packed panel: two 16-lane registers.
const NR: usize = 32;

/// `v`'s bf16 bits, rounded to nearest, ties to even; a NaN stays a NaN, made quiet
/// (`half::bf16::from_f32`'s bits, computed without branches so packing loops
/// vectorise).
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x0040;
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

/// A bf16 value from its bits, read as the instruction reads it: a subnormal is zero.
fn bf16_value(bits: u32) -> f32 {
    flushed(f32::from_bits(bits << 16))
}

/// `x`, or a zero of its sign when `x` is subnormal.
fn flushed(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// `c = a · b + beta · c` with bf16 products and `f32` sums, by `kernel` (which must be
/// a GEMM kernel: `Scalar`, or `Avx512` where [`Bf16Kernel::supported`]). Shapes: `a`
/// `(M, K)`, `b` `(K, N)`, `c` `(M, N)`, any strides (pass `x.t()` for a transpose).
/// With `beta == 0` the old content of `c` is ignored (even NaN); otherwise each sum
/// starts from `beta · c` (exactly `c` when `beta == 1`). Single-threaded.
///
/// # Panics
/// If the shapes do not agree, or `kernel` is `Rounded` or not supported here (a
/// programmer error).
pub fn gemm_bf16(kernel: Bf16Kernel, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
    let (m, k, n) = crate::gemm::check("gemm_bf16", a, b, c);
    assert!(
        kernel.is_gemm() && kernel.supported(),
        "gemm_bf16: kernel {kernel} cannot run here"
    );
    if k == 0 {
        // no products: each sum is its start, `beta · c` (0 when `beta == 0`, even over NaN)
        c.mapv_inplace(|v| if beta == 0.0 { 0.0 } else { beta * v });
        return;
    }
    if m == 0 || n == 0 {
        return;
    }
    let pairs = k.div_ceil(2);
    let (pa, pb) = match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported` was checked above.
        Bf16Kernel::Avx512 => unsafe { (avx512::pack_a(a, pairs), avx512::pack_b(b, pairs)) },
        _ => (pack_a(a, pairs), pack_b(b, pairs)),
    };
    let mut tile = [[0.0f32; NR]; MR];
    for (pi, ap) in pa.chunks_exact(pairs * MR).enumerate() {
        let rows = MR.min(m - pi * MR);
        for (pj, bp) in pb.chunks_exact(pairs * NR).enumerate() {
            let cols = NR.min(n - pj * NR);
            for (i, row) in tile.iter_mut().enumerate() {
                for (j, t) in row.iter_mut().enumerate() {
                    *t = if i >= rows || j >= cols || beta == 0.0 {
                        0.0
                    } else {
                        beta * c[[pi * MR + i, pj * NR + j]]
                    };
                }
            }
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `supported` was checked above (AVX-512F and BF16 present); the
                // panels hold `pairs` rows of MR and NR words.
                Bf16Kernel::Avx512 => unsafe { avx512::tile(ap, bp, pairs, &mut tile) },
                _ => scalar_tile(ap, bp, pairs, &mut tile),
            }
            for (i, row) in tile.iter().enumerate().take(rows) {
                for (j, &t) in row.iter().enumerate().take(cols) {
                    c[[pi * MR + i, pj * NR + j]] = t;
                }
            }
        }
    }
}

/// `c = a · b + beta · c` with the products `kernel` asks for: by [`gemm_bf16`] when it
/// is a GEMM kernel, else in `f32` by [`crate::gemm()`] (`None`, or
/// [`Bf16Kernel::Rounded`], whose caller rounded the operands).
///
/// # Panics
/// As [`gemm_bf16`] and [`crate::gemm()`].
pub fn gemm_products(
    kernel: Option<Bf16Kernel>,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    match kernel {
        Some(k) if k.is_gemm() => gemm_bf16(k, a, b, beta, c),
        _ => crate::gemm(1.0, a, b, beta, c),
    }
}

/// `a` `(M, K)` packed in panels of [`MR`] rows: panel `p`, pair `q`, row `i` holds the
/// word `bf16(a[pMR+i][2q+1]) << 16 | bf16(a[pMR+i][2q])`; rows past `M` and the element
/// past an odd `K` are zero.
#[inline(always)]
fn pack_a(a: &ArrayView2<f32>, pairs: usize) -> Vec<u32> {
    let m = a.nrows();
    let panels = m.div_ceil(MR);
    let mut out = vec![0u32; panels * pairs * MR];
    for (p, panel) in out.chunks_exact_mut(pairs * MR).enumerate() {
        for i in 0..MR.min(m - p * MR) {
            let row = a.row(p * MR + i);
            let owned;
            let src = match row.as_slice() {
                Some(s) => s,
                None => {
                    owned = row.to_vec();
                    &owned
                }
            };
            for (q, pair) in src.chunks(2).enumerate() {
                panel[q * MR + i] = pair_word(pair);
            }
        }
    }
    out
}

/// The word of a pair of neighbours along the inner dimension (`[k]`, or `[k, k+1]`):
/// `bf16(k+1) << 16 | bf16(k)`, a missing `k+1` zero.
#[inline(always)]
fn pair_word(pair: &[f32]) -> u32 {
    let hi = pair.get(1).map_or(0, |&v| bf16_bits(v));
    hi << 16 | bf16_bits(pair[0])
}

/// `b` `(K, N)` packed in panels of [`NR`] columns: panel `p`, pair `q`, column `j` holds
/// `bf16(b[2q+1][pNR+j]) << 16 | bf16(b[2q][pNR+j])`; columns past `N` and the row past
/// an odd `K` are zero. Read in `b`'s memory order: by rows, or by columns when the
/// columns are contiguous (a transposed view).
#[inline(always)]
fn pack_b(b: &ArrayView2<f32>, pairs: usize) -> Vec<u32> {
    let (k, n) = b.dim();
    let panels = n.div_ceil(NR);
    let mut out = vec![0u32; panels * pairs * NR];
    if b.strides()[0] == 1 && n > 1 {
        // column j is contiguous: its pairs are neighbours
        for (j, col) in b.columns().into_iter().enumerate() {
            let base = (j / NR) * pairs * NR + j % NR;
            let col = col.to_slice().expect("a column of unit stride is contiguous");
            for (q, pair) in col.chunks(2).enumerate() {
                out[base + q * NR] = pair_word(pair);
            }
        }
        return out;
    }
    let mut even_row = vec![0.0f32; n];
    let mut odd_row = vec![0.0f32; n];
    for q in 0..pairs {
        let even = b.row(2 * q);
        if even.as_slice().is_none() {
            even_row.iter_mut().zip(even.iter()).for_each(|(d, s)| *d = *s);
        }
        let even = even.to_slice().unwrap_or(&even_row);
        let odd = match (2 * q + 1 < k).then(|| b.row(2 * q + 1)) {
            Some(r) => {
                if r.as_slice().is_none() {
                    odd_row.iter_mut().zip(r.iter()).for_each(|(d, s)| *d = *s);
                }
                r.to_slice().unwrap_or(&odd_row)
            }
            None => {
                odd_row.fill(0.0);
                &odd_row
            }
        };
        for (p, (e, o)) in even.chunks(NR).zip(odd.chunks(NR)).enumerate() {
            let dst = &mut out[(p * pairs + q) * NR..][..e.len()];
            for ((d, &lo), &hi) in dst.iter_mut().zip(e).zip(o) {
                *d = bf16_bits(hi) << 16 | bf16_bits(lo);
            }
        }
    }
    out
}

/// One [`MR`] x [`NR`] tile, `tile += panel_a · panel_b`, as `vdpbf16ps` computes it.
fn scalar_tile(a: &[u32], b: &[u32], pairs: usize, tile: &mut [[f32; NR]; MR]) {
    for q in 0..pairs {
        let bq = &b[q * NR..][..NR];
        for (i, row) in tile.iter_mut().enumerate() {
            let w = a[q * MR + i];
            let (a_hi, a_lo) = (bf16_value(w >> 16), bf16_value(w & 0xFFFF));
            for (t, &v) in row.iter_mut().zip(bq) {
                let (b_hi, b_lo) = (bf16_value(v >> 16), bf16_value(v & 0xFFFF));
                let acc = flushed(a_hi.mul_add(b_hi, flushed(*t)));
                *t = flushed(a_lo.mul_add(b_lo, acc));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use ndarray::ArrayView2;

    use super::{MR, NR};

    /// [`super::pack_a`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_a(a: &ArrayView2<f32>, pairs: usize) -> Vec<u32> {
        super::pack_a(a, pairs)
    }

    /// [`super::pack_b`] compiled for AVX-512 (its conversion loop vectorises).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_b(b: &ArrayView2<f32>, pairs: usize) -> Vec<u32> {
        super::pack_b(b, pairs)
    }

    /// [`super::scalar_tile`] on `vdpbf16ps`: the tile in 16 registers, two columns of
    /// 16 lanes for each of the 8 rows, a row's word broadcast to every lane.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16; `a` and `b` must hold `pairs * MR`
    /// and `pairs * NR` words.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(a: &[u32], b: &[u32], pairs: usize, tile: &mut [[f32; NR]; MR]) {
        debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for (row, t) in acc.iter_mut().zip(tile.iter()) {
            // SAFETY: each tile row holds NR = 32 floats, two registers' worth.
            unsafe {
                row[0] = _mm512_loadu_ps(t.as_ptr());
                row[1] = _mm512_loadu_ps(t.as_ptr().add(16));
            }
        }
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        for q in 0..pairs {
            // SAFETY: q < pairs, so the NR words at q*NR and the MR words at q*MR lie
            // inside the panels (the caller's promise on their lengths).
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(q * NR).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(q * NR + 16).cast()));
                for (i, row) in acc.iter_mut().enumerate() {
                    let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pa.add(q * MR + i) as i32));
                    row[0] = _mm512_dpbf16_ps(row[0], w, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], w, b1);
                }
            }
        }
        for (row, t) in acc.iter().zip(tile.iter_mut()) {
            // SAFETY: as for the loads.
            unsafe {
                _mm512_storeu_ps(t.as_mut_ptr(), row[0]);
                _mm512_storeu_ps(t.as_mut_ptr().add(16), row[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    fn random(m: usize, n: usize, seed: u64) -> Array2<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((m, n), |_| rng.gen_range(-2.0f32..2.0))
    }

    fn bits(c: &Array2<f32>) -> Vec<u32> {
        c.iter().map(|v| v.to_bits()).collect()
    }

    /// The GEMM kernels this CPU runs.
    fn kernels() -> Vec<Bf16Kernel> {
        Bf16Kernel::ALL
            .into_iter()
            .filter(|k| k.is_gemm() && k.supported())
            .collect()
    }

    #[test]
    fn the_products_are_those_of_rounded_operands_summed_in_f32() {
        // against f64 sums of the rounded operands: only the f32 additions differ
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (9, 17, 33), (16, 64, 40), (8, 2, 32)] {
            let (a, b) = (random(m, k, 1), random(k, n, 2));
            let c0 = random(m, n, 3);
            for kernel in kernels() {
                for beta in [0.0f32, 1.0, 0.5] {
                    let mut c = c0.clone();
                    gemm_bf16(kernel, &a.view(), &b.view(), beta, &mut c.view_mut());
                    for i in 0..m {
                        for j in 0..n {
                            let mut want = f64::from(beta * c0[[i, j]]);
                            for q in 0..k {
                                want += f64::from(crate::lowp::round_bf16(a[[i, q]]))
                                    * f64::from(crate::lowp::round_bf16(b[[q, j]]));
                            }
                            let got = f64::from(c[[i, j]]);
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + k as f64),
                                "{kernel} {m}x{k}x{n} beta {beta} [{i},{j}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_empty_inner_dimension_leaves_beta_times_c() {
        let c0 = Array2::from_shape_vec((2, 3), vec![1.0, -2.0, f32::NAN, 4.0, 0.5, 3.0]).unwrap();
        let (a, b) = (Array2::<f32>::zeros((2, 0)), Array2::<f32>::zeros((0, 3)));
        for kernel in kernels() {
            for beta in [0.0f32, 1.0, 0.5] {
                let mut c = c0.clone();
                gemm_bf16(kernel, &a.view(), &b.view(), beta, &mut c.view_mut());
                let want = c0.mapv(|v| if beta == 0.0 { 0.0 } else { beta * v });
                assert_eq!(bits(&c), bits(&want), "{kernel} beta {beta}");
            }
        }
    }

    /// `gemm_products` runs the bf16 GEMM kernels, and the f32 GEMM without a kernel or
    /// with `Rounded` (whose operands the caller rounds): those bit for bit as `gemm`.
    #[test]
    fn gemm_products_takes_the_kernel_only_for_the_gemm_ones() {
        let (a, b) = (random(5, 7, 71), random(7, 3, 72));
        let run = |kernel: Option<Bf16Kernel>| {
            let mut c = Array2::from_elem((5, 3), 0.5f32);
            gemm_products(kernel, &a.view(), &b.view(), 1.0, &mut c.view_mut());
            c
        };
        let mut want = Array2::from_elem((5, 3), 0.5f32);
        crate::gemm(1.0, &a.view(), &b.view(), 1.0, &mut want.view_mut());
        assert_eq!(run(None), want);
        assert_eq!(run(Some(Bf16Kernel::Rounded)), want);
        let mut bf16 = Array2::from_elem((5, 3), 0.5f32);
        gemm_bf16(Bf16Kernel::Scalar, &a.view(), &b.view(), 1.0, &mut bf16.view_mut());
        assert_eq!(run(Some(Bf16Kernel::Scalar)), bf16);
        assert_ne!(bf16, want, "the bf16 products are not the f32 ones");
    }

    #[test]
    fn the_rounding_is_that_of_the_half_crate_on_every_kind_of_value() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let specials = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001), // a signalling NaN
            f32::from_bits(0xFFC1_2345),
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::MIN_POSITIVE / 3.0,
            f32::from_bits(0x3F80_8000), // a tie: to even (down)
            f32::from_bits(0x3F81_8000), // a tie: to even (up)
        ];
        let randoms = (0..10_000).map(|_| f32::from_bits(rng.gen::<u32>()));
        for v in specials.into_iter().chain(randoms) {
            let want = u32::from(half::bf16::from_f32(v).to_bits());
            assert_eq!(bf16_bits(v), want, "{v:e} ({:#x})", v.to_bits());
        }
    }

    #[test]
    fn the_operands_are_rounded_not_truncated() {
        // 1 + 2^-8 + 2^-9 rounds up to 1 + 2^-7 in bf16; truncation would give 1
        let a = Array2::from_elem((1, 1), 1.0 + 1.0 / 256.0 + 1.0 / 512.0);
        let b = Array2::from_elem((1, 1), 1.0f32);
        for kernel in kernels() {
            let mut c = Array2::from_elem((1, 1), f32::NAN);
            gemm_bf16(kernel, &a.view(), &b.view(), 0.0, &mut c.view_mut());
            assert_eq!(c[[0, 0]], 1.0 + 1.0 / 128.0, "{kernel}");
        }
    }

    #[test]
    fn each_pair_is_added_high_element_first() {
        // c = 2^25, odd product -2^25, even product 1: odd first gives 0 then 1; even
        // first would give 2^25 + 1 = 2^25 (rounded) then 0
        let a = ndarray::array![[1.0f32, 2f32.powi(25)]];
        let b = ndarray::array![[1.0f32], [-1.0]];
        for kernel in kernels() {
            let mut c = ndarray::array![[2f32.powi(25)]];
            gemm_bf16(kernel, &a.view(), &b.view(), 1.0, &mut c.view_mut());
            assert_eq!(c[[0, 0]], 1.0, "{kernel}");
        }
    }

    #[test]
    fn subnormal_operands_read_as_zero_and_subnormal_sums_flush() {
        // 2^-128 is subnormal (in f32 and bf16): read as zero, it contributes nothing,
        // where 2^-128 * 2^30 = 2^-98 would be a normal product
        let a = ndarray::array![[2f32.powi(-128), 0.0]];
        let b = ndarray::array![[2f32.powi(30)], [0.0]];
        for kernel in kernels() {
            let mut c = ndarray::array![[5.0f32]];
            gemm_bf16(kernel, &a.view(), &b.view(), 0.0, &mut c.view_mut());
            assert_eq!(c[[0, 0]].to_bits(), 0, "{kernel}: a subnormal operand is zero");
            // 2^-70 * 2^-70 = 2^-140, an f32 subnormal: flushed to zero
            let small = ndarray::array![[2f32.powi(-70)]];
            let mut c = ndarray::array![[0.0f32]];
            gemm_bf16(kernel, &small.view(), &small.view(), 0.0, &mut c.view_mut());
            assert_eq!(c[[0, 0]].to_bits(), 0, "{kernel}: a subnormal sum is flushed");
        }
    }

    #[test]
    fn every_kernel_matches_the_scalar_one_bit_for_bit() {
        // edges of both panels, odd inner dimensions, transposed views
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 31),
            (8, 4, 32),
            (9, 9, 33),
            (17, 31, 65),
            (64, 576, 49),
            (50, 1, 100),
        ] {
            let (a, b) = (random(m, k, 4), random(k, n, 5));
            let (at, bt) = (a.t().to_owned(), b.t().to_owned());
            let c0 = random(m, n, 6);
            let mut want = c0.clone();
            gemm_bf16(Bf16Kernel::Scalar, &a.view(), &b.view(), 1.0, &mut want.view_mut());
            for kernel in kernels() {
                let mut c = c0.clone();
                gemm_bf16(kernel, &a.view(), &b.view(), 1.0, &mut c.view_mut());
                assert_eq!(bits(&c), bits(&want), "{kernel} {m}x{k}x{n}");
                let mut c = c0.clone();
                gemm_bf16(kernel, &at.t(), &bt.t(), 1.0, &mut c.view_mut());
                assert_eq!(bits(&c), bits(&want), "{kernel} {m}x{k}x{n} transposed operands");
                let mut ct = c0.t().to_owned();
                gemm_bf16(kernel, &a.view(), &b.view(), 1.0, &mut ct.view_mut().reversed_axes());
                assert_eq!(
                    bits(&ct.t().to_owned()),
                    bits(&want),
                    "{kernel} {m}x{k}x{n} transposed c"
                );
            }
        }
        if !Bf16Kernel::Avx512.supported() {
            eprintln!("no AVX-512 BF16 here: the scalar kernel alone is checked");
        }
    }

    #[test]
    fn an_empty_product_leaves_c_and_a_bad_shape_is_named() {
        let mut c = Array2::<f32>::from_elem((0, 3), 1.0);
        gemm_bf16(
            Bf16Kernel::Scalar,
            &random(0, 2, 1).view(),
            &random(2, 3, 1).view(),
            0.0,
            &mut c.view_mut(),
        );
        let r = std::panic::catch_unwind(|| {
            let mut c = Array2::<f32>::zeros((2, 2));
            gemm_bf16(
                Bf16Kernel::Scalar,
                &random(2, 3, 1).view(),
                &random(2, 2, 1).view(),
                0.0,
                &mut c.view_mut(),
            );
        });
        let msg = r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("(2, 3)") && msg.contains("(2, 2)"), "{msg}");
        let r = std::panic::catch_unwind(|| {
            let mut c = Array2::<f32>::zeros((1, 1));
            gemm_bf16(
                Bf16Kernel::Rounded,
                &random(1, 1, 1).view(),
                &random(1, 1, 1).view(),
                0.0,
                &mut c.view_mut(),
            );
        });
        assert!(r.is_err(), "Rounded is no GEMM kernel");
    }

    #[test]
    fn the_kernels_are_named_and_only_the_vector_one_needs_the_cpu() {
        assert_eq!(Bf16Kernel::default(), Bf16Kernel::Rounded);
        assert_eq!(
            Bf16Kernel::ALL.map(Bf16Kernel::name),
            ["rounded", "scalar", "avx512-bf16"]
        );
        assert_eq!(
            Bf16Kernel::ALL.map(|k| k.to_string()),
            ["rounded", "scalar", "avx512-bf16"]
        );
        assert!(!Bf16Kernel::Rounded.is_gemm() && Bf16Kernel::Scalar.is_gemm() && Bf16Kernel::Avx512.is_gemm());
        assert!(Bf16Kernel::Rounded.supported() && Bf16Kernel::Scalar.supported());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            Bf16Kernel::Avx512.supported(),
            std::arch::is_x86_feature_detected!("avx512bf16")
        );
    }
}
