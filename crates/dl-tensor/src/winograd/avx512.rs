//! The AVX-512 transforms of [`WinogradConv`](super::WinogradConv): sixteen tiles of a tile row per register, with masked, compressing and expanding loads and stores.

use std::arch::x86_64::*;

/// Bᵀ applied to four values: `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
#[inline(always)]
fn bt(d: [__m512; 4]) -> [__m512; 4] {
    // SAFETY: register arithmetic; only reached from the AVX-512F functions below.
    unsafe {
        [
            _mm512_sub_ps(d[0], d[2]),
            _mm512_add_ps(d[1], d[2]),
            _mm512_sub_ps(d[2], d[1]),
            _mm512_sub_ps(d[1], d[3]),
        ]
    }
}

/// Where the lanes of a register come from: `16 / l` tile rows of `l` tiles each
/// (`l` = 16, 8 or 4). Lane `ii l + j` is tile `j` of tile row `ii`.
///
/// The two registers `(a, b)` hold, for one row `r` of the 4x4 input tiles, the 32
/// values the tiles' even and odd columns are taken from: for `l = 16`, 32 values of
/// one image row; for `l = 8`, 16 of each of two rows (tile rows `2 ws` apart); for
/// `l = 4`, 8 of each of four.
///
/// # Safety
/// The CPU has AVX-512F; `p` is valid for reads of 32 values, and `p + k 2 ws` of 16
/// values for `k < 16 / l`.
#[inline(always)]
unsafe fn gather_row(p: *const f32, ws: usize, l: usize) -> (__m512, __m512) {
    // SAFETY: within the contract.
    unsafe {
        match l {
            16 => (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))),
            8 => (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(2 * ws))),
            _ => {
                let row = |k: usize| _mm512_loadu_ps(p.add(2 * k * ws));
                // 128-bit lanes 0 and 1 of each: the first 8 values of two rows
                (
                    _mm512_shuffle_f32x4::<0x44>(row(0), row(1)),
                    _mm512_shuffle_f32x4::<0x44>(row(2), row(3)),
                )
            }
        }
    }
}

/// The input transform of up to 16 tiles: `16 / l` tile rows of `l` tiles from
/// `src` (the top-left value of the first tile; tile rows `2 ws` apart, image rows
/// `ws`). `Bᵀ d B` position `ξ` of the tiles selected by `mask` (lane `ii l + j`) is
/// stored, packed in lane order, as `count = popcount(mask)` values at `dst + ξ pos`.
///
/// # Safety
/// The CPU has AVX-512F; `src` is valid for reads of 34 values from each of the rows
/// `k ws`, `k < 2 (16 / l) + 2`; `dst` for writes of `count` values at each of 16 rows
/// `pos` apart.
#[target_feature(enable = "avx512f")]
pub unsafe fn input_tiles(src: *const f32, ws: usize, l: usize, dst: *mut f32, pos: usize, mask: u16) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut t = [[_mm512_setzero_ps(); 4]; 4];
    for (r, tr) in t.iter_mut().enumerate() {
        // SAFETY: rows `r + 2k` from columns 0 and 2, within the contract.
        let ((a, b), (a2, b2)) = unsafe {
            let p = src.add(r * ws);
            (gather_row(p, ws, l), gather_row(p.add(2), ws, l))
        };
        *tr = bt([
            _mm512_permutex2var_ps(a, even, b),
            _mm512_permutex2var_ps(a, odd, b),
            _mm512_permutex2var_ps(a2, even, b2),
            _mm512_permutex2var_ps(a2, odd, b2),
        ]);
    }
    let count = mask.count_ones();
    let packed: __mmask16 = if count >= 16 { 0xffff } else { (1u16 << count) - 1 };
    let gaps = packed != mask;
    for q in 0..4 {
        let col = bt(t.map(|row| row[q]));
        for (r, v) in col.iter().enumerate() {
            let v = if gaps { _mm512_maskz_compress_ps(mask, *v) } else { *v };
            // SAFETY: row `4r + q < 16` of `dst`, `count` values, within the contract.
            unsafe { _mm512_mask_storeu_ps(dst.add((4 * r + q) * pos), packed, v) };
        }
    }
}

/// F(4x4, 3x3)'s `Z = A dY Aᵀ` for one tile and 16 filters: the portable
/// `output_gradient_tile4` compiled for this level (its lane-by-lane loops become
/// whole-register operations).
///
/// # Safety
/// The CPU has AVX-512F; the portable function's contract.
#[target_feature(enable = "avx512f")]
pub unsafe fn output_gradient_tile4(src: *const f32, row: usize, fp: usize, dst: *mut f32, pos: usize) {
    // SAFETY: the contract, passed on.
    unsafe { super::portable::output_gradient_tile4(src, row, fp, dst, pos) }
}

