use rayon::prelude::*;

use crate::{check_dout, into_standard, Layer, LayerError, Tensor};

/// Deskewing by moments, as the MNIST literature preprocesses digits (the "deskewed"
/// rows of LeCun et al.'s table; Ciresan et al.'s committees trained members on such
/// variants of the input): each image is sheared horizontally so that its ink's
/// principal slant becomes vertical, and moved so that its centre of mass lands on the
/// centre of the frame.
///
/// For an image with ink `v` (its values, summed over channels) at row `r`, column `c`,
/// with mass `m = Σ v`, centre of mass `(r̄, c̄)`, row variance `var = Σ v (r - r̄)² / m`
/// and covariance `cov = Σ v (r - r̄)(c - c̄) / m`, the skew is `α = cov / var`, and
/// output pixel `(i, j)` samples the input, bilinearly with zeros outside, at
///
/// ```text
/// row    r̄ + (i - H/2)
/// column c̄ + (j - W/2) + α (i - H/2)
/// ```
///
/// the same sample point for every channel. The centre `(H/2, W/2)` is `(14, 14)` on
/// MNIST's 28x28, where MNIST's own digits have their centres of mass. An image with
/// under [`Deskew::MIN_INK`] passes unchanged; one whose rows vary by under
/// [`Deskew::MIN_ROW_VARIANCE`] is centred without a shear.
///
/// `backward` is the exact derivative of that map, the centre and the skew moving with
/// the input (away from the sampling grid's cell borders, where bilinear sampling has
/// no derivative). Input `(N, C, H, W)`, output the same shape. The images of a batch
/// are deskewed in parallel on rayon's pool, each on its own: the result does not
/// depend on the thread count.
///
/// ```
/// use dl_layers::{Deskew, Layer};
/// use ndarray::ArrayD;
///
/// // a slanted stroke: one pixel per row, moving right as it goes down
/// let mut x = ArrayD::<f32>::zeros(vec![1, 1, 28, 28]);
/// for r in 6..23 {
///     x[[0, 0, r, r]] = 1.0;
/// }
/// let y = Deskew::new().forward(x, false).unwrap();
/// // upright now: every inked row has its ink at the centre column
/// for r in 6..23 {
///     assert!((y[[0, 0, r, 14]] - 1.0).abs() < 1e-4, "row {r}");
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Deskew {
    /// The last training forward's input and each image's warp, for `backward`.
    cache: Option<(Tensor, Vec<Warp>)>,
}

/// One image's moments and the warp they give.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Warp {
    mass: f64,
    row: f64,
    col: f64,
    var: f64,
    cov: f64,
    /// Whether the rows vary enough to shear by `cov / var`.
    sheared: bool,
    /// `cov / var` when sheared, else 0.
    alpha: f64,
    /// Too little ink: the image passes unchanged.
    identity: bool,
}

impl Warp {
    /// The warp of an image with channel planes `image` (`C` planes of `h x w`).
    fn of(image: &[f32], h: usize, w: usize) -> Warp {
        let plane = h * w;
        let ink = |k: usize| -> f64 { image.iter().skip(k).step_by(plane).map(|&v| f64::from(v)).sum() };
        let (mut mass, mut sr, mut sc) = (0.0, 0.0, 0.0);
        for k in 0..plane {
            let v = ink(k);
            mass += v;
            sr += v * (k / w) as f64;
            sc += v * (k % w) as f64;
        }
        if mass.abs() < Deskew::MIN_INK {
            return Warp {
                mass,
                row: 0.0,
                col: 0.0,
                var: 0.0,
                cov: 0.0,
                sheared: false,
                alpha: 0.0,
                identity: true,
            };
        }
        let (row, col) = (sr / mass, sc / mass);
        let (mut var, mut cov) = (0.0, 0.0);
        for k in 0..plane {
            let v = ink(k);
            let (dr, dc) = ((k / w) as f64 - row, (k % w) as f64 - col);
            var += v * dr * dr;
            cov += v * dr * dc;
        }
        let (var, cov) = (var / mass, cov / mass);
        let sheared = var > Deskew::MIN_ROW_VARIANCE;
        Warp {
            mass,
            row,
            col,
            var,
            cov,
            sheared,
            alpha: if sheared { cov / var } else { 0.0 },
            identity: false,
        }
    }

    /// Where output pixel `(i, j)` samples the input.
    fn source(&self, i: usize, j: usize, h: usize, w: usize) -> (f64, f64) {
        let di = i as f64 - h as f64 / 2.0;
        let dj = j as f64 - w as f64 / 2.0;
        (self.row + di, self.col + dj + self.alpha * di)
    }
}

