//! The transforms of [`WinogradConv`](super::WinogradConv) in portable Rust, on the same
//! layouts and with the same contracts as the AVX-512 ones (minus the instruction set):
//! the `Scalar` and `Neon` levels run them as they are; the `Avx2` level has its own
//! (and takes [`pad_plane`] for planes narrower than 8).
//!
//! A "register" of the AVX-512 functions is here an array of 16 lanes: lane `ii l + j` is
//! tile `j` of tile row `ii` (`l` = 16, 8 or 4 tiles per row).

/// The input transform of up to 16 tiles, as the AVX-512 `input_tiles`: tile `(ii, j)`
/// (lane `ii l + j`) has its top-left value at `src + 2 ii ws + 2 j`; `Bᵀ d B` position
/// `ξ` of the tiles selected by `mask` is stored, packed in lane order, as
/// `popcount(mask)` values at `dst + ξ pos`.
///
/// # Safety
/// `l` is 16, 8 or 4; `src` is valid for reads of 34 values from each of the rows
/// `k ws`, `k < 2 (16 / l) + 2` (every lane's tile, selected or not, and more, as the
/// AVX-512 version reads); `dst` for writes of `popcount(mask)` values at each of 16 rows `pos`
/// apart.
#[inline(always)]
pub unsafe fn input_tiles(src: *const f32, ws: usize, l: usize, dst: *mut f32, pos: usize, mask: u16) {
    // SAFETY: the contract, passed on with `l` as a constant.
    unsafe {
        match l {
            16 => input_tiles_by::<16>(src, ws, dst, pos, mask),
            8 => input_tiles_by::<8>(src, ws, dst, pos, mask),
            _ => input_tiles_by::<4>(src, ws, dst, pos, mask),
        }
    }
}

/// Sixteen lanes of `a op b`.
#[inline(always)]
fn lanes(a: &[f32; 16], b: &[f32; 16], op: impl Fn(f32, f32) -> f32) -> [f32; 16] {
    std::array::from_fn(|i| op(a[i], b[i]))
}

/// Bᵀ applied to four rows of 16 lanes.
#[inline(always)]
fn bt16(d: &[[f32; 16]; 4]) -> [[f32; 16]; 4] {
    [
        lanes(&d[0], &d[2], |a, b| a - b),
        lanes(&d[1], &d[2], |a, b| a + b),
        lanes(&d[2], &d[1], |a, b| a - b),
        lanes(&d[1], &d[3], |a, b| a - b),
    ]
}

/// [`input_tiles`] with `L` tiles per tile row: the 16 lanes of each of the tiles' 4 x 4
/// values are gathered from 34 values of each image row (constant indices, which
/// the compiler turns into shuffles), transformed lane-parallel, and stored.
///
/// # Safety
/// As [`input_tiles`] with `l = L`.
#[inline(always)]
unsafe fn input_tiles_by<const L: usize>(src: *const f32, ws: usize, dst: *mut f32, pos: usize, mask: u16) {
    // t[r][q]: row r of the tiles times B, lane by lane
    let mut t = [[[0.0f32; 16]; 4]; 4];
    for (r, tr) in t.iter_mut().enumerate() {
        let mut d = [[0.0f32; 16]; 4];
        for ii in 0..16 / L {
            // SAFETY: 34 values of row `2 ii + r`, within the contract.
            let row = unsafe { src.add((2 * ii + r) * ws).cast::<[f32; 34]>().read_unaligned() };
            for (c, dc) in d.iter_mut().enumerate() {
                for j in 0..L {
                    dc[ii * L + j] = row[2 * j + c];
                }
            }
        }
        *tr = bt16(&d);
    }
    let count = mask.count_ones() as usize;
    let gaps = count < 16 && mask != (1u16 << count) - 1;
    for q in 0..4 {
        let col = bt16(&t.map(|row| row[q]));
        for (r, v) in col.iter().enumerate() {
            // SAFETY: row `4 r + q < 16`, `count` values, within the contract.
            unsafe { store_selected(dst.add((4 * r + q) * pos), v, mask, count, gaps) };
        }
    }
}

/// The lanes of `v` that `mask` selects (`count` of them), packed, to `dst`.
///
/// # Safety
/// `dst` is valid for `count` writes.
#[inline(always)]
unsafe fn store_selected(dst: *mut f32, v: &[f32; 16], mask: u16, count: usize, gaps: bool) {
    // SAFETY (all writes): `count` values, within the contract.
    unsafe {
        if count == 16 {
            dst.cast::<[f32; 16]>().write_unaligned(*v);
        } else if !gaps {
            for (i, x) in v.iter().enumerate().take(count) {
                *dst.add(i) = *x;
            }
        } else {
            for (n, i) in (0..16).filter(|i| mask >> i & 1 == 1).enumerate() {
                *dst.add(n) = v[i];
            }
        }
    }
}

