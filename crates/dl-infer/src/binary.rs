//! Packed 1-bit inference of a binarized network (`dl_models::BinaryConvNet`, the BNN
//! recipe): the signs between binarized layers are packed 64 to a word and every
//! binarized convolution or affine layer is an XNOR-and-popcount dot product
//! ([`dl_tensor::binary`]).
//!
//! The result is the float network's, bit for bit. A binarized layer's sums of `±1`
//! products are integers, exact in `f32` as in `i32`; the pooling, the batch norm
//! (`x * scale + shift`, the float layer's own arithmetic), the sign and the layers
//! kept in `f32` (the first convolution, the classifier) run the float network's own
//! code on the same values. So [`BinaryNetwork::predict`] returns the scores
//! `Network::predict` does, to the last bit, and the tests check it image by image.
//!
//! The ops it runs: `Convolution` on real input (the first layer), `BinaryConvolution`
//! and `BinaryAffine` on signs, max pooling, batch norm (`Scale`), `Sign`, and `Affine`
//! on real values or signs (the classifier). Others are refused with
//! [`InferError::Invalid`].
//!
//! ```
//! use dl_infer::binary::BinaryNetwork;
//! use dl_layers::{BatchNormalization, BinaryConvolution, Convolution, Affine, Init, Layer, Pooling, Sequential, Sign};
//! use ndarray::ArrayD;
//!
//! let mut root = Sequential::new()
//!     .with(Convolution::new(1, 8, 3, 3, 1, 1, Init::He, 1).without_bias())
//!     .with(BatchNormalization::torchvision(8))
//!     .with(Sign::new())
//!     .with(BinaryConvolution::new(8, 16, 3, 3, 1, 1, Init::Xavier, 2))
//!     .with(Pooling::max(2, 2, 2, 0))
//!     .with(BatchNormalization::torchvision(16))
//!     .with(Sign::new())
//!     .with(Affine::new(16 * 4 * 4, 10, Init::He, 3));
//! let packed = BinaryNetwork::new(&root, (1, 8, 8)).unwrap();
//! let x = ArrayD::<f32>::from_shape_fn(vec![2, 1, 8, 8], |i| (i[2] as f32 - i[3] as f32) / 8.0);
//! assert_eq!(packed.predict(&x).unwrap(), root.forward(x, false).unwrap());
//! ```

use dl_layers::{Layer, Op, PoolKind, Tensor};
use dl_tensor::binary::{BinaryConv, BitGrid, IntGrid, PopcountKernel, Thresholds};
use dl_tensor::{gemm, ConvAlgo, ConvGeometry, ConvPlan};
use ndarray::Array2;
use rayon::prelude::*;

use crate::{invalid, InferError};

/// One step, ready to run.
#[derive(Debug, Clone)]
enum Step {
    /// A convolution in `f32` (real input, real output, `(N, C, H, W)`).
    Conv {
        w: Vec<f32>,
        b: Option<Vec<f32>>,
        filters: usize,
        g: ConvGeometry,
    },
    /// A binarized convolution or affine layer: signs in, integers out.
    Binary(BinaryConv),
    /// Max pooling (integers or reals).
    MaxPool {
        ph: usize,
        pw: usize,
        stride: usize,
        pad: usize,
    },
    /// Batch norm: `x * scale + shift` per feature.
    Scale {
        scale: Vec<f32>,
        shift: Vec<f32>,
        per_channel: bool,
    },
    /// The sign, packed.
    Sign,
    /// Batch norm then the sign, in one pass (the bits straight from the sums).
    ScaleSign {
        scale: Vec<f32>,
        shift: Vec<f32>,
        per_channel: bool,
    },
    /// An affine layer in `f32`: `b + x W`.
    Affine { w: Array2<f32>, b: Vec<f32> },
    /// A binarized layer, the batch norm and the sign after it in one pass: signs in,
    /// signs out, the sums compared with the batch norm's thresholds in registers.
    BinarySign { conv: BinaryConv, t: Thresholds },
    /// Max pooling of sums whose batch norm and sign follow, on the signs (the
    /// thresholds say, per channel, whether a window's sign is the OR or the AND).
    SignPool {
        t: Thresholds,
        ph: usize,
        pw: usize,
        stride: usize,
        pad: usize,
    },
}

/// A value between steps.
enum Value {
    /// Reals in the float network's layout: `(N, C, H, W)` or `(N, D)`.
    Real(Tensor),
    /// Integer sums, channels last.
    Ints(IntGrid),
    /// Signs, packed.
    Bits(BitGrid),
}

/// `ops` with every `Op::Sequential` opened.
fn flatten(ops: &[Op], out: &mut Vec<Op>) {
    for op in ops {
        match op {
            Op::Sequential(inner) => flatten(inner, out),
            other => out.push(other.clone()),
        }
    }
}