/// `Z = A dY Aᵀ` for one tile and 16 filters: `dY[a][b]` at `src + a row + b fp`, the
/// 16 values `Z[ξ]` to `dst + ξ pos`. `A dY` has rows `dY0`, `dY0 + dY1`, `dY0 - dY1`,
/// `-dY1`; a row `(u, v)` times `Aᵀ` is `(u, u + v, u - v, -v)`.
///
/// # Safety
/// The CPU has AVX-512F; `src` is valid for reads of 16 values at offsets 0, `fp`,
/// `row` and `row + fp`; `dst` for writes of 16 values at each of 16 rows `pos` apart.
#[target_feature(enable = "avx512f")]
pub unsafe fn output_gradient_tile(src: *const f32, row: usize, fp: usize, dst: *mut f32, pos: usize) {
    // SAFETY: within the contract.
    let (d00, d01, d10, d11) = unsafe {
        (
            _mm512_loadu_ps(src),
            _mm512_loadu_ps(src.add(fp)),
            _mm512_loadu_ps(src.add(row)),
            _mm512_loadu_ps(src.add(row + fp)),
        )
    };
    let zero = _mm512_setzero_ps();
    let rows = [
        (d00, d01),
        (_mm512_add_ps(d00, d10), _mm512_add_ps(d01, d11)),
        (_mm512_sub_ps(d00, d10), _mm512_sub_ps(d01, d11)),
        (_mm512_sub_ps(zero, d10), _mm512_sub_ps(zero, d11)),
    ];
    for (r, (u, v)) in rows.into_iter().enumerate() {
        let z = [u, _mm512_add_ps(u, v), _mm512_sub_ps(u, v), _mm512_sub_ps(zero, v)];
        for (q, val) in z.into_iter().enumerate() {
            // SAFETY: row `4 r + q < 16`, within the contract.
            unsafe { _mm512_storeu_ps(dst.add((4 * r + q) * pos), val) };
        }
    }
}

/// The first `n` lanes set (all for `n >= 16`).
#[inline(always)]
pub(super) fn prefix(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// Copies an `h x w` plane `x` into the `hs x ws` plane `dst` at row and column `p`,
/// zeros around it, a register per 16 values of a row (masked loads supply the zeros),
/// row after row: `x` is read in order, as the hardware prefetchers expect; each row
/// of the plane `next` values on (the plane read next) is asked for as it goes. The
/// masks of a row's registers are the same in every row: rows of up to 48 values
/// (DeepConvNet's) compute them once a plane.
///
/// Rows shorter than 16 values write zeros to the `16 - ws` values past the plane.
///
/// # Safety
/// The CPU has AVX-512F; `x` is valid for reads of `h w` values, `dst` for writes of
/// `hs ws + 16` values; `p + h <= hs`, `p + w <= ws`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pad_plane(x: *const f32, h: usize, w: usize, p: usize, next: isize, dst: *mut f32, hs: usize, ws: usize) {
    // SAFETY (all): the contract, passed on.
    unsafe {
        match ws.div_ceil(16) {
            1 => pad_rows::<1>(x, h, w, p, next, dst, hs, ws),
            2 => pad_rows::<2>(x, h, w, p, next, dst, hs, ws),
            3 => pad_rows::<3>(x, h, w, p, next, dst, hs, ws),
            _ => pad_wide(x, h, w, p, next, dst, hs, ws),
        }
    }
}

/// The masks of the register from column `k` of a padded row `ws` long (the plane's
/// `w` values at column `p`): the lanes `i` with `p <= k + i < p + w` load
/// `x[y - p][k + i - p]`, and the lanes `k + i < ws` are stored.
#[inline(always)]
fn row_masks(k: usize, p: usize, w: usize, ws: usize) -> (__mmask16, __mmask16) {
    let (lo, hi) = (p.saturating_sub(k).min(16), (p + w).saturating_sub(k).min(16));
    (prefix(hi) & !prefix(lo), prefix(ws.saturating_sub(k)))
}

/// [`pad_plane`] of rows of any length, the masks computed register by register.
///
/// # Safety
/// As [`pad_plane`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pad_wide(x: *const f32, h: usize, w: usize, p: usize, next: isize, dst: *mut f32, hs: usize, ws: usize) {
    let zero = _mm512_setzero_ps();
    for y in 0..hs {
        let inside = (p..p + h).contains(&y);
        for k in (0..ws).step_by(16) {
            let (load, store) = row_masks(k, p, w, ws);
            let v = if inside {
                let src = x.wrapping_add((y - p) * w + k).wrapping_sub(p);
                // as in `pad_rows`
                _mm_prefetch::<_MM_HINT_T0>(src.wrapping_offset(next).cast::<i8>());
                // SAFETY: only the lanes in `load` are read, each inside row `y - p` of `x`.
                unsafe { _mm512_maskz_loadu_ps(load, src) }
            } else {
                zero
            };
            // SAFETY: `min(16, ws - k)` values of a row `y < hs`.
            unsafe { _mm512_mask_storeu_ps(dst.add(y * ws + k), store, v) };
        }
    }
}

