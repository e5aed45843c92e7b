//! Post-training quantization to 8-bit integers and integer inference.
//!
//! [`QuantizedNetwork::quantize`] takes a network's evaluation form and a few
//! calibration images (training images, never the test set), and builds the network
//! in integers:
//!
//! * each convolution and affine layer gets symmetric `i8` weights with one scale per
//!   output channel, and an `i32` bias in units of input scale times weight scale;
//!   batch norm after it is folded into its weights and bias first, and so are the
//!   book's evaluation-mode dropout (a positive multiplier) and the ReLU, which becomes
//!   the lower clamp of its requantization;
//! * every activation between layers is a `u8` tensor with one scale and zero point,
//!   from the smallest and largest value the calibration images give it;
//! * max pooling runs on the bytes; the last layer gives `f32` scores.
//!
//! Convolutions, affine layers, ReLU, max pooling, batch norm and dropout have integer
//! forms; any other layer is refused with a typed error. The kernels are
//! [`dl_tensor::int8`]'s, at the instruction set this CPU has (or the one asked for).
//!
//! A quantized network is saved as safetensors ([`QuantizedNetwork::to_bytes`]): for
//! step `i`, `i.weight` (`I8`, `(F, C, FH, FW)`, or `(out, in)` for an affine layer),
//! `i.weight_scale` (`F32`, one per output) and `i.bias` (`I32`), with the steps'
//! kinds, strides, activation scales and zero points as JSON in the metadata entry
//! `dlfs-int8`.

use dl_layers::{Layer, Op, PoolKind, Tensor};
use dl_tensor::int8::{max_pool_nhwc, quantize_weights, Int8Kernel, Int8Scratch, QConv, QuantParams, Requantize};
use dl_tensor::{ConvGeometry, Isa};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{InferError, InferenceNetwork};

/// The metadata key of a quantized network's description.
pub const METADATA_KEY: &str = "dlfs-int8";
/// The version of the file layout this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

fn invalid(message: impl Into<String>) -> InferError {
    InferError::Invalid {
        op: "int8",
        message: message.into(),
    }
}

fn format_error(message: impl Into<String>) -> InferError {
    InferError::Format(message.into())
}

/// A step of the network in `f32`, with batch norm, dropout and ReLU folded in.
#[derive(Debug, Clone)]
enum FloatStep {
    Linear {
        kind: LinearKind,
        /// `(F, C, FH, FW)`; an affine layer's `(out, in)` as `(M, D, 1, 1)`.
        w: Vec<f32>,
        b: Vec<f32>,
        dims: [usize; 4],
        stride: usize,
        pad: usize,
        relu: bool,
    },
    MaxPool(Pool),
}

/// Convolution or affine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LinearKind {
    Convolution,
    Affine,
}

/// A max-pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Pool {
    ph: usize,
    pw: usize,
    stride: usize,
    pad: usize,
}

