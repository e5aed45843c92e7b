//! # dl-infer
//!
//! Inference of a trained `dlfs` network in fewer bits, the book's last speed-up
//! (chapter 8, "reducing the bit precision"): the network's weights and every
//! activation between its layers are stored as 16-bit floats ([`f16`](struct@f16), IEEE half, or
//! [`bf16`], bfloat16), and each layer reads them, multiplies and sums in `f32`, and
//! rounds its output once back to 16 bits (the kernels are in [`dl_tensor::lowp`]).
//! `f32` itself is a [`Precision`] too, so the comparison the book makes (accuracy in
//! 16 bits against 32) runs the same code at both.
//!
//! The book also notes that 8 bits are enough for inference (Google's TPU): the
//! [`int8`] module quantizes a trained network after training ([`QuantizedNetwork`]:
//! `i8` weights per output channel, `u8` activations calibrated on training images,
//! `i32` sums) and runs it with `dl_tensor`'s integer kernels.
//!
//! An [`InferenceNetwork`] is built from a layer's evaluation-mode form
//! ([`dl_layers::Layer::inference_op`]): batch norm folded into a scale and shift, the
//! book's dropout into its evaluation multiplier, a convolution or affine layer and the
//! ReLU after it into one pass. It holds no training cache: [`InferenceNetwork::predict`]
//! takes `&self`, so one network serves many threads at once.
//!
//! ```
//! use dl_infer::{Inference, Precision};
//! use dl_layers::{Affine, Convolution, Init, Layer, Pooling, Relu, Sequential};
//! use ndarray::ArrayD;
//!
//! let root = Sequential::new()
//!     .with(Convolution::new(1, 4, 3, 3, 1, 1, Init::He, 1))
//!     .with(Relu::new())
//!     .with(Pooling::max(2, 2, 2, 0))
//!     .with(Affine::new(4 * 4 * 4, 10, Init::He, 2));
//! let half = Inference::new(&root, Precision::F16).unwrap();
//! let x = ArrayD::<f32>::from_elem(vec![3, 1, 8, 8], 0.5);
//! let scores = half.predict(&x).unwrap();
//! assert_eq!(scores.shape(), &[3, 10]);
//! // half the bytes of the f32 weights
//! let full = Inference::new(&root, Precision::F32).unwrap();
//! assert_eq!(2 * half.weight_bytes(), full.weight_bytes());
//! ```

use dl_layers::{Layer, LayerError, Op, PoolKind, Tensor};
use dl_tensor::lowp::{self, Epilogue, LowpConv, LowpScratch, Storage};
use dl_tensor::{ConvAlgo, ConvGeometry};
use rayon::prelude::*;

pub use dl_tensor::lowp::{bf16, f16, Precision, UnknownPrecision};

pub mod binary;
pub mod int8;
pub use binary::BinaryNetwork;
pub use int8::QuantizedNetwork;

/// Why a network cannot be built for inference or refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    /// A layer has no inference form.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The input (or an op's, from the one before) has the wrong shape.
    #[error("{op}: expected input of shape {expected}, got {given:?}")]
    Shape {
        /// The op, e.g. `"Convolution"`.
        op: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The shape given.
        given: Vec<usize>,
    },
    /// An op whose parts do not fit each other (a bias of the wrong length), or one
    /// with no form at the precision asked for.
    #[error("{op}: {message}")]
    Invalid {
        /// The op.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Bytes that are not a quantized network's file.
    #[error("not a valid int8 network file: {0}")]
    Format(String),
}

/// One op ready to run at storage type `E`: weights stored as `E`, shapes checked.
#[derive(Debug, Clone)]
enum Node<E> {
    Conv {
        w: Vec<E>,
        b: Option<Vec<E>>,
        /// `(FN, C, FH, FW)`.
        dims: [usize; 4],
        stride: usize,
        pad: usize,
        relu: bool,
        plans: PlanCache,
    },
    Affine {
        w: Vec<E>,
        b: Option<Vec<E>>,
        d: usize,
        m: usize,
        relu: bool,
    },
    Relu,
    Sigmoid,
    Sign,
    Pool {
        kind: PoolKind,
        ph: usize,
        pw: usize,
        stride: usize,
        pad: usize,
    },
    GlobalAveragePooling,
    Scale {
        scale: Vec<E>,
        shift: Vec<E>,
        per_channel: bool,
    },
    Multiply(E),
    Sequential(Vec<Node<E>>),
    Residual {
        body: Vec<Node<E>>,
        shortcut: Option<Vec<Node<E>>>,
    },
    Concat(Vec<Vec<Node<E>>>),
}