/// The shape of one image after a step: `(C, H, W)`, or `(D, 1, 1)` for a vector.
type Shape = (usize, usize, usize);

fn shape_error(op: &'static str, expected: String, (c, h, w): Shape) -> InferError {
    InferError::Shape {
        op,
        expected,
        given: vec![c, h, w],
    }
}

fn geometry(
    op: &'static str,
    dims: [usize; 4],
    stride: usize,
    pad: usize,
    (c, h, w): Shape,
) -> Result<ConvGeometry, InferError> {
    if dims[1] != c {
        return Err(shape_error(op, format!("({}, H, W)", dims[1]), (c, h, w)));
    }
    ConvGeometry::new(c, h, w, dims[2], dims[3], stride, pad).map_err(|e| invalid(op, e.to_string()))
}

fn dims4(op: &'static str, t: &Tensor) -> Result<[usize; 4], InferError> {
    match *t.shape() {
        [f, c, fh, fw] if f * c * fh * fw > 0 => Ok([f, c, fh, fw]),
        ref s => Err(invalid(op, format!("filters of shape {s:?}"))),
    }
}

/// The most values one image may have between two layers.
const MAX_IMAGE: usize = 1 << 28;

fn compile(ops: &[Op], mut shape: Shape) -> Result<Vec<Step>, InferError> {
    let mut steps = Vec::with_capacity(ops.len());
    for op in ops {
        let (step, next) = match op {
            Op::Convolution { w, b, stride, pad } => {
                let dims = dims4("Convolution", w)?;
                let g = geometry("Convolution", dims, *stride, *pad, shape)?;
                if b.as_ref().is_some_and(|b| b.len() != dims[0]) {
                    return Err(invalid("Convolution", "a bias of the wrong length".into()));
                }
                let step = Step::Conv {
                    w: w.iter().copied().collect(),
                    b: b.as_ref().map(|b| b.iter().copied().collect()),
                    filters: dims[0],
                    g,
                };
                (step, (dims[0], g.out_h, g.out_w))
            }
            Op::BinaryConvolution { w, stride, pad } => {
                let dims = dims4("BinaryConvolution", w)?;
                let g = geometry("BinaryConvolution", dims, *stride, *pad, shape)?;
                let data: Vec<f32> = w.iter().copied().collect();
                let conv = BinaryConv::new(&data, dims, *stride, *pad)
                    .map_err(|e| invalid("BinaryConvolution", e.to_string()))?;
                (Step::Binary(conv), (dims[0], g.out_h, g.out_w))
            }
            Op::BinaryAffine { w } => {
                let (c, h, wd) = shape;
                let (d, m) = match *w.shape() {
                    [d, m] => (d, m),
                    ref s => return Err(invalid("BinaryAffine", format!("weights of shape {s:?}"))),
                };
                if d != c * h * wd {
                    return Err(shape_error("BinaryAffine", format!("{d} values per image"), shape));
                }
                let data: Vec<f32> = w.iter().copied().collect();
                let dense = BinaryConv::affine(&data, m, shape).map_err(|e| invalid("BinaryAffine", e.to_string()))?;
                (Step::Binary(dense), (m, 1, 1))
            }
            &Op::Pooling {
                kind: PoolKind::Max,
                ph,
                pw,
                stride,
                pad,
            } => {
                let (c, h, w) = shape;
                let g =
                    ConvGeometry::new(c, h, w, ph, pw, stride, pad).map_err(|e| invalid("Pooling", e.to_string()))?;
                if pad >= ph || pad >= pw {
                    return Err(invalid(
                        "Pooling",
                        format!("padding {pad} must be smaller than the window"),
                    ));
                }
                (Step::MaxPool { ph, pw, stride, pad }, (c, g.out_h, g.out_w))
            }
            Op::Scale {
                scale,
                shift,
                per_channel,
            } => {
                let (c, h, w) = shape;
                let features = if *per_channel { c } else { c * h * w };
                if scale.len() != features || shift.len() != features {
                    return Err(invalid(
                        "BatchNormalization",
                        format!(
                            "{} scales and {} shifts for {features} features",
                            scale.len(),
                            shift.len()
                        ),
                    ));
                }
                let step = Step::Scale {
                    scale: scale.clone(),
                    shift: shift.clone(),
                    per_channel: *per_channel,
                };
                (step, shape)
            }
            Op::Sign => (Step::Sign, shape),
            Op::Affine { w, b } => {
                let (c, h, wd) = shape;
                let w2 = w
                    .clone()
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|_| invalid("Affine", format!("weights of shape {:?}", w.shape())))?;
                let (d, m) = w2.dim();
                if d != c * h * wd || b.len() != m {
                    return Err(shape_error("Affine", format!("{d} values per image"), shape));
                }
                let step = Step::Affine {
                    w: w2,
                    b: b.iter().copied().collect(),
                };
                (step, (m, 1, 1))
            }
            other => {
                return Err(invalid(
                    "BinaryNetwork",
                    format!("{} has no 1-bit form", op_name(other)),
                ))
            }
        };
        let (c, h, w) = next;
        if c.checked_mul(h)
            .and_then(|v| v.checked_mul(w))
            .is_none_or(|v| v > MAX_IMAGE)
        {
            return Err(invalid(
                "BinaryNetwork",
                format!("an image of {next:?} values between two layers"),
            ));
        }
        steps.push(step);
        shape = next;
    }
    Ok(fuse(steps))
}

