//! The register kernels every convolution kernel without lowering runs its products on,
//! written once over a small vector trait ([`Simd`]) and instantiated per instruction
//! set: AVX-512 (16 lanes), AVX2 + FMA (8 lanes) and four-lane portable Rust (NEON on
//! aarch64), with tile shapes that fit each register file; plus the plain loops of the
//! `Scalar` level, which state what every tile computes.
//!
//! Two products:
//! * [`products`]: `out[r][j] = Σ_k w[k][r] · x[offsets[k] + j]`, [`MR`] rows (filters)
//!   by `width` columns: the forward pass of both kernels.
//! * [`gradient`]: `out[m][l] += Σ_p x[offs[m] + p] · d[p][l]`, `rows` rows by
//!   `16 nv` lanes: their filter gradients.

use crate::kernel::{GRADIENT_TILE, MR};
use crate::Isa;

/// A vector of `LANES` `f32`s and the few operations the tiles need.
///
/// # Safety
/// The methods may only run on a CPU with the type's instruction set, and `load`/`store`
/// need `LANES` valid values at the pointer.
pub(crate) trait Simd {
    const LANES: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(v: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a · b + c`, fused where the instruction set has it.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// `out[r ld + j] = Σ_k w[k MR + r] · x[offsets[k] + j]` for `r < R`, `j < V LANES`.
///
/// # Safety
/// `S`'s instruction set is present; `w` holds `offsets.len() * MR` values (`R <= MR`,
/// read from `w`); `x + off` is valid for `V LANES` reads at every offset; `out` for `R`
/// rows of `V LANES` writes, `ld` apart.
#[inline(always)]
unsafe fn products_tile<S: Simd, const R: usize, const V: usize>(
    offsets: &[usize],
    w: *const f32,
    x: *const f32,
    out: *mut f32,
    ld: usize,
) {
    // SAFETY (whole body): within the contract.
    unsafe {
        let mut acc = [[S::zero(); V]; R];
        for (k, &off) in offsets.iter().enumerate() {
            let mut b = [S::zero(); V];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = S::load(x.add(off + v * S::LANES));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let a = S::splat(*w.add(k * MR + r));
                for (v, bv) in b.iter().enumerate() {
                    row[v] = S::fmadd(a, *bv, row[v]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, val) in row.iter().enumerate() {
                S::store(out.add(r * ld + v * S::LANES), *val);
            }
        }
    }
}

/// `out[m ld + l] += Σ_{p < cols} x[offs[m] + p] · d[p ld + l]` for `m < R`,
/// `l < V LANES`; when `fresh`, `out[m ld + l] = ` the sum (from +0, as if `out` held
/// zeros: the same bits), `out` not read.
///
/// # Safety
/// `S`'s instruction set is present; `offs` has at least `R` values and `x + offs[m]` is
/// valid for `cols` reads; `d` for `V LANES` reads at each of `cols` rows `ld` apart;
/// `out` for writes (and reads, unless `fresh`) of `V LANES` values at each of `R` rows
/// `ld` apart.
#[inline(always)]
unsafe fn gradient_tile<S: Simd, const R: usize, const V: usize>(
    x: *const f32,
    offs: &[usize],
    d: *const f32,
    ld: usize,
    cols: usize,
    out: *mut f32,
    fresh: bool,
) {
    // SAFETY (whole body): within the contract.
    unsafe {
        let mut acc = [[S::zero(); V]; R];
        for (m, row) in acc.iter_mut().enumerate().filter(|_| !fresh) {
            for (v, val) in row.iter_mut().enumerate() {
                *val = S::load(out.add(m * ld + v * S::LANES));
            }
        }
        for p in 0..cols {
            let mut b = [S::zero(); V];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = S::load(d.add(p * ld + v * S::LANES));
            }
            for (m, row) in acc.iter_mut().enumerate() {
                let a = S::splat(*x.add(offs[m] + p));
                for (v, bv) in b.iter().enumerate() {
                    row[v] = S::fmadd(a, *bv, row[v]);
                }
            }
        }
        for (m, row) in acc.iter().enumerate() {
            for (v, val) in row.iter().enumerate() {
                S::store(out.add(m * ld + v * S::LANES), *val);
            }
        }
    }
}

/// The products of [`MR`] rows with `width` columns where a tile is `R` rows (`MR` a
/// multiple of `R`) by up to `V` vectors: full tiles, then a tile of two vectors where
/// two remain (`V > 2`), then one vector at a time.
///
/// # Safety
/// As [`products`], with `width` a multiple of `S::LANES`.
#[inline(always)]
unsafe fn products_by<S: Simd, const R: usize, const V: usize>(
    offsets: &[usize],
    w: *const f32,
    x: *const f32,
    out: *mut f32,
    ld: usize,
    width: usize,
) {
    // SAFETY (whole body): every tile stays within rows `< MR` and columns `< width`.
    unsafe {
        for r0 in (0..MR).step_by(R) {
            let mut j = 0;
            while j + V * S::LANES <= width {
                products_tile::<S, R, V>(offsets, w.add(r0), x.add(j), out.add(r0 * ld + j), ld);
                j += V * S::LANES;
            }
            if V > 2 && j + 2 * S::LANES <= width {
                products_tile::<S, R, 2>(offsets, w.add(r0), x.add(j), out.add(r0 * ld + j), ld);
                j += 2 * S::LANES;
            }
            while j < width {
                products_tile::<S, R, 1>(offsets, w.add(r0), x.add(j), out.add(r0 * ld + j), ld);
                j += S::LANES;
            }
        }
    }
}

/// The gradient sums of `rows` rows by `16 nv` lanes in tiles of `R` rows by `V` vectors
/// (`V LANES = 16`): one 16-lane block at a time, the rows `R` at a time, then one.
///
/// # Safety
/// As [`gradient`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gradient_by<S: Simd, const R: usize, const V: usize>(
    x: *const f32,
    offs: &[usize; GRADIENT_TILE],
    rows: usize,
    d: *const f32,
    ld: usize,
    cols: usize,
    out: *mut f32,
    nv: usize,
    fresh: bool,
) {
    debug_assert_eq!(V * S::LANES, 16);
    // SAFETY (whole body): every tile stays within rows `< rows` and lanes `< 16 nv`.
    unsafe {
        for l0 in (0..16 * nv).step_by(16) {
            let mut m = 0;
            while m + R <= rows {
                gradient_tile::<S, R, V>(x, &offs[m..], d.add(l0), ld, cols, out.add(m * ld + l0), fresh);
                m += R;
            }
            while m < rows {
                gradient_tile::<S, 1, V>(x, &offs[m..], d.add(l0), ld, cols, out.add(m * ld + l0), fresh);
                m += 1;
            }
        }
    }
}

/// `out[r ld + j] = Σ_k w[k MR + r] · x[offsets[k] + j]` for `r < MR`, `j < width`, at
/// the level `isa`.
///
/// # Safety
/// `isa` runs on this CPU ([`Isa::runs_here`]); `width` is a multiple of 16 and at most
/// 48; `w` holds `offsets.len() * MR` values; `x + off` is valid for `width` reads at
/// every offset; `out` for `MR` rows of `width` writes, `ld` apart.
pub(crate) unsafe fn products(
    isa: Isa,
    offsets: &[usize],
    w: *const f32,
    x: *const f32,
    out: *mut f32,
    ld: usize,
    width: usize,
) {
    debug_assert!(width.is_multiple_of(16) && width <= 48);
    // SAFETY: within the contract; each level's function needs its instruction set,
    // which `isa` running here guarantees.
    unsafe {
        match isa {
            Isa::Scalar => scalar::products(offsets, w, x, out, ld, width),
            Isa::Neon => products_by::<lanes4::Lanes4, 4, 4>(offsets, w, x, out, ld, width),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::products_avx2(offsets, w, x, out, ld, width),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::products_avx512(offsets, w, x, out, ld, width),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => scalar::products(offsets, w, x, out, ld, width),
        }
    }
}

/// `out[m ld + l] += Σ_{p < cols} x[offs[m] + p] · d[p ld + l]` for `m < rows`,
/// `l < 16 nv`, at the level `isa`; when `fresh`, `out` is not read and receives the
/// sums it would from zeros.
///
/// # Safety
/// `isa` runs on this CPU; `rows <= GRADIENT_TILE`, `1 <= nv <= 4`; `x + offs[m]` is
/// valid for `cols` reads for `m < rows`; `d` for `16 nv` reads at each of `cols` rows
/// `ld` apart; `out` for writes (and reads, unless `fresh`) of `16 nv` values at each of
/// `rows` rows `ld` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gradient(
    isa: Isa,
    x: *const f32,
    offs: &[usize; GRADIENT_TILE],
    rows: usize,
    d: *const f32,
    ld: usize,
    cols: usize,
    out: *mut f32,
    nv: usize,
    fresh: bool,
) {
    debug_assert!(rows <= GRADIENT_TILE && (1..=4).contains(&nv));
    // SAFETY: as in `products`.
    unsafe {
        match isa {
            Isa::Scalar => scalar::gradient(x, offs, rows, d, ld, cols, out, nv, fresh),
            Isa::Neon => gradient_by::<lanes4::Lanes4, 4, 4>(x, offs, rows, d, ld, cols, out, nv, fresh),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::gradient_avx2(x, offs, rows, d, ld, cols, out, nv, fresh),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::gradient_avx512(x, offs, rows, d, ld, cols, out, nv, fresh),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => scalar::gradient(x, offs, rows, d, ld, cols, out, nv, fresh),
        }
    }
}

/// The `Scalar` level: the two products as plain loops.
mod scalar {
    use super::{GRADIENT_TILE, MR};

    /// # Safety
    /// As [`super::products`].
    pub unsafe fn products(offsets: &[usize], w: *const f32, x: *const f32, out: *mut f32, ld: usize, width: usize) {
        for r in 0..MR {
            for j in 0..width {
                let mut sum = 0.0f32;
                for (k, &off) in offsets.iter().enumerate() {
                    // SAFETY: within the contract.
                    sum += unsafe { *w.add(k * MR + r) * *x.add(off + j) };
                }
                // SAFETY: within the contract.
                unsafe { *out.add(r * ld + j) = sum };
            }
        }
    }

    /// # Safety
    /// As [`super::gradient`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gradient(
        x: *const f32,
        offs: &[usize; GRADIENT_TILE],
        rows: usize,
        d: *const f32,
        ld: usize,
        cols: usize,
        out: *mut f32,
        nv: usize,
        fresh: bool,
    ) {
        for (m, &off) in offs.iter().enumerate().take(rows) {
            for l in 0..16 * nv {
                // SAFETY: within the contract.
                unsafe {
                    let mut sum = if fresh { 0.0 } else { *out.add(m * ld + l) };
                    for p in 0..cols {
                        sum += *x.add(off + p) * *d.add(p * ld + l);
                    }
                    *out.add(m * ld + l) = sum;
                }
            }
        }
    }
}

/// The `Neon` level's vector: four lanes in portable Rust, `mul_add` per lane. On aarch64
/// the compiler keeps it in one NEON register and fuses with `fmla`; elsewhere it runs
/// (slowly) as whatever the target has, which is how x86 machines test it.
mod lanes4 {
    use super::Simd;

    pub struct Lanes4;

    impl Simd for Lanes4 {
        const LANES: usize = 4;
        type V = [f32; 4];

        #[inline(always)]
        unsafe fn zero() -> [f32; 4] {
            [0.0; 4]
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> [f32; 4] {
            [v; 4]
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> [f32; 4] {
            // SAFETY: the trait's contract: four values at `p`.
            unsafe { p.cast::<[f32; 4]>().read_unaligned() }
        }

        #[inline(always)]
        unsafe fn store(p: *mut f32, v: [f32; 4]) {
            // SAFETY: the trait's contract.
            unsafe { p.cast::<[f32; 4]>().write_unaligned(v) }
        }

        #[inline(always)]
        unsafe fn fmadd(a: [f32; 4], b: [f32; 4], c: [f32; 4]) -> [f32; 4] {
            std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{gradient_by, gradient_tile, products_by, Simd, GRADIENT_TILE};
    use std::arch::x86_64::*;

    /// Eight lanes of AVX2, fused multiply-add from FMA3.
    pub struct Avx2;

    impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;

        #[inline(always)]
        unsafe fn zero() -> __m256 {
            // SAFETY: the trait's contract (AVX present).
            unsafe { _mm256_setzero_ps() }
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            // SAFETY: the trait's contract.
            unsafe { _mm256_set1_ps(v) }
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: the trait's contract.
            unsafe { _mm256_loadu_ps(p) }
        }

        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: the trait's contract.
            unsafe { _mm256_storeu_ps(p, v) }
        }

        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: the trait's contract (FMA present).
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
    }

    /// Sixteen lanes of AVX-512F.
    pub struct Avx512;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;

        #[inline(always)]
        unsafe fn zero() -> __m512 {
            // SAFETY: the trait's contract (AVX-512F present).
            unsafe { _mm512_setzero_ps() }
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            // SAFETY: the trait's contract.
            unsafe { _mm512_set1_ps(v) }
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: the trait's contract.
            unsafe { _mm512_loadu_ps(p) }
        }

        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: the trait's contract.
            unsafe { _mm512_storeu_ps(p, v) }
        }

        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: the trait's contract.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
    }

    /// AVX2 has 16 registers: tiles of 4 filters by 2 vectors (16 columns), 8
    /// accumulators (as many as two FMA units of latency 4 keep busy), 2 loads and 4
    /// broadcasts per step. (4 x 3 needs all 16 registers and spills.)
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; as [`super::products`] otherwise.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn products_avx2(
        offsets: &[usize],
        w: *const f32,
        x: *const f32,
        out: *mut f32,
        ld: usize,
        width: usize,
    ) {
        // SAFETY: within the contract.
        unsafe { products_by::<Avx2, 4, 2>(offsets, w, x, out, ld, width) }
    }

    /// AVX-512 has 32 registers: the whole 8-filter block by up to 3 vectors (48
    /// columns), 24 accumulators.
    ///
    /// # Safety
    /// The CPU has AVX-512F; as [`super::products`] otherwise.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn products_avx512(
        offsets: &[usize],
        w: *const f32,
        x: *const f32,
        out: *mut f32,
        ld: usize,
        width: usize,
    ) {
        // SAFETY: within the contract.
        unsafe { products_by::<Avx512, 8, 3>(offsets, w, x, out, ld, width) }
    }

    /// Tiles of 6 rows by one 16-lane block (two registers) where the rows come in
    /// sixes (24, 12, 6): 12 accumulators, the two loaded vectors and one broadcast
    /// (15 registers), and per step 2 loads and 6 broadcasts for 12 multiply-adds.
    /// Other row counts go by 4 x 2 tiles (8 accumulators).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; as [`super::gradient`] otherwise.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gradient_avx2(
        x: *const f32,
        offs: &[usize; GRADIENT_TILE],
        rows: usize,
        d: *const f32,
        ld: usize,
        cols: usize,
        out: *mut f32,
        nv: usize,
        fresh: bool,
    ) {
        // SAFETY: within the contract.
        unsafe {
            if rows.is_multiple_of(6) {
                gradient_by::<Avx2, 6, 2>(x, offs, rows, d, ld, cols, out, nv, fresh)
            } else {
                gradient_by::<Avx2, 4, 2>(x, offs, rows, d, ld, cols, out, nv, fresh)
            }
        }
    }

    /// The shapes the kernels ask for fill 24 accumulators (24 x 1, 12 x 2, 8 x 3, 6 x 4
    /// vectors; 16 x 1 and 4 x 4 for Winograd's channel blocks) in one tile; any other
    /// goes by 4 x 1 tiles.
    ///
    /// # Safety
    /// The CPU has AVX-512F; as [`super::gradient`] otherwise.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gradient_avx512(
        x: *const f32,
        offs: &[usize; GRADIENT_TILE],
        rows: usize,
        d: *const f32,
        ld: usize,
        cols: usize,
        out: *mut f32,
        nv: usize,
        fresh: bool,
    ) {
        // SAFETY: within the contract.
        unsafe {
            match (rows, nv) {
                (24, 1) => gradient_tile::<Avx512, 24, 1>(x, offs, d, ld, cols, out, fresh),
                (16, 1) => gradient_tile::<Avx512, 16, 1>(x, offs, d, ld, cols, out, fresh),
                (12, 2) => gradient_tile::<Avx512, 12, 2>(x, offs, d, ld, cols, out, fresh),
                (8, 2) => gradient_tile::<Avx512, 8, 2>(x, offs, d, ld, cols, out, fresh),
                (8, 3) => gradient_tile::<Avx512, 8, 3>(x, offs, d, ld, cols, out, fresh),
                (6, 4) => gradient_tile::<Avx512, 6, 4>(x, offs, d, ld, cols, out, fresh),
                (4, 4) => gradient_tile::<Avx512, 4, 4>(x, offs, d, ld, cols, out, fresh),
                _ => gradient_by::<Avx512, 4, 1>(x, offs, rows, d, ld, cols, out, nv, fresh),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level's tiles against the plain loops, on every width and shape the kernels
    /// use and some they do not, with values whose products are exact in f32 (small
    /// integers), so the sums must agree bit for bit whatever the order.
    #[test]
    fn every_level_computes_the_scalar_products() {
        let levels: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.runs_here()).collect();
        assert!(levels.contains(&Isa::Scalar) && levels.contains(&Isa::Neon));
        let k = 11;
        let offsets: Vec<usize> = (0..k).map(|i| 3 * i + i % 2).collect();
        let w: Vec<f32> = (0..k * MR).map(|i| ((i * 7) % 9) as f32 - 4.0).collect();
        let x: Vec<f32> = (0..48 + 3 * k + 1).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        for width in [16, 32, 48] {
            let ld = 50;
            let want = {
                let mut o = vec![f32::NAN; MR * ld];
                // SAFETY: `x` has 48 + max offset values, `o` MR rows of `ld >= width`.
                unsafe { products(Isa::Scalar, &offsets, w.as_ptr(), x.as_ptr(), o.as_mut_ptr(), ld, width) };
                o
            };
            for r in 0..MR {
                for j in 0..width {
                    let e: f32 = (0..k).map(|kk| w[kk * MR + r] * x[offsets[kk] + j]).sum();
                    assert_eq!(want[r * ld + j], e, "scalar products r {r} j {j}");
                }
                assert!(
                    want[r * ld + width..(r + 1) * ld].iter().all(|v| v.is_nan()),
                    "written past width"
                );
            }
            for &isa in &levels {
                let mut o = vec![f32::NAN; MR * ld];
                // SAFETY: as above; `isa` runs here.
                unsafe { products(isa, &offsets, w.as_ptr(), x.as_ptr(), o.as_mut_ptr(), ld, width) };
                for (i, (a, b)) in o.iter().zip(&want).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{isa} products width {width} at {i}: {a} vs {b}"
                    );
                }
            }
        }
        let cols = 13;
        let ld = 80;
        let mut offs = [0usize; GRADIENT_TILE];
        for (m, o) in offs.iter_mut().enumerate() {
            *o = 2 * m + m % 3;
        }
        let xg: Vec<f32> = (0..2 * GRADIENT_TILE + 2 + cols)
            .map(|i| ((i * 3) % 7) as f32 - 3.0)
            .collect();
        let d: Vec<f32> = (0..cols * ld).map(|i| ((i * 11) % 13) as f32 - 6.0).collect();
        let start: Vec<f32> = (0..GRADIENT_TILE * ld).map(|i| (i % 5) as f32).collect();
        for (rows, nv) in [
            (24, 1),
            (16, 1),
            (12, 2),
            (8, 2),
            (8, 3),
            (6, 4),
            (4, 4),
            (5, 3),
            (1, 1),
            (7, 4),
        ] {
            // `fresh`: the sums from zero, the values there not read (NaN)
            for fresh in [false, true] {
                let start: Vec<f32> = match fresh {
                    false => start.clone(),
                    true => (0..GRADIENT_TILE * ld)
                        .map(|i| if i % ld < 16 * nv { f32::NAN } else { 2.0 })
                        .collect(),
                };
                let mut want = start.clone();
                // SAFETY: `xg` covers every offset plus `cols`; `d` has `cols` rows of
                // `ld`; `want` `GRADIENT_TILE` rows of `ld >= 64`.
                unsafe {
                    let (x, o) = (xg.as_ptr(), want.as_mut_ptr());
                    gradient(Isa::Scalar, x, &offs, rows, d.as_ptr(), ld, cols, o, nv, fresh);
                }
                for m in 0..GRADIENT_TILE {
                    for l in 0..ld {
                        let mut e = start[m * ld + l];
                        if m < rows && l < 16 * nv {
                            e = if fresh { 0.0 } else { e };
                            e += (0..cols).map(|p| xg[offs[m] + p] * d[p * ld + l]).sum::<f32>();
                        }
                        let at = format!("scalar gradient ({rows}, {nv}), fresh {fresh}, m {m} l {l}");
                        assert_eq!(want[m * ld + l].to_bits(), e.to_bits(), "{at}");
                    }
                }
                for &isa in &levels {
                    let mut o = start.clone();
                    // SAFETY: as above.
                    unsafe {
                        gradient(
                            isa,
                            xg.as_ptr(),
                            &offs,
                            rows,
                            d.as_ptr(),
                            ld,
                            cols,
                            o.as_mut_ptr(),
                            nv,
                            fresh,
                        )
                    };
                    for (i, (a, b)) in o.iter().zip(&want).enumerate() {
                        assert!(
                            a.to_bits() == b.to_bits(),
                            "{isa} gradient ({rows}, {nv}), fresh {fresh}, at {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
