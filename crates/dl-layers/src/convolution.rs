use std::mem::MaybeUninit;
use std::sync::Arc;

use dl_tensor::{
    col2im_chw, gemm, im2col_chw, ConvGeometry, ConvKernel, DirectConv, GradientAccumulator, Tensor, WinogradConv,
};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, Ix2};
use rayon::prelude::*;

use crate::{check_dout, Init, Layer, LayerError, Param};

/// The book's `Convolution`: filters `W` `(FN, C, FH, FW)`, bias `b` `(FN,)`, stride and
/// zero padding. Input `(N, C, H, W)`, output `(N, FN, OH, OW)`.
///
/// The book lowers the whole batch with `im2col` to `(N*OH*OW, C*FH*FW)`, multiplies by
/// `W^T` and transposes the result back to NCHW. This layer computes the same numbers
/// image by image, in parallel over the batch: each image is lowered with
/// [`im2col_chw`] to `(C*FH*FW, OH*OW)` and `W · col` is written straight into that
/// image's `(FN, OH*OW)` output, so no transpose is needed. For stride 1 on CPUs with
/// AVX-512 even the lowering is skipped, in the forward pass and for both gradients:
/// 3x3 layers with at least 8 input channels use Winograd F(2x2, 3x3)
/// ([`WinogradConv`], 16 multiplies per 2x2 output tile instead of 36), the others
/// [`DirectConv`], which reads the lowered rows straight from a zero-padded copy of the
/// image (switch both off with [`Convolution::set_direct`]). The tests compare every path
/// with the book's formulation and with a direct seven-loop convolution.
#[derive(Debug, Clone)]
pub struct Convolution {
    /// Filters `(FN, C, FH, FW)`.
    pub w: Param,
    /// Bias `(FN,)`.
    pub b: Param,
    stride: usize,
    pad: usize,
    /// The input of the last training forward (the book's `self.x`), `(N, C, H, W)`.
    /// Backward lowers it again image by image: a lowered image stays in the core's
    /// cache, where keeping the whole batch's columns would send them through memory.
    x: Option<Tensor>,
    /// Geometry and batch size of the last training forward.
    cache: Option<(ConvGeometry, usize)>,
    /// The kernel without lowering the last training forward used, kept for the filter
    /// gradient (which depends on the geometry only, not on `W`, so it is built once).
    kernel: Option<Arc<dyn ConvKernel>>,
    /// Whether `backward` computes `dL/dx` (the first layer of a network need not).
    input_gradient: bool,
    /// Whether stride-1 products may use [`DirectConv`].
    direct: bool,
}