/// [`pad_plane`] of rows of at most `16 N` values, the masks of a row's registers
/// computed once, in whole-register stores: on rows of 16 values or more the last
/// register ends at the row's end (over values the one before wrote, with the same
/// values); a shorter row's register runs into the next row, which is written after it
/// (and the last row's `16 - ws` values past the plane, zeros). Masked stores cost far
/// more when the transforms read their values back at once (the loads wait until the
/// stores reach the cache instead of taking their values from the store buffer): on
/// 18-value rows `pad_plane` took 68% of F(4x4, 3x3)'s filter gradient of a 14 x 14
/// layer with them.
///
/// # Safety
/// As [`pad_plane`], with `ws <= 16 N`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pad_rows<const N: usize>(
    x: *const f32,
    h: usize,
    w: usize,
    p: usize,
    next: isize,
    dst: *mut f32,
    hs: usize,
    ws: usize,
) {
    let zero = _mm512_setzero_ps();
    // register `j` from column `start[j]`: `16 j`, the last `ws - 16` (rows of 16 or
    // more), or 0 (shorter rows, `N = 1`); its lanes past `p + w` load zeros
    let start: [usize; N] = std::array::from_fn(|j| (16 * j).min(ws.saturating_sub(16)));
    let load: [__mmask16; N] = std::array::from_fn(|j| row_masks(start[j], p, w, ws).0);
    for y in 0..hs {
        let row = dst.wrapping_add(y * ws);
        let inside = (p..p + h).contains(&y);
        let src = x.wrapping_add(y.wrapping_sub(p).wrapping_mul(w)).wrapping_sub(p);
        for j in 0..N {
            let (k, l) = (start[j], load[j]);
            let v = if inside {
                let src = src.wrapping_add(k);
                // the same values of the next plane, on their way from memory while this
                // plane is used: a hint, which never faults
                if l != 0 {
                    _mm_prefetch::<_MM_HINT_T0>(src.wrapping_offset(next).cast::<i8>());
                }
                // SAFETY: only the lanes in `l` are read, each inside row `y - p` of `x`.
                unsafe { _mm512_maskz_loadu_ps(l, src) }
            } else {
                zero
            };
            // SAFETY: 16 values from column `k <= ws - 16` of row `y < hs`, or from
            // column 0 of a row shorter than 16: at most `16 - ws` past the plane.
            unsafe { _mm512_storeu_ps(row.add(k), v) };
        }
    }
}

/// The permutations of one stage of [`transpose_block`], for blocks of `b`: lane `l` of
/// the new row `i` and of the new row `i + b` (`i & b == 0`), as indices into the pair
/// (row `i`, row `i + b`).
const fn butterfly(b: usize) -> ([i32; 16], [i32; 16]) {
    let (mut lo, mut hi) = ([0i32; 16], [0i32; 16]);
    let mut l = 0;
    while l < 16 {
        if l % (2 * b) < b {
            lo[l] = l as i32;
            hi[l] = (l + b) as i32;
        } else {
            lo[l] = (16 + l - b) as i32;
            hi[l] = (16 + l) as i32;
        }
        l += 1;
    }
    (lo, hi)
}

const BUTTERFLY: [([i32; 16], [i32; 16]); 4] = [butterfly(8), butterfly(4), butterfly(2), butterfly(1)];

