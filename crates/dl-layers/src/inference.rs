//! What a layer computes at inference, as data: [`Op`], the form a network takes when it
//! is run in another precision ([`Layer::inference_op`](crate::Layer::inference_op)).

use crate::{PoolKind, Tensor};

/// One layer's inference-time computation: its evaluation-mode forward with every
/// training-only part resolved (dropout's evaluation scale, batch norm's running
/// statistics folded into a scale and a shift per feature). An executor of another
/// precision walks these instead of the layers, so it needs no layer's training cache
/// and can be shared by many threads.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `Convolution`: filters `w` `(FN, C, FH, FW)`, bias `(FN,)` if any.
    Convolution {
        /// Filters `(FN, C, FH, FW)`.
        w: Tensor,
        /// Bias `(FN,)`.
        b: Option<Tensor>,
        /// Stride (both directions).
        stride: usize,
        /// Zero padding (all four sides).
        pad: usize,
    },
    /// `Affine`: the input flattened to `(N, D)`, times `w` `(D, M)`, plus `b` `(M,)`.
    Affine {
        /// Weights `(D, M)`.
        w: Tensor,
        /// Bias `(M,)`.
        b: Tensor,
    },
    /// A binarized convolution: filters `w` `(FN, C, FH, FW)` of `+1` and `-1` only, no
    /// bias; its input is a [`Op::Sign`]'s output, so every sum is an exact integer.
    BinaryConvolution {
        /// Filters `(FN, C, FH, FW)`, each `+1` or `-1`.
        w: Tensor,
        /// Stride (both directions).
        stride: usize,
        /// Zero padding (all four sides).
        pad: usize,
    },
    /// A binarized affine layer: the input flattened to `(N, D)` times `w` `(D, M)` of
    /// `+1` and `-1` only, no bias.
    BinaryAffine {
        /// Weights `(D, M)`, each `+1` or `-1`.
        w: Tensor,
    },
    /// `+1` for `x >= 0`, else `-1` ([`sign`](crate::sign)).
    Sign,
    /// `max(0, x)`.
    Relu,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `Pooling` of a `ph x pw` window.
    Pooling {
        /// Max or average.
        kind: PoolKind,
        /// Window height.
        ph: usize,
        /// Window width.
        pw: usize,
        /// Stride.
        stride: usize,
        /// Padding (never wins a max; counts as zero in a mean).
        pad: usize,
    },
    /// The mean of each channel's plane: `(N, C, H, W)` to `(N, C)`.
    GlobalAveragePooling,
    /// `x * scale + shift` per feature: batch norm with its running statistics.
    /// `per_channel`: the features are the channels of `(N, C, H, W)`; otherwise they
    /// are the activations of the input flattened to `(N, D)` (the book's form).
    Scale {
        /// Multiplier per feature.
        scale: Vec<f32>,
        /// Addend per feature.
        shift: Vec<f32>,
        /// Features are channels (else flattened activations).
        per_channel: bool,
    },
    /// Every value times a constant (the book's dropout in evaluation, `1 - ratio`).
    Multiply(f32),
    /// The ops in a row.
    Sequential(Vec<Op>),
    /// `relu(body(x) + shortcut(x))`, the shortcut being the identity when `None`.
    Residual {
        /// The body's ops.
        body: Vec<Op>,
        /// The projection's ops, if any.
        shortcut: Option<Vec<Op>>,
    },
    /// Branches side by side, joined along the channels in order.
    Concat(Vec<Vec<Op>>),
}