/// `ops` flattened into linear layers and max pools, the rest folded in or refused.
fn fold(ops: &[Op], steps: &mut Vec<FloatStep>, since_linear: &mut Vec<&'static str>) -> Result<(), InferError> {
    for op in ops {
        match op {
            Op::Sequential(inner) => fold(inner, steps, since_linear)?,
            Op::Convolution { w, b, stride, pad } => {
                let s = w.shape();
                if s.len() != 4 || s.contains(&0) || *stride == 0 {
                    return Err(invalid(format!("filters of shape {s:?} with stride {stride}")));
                }
                let bias = match b {
                    Some(b) if b.shape() == [s[0]] => b.iter().copied().collect(),
                    Some(b) => return Err(invalid(format!("bias of shape {:?} for {} filters", b.shape(), s[0]))),
                    None => vec![0.0; s[0]],
                };
                steps.push(FloatStep::Linear {
                    kind: LinearKind::Convolution,
                    w: w.iter().copied().collect(),
                    b: bias,
                    dims: [s[0], s[1], s[2], s[3]],
                    stride: *stride,
                    pad: *pad,
                    relu: false,
                });
                since_linear.clear();
            }
            Op::Affine { w, b } => {
                let s = w.shape();
                if s.len() != 2 || s.contains(&0) || b.shape() != [s[1]] {
                    return Err(invalid(format!("affine weights {s:?} and bias {:?}", b.shape())));
                }
                let (d, m) = (s[0], s[1]);
                let wt: Vec<f32> = (0..m)
                    .flat_map(|j| (0..d).map(move |i| (i, j)))
                    .map(|(i, j)| w[[i, j]])
                    .collect();
                steps.push(FloatStep::Linear {
                    kind: LinearKind::Affine,
                    w: wt,
                    b: b.iter().copied().collect(),
                    dims: [m, d, 1, 1],
                    stride: 1,
                    pad: 0,
                    relu: false,
                });
                since_linear.clear();
            }
            Op::Relu => {
                // max(0, .) commutes with max pooling: it joins the last linear layer
                last_linear(steps, since_linear, "ReLU", &["max pooling", "ReLU"])?.relu_mut(|r| *r = true);
                since_linear.push("ReLU");
            }
            &Op::Multiply(k) => {
                if !(k.is_finite() && k > 0.0) {
                    return Err(invalid(format!("a multiplier of {k} has no int8 form")));
                }
                // a positive factor commutes with ReLU and max pooling
                last_linear(steps, since_linear, "dropout", &["max pooling", "ReLU"])?.scale(|_| k, |_| 0.0);
            }
            Op::Scale {
                scale,
                shift,
                per_channel,
            } => {
                let step = last_linear(steps, since_linear, "batch norm", &[])?;
                let FloatStep::Linear { kind, dims, .. } = step else {
                    unreachable!("last_linear gives a linear step")
                };
                let fits = scale.len() == dims[0]
                    && shift.len() == dims[0]
                    && (*per_channel == (*kind == LinearKind::Convolution));
                if !fits {
                    return Err(invalid(format!(
                        "batch norm of {} features after a layer of {} outputs",
                        scale.len(),
                        dims[0]
                    )));
                }
                step.scale(|f| scale[f], |f| shift[f]);
            }
            &Op::Pooling {
                kind: PoolKind::Max,
                ph,
                pw,
                stride,
                pad,
            } => {
                if pad >= ph || pad >= pw || stride == 0 {
                    return Err(invalid(format!("pooling {ph}x{pw} stride {stride} pad {pad}")));
                }
                steps.push(FloatStep::MaxPool(Pool { ph, pw, stride, pad }));
                since_linear.push("max pooling");
            }
            other => {
                return Err(invalid(format!("{} has no int8 form", op_name(other))));
            }
        }
    }
    Ok(())
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Pooling { .. } => "average pooling",
        Op::Sigmoid => "a sigmoid",
        Op::GlobalAveragePooling => "global average pooling",
        Op::Residual { .. } => "a residual block",
        Op::Concat(_) => "an inception block",
        _ => "this layer",
    }
}

/// The last linear step, if only the ops in `allowed` came after it.
fn last_linear<'a>(
    steps: &'a mut [FloatStep],
    since: &[&'static str],
    what: &str,
    allowed: &[&str],
) -> Result<&'a mut FloatStep, InferError> {
    if let Some(bad) = since.iter().find(|s| !allowed.contains(s)) {
        return Err(invalid(format!("{what} after {bad} cannot be folded into a layer")));
    }
    let step = steps
        .iter_mut()
        .rev()
        .find(|s| matches!(s, FloatStep::Linear { .. }))
        .ok_or_else(|| invalid(format!("{what} before any convolution or affine layer")))?;
    Ok(step)
}

impl FloatStep {
    fn relu_mut(&mut self, f: impl FnOnce(&mut bool)) {
        if let FloatStep::Linear { relu, .. } = self {
            f(relu)
        }
    }

    /// Output `f` becomes `scale(f) * out + shift(f)`.
    fn scale(&mut self, scale: impl Fn(usize) -> f32, shift: impl Fn(usize) -> f32) {
        if let FloatStep::Linear { w, b, dims, .. } = self {
            let per = w.len() / dims[0];
            for (f, (row, bias)) in w.chunks_exact_mut(per).zip(b.iter_mut()).enumerate() {
                let k = scale(f);
                row.iter_mut().for_each(|v| *v *= k);
                *bias = *bias * k + shift(f);
            }
        }
    }

    /// The step as ops of the `f32` engine (for calibration).
    fn ops(&self) -> Vec<Op> {
        match self {
            FloatStep::Linear {
                kind,
                w,
                b,
                dims,
                stride,
                pad,
                relu,
            } => {
                let bias = Tensor::from_shape_vec(vec![dims[0]], b.clone()).expect("one bias per output");
                let linear = match kind {
                    LinearKind::Convolution => Op::Convolution {
                        w: Tensor::from_shape_vec(dims.to_vec(), w.clone()).expect("filters fit dims"),
                        b: Some(bias),
                        stride: *stride,
                        pad: *pad,
                    },
                    LinearKind::Affine => {
                        let (m, d) = (dims[0], dims[1]);
                        let wt = ndarray::Array2::from_shape_fn((d, m), |(i, j)| w[j * d + i]);
                        Op::Affine {
                            w: wt.into_dyn(),
                            b: bias,
                        }
                    }
                };
                if *relu {
                    vec![linear, Op::Relu]
                } else {
                    vec![linear]
                }
            }
            FloatStep::MaxPool(p) => vec![Op::Pooling {
                kind: PoolKind::Max,
                ph: p.ph,
                pw: p.pw,
                stride: p.stride,
                pad: p.pad,
            }],
        }
    }
}

