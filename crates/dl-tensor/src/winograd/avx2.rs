//! The forward transforms of [`WinogradConv`](super::WinogradConv) with AVX2 intrinsics:
//! the sixteen lanes of an AVX-512 register are two 8-lane registers here (`lo`: lanes
//! 0-7, `hi`: 8-15), on the same layouts and with the same contracts as the AVX-512
//! functions.

use std::arch::x86_64::*;

/// Sixteen lanes as two AVX registers.
type V16 = (__m256, __m256);

/// `(even, odd)` values of the 16 at `a[0..8]`, `b[0..8]`: `[a0 a2 a4 a6 b0 b2 b4 b6]`
/// and `[a1 a3 a5 a7 b1 b3 b5 b7]`.
#[inline(always)]
fn deinterleave(a: __m256, b: __m256) -> (__m256, __m256) {
    // SAFETY: register shuffles; only reached from the AVX2 functions below.
    unsafe {
        // [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit blocks in the order 0 2 1 3
        let even = _mm256_shuffle_ps::<0x88>(a, b);
        let odd = _mm256_shuffle_ps::<0xdd>(a, b);
        (
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(even))),
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(odd))),
        )
    }
}

#[inline(always)]
fn add(a: V16, b: V16) -> V16 {
    // SAFETY: register arithmetic, as above.
    unsafe { (_mm256_add_ps(a.0, b.0), _mm256_add_ps(a.1, b.1)) }
}

#[inline(always)]
fn sub(a: V16, b: V16) -> V16 {
    // SAFETY: register arithmetic, as above.
    unsafe { (_mm256_sub_ps(a.0, b.0), _mm256_sub_ps(a.1, b.1)) }
}

/// Bᵀ applied to four values: `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
#[inline(always)]
fn bt(d: [V16; 4]) -> [V16; 4] {
    [sub(d[0], d[2]), add(d[1], d[2]), sub(d[2], d[1]), sub(d[1], d[3])]
}

/// The first `n <= 8` lanes set, as a mask for `vmaskmovps`.
#[inline(always)]
fn prefix8(n: usize) -> __m256i {
    // SAFETY: register arithmetic; only reached from the AVX2 functions here.
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

/// Copies an `h x w` plane `x` into the `hs x ws` plane `dst` at row and column `p`,
/// zeros around it, by whole-register loads and stores: each row of the image is 8 zeros
/// at the row's start and 8 at its end, then the image's values over them, 8 at a time
/// (the last 8 ending at the image row's end, rewriting values the one before wrote).
/// Images narrower than 8, or padded by more than 8 on a side, take the portable loop.
/// Each row of the plane `next` values on (the plane read next) is asked for as it goes.
///
/// # Safety
/// The CPU has AVX2; `x` is valid for reads of `h w` values, `dst` for writes of
/// `hs ws`; `p + h <= hs`, `p + w <= ws`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pad_plane(x: *const f32, h: usize, w: usize, p: usize, next: isize, dst: *mut f32, hs: usize, ws: usize) {
    if w < 8 || p > 8 || ws - p - w > 8 {
        // SAFETY: the contract, passed on.
        return unsafe { super::portable::pad_plane(x, h, w, p, next, dst, hs, ws) };
    }
    let zero = _mm256_setzero_ps();
    let starts = |n: usize| (0..n - 8).step_by(8).chain(std::iter::once(n - 8));
    // SAFETY (all): stores of 8 values from column `k <= ws - 8` of a row `y < hs`;
    // loads of 8 values from column `k <= w - 8` of row `y - p < h` of `x`.
    unsafe {
        for y in 0..hs {
            let row = dst.add(y * ws);
            if y < p || y >= p + h {
                for k in starts(ws) {
                    _mm256_storeu_ps(row.add(k), zero);
                }
                continue;
            }
            _mm256_storeu_ps(row, zero);
            _mm256_storeu_ps(row.add(ws - 8), zero);
            let src = x.add((y - p) * w);
            // the same row of the next plane on its way from memory (a hint, which never
            // faults), as at AVX-512
            for k in (0..w).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(src.wrapping_offset(next).wrapping_add(k).cast::<i8>());
            }
            for k in starts(w) {
                _mm256_storeu_ps(row.add(p + k), _mm256_loadu_ps(src.add(k)));
            }
        }
    }
}

