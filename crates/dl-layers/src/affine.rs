use dl_tensor::dpbf16::gemm_products;
use dl_tensor::lowp::round_bf16_slice;
use dl_tensor::Tensor;
use ndarray::{Array2, Axis, Ix2};

use crate::{check_dout, Bf16Kernel, Init, Layer, LayerError, Op, Param};

/// The book's `Affine`: `out = x · W + b` with `W` `(D, M)` and `b` `(M,)`.
///
/// Input `(N, D)`, or any `(N, ...)` whose trailing dimensions multiply to `D` (a
/// `(N, C, H, W)` feature map is flattened, and `backward` restores its shape, as in the
/// book). Output `(N, M)`.
#[derive(Debug, Clone)]
pub struct Affine {
    /// Weights `(D, M)`.
    pub w: Param,
    /// Bias `(M,)`.
    pub b: Param,
    x: Option<Array2<f32>>,
    original_shape: Vec<usize>,
    /// Whether `backward` computes `dL/dx`.
    input_gradient: bool,
    /// Whether `backward` computes `dL/dW` and `dL/db` (not for a frozen layer).
    trainable: bool,
    /// bf16 products, and by which kernel ([`Layer::set_bf16_products`]).
    bf16: Option<Bf16Kernel>,
    /// The kernel of the last training forward's products, for `backward`.
    products: Option<Bf16Kernel>,
    /// The weights rounded to bf16 by the last training forward under
    /// [`Bf16Kernel::Rounded`], for `backward`.
    w_bf16: Option<Array2<f32>>,
}

impl Affine {
    /// An Affine layer from `input_size` to `output_size`, weights drawn by `init`
    /// (fan-in `input_size`) from `seed`, zero bias.
    pub fn new(input_size: usize, output_size: usize, init: Init, seed: u64) -> Self {
        Self::from_params(
            init.sample(&[input_size, output_size], input_size, seed),
            Tensor::zeros(vec![output_size]),
        )
    }

    /// An Affine layer with the given `W` `(D, M)` and `b` `(M,)`.
    ///
    /// # Panics
    /// If the shapes do not fit each other.
    pub fn from_params(w: Tensor, b: Tensor) -> Self {
        assert!(
            w.ndim() == 2 && b.ndim() == 1 && w.shape()[1] == b.shape()[0],
            "Affine: W {:?} and b {:?} do not fit",
            w.shape(),
            b.shape()
        );
        Self {
            w: Param::new(w),
            b: Param::new(b),
            x: None,
            original_shape: Vec::new(),
            input_gradient: true,
            trainable: true,
            bf16: None,
            products: None,
            w_bf16: None,
        }
    }

    /// A copy without the input and the rounded weights the last training forward kept
    /// ([`Layer::clone_for_inference`]).
    pub(crate) fn inference_copy(&self) -> Affine {
        Affine {
            w: self.w.clone(),
            b: self.b.clone(),
            x: None,
            original_shape: Vec::new(),
            input_gradient: self.input_gradient,
            trainable: self.trainable,
            bf16: self.bf16,
            products: None,
            w_bf16: None,
        }
    }

    fn dims(&self) -> (usize, usize) {
        (self.w.value.shape()[0], self.w.value.shape()[1])
    }
}

impl Layer for Affine {
    fn name(&self) -> &str {
        "Affine"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let out_shape = self.output_shape(x.shape())?;
        let (d, m) = self.dims();
        let n = out_shape[0];
        let shape = x.shape().to_vec();
        let mut x2 = x
            .into_shape_with_order((n, d))
            .map_err(|_| LayerError::shape("Affine", format!("(N, {d})"), &shape))?
            .into_owned();
        let w = self.w.value.view().into_dimensionality::<Ix2>().expect("2-D W");
        let rounded = (self.bf16 == Some(Bf16Kernel::Rounded)).then(|| {
            x2.iter_mut().for_each(|v| *v = dl_tensor::lowp::round_bf16(*v));
            let mut w = w.as_standard_layout().into_owned();
            round_bf16_slice(w.as_slice_mut().expect("standard layout"));
            w
        });
        let w = rounded.as_ref().map_or(w, |r| r.view());
        let mut out = Array2::<f32>::zeros((n, m));
        out += &self
            .b
            .value
            .view()
            .into_dimensionality::<ndarray::Ix1>()
            .expect("1-D b");
        gemm_products(self.bf16, &x2.view(), &w, 1.0, &mut out.view_mut());
        if train {
            self.x = Some(x2);
            self.original_shape = shape;
            self.w_bf16 = rounded;
            self.products = self.bf16;
        }
        Ok(out.into_dyn())
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        let x = self.x.as_ref().expect("Affine::backward before a training forward");
        let (d, m) = self.dims();
        check_dout("Affine", &dout, &[x.nrows(), m]);
        let mut dout = dout.into_dimensionality::<Ix2>().expect("2-D dout");
        if self.w_bf16.is_some() {
            dout.iter_mut().for_each(|v| *v = dl_tensor::lowp::round_bf16(*v));
        }
        let w = self.w.value.view().into_dimensionality::<Ix2>().expect("2-D W");
        let w = self.w_bf16.as_ref().map_or(w, |r| r.view());
        let mut dx = Array2::<f32>::zeros((x.nrows(), d));
        if self.input_gradient {
            gemm_products(self.products, &dout.view(), &w.t(), 0.0, &mut dx.view_mut());
        }
        if self.trainable {
            let mut dw = self.w.grad.view_mut().into_dimensionality::<Ix2>().expect("2-D dW");
            gemm_products(self.products, &x.t(), &dout.view(), 0.0, &mut dw);
            self.b.grad.assign(&dout.sum_axis(Axis(0)));
        }
        dx.into_dyn()
            .into_shape_with_order(self.original_shape.clone())
            .expect("original shape")
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

    fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
    }

    fn is_trainable(&self) -> bool {
        self.trainable
    }

    fn set_bf16_products(&mut self, kernel: Option<Bf16Kernel>) {
        if let Some(k) = kernel {
            assert!(k.supported(), "Affine: the bf16 kernel {k} cannot run here");
        }
        self.bf16 = kernel;
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        let (d, m) = self.dims();
        if input.len() < 2 || input[1..].iter().product::<usize>() != d {
            return Err(LayerError::shape(
                "Affine",
                format!("(N, {d}) or (N, ...) with {d} values per sample"),
                input,
            ));
        }
        Ok(vec![input[0], m])
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::Affine {
            w: self.w.value.clone(),
            b: self.b.value.clone(),
        })
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(self.inference_copy())
    }
}
