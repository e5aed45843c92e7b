//! The convolution's schedule: which kernel runs, how a batch is split over threads, how
//! the filter gradient is summed, and the scratch memory, behind one [`ConvPlan`] per
//! layer geometry. A layer describes its convolution (filters, stride, padding) and asks
//! the plan for the forward pass and the gradients; everything else is here.
//!
//! The book lowers the whole batch with `im2col` to `(N*OH*OW, C*FH*FW)`, multiplies by
//! `W^T` and transposes back to NCHW. The plan computes the same numbers image by image,
//! in parallel over the batch: each image is lowered with [`im2col_chw`] to
//! `(C*FH*FW, OH*OW)` and `W · col` lands straight in that image's `(FN, OH*OW)` slice
//! of the output (a 1x1 stride-1 convolution without padding needs no lowering at all:
//! the image is its own column matrix). Where the plan's instruction set ([`Isa`]) is a
//! vector one, [`ConvAlgo::Auto`] skips even the lowering: 3x3 stride-1 layers run
//! Winograd F(2x2, 3x3) ([`WinogradConv`]) where it pays ([`WinogradConv::pays`]), the
//! others [`DirectConv`] where it pays (every stride-1 layer, and strided ones whose
//! filter covers the stride); the filter gradient takes Winograd or the direct kernel by
//! its own rule ([`WinogradConv::gradient_pays_on`]).
//!
//! Backward takes the images in fixed groups of [`GROUP`], each group summing its `dW`
//! and `db` on its own, the groups' sums added in a fixed order: the result does not
//! depend on the thread count.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::iter::Either;
use rayon::prelude::*;

use crate::dpbf16::{gemm_products, Bf16Kernel};
use crate::{
    col2im_chw, im2col_chw, ConvGeometry, ConvKernel, DirectConv, GradientAccumulator, Isa, Winograd4Conv, WinogradConv,
};

/// Which algorithm a convolution runs. Every choice computes the same numbers up to
/// rounding (the tests compare them); they differ in speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgo {
    /// The fastest for the geometry at a vector instruction set: Winograd where it pays
    /// ([`WinogradConv::pays`]; for the filter gradient
    /// [`WinogradConv::gradient_pays_on`]), else the direct kernel where it pays
    /// ([`DirectConv::pays`]), else the lowered path; always the lowered path at
    /// [`Isa::Scalar`], where the GEMM's own vector code beats plain loops.
    #[default]
    Auto,
    /// Always `im2col` + GEMM, the book's formulation (per image).
    Lowered,
    /// The direct kernel wherever it pays ([`DirectConv::pays`]), else lowered.
    Direct,
    /// Winograd wherever it applies (3x3, stride 1), else as [`ConvAlgo::Direct`].
    Winograd,
}

impl ConvAlgo {
    /// The kernel without lowering for `w` `(filters, C*FH*FW)` on `g` at the instruction
    /// set [`Isa::active`], or `None` for the lowered path.
    pub fn kernel(self, w: &[f32], filters: usize, g: &ConvGeometry) -> Option<Box<dyn ConvKernel>> {
        self.kernel_at(Isa::active(), w, filters, g)
    }

    /// [`ConvAlgo::kernel`] at the instruction set `isa` (`None`, the lowered path, also
    /// when `isa` cannot run on this CPU).
    pub fn kernel_at(self, isa: Isa, w: &[f32], filters: usize, g: &ConvGeometry) -> Option<Box<dyn ConvKernel>> {
        let winograd = match self {
            ConvAlgo::Lowered => return None,
            ConvAlgo::Auto if isa == Isa::Scalar => return None,
            ConvAlgo::Auto => WinogradConv::pays(g, filters, isa),
            ConvAlgo::Winograd => true,
            ConvAlgo::Direct => false,
        };
        if self == ConvAlgo::Auto && Winograd4Conv::pays(g, filters, isa) {
            if let Some(k) = Winograd4Conv::with_isa(w, filters, g, isa) {
                return Some(Box::new(k));
            }
        }
        if winograd {
            if let Some(k) = WinogradConv::with_isa(w, filters, g, isa) {
                return Some(Box::new(k));
            }
        }
        if !DirectConv::pays(g) {
            return None;
        }
        DirectConv::with_isa(w, filters, g, isa).map(|k| Box::new(k) as Box<dyn ConvKernel>)
    }
}

/// Images per group in the backward pass: the unit of parallel work and of the
/// fixed-order gradient reduction. A batch of 100 makes 20 groups, which split evenly
/// over 2 or 4 threads.
pub const GROUP: usize = 5;

/// What a training forward keeps for the backward pass: the kernel it ran (the filter
/// gradient depends on the geometry only, so it is built once per step), after
/// [`ConvPlan::forward_relu_masked`] the ReLU's mask, and after
/// [`ConvPlan::forward_relu_pool_masked`] the codes of its pooling instead.
#[derive(Debug, Clone, Default)]
pub struct ConvSaved {
    kernel: Option<Arc<dyn ConvKernel>>,
    /// `true` where the output was `<= 0` before the ReLU (the book's `Relu.mask`).
    relu_mask: Option<Vec<bool>>,
    /// Per 2x2 window, where its maximum was or that the ReLU stops its gradient
    /// ([`crate::pool::max_pool_relu_2x2`]).
    pool_codes: Option<Vec<u8>>,
}

impl ConvSaved {
    /// The name of the kernel the forward ran: `"winograd"`, `"direct"` or `"lowered"`.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.as_ref().map_or("lowered", |k| k.name())
    }

    /// The instruction set of the kernel the forward ran (`None` for the lowered path,
    /// whose GEMM chooses its own).
    pub fn kernel_isa(&self) -> Option<Isa> {
        self.kernel.as_ref().map(|k| k.isa())
    }

    /// The ReLU's mask, after [`ConvPlan::forward_relu_masked`]: memory for the next
    /// step's.
    pub fn into_relu_mask(self) -> Option<Vec<bool>> {
        self.relu_mask
    }

    /// The pooling's codes, after [`ConvPlan::forward_relu_pool_masked`]: memory for the
    /// next step's.
    pub fn into_pool_codes(self) -> Option<Vec<u8>> {
        self.pool_codes
    }

    /// Whether the forward pooled its output ([`ConvPlan::forward_relu_pool_masked`]):
    /// the backward then takes the gradient of the pooled output.
    pub fn pooled(&self) -> bool {
        self.pool_codes.is_some()
    }
}

/// One convolution's schedule: its geometry, filter count, algorithm and instruction
/// set. Cheap to build (a few integers); the filters are packed per call, since they
/// change every step.
#[derive(Debug, Clone)]
pub struct ConvPlan {
    /// Input, filter and output sizes.
    pub g: ConvGeometry,
    /// Number of filters `FN`.
    pub filters: usize,
    /// The algorithm.
    pub algo: ConvAlgo,
    /// The instruction set of the kernels without lowering.
    pub isa: Isa,
    /// Products in bf16 by this GEMM kernel ([`crate::dpbf16`]): the lowered path on
    /// every pass, its products by [`crate::dpbf16::gemm_bf16`]. `None`: `f32` products.
    pub bf16: Option<Bf16Kernel>,
    /// Where the forward pass finds the kernel it built last, for the same weights
    /// ([`ConvPlan::with_kernel_cache`]).
    kernels: Option<KernelCache>,
}

/// The kernel a convolution's forward pass built last (its filters transformed or
/// packed), kept for the next pass with the same weights, geometry, algorithm and
/// instruction set: evaluation calls, and the copies of a network that
/// `Network::predict` runs on its threads (a clone shares the cache), skip rebuilding
/// it. The weights are compared bit for bit with the cached copy, so a changed weight
/// always rebuilds; in training, where every step changes them, the comparison stops
/// at the first value that differs.
#[derive(Debug, Clone, Default)]
pub struct KernelCache(Arc<Mutex<Option<CachedKernel>>>);

#[derive(Debug)]
struct CachedKernel {
    key: (ConvGeometry, usize, ConvAlgo, Isa),
    w: Vec<u32>,
    kernel: Arc<dyn ConvKernel>,
}

impl KernelCache {
    /// The cached kernel when `w` and `key` are those it was built for, else `build()`'s
    /// (then cached).
    fn get_or_build(
        &self,
        w: &[f32],
        key: (ConvGeometry, usize, ConvAlgo, Isa),
        build: impl FnOnce() -> Option<Arc<dyn ConvKernel>>,
    ) -> Option<Arc<dyn ConvKernel>> {
        let same = |c: &CachedKernel| {
            c.key == key && c.w.len() == w.len() && c.w.iter().zip(w).all(|(a, b)| *a == b.to_bits())
        };
        {
            let cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cached.as_ref().filter(|c| same(c)) {
                return Some(c.kernel.clone());
            }
        }
        let kernel = build()?;
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // the last entry's copy of the weights is overwritten, not allocated again
        let mut bits = cached.take().map(|c| c.w).unwrap_or_default();
        bits.clear();
        bits.extend(w.iter().map(|v| v.to_bits()));
        *cached = Some(CachedKernel {
            key,
            w: bits,
            kernel: kernel.clone(),
        });
        Some(kernel)
    }
}

impl ConvPlan {
    /// A plan for `filters` filters on `g`, at the instruction set [`Isa::active`].
    pub fn new(g: ConvGeometry, filters: usize, algo: ConvAlgo) -> Self {
        Self {
            g,
            filters,
            algo,
            isa: Isa::active(),
            bf16: None,
            kernels: None,
        }
    }

    /// This plan, its forward pass taking the kernel from `cache` when the weights are
    /// those it was built for, and leaving the one it builds there
    /// ([`KernelCache`]).
    pub fn with_kernel_cache(self, cache: &KernelCache) -> Self {
        Self {
            kernels: Some(cache.clone()),
            ..self
        }
    }

    /// This plan with bf16 products by `kernel` where it is a GEMM kernel
    /// ([`Bf16Kernel::is_gemm`]); with [`Bf16Kernel::Rounded`] (the layer rounds the
    /// operands itself) the plan is unchanged.
    ///
    /// # Panics
    /// If `kernel` cannot run on this CPU.
    pub fn with_bf16(self, kernel: Bf16Kernel) -> Self {
        assert!(kernel.supported(), "ConvPlan: the bf16 kernel {kernel} cannot run here");
        Self {
            bf16: kernel.is_gemm().then_some(kernel),
            ..self
        }
    }