impl Convolution {
    /// A convolution from `in_channels` to `filters` channels with `fh x fw` filters,
    /// weights drawn by `init` (fan-in `C*FH*FW`) from `seed`, zero bias.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        filters: usize,
        fh: usize,
        fw: usize,
        stride: usize,
        pad: usize,
        init: Init,
        seed: u64,
    ) -> Self {
        let fan_in = in_channels * fh * fw;
        Self::from_params(
            init.sample(&[filters, in_channels, fh, fw], fan_in, seed),
            Tensor::zeros(vec![filters]),
            stride,
            pad,
        )
    }

    /// A convolution with the given `W` `(FN, C, FH, FW)` and `b` `(FN,)`.
    ///
    /// # Panics
    /// If the shapes do not fit each other or `stride == 0`.
    pub fn from_params(w: Tensor, b: Tensor, stride: usize, pad: usize) -> Self {
        assert!(
            w.ndim() == 4 && b.ndim() == 1 && w.shape()[0] == b.shape()[0],
            "Convolution: W {:?} and b {:?} do not fit",
            w.shape(),
            b.shape()
        );
        assert!(stride >= 1, "Convolution: stride must be at least 1");
        Self {
            w: Param::new(w),
            b: Param::new(b),
            stride,
            pad,
            x: None,
            cache: None,
            kernel: None,
            input_gradient: true,
            direct: true,
        }
    }

    /// `(FN, C, FH, FW)`.
    fn dims(&self) -> (usize, usize, usize, usize) {
        let s = self.w.value.shape();
        (s[0], s[1], s[2], s[3])
    }

    fn geometry(&self, input: &[usize]) -> Result<ConvGeometry, LayerError> {
        let (_, c, fh, fw) = self.dims();
        if input.len() != 4 || input[1] != c {
            return Err(LayerError::shape("Convolution", format!("(N, {c}, H, W)"), input));
        }
        ConvGeometry::new(c, input[2], input[3], fh, fw, self.stride, self.pad).map_err(|source| LayerError::Geometry {
            layer: "Convolution".into(),
            source,
        })
    }

    /// The kernel without lowering for this layer's filters, where one applies (stride 1,
    /// AVX-512) and they are not switched off.
    fn stride_one(&self, g: &ConvGeometry) -> Option<Box<dyn ConvKernel>> {
        if !self.direct {
            return None;
        }
        stride_one_kernel(self.w.value.as_slice().expect("contiguous W"), self.dims().0, g)
    }

    /// Whether stride-1 convolutions use the kernels without lowering (the default, where
    /// the CPU has AVX-512: [`WinogradConv`] for the forward pass and both gradients of
    /// 3x3 layers with at least 8 input channels, [`DirectConv`] for the rest) or
    /// always `im2col` + GEMM, the book's formulation, kept as the reference path the
    /// tests compare them with.
    pub fn set_direct(&mut self, on: bool) {
        self.direct = on;
    }

    /// `W` seen as the matrix `(FN, C*FH*FW)`.
    fn w_matrix(&self) -> ArrayView2<'_, f32> {
        let (f, c, fh, fw) = self.dims();
        self.w
            .value
            .view()
            .into_shape_with_order((f, c * fh * fw))
            .expect("contiguous W")
    }
}

/// The kernel without lowering for `w` `(filters, C*FH*FW)` on `g`: Winograd F(2x2, 3x3)
/// where it pays ([`WinogradConv::pays`]: 3x3 filters, at least 8 input channels), else
/// the direct kernel; `None` where neither applies (stride above 1, no AVX-512, switched
/// off).
fn stride_one_kernel(w: &[f32], filters: usize, g: &ConvGeometry) -> Option<Box<dyn ConvKernel>> {
    if WinogradConv::pays(g) {
        if let Some(k) = WinogradConv::new(w, filters, g) {
            return Some(Box::new(k));
        }
    }
    DirectConv::new(w, filters, g).map(|k| Box::new(k) as Box<dyn ConvKernel>)
}

