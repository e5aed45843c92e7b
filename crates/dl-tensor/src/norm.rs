//! The loops of batch normalization over data laid out `(N, F, S)`: `N` samples, `F`
//! features, `S` positions that share a feature's statistics (`S = H*W` for a
//! per-channel batch norm of images, `S = 1` for the book's per-activation one).
//!
//! Each loop is written once, as plain Rust over one row of `S` values, and compiled
//! again for each x86 instruction set ([`Isa::Avx2`], [`Isa::Avx512`]) so that the
//! compiler vectorizes it to that width; the row loop runs in parallel over samples (or
//! features, for the sums). No loop reorders or fuses floating-point operations (Rust
//! never contracts `a * b + c` into one rounding), so **every level gives the same
//! bits**: the tests compare each level the CPU has with [`Isa::Scalar`] for equality.
//!
//! ```
//! use dl_tensor::{norm, Isa};
//!
//! // two samples, one feature, two positions
//! let x = [1.0f32, 3.0, 5.0, 7.0];
//! let sums = norm::channel_sums(Isa::active(), &x, &x, (2, 1, 2));
//! assert_eq!(sums, vec![(16.0, 84.0)]); // Σx, Σx²
//! ```

use rayon::prelude::*;

use crate::Isa;

/// `(N, F, S)`: samples, features, positions per feature.
pub type Dims = (usize, usize, usize);

/// The level the loops run at for `isa`: `isa` itself where this CPU has it and the
/// loops have a build for it ([`Isa::Avx2`], [`Isa::Avx512`] on x86-64), else
/// [`Isa::Scalar`] (the plain build, which the compiler vectorizes to the target's
/// baseline: SSE2 on x86-64, NEON on aarch64). The same for `relu` and `pool`.
pub fn level(isa: Isa) -> Isa {
    crate::levels::level(isa)
}

builds! {
    normalize_row(x: &mut [f32], xn: &mut [f32], mean: f32, inv_std: f32, gamma: f32, beta: f32);
    scale_shift_row(x: &mut [f32], scale: f32, shift: f32);
    normalize_backward_row(d: &mut [f32], xn: &[f32], k: f32, mean_d: f32, mean_dxn: f32);
}

/// Lanes of the partial sums in [`sums_row`]: fixed, so the order of the additions (and
/// so the result) is the same at every level; four AVX2 registers, so that four chains
/// of additions run at once.
const LANES: usize = 32;

/// `(Σ a, Σ a·b)` of one row: in `f32` over [`LANES`] lanes (lane `l` adds the values
/// `l, l + LANES, ...`, the row padded with zeros to a whole number of lanes), then the
/// lanes in `f64`, pairwise ([`add_lanes`]).
#[inline(always)]
fn sums_row(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut sa, mut sab) = ([0.0f32; LANES], [0.0f32; LANES]);
    let add = |sa: &mut [f32; LANES], sab: &mut [f32; LANES], x: &[f32], y: &[f32]| {
        for l in 0..LANES {
            sa[l] += x[l];
            sab[l] += x[l] * y[l];
        }
    };
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        add(&mut sa, &mut sab, x, y);
    }
    if !ar.is_empty() {
        let (x, y) = (padded(ar), padded(br));
        add(&mut sa, &mut sab, &x, &y);
    }
    (add_lanes(&sa), add_lanes(&sab))
}

/// The last values of a row, then zeros up to [`LANES`].
#[inline(always)]
fn padded(tail: &[f32]) -> [f32; LANES] {
    let mut p = [0.0f32; LANES];
    p[..tail.len()].copy_from_slice(tail);
    p
}

/// The lanes' sum in `f64`, by halves: lane `l` adds lane `l + h` for `h = 16, 8, 4, 2,
/// 1`, and lane 0 holds the sum (short chains of additions that vectorize, in an order
/// that is the same at every level).
#[inline(always)]
fn add_lanes(v: &[f32; LANES]) -> f64 {
    let mut w = v.map(f64::from);
    let mut h = LANES / 2;
    while h > 0 {
        for l in 0..h {
            w[l] += w[l + h];
        }
        h /= 2;
    }
    w[0]
}

/// [`sums_row`] at the level [`level`] gives for `isa`: 8-lane vectors from AVX2 up (the
/// lanes are fixed, so AVX-512 runs the same code).
fn sums_at(isa: Isa, a: &[f32], b: &[f32]) -> (f64, f64) {
    match level(isa) {
        // SAFETY: `level` returns these only where the CPU has them (AVX-512F implies
        // AVX2).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { sums_row_avx2(a, b) },
        _ => sums_row(a, b),
    }
}

