use dl_tensor::lowp::round_bf16_slice;
use dl_tensor::{ConvAlgo, ConvGeometry, ConvPlan, ConvSaved, KernelCache, Tensor};

use crate::{check_dout, Bf16Kernel, Init, Layer, LayerError, Op, Param};

/// The book's `Convolution`: filters `W` `(FN, C, FH, FW)`, bias `b` `(FN,)` (or none, as
/// torchvision's convolutions before a batch norm), stride and zero padding. Input
/// `(N, C, H, W)`, output `(N, FN, OH, OW)`.
///
/// The layer describes the convolution; how it is computed (the book's `im2col` + GEMM,
/// the direct or the Winograd kernel, the split over threads, the scratch memory) is the
/// [`ConvPlan`]'s business, chosen by [`ConvAlgo`] ([`Convolution::set_algo`]; the
/// fastest the CPU has by default). The tests compare every algorithm with the book's
/// formulation and with a direct seven-loop convolution.
#[derive(Debug, Clone)]
pub struct Convolution {
    /// Filters `(FN, C, FH, FW)`.
    pub w: Param,
    /// Bias `(FN,)`, or `None` for a convolution without bias.
    pub b: Option<Param>,
    stride: usize,
    pad: usize,
    algo: ConvAlgo,
    /// The book's `self.x`: the input of the last training forward, `(N, C, H, W)`.
    x: Option<Tensor>,
    /// The plan and what it kept from the last training forward.
    cache: Option<(ConvPlan, ConvSaved)>,
    /// Whether `backward` computes `dL/dx` (the first layer of a network need not).
    input_gradient: bool,
    /// Whether `backward` computes `dL/dW` and `dL/db` (not for a frozen layer).
    trainable: bool,
    /// bf16 products, and by which kernel ([`Layer::set_bf16_products`]).
    bf16: Option<Bf16Kernel>,
    /// The filters rounded to bf16 by the last training forward under
    /// [`Bf16Kernel::Rounded`], for `backward`.
    w_bf16: Option<Vec<f32>>,
    /// The kernel the last forward pass built, for the next one with the same weights
    /// (shared by clones: the copies `Network::predict` runs on its threads).
    kernels: KernelCache,
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
            b: Some(Param::new(b)),
            stride,
            pad,
            algo: ConvAlgo::Auto,
            x: None,
            cache: None,
            input_gradient: true,
            trainable: true,
            bf16: None,
            w_bf16: None,
            kernels: KernelCache::default(),
        }
    }

    /// The same convolution without a bias (builder style): `b` is dropped and is no
    /// parameter any more.
    pub fn without_bias(mut self) -> Self {
        self.b = None;
        self
    }

    /// `(FN, C, FH, FW)`.
    fn dims(&self) -> (usize, usize, usize, usize) {
        let s = self.w.value.shape();
        (s[0], s[1], s[2], s[3])
    }

    fn plan(&self, input: &[usize]) -> Result<ConvPlan, LayerError> {
        let (f, c, fh, fw) = self.dims();
        if input.len() != 4 || input[1] != c {
            return Err(LayerError::shape("Convolution", format!("(N, {c}, H, W)"), input));
        }
        let g = ConvGeometry::new(c, input[2], input[3], fh, fw, self.stride, self.pad).map_err(|source| {
            LayerError::Geometry {
                layer: "Convolution".into(),
                source,
            }
        })?;
        Ok(ConvPlan::new(g, f, self.algo).with_kernel_cache(&self.kernels))
    }

    /// The forward pass, with the ReLU after it fused when `relu` (its mask kept for
    /// `backward` in training), and the 2x2 max pooling after that when `pool`.
    fn forward_then(&mut self, x: Tensor, train: bool, relu: bool, pool: bool) -> Result<Tensor, LayerError> {
        let mut plan = self.plan(x.shape())?;
        if let Some(kernel) = self.bf16 {
            plan = plan.with_bf16(kernel);
        }
        let n = x.shape()[0];
        let mut x = crate::into_standard(x);
        let w = self.w.value.as_slice().expect("contiguous W");
        let rounded = (self.bf16 == Some(Bf16Kernel::Rounded)).then(|| {
            round_bf16_slice(x.as_slice_mut().expect("standard layout"));
            let mut w = w.to_vec();
            round_bf16_slice(&mut w);
            w
        });
        let w = rounded.as_deref().unwrap_or(w);
        let b = self.b.as_ref().map(|b| b.value.as_slice().expect("contiguous b"));
        let x_values = x.as_slice().expect("standard layout");
        if pool && !plan.pools_2x2() {
            return Err(LayerError::Invalid {
                layer: "Convolution".into(),
                message: format!("no 2x2 pooling of {} x {} outputs", plan.g.out_h, plan.g.out_w),
            });
        }
        // the last step's mask's or codes' memory (a training forward replaces them)
        let kept = if train {
            self.cache.take().map(|(_, saved)| saved)
        } else {
            None
        };
        let (out, saved) = match (relu, pool, train) {
            (true, true, true) => {
                let codes = kept.and_then(ConvSaved::into_pool_codes);
                plan.forward_relu_pool_masked(w, b, x_values, codes.unwrap_or_default())
            }
            (true, true, false) => (plan.forward_relu_pool(w, b, x_values), ConvSaved::default()),
            (true, false, true) => {
                let mask = kept.and_then(ConvSaved::into_relu_mask);
                plan.forward_relu_masked(w, b, x_values, mask.unwrap_or_default())
            }
            (true, false, false) => plan.forward_relu(w, b, x_values),
            (false, _, _) => plan.forward(w, b, x_values),
        };
        let (g, filters) = (plan.g, plan.filters);
        let (oh, ow) = if pool {
            (g.out_h / 2, g.out_w / 2)
        } else {
            (g.out_h, g.out_w)
        };
        if train {
            self.x = Some(x);
            self.cache = Some((plan, saved));
            self.w_bf16 = rounded;
        }
        Ok(Tensor::from_shape_vec(vec![n, filters, oh, ow], out).expect("output shape"))
    }

    /// A copy without the input, the plan and the masks or codes the last training
    /// forward kept ([`Layer::clone_for_inference`]).
    pub(crate) fn inference_copy(&self) -> Convolution {
        Convolution {
            w: self.w.clone(),
            b: self.b.clone(),
            stride: self.stride,
            pad: self.pad,
            algo: self.algo,
            x: None,
            cache: None,
            input_gradient: self.input_gradient,
            trainable: self.trainable,
            bf16: self.bf16,
            w_bf16: None,
            kernels: self.kernels.clone(),
        }
    }

    /// Which algorithm computes the convolution ([`ConvAlgo::Auto`] by default: the
    /// fastest this CPU has). [`ConvAlgo::Lowered`] is the book's `im2col` + GEMM.
    pub fn set_algo(&mut self, algo: ConvAlgo) {
        self.algo = algo;
    }

    /// The algorithm set by [`Convolution::set_algo`].
    pub fn algo(&self) -> ConvAlgo {
        self.algo
    }

    /// The kernel the last training forward ran (`"winograd"`, `"direct"`, `"lowered"`),
    /// for reports; `None` before one.
    pub fn last_kernel(&self) -> Option<&'static str> {
        self.cache.as_ref().map(|(_, s)| s.kernel_name())
    }
}