    /// The kernel without lowering for `w` on `g`, or `None` for the lowered path (always
    /// with bf16 products).
    fn fast_kernel(&self, w: &[f32], filters: usize, g: &ConvGeometry) -> Option<Box<dyn ConvKernel>> {
        if self.bf16.is_some() {
            return None;
        }
        self.algo.kernel_at(self.isa, w, filters, g)
    }

    /// `c = a · b + beta · c` with this plan's products.
    fn product(&self, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
        gemm_products(self.bf16, a, b, beta, c);
    }

    /// This plan at the instruction set `isa` (which falls back to the lowered path where
    /// `isa` cannot run on this CPU).
    pub fn with_isa(self, isa: Isa) -> Self {
        Self { isa, ..self }
    }

    fn lens(&self) -> (usize, usize) {
        let g = &self.g;
        (g.c * g.h * g.w, self.filters * g.out_h * g.out_w)
    }

    /// `y = W * x + b` for a batch: `w` `(FN, C, FH, FW)`, `bias` `(FN,)` or none, `x`
    /// `(N, C, H, W)`, all row-major; returns `y` `(N, FN, OH, OW)` and what
    /// [`ConvPlan::backward`] needs from this pass.
    ///
    /// # Panics
    /// If a length does not fit the plan (a programmer error: the layer checks shapes).
    pub fn forward(&self, w: &[f32], bias: Option<&[f32]>, x: &[f32]) -> (Vec<f32>, ConvSaved) {
        self.forward_then(w, bias, x, Relu::None, Vec::new())
    }

    /// [`ConvPlan::forward`] followed by a ReLU, `max(0, y)`, applied to each image's
    /// output as soon as it is written (while it is still in cache), instead of in a pass
    /// of its own: a convolution and the ReLU after it, in evaluation.
    ///
    /// # Panics
    /// As [`ConvPlan::forward`].
    pub fn forward_relu(&self, w: &[f32], bias: Option<&[f32]>, x: &[f32]) -> (Vec<f32>, ConvSaved) {
        self.forward_then(w, bias, x, Relu::Plain, Vec::new())
    }

    /// [`ConvPlan::forward_relu`] in training: it also keeps the ReLU's mask (where the
    /// output was `<= 0`), taken from each image's output as it is written, and
    /// [`ConvPlan::backward`] then takes the gradient with respect to the ReLU's output
    /// and applies the mask to each image's gradient as it reads it: a convolution and
    /// the ReLU after it, in one pass each way.
    ///
    /// `mask` is memory for the mask, of any length and contents: the last step's
    /// ([`ConvSaved::into_relu_mask`]), so that it is not allocated and cleared anew
    /// every step.
    ///
    /// # Panics
    /// As [`ConvPlan::forward`].
    pub fn forward_relu_masked(
        &self,
        w: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        mask: Vec<bool>,
    ) -> (Vec<f32>, ConvSaved) {
        self.forward_then(w, bias, x, Relu::Masked, mask)
    }

    /// Whether the output planes can be pooled by whole 2x2 windows with stride 2
    /// ([`ConvPlan::forward_relu_pool`]): `OH` and `OW` even.
    pub fn pools_2x2(&self) -> bool {
        self.g.out_h.is_multiple_of(2) && self.g.out_w.is_multiple_of(2)
    }

    /// [`ConvPlan::forward_relu`] followed by the book's max pooling on 2x2 windows with
    /// stride 2 (`Pooling(2, 2, 2)`), each image's output pooled as soon as it is written
    /// (while it is in cache, the ReLU and the pooling in one pass,
    /// [`crate::pool::max_pool_relu_2x2_values`]): returns `(N, FN, OH/2, OW/2)`, the
    /// same values as the three passes one after another. A convolution, its ReLU and
    /// the pooling after them, in evaluation.
    ///
    /// # Panics
    /// As [`ConvPlan::forward`], and if `OH` or `OW` is odd ([`ConvPlan::pools_2x2`]).
    pub fn forward_relu_pool(&self, w: &[f32], bias: Option<&[f32]>, x: &[f32]) -> Vec<f32> {
        self.forward_pooled(w, bias, x, None).0
    }

    /// [`ConvPlan::forward_relu_pool`] in training: it also keeps, for each window, a
    /// byte that says where its maximum was or that the ReLU stops its gradient
    /// ([`crate::pool::max_pool_relu_2x2`]), and [`ConvPlan::backward`] then takes the
    /// gradient with respect to the pooled output, sending each value to its place as
    /// it reads each image ([`crate::pool::max_unpool_codes_2x2`]): the three layers in
    /// one pass each way, the unpooled output, the ReLU's mask and the unpooled
    /// gradient never stored for the batch.
    ///
    /// `codes` is memory for the codes, of any length and contents (the last step's,
    /// [`ConvSaved::into_pool_codes`]).
    ///
    /// # Panics
    /// As [`ConvPlan::forward_relu_pool`].
    pub fn forward_relu_pool_masked(
        &self,
        w: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        codes: Vec<u8>,
    ) -> (Vec<f32>, ConvSaved) {
        self.forward_pooled(w, bias, x, Some(codes))
    }

    /// Values of one image's pooled output.
    fn pooled_len(&self) -> usize {
        self.filters * (self.g.out_h / 2) * (self.g.out_w / 2)
    }

    /// `out` `(FN, OH, OW)` of one image before the ReLU, through the ReLU and pooled
    /// into `o` `(FN, OH/2, OW/2)`, with the codes into `codes` when given.
    fn relu_pool_image(&self, out: &[f32], o: &mut [f32], codes: Option<&mut [u8]>) {
        let (ow, ph, pw) = (self.g.out_w, self.g.out_h / 2, self.g.out_w / 2);
        let (plane, pplane) = (self.g.out_h * ow, ph * pw);
        if pplane == 0 {
            return;
        }
        let planes = out.chunks_exact(plane).zip(o.chunks_exact_mut(pplane));
        match codes {
            Some(codes) => {
                for ((p, o), c) in planes.zip(codes.chunks_exact_mut(pplane)) {
                    crate::pool::max_pool_relu_2x2(self.isa, p, ow, ph, pw, o, c);
                }
            }
            None => {
                for (p, o) in planes {
                    crate::pool::max_pool_relu_2x2_values(self.isa, p, ow, ph, pw, o);
                }
            }
        }
    }