/// The first `n <= 4` lanes set, as a mask for `vmaskmovps`.
#[inline(always)]
fn prefix4(n: usize) -> __m128i {
    // SAFETY: as above.
    unsafe { _mm_cmpgt_epi32(_mm_set1_epi32(n.min(4) as i32), _mm_setr_epi32(0, 1, 2, 3)) }
}

/// Which lanes of a group hold tiles, as `groups()` in `mod.rs` makes them: `rows` tile
/// rows of `n` tiles, row `ii` from lane `ii l`. `(n, rows)`.
#[inline(always)]
fn runs(mask: u16, l: usize) -> (usize, usize) {
    let first = if l >= 16 { mask } else { mask & ((1u16 << l) - 1) };
    let n = first.count_ones() as usize;
    (n, (mask.count_ones() as usize).checked_div(n).unwrap_or(0))
}

/// The lanes of `v` that `mask` selects (`popcount(mask)` of them, in lane order) to
/// `dst`, for a mask of [`runs`] shape, by whole-register stores in increasing address
/// order: each run is followed by up to `l - n` values of the register's other lanes,
/// which the next run (or the next group's tiles) overwrites. `vmaskmovps` stores, which
/// would keep those values, cost more than the transform itself on AMD's Zen 4.
///
/// # Safety
/// The CPU has AVX2; `dst` is valid for writes of 16 values, and the values past the
/// first `popcount(mask)` may be overwritten.
#[inline(always)]
unsafe fn store_packed(dst: *mut f32, v: V16, mask: u16, l: usize) {
    let count = mask.count_ones() as usize;
    // SAFETY (all): each store ends within the 16 values from `dst`: with `l = 16` the
    // two halves at 0 and 8; otherwise run `k < 16 / l` of `n <= l` tiles at `k n`, its
    // `min(l, 8)` lanes ending by `(16 / l - 1) l + min(l, 8) <= 16`.
    unsafe {
        if count == 16 || mask == (1u16 << count) - 1 {
            _mm256_storeu_ps(dst, v.0);
            if count > 8 {
                _mm256_storeu_ps(dst.add(8), v.1);
            }
        } else {
            let (n, rows) = runs(mask, l);
            if l == 8 {
                _mm256_storeu_ps(dst, v.0);
                if rows > 1 {
                    _mm256_storeu_ps(dst.add(n), v.1);
                }
            } else {
                let quarters = [
                    _mm256_castps256_ps128(v.0),
                    _mm256_extractf128_ps::<1>(v.0),
                    _mm256_castps256_ps128(v.1),
                    _mm256_extractf128_ps::<1>(v.1),
                ];
                for (k, q) in quarters.into_iter().enumerate().take(rows) {
                    _mm_storeu_ps(dst.add(k * n), q);
                }
            }
        }
    }
}

/// The inverse of [`store_packed`]: `popcount(mask)` values at `src` to the lanes `mask`
/// selects, zeros in the others.
///
/// # Safety
/// The CPU has AVX2; `src` is valid for reads of 16 values.
#[inline(always)]
unsafe fn load_packed(src: *const f32, mask: u16, l: usize) -> V16 {
    let count = mask.count_ones() as usize;
    // SAFETY (all): reads within the 16 values at `src`.
    unsafe {
        if count == 16 || mask == (1u16 << count) - 1 {
            return (_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8)));
        }
        let (n, rows) = runs(mask, l);
        if l == 8 {
            let hi = if rows > 1 {
                _mm256_maskload_ps(src.add(n), prefix8(n))
            } else {
                _mm256_setzero_ps()
            };
            (_mm256_maskload_ps(src, prefix8(n)), hi)
        } else {
            let q: [__m128; 4] = std::array::from_fn(|k| {
                if k < rows {
                    _mm_maskload_ps(src.add(k * n), prefix4(n))
                } else {
                    _mm_setzero_ps()
                }
            });
            (_mm256_set_m128(q[1], q[0]), _mm256_set_m128(q[3], q[2]))
        }
    }
}