/// Every batch norm followed by a sign made one step; then each binarized layer whose
/// batch norm and sign follow it (a max pooling between them) made a step that writes
/// signs.
fn fuse(steps: Vec<Step>) -> Vec<Step> {
    let mut steps = fuse_scale_sign(steps).into_iter().peekable();
    let mut out = Vec::new();
    while let Some(step) = steps.next() {
        let Step::Binary(conv) = step else {
            out.push(step);
            continue;
        };
        let pool = match steps.peek() {
            Some(&Step::MaxPool { ph, pw, stride, pad }) => {
                steps.next();
                Some((ph, pw, stride, pad))
            }
            _ => None,
        };
        let t = match steps.peek() {
            Some(Step::ScaleSign { scale, shift, .. }) if scale.len() == conv.dims()[0] => {
                thresholds(&conv, scale, shift).filter(|t| pool.is_none() || t.poolable())
            }
            _ => None,
        };
        match (t, pool) {
            (Some(t), pool) => {
                steps.next();
                out.push(Step::BinarySign { conv, t: t.clone() });
                if let Some((ph, pw, stride, pad)) = pool {
                    out.push(Step::SignPool { t, ph, pw, stride, pad });
                }
            }
            (None, pool) => {
                out.push(Step::Binary(conv));
                out.extend(pool.map(|(ph, pw, stride, pad)| Step::MaxPool { ph, pw, stride, pad }));
            }
        }
    }
    out
}

/// The thresholds of the batch norm `scale`, `shift` (one per filter) after `conv`:
/// [`scale_sign_ints`]'s arithmetic on every sum `conv` can give. `None` where there are
/// too many sums to try.
fn thresholds(conv: &BinaryConv, scale: &[f32], shift: &[f32]) -> Option<Thresholds> {
    Thresholds::from_fn(conv.dims()[0], conv.bound(), |ch, v| {
        v as f32 * scale[ch] + shift[ch] >= 0.0
    })
    .ok()
}

/// Every batch norm followed by a sign made one step.
fn fuse_scale_sign(steps: Vec<Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        match (out.last_mut(), step) {
            (Some(last @ Step::Scale { .. }), Step::Sign) => {
                let Step::Scale {
                    scale,
                    shift,
                    per_channel,
                } = std::mem::replace(last, Step::Sign)
                else {
                    unreachable!("matched a Scale")
                };
                *last = Step::ScaleSign {
                    scale,
                    shift,
                    per_channel,
                };
            }
            (_, step) => out.push(step),
        }
    }
    out
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Pooling { .. } => "average pooling",
        Op::Relu => "a ReLU",
        Op::Sigmoid => "a sigmoid",
        Op::GlobalAveragePooling => "global average pooling",
        Op::Multiply(_) => "dropout",
        Op::Residual { .. } => "a residual block",
        Op::Concat(_) => "an inception block",
        _ => "this op",
    }
}

/// A binarized network ready for packed 1-bit inference. Read-only: share it between
/// threads.
#[derive(Debug, Clone)]
pub struct BinaryNetwork {
    /// The ops, flattened, as the file stores them.
    ops: Vec<Op>,
    steps: Vec<Step>,
    input: Shape,
    kernel: Option<PopcountKernel>,
}

impl BinaryNetwork {
    /// The packed form of `layer` (a binarized network's root) for images of `input`
    /// `(C, H, W)`.
    pub fn new(layer: &dyn Layer, input: (usize, usize, usize)) -> Result<Self, InferError> {
        Self::from_op(&layer.inference_op()?, input)
    }

    /// The packed form of one [`Op`] (a [`Op::Sequential`] for a whole network).
    pub fn from_op(op: &Op, input: (usize, usize, usize)) -> Result<Self, InferError> {
        let mut ops = Vec::new();
        flatten(std::slice::from_ref(op), &mut ops);
        Ok(Self {
            steps: compile(&ops, input)?,
            ops,
            input,
            kernel: None,
        })
    }