/// One step of the integer network.
#[derive(Debug, Clone)]
enum Step {
    Linear(Box<Linear>),
    MaxPool(Pool),
}

/// A convolution or affine layer in integers.
#[derive(Debug, Clone)]
struct Linear {
    kind: LinearKind,
    conv: QConv,
    weight_scale: Vec<f32>,
    /// As stored: before the input zero point is folded in.
    bias: Vec<i32>,
    /// `None` for the last layer, whose output is `f32`.
    output: Option<QuantParams>,
    relu: bool,
    /// Input scale times weight scale, over the output scale when there is one.
    multiplier: Vec<f32>,
    /// For an affine layer whose input comes from a convolution of `c` channels:
    /// `(c, the same layer with its inputs in NHWC order)`, which reads the activations
    /// as they are instead of reordering them into the book's (C, H, W) order.
    nhwc: Option<(usize, QConv)>,
}

impl Linear {
    #[allow(clippy::too_many_arguments)]
    fn new(
        kind: LinearKind,
        weights: Vec<i8>,
        dims: [usize; 4],
        stride: usize,
        pad: usize,
        weight_scale: Vec<f32>,
        bias: Vec<i32>,
        input: QuantParams,
        output: Option<QuantParams>,
        relu: bool,
    ) -> Result<Linear, InferError> {
        if weight_scale.len() != dims[0] || weight_scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(invalid(format!(
                "{} weight scales for {} outputs, each must be positive",
                weight_scale.len(),
                dims[0]
            )));
        }
        for q in std::iter::once(&input).chain(output.as_ref()) {
            if !(q.scale.is_finite() && q.scale > 0.0) {
                return Err(invalid(format!("activation scale {}", q.scale)));
            }
        }
        let conv = QConv::new(weights, dims, stride, pad, bias.clone(), input.zero_point)
            .map_err(|e| invalid(e.to_string()))?;
        let multiplier = weight_scale
            .iter()
            .map(|s| input.scale * s / output.map_or(1.0, |o| o.scale))
            .collect();
        Ok(Linear {
            kind,
            conv,
            weight_scale,
            bias,
            output,
            relu,
            multiplier,
            nhwc: None,
        })
    }

    /// The convolution that reads `c`-channel NHWC input as it is: the NHWC form for
    /// an affine layer after a convolution, else `None` (the input is flattened first).
    fn reading_nhwc(&self, c: usize) -> Option<&QConv> {
        match &self.nhwc {
            Some((channels, conv)) if *channels == c => Some(conv),
            _ => None,
        }
    }
}

/// Gives each affine layer whose input comes from a convolution (through max pools)
/// its NHWC form ([`Linear::nhwc`]).
fn read_nhwc(steps: &mut [Step]) {
    let mut channels = None;
    for step in steps {
        let Step::Linear(l) = step else { continue };
        let [f, d, _, _] = l.conv.dims();
        if l.kind == LinearKind::Convolution {
            channels = Some(f);
            continue;
        }
        if let Some(c) = channels.filter(|&c| c > 1 && d > c && d % c == 0) {
            let hw = d / c;
            let mut w = vec![0i8; l.conv.weights().len()];
            for (to, from) in w.chunks_exact_mut(d).zip(l.conv.weights().chunks_exact(d)) {
                for ci in 0..c {
                    for p in 0..hw {
                        to[p * c + ci] = from[ci * hw + p];
                    }
                }
            }
            let input_zero = l.conv.input_zero();
            l.nhwc = QConv::new(w, l.conv.dims(), 1, 0, l.bias.clone(), input_zero)
                .ok()
                .map(|conv| (c, conv));
        }
        // an affine layer's output is one pixel of `f` channels
        channels = None;
    }
}

/// The smallest and largest value of each linear step's output (after its ReLU).
#[derive(Debug, Clone, Copy)]
struct Range {
    min: f32,
    max: f32,
}

impl Range {
    const EMPTY: Range = Range {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };

    fn of(&mut self, t: &Tensor) {
        for &v in t.iter() {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }
}

/// A network in 8-bit integers, built by [`QuantizedNetwork::quantize`] or read by
/// [`QuantizedNetwork::from_bytes`]. Read-only: share it between threads.
#[derive(Debug, Clone)]
pub struct QuantizedNetwork {
    input: QuantParams,
    steps: Vec<Step>,
    kernel: Int8Kernel,
}

/// The description of the steps written to a file's metadata.
#[derive(Debug, Serialize, Deserialize)]
struct Description {
    version: u32,
    input: QuantParams,
    steps: Vec<StepDescription>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum StepDescription {
    Convolution {
        stride: usize,
        pad: usize,
        relu: bool,
        output: Option<QuantParams>,
    },
    Affine {
        relu: bool,
        output: Option<QuantParams>,
    },
    MaxPooling {
        size: [usize; 2],
        stride: usize,
        pad: usize,
    },
}

impl QuantizedNetwork {
    /// Quantizes `layer` (a network's root) with activation ranges from
    /// `calibration` (`(N, C, H, W)` training images), at the int8 kernel of
    /// [`Isa::active`].
    pub fn quantize(layer: &dyn Layer, calibration: &Tensor) -> Result<QuantizedNetwork, InferError> {
        Self::quantize_op(&layer.inference_op()?, calibration)
    }