/// [`sums_row`] on `__m256` registers: the same additions and products in the same order
/// (a product, then a sum: no fused multiply-add), so the same bits.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sums_row_avx2(a: &[f32], b: &[f32]) -> (f64, f64) {
    use std::arch::x86_64::*;
    const R: usize = LANES / 8;
    let len = a.len().min(b.len());
    let full = len / LANES * LANES;
    let (mut sa, mut sab) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
    let add = |sa: &mut [__m256; R], sab: &mut [__m256; R], x: &[f32; LANES], y: &[f32; LANES]| {
        for r in 0..R {
            // SAFETY: `8 r + 8 <= LANES` values in each array.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(8 * r)),
                    _mm256_loadu_ps(y.as_ptr().add(8 * r)),
                )
            };
            sa[r] = _mm256_add_ps(sa[r], x);
            sab[r] = _mm256_add_ps(sab[r], _mm256_mul_ps(x, y));
        }
    };
    for (x, y) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        let (x, y) = (x.try_into().expect("LANES values"), y.try_into().expect("LANES values"));
        add(&mut sa, &mut sab, x, y);
    }
    if full < len {
        let (x, y) = (padded(&a[full..len]), padded(&b[full..len]));
        add(&mut sa, &mut sab, &x, &y);
    }
    // the halving of `add_lanes` in registers: 32 lanes are 8 registers of four `f64`
    let reduce = |v: [__m256; R]| {
        let mut w = [_mm256_setzero_pd(); 2 * R];
        for r in 0..R {
            w[2 * r] = _mm256_cvtps_pd(_mm256_castps256_ps128(v[r]));
            w[2 * r + 1] = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v[r]));
        }
        // h = 16, 8, 4: whole registers
        let mut regs = 2 * R;
        while regs > 1 {
            regs /= 2;
            for k in 0..regs {
                w[k] = _mm256_add_pd(w[k], w[k + regs]);
            }
        }
        // h = 2, then 1: within the register
        let lo = _mm256_castpd256_pd128(w[0]);
        let hi = _mm256_extractf128_pd::<1>(w[0]);
        let two = _mm_add_pd(lo, hi);
        _mm_cvtsd_f64(_mm_add_sd(two, _mm_unpackhi_pd(two, two)))
    };
    (reduce(sa), reduce(sab))
}

/// `xn = (x - mean) * inv_std`, then `x = xn * gamma + beta`.
#[inline(always)]
fn normalize_row(x: &mut [f32], xn: &mut [f32], mean: f32, inv_std: f32, gamma: f32, beta: f32) {
    for (x, n) in x.iter_mut().zip(xn) {
        *n = (*x - mean) * inv_std;
        *x = *n * gamma + beta;
    }
}

/// `x = x * scale + shift`.
#[inline(always)]
fn scale_shift_row(x: &mut [f32], scale: f32, shift: f32) {
    for v in x {
        *v = *v * scale + shift;
    }
}

/// `d = k * (d - mean_d - xn * mean_dxn)`.
#[inline(always)]
fn normalize_backward_row(d: &mut [f32], xn: &[f32], k: f32, mean_d: f32, mean_dxn: f32) {
    for (d, &x) in d.iter_mut().zip(xn) {
        *d = k * (*d - mean_d - x * mean_dxn);
    }
}

/// Checks that `len` values and `per_feature` lengths fit `dims`.
///
/// # Panics
/// When they do not (a programmer error: the layer checks shapes).
fn check(what: &str, len: usize, per_feature: &[usize], (n, f, s): Dims) {
    assert_eq!(
        len,
        n * f * s,
        "norm::{what}: data length against (N, F, S) = ({n}, {f}, {s})"
    );
    for &l in per_feature {
        assert_eq!(l, f, "norm::{what}: per-feature length against F = {f}");
    }
}

