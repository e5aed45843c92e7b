//! The book's max pooling on whole 2x2 windows with stride 2 (DeepConvNet's, VGG's),
//! one plane at a time, at an instruction-set level: plain loops compiled once per
//! level with that level's target features, as [`crate::relu`]'s are.
//!
//! The forward keeps, for each window, the position of its maximum in the plane (the
//! book's `Pooling.arg_max`); the first largest in row-major order wins a tie, and a
//! NaN is never chosen over a number, as in the general path of `dl-layers`' `Pooling`.
//! The backward sends each output's gradient to that position and 0 everywhere else.
//!
//! ```
//! use dl_tensor::{pool, Isa};
//!
//! // one 2 x 4 plane: two windows
//! let p = [1.0f32, 5.0, 2.0, 2.0,
//!          3.0, 4.0, 2.0, 0.0];
//! let (mut o, mut a) = ([0.0f32; 2], [0u32; 2]);
//! pool::max_pool_2x2(Isa::active(), &p, 4, 1, 2, &mut o, &mut a);
//! assert_eq!((o, a), ([5.0, 2.0], [1, 2]));   // the tie: the first 2 wins
//! let dx = pool::max_unpool_2x2(Isa::active(), 1, 4, 1, 2, &[10.0, 20.0], &a);
//! assert_eq!(dx, [0.0, 10.0, 20.0, 0.0,
//!                 0.0, 0.0, 0.0, 0.0]);
//! ```

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::Isa;

// The passes' plain loops, inlined into each level's copy (`crate::levels`).

#[inline(always)]
fn max_pool_2x2_loop(p: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32], a: &mut [u32]) {
    for (oy, (orow, arow)) in o.chunks_exact_mut(ow).zip(a.chunks_exact_mut(ow)).take(oh).enumerate() {
        let (r0, r1) = (2 * oy * w, (2 * oy + 1) * w);
        let (top, bottom) = (&p[r0..r0 + 2 * ow], &p[r1..r1 + 2 * ow]);
        let cells = orow.iter_mut().zip(arow.iter_mut());
        for (ox, ((ov, av), (t, b))) in cells.zip(top.chunks_exact(2).zip(bottom.chunks_exact(2))).enumerate() {
            // the general path's scan (strictly greater replaces, from -inf), as selects
            let (mut best, mut at) = (f32::NEG_INFINITY, r0 + 2 * ox);
            for (v, i) in [
                (t[0], r0 + 2 * ox),
                (t[1], r0 + 2 * ox + 1),
                (b[0], r1 + 2 * ox),
                (b[1], r1 + 2 * ox + 1),
            ] {
                let take = v > best;
                best = if take { v } else { best };
                at = if take { i } else { at };
            }
            *ov = best;
            *av = at as u32;
        }
    }
}

#[inline(always)]
fn max_pool_2x2_values_loop(p: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32]) {
    for (oy, orow) in o.chunks_exact_mut(ow).take(oh).enumerate() {
        let (r0, r1) = (2 * oy * w, (2 * oy + 1) * w);
        let (top, bottom) = (&p[r0..r0 + 2 * ow], &p[r1..r1 + 2 * ow]);
        for (ov, (t, b)) in orow.iter_mut().zip(top.chunks_exact(2).zip(bottom.chunks_exact(2))) {
            let mut best = f32::NEG_INFINITY;
            for v in [t[0], t[1], b[0], b[1]] {
                best = if v > best { v } else { best };
            }
            *ov = best;
        }
    }
}

#[inline(always)]
fn max_unpool_2x2_loop(w: usize, oh: usize, ow: usize, dout: &[f32], a: &[u32], dx: &mut [MaybeUninit<f32>]) {
    for (oy, (drow, arow)) in dout.chunks_exact(ow).zip(a.chunks_exact(ow)).take(oh).enumerate() {
        let r0 = 2 * oy * w;
        let (top, bottom) = dx[r0..r0 + 2 * w].split_at_mut(w);
        let (top, bottom) = (&mut top[..2 * ow], &mut bottom[..2 * ow]);
        for ox in 0..ow {
            // `0 + v`, as the sum into a cleared plane gives (-0 becomes +0); `k` the
            // winner's place in its window: 0, 1 (top row), w, w + 1 (bottom row)
            let (v, k) = (0.0 + drow[ox], window_place(arow[ox], r0 + 2 * ox));
            let pick = |i: u32| MaybeUninit::new(if k == i { v } else { 0.0 });
            top[2 * ox] = pick(0);
            top[2 * ox + 1] = pick(1);
            bottom[2 * ox] = pick(w as u32);
            bottom[2 * ox + 1] = pick(w as u32 + 1);
        }
    }
}

#[inline(always)]
fn max_pool_relu_2x2_loop(y: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32], codes: &mut [u8]) {
    for (oy, (orow, crow)) in o
        .chunks_exact_mut(ow)
        .zip(codes.chunks_exact_mut(ow))
        .take(oh)
        .enumerate()
    {
        let r0 = 2 * oy * w;
        let (top, bottom) = (&y[r0..r0 + 2 * ow], &y[r0 + w..r0 + w + 2 * ow]);
        for ox in 0..ow {
            // the ReLU of each value, then the pooling's scan over them (strictly greater
            // replaces, from -inf), and whether the ReLU's mask is set at the winner
            let (mut best, mut code, mut masked) = (f32::NEG_INFINITY, 0u8, false);
            let window = [top[2 * ox], top[2 * ox + 1], bottom[2 * ox], bottom[2 * ox + 1]];
            for (k, v) in window.into_iter().enumerate() {
                let r = crate::relu::relu(v);
                let take = r > best;
                best = if take { r } else { best };
                code = if take { k as u8 } else { code };
                masked = if take { v <= 0.0 } else { masked };
            }
            orow[ox] = best;
            crow[ox] = if masked { NO_GRADIENT } else { code };
        }
    }
}

#[inline(always)]
fn max_pool_relu_2x2_values_loop(y: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32]) {
    for (oy, orow) in o.chunks_exact_mut(ow).take(oh).enumerate() {
        let r0 = 2 * oy * w;
        let (top, bottom) = (&y[r0..r0 + 2 * ow], &y[r0 + w..r0 + w + 2 * ow]);
        for (ox, ov) in orow.iter_mut().enumerate() {
            let mut best = f32::NEG_INFINITY;
            for v in [top[2 * ox], top[2 * ox + 1], bottom[2 * ox], bottom[2 * ox + 1]] {
                let r = crate::relu::relu(v);
                best = if r > best { r } else { best };
            }
            *ov = best;
        }
    }
}