    /// [`QuantizedNetwork::quantize`] of an [`Op`].
    pub fn quantize_op(op: &Op, calibration: &Tensor) -> Result<QuantizedNetwork, InferError> {
        let mut steps = Vec::new();
        fold(std::slice::from_ref(op), &mut steps, &mut Vec::new())?;
        let last = steps
            .iter()
            .rposition(|s| matches!(s, FloatStep::Linear { .. }))
            .ok_or_else(|| invalid("a network without a convolution or affine layer"))?;
        if last + 1 != steps.len() {
            return Err(invalid("the network must end with a convolution or affine layer"));
        }
        if calibration.shape().first().is_none_or(|&n| n == 0) {
            return Err(invalid("no calibration images"));
        }
        // the ranges, by running the folded steps in f32
        let mut input_range = Range::EMPTY;
        input_range.of(calibration);
        let runners = steps
            .iter()
            .map(|s| InferenceNetwork::<f32>::from_op(&Op::Sequential(s.ops())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ranges = vec![Range::EMPTY; steps.len()];
        for start in (0..calibration.shape()[0]).step_by(256) {
            let end = (start + 256).min(calibration.shape()[0]);
            let mut x = calibration.slice_axis(ndarray::Axis(0), (start..end).into()).to_owned();
            for (runner, range) in runners.iter().zip(&mut ranges) {
                x = runner.predict(&x)?;
                range.of(&x);
            }
        }
        let input = QuantParams::from_range(input_range.min, input_range.max);
        let mut current = input;
        let mut out = Vec::with_capacity(steps.len());
        for (i, (step, range)) in steps.into_iter().zip(ranges).enumerate() {
            match step {
                FloatStep::MaxPool(p) => out.push(Step::MaxPool(p)),
                FloatStep::Linear {
                    kind,
                    w,
                    b,
                    dims,
                    stride,
                    pad,
                    relu,
                } => {
                    let (wq, scales) = quantize_weights(&w, dims[0]);
                    let bias = b
                        .iter()
                        .zip(&scales)
                        .map(|(&b, &s)| (b / (current.scale * s)).round_ties_even().clamp(-1e9, 1e9) as i32)
                        .collect();
                    let output = (i != last).then(|| QuantParams::from_range(range.min, range.max));
                    let linear = Linear::new(kind, wq, dims, stride, pad, scales, bias, current, output, relu)?;
                    if let Some(o) = output {
                        current = o;
                    }
                    out.push(Step::Linear(Box::new(linear)));
                }
            }
        }
        read_nhwc(&mut out);
        Ok(QuantizedNetwork {
            input,
            steps: out,
            kernel: Int8Kernel::active(),
        })
    }

    /// The same network run by the int8 kernel of the instruction-set level `isa`
    /// (the widest this CPU has at or below it).
    pub fn at(mut self, isa: Isa) -> QuantizedNetwork {
        self.kernel = Int8Kernel::for_isa(isa);
        self
    }

    /// The kernel it runs: `"scalar"`, `"avx2"` or `"avx512-vnni"`.
    pub fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// The input's quantization (from the calibration images).
    pub fn input_params(&self) -> QuantParams {
        self.input
    }

    /// Bytes of the stored weights (one each), their scales (four each per output)
    /// and the biases (four each).
    pub fn weight_bytes(&self) -> usize {
        self.linears()
            .map(|l| l.conv.weights().len() + 4 * l.weight_scale.len() + 4 * l.bias.len())
            .sum()
    }

    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.steps.iter().filter_map(|s| match s {
            Step::Linear(l) => Some(l.as_ref()),
            Step::MaxPool(_) => None,
        })
    }

    /// The scores of a batch `x` `(N, C, H, W)` (or `(N, D)` for a network that starts
    /// with an affine layer): quantized to bytes on the way in, `f32` on the way out.
    ///
    /// The batch is cut into chunks of a few images, and each chunk runs through every
    /// layer on one thread, in buffers that thread reuses: the activations of a chunk
    /// stay in its caches from one layer to the next.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor, InferError> {
        let shape = x.shape().to_vec();
        let (n, nchw, input) = match shape.len() {
            4 => (shape[0], true, (shape[2], shape[3], shape[1])),
            l if l >= 2 => (shape[0], false, (1, 1, shape[1..].iter().product())),
            _ => {
                return Err(InferError::Shape {
                    op: "int8",
                    expected: "(N, C, H, W) or (N, D)".into(),
                    given: shape,
                })
            }
        };
        let out_dims = self.output_dims(input, &shape)?;
        let out_per: usize = out_dims.iter().product();
        let in_per = input.0 * input.1 * input.2;
        let xs = x.as_standard_layout();
        let src = xs.as_slice().expect("standard layout");
        let mut data = vec![0f32; n * out_per];
        let chunk = per_task(n);
        data.par_chunks_mut((out_per * chunk).max(1))
            .zip(src.par_chunks((in_per * chunk).max(1)))
            .try_for_each(|(o, x)| {
                with_work(self.steps.len(), |work| {
                    self.run_chunk(x, x.len() / in_per.max(1), input, nchw, work, o)
                })
            })?;
        let mut full = vec![n];
        full.extend(out_dims);
        Ok(Tensor::from_shape_vec(full, data).expect("shape fits"))
    }

