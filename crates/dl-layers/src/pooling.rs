use dl_tensor::{pool, ConvGeometry, Isa, Tensor};
use rayon::prelude::*;

use crate::{check_dout, Layer, LayerError, Op};

/// Which reduction a [`Pooling`] layer applies to each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// The maximum (the book's `Pooling`).
    Max,
    /// The mean over the `PH x PW` window (padding counts as zero).
    Average,
}

/// The book's `Pooling`: a `PH x PW` window moved with `stride` over each channel.
/// Input `(N, C, H, W)`, output `(N, C, OH, OW)`.
///
/// The book computes it through `im2col`; this layer walks the windows directly (the
/// same numbers, tested against the reference), and remembers for max pooling which
/// input won each window (the book's `arg_max`). Padding, when asked for, never wins a
/// max window.
#[derive(Debug, Clone)]
pub struct Pooling {
    kind: PoolKind,
    ph: usize,
    pw: usize,
    stride: usize,
    pad: usize,
    /// For max pooling: the index within its `(H, W)` plane of each output's winner.
    arg_max: Vec<u32>,
    cache: Option<(ConvGeometry, usize)>,
}

impl Pooling {
    /// Max pooling, the book's `Pooling(pool_h, pool_w, stride, pad)`.
    pub fn max(pool_h: usize, pool_w: usize, stride: usize, pad: usize) -> Self {
        Self::new(PoolKind::Max, pool_h, pool_w, stride, pad)
    }

    /// Average pooling.
    pub fn average(pool_h: usize, pool_w: usize, stride: usize, pad: usize) -> Self {
        Self::new(PoolKind::Average, pool_h, pool_w, stride, pad)
    }

    /// A pooling layer of the given kind.
    pub fn new(kind: PoolKind, pool_h: usize, pool_w: usize, stride: usize, pad: usize) -> Self {
        Self {
            kind,
            ph: pool_h,
            pw: pool_w,
            stride,
            pad,
            arg_max: Vec::new(),
            cache: None,
        }
    }

    fn geometry(&self, input: &[usize]) -> Result<ConvGeometry, LayerError> {
        if input.len() != 4 {
            return Err(LayerError::shape("Pooling", "(N, C, H, W)", input));
        }
        let g = ConvGeometry::new(input[1], input[2], input[3], self.ph, self.pw, self.stride, self.pad).map_err(
            |source| LayerError::Geometry {
                layer: "Pooling".into(),
                source,
            },
        )?;
        if self.pad >= self.ph || self.pad >= self.pw {
            return Err(LayerError::Invalid {
                layer: "Pooling".into(),
                message: format!(
                    "padding {} must be smaller than the window {}x{}",
                    self.pad, self.ph, self.pw
                ),
            });
        }
        Ok(g)
    }

    /// The book's 2x2 pooling with stride 2 over even sizes: every window is whole.
    fn full_2x2(&self, g: &ConvGeometry) -> bool {
        g.fh == 2 && g.fw == 2 && self.stride == 2 && self.pad == 0 && g.h == 2 * g.out_h && g.w == 2 * g.out_w
    }

    /// GoogLeNet's pool branches: 3x3 windows with stride 1 and padding 1, which keep
    /// the plane's size.
    fn same_3x3(&self, g: &ConvGeometry) -> bool {
        g.fh == 3 && g.fw == 3 && self.stride == 1 && self.pad == 1
    }

    /// Max pooling of one plane `p` into `o`, each winner's position into `a`: any
    /// window, stride and padding.
    fn max_general(&self, g: &ConvGeometry, p: &[f32], o: &mut [f32], a: &mut [u32]) {
        for oy in 0..g.out_h {
            let (y0, y1) = self.window(oy, g.fh, g.h);
            for ox in 0..g.out_w {
                let (x0, x1) = self.window(ox, g.fw, g.w);
                let mut best = f32::NEG_INFINITY;
                let mut best_i = y0 * g.w + x0;
                for yy in y0..y1 {
                    for (xx, &v) in p[yy * g.w + x0..yy * g.w + x1].iter().enumerate() {
                        if v > best {
                            best = v;
                            best_i = yy * g.w + x0 + xx;
                        }
                    }
                }
                o[oy * g.out_w + ox] = best;
                a[oy * g.out_w + ox] = best_i as u32;
            }
        }
    }

    /// The input range `[lo, hi)` covered by output `o` along an axis of length `len`.
    #[inline]
    fn window(&self, o: usize, k: usize, len: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.pad as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + k as isize).max(0) as usize).min(len);
        (lo, hi)
    }
}