/// `Z = A dY Aᵀ` for one tile and 16 filters, as the AVX-512 `output_gradient_tile`.
///
/// # Safety
/// `src` is valid for reads of 16 values at offsets 0, `fp`, `row` and `row + fp`; `dst`
/// for writes of 16 values at each of 16 rows `pos` apart.
#[inline(always)]
pub unsafe fn output_gradient_tile(src: *const f32, row: usize, fp: usize, dst: *mut f32, pos: usize) {
    // SAFETY: within the contract.
    let load = |at: usize| -> [f32; 16] { unsafe { src.add(at).cast::<[f32; 16]>().read_unaligned() } };
    let (d00, d01, d10, d11) = (load(0), load(fp), load(row), load(row + fp));
    let zero = [0.0f32; 16];
    let rows = [
        (d00, d01),
        (lanes(&d00, &d10, |a, b| a + b), lanes(&d01, &d11, |a, b| a + b)),
        (lanes(&d00, &d10, |a, b| a - b), lanes(&d01, &d11, |a, b| a - b)),
        (lanes(&zero, &d10, |a, b| a - b), lanes(&zero, &d11, |a, b| a - b)),
    ];
    for (r, (u, v)) in rows.into_iter().enumerate() {
        let z = [
            u,
            lanes(&u, &v, |a, b| a + b),
            lanes(&u, &v, |a, b| a - b),
            lanes(&zero, &v, |a, b| a - b),
        ];
        for (q, val) in z.into_iter().enumerate() {
            // SAFETY: row `4 r + q < 16`, within the contract.
            unsafe { dst.add((4 * r + q) * pos).cast::<[f32; 16]>().write_unaligned(val) };
        }
    }
}

/// `A d` for four 16-lane values of an output-gradient tile column (or `d Aᵀ` for a row)
/// of Winograd F(4x4, 3x3): its six transformed values, `Aᵀ`'s columns (the
/// interpolation points 0, 1, -1, 2, -2 and the point at infinity) applied lane by lane.
#[inline(always)]
fn a6(d: &[[f32; 16]; 4]) -> [[f32; 16]; 6] {
    let mut z = [[0.0f32; 16]; 6];
    for l in 0..16 {
        let [d0, d1, d2, d3] = [d[0][l], d[1][l], d[2][l], d[3][l]];
        let (s02, s13) = (d0 + d2, d1 + d3);
        let (q02, q13) = (d0 + 4.0 * d2, 2.0 * d1 + 8.0 * d3);
        z[0][l] = d0;
        z[1][l] = s02 + s13;
        z[2][l] = s02 - s13;
        z[3][l] = q02 + q13;
        z[4][l] = q02 - q13;
        z[5][l] = d3;
    }
    z
}

/// `Z = A dY Aᵀ` for one F(4x4, 3x3) tile and 16 filters: `dY[a][b]` (`a, b < 4`) is 16
/// values at `src + a row + b fp`; `Z[ξ]`, `ξ = 6 k + l`, is stored as 16 values at
/// `dst + ξ pos`. Plain `f32` additions and multiplies by 2, 4 and 8 (exact), no fused
/// multiply-add: every instruction set's build gives the same bits.
///
/// # Safety
/// `src` is valid for reads of 16 values at `a row + b fp`, `a, b < 4`; `dst` for writes
/// of 16 values at each of 36 rows `pos` apart.
#[inline(always)]
pub unsafe fn output_gradient_tile4(src: *const f32, row: usize, fp: usize, dst: *mut f32, pos: usize) {
    // SAFETY: within the contract.
    let load =
        |a: usize, b: usize| -> [f32; 16] { unsafe { src.add(a * row + b * fp).cast::<[f32; 16]>().read_unaligned() } };
    // A dY, column by column: t[b][k] is row k, column b
    let t: [[[f32; 16]; 6]; 4] = std::array::from_fn(|b| a6(&std::array::from_fn(|a| load(a, b))));
    let rows: [[[f32; 16]; 4]; 6] = std::array::from_fn(|k| t.map(|col| col[k]));
    for (k, row) in rows.iter().enumerate() {
        // row k of A dY, then Aᵀ along it
        let z = a6(row);
        for (q, val) in z.iter().enumerate() {
            // SAFETY: row `6 k + q < 36`, within the contract.
            unsafe { dst.add((6 * k + q) * pos).cast::<[f32; 16]>().write_unaligned(*val) };
        }
    }
}