    /// The shape of one image's scores for an input image `(h, w, c)` (NHWC), or the
    /// error the first step that does not fit it gives. `given` is the batch's shape,
    /// for the message.
    fn output_dims(
        &self,
        (mut h, mut w, mut c): (usize, usize, usize),
        given: &[usize],
    ) -> Result<Vec<usize>, InferError> {
        let shape_error = |op: &'static str, expected: String, (h, w, c): (usize, usize, usize)| {
            let n = given.first().copied().unwrap_or(0);
            InferError::Shape {
                op,
                expected,
                given: vec![n, c, h, w],
            }
        };
        for (i, step) in self.steps.iter().enumerate() {
            let last = i + 1 == self.steps.len();
            match step {
                Step::MaxPool(p) => {
                    let g =
                        ConvGeometry::new(c, h, w, p.ph, p.pw, p.stride, p.pad).map_err(|e| invalid(e.to_string()))?;
                    (h, w) = (g.out_h, g.out_w);
                }
                Step::Linear(l) => {
                    let [f, d, _, _] = l.conv.dims();
                    match l.kind {
                        LinearKind::Convolution => {
                            if c != d {
                                return Err(shape_error("Convolution", format!("(N, {d}, H, W)"), (h, w, c)));
                            }
                            let g = l.conv.geometry(h, w).map_err(|e| invalid(e.to_string()))?;
                            if last {
                                return Ok(vec![f, g.out_h, g.out_w]);
                            }
                            (h, w, c) = (g.out_h, g.out_w, f);
                        }
                        LinearKind::Affine => {
                            if h * w * c != d {
                                let expected = format!("(N, ...) with {d} values per image");
                                return Err(shape_error("Affine", expected, (h, w, c)));
                            }
                            if last {
                                return Ok(vec![f]);
                            }
                            (h, w, c) = (1, 1, f);
                        }
                    }
                }
            }
        }
        unreachable!("a quantized network ends with a linear step")
    }