    /// Runs the binarized layers with `kernel` (the scalar one where the CPU lacks it)
    /// instead of [`PopcountKernel::active`].
    pub fn with_kernel(mut self, kernel: PopcountKernel) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// The kernel the binarized layers run.
    pub fn kernel(&self) -> PopcountKernel {
        self.kernel.unwrap_or_else(PopcountKernel::active)
    }

    /// The steps the engine runs, by name, in order: the ops after fusion. A binarized
    /// layer followed by its batch norm and sign (a max pooling between them or not)
    /// runs as `"binary+sign"` (and `"sign-pool"`), its sums never leaving the registers.
    pub fn steps(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Conv { .. } => "conv",
                Step::Binary(_) => "binary",
                Step::MaxPool { .. } => "max-pool",
                Step::Scale { .. } => "batch-norm",
                Step::Sign => "sign",
                Step::ScaleSign { .. } => "batch-norm+sign",
                Step::Affine { .. } => "affine",
                Step::BinarySign { .. } => "binary+sign",
                Step::SignPool { .. } => "sign-pool",
            })
            .collect()
    }

    /// Bytes of the weights as stored: one bit per binarized weight (the filters padded
    /// to a multiple of 8 and each pixel's channels to whole words), `f32` for the rest.
    pub fn weight_bytes(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Conv { w, b, .. } => 4 * (w.len() + b.as_ref().map_or(0, Vec::len)),
                Step::Binary(conv) => conv.weight_bytes(),
                Step::Scale { scale, shift, .. } | Step::ScaleSign { scale, shift, .. } => {
                    4 * (scale.len() + shift.len())
                }
                Step::Affine { w, b } => 4 * (w.len() + b.len()),
                // the two bounds of each channel's range, as `i32`
                Step::BinarySign { conv, t } => conv.weight_bytes() + 8 * t.channels(),
                Step::MaxPool { .. } | Step::Sign | Step::SignPool { .. } => 0,
            })
            .sum()
    }

    /// The scores of a batch `x` `(N, C, H, W)`: those of the float network, bit for bit.
    /// On a rayon pool of one thread the pass runs on that thread, every layer's loops
    /// inline ([`dl_tensor::on_pool`]).
    pub fn predict(&self, x: &Tensor) -> Result<Tensor, InferError> {
        dl_tensor::on_pool(|| self.predict_here(x))
    }

    /// [`BinaryNetwork::predict`] on the calling thread.
    fn predict_here(&self, x: &Tensor) -> Result<Tensor, InferError> {
        let (c, h, w) = self.input;
        if x.ndim() != 4 || x.shape()[1..] != [c, h, w] {
            return Err(InferError::Shape {
                op: "BinaryNetwork",
                expected: format!("(N, {c}, {h}, {w})"),
                given: x.shape().to_vec(),
            });
        }
        let kernel = self.kernel();
        let mut value = Value::Real(x.as_standard_layout().into_owned());
        for step in &self.steps {
            value = run(step, value, kernel)?;
        }
        Ok(match value {
            Value::Real(t) => t,
            Value::Ints(g) => ints_tensor(&g),
            Value::Bits(g) => grid_tensor(g.to_nchw(), g.n, g.c, g.h, g.w),
        })
    }

    /// The network as a safetensors file: every binarized layer's signs packed 8 to a
    /// byte (`U8`, `ceil(n / 8)` bytes, bit `i % 8` of byte `i / 8` set for `+1`, in the
    /// float weights' order), every other tensor in `F32`, and the ops in the
    /// `dlfs-binary` metadata entry. About 32x smaller than the float file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut raw: Vec<crate::RawTensor> = Vec::new();
        let mut described = Vec::with_capacity(self.ops.len());
        let f32s = |t: &[f32]| -> Vec<u8> { t.iter().flat_map(|v| v.to_le_bytes()).collect() };
        for (i, op) in self.ops.iter().enumerate() {
            let mut push = |name: &str, dtype, shape: Vec<usize>, bytes: Vec<u8>| {
                raw.push((format!("{i}.{name}"), dtype, shape, bytes));
            };
            use safetensors::Dtype::{F32, U8};
            described.push(match op {
                Op::Convolution { w, b, stride, pad } => {
                    push(
                        "weight",
                        F32,
                        w.shape().to_vec(),
                        f32s(&w.iter().copied().collect::<Vec<_>>()),
                    );
                    if let Some(b) = b {
                        push(
                            "bias",
                            F32,
                            b.shape().to_vec(),
                            f32s(&b.iter().copied().collect::<Vec<_>>()),
                        );
                    }
                    StepDescription::Convolution {
                        stride: *stride,
                        pad: *pad,
                        bias: b.is_some(),
                    }
                }
                Op::BinaryConvolution { w, stride, pad } => {
                    push("signs", U8, vec![w.len().div_ceil(8)], pack_signs(w.iter()));
                    StepDescription::BinaryConvolution {
                        dims: w.shape().to_vec(),
                        stride: *stride,
                        pad: *pad,
                    }
                }
                Op::BinaryAffine { w } => {
                    push("signs", U8, vec![w.len().div_ceil(8)], pack_signs(w.iter()));
                    StepDescription::BinaryAffine {
                        dims: w.shape().to_vec(),
                    }
                }
                &Op::Pooling {
                    ph, pw, stride, pad, ..
                } => StepDescription::MaxPooling {
                    size: [ph, pw],
                    stride,
                    pad,
                },
                Op::Scale {
                    scale,
                    shift,
                    per_channel,
                } => {
                    push("scale", F32, vec![scale.len()], f32s(scale));
                    push("shift", F32, vec![shift.len()], f32s(shift));
                    StepDescription::Scale {
                        per_channel: *per_channel,
                    }
                }
                Op::Sign => StepDescription::Sign,
                Op::Affine { w, b } => {
                    push(
                        "weight",
                        F32,
                        w.shape().to_vec(),
                        f32s(&w.iter().copied().collect::<Vec<_>>()),
                    );
                    push(
                        "bias",
                        F32,
                        b.shape().to_vec(),
                        f32s(&b.iter().copied().collect::<Vec<_>>()),
                    );
                    StepDescription::Affine
                }
                _ => unreachable!("compile accepts no other op"),
            });
        }
        let description = Description {
            version: FORMAT_VERSION,
            input: self.input,
            steps: described,
        };
        crate::write_described(&raw, METADATA_KEY, &description)
    }

    /// Whether `bytes` are a safetensors file with a packed binarized network's metadata
    /// (without checking the rest).
    pub fn is_binary_file(bytes: &[u8]) -> bool {
        crate::has_metadata(bytes, METADATA_KEY)
    }

    /// A network from [`BinaryNetwork::to_bytes`]'s bytes. Every part is checked, and a
    /// file that is not one gets [`InferError::Format`]. The network takes at most 512
    /// bytes of memory per byte of the file (a packed filter of one channel fills a
    /// 64-bit word per sign, the filters padded to eight), and no image between two
    /// layers more than 2^28 values.
    pub fn from_bytes(bytes: &[u8]) -> Result<BinaryNetwork, InferError> {
        let format = |m: String| InferError::Format(format!("binary network: {m}"));
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| format(format!("no `{METADATA_KEY}` metadata")))?;
        let description: Description =
            serde_json::from_str(json).map_err(|e| format(format!("`{METADATA_KEY}` metadata: {e}")))?;
        if description.version != FORMAT_VERSION {
            return Err(format(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                description.version
            )));
        }
        let tensor = |name: String, dtype: safetensors::Dtype| -> Result<(Vec<usize>, &[u8]), InferError> {
            let view = st
                .tensor(&name)
                .map_err(|_| format(format!("tensor `{name}` missing")))?;
            if view.dtype() != dtype {
                return Err(format(format!(
                    "tensor `{name}` is {:?}, expected {dtype:?}",
                    view.dtype()
                )));
            }
            Ok((view.shape().to_vec(), view.data()))
        };
        let floats = |name: String| -> Result<Tensor, InferError> {
            let (shape, data) = tensor(name, safetensors::Dtype::F32)?;
            let values = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            Tensor::from_shape_vec(shape, values).map_err(|e| format(e.to_string()))
        };
        let signs = |name: String, dims: &[usize]| -> Result<Tensor, InferError> {
            let (shape, data) = tensor(name.clone(), safetensors::Dtype::U8)?;
            let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            match n {
                Some(n) if shape == [n.div_ceil(8)] && data.len() == n.div_ceil(8) => {
                    let values = (0..n).map(|i| if data[i / 8] >> (i % 8) & 1 == 1 { 1.0 } else { -1.0 });
                    Tensor::from_shape_vec(dims.to_vec(), values.collect()).map_err(|e| format(e.to_string()))
                }
                _ => Err(format(format!("tensor `{name}` of shape {shape:?} for signs {dims:?}"))),
            }
        };
        let vector = |t: Tensor| t.iter().copied().collect::<Vec<f32>>();
        let mut ops = Vec::with_capacity(description.steps.len());
        for (i, step) in description.steps.into_iter().enumerate() {
            ops.push(match step {
                StepDescription::Convolution { stride, pad, bias } => Op::Convolution {
                    w: floats(format!("{i}.weight"))?,
                    b: if bias { Some(floats(format!("{i}.bias"))?) } else { None },
                    stride,
                    pad,
                },
                StepDescription::BinaryConvolution { dims, stride, pad } => Op::BinaryConvolution {
                    w: signs(format!("{i}.signs"), &dims)?,
                    stride,
                    pad,
                },
                StepDescription::BinaryAffine { dims } => Op::BinaryAffine {
                    w: signs(format!("{i}.signs"), &dims)?,
                },
                StepDescription::MaxPooling { size, stride, pad } => Op::Pooling {
                    kind: PoolKind::Max,
                    ph: size[0],
                    pw: size[1],
                    stride,
                    pad,
                },
                StepDescription::Scale { per_channel } => Op::Scale {
                    scale: vector(floats(format!("{i}.scale"))?),
                    shift: vector(floats(format!("{i}.shift"))?),
                    per_channel,
                },
                StepDescription::Sign => Op::Sign,
                StepDescription::Affine => Op::Affine {
                    w: floats(format!("{i}.weight"))?,
                    b: floats(format!("{i}.bias"))?,
                },
            });
        }
        let (c, h, w) = description.input;
        if [c, h, w].contains(&0) || c.checked_mul(h).and_then(|v| v.checked_mul(w)).is_none() {
            return Err(format(format!("input {:?}", description.input)));
        }
        BinaryNetwork::from_op(&Op::Sequential(ops), description.input).map_err(|e| format(e.to_string()))
    }

    /// The predicted class of each image of `x`, `batch_size` images at a time.
    pub fn classify(&self, x: &Tensor, batch_size: usize) -> Result<Vec<usize>, InferError> {
        crate::classify_with(x, batch_size, |b| self.predict(b))
    }

    /// The fraction of the images of `x` whose class is `t`.
    pub fn accuracy(&self, x: &Tensor, t: &[usize], batch_size: usize) -> Result<f32, InferError> {
        crate::accuracy_of(self.classify(x, batch_size)?, t)
    }
}