/// Copies an `h x w` plane `x` into the `hs x ws` plane `dst` at row and column `p`,
/// zeros around it (`next`, the other levels' prefetch distance, unused).
///
/// # Safety
/// `x` is valid for reads of `h w` values, `dst` for writes of `hs ws`; `p + h <= hs`,
/// `p + w <= ws`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pad_plane(
    x: *const f32,
    h: usize,
    w: usize,
    p: usize,
    _next: isize,
    dst: *mut f32,
    hs: usize,
    ws: usize,
) {
    // SAFETY: within the contract.
    let (x, dst) = unsafe {
        (
            std::slice::from_raw_parts(x, h * w),
            std::slice::from_raw_parts_mut(dst, hs * ws),
        )
    };
    dst[..p * ws].fill(0.0);
    for (src, row) in x.chunks_exact(w.max(1)).zip(dst[p * ws..].chunks_exact_mut(ws)).take(h) {
        row[..p].fill(0.0);
        row[p..p + w].copy_from_slice(src);
        row[p + w..].fill(0.0);
    }
    dst[(p + h) * ws..].fill(0.0);
}

/// Transposes a 16 x 16 block, as the AVX-512 `transpose_block`: row `r < rows` is
/// `lanes` values at `src + r plane` (zeros past them and in the rows past `rows`);
/// column `q < stores` is written as 16 values at `dst + q fp`, and every column is
/// added to `sums`.
///
/// # Safety
/// `src + r plane` is valid for reads of `lanes` values for `r < rows`; `dst + q fp` for
/// writes of 16 values for `q < stores <= 16`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
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
    let mut m = [[0.0f32; 16]; 16];
    for (r, row) in m.iter_mut().enumerate().take(rows) {
        for (c, v) in row.iter_mut().enumerate().take(lanes) {
            // SAFETY: value `c < lanes` of row `r < rows`, within the contract.
            *v = unsafe { *src.wrapping_add(r * plane).add(c) };
        }
    }
    for q in 0..16 {
        let col: [f32; 16] = m.map(|row| row[q]);
        for (s, v) in sums.iter_mut().zip(col) {
            *s += v;
        }
        if q < stores {
            // SAFETY: column `q < stores`, within the contract.
            unsafe { dst.add(q * fp).cast::<[f32; 16]>().write_unaligned(col) };
        }
    }
}

/// The output transform of up to 16 tiles, as the AVX-512 `output_tiles`: `Aᵀ m A + b`
/// with `m[ξ]` of the tiles selected by `mask` packed at `src + ξ pos`; for each tile row
/// `ii < 16 / l` and output row `a < 2` with `2 ii + a < rows`, the first `cols <= 2 l`
/// values of output row `2 ii + a` go to `dst + (2 ii + a) ow`.
///
/// # Safety
/// `l` is 16, 8 or 4; `src` is valid for reads of 16 values at each of 16 rows `pos`
/// apart (as the AVX-512 version reads); `dst + (2 ii + a) ow` for writes of `cols`
/// values for each written row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
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
    let count = mask.count_ones() as usize;
    let gaps = count < 16 && mask != (1u16 << count) - 1;
    let mut m = [[0.0f32; 16]; 16];
    for (xi, v) in m.iter_mut().enumerate() {
        // SAFETY: 16 values of row `ξ`, within the contract.
        let packed = unsafe { src.add(xi * pos).cast::<[f32; 16]>().read_unaligned() };
        if gaps {
            for (n, i) in (0..16).filter(|i| mask >> i & 1 == 1).enumerate() {
                v[i] = packed[n];
            }
        } else {
            *v = packed;
        }
    }
    // Aᵀ m: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (rows of 4), lane by lane
    let s: [[[f32; 16]; 4]; 2] = [
        std::array::from_fn(|q| std::array::from_fn(|i| m[q][i] + m[4 + q][i] + m[8 + q][i])),
        std::array::from_fn(|q| std::array::from_fn(|i| m[4 + q][i] - m[8 + q][i] - m[12 + q][i])),
    ];
    for (a, sa) in s.iter().enumerate() {
        // (s A): y0 = s0 + s1 + s2, y1 = s1 - s2 - s3, plus the bias, interleaved: output
        // columns 2j and 2j + 1 of the lanes in order, 2 l per tile row
        let mut y = [0.0f32; 32];
        for i in 0..16 {
            y[2 * i] = sa[0][i] + sa[1][i] + sa[2][i] + b;
            y[2 * i + 1] = sa[1][i] - sa[2][i] - sa[3][i] + b;
        }
        for (ii, part) in y.chunks_exact(2 * l).enumerate() {
            if 2 * ii + a >= rows {
                break;
            }
            // SAFETY: `cols <= 2 l` values of output row `2 ii + a < rows`.
            unsafe {
                let d = dst.add((2 * ii + a) * ow);
                if cols == 32 {
                    d.cast::<[f32; 32]>().write_unaligned(y);
                } else {
                    for (k, v) in part.iter().enumerate().take(cols) {
                        *d.add(k) = *v;
                    }
                }
            }
        }
    }
}