/// The convolutions an op has run, by input geometry: the filters widened to `f32` and
/// the kernel's own transform of them (Winograd's) are made once per image size, not
/// once per batch. A copy of the network starts with an empty cache.
#[derive(Debug, Default)]
struct PlanCache(std::sync::RwLock<Vec<std::sync::Arc<LowpConv>>>);

impl Clone for PlanCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PlanCache {
    /// The convolution for `g`, made by `make` the first time.
    fn get(&self, g: &ConvGeometry, make: impl FnOnce() -> LowpConv) -> std::sync::Arc<LowpConv> {
        let found = |plans: &[std::sync::Arc<LowpConv>]| plans.iter().find(|p| p.geometry() == g).cloned();
        if let Some(p) = found(&self.0.read().unwrap_or_else(|e| e.into_inner())) {
            return p;
        }
        let mut plans = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = found(&plans) {
            return p;
        }
        let p = std::sync::Arc::new(make());
        plans.push(p.clone());
        p
    }
}

/// A batch of activations stored as `E`, row-major with its shape.
#[derive(Debug, Clone)]
struct Act<E> {
    shape: Vec<usize>,
    data: Vec<E>,
}

fn stored<E: Storage>(t: &Tensor) -> Vec<E> {
    t.iter().map(|&v| E::from_f32(v)).collect()
}

fn widened<E: Storage>(v: &[E]) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    E::to_f32_slice(v, &mut out);
    out
}

/// A tensor as a file stores it: name, type, shape and little-endian bytes.
pub(crate) type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Safetensors bytes of `raw` with `description` as JSON under the metadata entry `key`
/// (the file formats of [`int8`] and [`binary`]).
pub(crate) fn write_described(raw: &[RawTensor], key: &str, description: &impl serde::Serialize) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).expect("consistent view");
            (name.clone(), view)
        })
        .collect();
    let meta =
        std::collections::HashMap::from([(key.to_string(), serde_json::to_string(description).expect("plain data"))]);
    safetensors::serialize(views, &Some(meta)).expect("serialising in-memory tensors")
}

/// Whether `bytes` are a safetensors file with the metadata entry `key` (without
/// checking the rest).
pub(crate) fn has_metadata(bytes: &[u8], key: &str) -> bool {
    safetensors::SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref().map(|m| m.contains_key(key)))
        .unwrap_or(false)
}

fn invalid(op: &'static str, message: String) -> InferError {
    InferError::Invalid { op, message }
}

/// The node of one op.
fn single<E: Storage>(op: Op) -> Result<Node<E>, InferError> {
    Ok(compile(std::slice::from_ref(&op))?.remove(0))
}