    /// `m` images `x` (NCHW when `nchw`, else rows) of shape `(h, w, c)`, checked by
    /// [`Self::output_dims`], through every step into their scores `out`.
    fn run_chunk(
        &self,
        x: &[f32],
        m: usize,
        (mut h, mut w, mut c): (usize, usize, usize),
        nchw: bool,
        work: &mut Work,
        out: &mut [f32],
    ) -> Result<(), InferError> {
        let Work {
            cur,
            next,
            nhwc,
            scratch,
        } = work;
        // NHWC bytes
        let kernel = self.kernel;
        if nchw && c > 1 {
            let hw = h * w;
            let chw = room(next, x.len());
            self.input.quantize_into(x, chw, kernel);
            let q = room(cur, x.len());
            for (o, i) in q.chunks_exact_mut(hw * c).zip(next[..x.len()].chunks_exact(hw * c)) {
                for ci in 0..c {
                    for p in 0..hw {
                        o[p * c + ci] = i[ci * hw + p];
                    }
                }
            }
        } else {
            self.input.quantize_into(x, room(cur, x.len()), kernel);
        }
        let conv_error = |e: dl_tensor::int8::Int8Error| invalid(e.to_string());
        let (last, inner) = self.steps.split_last().expect("a quantized network has steps");
        for (step, scratch) in inner.iter().zip(scratch.iter_mut()) {
            let image = h * w * c;
            let input = &cur[..m * image];
            match step {
                Step::MaxPool(p) => {
                    let g =
                        ConvGeometry::new(c, h, w, p.ph, p.pw, p.stride, p.pad).map_err(|e| invalid(e.to_string()))?;
                    let per = g.out_h * g.out_w * c;
                    let o = room(next, m * per);
                    for (oi, xi) in o.chunks_exact_mut(per).zip(input.chunks_exact(image)) {
                        max_pool_nhwc(xi, &g, oi);
                    }
                    (h, w) = (g.out_h, g.out_w);
                }
                Step::Linear(l) => {
                    let out = l.output.expect("inner layers have an output quantization");
                    let requantize = Requantize {
                        multiplier: &l.multiplier,
                        zero_point: out.zero_point,
                        relu: l.relu,
                    };
                    let f = l.conv.dims()[0];
                    match l.kind {
                        LinearKind::Convolution => {
                            let g = l.conv.geometry(h, w).map_err(conv_error)?;
                            let per = g.out_h * g.out_w * f;
                            let o = room(next, m * per);
                            for (oi, xi) in o.chunks_exact_mut(per).zip(input.chunks_exact(image)) {
                                l.conv
                                    .forward_u8(xi, h, w, requantize, oi, scratch, kernel)
                                    .map_err(conv_error)?;
                            }
                            (h, w, c) = (g.out_h, g.out_w, f);
                        }
                        LinearKind::Affine => {
                            if let Some(conv) = l.reading_nhwc(c) {
                                let o = room(next, m * f);
                                conv.forward_u8(input, 1, m, requantize, o, scratch, kernel)
                                    .map_err(conv_error)?;
                            } else {
                                // the rows in `next` (flattened in the book's order), the
                                // outputs in `cur`
                                flatten(input, h * w, c, room(next, m * image));
                                let o = room(cur, m * f);
                                l.conv
                                    .forward_u8(&next[..m * image], 1, m, requantize, o, scratch, kernel)
                                    .map_err(conv_error)?;
                                std::mem::swap(cur, next);
                            }
                            (h, w, c) = (1, 1, f);
                        }
                    }
                }
            }
            std::mem::swap(cur, next);
        }
        let Step::Linear(l) = last else {
            unreachable!("a quantized network ends with a linear step")
        };
        let scratch = scratch.last_mut().expect("one scratch per step");
        let image = h * w * c;
        let f = l.conv.dims()[0];
        match l.kind {
            LinearKind::Convolution => {
                let g = l.conv.geometry(h, w).map_err(conv_error)?;
                let (hw, per) = (g.out_h * g.out_w, g.out_h * g.out_w * f);
                let y = room(nhwc, per);
                for (o, xi) in out.chunks_exact_mut(per).zip(cur[..m * image].chunks_exact(image)) {
                    l.conv
                        .forward_f32(xi, h, w, &l.multiplier, l.relu, y, scratch, kernel)
                        .map_err(conv_error)?;
                    for p in 0..hw {
                        for fi in 0..f {
                            o[fi * hw + p] = y[p * f + fi];
                        }
                    }
                }
            }
            LinearKind::Affine => {
                let (conv, rows) = match l.reading_nhwc(c) {
                    Some(conv) => (conv, &cur[..m * image]),
                    None => {
                        flatten(&cur[..m * image], h * w, c, room(next, m * image));
                        (&l.conv, &next[..m * image])
                    }
                };
                conv.forward_f32(rows, 1, m, &l.multiplier, l.relu, out, scratch, kernel)
                    .map_err(conv_error)?;
            }
        }
        Ok(())
    }

    /// The predicted class of each image of `x`, `batch_size` at a time.
    pub fn classify(&self, x: &Tensor, batch_size: usize) -> Result<Vec<usize>, InferError> {
        crate::classify_with(x, batch_size, |b| self.predict(b))
    }

    /// The fraction of the images of `x` whose class is `t`.
    pub fn accuracy(&self, x: &Tensor, t: &[usize], batch_size: usize) -> Result<f32, InferError> {
        crate::accuracy_of(self.classify(x, batch_size)?, t)
    }