/// Transposes a 16 x 16 block: row `r < rows` is `lanes` values at `src + r plane`
/// (zeros past them and in the rows past `rows`); column `q < stores` of the block
/// is written as 16 values at `dst + q fp`, and every column is added to `sums`.
///
/// # Safety
/// The CPU has AVX-512F; `src + r plane` is valid for reads of `lanes` values for
/// `r < rows` (nothing is read when `lanes == 0`); `dst + q fp` for writes of 16
/// values for `q < stores <= 16`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
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
    let mut m = [_mm512_setzero_ps(); 16];
    if lanes > 0 {
        for (r, v) in m.iter_mut().enumerate().take(rows) {
            // SAFETY: `lanes` values of row `r < rows`, within the contract.
            *v = unsafe { _mm512_maskz_loadu_ps(prefix(lanes), src.wrapping_add(r * plane)) };
        }
    }
    // four butterfly stages: swap the off-diagonal b x b blocks of each 2b x 2b block
    for (b, (lo, hi)) in [8usize, 4, 2, 1].into_iter().zip(BUTTERFLY) {
        // SAFETY: reads of two constant arrays of 16 values.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_si512(lo.as_ptr().cast()),
                _mm512_loadu_si512(hi.as_ptr().cast()),
            )
        };
        for i in (0..16).filter(|i| i & b == 0) {
            let (a, c) = (m[i], m[i + b]);
            m[i] = _mm512_permutex2var_ps(a, lo, c);
            m[i + b] = _mm512_permutex2var_ps(a, hi, c);
        }
    }
    // SAFETY: a read of the 16 local sums.
    let mut acc = unsafe { _mm512_loadu_ps(sums.as_ptr()) };
    for (q, v) in m.iter().enumerate() {
        acc = _mm512_add_ps(acc, *v);
        if q < stores {
            // SAFETY: column `q < stores`, within the contract.
            unsafe { _mm512_storeu_ps(dst.add(q * fp), *v) };
        }
    }
    // SAFETY: a write of the 16 local sums.
    unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), acc) };
}

/// The first `n <= 16` of a register's values to `dst` (nothing when `n == 0`).
///
/// # Safety
/// The CPU has AVX-512F; `dst` is valid for writes of `n` values.
#[inline(always)]
unsafe fn store_first(dst: *mut f32, n: usize, v: __m512) {
    let mask: __mmask16 = if n >= 16 { 0xffff } else { (1u16 << n) - 1 };
    // SAFETY: `n` values, within the contract.
    unsafe { _mm512_mask_storeu_ps(dst, mask, v) };
}

/// The output transform of up to 16 tiles laid out as in [`input_tiles`]: `Aᵀ m A + b`,
/// with `m[ξ]` of the tiles selected by `mask` packed at `src + ξ pos`. Writes, for
/// tile row `ii < 16 / l` and output row `a < 2` with `2 ii + a < rows`, the first
/// `cols <= 2 l` values of output row `2 ii + a` to `dst + (2 ii + a) ow`.
///
/// # Safety
/// The CPU has AVX-512F; `src` is valid for reads of 16 values at each of 16 rows
/// `pos` apart; `dst + (2 ii + a) ow` for writes of `cols` values for each written
/// row.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
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
    let count = mask.count_ones();
    let gaps = count < 16 && mask != (1u16 << count) - 1;
    let mut m = [_mm512_setzero_ps(); 16];
    for (xi, v) in m.iter_mut().enumerate() {
        // SAFETY: within the contract.
        let packed = unsafe { _mm512_loadu_ps(src.add(xi * pos)) };
        *v = if gaps {
            _mm512_maskz_expand_ps(mask, packed)
        } else {
            packed
        };
    }
    let bias = _mm512_set1_ps(b);
    // Aᵀ m: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (rows of 4)
    let mut s = [[_mm512_setzero_ps(); 4]; 2];
    for q in 0..4 {
        s[0][q] = _mm512_add_ps(_mm512_add_ps(m[q], m[4 + q]), m[8 + q]);
        s[1][q] = _mm512_sub_ps(_mm512_sub_ps(m[4 + q], m[8 + q]), m[12 + q]);
    }
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (a, sa) in s.iter().enumerate() {
        // (s A): y0 = s0 + s1 + s2, y1 = s1 - s2 - s3, plus the bias
        let y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(sa[0], sa[1]), sa[2]), bias);
        let y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(sa[1], sa[2]), sa[3]), bias);
        // interleaved, output columns 2j and 2j + 1: 32 values, 2 l per tile row
        let first = _mm512_permutex2var_ps(y0, lo, y1);
        let second = _mm512_permutex2var_ps(y0, hi, y1);
        // SAFETY: every store is of `cols` values to a row `2 ii + a < rows`.
        unsafe {
            let row = |ii: usize| (2 * ii + a < rows).then(|| dst.add((2 * ii + a) * ow));
            match l {
                16 => {
                    if let Some(d) = row(0) {
                        store_first(d, cols, first);
                        store_first(d.add(16), cols.saturating_sub(16), second);
                    }
                }
                8 => {
                    for (ii, v) in [first, second].into_iter().enumerate() {
                        if let Some(d) = row(ii) {
                            store_first(d, cols, v);
                        }
                    }
                }
                _ => {
                    let halves = [
                        first,
                        _mm512_shuffle_f32x4::<0xee>(first, first),
                        second,
                        _mm512_shuffle_f32x4::<0xee>(second, second),
                    ];
                    for (ii, v) in halves.into_iter().enumerate() {
                        if let Some(d) = row(ii) {
                            store_first(d, cols, v);
                        }
                    }
                }
            }
        }
    }
}