fn compile<E: Storage>(ops: &[Op]) -> Result<Vec<Node<E>>, InferError> {
    let mut nodes = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        // A ReLU right after a convolution or an affine layer runs in its epilogue:
        // rounding keeps signs, so relu-then-round is round-then-relu.
        let fuse = matches!(ops.get(i + 1), Some(Op::Relu));
        let node = match &ops[i] {
            Op::Convolution { w, b, stride, pad } => {
                let s = w.shape();
                if s.len() != 4 || s.contains(&0) || *stride == 0 {
                    return Err(invalid(
                        "Convolution",
                        format!("filters of shape {s:?} with stride {stride}"),
                    ));
                }
                if let Some(b) = b {
                    if b.shape() != [s[0]] {
                        return Err(invalid(
                            "Convolution",
                            format!("bias of shape {:?} for {} filters", b.shape(), s[0]),
                        ));
                    }
                }
                Node::Conv {
                    w: stored(w),
                    b: b.as_ref().map(stored),
                    dims: [s[0], s[1], s[2], s[3]],
                    stride: *stride,
                    pad: *pad,
                    relu: fuse,
                    plans: PlanCache::default(),
                }
            }
            Op::Affine { w, b } => {
                let s = w.shape();
                if s.len() != 2 || s.contains(&0) || b.shape() != [s[1]] {
                    return Err(invalid(
                        "Affine",
                        format!("weights {s:?} and bias {:?} do not fit", b.shape()),
                    ));
                }
                Node::Affine {
                    w: stored(w),
                    b: Some(stored(b)),
                    d: s[0],
                    m: s[1],
                    relu: fuse,
                }
            }
            // a binarized layer is a plain one whose weights are all +1 or -1 (exact at
            // every precision); dl_infer::binary runs it packed
            Op::BinaryConvolution { w, stride, pad } => single(Op::Convolution {
                w: w.clone(),
                b: None,
                stride: *stride,
                pad: *pad,
            })?,
            Op::BinaryAffine { w } => match single(Op::Affine {
                w: w.clone(),
                b: Tensor::zeros(vec![w.shape().get(1).copied().unwrap_or(0)]),
            })? {
                Node::Affine { w, d, m, relu, .. } => Node::Affine { w, b: None, d, m, relu },
                _ => unreachable!("an affine op compiles to an affine node"),
            },
            Op::Sign => Node::Sign,
            Op::Relu => Node::Relu,
            Op::Sigmoid => Node::Sigmoid,
            &Op::Pooling {
                kind,
                ph,
                pw,
                stride,
                pad,
            } => {
                if pad >= ph || pad >= pw {
                    return Err(invalid(
                        "Pooling",
                        format!("padding {pad} must be smaller than the window {ph}x{pw}"),
                    ));
                }
                Node::Pool {
                    kind,
                    ph,
                    pw,
                    stride,
                    pad,
                }
            }
            Op::GlobalAveragePooling => Node::GlobalAveragePooling,
            Op::Scale {
                scale,
                shift,
                per_channel,
            } => {
                if scale.len() != shift.len() {
                    return Err(invalid(
                        "BatchNormalization",
                        format!("{} scales and {} shifts", scale.len(), shift.len()),
                    ));
                }
                Node::Scale {
                    scale: scale.iter().map(|&v| E::from_f32(v)).collect(),
                    shift: shift.iter().map(|&v| E::from_f32(v)).collect(),
                    per_channel: *per_channel,
                }
            }
            &Op::Multiply(k) => Node::Multiply(E::from_f32(k)),
            Op::Sequential(ops) => Node::Sequential(compile(ops)?),
            Op::Residual { body, shortcut } => Node::Residual {
                body: compile(body)?,
                shortcut: shortcut.as_deref().map(compile).transpose()?,
            },
            Op::Concat(branches) => {
                if branches.is_empty() {
                    return Err(invalid("Concat", "no branches".into()));
                }
                Node::Concat(branches.iter().map(|b| compile(b)).collect::<Result<_, _>>()?)
            }
        };
        let fused = matches!(node, Node::Conv { relu: true, .. } | Node::Affine { relu: true, .. });
        nodes.push(node);
        i += if fused { 2 } else { 1 };
    }
    Ok(nodes)
}

/// Images per parallel task of the ops that work image by image.
fn images_per_task(n: usize) -> usize {
    n.div_ceil(4 * rayon::current_num_threads()).max(1)
}

fn geometry(
    op: &'static str,
    shape: &[usize],
    fh: usize,
    fw: usize,
    stride: usize,
    pad: usize,
) -> Result<ConvGeometry, InferError> {
    ConvGeometry::new(shape[1], shape[2], shape[3], fh, fw, stride, pad).map_err(|e| invalid(op, e.to_string()))
}

fn need_4d(op: &'static str, shape: &[usize], channels: Option<usize>) -> Result<(), InferError> {
    let ok = shape.len() == 4 && channels.is_none_or(|c| shape[1] == c);
    if ok {
        Ok(())
    } else {
        let c = channels.map_or("C".to_string(), |c| c.to_string());
        Err(InferError::Shape {
            op,
            expected: format!("(N, {c}, H, W)"),
            given: shape.to_vec(),
        })
    }
}