#[inline(always)]
fn max_unpool_codes_2x2_loop(w: usize, oh: usize, ow: usize, dout: &[f32], codes: &[u8], dx: &mut [f32]) {
    for (oy, (drow, crow)) in dout.chunks_exact(ow).zip(codes.chunks_exact(ow)).take(oh).enumerate() {
        let r0 = 2 * oy * w;
        let (top, bottom) = dx[r0..r0 + 2 * w].split_at_mut(w);
        let (top, bottom) = (&mut top[..2 * ow], &mut bottom[..2 * ow]);
        for ox in 0..ow {
            // the unpool's `0 + v` at the winner's place, nothing where the ReLU stops it
            let (v, code) = (0.0 + drow[ox], crow[ox]);
            let pick = |k: u8| if code == k { v } else { 0.0 };
            top[2 * ox] = pick(0);
            top[2 * ox + 1] = pick(1);
            bottom[2 * ox] = pick(2);
            bottom[2 * ox + 1] = pick(3);
        }
    }
}

// The 3x3 pooling with stride 1 and padding 1 (GoogLeNet's pool branches): output
// `(y, x)` takes the window of rows `y - 1 ..= y + 1` and columns `x - 1 ..= x + 1`
// cut to the plane. The general path's scan (row-major, strictly greater replaces,
// from -inf at the window's first position) is taken in two passes: along the rows
// (each value's row of the window into `m`, its winner's position into `c`), then
// down the columns, the top row's winner first. The first largest of the window in
// row-major order is the first largest of its rows' winners, row by row. Both passes
// run over the whole plane at once, as the planes' rows (14 and 7 values in GoogLeNet)
// are shorter than a vector of AVX-512: the row pass over every value but the first and
// last, the border columns then redone with their two values; the column pass over the
// inner rows at once, the top and bottom rows with their two.

/// The row pass's update of a border column's `m`, `c` at `i` from values `lo..hi`.
#[inline(always)]
fn row_edge(p: &[f32], i: usize, lo: usize, hi: usize, m: &mut [f32], c: &mut [u32]) {
    let (mut best, mut at) = (f32::NEG_INFINITY, lo as u32);
    for (k, &v) in p.iter().enumerate().take(hi).skip(lo) {
        take_larger(&mut best, &mut at, v, k as u32);
    }
    (m[i], c[i]) = (best, at);
}

/// The scan's step: `v` at `k` replaces `(best, at)` when strictly greater.
#[inline(always)]
fn take_larger(best: &mut f32, at: &mut u32, v: f32, k: u32) {
    let take = v > *best;
    *best = if take { v } else { *best };
    *at = if take { k } else { *at };
}

#[inline(always)]
fn max_pool_3x3_loop(p: &[f32], h: usize, w: usize, m: &mut [f32], c: &mut [u32], o: &mut [f32], a: &mut [u32]) {
    let n = h * w;
    let (p, m, c, o, a) = (&p[..n], &mut m[..n], &mut c[..n], &mut o[..n], &mut a[..n]);
    // the rows: three values about each (two at the borders, redone below)
    if n >= 3 {
        let taps = p.iter().zip(&p[1..]).zip(&p[2..]);
        // (the taps end one short of the plane: the zips stop there)
        let out = m[1..].iter_mut().zip(c[1..].iter_mut());
        for (i, ((mv, cv), ((&l, &mid), &r))) in out.zip(taps).enumerate() {
            let (mut best, mut at) = (f32::NEG_INFINITY, i as u32);
            take_larger(&mut best, &mut at, l, i as u32);
            take_larger(&mut best, &mut at, mid, i as u32 + 1);
            take_larger(&mut best, &mut at, r, i as u32 + 2);
            (*mv, *cv) = (best, at);
        }
    }
    for row in (0..n).step_by(w) {
        row_edge(p, row, row, row + w.min(2), m, c);
        if w >= 2 {
            row_edge(p, row + w - 1, row + w - 2, row + w, m, c);
        }
    }
    // the columns: the rows' winners above, at and below each value
    if h == 1 {
        o.copy_from_slice(m);
        a.copy_from_slice(c);
        return;
    }
    let down = |o: &mut [f32], a: &mut [u32], rows: &[(&[f32], &[u32])]| {
        for (j, (ov, av)) in o.iter_mut().zip(a.iter_mut()).enumerate() {
            let (mut best, mut at) = (rows[0].0[j], rows[0].1[j]);
            for &(rm, rc) in &rows[1..] {
                take_larger(&mut best, &mut at, rm[j], rc[j]);
            }
            (*ov, *av) = (best, at);
        }
    };
    down(
        &mut o[..w],
        &mut a[..w],
        &[(&m[..w], &c[..w]), (&m[w..2 * w], &c[w..2 * w])],
    );
    if h >= 3 {
        let inner = o[w..n - w].iter_mut().zip(a[w..n - w].iter_mut());
        let above = m.iter().zip(c.iter());
        let at_row = m[w..].iter().zip(&c[w..]);
        let below = m[2 * w..].iter().zip(&c[2 * w..]);
        for ((ov, av), ((u, x), d)) in inner.zip(above.zip(at_row).zip(below)) {
            let (mut best, mut at) = (*u.0, *u.1);
            take_larger(&mut best, &mut at, *x.0, *x.1);
            take_larger(&mut best, &mut at, *d.0, *d.1);
            (*ov, *av) = (best, at);
        }
    }
    let (last, prev) = (n - w, n - 2 * w);
    let (ol, al) = (&mut o[last..], &mut a[last..]);
    down(ol, al, &[(&m[prev..last], &c[prev..last]), (&m[last..], &c[last..])]);
}