/// The metadata entry of a packed binarized network's file.
const METADATA_KEY: &str = "dlfs-binary";

/// The file format's version.
const FORMAT_VERSION: u32 = 1;

/// The ops of a file, in order; their tensors are named `{index}.{part}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Description {
    version: u32,
    /// `(C, H, W)` of one input image.
    input: (usize, usize, usize),
    steps: Vec<StepDescription>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum StepDescription {
    Convolution {
        stride: usize,
        pad: usize,
        bias: bool,
    },
    BinaryConvolution {
        dims: Vec<usize>,
        stride: usize,
        pad: usize,
    },
    BinaryAffine {
        dims: Vec<usize>,
    },
    MaxPooling {
        size: [usize; 2],
        stride: usize,
        pad: usize,
    },
    Scale {
        per_channel: bool,
    },
    Sign,
    Affine,
}

/// Signs packed 8 to a byte, bit `i % 8` of byte `i / 8` set for `v >= 0`.
fn pack_signs<'a>(values: impl ExactSizeIterator<Item = &'a f32>) -> Vec<u8> {
    let mut out = vec![0u8; values.len().div_ceil(8)];
    for (i, &v) in values.enumerate() {
        out[i / 8] |= u8::from(v >= 0.0) << (i % 8);
    }
    out
}