impl<E: Storage> Node<E> {
    fn run(&self, x: Act<E>) -> Result<Act<E>, InferError> {
        match self {
            Node::Conv {
                w,
                b,
                dims,
                stride,
                pad,
                relu,
                plans,
            } => {
                let [f, c, fh, fw] = *dims;
                need_4d("Convolution", &x.shape, Some(c))?;
                let g = geometry("Convolution", &x.shape, fh, fw, *stride, *pad)?;
                let n = x.shape[0];
                let conv = plans.get(&g, || LowpConv::new(widened(w), f, g, ConvAlgo::Auto));
                let b32 = b.as_deref().map(widened);
                let per = f * g.col_cols();
                let mut out = vec![E::default(); n * per];
                let epilogue = Epilogue {
                    bias: b32.as_deref(),
                    relu: *relu,
                };
                let chunk = images_per_task(n);
                let image = c * g.h * g.w;
                out.par_chunks_mut(per * chunk)
                    .zip(x.data.par_chunks(image * chunk))
                    .for_each_init(LowpScratch::default, |scratch, (o, xs)| {
                        for (oi, xi) in o.chunks_exact_mut(per).zip(xs.chunks_exact(image)) {
                            conv.forward_image(xi, epilogue, oi, scratch);
                        }
                    });
                Ok(Act {
                    shape: vec![n, f, g.out_h, g.out_w],
                    data: out,
                })
            }
            Node::Affine { w, b, d, m, relu } => {
                let (d, m) = (*d, *m);
                let n = x.shape.first().copied().unwrap_or(0);
                if x.shape.len() < 2 || x.shape[1..].iter().product::<usize>() != d {
                    return Err(InferError::Shape {
                        op: "Affine",
                        expected: format!("(N, ...) with {d} values per image"),
                        given: x.shape.clone(),
                    });
                }
                let (w32, b32) = (widened(w), b.as_deref().map(widened));
                let wv = ndarray::ArrayView2::from_shape((d, m), &w32[..]).expect("checked at compile");
                let epilogue = Epilogue {
                    bias: b32.as_deref(),
                    relu: *relu,
                };
                let mut out = vec![E::default(); n * m];
                let chunk = images_per_task(n);
                out.par_chunks_mut(m * chunk)
                    .zip(x.data.par_chunks(d * chunk))
                    .for_each_init(LowpScratch::default, |scratch, (o, xs)| {
                        lowp::affine(xs, &wv, epilogue, o, scratch);
                    });
                Ok(Act {
                    shape: vec![n, m],
                    data: out,
                })
            }
            Node::Relu => Ok(map(x, |v| v.max(0.0))),
            Node::Sigmoid => Ok(map(x, |v| 1.0 / (1.0 + (-v).exp()))),
            Node::Sign => Ok(map(x, dl_layers::sign)),
            &Node::Pool {
                kind,
                ph,
                pw,
                stride,
                pad,
            } => {
                need_4d("Pooling", &x.shape, None)?;
                let g = geometry("Pooling", &x.shape, ph, pw, stride, pad)?;
                let n = x.shape[0];
                let (image, per) = (g.c * g.h * g.w, g.c * g.col_cols());
                let mut out = vec![E::default(); n * per];
                out.par_chunks_mut(per)
                    .zip(x.data.par_chunks(image))
                    .for_each(|(o, xi)| match kind {
                        PoolKind::Max => lowp::max_pool_image(xi, &g, o),
                        PoolKind::Average => lowp::average_pool_image(xi, &g, o),
                    });
                Ok(Act {
                    shape: vec![n, g.c, g.out_h, g.out_w],
                    data: out,
                })
            }
            Node::GlobalAveragePooling => {
                need_4d("GlobalAveragePooling", &x.shape, None)?;
                let plane = x.shape[2] * x.shape[3];
                let scale = 1.0 / plane as f32;
                let data = x
                    .data
                    .chunks_exact(plane.max(1))
                    .map(|p| E::from_f32(p.iter().map(|v| v.to_f32()).sum::<f32>() * scale))
                    .collect();
                Ok(Act {
                    shape: x.shape[..2].to_vec(),
                    data,
                })
            }
            Node::Scale {
                scale,
                shift,
                per_channel,
            } => {
                let n = x.shape.first().copied().unwrap_or(0);
                let (f, s) = if *per_channel && x.shape.len() >= 2 {
                    (x.shape[1], x.shape[2..].iter().product::<usize>())
                } else {
                    (x.shape.iter().skip(1).product::<usize>(), 1)
                };
                if x.shape.len() < 2 || f != scale.len() {
                    let what = if *per_channel { "channels" } else { "values per image" };
                    return Err(InferError::Shape {
                        op: "BatchNormalization",
                        expected: format!("(N, ...) with {} {what}", scale.len()),
                        given: x.shape.clone(),
                    });
                }
                let (a, c) = (widened(scale), widened(shift));
                let mut x = x;
                x.data.par_chunks_mut(f * s).for_each(|image| {
                    for ((feature, a), c) in image.chunks_exact_mut(s).zip(&a).zip(&c) {
                        feature.iter_mut().for_each(|v| *v = E::from_f32(v.to_f32() * a + c));
                    }
                });
                debug_assert_eq!(x.data.len(), n * f * s);
                Ok(x)
            }
            Node::Multiply(k) => {
                let k = k.to_f32();
                Ok(map(x, |v| v * k))
            }
            Node::Sequential(nodes) => run_all(nodes, x),
            Node::Residual { body, shortcut } => {
                let y = run_all(body, x.clone())?;
                let s = match shortcut {
                    Some(nodes) => run_all(nodes, x)?,
                    None => x,
                };
                if y.shape != s.shape {
                    return Err(InferError::Shape {
                        op: "Residual",
                        expected: format!("the body's output {:?} from the shortcut", y.shape),
                        given: s.shape,
                    });
                }
                let mut y = y;
                y.data.par_iter_mut().zip(&s.data).for_each(|(v, s)| {
                    *v = E::from_f32((v.to_f32() + s.to_f32()).max(0.0));
                });
                Ok(y)
            }
            Node::Concat(branches) => {
                let outs = branches
                    .iter()
                    .map(|b| run_all(b, x.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let first = &outs[0].shape;
                if first.len() < 2
                    || outs
                        .iter()
                        .any(|o| o.shape.len() != first.len() || o.shape[0] != first[0] || o.shape[2..] != first[2..])
                {
                    let shapes: Vec<&Vec<usize>> = outs.iter().map(|o| &o.shape).collect();
                    return Err(invalid(
                        "Concat",
                        format!("the branches' outputs {shapes:?} differ in more than their channels"),
                    ));
                }
                let n = first[0];
                let mut shape = first.clone();
                shape[1] = outs.iter().map(|o| o.shape[1]).sum();
                let mut data = Vec::with_capacity(outs.iter().map(|o| o.data.len()).sum());
                for i in 0..n {
                    for o in &outs {
                        let per = o.data.len() / n;
                        data.extend_from_slice(&o.data[i * per..(i + 1) * per]);
                    }
                }
                Ok(Act { shape, data })
            }
        }
    }

    /// Values stored: weights, biases, scales.
    fn stored_values(&self) -> usize {
        let all = |nodes: &[Node<E>]| nodes.iter().map(Node::stored_values).sum::<usize>();
        match self {
            Node::Conv { w, b, .. } => w.len() + b.as_ref().map_or(0, Vec::len),
            Node::Affine { w, b, .. } => w.len() + b.as_ref().map_or(0, Vec::len),
            Node::Scale { scale, shift, .. } => scale.len() + shift.len(),
            Node::Sequential(nodes) => all(nodes),
            Node::Residual { body, shortcut } => all(body) + shortcut.as_deref().map_or(0, all),
            Node::Concat(branches) => branches.iter().map(|b| all(b)).sum(),
            Node::Relu
            | Node::Sigmoid
            | Node::Sign
            | Node::Pool { .. }
            | Node::GlobalAveragePooling
            | Node::Multiply(_) => 0,
        }
    }
}

/// `f` of each value, computed in `f32` and rounded once.
fn map<E: Storage>(mut x: Act<E>, f: impl Fn(f32) -> f32 + Sync) -> Act<E> {
    x.data.par_iter_mut().for_each(|v| *v = E::from_f32(f(v.to_f32())));
    x
}

fn run_all<E: Storage>(nodes: &[Node<E>], x: Act<E>) -> Result<Act<E>, InferError> {
    nodes.iter().try_fold(x, |x, node| node.run(x))
}

/// A network ready for inference at storage type `E` (`f32`, [`f16`](struct@f16) or [`bf16`]):
/// weights and activations stored as `E`, products summed in `f32`. Read-only: share it
/// between threads.
#[derive(Debug, Clone)]
pub struct InferenceNetwork<E> {
    nodes: Vec<Node<E>>,
}

impl<E: Storage> InferenceNetwork<E> {
    /// The inference form of `layer` (a network's root), its weights rounded to `E`.
    pub fn new(layer: &dyn Layer) -> Result<Self, InferError> {
        Self::from_op(&layer.inference_op()?)
    }

    /// The network of one [`Op`] (a [`Op::Sequential`] for a whole network).
    pub fn from_op(op: &Op) -> Result<Self, InferError> {
        Ok(Self {
            nodes: compile(std::slice::from_ref(op))?,
        })
    }

    /// The scores of a batch `x` (`(N, C, H, W)` images, or whatever the first layer
    /// takes), stored as `E` on the way in and widened to `f32` on the way out. On a
    /// rayon pool of one thread the pass runs on that thread, every layer's loops inline
    /// ([`dl_tensor::on_pool`]).
    pub fn predict(&self, x: &Tensor) -> Result<Tensor, InferError> {
        dl_tensor::on_pool(|| self.predict_here(x))
    }

    /// [`InferenceNetwork::predict`] on the calling thread.
    fn predict_here(&self, x: &Tensor) -> Result<Tensor, InferError> {
        let x = Act {
            shape: x.shape().to_vec(),
            data: x.iter().map(|&v| E::from_f32(v)).collect(),
        };
        let y = run_all(&self.nodes, x)?;
        let data = widened(&y.data);
        Ok(Tensor::from_shape_vec(y.shape, data).expect("an op's shape fits its data"))
    }

    /// Bytes of the stored weights, biases and batch-norm scales and shifts (as many
    /// values as the network's parameters).
    pub fn weight_bytes(&self) -> usize {
        self.nodes.iter().map(Node::stored_values).sum::<usize>() * E::BYTES
    }
}

/// An [`InferenceNetwork`] of a precision chosen at run time.
#[derive(Debug, Clone)]
pub enum Inference {
    /// 32-bit floats.
    F32(InferenceNetwork<f32>),
    /// IEEE half floats.
    F16(InferenceNetwork<f16>),
    /// bfloat16.
    Bf16(InferenceNetwork<bf16>),
}

impl Inference {
    /// The inference form of `layer` at `precision`.
    pub fn new(layer: &dyn Layer, precision: Precision) -> Result<Self, InferError> {
        Ok(match precision {
            Precision::F32 => Inference::F32(InferenceNetwork::new(layer)?),
            Precision::F16 => Inference::F16(InferenceNetwork::new(layer)?),
            Precision::Bf16 => Inference::Bf16(InferenceNetwork::new(layer)?),
        })
    }

    /// The precision it stores weights and activations in.
    pub fn precision(&self) -> Precision {
        match self {
            Inference::F32(_) => Precision::F32,
            Inference::F16(_) => Precision::F16,
            Inference::Bf16(_) => Precision::Bf16,
        }
    }

    /// [`InferenceNetwork::predict`].
    pub fn predict(&self, x: &Tensor) -> Result<Tensor, InferError> {
        match self {
            Inference::F32(n) => n.predict(x),
            Inference::F16(n) => n.predict(x),
            Inference::Bf16(n) => n.predict(x),
        }
    }

    /// [`InferenceNetwork::weight_bytes`].
    pub fn weight_bytes(&self) -> usize {
        match self {
            Inference::F32(n) => n.weight_bytes(),
            Inference::F16(n) => n.weight_bytes(),
            Inference::Bf16(n) => n.weight_bytes(),
        }
    }

    /// The predicted class of each image of `x`, `batch_size` images at a time (the
    /// first of equal scores wins).
    pub fn classify(&self, x: &Tensor, batch_size: usize) -> Result<Vec<usize>, InferError> {
        classify_with(x, batch_size, |b| self.predict(b))
    }

    /// The fraction of the images of `x` whose class is `t`.
    pub fn accuracy(&self, x: &Tensor, t: &[usize], batch_size: usize) -> Result<f32, InferError> {
        accuracy_of(self.classify(x, batch_size)?, t)
    }
}

/// The class of each image of `x` by `predict`, `batch_size` images at a time (the
/// first of equal scores wins).
fn classify_with(
    x: &Tensor,
    batch_size: usize,
    predict: impl Fn(&Tensor) -> Result<Tensor, InferError>,
) -> Result<Vec<usize>, InferError> {
    let n = x.shape().first().copied().unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(n);
        let scores = predict(&x.slice_axis(ndarray::Axis(0), (start..end).into()).to_owned())?;
        let scores = scores
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| invalid("classify", "the network's output is not (N, classes)".into()))?;
        out.extend(dl_tensor::argmax_rows(&scores.view()));
    }
    Ok(out)
}

/// The fraction of `predicted` equal to `t`.
fn accuracy_of(predicted: Vec<usize>, t: &[usize]) -> Result<f32, InferError> {
    if predicted.len() != t.len() {
        return Err(invalid(
            "accuracy",
            format!("{} images and {} labels", predicted.len(), t.len()),
        ));
    }
    if t.is_empty() {
        return Ok(0.0);
    }
    let right = predicted.iter().zip(t).filter(|(p, t)| p == t).count();
    Ok(right as f32 / t.len() as f32)
}