/// The input transform of up to 16 tiles, as the AVX-512 `input_tiles`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `l` is 16, 8 or 4; `src` is valid for reads of 34 values
/// from each of the rows `k ws`, `k < 2 (16 / l) + 2`; `dst` for writes of 16 values at
/// each of 16 rows `pos` apart, of which the first `popcount(mask)` are the tiles and
/// the rest may be overwritten ([`store_packed`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn input_tiles(src: *const f32, ws: usize, l: usize, dst: *mut f32, pos: usize, mask: u16) {
    // built in place, not zeroed first
    let t: [[V16; 4]; 4] = std::array::from_fn(|r| {
        let p = src.wrapping_add(r * ws);
        // where lanes 0-7 and 8-15 take their 16 values from, in two loads each
        let (lo_a, lo_b, hi_a, hi_b) = match l {
            16 => (p, p.wrapping_add(8), p.wrapping_add(16), p.wrapping_add(24)),
            8 => (p, p.wrapping_add(8), p.wrapping_add(2 * ws), p.wrapping_add(2 * ws + 8)),
            _ => (
                p,
                p.wrapping_add(2 * ws),
                p.wrapping_add(4 * ws),
                p.wrapping_add(6 * ws),
            ),
        };
        // SAFETY: 8 values at each of the four pointers and 2 further, all within the
        // 34 values of rows `r + 2k` the contract gives.
        let (d0, d1, d2, d3) = unsafe {
            let half = |a: *const f32, b: *const f32, o: usize| {
                deinterleave(_mm256_loadu_ps(a.add(o)), _mm256_loadu_ps(b.add(o)))
            };
            let ((lo0, lo1), (hi0, hi1)) = (half(lo_a, lo_b, 0), half(hi_a, hi_b, 0));
            let ((lo2, lo3), (hi2, hi3)) = (half(lo_a, lo_b, 2), half(hi_a, hi_b, 2));
            ((lo0, hi0), (lo1, hi1), (lo2, hi2), (lo3, hi3))
        };
        bt([d0, d1, d2, d3])
    });
    // indexed by column, not `t.map(..)`: that copies all 32 registers through memory
    #[allow(clippy::needless_range_loop)]
    for q in 0..4 {
        let col = bt(std::array::from_fn(|r| t[r][q]));
        for (r, v) in col.into_iter().enumerate() {
            // SAFETY: row `4 r + q < 16` of `dst`, `popcount(mask)` values, within the
            // contract.
            unsafe { store_packed(dst.add((4 * r + q) * pos), v, mask, l) };
        }
    }
}

/// The output transform of up to 16 tiles, as the AVX-512 `output_tiles`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `l` is 16, 8 or 4; `src` is valid for reads of 16 values at
/// each of 16 rows `pos` apart; `dst + (2 ii + a) ow` for writes of `cols <= 2 l` values
/// for each written row `2 ii + a < rows`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn output_tiles(
    src: *const f32,
    pos: usize,
    l: usize,
    mask: u16,
    b: f32,
    dst: *mut f32,
    ow: usize,
    rows: usize,
    cols: usize,
) {
    let zero = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut m = [zero; 16];
    for (xi, v) in m.iter_mut().enumerate() {
        // SAFETY: 16 values of row `ξ`, within the contract.
        *v = unsafe { load_packed(src.add(xi * pos), mask, l) };
    }
    let bias = _mm256_set1_ps(b);
    let bias = (bias, bias);
    for a in 0..2 {
        // Aᵀ m, row a: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (rows of 4)
        let s: [V16; 4] = std::array::from_fn(|q| {
            if a == 0 {
                add(add(m[q], m[4 + q]), m[8 + q])
            } else {
                sub(sub(m[4 + q], m[8 + q]), m[12 + q])
            }
        });
        // (s A) + b: y0 = s0 + s1 + s2, y1 = s1 - s2 - s3, interleaved
        let y0 = add(add(add(s[0], s[1]), s[2]), bias);
        let y1 = add(sub(sub(s[1], s[2]), s[3]), bias);
        // output rows `2 ii + a < rows`: `ceil((rows - a) / 2)` of them
        let (d, n) = (dst.wrapping_add(a * ow), rows.saturating_sub(a).div_ceil(2));
        // SAFETY: the rows and columns of the contract.
        unsafe {
            match l {
                16 => store_rows::<4>(y0, y1, d, 2 * ow, n, cols),
                8 => store_rows::<2>(y0, y1, d, 2 * ow, n, cols),
                _ => store_rows::<1>(y0, y1, d, 2 * ow, n, cols),
            }
        }
    }
}