/// `(n, c, h, w)` values as a tensor, `(n, c)` when the image is one pixel (a vector).
fn grid_tensor(data: Vec<f32>, n: usize, c: usize, h: usize, w: usize) -> Tensor {
    let shape = if h == 1 && w == 1 { vec![n, c] } else { vec![n, c, h, w] };
    Tensor::from_shape_vec(shape, data).expect("the grid's size")
}

fn ints_tensor(g: &IntGrid) -> Tensor {
    grid_tensor(g.to_nchw(), g.n, g.c, g.h, g.w)
}

/// `(N, C, H, W)` (or `(N, D)`, as `(N, D, 1, 1)`) of a real tensor.
fn nchw(t: &Tensor) -> (usize, usize, usize, usize) {
    match *t.shape() {
        [n, c, h, w] => (n, c, h, w),
        [n, d] => (n, d, 1, 1),
        _ => unreachable!("compile checked every step's input"),
    }
}

fn run(step: &Step, value: Value, kernel: PopcountKernel) -> Result<Value, InferError> {
    Ok(match (step, value) {
        (Step::Conv { w, b, filters, g }, Value::Real(x)) => {
            let n = x.shape()[0];
            let plan = ConvPlan::new(*g, *filters, ConvAlgo::Auto);
            let (out, _) = plan.forward(w, b.as_deref(), x.as_slice().expect("standard layout"));
            Value::Real(Tensor::from_shape_vec(vec![n, *filters, g.out_h, g.out_w], out).expect("output shape"))
        }
        (Step::Binary(conv), Value::Bits(x)) => Value::Ints(
            conv.forward(&x, kernel)
                .map_err(|e| invalid("BinaryConvolution", e.to_string()))?,
        ),
        (Step::BinarySign { conv, t }, Value::Bits(x)) => Value::Bits(
            conv.forward_signs(&x, t, kernel)
                .map_err(|e| invalid("BinaryConvolution", e.to_string()))?,
        ),
        (
            &Step::SignPool {
                ref t,
                ph,
                pw,
                stride,
                pad,
            },
            Value::Bits(x),
        ) => Value::Bits(
            t.max_pool(&x, ph, pw, stride, pad)
                .map_err(|e| invalid("Pooling", e.to_string()))?,
        ),
        (&Step::MaxPool { ph, pw, stride, pad }, Value::Ints(x)) => Value::Ints(max_pool(&x, ph, pw, stride, pad)),
        (&Step::MaxPool { ph, pw, stride, pad }, Value::Real(x)) => {
            let (n, c, h, w) = nchw(&x);
            let pooled = max_pool_real(
                x.as_slice().expect("standard layout"),
                (n, c, h, w),
                ph,
                pw,
                stride,
                pad,
            );
            Value::Real(pooled)
        }
        (
            Step::Scale {
                scale,
                shift,
                per_channel,
            },
            Value::Ints(x),
        ) => Value::Real(scaled_ints(&x, scale, shift, *per_channel)),
        (
            Step::Scale {
                scale,
                shift,
                per_channel,
            },
            Value::Real(x),
        ) => Value::Real(scaled(x, scale, shift, *per_channel)),
        (
            Step::ScaleSign {
                scale,
                shift,
                per_channel,
            },
            Value::Ints(x),
        ) => Value::Bits(scale_sign_ints(&x, scale, shift, *per_channel)),
        (
            Step::ScaleSign {
                scale,
                shift,
                per_channel,
            },
            Value::Real(x),
        ) => Value::Bits(scale_sign_real(&x, scale, shift, *per_channel)),
        (Step::Sign, Value::Real(x)) => {
            let (n, c, h, w) = nchw(&x);
            Value::Bits(BitGrid::from_nchw(x.as_slice().expect("standard layout"), n, c, h, w))
        }
        (Step::Sign, Value::Ints(x)) => {
            let data: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
            Value::Bits(BitGrid::from_nhwc(&data, x.n, x.h, x.w, x.c))
        }
        (Step::Affine { w, b }, value) => {
            let x = match value {
                Value::Real(x) => x,
                Value::Bits(g) => grid_tensor(g.to_nchw(), g.n, g.c, g.h, g.w),
                Value::Ints(g) => ints_tensor(&g),
            };
            let n = x.shape()[0];
            let x2 = x
                .into_shape_with_order((n, w.nrows()))
                .expect("compile checked the size")
                .into_owned();
            // the Affine layer's arithmetic: the bias first, then the product added
            let mut out = Array2::<f32>::zeros((n, w.ncols()));
            out += &ndarray::ArrayView1::from(b.as_slice());
            gemm(1.0, &x2.view(), &w.view(), 1.0, &mut out.view_mut());
            Value::Real(out.into_dyn())
        }
        (Step::Binary(_) | Step::BinarySign { .. } | Step::SignPool { .. }, Value::Real(_) | Value::Ints(_)) => {
            return Err(invalid(
                "BinaryNetwork",
                "a binarized layer's input must be a Sign's output".into(),
            ))
        }
        (_, Value::Bits(_)) => {
            return Err(invalid(
                "BinaryNetwork",
                "signs can only feed a binarized or affine layer".into(),
            ))
        }
        (Step::Conv { .. }, Value::Ints(_)) => {
            return Err(invalid(
                "BinaryNetwork",
                "a convolution in f32 after a binarized layer".into(),
            ))
        }
    })
}