#[inline(always)]
fn max_pool_3x3_values_loop(p: &[f32], h: usize, w: usize, m: &mut [f32], o: &mut [f32]) {
    let n = h * w;
    let (p, m, o) = (&p[..n], &mut m[..n], &mut o[..n]);
    let larger = |best: f32, v: f32| if v > best { v } else { best };
    if n >= 3 {
        let taps = p.iter().zip(&p[1..]).zip(&p[2..]);
        for (mv, ((&l, &mid), &r)) in m[1..].iter_mut().zip(taps) {
            *mv = larger(larger(larger(f32::NEG_INFINITY, l), mid), r);
        }
    }
    for row in (0..n).step_by(w) {
        m[row] = p[row..row + w.min(2)]
            .iter()
            .fold(f32::NEG_INFINITY, |b, &v| larger(b, v));
        if w >= 2 {
            m[row + w - 1] = larger(larger(f32::NEG_INFINITY, p[row + w - 2]), p[row + w - 1]);
        }
    }
    if h == 1 {
        o.copy_from_slice(m);
        return;
    }
    for (j, ov) in o[..w].iter_mut().enumerate() {
        *ov = larger(m[j], m[w + j]);
    }
    if h >= 3 {
        let rows = m.iter().zip(&m[w..]).zip(&m[2 * w..]);
        for (ov, ((&u, &x), &d)) in o[w..n - w].iter_mut().zip(rows) {
            *ov = larger(larger(u, x), d);
        }
    }
    let (last, prev) = (n - w, n - 2 * w);
    for (j, ov) in o[last..].iter_mut().enumerate() {
        *ov = larger(m[prev + j], m[last + j]);
    }
}

thread_local! {
    /// The row pass's winners and their positions, a plane's worth, kept by each thread.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The first `n` values of the scratch, grown to hold them.
fn scratch<'a>(m: &'a mut Vec<f32>, c: &'a mut Vec<u32>, n: usize) -> (&'a mut [f32], &'a mut [u32]) {
    if m.len() < n {
        m.resize(n, 0.0);
        c.resize(n, 0);
    }
    (&mut m[..n], &mut c[..n])
}

/// The position `at` relative to the window's first value `first`, in 32 bits (the
/// loops vectorize in lanes of 32): 0, 1, `w` or `w + 1` for a position in the window.
#[inline(always)]
fn window_place(at: u32, first: usize) -> u32 {
    at.wrapping_sub(first as u32)
}

builds! {
    max_pool_3x3_loop(p: &[f32], h: usize, w: usize, m: &mut [f32], c: &mut [u32], o: &mut [f32], a: &mut [u32]);
    max_pool_3x3_values_loop(p: &[f32], h: usize, w: usize, m: &mut [f32], o: &mut [f32]);
    max_pool_relu_2x2_loop(y: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32], codes: &mut [u8]);
    max_pool_relu_2x2_values_loop(y: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32]);
    max_unpool_codes_2x2_loop(w: usize, oh: usize, ow: usize, dout: &[f32], codes: &[u8], dx: &mut [f32]);
    max_pool_2x2_loop(p: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32], a: &mut [u32]);
    max_pool_2x2_values_loop(p: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32]);
    max_unpool_2x2_loop(w: usize, oh: usize, ow: usize, dout: &[f32], a: &[u32], dx: &mut [std::mem::MaybeUninit<f32>]);
}

/// The maxima of the whole 2x2 windows (stride 2) of the plane `p` of width `w` into the
/// `oh x ow` plane `o`, and each one's position in `p` into `a`. Rows of `o` and `a`
/// past the shorter of the two, or past `oh`, are left alone.
///
/// # Panics
/// If `p` has fewer than `2 oh` rows of `w >= 2 ow` values.
pub fn max_pool_2x2(isa: Isa, p: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32], a: &mut [u32]) {
    check_plane(p.len(), w, oh, ow);
    at_level!(isa, max_pool_2x2_loop(p, w, oh, ow, o, a))
}

/// [`max_pool_2x2`]'s maxima without their positions (evaluation), value for value.
///
/// # Panics
/// As [`max_pool_2x2`].
pub fn max_pool_2x2_values(isa: Isa, p: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32]) {
    check_plane(p.len(), w, oh, ow);
    at_level!(isa, max_pool_2x2_values_loop(p, w, oh, ow, o))
}

/// The maxima of the 3x3 windows with stride 1 and padding 1 (GoogLeNet's pool
/// branches) of the `h x w` plane `p` into the `h x w` plane `o`, and each one's
/// position in `p` into `a`: the first largest in row-major order, a NaN never chosen
/// over a number, padding never chosen (a window of NaNs alone gives -inf at its first
/// position inside the plane), as in the general path of `dl-layers`' `Pooling`.
///
/// # Panics
/// If `p`, `o` or `a` holds fewer than `h w` values.
pub fn max_pool_3x3(isa: Isa, p: &[f32], h: usize, w: usize, o: &mut [f32], a: &mut [u32]) {
    check_plane_3x3(h, w, p.len(), o.len(), Some(a.len()));
    if h * w == 0 {
        return;
    }
    SCRATCH.with_borrow_mut(|(m, c)| {
        let (m, c) = scratch(m, c, h * w);
        at_level!(isa, max_pool_3x3_loop(p, h, w, m, c, o, a))
    })
}

/// [`max_pool_3x3`]'s maxima without their positions (evaluation), value for value.
///
/// # Panics
/// If `p` or `o` holds fewer than `h w` values.
pub fn max_pool_3x3_values(isa: Isa, p: &[f32], h: usize, w: usize, o: &mut [f32]) {
    check_plane_3x3(h, w, p.len(), o.len(), None);
    if h * w == 0 {
        return;
    }
    SCRATCH.with_borrow_mut(|(m, c)| {
        let (m, _) = scratch(m, c, h * w);
        at_level!(isa, max_pool_3x3_values_loop(p, h, w, m, o))
    })
}

/// The backward of [`max_pool_2x2`] over `planes` planes of `2 oh x w` values
/// (`w == 2 ow`): each value of `dout` (`oh x ow` a plane) sent to the position `a`
/// holds for it, every other value 0. Each value of the result is written once,
/// planes in parallel: no clearing pass, no scattered sums. The same values as adding
/// each output's gradient at its position into a cleared plane.
///
/// # Panics
/// If `w != 2 ow`, or `dout` or `a` does not hold `planes` planes of `oh x ow` values.
pub fn max_unpool_2x2(isa: Isa, planes: usize, w: usize, oh: usize, ow: usize, dout: &[f32], a: &[u32]) -> Vec<f32> {
    assert_eq!(w, 2 * ow, "max_unpool_2x2: planes {w} wide for {ow} windows a row");
    let (plane, oplane) = (2 * oh * w, oh * ow);
    assert!(
        dout.len() == planes * oplane && a.len() == planes * oplane,
        "max_unpool_2x2: {} gradients and {} positions for {planes} planes of {oh} x {ow}",
        dout.len(),
        a.len()
    );
    let mut dx = Vec::<f32>::with_capacity(planes * plane);
    if plane > 0 {
        dx.spare_capacity_mut()[..planes * plane]
            .par_chunks_mut(plane)
            .zip(dout.par_chunks(oplane.max(1)))
            .zip(a.par_chunks(oplane.max(1)))
            .for_each(|((d, o), a)| unpool_plane(isa, w, oh, ow, o, a, d));
    }
    // SAFETY: the capacity is `planes * plane`, and each plane's chunk was written in
    // full: `w == 2 ow`, so the `oh` pairs of rows of `2 ow` values are the whole plane.
    unsafe { dx.set_len(planes * plane) };
    dx
}