/// Interleaves the 16 outputs `y0`, `y1` of a row of each tile (`[y0_0 y1_0 y0_1 y1_1 ...]`,
/// 32 values, as four registers) and stores them as rows of `8 PER` values, `ld` apart:
/// the first `cols <= 8 PER` values of each of the first `rows.min(4 / PER)` rows.
/// Whole-register stores where 8 values fit, masked stores of the rest (a copy through
/// memory would be a `memcpy` call per row).
///
/// # Safety
/// The CPU has AVX2; `dst + r ld` is valid for writes of `cols` values for each row
/// `r < rows.min(4 / PER)`.
#[inline(always)]
unsafe fn store_rows<const PER: usize>(y0: V16, y1: V16, dst: *mut f32, ld: usize, rows: usize, cols: usize) {
    // SAFETY: register shuffles, and stores within the contract.
    unsafe {
        let mut regs = [_mm256_setzero_ps(); 4];
        for (h, (u, v)) in [(y0.0, y1.0), (y0.1, y1.1)].into_iter().enumerate() {
            // [u0 v0 u1 v1 | u4 v4 u5 v5] and [u2 v2 u3 v3 | u6 v6 u7 v7]
            let (lo, hi) = (_mm256_unpacklo_ps(u, v), _mm256_unpackhi_ps(u, v));
            regs[2 * h] = _mm256_permute2f128_ps::<0x20>(lo, hi);
            regs[2 * h + 1] = _mm256_permute2f128_ps::<0x31>(lo, hi);
        }
        for (r, row) in regs.chunks_exact(PER).enumerate().take(rows) {
            let d = dst.add(r * ld);
            for (q, &v) in row.iter().enumerate() {
                let n = cols.saturating_sub(8 * q);
                if n >= 8 {
                    _mm256_storeu_ps(d.add(8 * q), v);
                } else if n > 0 {
                    _mm256_maskstore_ps(d.add(8 * q), prefix8(n), v);
                }
            }
        }
    }
}

/// F(4x4, 3x3)'s `Z = A dY Aᵀ` for one tile and 16 filters: the portable
/// `output_gradient_tile4` compiled for this level (its lane-by-lane loops become
/// whole-register operations).
///
/// # Safety
/// The CPU has AVX2 and FMA; the portable function's contract.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn output_gradient_tile4(src: *const f32, row: usize, fp: usize, dst: *mut f32, pos: usize) {
    // SAFETY: the contract, passed on.
    unsafe { super::portable::output_gradient_tile4(src, row, fp, dst, pos) }
}

/// `Z = A dY Aᵀ` for one tile and 16 filters, as the AVX-512 `output_gradient_tile`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `src` is valid for reads of 16 values at offsets 0, `fp`,
/// `row` and `row + fp`; `dst` for writes of 16 values at each of 16 rows `pos` apart.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn output_gradient_tile(src: *const f32, row: usize, fp: usize, dst: *mut f32, pos: usize) {
    // SAFETY: within the contract.
    let load = |at: usize| unsafe { (_mm256_loadu_ps(src.add(at)), _mm256_loadu_ps(src.add(at + 8))) };
    let (d00, d01, d10, d11) = (load(0), load(fp), load(row), load(row + fp));
    let zero = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let rows = [
        (d00, d01),
        (add(d00, d10), add(d01, d11)),
        (sub(d00, d10), sub(d01, d11)),
        (sub(zero, d10), sub(zero, d11)),
    ];
    for (r, (u, v)) in rows.into_iter().enumerate() {
        for (q, val) in [u, add(u, v), sub(u, v), sub(zero, v)].into_iter().enumerate() {
            // SAFETY: row `4 r + q < 16`, within the contract.
            unsafe {
                let d = dst.add((4 * r + q) * pos);
                _mm256_storeu_ps(d, val.0);
                _mm256_storeu_ps(d.add(8), val.1);
            }
        }
    }
}