/// Max pooling of integer sums, channels last (padding never wins).
fn max_pool(x: &IntGrid, ph: usize, pw: usize, stride: usize, pad: usize) -> IntGrid {
    let oh = (x.h + 2 * pad - ph) / stride + 1;
    let ow = (x.w + 2 * pad - pw) / stride + 1;
    let c = x.c;
    let mut data = vec![i32::MIN; x.n * oh * ow * c];
    data.par_chunks_mut((oh * ow * c).max(1))
        .zip(x.data.par_chunks((x.h * x.w * c).max(1)))
        .for_each(|(out, img)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = &mut out[(oy * ow + ox) * c..][..c];
                    for ky in 0..ph {
                        let Some(y) = (oy * stride + ky).checked_sub(pad).filter(|&y| y < x.h) else {
                            continue;
                        };
                        for kx in 0..pw {
                            let Some(xx) = (ox * stride + kx).checked_sub(pad).filter(|&v| v < x.w) else {
                                continue;
                            };
                            for (o, &v) in o.iter_mut().zip(&img[(y * x.w + xx) * c..][..c]) {
                                *o = (*o).max(v);
                            }
                        }
                    }
                }
            }
        });
    IntGrid {
        n: x.n,
        h: oh,
        w: ow,
        c,
        data,
    }
}