/// The code of a window whose gradient the ReLU stops ([`max_pool_relu_2x2`]).
pub const NO_GRADIENT: u8 = 4;

/// The book's `Relu` and then [`max_pool_2x2`] in one pass over the plane `y` (the
/// values before the ReLU), into `o` (the same values as the two passes) and, for each
/// window, a code of one byte for the backward ([`max_unpool_codes_2x2`]): the place of
/// the maximum in its window, 0 and 1 on the top row, 2 and 3 on the bottom row, or
/// [`NO_GRADIENT`] where the ReLU's mask is set at it (its input was `<= 0`), so that
/// no gradient flows back through the window. The book's two layers keep a mask of a
/// byte a value and a position of four bytes a window; this keeps a byte a window.
/// Rows of `o` and `codes` past the shorter of the two, or past `oh`, are left alone.
///
/// # Panics
/// As [`max_pool_2x2`].
pub fn max_pool_relu_2x2(isa: Isa, y: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32], codes: &mut [u8]) {
    check_plane(y.len(), w, oh, ow);
    #[cfg(target_arch = "x86_64")]
    if crate::levels::level(isa) == Isa::Avx512 {
        let rows = o.chunks_exact_mut(ow).zip(codes.chunks_exact_mut(ow)).take(oh);
        for (oy, (orow, crow)) in rows.enumerate() {
            let r0 = 2 * oy * w;
            let (top, bottom) = (&y[r0..r0 + 2 * ow], &y[r0 + w..r0 + w + 2 * ow]);
            // SAFETY: the CPU has AVX-512F (`level`); the two rows hold `2 ow` values
            // each (`check_plane`), and `orow`, `crow` `ow`.
            unsafe { rows_avx512::pool_relu(top, bottom, orow, Some(crow)) };
        }
        return;
    }
    at_level!(isa, max_pool_relu_2x2_loop(y, w, oh, ow, o, codes))
}

/// [`max_pool_relu_2x2`]'s values without the codes (evaluation).
///
/// # Panics
/// As [`max_pool_2x2`].
pub fn max_pool_relu_2x2_values(isa: Isa, y: &[f32], w: usize, oh: usize, ow: usize, o: &mut [f32]) {
    check_plane(y.len(), w, oh, ow);
    #[cfg(target_arch = "x86_64")]
    if crate::levels::level(isa) == Isa::Avx512 {
        for (oy, orow) in o.chunks_exact_mut(ow).take(oh).enumerate() {
            let r0 = 2 * oy * w;
            let (top, bottom) = (&y[r0..r0 + 2 * ow], &y[r0 + w..r0 + w + 2 * ow]);
            // SAFETY: as in `max_pool_relu_2x2`.
            unsafe { rows_avx512::pool_relu(top, bottom, orow, None) };
        }
        return;
    }
    at_level!(isa, max_pool_relu_2x2_values_loop(y, w, oh, ow, o))
}

/// The backward of [`max_pool_relu_2x2`] over `planes` planes of `2 oh x w` values
/// (`w == 2 ow`), into `dx`: each value of `dout` sent to the place its code names,
/// 0 everywhere else; the same values as [`max_unpool_2x2`] followed by the ReLU's
/// backward ([`crate::relu::backward`]). One image's planes, in one pass (no threads,
/// no allocation).
///
/// # Panics
/// If `w != 2 ow`, if `dout` or `codes` does not hold `planes` planes of `oh x ow`
/// values or `dx` `planes` planes of `2 oh x w`.
#[allow(clippy::too_many_arguments)]
pub fn max_unpool_codes_2x2(
    isa: Isa,
    planes: usize,
    w: usize,
    oh: usize,
    ow: usize,
    dout: &[f32],
    codes: &[u8],
    dx: &mut [f32],
) {
    assert_eq!(
        w,
        2 * ow,
        "max_unpool_codes_2x2: planes {w} wide for {ow} windows a row"
    );
    let (plane, oplane) = (2 * oh * w, oh * ow);
    assert!(
        dout.len() == planes * oplane && codes.len() == planes * oplane && dx.len() == planes * plane,
        "max_unpool_codes_2x2: {} gradients, {} codes and {} outputs for {planes} planes of {oh} x {ow}",
        dout.len(),
        codes.len(),
        dx.len()
    );
    if oplane == 0 {
        return;
    }
    let planes = dout.chunks_exact(oplane).zip(codes.chunks_exact(oplane));
    for ((d, c), x) in planes.zip(dx.chunks_exact_mut(plane)) {
        #[cfg(target_arch = "x86_64")]
        if matches!(crate::levels::level(isa), Isa::Avx512 | Isa::Avx2) {
            let rows = d
                .chunks_exact(ow)
                .zip(c.chunks_exact(ow))
                .zip(x.chunks_exact_mut(2 * w));
            for ((drow, crow), pair) in rows {
                let (top, bottom) = pair.split_at_mut(w);
                // SAFETY: the CPU has AVX2 (`level`: AVX-512 CPUs have it too); `drow` and
                // `crow` hold `ow` values, `top` and `bottom` `w = 2 ow`.
                // (AVX-512 runs the AVX2 rows: 8 windows a register beat 16 there, 3.4
                // against 4.4 µs on an image of conv2's output)
                unsafe { rows_avx2::unpool_codes(drow, crow, top, bottom) };
            }
            continue;
        }
        at_level!(isa, max_unpool_codes_2x2_loop(w, oh, ow, d, c, x))
    }
}

/// One plane of [`max_unpool_2x2`].
fn unpool_plane(isa: Isa, w: usize, oh: usize, ow: usize, dout: &[f32], a: &[u32], dx: &mut [MaybeUninit<f32>]) {
    at_level!(isa, max_unpool_2x2_loop(w, oh, ow, dout, a, dx))
}