/// Transposes eight rows of eight values: `out[c][r] = rows[r][c]`.
#[inline(always)]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register shuffles; only reached from the AVX2 functions here.
    unsafe {
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // t0 = [r0_0 r1_0 r0_1 r1_1 | r0_4 r1_4 r0_5 r1_5], t1 = the same with 2, 3 | 6, 7
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xee>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xee>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xee>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xee>(t[5], t[7]),
        ];
        [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ]
    }
}

/// Transposes a 16 x 16 block, as the AVX-512 `transpose_block`: row `r < rows` is
/// `lanes` values at `src + r plane` (zeros past them and in the rows past `rows`);
/// column `q < stores` is written as 16 values at `dst + q fp`, and every column is
/// added to `sums`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `src + r plane` is valid for reads of `lanes` values for
/// `r < rows` (nothing is read when `lanes == 0`); `dst + q fp` for writes of 16 values
/// for `q < stores <= 16`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn transpose_block(
    src: *const f32,
    plane: usize,
    rows: usize,
    lanes: usize,
    dst: *mut f32,
    fp: usize,
    stores: usize,
    sums: &mut [f32; 16],
) {
    // lane i of the masks is set (sign bit) when i < lanes, for columns 0-7 and 8-15
    let idx_lo = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let idx_hi = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
    let n = _mm256_set1_epi32(lanes.min(16) as i32);
    let (mask_lo, mask_hi) = (_mm256_cmpgt_epi32(n, idx_lo), _mm256_cmpgt_epi32(n, idx_hi));
    let mut lo = [_mm256_setzero_ps(); 16];
    let mut hi = [_mm256_setzero_ps(); 16];
    if lanes > 0 {
        for r in 0..rows.min(16) {
            // SAFETY: only the `lanes` values of row `r < rows` are read, within the contract.
            unsafe {
                let p = src.wrapping_add(r * plane);
                lo[r] = _mm256_maskload_ps(p, mask_lo);
                hi[r] = _mm256_maskload_ps(p.wrapping_add(8), mask_hi);
            }
        }
    }
    let half = |v: &[__m256; 16], from: usize| -> [__m256; 8] { std::array::from_fn(|i| v[from + i]) };
    // columns 0-7: rows 0-7 from the top-left block, rows 8-15 from the bottom-left one
    let (a, b, c, d) = (
        transpose8(half(&lo, 0)),
        transpose8(half(&hi, 0)),
        transpose8(half(&lo, 8)),
        transpose8(half(&hi, 8)),
    );
    // SAFETY: reads and writes of the 16 local sums.
    let (mut acc_lo, mut acc_hi) = unsafe { (_mm256_loadu_ps(sums.as_ptr()), _mm256_loadu_ps(sums.as_ptr().add(8))) };
    for q in 0..16 {
        let (top, bottom) = if q < 8 { (a[q], c[q]) } else { (b[q - 8], d[q - 8]) };
        acc_lo = _mm256_add_ps(acc_lo, top);
        acc_hi = _mm256_add_ps(acc_hi, bottom);
        if q < stores {
            // SAFETY: column `q < stores`, within the contract.
            unsafe {
                _mm256_storeu_ps(dst.add(q * fp), top);
                _mm256_storeu_ps(dst.add(q * fp + 8), bottom);
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        _mm256_storeu_ps(sums.as_mut_ptr(), acc_lo);
        _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc_hi);
    }
}