    fn forward_then(
        &self,
        w: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        relu: Relu,
        mut mask: Vec<bool>,
    ) -> (Vec<f32>, ConvSaved) {
        let g = &self.g;
        let (in_len, out_len) = self.lens();
        assert_eq!(w.len(), self.filters * g.col_rows(), "ConvPlan: W length");
        assert_eq!(x.len() % in_len.max(1), 0, "ConvPlan: input length");
        let n = x.len() / in_len.max(1);
        let kernel = self.forward_kernel(w);
        // every value of the mask is written below
        mask.resize(if relu == Relu::Masked { n * out_len } else { 0 }, false);
        // images a call of the kernel takes (Winograd's on small outputs: 3), and the
        // mask's chunk of each call's images (none without a mask)
        let k = kernel.as_ref().map_or(1, |d| d.images_per_forward());
        let masks = match relu {
            Relu::Masked => Either::Left(mask.par_chunks_mut((k * out_len).max(1)).map(Some)),
            _ => Either::Right((0..n.div_ceil(k)).into_par_iter().map(|_| None)),
        };
        let out = match &kernel {
            // straight from the padded image, no lowering, into memory not cleared first
            // SAFETY: the chunks of `k out_len` cover the buffer (n images, n inputs), and
            // `forward_images_uninit` writes every element of its chunk.
            Some(d) => unsafe {
                batch_uninit(n * out_len, |out| {
                    out.par_chunks_mut(k * out_len)
                        .zip(x.par_chunks(k * in_len))
                        .zip(masks)
                        .for_each(|((o, xi), m)| {
                            with_scratch(d.scratch_len(), 0, |s, _| d.forward_images_uninit(xi, bias, o, s));
                            // SAFETY: `forward_images_uninit` wrote every element of `o`,
                            // and `[MaybeUninit<f32>]` and `[f32]` have the same layout.
                            relu.apply(self.isa, &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]), m);
                        });
                })
            },
            None => {
                let mut out = vec![0.0f32; n * out_len];
                let wm = ArrayView2::from_shape((self.filters, g.col_rows()), w).expect("W matrix");
                out.par_chunks_mut(out_len)
                    .zip(x.par_chunks(in_len))
                    .zip(masks)
                    .for_each(|((o, xi), m)| {
                        with_scratch(lowered_len(g), 0, |c, _| {
                            let col = lowered(xi, g, c);
                            self.forward_image(&wm, bias, col, o);
                        });
                        relu.apply(self.isa, o, m);
                    });
                out
            }
        };
        let relu_mask = (relu == Relu::Masked).then_some(mask);
        let saved = ConvSaved {
            kernel,
            relu_mask,
            pool_codes: None,
        };
        (out, saved)
    }

    /// The kernel of a forward pass: from the cache where the plan has one.
    fn forward_kernel(&self, w: &[f32]) -> Option<Arc<dyn ConvKernel>> {
        let g = &self.g;
        let build = || self.fast_kernel(w, self.filters, g).map(Arc::from);
        match &self.kernels {
            Some(cache) if self.bf16.is_none() => cache.get_or_build(w, (*g, self.filters, self.algo, self.isa), build),
            _ => build(),
        }
    }

    /// [`ConvPlan::forward_relu_pool`] and [`ConvPlan::forward_relu_pool_masked`]: each
    /// image's output into scratch, then through the ReLU and the pooling into the
    /// batch's output (the codes kept in training, when `codes` is given).
    fn forward_pooled(
        &self,
        w: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        codes: Option<Vec<u8>>,
    ) -> (Vec<f32>, ConvSaved) {
        let g = &self.g;
        assert!(
            self.pools_2x2(),
            "ConvPlan: no 2x2 pooling of {} x {} outputs",
            g.out_h,
            g.out_w
        );
        let (in_len, out_len) = self.lens();
        let pooled_len = self.pooled_len();
        assert_eq!(w.len(), self.filters * g.col_rows(), "ConvPlan: W length");
        assert_eq!(x.len() % in_len.max(1), 0, "ConvPlan: input length");
        let n = x.len() / in_len.max(1);
        let kernel = self.forward_kernel(w);
        let mut codes = codes.map(|mut c| {
            // every code is written below
            c.resize(n * pooled_len, 0);
            c
        });
        // images a call of the kernel takes (Winograd's on small outputs: 3)
        let k = kernel.as_ref().map_or(1, |d| d.images_per_forward());
        let kept = match &mut codes {
            Some(c) => Either::Left(c.par_chunks_mut((k * pooled_len).max(1)).map(Some)),
            None => Either::Right((0..n.div_ceil(k)).into_par_iter().map(|_| None)),
        };
        let wm = ArrayView2::from_shape((self.filters, g.col_rows()), w).expect("W matrix");
        let scratch = kernel.as_ref().map_or(lowered_len(g), |d| d.scratch_len());
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut((k * pooled_len).max(1))
                .zip(x.par_chunks((k * in_len).max(1)))
                .zip(kept)
                .for_each(|((o, xs), mut c)| {
                    // cleared by the thread that writes it, just before (the pooling
                    // writes every value: the clearing keeps this safe code)
                    let o = zeroed(o);
                    let images = xs.len() / in_len.max(1);
                    with_scratch(scratch, images * out_len, |s, y| {
                        match &kernel {
                            Some(d) => d.forward_images_uninit(xs, bias, crate::kernel::as_uninit(y), s),
                            None => {
                                // (as the batch's output is on the other path: cleared first)
                                y.fill(0.0);
                                self.forward_image(&wm, bias, lowered(xs, g, s), y);
                            }
                        }
                        for (i, (y, o)) in y.chunks(out_len).zip(o.chunks_mut(pooled_len)).enumerate() {
                            let c = c.as_deref_mut().map(|c| &mut c[i * pooled_len..(i + 1) * pooled_len]);
                            self.relu_pool_image(y, o, c);
                        }
                    });
                })
        };
        // SAFETY: the chunks of `k` images' outputs cover the `n pooled_len` values, and
        // each is cleared (`zeroed`) before anything else.
        let out = unsafe { batch_uninit(n * pooled_len, fill) };
        let saved = ConvSaved {
            kernel,
            relu_mask: None,
            pool_codes: codes,
        };
        (out, saved)
    }

    /// The gradients of a batch: given `x` and `dout` `(N, FN, OH, OW)` of the forward
    /// that produced `saved` (after [`ConvPlan::forward_relu_masked`], the gradient of the
    /// ReLU's output; after [`ConvPlan::forward_relu_pool_masked`], of the pooled output,
    /// `(N, FN, OH/2, OW/2)`), **stores** `dL/dW` in `dw` `(FN, C, FH, FW)` and `dL/db` in
    /// `db` `(FN,)` (when given), and returns `dL/dx` `(N, C, H, W)`, or zeros when
    /// `input_gradient` is false (nobody reads it: a network's first layer). Without
    /// `dw` (a frozen layer) neither filter gradient is computed and `db` is left alone.
    ///
    /// # Panics
    /// If a length does not fit the plan.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        w: &[f32],
        saved: &ConvSaved,
        x: &[f32],
        dout: &[f32],
        input_gradient: bool,
        dw: Option<&mut [f32]>,
        db: Option<&mut [f32]>,
    ) -> Vec<f32> {
        let g = &self.g;
        let f = self.filters;
        let ckk = g.col_rows();
        let (in_len, out_len) = self.lens();
        let n = x.len() / in_len.max(1);
        assert_eq!(x.len(), n * in_len, "ConvPlan: input length");
        // after a pooled forward, `dout` is the pooled output's gradient
        let codes = saved.pool_codes.as_deref();
        let dout_len = if codes.is_some() { self.pooled_len() } else { out_len };
        assert_eq!(dout.len(), n * dout_len, "ConvPlan: dout length");
        if let Some(dw) = &dw {
            assert_eq!(dw.len(), f * ckk, "ConvPlan: dW length");
        }
        assert!(n > 0, "ConvPlan: backward of an empty batch");
        let want_dw = dw.is_some();
        let transposed = if input_gradient {
            transposed_convolution(w, f, g)
        } else {
            None
        };
        // dW without lowering where it applies and pays (`ConvKernel::gradient_pays`).
        let fast_dw = match &saved.kernel {
            Some(k) if want_dw => Some(self.gradient_kernel(w, k)).filter(|k| k.gradient_pays()),
            _ => None,
        };
        let col_len = match &fast_dw {
            _ if !want_dw => 0,
            Some(k) => k.gradient_scratch_len(),
            None => lowered_len(g),
        };
        let fast_dx = match &transposed {
            Some((gt, wt)) => self.fast_kernel(wt, g.c, gt),
            _ => None,
        };
        let dcol_len = match (&fast_dx, &transposed) {
            _ if !input_gradient => 0,
            (Some(d), _) => d.scratch_len(),
            (None, Some((gt, _))) => lowered_len(gt),
            (None, None) => g.col_rows() * g.col_cols(),
        };
        let wm = ArrayView2::from_shape((f, ckk), w).expect("W matrix");
        let mask = saved.relu_mask.as_deref();
        if let Some(mask) = mask {
            assert_eq!(mask.len(), n * out_len, "ConvPlan: the ReLU's mask is not that of dout");
        }
        if let Some(c) = codes {
            assert_eq!(
                c.len(),
                dout.len(),
                "ConvPlan: the pooling's codes are not those of dout"
            );
        }
        // each group's mask or codes (none without a ReLU), and room for one image's
        // masked dout
        let masks = match (mask, codes) {
            (Some(m), _) => Either::Left(Either::Left(m.par_chunks(out_len * GROUP).map(Backward::Relu))),
            (None, Some(c)) => Either::Left(Either::Right(c.par_chunks(dout_len * GROUP).map(Backward::ReluPool))),
            (None, None) => Either::Right((0..n.div_ceil(GROUP)).into_par_iter().map(|_| Backward::Plain)),
        };
        let (ph, pw) = (g.out_h / 2, g.out_w / 2);
        // images whose filter gradient or input gradient a kernel takes at once
        // (Winograd's on small outputs): their gradients are unmasked together
        let gi = fast_dw.as_ref().map_or(1, |k| k.images_per_gradient()).max(1);
        let fi = match (&fast_dx, input_gradient) {
            (Some(d), true) => d.images_per_forward().max(1),
            _ => 1,
        };
        let batch = gi.max(fi).min(GROUP);
        let masked_len = if mask.is_some() || codes.is_some() {
            out_len * batch
        } else {
            0
        };
        let mut partials: Vec<(Option<GradientAccumulator>, Vec<f32>, Vec<f32>)> = Vec::new();
        // SAFETY: every image's chunk of `dx` is written in full: by the kernel without
        // lowering (`forward_images_uninit`), or cleared first (`zeroed`) on the other
        // paths and when no input gradient is asked for.
        let dx = unsafe {
            batch_uninit(n * in_len, |dx| {
                partials = dx
                    .par_chunks_mut(in_len * GROUP)
                    .zip(dout.par_chunks(dout_len * GROUP))
                    .zip(x.par_chunks(in_len * GROUP))
                    .zip(masks)
                    .map(|(((dxg, dg), xg), then)| {
                        let mut sums = fast_dw.as_ref().map(|k| k.gradient_accumulator());
                        // the lowered path's sums (the fast path keeps its own in `sums`)
                        let (mut gw, mut gb) = match sums {
                            None if want_dw => (vec![0.0f32; f * ckk], vec![0.0f32; f]),
                            _ => (Vec::new(), Vec::new()),
                        };
                        with_scratch(col_len + masked_len, dcol_len, |col, dcol| {
                            let (col, masked) = col.split_at_mut(col_len);
                            let chunks = dxg
                                .chunks_mut(in_len * batch)
                                .zip(dg.chunks(dout_len * batch))
                                .zip(xg.chunks(in_len * batch));
                            for (first, ((dxc, dc), xc)) in (0..).step_by(batch).zip(chunks) {
                                let k = xc.len() / in_len;
                                // the pooling's and the ReLU's backward, on the images'
                                // gradients as they are read (their planes one after
                                // the other, as one image's of `k f` channels)
                                let dc = match then {
                                    Backward::ReluPool(c) => {
                                        let c = &c[first * dout_len..(first + k) * dout_len];
                                        let masked = &mut masked[..k * out_len];
                                        crate::pool::max_unpool_codes_2x2(
                                            self.isa,
                                            k * f,
                                            g.out_w,
                                            ph,
                                            pw,
                                            dc,
                                            c,
                                            masked,
                                        );
                                        &*masked
                                    }
                                    Backward::Relu(m) => {
                                        let m = &m[first * out_len..(first + k) * out_len];
                                        let masked = &mut masked[..k * out_len];
                                        crate::relu::backward(self.isa, dc, m, masked);
                                        &*masked
                                    }
                                    Backward::Plain => dc,
                                };
                                // dW += dout_i · col_i^T ; db += row sums of dout_i
                                if !want_dw {
                                } else if let (Some(dd), Some(acc)) = (&fast_dw, &mut sums) {
                                    for (xs, ds) in xc.chunks(gi * in_len).zip(dc.chunks(gi * out_len)) {
                                        dd.weight_gradient_images(xs, ds, acc, col);
                                    }
                                } else {
                                    for (xi, di) in xc.chunks(in_len).zip(dc.chunks(out_len)) {
                                        let colv = ArrayView2::from_shape((ckk, g.col_cols()), lowered(xi, g, col))
                                            .expect("col block");
                                        let d = ArrayView2::from_shape((f, g.col_cols()), di).expect("dout block");
                                        let mut gwv = ArrayViewMut2::from_shape((f, ckk), &mut gw[..]).expect("dW");
                                        self.product(&d, &colv.t(), 1.0, &mut gwv);
                                        for (acc, row) in gb.iter_mut().zip(d.axis_iter(Axis(0))) {
                                            *acc += row.sum();
                                        }
                                    }
                                }
                                match (&fast_dx, input_gradient) {
                                    // dx = W' * dout without lowering, every value written
                                    (Some(d), true) => {
                                        for (dxs, ds) in dxc.chunks_mut(fi * in_len).zip(dc.chunks(fi * out_len)) {
                                            d.forward_images_uninit(ds, None, dxs, dcol);
                                        }
                                    }
                                    _ => {
                                        for (dxi, di) in dxc.chunks_mut(in_len).zip(dc.chunks(out_len)) {
                                            self.input_gradient_image(input_gradient, &wm, &transposed, di, dxi, dcol);
                                        }
                                    }
                                }
                            }
                        });
                        (sums, gw, gb)
                    })
                    .collect();
            })
        };
        let Some(dw) = dw else {
            return dx;
        };
        let fast_sums: Option<Vec<GradientAccumulator>> = partials.iter_mut().map(|p| p.0.take()).collect();
        dw.fill(0.0);
        let mut gb = vec![0.0f32; f];
        match (fast_sums, &fast_dw) {
            (Some(mut sums), Some(k)) => {
                // the fast kernels' sums stay in their own layout until all groups are in
                merge_tree(&mut sums);
                k.add_gradient(&sums[0], dw, &mut gb);
            }
            _ => {
                for (_, pw, pb) in partials {
                    for (a, b) in dw.iter_mut().zip(&pw) {
                        *a += b;
                    }
                    for (a, b) in gb.iter_mut().zip(&pb) {
                        *a += b;
                    }
                }
            }
        }
        if let Some(db) = db {
            assert_eq!(db.len(), f, "ConvPlan: db length");
            db.copy_from_slice(&gb);
        }
        dx
    }

    /// The kernel for the filter gradient after a forward pass that ran `forward`: under
    /// [`ConvAlgo::Auto`], Winograd where its gradient pays
    /// ([`WinogradConv::gradient_pays_on`]) and the direct kernel elsewhere, whichever
    /// kernel the forward pass ran; under the other algorithms, the forward's.
    fn gradient_kernel(&self, w: &[f32], forward: &Arc<dyn ConvKernel>) -> Arc<dyn ConvKernel> {
        if self.algo != ConvAlgo::Auto {
            return forward.clone();
        }
        let (g, isa) = (&self.g, forward.isa());
        let winograd = WinogradConv::gradient_pays_on(g);
        let other: Option<Arc<dyn ConvKernel>> = match (winograd, forward.name()) {
            (true, "winograd" | "winograd-f4") | (false, "direct") => None,
            (true, _) => WinogradConv::with_isa(w, self.filters, g, isa).map(|k| Arc::new(k) as _),
            (false, _) => DirectConv::with_isa(w, self.filters, g, isa).map(|k| Arc::new(k) as _),
        };
        other.unwrap_or_else(|| forward.clone())
    }

    /// One image: `out (FN, OH*OW) = W · col + b`.
    fn forward_image(&self, w: &ArrayView2<f32>, bias: Option<&[f32]>, col: &[f32], out: &mut [f32]) {
        let g = &self.g;
        let col = ArrayView2::from_shape((g.col_rows(), g.col_cols()), col).expect("col block");
        let mut out = ArrayViewMut2::from_shape((w.nrows(), g.col_cols()), out).expect("out block");
        let beta = match bias {
            Some(bias) => {
                for (mut row, &b) in out.axis_iter_mut(Axis(0)).zip(bias) {
                    row.fill(b);
                }
                1.0
            }
            None => 0.0,
        };
        self.product(w, &col, beta, &mut out);
    }

    /// `dx_i` of one image by lowering, or zeros when it is not `needed` (every value
    /// written).
    fn input_gradient_image(
        &self,
        needed: bool,
        w: &ArrayView2<f32>,
        transposed: &Option<(ConvGeometry, Vec<f32>)>,
        di: &[f32],
        dxi: &mut [MaybeUninit<f32>],
        dcol: &mut [f32],
    ) {
        let g = &self.g;
        let dxi = zeroed(dxi);
        if !needed {
            return;
        }
        match transposed {
            // dx_i = W' · im2col(dout_i): the forward's kernels, no col2im
            Some((gt, wt)) => {
                let dc = ArrayView2::from_shape((gt.col_rows(), gt.col_cols()), lowered(di, gt, dcol)).expect("dcol");
                let wt = ArrayView2::from_shape((g.c, gt.col_rows()), &wt[..]).expect("W'");
                let mut dxv = ArrayViewMut2::from_shape((g.c, g.h * g.w), dxi).expect("dx block");
                self.product(&wt, &dc, 0.0, &mut dxv);
            }
            // dcol = W^T · dout_i, then col2im into dx_i
            None => {
                let ckk = g.col_rows();
                let mut dc = ArrayViewMut2::from_shape((ckk, g.col_cols()), &mut dcol[..]).expect("dcol");
                let d = ArrayView2::from_shape((self.filters, g.col_cols()), di).expect("dout block");
                self.product(&w.t(), &d, 0.0, &mut dc);
                col2im_chw(dcol, g, dxi);
            }
        }
    }
}