/// For each feature of `a` and `b` `(N, F, S)`: `(Σ a, Σ a·b)` over its `N*S` values, in
/// parallel over the samples, in a fixed order (each row of `S` values in 32 `f32`
/// lanes, lane `l` adding values `l, l + 32, ...`, then the lanes in `f64` by halves,
/// then the rows in `f64` in sample order): the same bits whatever the thread count and
/// the level.
///
/// # Panics
/// If a length does not fit `dims`.
pub fn channel_sums(isa: Isa, a: &[f32], b: &[f32], dims: Dims) -> Vec<(f64, f64)> {
    check("channel_sums", a.len(), &[], dims);
    check("channel_sums", b.len(), &[], dims);
    let (_, f, s) = dims;
    // each row's sums, in parallel over the samples (whose rows are contiguous), then
    // each feature's rows added in sample order
    let len = (f * s).max(1);
    let rows: Vec<Vec<(f64, f64)>> = a
        .par_chunks(len)
        .zip(b.par_chunks(len))
        .map(|(sa, sb)| {
            (0..f)
                .map(|fi| sums_at(isa, &sa[fi * s..fi * s + s], &sb[fi * s..fi * s + s]))
                .collect()
        })
        .collect();
    let mut sums = vec![(0.0f64, 0.0f64); f];
    for sample in &rows {
        for (t, r) in sums.iter_mut().zip(sample) {
            t.0 += r.0;
            t.1 += r.1;
        }
    }
    sums
}

/// The training forward: `xn = (x - mean) / std` (kept for the backward pass) and
/// `x = gamma * xn + beta`, per feature; `inv_std` is `1 / std`. In parallel over the
/// samples.
///
/// # Panics
/// If a length does not fit `dims`.
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    isa: Isa,
    x: &mut [f32],
    xn: &mut [f32],
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dims: Dims,
) {
    check(
        "normalize",
        x.len(),
        &[mean.len(), inv_std.len(), gamma.len(), beta.len()],
        dims,
    );
    check("normalize", xn.len(), &[], dims);
    rows(x, xn, dims, |fi, x, xn| {
        at_level!(isa, normalize_row(x, xn, mean[fi], inv_std[fi], gamma[fi], beta[fi]))
    });
}

/// `x = x * scale + shift` per feature (the evaluation forward), in parallel over the
/// samples.
///
/// # Panics
/// If a length does not fit `dims`.
pub fn scale_shift(isa: Isa, x: &mut [f32], scale: &[f32], shift: &[f32], dims: Dims) {
    check("scale_shift", x.len(), &[scale.len(), shift.len()], dims);
    let (_, f, s) = dims;
    x.par_chunks_mut((f * s).max(1)).for_each(|sample| {
        for (fi, row) in sample.chunks_exact_mut(s.max(1)).enumerate() {
            at_level!(isa, scale_shift_row(row, scale[fi], shift[fi]));
        }
    });
}

/// The input gradient when the statistics were the batch's:
/// `d = k * (d - mean_d - xn * mean_dxn)` per feature, where `k = gamma / std`,
/// `mean_d` is the mean of `d` and `mean_dxn` that of `d * xn` over the feature's
/// values. In parallel over the samples.
///
/// # Panics
/// If a length does not fit `dims`.
pub fn normalize_backward(
    isa: Isa,
    d: &mut [f32],
    xn: &[f32],
    k: &[f32],
    mean_d: &[f32],
    mean_dxn: &[f32],
    dims: Dims,
) {
    check(
        "normalize_backward",
        d.len(),
        &[k.len(), mean_d.len(), mean_dxn.len()],
        dims,
    );
    check("normalize_backward", xn.len(), &[], dims);
    let (_, f, s) = dims;
    let len = (f * s).max(1);
    d.par_chunks_mut(len).zip(xn.par_chunks(len)).for_each(|(ds, xs)| {
        for (fi, (d, x)) in ds.chunks_exact_mut(s.max(1)).zip(xs.chunks_exact(s.max(1))).enumerate() {
            at_level!(isa, normalize_backward_row(d, x, k[fi], mean_d[fi], mean_dxn[fi]));
        }
    });
}

/// Calls `op(feature, row of a, row of b)` for every `(sample, feature)` row of `S`
/// values of `a` and `b` `(N, F, S)`, in parallel over the samples.
fn rows(a: &mut [f32], b: &mut [f32], (_, f, s): Dims, op: impl Fn(usize, &mut [f32], &mut [f32]) + Sync) {
    let len = (f * s).max(1);
    a.par_chunks_mut(len).zip(b.par_chunks_mut(len)).for_each(|(sa, sb)| {
        for (fi, (ra, rb)) in sa
            .chunks_exact_mut(s.max(1))
            .zip(sb.chunks_exact_mut(s.max(1)))
            .enumerate()
        {
            op(fi, ra, rb);
        }
    });
}