/// [`max_pool_relu_2x2`] (its values alone when no codes are asked for) a pair of rows
/// at a time, 16 windows a register: the plain loops vectorize over a row's windows
/// only, so rows of fewer than 16 windows (DeepConvNet's 14 and 7) ran one window at a
/// time. Even and odd columns are parted by permutes.
#[cfg(target_arch = "x86_64")]
mod rows_avx512 {
    use std::arch::x86_64::*;

    use super::NO_GRADIENT;

    /// The first `n` lanes (all for `n >= 16`).
    fn prefix(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// Lanes `0, 2, ..., 30` and `1, 3, ..., 31` of two registers.
    const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
    const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];

    /// The even and odd values of `2 n <= 32` values from `p` (zeros past them).
    ///
    /// # Safety
    /// AVX-512F; `p` valid for `2 n` reads.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn parted(p: *const f32, n: usize) -> (__m512, __m512) {
        // SAFETY: only the lanes of the masks are read, `2 n` values from `p`.
        let (lo, hi) = unsafe {
            (
                _mm512_maskz_loadu_ps(prefix(2 * n), p),
                _mm512_maskz_loadu_ps(prefix((2 * n).saturating_sub(16)), p.wrapping_add(16)),
            )
        };
        // SAFETY: the index arrays hold 16 values.
        let (even, odd) = unsafe {
            (
                _mm512_loadu_si512(EVEN.as_ptr().cast()),
                _mm512_loadu_si512(ODD.as_ptr().cast()),
            )
        };
        (
            _mm512_permutex2var_ps(lo, even, hi),
            _mm512_permutex2var_ps(lo, odd, hi),
        )
    }

    /// `max_pool_relu_2x2_loop` on one pair of rows (`top`, `bottom`: `2 ow` values;
    /// `o`, `codes`: `ow`).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pool_relu(top: &[f32], bottom: &[f32], o: &mut [f32], mut codes: Option<&mut [u8]>) {
        let ow = o.len();
        assert!(top.len() >= 2 * ow && bottom.len() >= 2 * ow && codes.as_ref().is_none_or(|c| c.len() >= ow));
        let zero = _mm512_setzero_ps();
        for ox in (0..ow).step_by(16) {
            let n = (ow - ox).min(16);
            // SAFETY: `2 n` values of each row from column `2 ox` (`2 (ox + n) <= 2 ow`).
            let (t0, t1) = unsafe { parted(top.as_ptr().add(2 * ox), n) };
            let (b0, b1) = unsafe { parted(bottom.as_ptr().add(2 * ox), n) };
            let (mut best, mut code, mut masked) = (_mm512_set1_ps(f32::NEG_INFINITY), _mm512_setzero_si512(), 0u16);
            for (k, v) in [t0, t1, b0, b1].into_iter().enumerate() {
                // the ReLU (`v > 0 ? v : 0`: +0 for -0 and NaN), then the strict `>` scan
                let r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, zero), v);
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(r, best);
                best = _mm512_mask_mov_ps(best, take, r);
                code = _mm512_mask_mov_epi32(code, take, _mm512_set1_epi32(k as i32));
                let stops = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, zero);
                masked = (masked & !take) | (stops & take);
            }
            code = _mm512_mask_mov_epi32(code, masked, _mm512_set1_epi32(i32::from(NO_GRADIENT)));
            // SAFETY: `n` values of `o` and of `codes` from `ox` (`ox + n <= ow`).
            unsafe {
                _mm512_mask_storeu_ps(o.as_mut_ptr().add(ox), prefix(n), best);
                if let Some(codes) = codes.as_deref_mut() {
                    _mm512_mask_cvtepi32_storeu_epi8(codes.as_mut_ptr().add(ox).cast(), prefix(n), code);
                }
            }
        }
    }
}

/// [`max_unpool_codes_2x2`] a pair of rows at a time, 8 windows a register, at AVX2 and
/// AVX-512 (16 windows a register ran slower: 4.4 against 3.4 µs on an image of conv2's
/// output, `cargo bench -p dl-tensor --bench kernels -- pooling/max_unpool_codes`). The
/// forward's selects on 8 windows a register, after parting even and odd columns, ran no
/// faster than the plain loop at AVX2 (5.1 against 4.8 µs), which runs there.
#[cfg(target_arch = "x86_64")]
mod rows_avx2 {
    use std::arch::x86_64::*;

    /// The first `n` of 8 lanes set, as a mask for `vmaskmovps`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn prefix(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// As `rows_avx512::unpool_codes`.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unpool_codes(dout: &[f32], codes: &[u8], top: &mut [f32], bottom: &mut [f32]) {
        let ow = dout.len();
        assert!(codes.len() >= ow && top.len() >= 2 * ow && bottom.len() >= 2 * ow);
        let zero = _mm256_setzero_ps();
        for ox in (0..ow).step_by(8) {
            let n = (ow - ox).min(8);
            let lanes: [i32; 8] = std::array::from_fn(|i| if i < n { i32::from(codes[ox + i]) } else { 0 });
            // SAFETY: `n` values of `dout` from `ox`; `lanes` holds 8.
            let (v, c) = unsafe {
                (
                    _mm256_add_ps(zero, _mm256_maskload_ps(dout.as_ptr().add(ox), prefix(n))),
                    _mm256_loadu_si256(lanes.as_ptr().cast()),
                )
            };
            let pick = |k: i32| _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(c, _mm256_set1_epi32(k))));
            for (row, (a, b)) in [(&mut *top, (pick(0), pick(1))), (&mut *bottom, (pick(2), pick(3)))] {
                // (a0, b0, a1, b1 | a4, b4, a5, b5) and (a2, b2, a3, b3 | a6, b6, a7, b7)
                let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let first = _mm256_permute2f128_ps::<0x20>(lo, hi);
                let second = _mm256_permute2f128_ps::<0x31>(lo, hi);
                // SAFETY: `2 n` values of the row from column `2 ox` (`2 (ox + n) <= 2 ow`).
                unsafe {
                    let p = row.as_mut_ptr().add(2 * ox);
                    _mm256_maskstore_ps(p, prefix(2 * n), first);
                    _mm256_maskstore_ps(p.wrapping_add(8), prefix((2 * n).saturating_sub(8)), second);
                }
            }
        }
    }
}

