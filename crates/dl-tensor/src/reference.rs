//! Plain, obviously correct loop implementations. They are slow on purpose: every fast
//! kernel in dlfs is tested against one of these, and they document what the fast code
//! computes.

use ndarray::{Array2, Array4, ArrayView1, ArrayView2, ArrayView4};

/// `a · b` by the triple loop, accumulating in `f64`.
pub fn matmul_reference(a: &ArrayView2<f32>, b: &ArrayView2<f32>) -> Array2<f32> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "matmul_reference: inner dimensions differ");
    Array2::from_shape_fn((m, n), |(i, j)| {
        (0..k).map(|p| f64::from(a[[i, p]]) * f64::from(b[[p, j]])).sum::<f64>() as f32
    })
}

/// The value of the zero-padded input at (possibly out-of-range) coordinates.
fn padded(x: &ArrayView4<f32>, n: usize, c: usize, y: isize, xx: isize) -> f32 {
    let (_, _, h, w) = x.dim();
    if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
        0.0
    } else {
        x[[n, c, y as usize, xx as usize]]
    }
}

/// The book's im2col written element by element: `col[n*OH*OW + oy*OW + ox,
/// c*FH*FW + ky*FW + kx] = xpad[n, c, oy*stride + ky, ox*stride + kx]`.
pub fn im2col_reference(x: &ArrayView4<f32>, fh: usize, fw: usize, stride: usize, pad: usize) -> Array2<f32> {
    let (n, c, h, w) = x.dim();
    let oh = (h + 2 * pad - fh) / stride + 1;
    let ow = (w + 2 * pad - fw) / stride + 1;
    let mut col = Array2::zeros((n * oh * ow, c * fh * fw));
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    for ky in 0..fh {
                        for kx in 0..fw {
                            let y = (oy * stride + ky) as isize - pad as isize;
                            let xx = (ox * stride + kx) as isize - pad as isize;
                            col[[b * oh * ow + oy * ow + ox, ch * fh * fw + ky * fw + kx]] = padded(x, b, ch, y, xx);
                        }
                    }
                }
            }
        }
    }
    col
}

/// Direct convolution (cross-correlation, as in the book and every framework):
/// `x` `(N, C, H, W)`, `w` `(FN, C, FH, FW)`, `b` `(FN,)` to `(N, FN, OH, OW)`.
pub fn conv2d_reference(
    x: &ArrayView4<f32>,
    w: &ArrayView4<f32>,
    b: &ArrayView1<f32>,
    stride: usize,
    pad: usize,
) -> Array4<f32> {
    let (n, c, h, wd) = x.dim();
    let (f, c2, fh, fw) = w.dim();
    assert_eq!(c, c2, "conv2d_reference: channel counts differ");
    let oh = (h + 2 * pad - fh) / stride + 1;
    let ow = (wd + 2 * pad - fw) / stride + 1;
    let mut out = Array4::zeros((n, f, oh, ow));
    for bi in 0..n {
        for fi in 0..f {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = f64::from(b[fi]);
                    for ch in 0..c {
                        for ky in 0..fh {
                            for kx in 0..fw {
                                let y = (oy * stride + ky) as isize - pad as isize;
                                let xx = (ox * stride + kx) as isize - pad as isize;
                                acc += f64::from(padded(x, bi, ch, y, xx)) * f64::from(w[[fi, ch, ky, kx]]);
                            }
                        }
                    }
                    out[[bi, fi, oy, ox]] = acc as f32;
                }
            }
        }
    }
    out
}

/// Pooling by the window loop: the maximum (or the mean when `average`) of each
/// `ph x pw` window, padded windows counting padding as `-inf` for max and `0` for mean
/// (the book pads with zeros before its im2col; with the default `pad = 0` both agree).
pub fn pool_reference(
    x: &ArrayView4<f32>,
    ph: usize,
    pw: usize,
    stride: usize,
    pad: usize,
    average: bool,
) -> Array4<f32> {
    let (n, c, h, w) = x.dim();
    let oh = (h + 2 * pad - ph) / stride + 1;
    let ow = (w + 2 * pad - pw) / stride + 1;
    Array4::from_shape_fn((n, c, oh, ow), |(b, ch, oy, ox)| {
        let mut best = f32::NEG_INFINITY;
        let mut sum = 0.0f32;
        for ky in 0..ph {
            for kx in 0..pw {
                let y = (oy * stride + ky) as isize - pad as isize;
                let xx = (ox * stride + kx) as isize - pad as isize;
                let inside = y >= 0 && xx >= 0 && y < h as isize && xx < w as isize;
                let v = if inside {
                    x[[b, ch, y as usize, xx as usize]]
                } else {
                    0.0
                };
                if inside {
                    best = best.max(v);
                }
                sum += v;
            }
        }
        if average {
            sum / (ph * pw) as f32
        } else {
            best
        }
    })
}