impl Layer for Pooling {
    fn name(&self) -> &str {
        "Pooling"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let g = self.geometry(x.shape())?;
        let n = x.shape()[0];
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let (plane, oplane) = (g.h * g.w, g.out_h * g.out_w);
        let mut out = vec![0.0f32; n * g.c * oplane];
        // the positions of the last training forward stay for its backward
        let mut arg = if train {
            std::mem::take(&mut self.arg_max)
        } else {
            Vec::new()
        };
        match self.kind {
            PoolKind::Max => {
                // The book's 2x2 pooling with stride 2 over even sizes (every window
                // whole) and GoogLeNet's 3x3 with stride 1 and padding 1 have kernels of
                // their own; evaluation needs no positions.
                let (full_2x2, same_3x3, isa) = (self.full_2x2(&g), self.same_3x3(&g), Isa::active());
                if (full_2x2 || same_3x3) && !train {
                    out.par_chunks_mut(oplane).zip(xs.par_chunks(plane)).for_each(|(o, p)| {
                        if full_2x2 {
                            pool::max_pool_2x2_values(isa, p, g.w, g.out_h, g.out_w, o);
                        } else {
                            pool::max_pool_3x3_values(isa, p, g.h, g.w, o);
                        }
                    });
                    return Ok(Tensor::from_shape_vec(vec![n, g.c, g.out_h, g.out_w], out).expect("output shape"));
                }
                if train {
                    arg.resize(n * g.c * oplane, 0);
                    out.par_chunks_mut(oplane)
                        .zip(arg.par_chunks_mut(oplane))
                        .zip(xs.par_chunks(plane))
                        .for_each(|((o, a), p)| {
                            if full_2x2 {
                                pool::max_pool_2x2(isa, p, g.w, g.out_h, g.out_w, o, a);
                            } else if same_3x3 {
                                pool::max_pool_3x3(isa, p, g.h, g.w, o, a);
                            } else {
                                self.max_general(&g, p, o, a);
                            }
                        });
                } else {
                    // evaluation keeps no positions: one plane's worth per task
                    out.par_chunks_mut(oplane)
                        .zip(xs.par_chunks(plane))
                        .for_each_init(|| vec![0u32; oplane], |a, (o, p)| self.max_general(&g, p, o, a));
                }
            }
            PoolKind::Average => {
                let area = (g.fh * g.fw) as f32;
                out.par_chunks_mut(oplane).zip(xs.par_chunks(plane)).for_each(|(o, p)| {
                    for oy in 0..g.out_h {
                        let (y0, y1) = self.window(oy, g.fh, g.h);
                        for ox in 0..g.out_w {
                            let (x0, x1) = self.window(ox, g.fw, g.w);
                            let s: f32 = (y0..y1)
                                .map(|yy| p[yy * g.w + x0..yy * g.w + x1].iter().sum::<f32>())
                                .sum();
                            o[oy * g.out_w + ox] = s / area;
                        }
                    }
                });
            }
        }
        if train {
            self.arg_max = arg;
            self.cache = Some((g, n));
        }
        Ok(Tensor::from_shape_vec(vec![n, g.c, g.out_h, g.out_w], out).expect("output shape"))
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let (g, n) = self.cache.expect("Pooling::backward before a training forward");
        check_dout("Pooling", &dout, &[n, g.c, g.out_h, g.out_w]);
        let dout = dout.as_standard_layout();
        let ds = dout.as_slice().expect("standard layout");
        let (plane, oplane) = (g.h * g.w, g.out_h * g.out_w);
        if self.kind == PoolKind::Max && self.full_2x2(&g) {
            // every value of dx written once, planes in parallel
            let dx = pool::max_unpool_2x2(Isa::active(), n * g.c, g.w, g.out_h, g.out_w, ds, &self.arg_max);
            return Tensor::from_shape_vec(vec![n, g.c, g.h, g.w], dx).expect("dx shape");
        }
        let mut dx = vec![0.0f32; n * g.c * plane];
        match self.kind {
            PoolKind::Max => {
                dx.par_chunks_mut(plane)
                    .zip(ds.par_chunks(oplane))
                    .zip(self.arg_max.par_chunks(oplane))
                    .for_each(|((d, o), a)| {
                        for (&v, &i) in o.iter().zip(a) {
                            d[i as usize] += v;
                        }
                    });
            }
            PoolKind::Average => {
                let area = (g.fh * g.fw) as f32;
                dx.par_chunks_mut(plane).zip(ds.par_chunks(oplane)).for_each(|(d, o)| {
                    for oy in 0..g.out_h {
                        let (y0, y1) = self.window(oy, g.fh, g.h);
                        for ox in 0..g.out_w {
                            let (x0, x1) = self.window(ox, g.fw, g.w);
                            let v = o[oy * g.out_w + ox] / area;
                            for yy in y0..y1 {
                                for e in &mut d[yy * g.w + x0..yy * g.w + x1] {
                                    *e += v;
                                }
                            }
                        }
                    }
                });
            }
        }
        Tensor::from_shape_vec(vec![n, g.c, g.h, g.w], dx).expect("dx shape")
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        let g = self.geometry(input)?;
        Ok(vec![input[0], input[1], g.out_h, g.out_w])
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::Pooling {
            kind: self.kind,
            ph: self.ph,
            pw: self.pw,
            stride: self.stride,
            pad: self.pad,
        })
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(Pooling {
            kind: self.kind,
            ph: self.ph,
            pw: self.pw,
            stride: self.stride,
            pad: self.pad,
            arg_max: Vec::new(),
            cache: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path computes what the general one does (the tests in
    /// `tests/forward.rs` compare them), so only its choice is tested here: whole 2x2
    /// windows with stride 2 and no padding, and nothing next to them.
    #[test]
    fn the_fast_path_takes_whole_2x2_windows_with_stride_2_only() {
        let fast = |pool: Pooling, h: usize, w: usize| pool.full_2x2(&pool.geometry(&[1, 3, h, w]).unwrap());
        for (h, w) in [(28, 28), (6, 4), (2, 8)] {
            assert!(fast(Pooling::max(2, 2, 2, 0), h, w), "{h} x {w}");
        }
        assert!(!fast(Pooling::max(2, 2, 2, 0), 5, 6), "odd height");
        assert!(!fast(Pooling::max(2, 2, 2, 0), 6, 5), "odd width");
        // the other conditions hold for these: 1 x 2 and 2 x 1 windows with stride 2 over
        // even sizes, and a 2 x 2 window with stride 1 over 2 x 2 (one window)
        assert!(!fast(Pooling::max(1, 2, 2, 0), 6, 6), "1 high");
        assert!(!fast(Pooling::max(2, 1, 2, 0), 6, 6), "1 wide");
        assert!(!fast(Pooling::max(2, 2, 1, 0), 2, 2), "stride 1");
        assert!(!fast(Pooling::max(2, 2, 2, 1), 6, 6), "padded");
    }

    /// GoogLeNet's 3x3 windows with stride 1 and padding 1 take the kernel of their
    /// own, on any plane; nothing next to them does.
    #[test]
    fn the_3x3_kernel_takes_3x3_windows_with_stride_1_and_padding_1_only() {
        let same = |pool: Pooling, h: usize, w: usize| pool.same_3x3(&pool.geometry(&[1, 3, h, w]).unwrap());
        for (h, w) in [(14, 14), (7, 7), (1, 1), (5, 8)] {
            assert!(same(Pooling::max(3, 3, 1, 1), h, w), "{h} x {w}");
        }
        assert!(!same(Pooling::max(2, 3, 1, 1), 6, 6), "2 high");
        assert!(!same(Pooling::max(3, 2, 1, 1), 6, 6), "2 wide");
        assert!(!same(Pooling::max(3, 3, 2, 1), 6, 6), "stride 2");
        assert!(!same(Pooling::max(3, 3, 1, 0), 6, 6), "unpadded");
        assert!(!same(Pooling::max(3, 3, 1, 2), 6, 6), "padded by 2");
    }

    /// The kernel's maxima and positions are the general path's on the same plane, ties
    /// (few distinct values), NaN and -inf included, in training and in evaluation; the
    /// backward sends each gradient where the general path's positions say.
    #[test]
    fn the_3x3_kernel_pools_and_unpools_as_the_general_path() {
        let kinds = [1.0f32, 2.0, 2.0, -1.0, f32::NAN, 0.0, -0.0, f32::NEG_INFINITY, 2.0];
        let (n, c, h, w) = (2, 3, 5, 7);
        let xs: Vec<f32> = (0..n * c * h * w)
            .map(|i| kinds[(i * 5 + i / 7) % kinds.len()])
            .collect();
        let x = Tensor::from_shape_vec(vec![n, c, h, w], xs.clone()).unwrap();
        let mut pool = Pooling::max(3, 3, 1, 1);
        let g = pool.geometry(x.shape()).unwrap();
        let (mut want, mut want_at) = (vec![0.0f32; xs.len()], vec![0u32; xs.len()]);
        for ((p, o), a) in xs
            .chunks(h * w)
            .zip(want.chunks_mut(h * w))
            .zip(want_at.chunks_mut(h * w))
        {
            pool.max_general(&g, p, o, a);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let y = pool.forward(x.clone(), true).unwrap();
        assert_eq!(bits(y.as_slice().unwrap()), bits(&want));
        assert_eq!(pool.arg_max, want_at);
        let alone = Pooling::max(3, 3, 1, 1).forward(x, false).unwrap();
        assert_eq!(bits(alone.as_slice().unwrap()), bits(&want));
        let dout: Vec<f32> = (0..xs.len()).map(|i| i as f32 + 1.0).collect();
        let dx = pool.backward(Tensor::from_shape_vec(vec![n, c, h, w], dout.clone()).unwrap());
        let mut want_dx = vec![0.0f32; xs.len()];
        for (k, &at) in want_at.iter().enumerate() {
            want_dx[k / (h * w) * h * w + at as usize] += dout[k];
        }
        assert_eq!(dx.as_slice().unwrap(), &want_dx[..]);
    }
}