impl Layer for Convolution {
    fn name(&self) -> &str {
        "Convolution"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        self.forward_then(x, train, false, false)
    }

    /// The ReLU applied to each image's output as the plan writes it
    /// ([`ConvPlan::forward_relu`]).
    fn forward_relu(&mut self, x: Tensor) -> Result<Tensor, LayerError> {
        self.forward_then(x, false, true, false)
    }

    fn fuses_relu_in_training(&self) -> bool {
        true
    }

    /// The training forward with the ReLU's mask taken from each image's output as it is
    /// written, and applied in `backward` to each image's gradient as it is read
    /// ([`ConvPlan::forward_relu_masked`]).
    fn forward_relu_train(&mut self, x: Tensor) -> Result<Tensor, LayerError> {
        self.forward_then(x, true, true, false)
    }

    /// On even output sides: the ReLU and the pooling applied to each image's output as
    /// the plan writes it, their codes kept in training and applied in
    /// `backward` to each image's gradient as it is read
    /// ([`ConvPlan::forward_relu_pool_masked`]).
    fn fuses_relu_pool(&self, input: &[usize]) -> bool {
        self.plan(input).is_ok_and(|p| p.pools_2x2())
    }

    fn forward_relu_pool(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        self.forward_then(x, train, true, true)
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let (plan, saved) = self
            .cache
            .as_ref()
            .expect("Convolution::backward before a training forward");
        let x = self.x.as_ref().expect("input kept by the training forward");
        let g = &plan.g;
        let n = x.shape()[0];
        // after a pooled forward, the gradient of the pooled output
        let (oh, ow) = if saved.pooled() {
            (g.out_h / 2, g.out_w / 2)
        } else {
            (g.out_h, g.out_w)
        };
        check_dout("Convolution", &dout, &[n, plan.filters, oh, ow]);
        let mut dout = crate::into_standard(dout);
        if self.w_bf16.is_some() {
            round_bf16_slice(dout.as_slice_mut().expect("standard layout"));
        }
        let w = self.w.value.as_slice().expect("contiguous W");
        let dx = plan.backward(
            self.w_bf16.as_deref().unwrap_or(w),
            saved,
            x.as_slice().expect("standard layout"),
            dout.as_slice().expect("standard layout"),
            self.input_gradient,
            self.trainable
                .then(|| self.w.grad.as_slice_mut().expect("contiguous dW")),
            self.b.as_mut().map(|b| b.grad.as_slice_mut().expect("contiguous db")),
        );
        Tensor::from_shape_vec(vec![n, g.c, g.h, g.w], dx).expect("dx shape")
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let mut out = vec![("W".into(), &self.w)];
        out.extend(self.b.as_ref().map(|b| ("b".into(), b)));
        out
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut out = vec![("W".into(), &mut self.w)];
        out.extend(self.b.as_mut().map(|b| ("b".into(), b)));
        out
    }

    fn set_input_gradient_needed(&mut self, needed: bool) {
        self.input_gradient = needed;
    }

    fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
    }

    fn is_trainable(&self) -> bool {
        self.trainable
    }

    fn set_conv_algo(&mut self, algo: ConvAlgo) {
        self.algo = algo;
    }

    fn set_bf16_products(&mut self, kernel: Option<Bf16Kernel>) {
        if let Some(k) = kernel {
            assert!(k.supported(), "Convolution: the bf16 kernel {k} cannot run here");
        }
        self.bf16 = kernel;
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        let p = self.plan(input)?;
        Ok(vec![input[0], p.filters, p.g.out_h, p.g.out_w])
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::Convolution {
            w: self.w.value.clone(),
            b: self.b.as_ref().map(|b| b.value.clone()),
            stride: self.stride,
            pad: self.pad,
        })
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(self.inference_copy())
    }
}
