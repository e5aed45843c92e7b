use ndarray::{Array2, Array4, ArrayView2, ArrayView4};

/// The geometry of one 2-D convolution or pooling window over a `(C, H, W)` image.
///
/// `out_h = (h + 2*pad - fh) / stride + 1`, as in the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Filter height.
    pub fh: usize,
    /// Filter width.
    pub fw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding (all four sides).
    pub pad: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

/// Why a [`ConvGeometry`] cannot exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid convolution geometry: input (C={c}, H={h}, W={w}), filter {fh}x{fw}, stride {stride}, pad {pad}: {reason}"
)]
pub struct GeometryError {
    c: usize,
    h: usize,
    w: usize,
    fh: usize,
    fw: usize,
    stride: usize,
    pad: usize,
    reason: &'static str,
}

impl ConvGeometry {
    /// Checks and computes the output size of a window of `fh x fw` moved with `stride`
    /// over a `(c, h, w)` image padded by `pad` on each side.
    pub fn new(
        c: usize,
        h: usize,
        w: usize,
        fh: usize,
        fw: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self, GeometryError> {
        let err = |reason| GeometryError {
            c,
            h,
            w,
            fh,
            fw,
            stride,
            pad,
            reason,
        };
        if stride == 0 {
            return Err(err("stride must be at least 1"));
        }
        if fh == 0 || fw == 0 || c == 0 {
            return Err(err("filter size and channels must be at least 1"));
        }
        if h + 2 * pad < fh || w + 2 * pad < fw {
            return Err(err("the filter is larger than the padded input"));
        }
        Ok(Self {
            c,
            h,
            w,
            fh,
            fw,
            stride,
            pad,
            out_h: (h + 2 * pad - fh) / stride + 1,
            out_w: (w + 2 * pad - fw) / stride + 1,
        })
    }

    /// Rows of the per-image column matrix: `C * FH * FW`.
    pub fn col_rows(&self) -> usize {
        self.c * self.fh * self.fw
    }

    /// Columns of the per-image column matrix: `OH * OW`.
    pub fn col_cols(&self) -> usize {
        self.out_h * self.out_w
    }

    /// The range of output positions `o` whose input coordinate `o*stride + k - pad`
    /// falls inside `[0, len)`, for filter offset `k`.
    #[inline]
    fn valid_range(&self, k: usize, len: usize, out: usize) -> (usize, usize) {
        // o*stride + k >= pad  <=>  o >= ceil((pad - k) / stride)
        let lo = if k >= self.pad {
            0
        } else {
            (self.pad - k).div_ceil(self.stride)
        };
        // o*stride + k - pad <= len - 1  <=>  o <= (len - 1 + pad - k) / stride
        let hi = if len + self.pad > k {
            ((len - 1 + self.pad - k) / self.stride + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// The book's `im2col`: `input` `(N, C, H, W)` to the column matrix
/// `(N*OH*OW, C*FH*FW)`, row `n*OH*OW + oy*OW + ox`, column `c*FH*FW + ky*FW + kx`.
///
/// # Panics
/// If the geometry is impossible (stride 0, filter larger than the padded input).
pub fn im2col(input: &ArrayView4<f32>, filter_h: usize, filter_w: usize, stride: usize, pad: usize) -> Array2<f32> {
    let (n, c, h, w) = input.dim();
    let g = ConvGeometry::new(c, h, w, filter_h, filter_w, stride, pad).unwrap_or_else(|e| panic!("im2col: {e}"));
    let (rows, cols) = (g.col_cols(), g.col_rows());
    let mut col = Array2::<f32>::zeros((n * rows, cols));
    let mut chw = vec![0.0f32; g.col_rows() * g.col_cols()];
    for (i, img) in input.outer_iter().enumerate() {
        let img = img.as_standard_layout();
        im2col_chw(img.as_slice().expect("standard layout"), &g, &mut chw);
        // chw is (C*FH*FW, OH*OW): the transpose of this image's block.
        let block = ArrayView2::from_shape((cols, rows), &chw).expect("shape");
        col.slice_mut(ndarray::s![i * rows..(i + 1) * rows, ..])
            .assign(&block.t());
    }
    col
}

/// The book's `col2im`: the adjoint of [`im2col`]. Takes `col` `(N*OH*OW, C*FH*FW)`
/// and returns `(N, C, H, W)`, summing where windows overlap.
///
/// # Panics
/// If the geometry is impossible or `col` does not have the shape it implies.
pub fn col2im(
    col: &ArrayView2<f32>,
    input_shape: (usize, usize, usize, usize),
    filter_h: usize,
    filter_w: usize,
    stride: usize,
    pad: usize,
) -> Array4<f32> {
    let (n, c, h, w) = input_shape;
    let g = ConvGeometry::new(c, h, w, filter_h, filter_w, stride, pad).unwrap_or_else(|e| panic!("col2im: {e}"));
    let (rows, cols) = (g.col_cols(), g.col_rows());
    assert_eq!(
        col.dim(),
        (n * rows, cols),
        "col2im: col has shape {:?}, input shape {:?} needs ({}, {})",
        col.dim(),
        input_shape,
        n * rows,
        cols
    );
    let mut out = Array4::<f32>::zeros(input_shape);
    let mut chw = Array2::<f32>::zeros((cols, rows));
    for (i, mut img) in out.outer_iter_mut().enumerate() {
        chw.assign(&col.slice(ndarray::s![i * rows..(i + 1) * rows, ..]).t());
        col2im_chw(
            chw.as_slice().expect("standard layout"),
            &g,
            img.as_slice_mut().expect("standard layout"),
        );
    }
    out
}

/// Per-image im2col in the transposed layout the fast convolution uses.
///
/// `x` is one image `(C, H, W)` (row-major, `C*H*W` values); `col` receives
/// `(C*FH*FW, OH*OW)`: row `c*FH*FW + ky*FW + kx`, column `oy*OW + ox`. Every element of
/// `col` is written (padding gives zeros), so it need not be cleared first.
///
/// # Panics
/// If the slice lengths do not match the geometry.
pub fn im2col_chw(x: &[f32], g: &ConvGeometry, col: &mut [f32]) {
    let (h, w, oh, ow, s) = (g.h, g.w, g.out_h, g.out_w, g.stride);
    assert_eq!(x.len(), g.c * h * w, "im2col_chw: input length");
    assert_eq!(col.len(), g.col_rows() * g.col_cols(), "im2col_chw: col length");
    if s == 1 {
        im2col_chw_stride1(x, g, col);
        return;
    }
    let mut rows = col.chunks_exact_mut(oh * ow);
    for c in 0..g.c {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ky in 0..g.fh {
            let (oy_lo, oy_hi) = g.valid_range(ky, h, oh);
            for kx in 0..g.fw {
                let row = rows.next().expect("row count");
                let (ox_lo, ox_hi) = g.valid_range(kx, w, ow);
                row[..oy_lo * ow].fill(0.0);
                row[oy_hi * ow..].fill(0.0);
                for oy in oy_lo..oy_hi {
                    let iy = oy * s + ky - g.pad;
                    let src = &plane[iy * w..(iy + 1) * w];
                    let dst = &mut row[oy * ow..(oy + 1) * ow];
                    dst[..ox_lo].fill(0.0);
                    dst[ox_hi..].fill(0.0);
                    if ox_hi > ox_lo {
                        let ix0 = ox_lo * s + kx - g.pad;
                        for (d, v) in dst[ox_lo..ox_hi].iter_mut().zip(src[ix0..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// Copies a short run (a row of a small image) with fixed-size moves, so that no call to
/// `memcpy` is made for a few dozen bytes.
#[inline(always)]
pub(crate) fn copy_short(dst: &mut [f32], src: &[f32]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (a, b) in (&mut d).zip(&mut s) {
        let v: [f32; 8] = b.try_into().expect("8 values");
        a.copy_from_slice(&v);
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = *b;
    }
}

/// Stride-1 im2col: each channel is copied once into a zero-padded plane, and every row
/// of `col` is then `OH` runs of `OW` values read from that plane at offset `(ky, kx)`:
/// no bounds arithmetic per element and no clearing, the padding supplies the zeros.
fn im2col_chw_stride1(x: &[f32], g: &ConvGeometry, col: &mut [f32]) {
    let (h, w, oh, ow, p) = (g.h, g.w, g.out_h, g.out_w, g.pad);
    let wp = w + 2 * p;
    // At stride 1, oh = h + 2p - fh + 1, so (oy + ky) <= oh - 1 + fh - 1 = h + 2p - 1,
    // and likewise for columns: every read is inside the padded plane.
    let hp = h + 2 * p;
    PADDED.with(|cell| {
        let mut padded = cell.borrow_mut();
        padded.clear();
        padded.resize(hp * wp, 0.0);
        let mut rows = col.chunks_exact_mut(oh * ow);
        for plane in x.chunks_exact(h * w) {
            if ow != w {
                for (y, src) in plane.chunks_exact(w).enumerate() {
                    copy_short(&mut padded[(y + p) * wp + p..(y + p) * wp + p + w], src);
                }
            }
            for ky in 0..g.fh {
                for kx in 0..g.fw {
                    let row = rows.next().expect("row count");
                    if ow == w {
                        // A "same"-width convolution: one block copy of the shifted
                        // plane beats a copy per output row.
                        same_width_row(plane, g, ky, kx, row);
                        continue;
                    }
                    for (oy, dst) in row.chunks_exact_mut(ow).enumerate() {
                        let at = (oy + ky) * wp + kx;
                        copy_short(dst, &padded[at..at + ow]);
                    }
                }
            }
        }
    });
}

/// One row of a stride-1 im2col whose output width equals the input width: the whole
/// plane shifted by `(ky - pad, kx - pad)`, copied in one piece; then the rows that fall
/// outside and the columns that wrapped around from the neighbouring rows are cleared,
/// the columns by strided stores (a `fill` per image row would be a `memset` call for one
/// or two values).
fn same_width_row(plane: &[f32], g: &ConvGeometry, ky: usize, kx: usize, row: &mut [f32]) {
    let (h, w, ow) = (g.h, g.w, g.out_w);
    let (oy_lo, oy_hi) = g.valid_range(ky, h, g.out_h);
    let (ox_lo, ox_hi) = g.valid_range(kx, w, ow);
    row[..oy_lo * ow].fill(0.0);
    row[oy_hi * ow..].fill(0.0);
    let shift = (ky as isize - g.pad as isize) * w as isize + kx as isize - g.pad as isize;
    let (j0, j1) = (oy_lo * ow, oy_hi * ow);
    // A filter offset whose every read falls in the padding leaves `j0 == j1`.
    let start = ((j0 as isize).max(-shift) as usize).min(j1);
    let end = ((j1 as isize).min((h * w) as isize - shift).max(start as isize)) as usize;
    row[j0..start].fill(0.0);
    row[end..j1].fill(0.0);
    if end > start {
        let from = (start as isize + shift) as usize;
        row[start..end].copy_from_slice(&plane[from..from + (end - start)]);
    }
    for x in (0..ox_lo).chain(ox_hi..ow) {
        for oy in oy_lo..oy_hi {
            row[oy * ow + x] = 0.0;
        }
    }
}

thread_local! {
    /// The zero-padded plane of [`im2col_chw_stride1`], reused across calls on a thread.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Per-image col2im, the adjoint of [`im2col_chw`]: **adds** `col` `(C*FH*FW, OH*OW)` into
/// the image `x` `(C, H, W)`. Clear `x` first for a plain col2im.
///
/// # Panics
/// If the slice lengths do not match the geometry.
pub fn col2im_chw(col: &[f32], g: &ConvGeometry, x: &mut [f32]) {
    let (h, w, oh, ow, s) = (g.h, g.w, g.out_h, g.out_w, g.stride);
    assert_eq!(x.len(), g.c * h * w, "col2im_chw: image length");
    assert_eq!(col.len(), g.col_rows() * g.col_cols(), "col2im_chw: col length");
    let mut rows = col.chunks_exact(oh * ow);
    for c in 0..g.c {
        let plane = &mut x[c * h * w..(c + 1) * h * w];
        for ky in 0..g.fh {
            let (oy_lo, oy_hi) = g.valid_range(ky, h, oh);
            for kx in 0..g.fw {
                let row = rows.next().expect("row count");
                let (ox_lo, ox_hi) = g.valid_range(kx, w, ow);
                if ox_hi <= ox_lo {
                    continue;
                }
                let ix0 = ox_lo * s + kx - g.pad;
                for oy in oy_lo..oy_hi {
                    let iy = oy * s + ky - g.pad;
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    let src = &row[oy * ow + ox_lo..oy * ow + ox_hi];
                    if s == 1 {
                        for (d, v) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[ix0..].iter_mut().step_by(s).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}