/// Whether the lowered image is the image itself: a 1x1 stride-1 convolution without
/// padding.
fn lowering_is_identity(g: &ConvGeometry) -> bool {
    g.fh == 1 && g.fw == 1 && g.stride == 1 && g.pad == 0
}

/// Scratch values [`lowered`] needs.
fn lowered_len(g: &ConvGeometry) -> usize {
    if lowering_is_identity(g) {
        0
    } else {
        g.col_rows() * g.col_cols()
    }
}

/// The image `x` `(C, H, W)` lowered to `(C*FH*FW, OH*OW)`: `x` itself where that is the
/// same, else [`im2col_chw`] into `scratch`.
fn lowered<'a>(x: &'a [f32], g: &ConvGeometry, scratch: &'a mut [f32]) -> &'a [f32] {
    if lowering_is_identity(g) {
        x
    } else {
        im2col_chw(x, g, scratch);
        scratch
    }
}

/// For a stride-1 convolution with square filters and `pad < FH`, `dL/dx` is itself a
/// stride-1 convolution: of `dout` `(FN, OH, OW)`, padded by `FH - 1 - pad`, with the
/// filters turned by 180 degrees and their channel axes swapped, `W'` `(C, FN, FH, FW)`.
/// Returns that convolution's geometry and `W'`; `None` when the shortcut does not apply
/// (the general `W^T · dout` then `col2im` is used).
fn transposed_convolution(w: &[f32], f: usize, g: &ConvGeometry) -> Option<(ConvGeometry, Vec<f32>)> {
    let (c, fh, fw) = (g.c, g.fh, g.fw);
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
    let mut wt = vec![0.0f32; c * f * kk];
    for (fi, filter) in w.chunks_exact(c * kk).enumerate() {
        for (ci, src) in filter.chunks_exact(kk).enumerate() {
            let dst = &mut wt[(ci * f + fi) * kk..][..kk];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    Some((gt, wt))
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

/// What a group of images' output gradients go through before the convolution's
/// backward: nothing, the ReLU's backward (its mask for the group), or the pooling's and
/// the ReLU's (the codes for the group).
#[derive(Clone, Copy)]
enum Backward<'a> {
    Plain,
    Relu(&'a [bool]),
    ReluPool(&'a [u8]),
}

/// The ReLU a forward pass applies to each image's output as it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relu {
    /// None.
    None,
    /// `max(0, y)`.
    Plain,
    /// `max(0, y)`, keeping where `y <= 0`.
    Masked,
}

impl Relu {
    /// Applies this ReLU to one image's output at `isa`, writing its mask into `mask`
    /// when masked (a NaN becomes 0 with its mask `false`, as `dl-layers`' `Relu` makes
    /// it).
    fn apply(self, isa: Isa, values: &mut [f32], mask: Option<&mut [bool]>) {
        match (self, mask) {
            (Relu::None, _) => {}
            (Relu::Masked, Some(mask)) => crate::relu::forward_masked(isa, values, mask),
            _ => crate::relu::forward(isa, values),
        }
    }
}

/// Clears `buf` and returns it as initialised values.
fn zeroed(buf: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    buf.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written, and `[MaybeUninit<f32>]` and `[f32]` have
    // the same layout.
    unsafe { &mut *(buf as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Merges the groups' sums into `parts[0]` pairwise, in a tree whose shape depends only
/// on the number of groups (so the result does not depend on the thread count): each
/// sum is that of its two halves, the first `len / 2` groups and the rest. The tree is
/// evaluated value by value, a chunk of values at a time, chunks in parallel: each
/// group's sums are read once and the result written once (the pairwise merges of whole
/// accumulators read and wrote every intermediate sum too).
fn merge_tree(parts: &mut [GradientAccumulator]) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    for p in rest {
        first.check_same_shape(p);
    }
    // (accumulators of no images: zeros)
    for p in parts.iter_mut() {
        p.written_sums();
    }
    let Some((first, rest)) = parts.split_first_mut() else {
        return;
    };
    let chunks = |out: &mut [f32], c: usize, others: &[&[f32]]| {
        let len = out.len();
        let range = c * MERGE_CHUNK..c * MERGE_CHUNK + len;
        let mut own = [0.0f32; MERGE_CHUNK];
        own[..len].copy_from_slice(out);
        let part = |i: usize| {
            if i == 0 {
                &own[..len]
            } else {
                &others[i - 1][range.clone()]
            }
        };
        tree_sum(&part, 0..others.len() + 1, out);
    };
    let sums: Vec<&[f32]> = rest.iter().map(|p| &p.sums[..]).collect();
    first
        .sums
        .par_chunks_mut(MERGE_CHUNK)
        .enumerate()
        .for_each(|(c, out)| chunks(out, c, &sums));
    let dbs: Vec<&[f32]> = rest.iter().map(|p| &p.db[..]).collect();
    for (c, out) in first.db.chunks_mut(MERGE_CHUNK).enumerate() {
        chunks(out, c, &dbs);
    }
}

/// Values per chunk of [`merge_tree`]'s evaluation (each level of the tree keeps one on
/// the stack).
const MERGE_CHUNK: usize = 256;

/// `out = ` the sum of the parts `part(i)`, `i` in `parts` (slices of `out`'s length, at
/// most [`MERGE_CHUNK`]; `parts` not empty), as the sum of the first `len / 2` and the
/// sum of the rest, recursively.
fn tree_sum<'a>(part: &impl Fn(usize) -> &'a [f32], parts: std::ops::Range<usize>, out: &mut [f32]) {
    if parts.len() == 1 {
        out.copy_from_slice(part(parts.start));
        return;
    }
    let mid = parts.start + parts.len() / 2;
    tree_sum(part, parts.start..mid, out);
    let mut other = [0.0f32; MERGE_CHUNK];
    let other = &mut other[..out.len()];
    tree_sum(part, mid..parts.end, other);
    for (o, r) in out.iter_mut().zip(&*other) {
        *o += r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{conv2d_reference, im2col_reference};
    use crate::testing::random4;
    use ndarray::{Array1, Array4};

    /// `dL/dx` by its definition, in f64: every output position sends `W · dout` back to
    /// the inputs its window covered.
    fn input_gradient_reference(w: &Array4<f32>, dout: &Array4<f32>, g: &ConvGeometry) -> Array4<f64> {
        let (n, f) = (dout.shape()[0], dout.shape()[1]);
        let mut dx = Array4::<f64>::zeros((n, g.c, g.h, g.w));
        for ni in 0..n {
            for fi in 0..f {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let d = f64::from(dout[[ni, fi, oy, ox]]);
                        for ci in 0..g.c {
                            for ky in 0..g.fh {
                                for kx in 0..g.fw {
                                    let y = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let x = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if y >= 0 && x >= 0 && (y as usize) < g.h && (x as usize) < g.w {
                                        dx[[ni, ci, y as usize, x as usize]] += d * f64::from(w[[fi, ci, ky, kx]]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        dx
    }

    fn close(got: f32, want: f64, scale: f64, what: &str) {
        assert!(
            (f64::from(got) - want).abs() <= 1e-4 * scale,
            "{what}: {got} vs {want} (scale {scale})"
        );
    }

    /// A plan with bf16 products by a GEMM kernel runs every pass lowered, with products
    /// of rounded operands (the f32 lowered plan on rounded operands, up to the order of
    /// the additions; `vdpbf16ps` bit for bit as its plain-Rust twin); `Rounded` leaves
    /// the plan as it was.
    #[test]
    fn a_plan_with_bf16_products_multiplies_rounded_operands_on_the_lowered_path() {
        let round = |v: &[f32]| v.iter().map(|&x| crate::lowp::round_bf16(x)).collect::<Vec<f32>>();
        // padded 3x3 (the transposed-convolution dx), stride 2 (col2im), with and without bias
        for (c, f, h, stride, pad) in [(3, 5, 7, 1, 1), (4, 3, 9, 2, 1)] {
            let g = ConvGeometry::new(c, h, h, 3, 3, stride, pad).unwrap();
            let n = 5;
            let w = random4((f, c, 3, 3), 1).into_raw_vec_and_offset().0;
            let x = random4((n, c, h, h), 2).into_raw_vec_and_offset().0;
            let bias: Vec<f32> = (0..f).map(|i| 0.1 * i as f32 - 0.2).collect();
            let dout = random4((n, f, g.out_h, g.out_w), 3).into_raw_vec_and_offset().0;
            let plan = ConvPlan::new(g, f, ConvAlgo::Auto);
            let rounded = plan.clone().with_bf16(Bf16Kernel::Rounded);
            let fields = |p: &ConvPlan| (p.g, p.filters, p.algo, p.isa, p.bf16);
            assert_eq!(fields(&rounded), fields(&plan));
            let run = |p: ConvPlan, w: &[f32], x: &[f32], dout: &[f32], b: Option<&[f32]>| {
                let (y, saved) = p.forward(w, b, x);
                let (mut dw, mut db) = (vec![f32::NAN; w.len()], vec![f32::NAN; f]);
                let dx = p.backward(w, &saved, x, dout, true, Some(&mut dw), Some(&mut db));
                (y, dx, dw, db, saved.kernel_name())
            };
            for b in [Some(&bias[..]), None] {
                let want = run(
                    ConvPlan::new(g, f, ConvAlgo::Lowered),
                    &round(&w),
                    &round(&x),
                    &round(&dout),
                    b,
                );
                let scalar = run(plan.clone().with_bf16(Bf16Kernel::Scalar), &w, &x, &dout, b);
                assert_eq!(scalar.4, "lowered");
                let close = |a: &[f32], b: &[f32], what: &str| {
                    assert_eq!(a.len(), b.len(), "{what}: length");
                    for (p, q) in a.iter().zip(b) {
                        assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{what}: {p} vs {q}");
                    }
                };
                close(&scalar.0, &want.0, "forward");
                // and against the seven-loop definition, which shares no code with the plan
                let (xr, wr) = (round(&x), round(&w));
                let zeros = vec![0.0f32; f];
                let reference = conv2d_reference(
                    &ndarray::ArrayView4::from_shape((n, c, h, h), &xr).unwrap(),
                    &ndarray::ArrayView4::from_shape((f, c, 3, 3), &wr).unwrap(),
                    &ndarray::ArrayView1::from(b.unwrap_or(&zeros)),
                    stride,
                    pad,
                );
                close(&scalar.0, reference.as_slice().unwrap(), "forward by definition");
                close(&scalar.1, &want.1, "dx");
                close(&scalar.2, &want.2, "dW");
                // the bias gradient has no products: the sum of the upstream gradient
                let plain = run(ConvPlan::new(g, f, ConvAlgo::Lowered), &w, &x, &dout, b);
                close(&scalar.3, &plain.3, "db");
                if Bf16Kernel::Avx512.supported() {
                    let vector = run(plan.clone().with_bf16(Bf16Kernel::Avx512), &w, &x, &dout, b);
                    for (v, s) in [(&vector.0, &scalar.0), (&vector.1, &scalar.1), (&vector.2, &scalar.2)] {
                        assert_eq!(
                            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            s.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
    }

    /// `forward_relu` is `forward` then `max(0, y)`, bit for bit, on every path: the
    /// lowered one (stride 2, and `Lowered`), the direct kernel and Winograd, at every
    /// level this CPU runs; a NaN output becomes 0 as the ReLU layer makes it.
    #[test]
    fn forward_relu_is_the_forward_then_the_relu_on_every_path() {
        // (C, H, FN, stride): Winograd under Auto (16 x 32 channels), the direct kernel
        // (1 channel), stride 2 (lowered)
        for (c, h, f, stride) in [(16, 7, 32, 1), (1, 9, 5, 1), (3, 9, 4, 2)] {
            let g = ConvGeometry::new(c, h, h, 3, 3, stride, 1).unwrap();
            let n = 3;
            let w = random4((f, c, 3, 3), 4).into_raw_vec_and_offset().0;
            let mut x = random4((n, c, h, h), 5).into_raw_vec_and_offset().0;
            let bias: Vec<f32> = (0..f).map(|i| 0.2 * i as f32 - 0.3).collect();
            for algo in [ConvAlgo::Auto, ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd] {
                for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
                    let plan = ConvPlan {
                        isa,
                        ..ConvPlan::new(g, f, algo)
                    };
                    for b in [Some(&bias[..]), None] {
                        let (y, _) = plan.forward(&w, b, &x);
                        let (fused, saved) = plan.forward_relu(&w, b, &x);
                        assert!(y.iter().any(|v| *v < 0.0) && y.iter().any(|v| *v > 0.0));
                        let want: Vec<u32> = y.iter().map(|v| v.max(0.0).to_bits()).collect();
                        let got: Vec<u32> = fused.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(got, want, "{algo:?} at {isa} ({})", saved.kernel_name());
                    }
                }
            }
            // a NaN in the input makes NaN outputs, which the ReLU turns to 0
            x[0] = f32::NAN;
            let (fused, _) = ConvPlan::new(g, f, ConvAlgo::Auto).forward_relu(&w, None, &x);
            assert!(fused.iter().all(|v| *v >= 0.0), "a NaN passed the ReLU");
        }
    }

    /// `forward_relu_masked` is `forward` then the book's `Relu` in training (`max(0, y)`,
    /// mask `y <= 0`), and the backward of what it saved is the plain backward of the
    /// masked gradient, bit for bit, on every path, over more than one group of images.
    #[test]
    fn the_masked_relu_is_the_relu_around_the_plain_pass_both_ways_on_every_path() {
        for (c, h, f, stride) in [(16, 7, 32, 1), (1, 9, 5, 1), (3, 9, 4, 2)] {
            let g = ConvGeometry::new(c, h, h, 3, 3, stride, 1).unwrap();
            let n = GROUP + 2;
            let w = random4((f, c, 3, 3), 4).into_raw_vec_and_offset().0;
            let mut x = random4((n, c, h, h), 5).into_raw_vec_and_offset().0;
            x[1] = f32::NAN; // NaN outputs: 0 forward, the gradient passes (mask false)
            let bias: Vec<f32> = (0..f).map(|i| 0.2 * i as f32 - 0.3).collect();
            let out_len = f * g.out_h * g.out_w;
            let dout = random4((n, f, g.out_h, g.out_w), 6).into_raw_vec_and_offset().0;
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for algo in [ConvAlgo::Auto, ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd] {
                for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
                    let plan = ConvPlan {
                        isa,
                        ..ConvPlan::new(g, f, algo)
                    };
                    let (y, plain) = plan.forward(&w, Some(&bias), &x);
                    let (fused, saved) = plan.forward_relu_masked(&w, Some(&bias), &x, vec![true; 7]);
                    let at = format!("{algo:?} at {isa} ({})", saved.kernel_name());
                    assert!(y.iter().any(|v| *v < 0.0) && y.iter().any(|v| *v > 0.0) && y.iter().any(|v| v.is_nan()));
                    let want: Vec<f32> = y.iter().map(|v| v.max(0.0)).collect();
                    assert_eq!(bits(&fused), bits(&want), "{at}");
                    let mask: Vec<bool> = y.iter().map(|v| *v <= 0.0).collect();
                    assert_eq!(saved.relu_mask.as_deref(), Some(&mask[..]), "{at}");
                    assert_eq!(saved.clone().into_relu_mask().as_deref(), Some(&mask[..]), "{at}");
                    assert_eq!(plain.relu_mask, None);
                    let masked: Vec<f32> = dout.iter().zip(&mask).map(|(d, m)| if *m { 0.0 } else { *d }).collect();
                    let (mut dw0, mut db0) = (vec![0.0; w.len()], vec![0.0; f]);
                    let (mut dw1, mut db1) = (vec![0.0; w.len()], vec![0.0; f]);
                    let dx0 = plan.backward(&w, &plain, &x, &masked, true, Some(&mut dw0), Some(&mut db0));
                    let dx1 = plan.backward(&w, &saved, &x, &dout, true, Some(&mut dw1), Some(&mut db1));
                    assert_eq!(bits(&dx1), bits(&dx0), "dx, {at}");
                    assert_eq!(bits(&dw1), bits(&dw0), "dW, {at}");
                    assert_eq!(bits(&db1), bits(&db0), "db, {at}");
                    // the last group's images are masked by their own part of the mask
                    assert!(mask[(GROUP + 1) * out_len..].iter().any(|m| *m));
                }
            }
        }
    }

    /// The convolution with its ReLU and 2x2 pooling in one pass is the three passes one
    /// after another, forward and backward, bit for bit, on every path, over more than
    /// one group of images; ties in the windows (a constant channel) and NaN included.
    #[test]
    fn the_pooled_pass_is_the_relu_and_the_pooling_after_the_plain_pass_on_every_path() {
        for (c, h, f, stride) in [(16, 8, 32, 1), (1, 10, 5, 1), (3, 7, 4, 2)] {
            let g = ConvGeometry::new(c, h, h, 3, 3, stride, 1).unwrap();
            let n = GROUP + 2;
            let mut w = random4((f, c, 3, 3), 7).into_raw_vec_and_offset().0;
            // the last filter sees nothing: its planes are its bias, all ties
            w[(f - 1) * c * 9..].fill(0.0);
            let mut x = random4((n, c, h, h), 8).into_raw_vec_and_offset().0;
            x[1] = f32::NAN;
            let bias: Vec<f32> = (0..f).map(|i| 0.2 * i as f32 - 0.3).collect();
            let (ph, pw) = (g.out_h / 2, g.out_w / 2);
            let dout = random4((n, f, ph, pw), 9).into_raw_vec_and_offset().0;
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for algo in [ConvAlgo::Auto, ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd] {
                for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
                    let plan = ConvPlan {
                        isa,
                        ..ConvPlan::new(g, f, algo)
                    };
                    assert!(plan.pools_2x2());
                    let (y, relu) = plan.forward_relu_masked(&w, Some(&bias), &x, Vec::new());
                    let (planes, plane) = (n * f, g.out_h * g.out_w);
                    let (mut pooled, mut a) = (vec![0.0f32; planes * ph * pw], vec![0u32; planes * ph * pw]);
                    for ((p, o), a) in y
                        .chunks(plane)
                        .zip(pooled.chunks_mut(ph * pw))
                        .zip(a.chunks_mut(ph * pw))
                    {
                        crate::pool::max_pool_2x2(Isa::Scalar, p, g.out_w, ph, pw, o, a);
                    }
                    let fused = plan.forward_relu_pool(&w, Some(&bias), &x);
                    let (fused_t, saved) = plan.forward_relu_pool_masked(&w, Some(&bias), &x, vec![7; 5]);
                    let at = format!("{algo:?} at {isa} ({})", saved.kernel_name());
                    assert_eq!(bits(&fused), bits(&pooled), "{at}");
                    assert_eq!(bits(&fused_t), bits(&pooled), "{at}");
                    assert!(saved.pooled() && !relu.pooled());
                    // the codes: the place of each window's maximum, or none where the
                    // ReLU's mask is set there
                    let mask = relu.relu_mask.as_deref().unwrap();
                    let want: Vec<u8> = a
                        .iter()
                        .enumerate()
                        .map(|(k, &a)| {
                            let (row, col) = (a as usize / g.out_w, a as usize % g.out_w);
                            let plane = k / (ph * pw);
                            match mask[plane * g.out_h * g.out_w + a as usize] {
                                true => crate::pool::NO_GRADIENT,
                                false => (2 * (row % 2) + col % 2) as u8,
                            }
                        })
                        .collect();
                    assert!(want.contains(&crate::pool::NO_GRADIENT) && want.contains(&3));
                    assert_eq!(saved.clone().into_pool_codes(), Some(want), "{at}");
                    let unpooled = crate::pool::max_unpool_2x2(Isa::Scalar, planes, g.out_w, ph, pw, &dout, &a);
                    let (mut dw0, mut db0) = (vec![0.0; w.len()], vec![0.0; f]);
                    let (mut dw1, mut db1) = (vec![0.0; w.len()], vec![0.0; f]);
                    let dx0 = plan.backward(&w, &relu, &x, &unpooled, true, Some(&mut dw0), Some(&mut db0));
                    let dx1 = plan.backward(&w, &saved, &x, &dout, true, Some(&mut dw1), Some(&mut db1));
                    assert_eq!(bits(&dx1), bits(&dx0), "dx, {at}");
                    assert_eq!(bits(&dw1), bits(&dw0), "dW, {at}");
                    assert_eq!(bits(&db1), bits(&db0), "db, {at}");
                    assert!(dx1.iter().any(|v| *v != 0.0) && dw1.iter().any(|v| *v != 0.0));
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "ConvPlan: no 2x2 pooling of 7 x 7 outputs")]
    fn the_pooled_pass_wants_even_outputs() {
        // both sides even, not one
        for (h, w, even) in [(4, 6, true), (4, 5, false), (5, 4, false)] {
            let g = ConvGeometry::new(2, h, w, 3, 3, 1, 1).unwrap();
            assert_eq!(ConvPlan::new(g, 2, ConvAlgo::Auto).pools_2x2(), even, "{h} x {w}");
        }
        let g = ConvGeometry::new(2, 7, 7, 3, 3, 1, 1).unwrap();
        ConvPlan::new(g, 2, ConvAlgo::Auto).forward_relu_pool(&[0.5; 36], None, &[1.0; 98]);
    }

    #[test]
    #[should_panic(expected = "ConvPlan: dout length")]
    fn a_pooled_backward_wants_the_pooled_gradient() {
        let g = ConvGeometry::new(2, 4, 4, 3, 3, 1, 1).unwrap();
        let plan = ConvPlan::new(g, 2, ConvAlgo::Auto);
        let (w, x) = ([0.5; 36], [1.0; 32]);
        let (_, saved) = plan.forward_relu_pool_masked(&w, None, &x, Vec::new());
        plan.backward(&w, &saved, &x, &[1.0; 32], true, None, None);
    }

    /// The chunked merge is the pairwise merge of whole accumulators, bit for bit, for
    /// any number of groups (values whose sums round differently in another order).
    #[test]
    fn the_merge_tree_sums_as_the_pairwise_merges() {
        fn pairwise(parts: &mut [GradientAccumulator]) {
            if parts.len() < 2 {
                return;
            }
            let (left, right) = parts.split_at_mut(parts.len() / 2);
            pairwise(left);
            pairwise(right);
            left[0].merge(&right[0]);
        }
        // 16 positions x 16 channels (9 rounded up) x 304 filters (300 rounded up): 304
        // chunks; 300 biases: a chunk and part of one
        let g = ConvGeometry::new(9, 6, 6, 3, 3, 1, 1).unwrap();
        let k = crate::WinogradConv::with_isa(&vec![0.5; 300 * 81], 300, &g, Isa::Scalar).unwrap();
        let acc = |seed: usize| {
            let mut a = k.gradient_accumulator();
            a.written_sums();
            for (i, v) in a.sums.iter_mut().chain(a.db.iter_mut()).enumerate() {
                let j = i * 31 + seed * 17;
                // every fifth value: 1e8, -1e8 or 1 by the group, whose sums round
                // differently by the order of the additions
                let big = [1e8, -1e8, 1.0][seed % 3];
                *v = if j.is_multiple_of(5) {
                    big
                } else {
                    (j % 97) as f32 * 1e-3
                };
            }
            a
        };
        assert!(!k.gradient_accumulator().db.len().is_multiple_of(MERGE_CHUNK));
        for groups in [1, 2, 3, 5, 8, 20, 21] {
            let mut want: Vec<_> = (0..groups).map(acc).collect();
            let mut got = want.clone();
            pairwise(&mut want);
            merge_tree(&mut got);
            let bits = |a: &GradientAccumulator| a.sums.iter().chain(&a.db).map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got[0]), bits(&want[0]), "{groups} groups");
        }
        let mut left: Vec<_> = (0..3).map(acc).collect();
        let mut right: Vec<_> = (0..3).map(acc).collect();
        pairwise(&mut left);
        merge_tree(&mut right);
        // the sum in another order, (0 + 1) + 2 rather than 0 + (1 + 2), differs
        let mut other = acc(0);
        other.merge(&acc(1));
        other.merge(&acc(2));
        assert!(other.sums != left[0].sums && left[0].sums == right[0].sums);
        // a group of no images (empty sums) counts as zeros
        let mut zeros = k.gradient_accumulator();
        zeros.written_sums();
        let mut want = vec![acc(0), zeros, acc(1)];
        let mut got = vec![acc(0), k.gradient_accumulator(), acc(1)];
        assert!(got[1].sums.is_empty() && !want[1].sums.is_empty());
        pairwise(&mut want);
        merge_tree(&mut got);
        let bits = |a: &GradientAccumulator| a.sums.iter().chain(&a.db).map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got[0]), bits(&want[0]));
    }

    #[test]
    fn every_algorithm_computes_the_reference_forward_and_gradients() {
        // (N, C, H, W, FN, FH, FW, stride, pad): batches of one group of images and of
        // two (GROUP = 5), 3x3 on the kernels without lowering (stride 1, >= 8 channels for
        // Winograd), 1x1 without lowering at all, stride 2 and 3, 5x5, pad 2
        let cases = [
            (5, 8, 7, 6, 5, 3, 3, 1, 1),
            (1, 1, 9, 9, 4, 3, 3, 1, 1),
            (9, 3, 6, 5, 17, 3, 3, 1, 2),
            (4, 6, 5, 5, 3, 1, 1, 1, 0),
            (3, 4, 8, 7, 5, 3, 3, 2, 1),
            (2, 2, 9, 9, 3, 3, 2, 3, 1),
            (2, 2, 7, 7, 3, 5, 5, 1, 2),
            // 1x1 with stride 2 or padding, 1x3 and 3x1 without padding: none of them is
            // its own column matrix
            (2, 4, 6, 6, 3, 1, 1, 2, 0),
            (2, 2, 4, 4, 3, 1, 1, 1, 1),
            (2, 3, 6, 7, 4, 1, 3, 1, 0),
            (2, 3, 6, 7, 4, 3, 1, 1, 0),
            // under Auto: the direct kernel forward and Winograd's filter gradient (8
            // channels, 6 filters, 9x9), and the other way round (16 to 32, 7x7)
            (3, 8, 9, 9, 6, 3, 3, 1, 1),
            (2, 16, 7, 7, 32, 3, 3, 1, 1),
        ];
        for (i, &(n, c, h, w, f, fh, fw, stride, pad)) in cases.iter().enumerate() {
            let g = ConvGeometry::new(c, h, w, fh, fw, stride, pad).unwrap();
            let x = random4((n, c, h, w), 10 + i as u64);
            let wt = random4((f, c, fh, fw), 20 + i as u64);
            let b = Array1::from_shape_fn(f, |j| j as f32 * 0.5 - 1.0);
            let dout = random4((n, f, g.out_h, g.out_w), 30 + i as u64);
            let want_y = conv2d_reference(&x.view(), &wt.view(), &b.view(), stride, pad);
            let no_bias = conv2d_reference(&x.view(), &wt.view(), &Array1::zeros(f).view(), stride, pad);
            let want_dx = input_gradient_reference(&wt, &dout, &g);
            // dW = Σ_n dout_n · col_n^T, db = Σ_n row sums of dout_n, in f64
            let k = g.col_rows();
            let mut want_dw = vec![0.0f64; f * k];
            let mut want_db = vec![0.0f64; f];
            for ni in 0..n {
                let xi = x.slice(ndarray::s![ni..ni + 1, .., .., ..]);
                let col = im2col_reference(&xi, fh, fw, stride, pad); // (OH*OW, K)
                for fi in 0..f {
                    for p in 0..g.out_h * g.out_w {
                        let d = f64::from(dout[[ni, fi, p / g.out_w, p % g.out_w]]);
                        want_db[fi] += d;
                        for kj in 0..k {
                            want_dw[fi * k + kj] += d * f64::from(col[[p, kj]]);
                        }
                    }
                }
            }
            let scale = |v: &mut dyn Iterator<Item = f64>| v.fold(1.0f64, |m, a| m.max(a.abs()));
            let (sy, sdx) = (
                scale(&mut want_y.iter().map(|&v| f64::from(v))),
                scale(&mut want_dx.iter().copied()),
            );
            let (sdw, sdb) = (scale(&mut want_dw.iter().copied()), scale(&mut want_db.iter().copied()));
            let levels = Isa::ALL.into_iter().filter(|isa| isa.runs_here());
            let algos = [ConvAlgo::Lowered, ConvAlgo::Auto, ConvAlgo::Direct, ConvAlgo::Winograd];
            for (isa, algo) in levels.flat_map(|isa| algos.map(|algo| (isa, algo))) {
                let what = |s: &str| format!("case {i}, {algo:?} at {isa}: {s}");
                let plan = ConvPlan::new(g, f, algo).with_isa(isa);
                let ws = wt.as_slice().unwrap();
                let (y, saved) = plan.forward(ws, Some(b.as_slice().unwrap()), x.as_slice().unwrap());
                assert_eq!(y.len(), want_y.len(), "{}", what("y length"));
                for (a, e) in y.iter().zip(want_y.iter()) {
                    close(*a, f64::from(*e), sy, &what("y"));
                }
                let (y0, _) = plan.forward(ws, None, x.as_slice().unwrap());
                assert_eq!(y0.len(), want_y.len(), "{}", what("y length"));
                for (a, e) in y0.iter().zip(no_bias.iter()) {
                    close(*a, f64::from(*e), sy, &what("y without bias"));
                }
                // dW and db are stored, not added: they start as garbage
                let mut dw = vec![7.0f32; f * k];
                let mut db = vec![-3.0f32; f];
                let dx1 = plan.backward(
                    ws,
                    &saved,
                    x.as_slice().unwrap(),
                    dout.as_slice().unwrap(),
                    true,
                    Some(&mut dw),
                    Some(&mut db),
                );
                assert_eq!(dx1.len(), want_dx.len(), "{}", what("dx length"));
                for (a, e) in dx1.iter().zip(want_dx.iter()) {
                    close(*a, *e, sdx, &what("dx"));
                }
                for (a, e) in dw.iter().zip(&want_dw) {
                    close(*a, *e, sdw, &what("dW"));
                }
                for (a, e) in db.iter().zip(&want_db) {
                    close(*a, *e, sdb, &what("db"));
                }
                // without the input gradient: zeros, and the same dW without db
                let mut dw2 = vec![1.0f32; f * k];
                let dx = plan.backward(
                    ws,
                    &saved,
                    x.as_slice().unwrap(),
                    dout.as_slice().unwrap(),
                    false,
                    Some(&mut dw2),
                    None,
                );
                assert!(dx.iter().all(|&v| v == 0.0), "{}", what("dx not needed"));
                assert_eq!(dx.len(), n * c * h * w);
                assert_eq!(dw2, dw, "{}", what("dW without dx"));
                // a frozen layer: the same dx, no filter gradient, db left alone
                let mut db3 = vec![5.0f32; f];
                let dx3 = plan.backward(
                    ws,
                    &saved,
                    x.as_slice().unwrap(),
                    dout.as_slice().unwrap(),
                    true,
                    None,
                    Some(&mut db3),
                );
                assert_eq!(dx3, dx1, "{}", what("dx of a frozen layer"));
                assert!(db3.iter().all(|&v| v == 5.0), "{}", what("db of a frozen layer"));
            }
        }
    }

    /// Where the filter gradient's kernel pays, a plan's dW is that kernel's, bit for bit
    /// (one image: one group, nothing to merge), not the lowered product's.
    #[test]
    fn the_filter_gradient_is_the_fast_kernels_where_it_pays() {
        let g = ConvGeometry::new(16, 8, 8, 3, 3, 1, 1).unwrap();
        let f = 16;
        let x = random4((1, 16, 8, 8), 41);
        let wt = random4((f, 16, 3, 3), 42);
        let dout = random4((1, f, 8, 8), 43);
        let (xs, ws, ds) = (x.as_slice().unwrap(), wt.as_slice().unwrap(), dout.as_slice().unwrap());
        let mut compared = 0;
        for isa in Isa::supported_levels() {
            for algo in [ConvAlgo::Direct, ConvAlgo::Winograd] {
                let plan = ConvPlan::new(g, f, algo).with_isa(isa);
                let (_, saved) = plan.forward(ws, None, xs);
                let Some(forward) = &saved.kernel else { continue };
                let k = plan.gradient_kernel(ws, forward);
                if !k.gradient_pays() {
                    continue;
                }
                let mut acc = k.gradient_accumulator();
                let mut scratch = vec![0.0f32; k.gradient_scratch_len()];
                k.weight_gradient_image(xs, ds, &mut acc, &mut scratch);
                let (mut want_dw, mut want_db) = (vec![0.0f32; f * g.col_rows()], vec![0.0f32; f]);
                k.add_gradient(&acc, &mut want_dw, &mut want_db);
                let (mut dw, mut db) = (vec![0.0f32; f * g.col_rows()], vec![0.0f32; f]);
                plan.backward(ws, &saved, xs, ds, false, Some(&mut dw), Some(&mut db));
                assert_eq!((dw, db), (want_dw, want_db), "{algo:?} at {isa}");
                compared += 1;
            }
        }
        // the direct kernel's gradient pays from 24 rows of dW^T on (here 144), at every
        // level
        assert!(compared >= Isa::supported_levels().len(), "{compared} kernels compared");
    }

    /// A backward takes scratch only for the gradients asked for: none to lower its input
    /// without dW (a frozen layer), none for the input gradient without dx (a first
    /// layer). Each backward runs alone on a new one-thread pool, whose buffers it finds
    /// empty.
    #[test]
    fn a_backward_takes_scratch_only_for_the_gradients_asked() {
        // stride 2: every pass lowered
        let g = ConvGeometry::new(3, 6, 6, 3, 3, 2, 1).unwrap();
        let f = 4;
        let x = random4((2, 3, 6, 6), 51);
        let wt = random4((f, 3, 3, 3), 52);
        let dout = random4((2, f, g.out_h, g.out_w), 53);
        let (xs, ws, ds) = (x.as_slice().unwrap(), wt.as_slice().unwrap(), dout.as_slice().unwrap());
        let plan = ConvPlan::new(g, f, ConvAlgo::Lowered);
        let (_, saved) = plan.forward(ws, None, xs);
        let scratch_after = |input_gradient: bool, want_dw: bool| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let mut dw = vec![0.0f32; f * g.col_rows()];
            pool.install(|| {
                plan.backward(ws, &saved, xs, ds, input_gradient, want_dw.then_some(&mut dw[..]), None);
            });
            pool.install(|| SCRATCH.with(|c| (c.borrow().0.len(), c.borrow().1.len())))
        };
        let lowered = g.col_rows() * g.col_cols();
        assert_eq!(scratch_after(true, true), (lowered, lowered));
        assert_eq!(scratch_after(true, false), (0, lowered), "no dW");
        assert_eq!(scratch_after(false, true), (lowered, 0), "no dx");
        // a 1x1 stride-1 convolution's lowered image is the image itself: no scratch to
        // lower it, forward or backward
        let g1 = ConvGeometry::new(3, 6, 6, 1, 1, 1, 0).unwrap();
        let w1 = random4((f, 3, 1, 1), 54);
        let d1 = random4((2, f, 6, 6), 55);
        let plan1 = ConvPlan::new(g1, f, ConvAlgo::Lowered);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let mut dw = vec![0.0f32; f * 3];
        pool.install(|| {
            let (_, saved) = plan1.forward(w1.as_slice().unwrap(), None, xs);
            plan1.backward(
                w1.as_slice().unwrap(),
                &saved,
                xs,
                d1.as_slice().unwrap(),
                false,
                Some(&mut dw),
                None,
            );
        });
        assert_eq!(pool.install(|| SCRATCH.with(|c| c.borrow().0.len())), 0, "1x1");
    }

    /// A stride-1 convolution's input gradient is the convolution of `dout`, padded by
    /// `FH - 1 - pad`, with the filters turned by 180 degrees and their channel axes
    /// swapped: on the lowered path, bit for bit the forward pass of that convolution.
    #[test]
    fn a_stride_one_input_gradient_is_the_turned_filters_convolution() {
        for (c, h, w, f, k, pad) in [(3, 7, 6, 5, 3, 1), (2, 6, 6, 4, 3, 0), (4, 8, 8, 3, 5, 2)] {
            let g = ConvGeometry::new(c, h, w, k, k, 1, pad).unwrap();
            let x = random4((2, c, h, w), 61);
            let wt = random4((f, c, k, k), 62);
            let dout = random4((2, f, g.out_h, g.out_w), 63);
            let plan = ConvPlan::new(g, f, ConvAlgo::Lowered);
            let (_, saved) = plan.forward(wt.as_slice().unwrap(), None, x.as_slice().unwrap());
            let dx = plan.backward(
                wt.as_slice().unwrap(),
                &saved,
                x.as_slice().unwrap(),
                dout.as_slice().unwrap(),
                true,
                None,
                None,
            );
            let turned = Array4::from_shape_fn((c, f, k, k), |(ci, fi, ky, kx)| wt[[fi, ci, k - 1 - ky, k - 1 - kx]]);
            let gt = ConvGeometry::new(f, g.out_h, g.out_w, k, k, 1, k - 1 - pad).unwrap();
            let (want, _) = ConvPlan::new(gt, c, ConvAlgo::Lowered).forward(
                turned.as_slice().unwrap(),
                None,
                dout.as_slice().unwrap(),
            );
            assert_eq!(dx, want, "{c}x{h}x{w}, {f} filters {k}x{k}, pad {pad}");
        }
    }

    #[test]
    fn the_algorithm_decides_the_kernel() {
        let g3 = ConvGeometry::new(16, 8, 8, 3, 3, 1, 1).unwrap();
        let g1 = ConvGeometry::new(1, 8, 8, 3, 3, 1, 1).unwrap();
        let g2 = ConvGeometry::new(16, 8, 8, 3, 3, 2, 1).unwrap();
        let p2 = ConvGeometry::new(16, 8, 8, 1, 1, 2, 0).unwrap();
        let w16 = vec![0.5f32; 32 * 16 * 9];
        let w1 = vec![0.5f32; 4 * 9];
        for isa in Isa::ALL {
            let kernel = |algo: ConvAlgo, w: &[f32], g: &ConvGeometry| {
                algo.kernel_at(isa, w, w.len() / g.col_rows(), g).map(|k| {
                    assert_eq!(k.isa(), isa);
                    k.name()
                })
            };
            assert_eq!(kernel(ConvAlgo::Lowered, &w16, &g3), None);
            assert_eq!(kernel(ConvAlgo::Lowered, &w16, &g2), None);
            for algo in [ConvAlgo::Auto, ConvAlgo::Direct, ConvAlgo::Winograd] {
                assert_eq!(kernel(algo, &w16[..4 * 16], &p2), None, "1x1 stride 2 is lowered");
            }
            if !isa.runs_here() {
                for algo in [ConvAlgo::Auto, ConvAlgo::Direct, ConvAlgo::Winograd] {
                    assert_eq!(kernel(algo, &w16, &g3), None, "{isa} does not run here");
                }
                continue;
            }
            if isa == Isa::Scalar {
                assert_eq!(kernel(ConvAlgo::Auto, &w16, &g3), None, "plain loops lose to the GEMM");
            } else {
                assert_eq!(kernel(ConvAlgo::Auto, &w16, &g3), Some("winograd"));
                let sixteen = if isa == Isa::Avx512 { "winograd" } else { "direct" };
                assert_eq!(
                    kernel(ConvAlgo::Auto, &w16[..16 * 16 * 9], &g3),
                    Some(sixteen),
                    "16 x 16: Winograd pays at AVX-512 only"
                );
                assert_eq!(
                    kernel(ConvAlgo::Auto, &w16[..8 * 16 * 9], &g3),
                    Some("direct"),
                    "16 x 8: Winograd does not pay"
                );
                assert_eq!(
                    kernel(ConvAlgo::Auto, &w1, &g1),
                    Some("direct"),
                    "one channel: Winograd does not pay"
                );
            }
            assert_eq!(kernel(ConvAlgo::Winograd, &w1, &g1), Some("winograd"));
            for algo in [ConvAlgo::Direct, ConvAlgo::Winograd] {
                assert_eq!(kernel(algo, &w16, &g2), Some("direct"), "3x3 stride 2: {algo:?}");
            }
            let auto = (isa != Isa::Scalar).then_some("direct");
            assert_eq!(kernel(ConvAlgo::Auto, &w16, &g2), auto, "3x3 stride 2");
            assert_eq!(kernel(ConvAlgo::Direct, &w16, &g3), Some("direct"));
            let plan = ConvPlan::new(g3, 32, ConvAlgo::Direct).with_isa(isa);
            let (_, saved) = plan.forward(&w16, None, &vec![0.0; 16 * 64]);
            assert_eq!((saved.kernel_name(), saved.kernel_isa()), ("direct", Some(isa)));
        }
        assert_eq!(ConvPlan::new(g3, 32, ConvAlgo::Auto).isa, Isa::active());
        let direct = ConvAlgo::Direct.kernel(&w16, 32, &g3).map(|k| (k.name(), k.isa()));
        assert_eq!(
            direct,
            Some(("direct", Isa::active())),
            "kernel() is kernel_at(Isa::active())"
        );
        let (_, saved) = ConvPlan::new(p2, 4, ConvAlgo::Auto).forward(&w16[..4 * 16], None, &vec![0.0; 16 * 64]);
        assert_eq!((saved.kernel_name(), saved.kernel_isa()), ("lowered", None));
    }

    #[test]
    fn the_filter_gradient_takes_its_own_kernel_under_auto() {
        // 16 to 8 on 8x8: the direct kernel forward, Winograd's gradient; 64 to 64 on
        // 7x7: the other way round; forced algorithms keep the forward's kernel
        let g8 = ConvGeometry::new(16, 8, 8, 3, 3, 1, 1).unwrap();
        let g7 = ConvGeometry::new(64, 7, 7, 3, 3, 1, 1).unwrap();
        let (w8, w7) = (vec![0.25f32; 8 * 16 * 9], vec![0.25f32; 64 * 64 * 9]);
        for isa in Isa::supported_levels().into_iter().filter(|&i| i != Isa::Scalar) {
            let names = |g: ConvGeometry, f: usize, w: &[f32], algo: ConvAlgo| {
                let plan = ConvPlan::new(g, f, algo).with_isa(isa);
                let forward = algo.kernel_at(isa, w, f, &g).map(Arc::from).expect("a kernel");
                let gradient = plan.gradient_kernel(w, &forward);
                assert_eq!(gradient.isa(), isa);
                // the kernel's own filter gradient is taken where it pays: everywhere for
                // Winograd, from 24 rows of dW^T on for the direct kernel
                let pays = gradient.name().starts_with("winograd") || g.col_rows() >= 24;
                assert_eq!(gradient.gradient_pays(), pays, "{} {g:?}", gradient.name());
                (forward.name(), gradient.name())
            };
            assert_eq!(names(g8, 8, &w8, ConvAlgo::Auto), ("direct", "winograd"), "{isa}");
            assert_eq!(names(g7, 64, &w7, ConvAlgo::Auto), ("winograd", "direct"), "{isa}");
            assert_eq!(names(g8, 8, &w8, ConvAlgo::Direct), ("direct", "direct"), "{isa}");
            assert_eq!(
                names(g7, 64, &w7, ConvAlgo::Winograd),
                ("winograd", "winograd"),
                "{isa}"
            );
            let g32 = ConvGeometry::new(32, 14, 14, 3, 3, 1, 1).unwrap();
            let w32 = vec![0.25f32; 32 * 32 * 9];
            // F(4x4, 3x3) forward, its filter gradient F(2x2, 3x3)'s, where its
            // transforms are written (AVX2, AVX-512); F(2x2, 3x3) at the portable level
            let f4 = if matches!(isa, Isa::Avx2 | Isa::Avx512) {
                "winograd-f4"
            } else {
                "winograd"
            };
            assert_eq!(names(g32, 32, &w32, ConvAlgo::Auto), (f4, f4), "{isa}");
            assert_eq!(
                names(g32, 32, &w32, ConvAlgo::Winograd),
                ("winograd", "winograd"),
                "{isa}"
            );
            let w1 = vec![0.25f32; 4 * 9];
            let g1 = ConvGeometry::new(1, 8, 8, 3, 3, 1, 1).unwrap();
            assert_eq!(names(g1, 4, &w1, ConvAlgo::Auto), ("direct", "direct"), "{isa}");
        }
    }

    #[test]
    fn a_kernel_cache_serves_the_same_weights_and_rebuilds_for_any_change() {
        let g = ConvGeometry::new(16, 14, 14, 3, 3, 1, 1).unwrap();
        let g2 = ConvGeometry::new(16, 12, 12, 3, 3, 1, 1).unwrap();
        let mut w = random4((32, 16, 3, 3), 1).into_raw_vec_and_offset().0;
        let x = random4((2, 16, 14, 14), 2).into_raw_vec_and_offset().0;
        let x2 = random4((2, 16, 12, 12), 3).into_raw_vec_and_offset().0;
        for isa in Isa::supported_levels().into_iter().filter(|&i| i != Isa::Scalar) {
            let cache = KernelCache::default();
            let plan =
                |g: ConvGeometry, algo: ConvAlgo| ConvPlan::new(g, 32, algo).with_isa(isa).with_kernel_cache(&cache);
            let kernel = |s: &ConvSaved| s.kernel.clone().expect("a kernel");
            let (y1, s1) = plan(g, ConvAlgo::Auto).forward(&w, None, &x);
            let (y2, s2) = plan(g, ConvAlgo::Auto).forward_relu(&w, None, &x);
            assert!(Arc::ptr_eq(&kernel(&s1), &kernel(&s2)), "{isa}: the same weights");
            let relu: Vec<f32> = y1.iter().map(|v| v.max(0.0)).collect();
            assert_eq!(y2, relu, "{isa}");
            // the last weight changed, in its last bit: a new kernel, the new weights' output
            let last = w.len() - 1;
            w[last] = f32::from_bits(w[last].to_bits() ^ 1);
            let (y3, s3) = plan(g, ConvAlgo::Auto).forward(&w, None, &x);
            assert!(!Arc::ptr_eq(&kernel(&s1), &kernel(&s3)), "{isa}: a changed weight");
            let (want, _) = ConvPlan::new(g, 32, ConvAlgo::Auto).with_isa(isa).forward(&w, None, &x);
            assert_eq!(y3, want, "{isa}");
            // another geometry, then another algorithm: new kernels each
            let (_, s4) = plan(g2, ConvAlgo::Auto).forward(&w, None, &x2);
            assert_eq!(s4.kernel.as_ref().unwrap().geometry(), &g2);
            let (_, s5) = plan(g2, ConvAlgo::Direct).forward(&w, None, &x2);
            assert_eq!((s5.kernel_name(), s5.kernel_isa()), ("direct", Some(isa)));
            // the cache at another level builds that level's kernel
            let other = if isa == Isa::Avx512 { Isa::Avx2 } else { Isa::Scalar };
            let (_, s6) = ConvPlan::new(g2, 32, ConvAlgo::Direct)
                .with_isa(other)
                .with_kernel_cache(&cache)
                .forward(&w, None, &x2);
            assert_eq!(s6.kernel_isa(), Some(other), "{isa} then {other}");
            // bf16 products with the weights of a cached kernel: the lowered path, no
            // kernel from the cache
            let (_, cached) = plan(g2, ConvAlgo::Auto).forward(&w, None, &x2);
            assert!(cached.kernel.is_some(), "{isa}");
            let bf16 = plan(g2, ConvAlgo::Auto).with_bf16(Bf16Kernel::Scalar);
            let (_, s9) = bf16.forward(&w, None, &x2);
            assert_eq!(s9.kernel_name(), "lowered", "{isa}: bf16 products");
            // a clone of the cache is the same cache
            let (_, s7) = ConvPlan::new(g2, 32, ConvAlgo::Direct)
                .with_isa(isa)
                .with_kernel_cache(&cache.clone())
                .forward(&w, None, &x2);
            let (_, s8) = plan(g2, ConvAlgo::Direct).forward(&w, None, &x2);
            assert!(
                Arc::ptr_eq(&kernel(&s7), &kernel(&s8)),
                "{isa}: a clone shares the cache"
            );
        }
    }
}