/// Max pooling of reals `(N, C, H, W)` (padding never wins).
fn max_pool_real(
    x: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    ph: usize,
    pw: usize,
    stride: usize,
    pad: usize,
) -> Tensor {
    let oh = (h + 2 * pad - ph) / stride + 1;
    let ow = (w + 2 * pad - pw) / stride + 1;
    let mut out = vec![f32::NEG_INFINITY; n * c * oh * ow];
    for (plane, o) in x.chunks(h * w).zip(out.chunks_mut(oh * ow)) {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..ph {
                    for kx in 0..pw {
                        let (y, xx) = ((oy * stride + ky).checked_sub(pad), (ox * stride + kx).checked_sub(pad));
                        if let (Some(y), Some(xx)) = (y, xx) {
                            if y < h && xx < w {
                                o[oy * ow + ox] = o[oy * ow + ox].max(plane[y * w + xx]);
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::from_shape_vec(vec![n, c, oh, ow], out).expect("output shape")
}

/// The signs of `v * scale + shift` of integer sums (channels last), packed: the float
/// batch norm's arithmetic on the same (exact) values, then [`dl_layers::sign`]'s test.
fn scale_sign_ints(x: &IntGrid, scale: &[f32], shift: &[f32], per_channel: bool) -> BitGrid {
    let (plane, c) = (x.h * x.w, x.c);
    let wpp = dl_tensor::binary::words(c);
    let mut data = vec![0u64; x.n * plane * wpp];
    data.par_chunks_mut((plane * wpp).max(1))
        .zip(x.data.par_chunks((plane * c).max(1)))
        .for_each(|(out, img)| {
            for p in 0..plane {
                let sums = &img[p * c..][..c];
                let words = &mut out[p * wpp..][..wpp];
                for (ch, &v) in sums.iter().enumerate() {
                    let f = if per_channel { ch } else { ch * plane + p };
                    words[ch / 64] |= u64::from(v as f32 * scale[f] + shift[f] >= 0.0) << (ch % 64);
                }
            }
        });
    BitGrid {
        n: x.n,
        h: x.h,
        w: x.w,
        c,
        data,
    }
}

/// The signs of `v * scale + shift` of reals in the float network's layout, packed.
fn scale_sign_real(x: &Tensor, scale: &[f32], shift: &[f32], per_channel: bool) -> BitGrid {
    let (n, c, h, w) = nchw(x);
    let plane = h * w;
    let wpp = dl_tensor::binary::words(c);
    let mut data = vec![0u64; n * plane * wpp];
    data.par_chunks_mut((plane * wpp).max(1))
        .zip(x.as_slice().expect("standard layout").par_chunks((c * plane).max(1)))
        .for_each(|(out, img)| {
            for ch in 0..c {
                let (word, bit) = (ch / 64, ch % 64);
                for (p, &v) in img[ch * plane..][..plane].iter().enumerate() {
                    let f = if per_channel { ch } else { ch * plane + p };
                    out[p * wpp + word] |= u64::from(v * scale[f] + shift[f] >= 0.0) << bit;
                }
            }
        });
    BitGrid { n, h, w, c, data }
}

/// `v * scale + shift` of integer sums, as the float batch norm computes it on the same
/// (exact) values, laid out as the float network's.
fn scaled_ints(x: &IntGrid, scale: &[f32], shift: &[f32], per_channel: bool) -> Tensor {
    scaled(ints_tensor(x), scale, shift, per_channel)
}

/// `v * scale + shift` per feature of reals in the float network's layout.
fn scaled(mut t: Tensor, scale: &[f32], shift: &[f32], per_channel: bool) -> Tensor {
    let (_, c, h, w) = nchw(&t);
    let plane = if per_channel { h * w } else { 1 };
    t.as_slice_mut()
        .expect("standard layout")
        .par_chunks_mut((c * h * w).max(1))
        .for_each(|img| {
            for (i, v) in img.iter_mut().enumerate() {
                let f = i / plane;
                *v = *v * scale[f] + shift[f];
            }
        });
    t
}