    /// The network as safetensors bytes (see the module's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut raw: Vec<crate::RawTensor> = Vec::new();
        let mut described = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::MaxPool(p) => described.push(StepDescription::MaxPooling {
                    size: [p.ph, p.pw],
                    stride: p.stride,
                    pad: p.pad,
                }),
                Step::Linear(l) => {
                    let dims = l.conv.dims();
                    let shape = match l.kind {
                        LinearKind::Convolution => dims.to_vec(),
                        LinearKind::Affine => vec![dims[0], dims[1]],
                    };
                    let w = l.conv.weights().iter().map(|&v| v as u8).collect();
                    raw.push((format!("{i}.weight"), safetensors::Dtype::I8, shape, w));
                    let s = l.weight_scale.iter().flat_map(|v| v.to_le_bytes()).collect();
                    raw.push((format!("{i}.weight_scale"), safetensors::Dtype::F32, vec![dims[0]], s));
                    let b = l.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
                    raw.push((format!("{i}.bias"), safetensors::Dtype::I32, vec![dims[0]], b));
                    described.push(match l.kind {
                        LinearKind::Convolution => StepDescription::Convolution {
                            stride: l.conv.stride(),
                            pad: l.conv.pad(),
                            relu: l.relu,
                            output: l.output,
                        },
                        LinearKind::Affine => StepDescription::Affine {
                            relu: l.relu,
                            output: l.output,
                        },
                    });
                }
            }
        }
        let description = Description {
            version: FORMAT_VERSION,
            input: self.input,
            steps: described,
        };
        crate::write_described(&raw, METADATA_KEY, &description)
    }

    /// Whether `bytes` are a safetensors file with a quantized network's metadata
    /// (without checking the rest).
    pub fn is_quantized_file(bytes: &[u8]) -> bool {
        crate::has_metadata(bytes, METADATA_KEY)
    }

    /// A network from [`QuantizedNetwork::to_bytes`]'s bytes; every part is checked,
    /// and a file that is not one gets [`InferError::Format`].
    pub fn from_bytes(bytes: &[u8]) -> Result<QuantizedNetwork, InferError> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format_error(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format_error(e.to_string()))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| format_error(format!("no `{METADATA_KEY}` metadata: not a quantized network")))?;
        let description: Description =
            serde_json::from_str(json).map_err(|e| format_error(format!("`{METADATA_KEY}` metadata: {e}")))?;
        if description.version != FORMAT_VERSION {
            return Err(format_error(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                description.version
            )));
        }
        let tensor = |name: String, dtype: safetensors::Dtype| {
            let view = st
                .tensor(&name)
                .map_err(|_| format_error(format!("tensor `{name}` missing")))?;
            if view.dtype() != dtype {
                return Err(format_error(format!(
                    "tensor `{name}` is {:?}, expected {dtype:?}",
                    view.dtype()
                )));
            }
            Ok((view.shape().to_vec(), view.data().to_vec()))
        };
        let mut steps = Vec::with_capacity(description.steps.len());
        let mut current = description.input;
        let count = description.steps.len();
        for (i, step) in description.steps.into_iter().enumerate() {
            let (kind, stride, pad, relu, output) = match step {
                StepDescription::MaxPooling { size, stride, pad } => {
                    if pad >= size[0] || pad >= size[1] || stride == 0 {
                        return Err(format_error(format!(
                            "step {i}: pooling {size:?} stride {stride} pad {pad}"
                        )));
                    }
                    steps.push(Step::MaxPool(Pool {
                        ph: size[0],
                        pw: size[1],
                        stride,
                        pad,
                    }));
                    continue;
                }
                StepDescription::Convolution {
                    stride,
                    pad,
                    relu,
                    output,
                } => (LinearKind::Convolution, stride, pad, relu, output),
                StepDescription::Affine { relu, output } => (LinearKind::Affine, 1, 0, relu, output),
            };
            if output.is_none() != (i + 1 == count) {
                return Err(format_error(format!(
                    "step {i}: only the last layer has no output quantization"
                )));
            }
            let (shape, w) = tensor(format!("{i}.weight"), safetensors::Dtype::I8)?;
            let dims = match (kind, shape.as_slice()) {
                (LinearKind::Convolution, &[f, c, fh, fw]) => [f, c, fh, fw],
                (LinearKind::Affine, &[m, d]) => [m, d, 1, 1],
                _ => return Err(format_error(format!("step {i}: weight of shape {shape:?}"))),
            };
            let (sshape, s) = tensor(format!("{i}.weight_scale"), safetensors::Dtype::F32)?;
            let (bshape, b) = tensor(format!("{i}.bias"), safetensors::Dtype::I32)?;
            if sshape != [dims[0]] || bshape != [dims[0]] {
                return Err(format_error(format!(
                    "step {i}: scales {sshape:?} and bias {bshape:?} for {} outputs",
                    dims[0]
                )));
            }
            let weights = w.iter().map(|&v| v as i8).collect();
            let scales = s
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            let bias = b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            let linear = Linear::new(kind, weights, dims, stride, pad, scales, bias, current, output, relu)
                .map_err(|e| format_error(format!("step {i}: {e}")))?;
            if let Some(o) = output {
                current = o;
            }
            steps.push(Step::Linear(Box::new(linear)));
        }
        if !matches!(steps.last(), Some(Step::Linear(_))) {
            return Err(format_error("the network must end with a convolution or affine layer"));
        }
        read_nhwc(&mut steps);
        Ok(QuantizedNetwork {
            input: description.input,
            steps,
            kernel: Int8Kernel::active(),
        })
    }
}

/// One thread's buffers: the activations in and out of a step, the last
/// convolution's `f32` outputs, and each step's scratch.
struct Work {
    cur: Vec<u8>,
    next: Vec<u8>,
    nhwc: Vec<f32>,
    scratch: Vec<Int8Scratch>,
}

impl Work {
    fn bytes(&self) -> usize {
        self.cur.capacity()
            + self.next.capacity()
            + 4 * self.nhwc.capacity()
            + self.scratch.iter().map(Int8Scratch::bytes).sum::<usize>()
    }
}

/// The most a thread keeps of its [`Work`] between batches.
const KEEP_WORK_BYTES: usize = 8 << 20;