/// The four input pixels around `(sr, sc)` that lie inside the `h x w` plane, with
/// their bilinear weights and the weights' derivatives in the sample's row and column.
fn taps(sr: f64, sc: f64, h: usize, w: usize) -> impl Iterator<Item = (usize, f64, f64, f64)> {
    let (r0, c0) = (sr.floor(), sc.floor());
    let (fr, fc) = (sr - r0, sc - c0);
    [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
        .into_iter()
        .filter_map(move |(dr, dc): (f64, f64)| {
            let (r, c) = (r0 + dr, c0 + dc);
            if r < 0.0 || c < 0.0 || r >= h as f64 || c >= w as f64 {
                return None;
            }
            // weight (1 - fr or fr)(1 - fc or fc), and its derivatives in sr and sc
            let (wr, dwr) = if dr == 0.0 { (1.0 - fr, -1.0) } else { (fr, 1.0) };
            let (wc, dwc) = if dc == 0.0 { (1.0 - fc, -1.0) } else { (fc, 1.0) };
            Some((r as usize * w + c as usize, wr * wc, dwr * wc, wr * dwc))
        })
}

impl Deskew {
    /// Below this much ink (the sum of an image's values) an image passes unchanged.
    pub const MIN_INK: f64 = 1e-6;
    /// Below this variance of the ink's rows (in pixels squared) an image is only
    /// centred, not sheared: a shear by `cov / var` is undefined for a single row of ink.
    pub const MIN_ROW_VARIANCE: f64 = 1e-3;

    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The images of `x` deskewed (`x` in standard layout, shape `(N, C, H, W)`), and
    /// each image's warp.
    fn apply(x: &Tensor) -> (Tensor, Vec<Warp>) {
        let (c, h, w) = (x.shape()[1], x.shape()[2], x.shape()[3]);
        let (plane, size) = (h * w, c * h * w);
        let src = x.as_slice().expect("standard layout");
        let mut out = vec![0.0f32; src.len()];
        // each image on its own, images in parallel
        let warps: Vec<Warp> = src
            .par_chunks_exact(size)
            .zip(out.par_chunks_exact_mut(size))
            .map(|(image, dst)| {
                let warp = Warp::of(image, h, w);
                if warp.identity {
                    dst.copy_from_slice(image);
                } else {
                    for (ch, dst) in image.chunks_exact(plane).zip(dst.chunks_exact_mut(plane)) {
                        for (k, d) in dst.iter_mut().enumerate() {
                            let (sr, sc) = warp.source(k / w, k % w, h, w);
                            let v: f64 = taps(sr, sc, h, w).map(|(q, wt, _, _)| wt * f64::from(ch[q])).sum();
                            *d = v as f32;
                        }
                    }
                }
                warp
            })
            .collect();
        (
            Tensor::from_shape_vec(x.shape().to_vec(), out).expect("same shape"),
            warps,
        )
    }
}

impl Layer for Deskew {
    fn name(&self) -> &str {
        "Deskew"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        self.output_shape(x.shape())?;
        let x = into_standard(x);
        let (out, warps) = Self::apply(&x);
        self.cache = train.then_some((x, warps));
        Ok(out)
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let (x, warps) = self.cache.as_ref().expect("Deskew::backward before a training forward");
        check_dout("Deskew", &dout, x.shape());
        let (c, h, w) = (x.shape()[1], x.shape()[2], x.shape()[3]);
        let (plane, size) = (h * w, c * h * w);
        let dout = into_standard(dout);
        let g = dout.as_slice().expect("standard");
        let src = x.as_slice().expect("standard");
        let mut dx = vec![0.0f32; src.len()];
        let images = src.chunks_exact(size).zip(g.chunks_exact(size));
        for (((image, g), dx), warp) in images.zip(dx.chunks_exact_mut(size)).zip(warps) {
            if warp.identity {
                dx.copy_from_slice(g);
                continue;
            }
            let mut acc = vec![0.0f64; size];
            // dL/d(row centre), dL/d(column centre), dL/d(alpha), through the sample points
            let (mut g_row, mut g_col, mut g_alpha) = (0.0, 0.0, 0.0);
            for ((ch, g), acc) in image
                .chunks_exact(plane)
                .zip(g.chunks_exact(plane))
                .zip(acc.chunks_exact_mut(plane))
            {
                for (k, &gk) in g.iter().enumerate() {
                    let gk = f64::from(gk);
                    let (sr, sc) = warp.source(k / w, k % w, h, w);
                    for (q, wt, dr, dc) in taps(sr, sc, h, w) {
                        acc[q] += gk * wt;
                        let v = f64::from(ch[q]);
                        g_row += gk * dr * v;
                        g_col += gk * dc * v;
                        g_alpha += gk * dc * v * ((k / w) as f64 - h as f64 / 2.0);
                    }
                }
            }
            // the centre and the skew as functions of every pixel's ink
            for k in 0..plane {
                let (dr, dc) = ((k / w) as f64 - warp.row, (k % w) as f64 - warp.col);
                let mut through = (g_row * dr + g_col * dc) / warp.mass;
                if warp.sheared {
                    let d_cov = (dr * dc - warp.cov) / warp.mass;
                    let d_var = (dr * dr - warp.var) / warp.mass;
                    through += g_alpha * (d_cov - warp.alpha * d_var) / warp.var;
                }
                for ch in 0..c {
                    acc[ch * plane + k] += through;
                }
            }
            for (d, a) in dx.iter_mut().zip(&acc) {
                *d = *a as f32;
            }
        }
        Tensor::from_shape_vec(x.shape().to_vec(), dx).expect("dx shape")
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        if input.len() != 4 || input[1] == 0 || input[2] == 0 || input[3] == 0 {
            return Err(LayerError::shape("Deskew", "(N, C, H, W) with C, H, W >= 1", input));
        }
        Ok(input.to_vec())
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(Deskew::default())
    }
}