/// The windows' rows must lie inside the plane.
fn check_plane(len: usize, w: usize, oh: usize, ow: usize) {
    assert!(
        2 * ow <= w && 2 * oh * w <= len,
        "max_pool_2x2: a plane of {len} values {w} wide has no {oh} x {ow} windows of 2 x 2"
    );
}

/// The 3x3 pooling's planes must hold `h w` values each.
fn check_plane_3x3(h: usize, w: usize, p: usize, o: usize, a: Option<usize>) {
    let n = h * w;
    assert!(
        p >= n && o >= n && a.is_none_or(|a| a >= n),
        "max_pool_3x3: planes of {p} values in and {o} out ({a:?} positions) for {h} x {w}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plane full of ties (few distinct values), with NaNs and infinities.
    fn plane(n: usize, seed: usize) -> Vec<f32> {
        let kinds = [1.0f32, 2.0, 2.0, -1.0, f32::NAN, 0.0, -0.0, f32::NEG_INFINITY, 3.0, 2.0];
        (0..n).map(|i| kinds[(i * 7 + seed + i / 5) % kinds.len()]).collect()
    }

    /// The book's pooling, written out: the first largest of each window's four values
    /// in row-major order (`>` from -inf: a NaN never wins; all NaN: the first).
    fn reference(p: &[f32], w: usize, oh: usize, ow: usize) -> (Vec<f32>, Vec<u32>) {
        let (mut o, mut a) = (Vec::new(), Vec::new());
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut at) = (f32::NEG_INFINITY, 2 * oy * w + 2 * ox);
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let i = (2 * oy + dy) * w + 2 * ox + dx;
                    if p[i] > best {
                        (best, at) = (p[i], i);
                    }
                }
                o.push(best);
                a.push(at as u32);
            }
        }
        (o, a)
    }

    #[test]
    fn every_level_pools_as_the_book_on_planes_of_every_size() {
        // widths past the vector lanes (1 to 20 windows a row); planes wider than their
        // windows (an odd last column left out) and taller (an odd last row)
        for (oh, ow, w, h) in [
            (1, 1, 2, 2),
            (3, 5, 10, 6),
            (2, 8, 17, 5),
            (14, 14, 28, 28),
            (4, 20, 40, 9),
            (7, 3, 6, 14),
        ] {
            let p = plane(w * h, oh + ow);
            let (want, want_at) = reference(&p, w, oh, ow);
            for isa in Isa::ALL {
                let (mut o, mut a) = (vec![9.0f32; oh * ow], vec![u32::MAX; oh * ow]);
                max_pool_2x2(isa, &p, w, oh, ow, &mut o, &mut a);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&o), bits(&want), "{isa} {oh}x{ow} in {h}x{w}");
                assert_eq!(a, want_at, "{isa} {oh}x{ow}");
                let mut alone = vec![9.0f32; oh * ow];
                max_pool_2x2_values(isa, &p, w, oh, ow, &mut alone);
                assert_eq!(bits(&alone), bits(&want), "{isa} values {oh}x{ow}");
            }
        }
    }

    /// Evaluation's maxima are the training path's bit for bit, ties of `-0` and `+0`
    /// (equal, of different signs: the first wins) and NaN (never the largest) included.
    #[test]
    fn the_maxima_alone_are_those_of_the_pass_with_positions() {
        let (z, n, nan) = (0.0f32, -0.0f32, f32::NAN);
        // two rows of 8: four windows
        #[rustfmt::skip]
        let p = [
            n, z, nan, 1.0, z, n, nan, nan,
            z, z, 2.0, nan, n, z, nan, -3.0,
        ];
        for isa in Isa::ALL {
            let (mut with, mut alone, mut at) = ([9.0f32; 4], [9.0f32; 4], [0u32; 4]);
            max_pool_2x2(isa, &p, 8, 1, 4, &mut with, &mut at);
            max_pool_2x2_values(isa, &p, 8, 1, 4, &mut alone);
            assert_eq!(with.map(f32::to_bits), alone.map(f32::to_bits), "{isa}");
            assert_eq!(alone.map(f32::to_bits), [n, 2.0, z, -3.0].map(f32::to_bits), "{isa}");
            assert_eq!(at, [0, 10, 4, 15], "{isa}");
        }
    }

    #[test]
    fn every_level_unpools_as_the_sums_into_a_cleared_plane() {
        for (planes, oh, ow) in [(1, 1, 1), (3, 14, 14), (2, 4, 9), (5, 7, 20)] {
            let w = 2 * ow;
            let p = plane(planes * 2 * oh * w, planes);
            let (mut dout, mut a) = (Vec::new(), Vec::new());
            for (k, pk) in p.chunks(2 * oh * w).enumerate() {
                a.extend(reference(pk, w, oh, ow).1);
                // -0 among the gradients: the sum into a cleared plane makes it +0
                dout.extend((0..oh * ow).map(|i| if i % 5 == 0 { -0.0 } else { (i + k) as f32 - 7.5 }));
            }
            let mut want = vec![0.0f32; planes * 2 * oh * w];
            for (k, (d, ak)) in dout.chunks(oh * ow).zip(a.chunks(oh * ow)).enumerate() {
                for (&v, &i) in d.iter().zip(ak) {
                    want[k * 2 * oh * w + i as usize] += v;
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for isa in Isa::ALL {
                let got = max_unpool_2x2(isa, planes, w, oh, ow, &dout, &a);
                assert_eq!(bits(&got), bits(&want), "{isa} {planes} x {oh}x{ow}");
            }
        }
        assert_eq!(max_unpool_2x2(Isa::Scalar, 3, 0, 0, 0, &[], &[]), Vec::<f32>::new());
    }

    /// The ReLU and the pooling in one pass, forward and backward, at every level,
    /// against the book's two layers one after the other (`relu::forward_masked`, the
    /// written-out pooling, the unpool and `relu::backward`), bit for bit: planes of
    /// ties, NaN, ±0, ±inf and negative values only (windows whose winner the mask
    /// stops), and -0 among the gradients.
    #[test]
    fn every_level_pools_and_unpools_through_the_relu_as_the_two_layers() {
        let (mut passed, mut stopped) = (false, false);
        for (planes, oh, ow, w) in [(1, 1, 1, 2), (3, 14, 14, 28), (2, 4, 9, 19), (5, 7, 20, 40)] {
            let plane_len = (2 * oh + 1) * w;
            let mut y = plane(planes * plane_len, planes + 3);
            // a plane of negative values only
            y[..plane_len].iter_mut().for_each(|v| *v = -v.abs() - 1.0);
            // the two layers one by one
            let mut relu = y.clone();
            let mut mask = vec![false; y.len()];
            crate::relu::forward_masked(Isa::Scalar, &mut relu, &mut mask);
            let (mut want, mut codes_want) = (Vec::new(), Vec::new());
            for (k, pk) in relu.chunks(plane_len).enumerate() {
                let (o, a) = reference(pk, w, oh, ow);
                want.extend(o);
                for a in a {
                    let (row, col) = (a as usize / w, a as usize % w);
                    let place = (2 * (row % 2) + col % 2) as u8;
                    let code = if mask[k * plane_len + a as usize] {
                        NO_GRADIENT
                    } else {
                        place
                    };
                    codes_want.push(code);
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for isa in Isa::ALL {
                let (mut o, mut codes) = (vec![f32::NAN; want.len()], vec![9u8; want.len()]);
                let (mut values, at) = (vec![f32::NAN; want.len()], format!("{isa} {planes} x {oh}x{ow}"));
                let chunks = y
                    .chunks(plane_len)
                    .zip(o.chunks_mut(oh * ow).zip(codes.chunks_mut(oh * ow)));
                for ((p, (o, c)), v) in chunks.zip(values.chunks_mut(oh * ow)) {
                    max_pool_relu_2x2(isa, p, w, oh, ow, o, c);
                    max_pool_relu_2x2_values(isa, p, w, oh, ow, v);
                }
                let diff = bits(&o).iter().zip(bits(&want)).position(|(a, b)| *a != b);
                assert_eq!(diff, None, "{at}: {:?}", diff.map(|i| (o[i], want[i])));
                assert_eq!(bits(&values), bits(&want), "{at}");
                let diff = codes.iter().zip(&codes_want).position(|(a, b)| a != b);
                assert_eq!(diff, None, "{at}: {:?}", diff.map(|i| (codes[i], codes_want[i])));
            }
            // backward, on planes of whole windows (the unpool's contract)
            if w != 2 * ow {
                continue;
            }
            let dout: Vec<f32> = (0..planes * oh * ow)
                .map(|i| if i % 5 == 0 { -0.0 } else { i as f32 * 0.5 - 7.5 })
                .collect();
            let whole: Vec<f32> = y.chunks(plane_len).flat_map(|p| p[..2 * oh * w].to_vec()).collect();
            let whole_mask: Vec<bool> = mask.chunks(plane_len).flat_map(|m| m[..2 * oh * w].to_vec()).collect();
            let mut relu_whole = whole.clone();
            crate::relu::forward(Isa::Scalar, &mut relu_whole);
            let a: Vec<u32> = relu_whole
                .chunks(2 * oh * w)
                .flat_map(|p| reference(p, w, oh, ow).1)
                .collect();
            let unpooled = max_unpool_2x2(Isa::Scalar, planes, w, oh, ow, &dout, &a);
            let mut want = vec![f32::NAN; unpooled.len()];
            crate::relu::backward(Isa::Scalar, &unpooled, &whole_mask, &mut want);
            passed |= want.iter().any(|v| *v != 0.0);
            stopped |= whole_mask.iter().zip(&unpooled).any(|(m, u)| *m && *u != 0.0);
            for isa in Isa::ALL {
                let codes: Vec<u8> = codes_want.clone();
                let mut got = vec![f32::NAN; want.len()];
                max_unpool_codes_2x2(isa, planes, w, oh, ow, &dout, &codes, &mut got);
                assert_eq!(bits(&got), bits(&want), "{isa} {planes} x {oh}x{ow}");
            }
        }
        // the cases see gradients that pass and gradients that the mask stops
        assert!(passed && stopped);
        max_unpool_codes_2x2(Isa::Scalar, 3, 0, 0, 0, &[], &[], &mut []);
    }

    #[test]
    #[should_panic(expected = "max_unpool_codes_2x2: planes 5 wide for 2 windows a row")]
    fn unpooling_by_codes_wants_planes_of_whole_windows() {
        max_unpool_codes_2x2(Isa::Scalar, 1, 5, 1, 2, &[1.0, 2.0], &[0, 2], &mut [0.0; 10]);
    }

    #[test]
    #[should_panic(expected = "2 gradients, 3 codes and 8 outputs for 1 planes of 1 x 2")]
    fn unpooling_by_codes_wants_a_code_for_each_gradient() {
        max_unpool_codes_2x2(Isa::Scalar, 1, 4, 1, 2, &[1.0, 2.0], &[0, 2, 1], &mut [0.0; 8]);
    }

    #[test]
    #[should_panic(expected = "2 gradients, 2 codes and 7 outputs for 1 planes of 1 x 2")]
    fn unpooling_by_codes_wants_an_output_for_each_value() {
        max_unpool_codes_2x2(Isa::Scalar, 1, 4, 1, 2, &[1.0, 2.0], &[0, 2], &mut [0.0; 7]);
    }

    #[test]
    #[should_panic(expected = "a plane of 7 values 4 wide has no 1 x 2 windows")]
    fn pooling_through_the_relu_wants_the_windows_inside_the_plane() {
        let (mut o, mut c) = ([0.0f32; 2], [0u8; 2]);
        max_pool_relu_2x2(Isa::Scalar, &[0.0; 7], 4, 1, 2, &mut o, &mut c);
    }

    #[test]
    #[should_panic(expected = "a plane of 8 values 3 wide has no 1 x 2 windows")]
    fn pooling_values_through_the_relu_wants_the_windows_inside_a_row() {
        let mut o = [0.0f32; 2];
        max_pool_relu_2x2_values(Isa::Scalar, &[0.0; 8], 3, 1, 2, &mut o);
    }

    /// The general path's scan, written out: each 3x3 window (stride 1, padding 1) cut
    /// to the plane, row-major, `>` from -inf at the window's first position.
    fn reference_3x3(p: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<u32>) {
        let (mut o, mut a) = (Vec::new(), Vec::new());
        for y in 0..h {
            for x in 0..w {
                let (y0, y1, x0, x1) = (y.saturating_sub(1), (y + 2).min(h), x.saturating_sub(1), (x + 2).min(w));
                let (mut best, mut at) = (f32::NEG_INFINITY, y0 * w + x0);
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        if p[yy * w + xx] > best {
                            (best, at) = (p[yy * w + xx], yy * w + xx);
                        }
                    }
                }
                o.push(best);
                a.push(at as u32);
            }
        }
        (o, a)
    }

    #[test]
    fn every_level_pools_3x3_windows_as_the_general_path_on_planes_of_every_size() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // 1 to 3 rows and columns (no inner column, one, the borders alone), widths
        // about the vector lanes (8, 16, 32 inner columns) and GoogLeNet's 14 and 7
        let sizes = (1..=4).flat_map(|h| (1..=5).map(move |w| (h, w)));
        let sizes = sizes.chain([
            (7, 7),
            (14, 14),
            (5, 10),
            (3, 17),
            (2, 18),
            (4, 33),
            (9, 34),
            (65, 66),
            (3, 3),
        ]);
        for (h, w) in sizes {
            for seed in 0..3 {
                let p = plane(h * w, seed + h + w);
                let (want, want_at) = reference_3x3(&p, h, w);
                for isa in Isa::ALL {
                    let (mut o, mut a) = (vec![9.0f32; h * w + 1], vec![u32::MAX; h * w + 1]);
                    max_pool_3x3(isa, &p, h, w, &mut o, &mut a);
                    assert_eq!(bits(&o[..h * w]), bits(&want), "{isa} {h}x{w} seed {seed}");
                    assert_eq!(a[..h * w], want_at, "{isa} {h}x{w} seed {seed}");
                    // past the plane: left alone
                    assert_eq!((o[h * w], a[h * w]), (9.0, u32::MAX), "{isa} {h}x{w}");
                    let mut alone = vec![9.0f32; h * w + 1];
                    max_pool_3x3_values(isa, &p, h, w, &mut alone);
                    assert_eq!(bits(&alone), bits(&o), "{isa} values {h}x{w} seed {seed}");
                }
            }
        }
    }

    /// Ties of `-0` and `+0` (the first wins), NaN (never chosen; a window of NaNs
    /// alone: -inf at its first position), -inf against NaN, on a 3 x 4 plane.
    #[test]
    fn the_3x3_windows_take_the_first_largest_and_never_a_nan() {
        let (z, n, nan, inf) = (0.0f32, -0.0f32, f32::NAN, f32::NEG_INFINITY);
        #[rustfmt::skip]
        let p = [
            nan, nan, n,   z,
            nan, nan, inf, 1.0,
            z,   nan, nan, nan,
        ];
        #[rustfmt::skip]
        let (want, want_at): ([f32; 12], [u32; 12]) = (
            [inf, n, 1.0, 1.0,
             z,   n, 1.0, 1.0,
             z,   z, 1.0, 1.0],
            [0, 2, 7, 7,
             8, 2, 7, 7,
             8, 8, 7, 7],
        );
        for isa in Isa::ALL {
            let (mut o, mut a, mut alone) = ([9.0f32; 12], [0u32; 12], [9.0f32; 12]);
            max_pool_3x3(isa, &p, 3, 4, &mut o, &mut a);
            max_pool_3x3_values(isa, &p, 3, 4, &mut alone);
            assert_eq!(o.map(f32::to_bits), want.map(f32::to_bits), "{isa}");
            assert_eq!(alone.map(f32::to_bits), want.map(f32::to_bits), "{isa}");
            assert_eq!(a, want_at, "{isa}");
        }
    }

    #[test]
    fn the_3x3_pooling_of_an_empty_plane_writes_nothing() {
        for isa in Isa::ALL {
            let (mut o, mut a) = ([9.0f32; 1], [7u32; 1]);
            max_pool_3x3(isa, &[], 3, 0, &mut o, &mut a);
            max_pool_3x3(isa, &[], 0, 3, &mut o, &mut a);
            max_pool_3x3_values(isa, &[], 3, 0, &mut o);
            max_pool_3x3_values(isa, &[], 0, 3, &mut o);
            assert_eq!((o, a), ([9.0], [7]), "{isa}");
        }
    }

    #[test]
    #[should_panic(expected = "max_pool_3x3: planes of 5 values in and 6 out (Some(6) positions) for 2 x 3")]
    fn the_3x3_pooling_wants_a_whole_plane_in() {
        let (mut o, mut a) = ([0.0f32; 6], [0u32; 6]);
        max_pool_3x3(Isa::Scalar, &[0.0; 5], 2, 3, &mut o, &mut a);
    }

    #[test]
    #[should_panic(expected = "max_pool_3x3: planes of 6 values in and 6 out (Some(5) positions) for 2 x 3")]
    fn the_3x3_pooling_wants_a_position_for_each_value() {
        let (mut o, mut a) = ([0.0f32; 6], [0u32; 5]);
        max_pool_3x3(Isa::Scalar, &[0.0; 6], 2, 3, &mut o, &mut a);
    }

    #[test]
    #[should_panic(expected = "max_pool_3x3: planes of 6 values in and 5 out (None positions) for 2 x 3")]
    fn the_3x3_maxima_want_a_whole_plane_out() {
        max_pool_3x3_values(Isa::Scalar, &[0.0; 6], 2, 3, &mut [0.0; 5]);
    }

    #[test]
    #[should_panic(expected = "max_unpool_2x2: planes 5 wide for 2 windows a row")]
    fn unpooling_wants_planes_of_whole_windows() {
        max_unpool_2x2(Isa::Scalar, 1, 5, 1, 2, &[1.0, 2.0], &[0, 2]);
    }

    #[test]
    #[should_panic(expected = "3 gradients and 2 positions for 1 planes of 1 x 2")]
    fn unpooling_wants_a_gradient_and_a_position_for_each_window() {
        max_unpool_2x2(Isa::Scalar, 1, 4, 1, 2, &[1.0, 2.0, 3.0], &[0, 2]);
    }

    #[test]
    #[should_panic(expected = "a plane of 7 values 4 wide has no 1 x 2 windows")]
    fn pooling_wants_the_windows_inside_the_plane() {
        let (mut o, mut a) = ([0.0f32; 2], [0u32; 2]);
        max_pool_2x2(Isa::Scalar, &[0.0; 7], 4, 1, 2, &mut o, &mut a);
    }

    #[test]
    #[should_panic(expected = "a plane of 8 values 3 wide has no 1 x 2 windows")]
    fn pooling_wants_the_windows_inside_a_row() {
        let mut o = [0.0f32; 2];
        max_pool_2x2_values(Isa::Scalar, &[0.0; 8], 3, 1, 2, &mut o);
    }
}