/// For a stride-1 convolution with square filters and `pad < FH`, `dL/dx` is itself a
/// stride-1 convolution: of `dout` `(FN, OH, OW)`, padded by `FH - 1 - pad`, with the
/// filters turned by 180 degrees and their channel axes swapped, `W'` `(C, FN, FH, FW)`.
/// Returns that convolution's geometry and `W'` as the matrix `(C, FN*FH*FW)`; `None`
/// when the shortcut does not apply (the general `W^T · dout` then `col2im` is used).
fn transposed_convolution(w: &Tensor, g: &ConvGeometry) -> Option<(ConvGeometry, Array2<f32>)> {
    let (f, c, fh, fw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    if g.stride != 1 || fh != fw || g.pad >= fh {
        return None;
    }
    let gt = ConvGeometry::new(f, g.out_h, g.out_w, fh, fw, 1, fh - 1 - g.pad).ok()?;
    if (gt.out_h, gt.out_w) != (g.h, g.w) {
        return None;
    }
    // W'[ci][fi][k] = W[fi][ci][FH*FW - 1 - k] (a 180-degree turn is the reversed
    // filter), by slices rather than 4-D indexing
    let kk = fh * fw;
    let ws = w.as_slice().expect("contiguous W");
    let mut wt = vec![0.0f32; c * f * kk];
    for (fi, filter) in ws.chunks_exact(c * kk).enumerate() {
        for (ci, src) in filter.chunks_exact(kk).enumerate() {
            let dst = &mut wt[(ci * f + fi) * kk..][..kk];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    Some((gt, Array2::from_shape_vec((c, f * kk), wt).expect("W' shape")))
}

thread_local! {
    /// Per-thread lowering buffers, kept between calls: a lowered image is written in
    /// full before it is read, so the buffers are never cleared.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's two scratch buffers, of at least `a` and `b` values.
/// `f` must not start parallel work (a stolen task could ask for the same buffers).
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut bufs = cell.borrow_mut();
        let (x, y) = &mut *bufs;
        if x.len() < a {
            x.resize(a, 0.0);
        }
        if y.len() < b {
            y.resize(b, 0.0);
        }
        f(&mut x[..a], &mut y[..b])
    })
}

/// A batch buffer of `len` values that `fill` writes in full, without clearing it first.
///
/// # Safety
/// `fill` must initialise every element (the kernels' `forward_image_uninit` does, for
/// each image's chunk).
unsafe fn batch_uninit(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut buf = Vec::<f32>::with_capacity(len);
    fill(&mut buf.spare_capacity_mut()[..len]);
    // SAFETY: the capacity is at least `len`, and `fill` initialised the first `len`
    // elements (the caller's promise).
    unsafe { buf.set_len(len) };
    buf
}

/// Clears `buf` and returns it as initialised values.
fn zeroed(buf: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    buf.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written, and `[MaybeUninit<f32>]` and `[f32]` have
    // the same layout.
    unsafe { &mut *(buf as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Merges the groups' sums into `parts[0]` pairwise, in a tree whose shape depends only
/// on the number of groups (so the result does not depend on the thread count), the two
/// halves of each level in parallel.
fn merge_tree(parts: &mut [GradientAccumulator]) {
    if parts.len() < 2 {
        return;
    }
    let (left, right) = parts.split_at_mut(parts.len() / 2);
    rayon::join(|| merge_tree(left), || merge_tree(right));
    left[0].merge(&right[0]);
}

/// Images per group in the backward pass: the unit of parallel work and of the
/// fixed-order gradient reduction.
const GROUP: usize = 4;

/// One image: `out (FN, OH*OW) = W · col + b`.
fn forward_image(w: &ArrayView2<f32>, bias: &[f32], col: &[f32], g: &ConvGeometry, out: &mut [f32]) {
    let col = ArrayView2::from_shape((g.col_rows(), g.col_cols()), col).expect("col block");
    let mut out = ArrayViewMut2::from_shape((w.nrows(), g.col_cols()), out).expect("out block");
    for (mut row, &b) in out.axis_iter_mut(Axis(0)).zip(bias) {
        row.fill(b);
    }
    gemm(1.0, w, &col, 1.0, &mut out);
}

impl Layer for Convolution {
    fn name(&self) -> &str {
        "Convolution"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let g = self.geometry(x.shape())?;
        let n = x.shape()[0];
        let (f, ..) = self.dims();
        let x = crate::into_standard(x);
        let (in_len, col_len, out_len) = (g.c * g.h * g.w, g.col_rows() * g.col_cols(), f * g.col_cols());
        let xs = x.as_slice().expect("standard layout");
        let bias = self.b.value.as_slice().expect("contiguous b");
        let kernel: Option<Arc<dyn ConvKernel>> = self.stride_one(&g).map(Arc::from);
        let out = match &kernel {
            // stride 1 on AVX-512: straight from the padded image, no lowering, into
            // memory that is not cleared first
            // SAFETY: the chunks of `out_len` cover the buffer (n images, n inputs), and
            // `forward_image_uninit` writes every element of its chunk.
            Some(d) => unsafe {
                batch_uninit(n * out_len, |out| {
                    out.par_chunks_mut(out_len)
                        .zip(xs.par_chunks(in_len))
                        .for_each(|(o, xi)| {
                            with_scratch(d.scratch_len(), 0, |s, _| d.forward_image_uninit(xi, Some(bias), o, s))
                        });
                })
            },
            None => {
                let mut out = vec![0.0f32; n * out_len];
                let w = self.w_matrix();
                out.par_chunks_mut(out_len)
                    .zip(xs.par_chunks(in_len))
                    .for_each(|(o, xi)| {
                        with_scratch(col_len, 0, |c, _| {
                            im2col_chw(xi, &g, c);
                            forward_image(&w, bias, c, &g, o);
                        })
                    });
                out
            }
        };
        if train {
            self.x = Some(x);
            self.cache = Some((g, n));
            self.kernel = kernel;
        }
        Ok(Tensor::from_shape_vec(vec![n, f, g.out_h, g.out_w], out).expect("output shape"))
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let (g, n) = self.cache.expect("Convolution::backward before a training forward");
        let (f, c, fh, fw) = self.dims();
        check_dout("Convolution", &dout, &[n, f, g.out_h, g.out_w]);
        let dout = dout.as_standard_layout();
        let ds = dout.as_slice().expect("standard layout");
        let x = self.x.as_ref().expect("input kept by the training forward");
        let xs = x.as_slice().expect("standard layout");
        let (in_len, col_len, out_len) = (g.c * g.h * g.w, g.col_rows() * g.col_cols(), f * g.col_cols());
        let ckk = c * fh * fw;
        let w = self.w_matrix();
        let transposed = if self.input_gradient {
            transposed_convolution(&self.w.value, &g)
        } else {
            None
        };
        // dW without lowering where it applies and pays (`ConvKernel::gradient_pays`).
        let fast_dw = self.kernel.clone().filter(|k| k.gradient_pays());
        let col_len = fast_dw.as_ref().map_or(col_len, |k| k.gradient_scratch_len());
        let fast_dx = match &transposed {
            Some((gt, wt)) if self.direct => stride_one_kernel(wt.as_slice().expect("standard layout"), c, gt),
            _ => None,
        };
        let dcol_len = match (&fast_dx, &transposed) {
            _ if !self.input_gradient => 0,
            (Some(d), _) => d.scratch_len(),
            (None, Some((gt, _))) => gt.col_rows() * gt.col_cols(),
            (None, None) => col_len,
        };
        // Images are taken in fixed groups, each group's dW/db summed on its own, and the
        // groups' sums added in order (lowered path) or in a fixed tree (`merge_tree`):
        // the result does not depend on the thread count or on how rayon schedules the
        // work, so a seed fixes a run bit for bit.
        let groups = n.div_ceil(GROUP);
        let mut partials: Vec<(Option<GradientAccumulator>, Array2<f32>, Vec<f32>)> = Vec::new();
        // SAFETY: every image's chunk of `dx` is written in full: by the kernel without
        // lowering (`forward_image_uninit`), or cleared first (`zeroed`) on the other
        // paths and when no input gradient is asked for.
        let dx = unsafe {
            batch_uninit(n * in_len, |dx| {
                partials = dx
                    .par_chunks_mut(in_len * GROUP)
                    .zip(ds.par_chunks(out_len * GROUP))
                    .zip(xs.par_chunks(in_len * GROUP))
                    .map(|((dxg, dg), xg)| {
                        let mut sums = fast_dw.as_ref().map(|k| k.gradient_accumulator());
                        // the lowered path's sums (the fast path keeps its own in `sums`)
                        let (mut dw, mut db) = match sums {
                            Some(_) => (Array2::<f32>::zeros((0, 0)), Vec::new()),
                            None => (Array2::<f32>::zeros((f, ckk)), vec![0.0f32; f]),
                        };
                        with_scratch(col_len, dcol_len, |col, dcol| {
                            for ((dxi, di), xi) in dxg.chunks_mut(in_len).zip(dg.chunks(out_len)).zip(xg.chunks(in_len))
                            {
                                // dW += dout_i · col_i^T ; db += row sums of dout_i
                                if let (Some(dd), Some(acc)) = (&fast_dw, &mut sums) {
                                    dd.weight_gradient_image(xi, di, acc, col);
                                } else {
                                    im2col_chw(xi, &g, col);
                                    let d = ArrayView2::from_shape((f, g.col_cols()), di).expect("dout block");
                                    let colv =
                                        ArrayView2::from_shape((ckk, g.col_cols()), &col[..]).expect("col block");
                                    gemm(1.0, &d, &colv.t(), 1.0, &mut dw.view_mut());
                                    for (acc, row) in db.iter_mut().zip(d.axis_iter(Axis(0))) {
                                        *acc += row.sum();
                                    }
                                }
                                if let (true, Some(d)) = (self.input_gradient, &fast_dx) {
                                    // dx_i = W' * dout_i without lowering, every value written
                                    d.forward_image_uninit(di, None, dxi, dcol);
                                    continue;
                                }
                                let dxi = zeroed(dxi);
                                if !self.input_gradient {
                                    continue;
                                }
                                match &transposed {
                                    // dx_i = W' · im2col(dout_i): the forward's kernels, no col2im
                                    Some((gt, wt)) => {
                                        im2col_chw(di, gt, dcol);
                                        let dc = ArrayView2::from_shape((gt.col_rows(), gt.col_cols()), &dcol[..])
                                            .expect("dcol");
                                        let mut dxv = ArrayViewMut2::from_shape((c, g.h * g.w), dxi).expect("dx block");
                                        gemm(1.0, &wt.view(), &dc, 0.0, &mut dxv);
                                    }
                                    // dcol = W^T · dout_i, then col2im into dx_i
                                    None => {
                                        let mut dc = ArrayViewMut2::from_shape((ckk, g.col_cols()), &mut dcol[..])
                                            .expect("dcol");
                                        let d = ArrayView2::from_shape((f, g.col_cols()), di).expect("dout block");
                                        gemm(1.0, &w.t(), &d, 0.0, &mut dc);
                                        col2im_chw(dcol, &g, dxi);
                                    }
                                }
                            }
                        });
                        (sums, dw, db)
                    })
                    .collect();
            })
        };
        debug_assert_eq!(partials.len(), groups);
        let fast_sums: Option<Vec<GradientAccumulator>> = partials.iter_mut().map(|p| p.0.take()).collect();
        let mut parts = partials.into_iter();
        let (_, mut dw, mut db) = parts.next().expect("at least one image");
        if let Some(mut sums) = fast_sums {
            // the fast kernels' sums stay in their own layout until all groups are in
            merge_tree(&mut sums);
            dw = Array2::<f32>::zeros((f, ckk));
            db = vec![0.0f32; f];
            sums[0].add_to(dw.as_slice_mut().expect("standard layout"), &mut db);
        } else {
            for (_, pw, pb) in parts {
                dw += &pw;
                for (x, y) in db.iter_mut().zip(&pb) {
                    *x += y;
                }
            }
        }
        self.w
            .grad
            .view_mut()
            .into_shape_with_order((f, ckk))
            .expect("contiguous dW")
            .into_dimensionality::<Ix2>()
            .expect("2-D")
            .assign(&dw);
        self.b.grad.as_slice_mut().expect("contiguous db").copy_from_slice(&db);
        Tensor::from_shape_vec(vec![n, g.c, g.h, g.w], dx).expect("dx shape")
    }

    fn params(&self) -> Vec<(String, &Param)> {
        vec![("W".into(), &self.w), ("b".into(), &self.b)]
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        vec![("W".into(), &mut self.w), ("b".into(), &mut self.b)]
    }

    fn set_input_gradient_needed(&mut self, needed: bool) {
        self.input_gradient = needed;
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        let g = self.geometry(input)?;
        Ok(vec![input[0], self.dims().0, g.out_h, g.out_w])
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}