std::thread_local! {
    /// This thread's buffers from its last chunk, of whichever network (a scratch
    /// checks that what it holds fits the convolution it serves).
    static WORK: std::cell::RefCell<Option<Work>> = const { std::cell::RefCell::new(None) };
}

/// `f` run on this thread's [`Work`] with at least `steps` scratches, which is kept for
/// the next chunk if it holds at most [`KEEP_WORK_BYTES`].
fn with_work<R>(steps: usize, f: impl FnOnce(&mut Work) -> R) -> R {
    let mut work = WORK.with(|w| w.borrow_mut().take()).unwrap_or_else(|| Work {
        cur: Vec::new(),
        next: Vec::new(),
        nhwc: Vec::new(),
        scratch: Vec::new(),
    });
    if work.scratch.len() < steps {
        work.scratch.resize_with(steps, Int8Scratch::default);
    }
    let r = f(&mut work);
    if work.bytes() <= KEEP_WORK_BYTES {
        WORK.with(|w| *w.borrow_mut() = Some(work));
    }
    r
}

/// The first `len` elements of `v`, grown if needed (what they hold is overwritten).
fn room<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// Images per chunk of a batch: about four chunks per thread, at most 16 images.
fn per_task(n: usize) -> usize {
    n.div_ceil(4 * rayon::current_num_threads()).clamp(1, 16)
}

/// NHWC images `x` of `hw` pixels and `c` channels, each flattened in the book's
/// (C, H, W) order into `out`, as the rows of an affine layer.
fn flatten(x: &[u8], hw: usize, c: usize, out: &mut [u8]) {
    if hw == 1 || c == 1 {
        out.copy_from_slice(x);
        return;
    }
    for (o, x) in out.chunks_exact_mut(hw * c).zip(x.chunks_exact(hw * c)) {
        for p in 0..hw {
            for ci in 0..c {
                o[ci * hw + p] = x[p * c + ci];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A convolution of 3 filters, a 2x2 max pool, then two affine layers.
    fn network() -> QuantizedNetwork {
        let f = |n: usize, k: usize| Tensor::from_shape_fn(vec![n], |i| ((i[0] * 7 + k) % 11) as f32 / 11.0 - 0.4);
        let ops = Op::Sequential(vec![
            Op::Convolution {
                w: f(3 * 2 * 3 * 3, 1).into_shape_with_order(vec![3, 2, 3, 3]).unwrap(),
                b: Some(f(3, 2)),
                stride: 1,
                pad: 1,
            },
            Op::Relu,
            Op::Pooling {
                kind: PoolKind::Max,
                ph: 2,
                pw: 2,
                stride: 2,
                pad: 0,
            },
            Op::Affine {
                w: f(3 * 2 * 2 * 4, 3).into_shape_with_order(vec![12, 4]).unwrap(),
                b: f(4, 4),
            },
            Op::Relu,
            Op::Affine {
                w: f(4 * 5, 5).into_shape_with_order(vec![4, 5]).unwrap(),
                b: f(5, 6),
            },
        ]);
        let x = Tensor::from_shape_fn(vec![4, 2, 4, 4], |i| {
            ((i[0] + 3 * i[1] + 5 * i[2] + 7 * i[3]) % 13) as f32 / 13.0
        });
        QuantizedNetwork::quantize_op(&ops, &x).unwrap()
    }

    #[test]
    fn an_affine_layer_after_a_convolution_gets_its_weights_in_nhwc_order() {
        let q = network();
        let linears: Vec<&Linear> = q.linears().collect();
        assert_eq!(linears.len(), 3);
        assert!(linears[0].nhwc.is_none(), "a convolution reads NHWC already");
        assert!(linears[2].nhwc.is_none(), "after an affine layer there is one pixel");
        let (c, conv) = linears[1]
            .nhwc
            .as_ref()
            .expect("the first affine layer has its NHWC form");
        assert_eq!(*c, 3);
        assert_eq!(conv.dims(), linears[1].conv.dims());
        // input (channel ci, pixel p) of output j: at ci * 4 + p in the book's order,
        // at p * 3 + ci in NHWC
        let (book, nhwc) = (linears[1].conv.weights(), conv.weights());
        for j in 0..4 {
            for ci in 0..3 {
                for p in 0..4 {
                    assert_eq!(nhwc[j * 12 + p * 3 + ci], book[j * 12 + ci * 4 + p]);
                }
            }
        }
        assert!(linears[1].reading_nhwc(3).is_some());
        assert!(
            linears[1].reading_nhwc(2).is_none(),
            "only for the channels it was built for"
        );
        assert!(linears[2].reading_nhwc(4).is_none());
        // and a network read from its file has it too
        let back = QuantizedNetwork::from_bytes(&q.to_bytes()).unwrap();
        assert!(back.linears().nth(1).unwrap().nhwc.is_some());
    }
}
