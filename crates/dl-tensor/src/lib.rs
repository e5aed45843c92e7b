//! # dl-tensor
//!
//! The few hot numeric kernels that every other `dlfs` crate is built from, on
//! `ndarray` arrays of `f32` in NCHW order:
//!
//! * [`im2col`] / [`col2im`]: exactly the book's functions (`common/util.py`), turning a
//!   batch `(N, C, H, W)` into the column matrix `(N*OH*OW, C*FH*FW)` and back.
//! * [`im2col_chw`] / [`col2im_chw`]: the per-image, transposed layout
//!   `(C*FH*FW, OH*OW)` that the fast convolution uses, so that `W · col` writes an
//!   NCHW output directly, with no transpose.
//! * [`gemm()`]: `C = alpha · A · B + beta · C` on strided views, backed on x86-64 by
//!   the `gemm` crate's AVX-512/AVX2 kernels and elsewhere by [`gemm_matrixmultiply`]
//!   (the same on `matrixmultiply`), and [`par_gemm`] which splits large products
//!   across rayon threads.
//! * [`DirectConv`]: convolution straight from the zero-padded image (split into its
//!   phases at a stride above 1), with no lowered matrix.
//! * [`WinogradConv`]: Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions, 16 multiplies
//!   per 2x2 output tile instead of 36; [`Winograd4Conv`]: F(4x4, 3x3), 36 per 4x4 tile
//!   instead of 144. All three implement [`ConvKernel`] (forward pass and
//!   filter gradient of one image), at every instruction set of [`Isa`]: AVX-512,
//!   AVX2 + FMA, NEON and plain scalar loops, chosen at run time ([`Isa::active`], which
//!   the `DLFS_SIMD` environment variable overrides).
//! * [`ConvPlan`]: a convolution's whole schedule for a batch (forward, `dW`, `db`,
//!   `dx`), with the algorithm chosen by [`ConvAlgo`] (`Auto`, `Lowered`, `Direct`,
//!   `Winograd`): what a convolution layer calls.
//! * [`lowp`]: 16-bit storage (`f16`, `bf16`) and the inference kernels that read it;
//!   [`dpbf16`]: the GEMM of training with bf16 products (AVX-512 BF16's `vdpbf16ps`,
//!   and its exact sums in plain Rust); [`int8`]: the 8-bit integer convolution (`u8 x i8 -> i32`, scalar, AVX2 and
//!   AVX-512 VNNI kernels) of post-training quantization.
//! * [`retain_freed_memory`]: glibc's allocator set to keep the blocks a training step
//!   frees for the next one, instead of returning them to the kernel and faulting them
//!   back in.
//! * [`on_pool`]: a call's work on the thread of a one-thread rayon pool rather than
//!   handed to it loop by loop.
//! * [`softmax`], [`cross_entropy_error`], [`argmax_rows`]: the small shared numerics.
//! * [`reference`](mod@reference): plain loop implementations kept as the yardstick the fast kernels are
//!   tested against.
//!
//! ```
//! use dl_tensor::{im2col, col2im, ConvGeometry};
//! use ndarray::Array4;
//!
//! let x = Array4::<f32>::ones((2, 3, 7, 7));          // (N, C, H, W)
//! let col = im2col(&x.view(), 5, 5, 1, 0);             // the book's im2col
//! assert_eq!(col.dim(), (2 * 3 * 3, 3 * 5 * 5));       // (N*OH*OW, C*FH*FW)
//! let back = col2im(&col.view(), (2, 3, 7, 7), 5, 5, 1, 0);
//! assert_eq!(back.dim(), (2, 3, 7, 7));
//! let g = ConvGeometry::new(3, 7, 7, 5, 5, 1, 0).unwrap();
//! assert_eq!((g.out_h, g.out_w), (3, 3));
//! ```

#[macro_use]
mod levels;

pub mod binary;
mod conv;
mod denormal;
mod direct;
pub mod dpbf16;
mod gemm;
mod im2col;
pub mod int8;
mod isa;
mod kernel;
pub mod lowp;
mod memory;
pub mod norm;
mod ops;
pub mod pool;
pub mod reference;
pub mod relu;
mod simd;
#[cfg(test)]
mod testing;
mod threads;
mod winograd;

pub use conv::{ConvAlgo, ConvPlan, ConvSaved, KernelCache, GROUP};
pub use denormal::flush_denormals_to_zero;
pub use direct::DirectConv;
pub use gemm::{gemm, gemm_matrixmultiply, par_gemm};
pub use im2col::{col2im, col2im_chw, im2col, im2col_chw, ConvGeometry, GeometryError};
pub use isa::{cpu_simd_flags, Isa, IsaError, SIMD_ENV};
pub use kernel::{ConvKernel, GradientAccumulator};
pub use memory::retain_freed_memory;
pub use ops::{argmax_rows, cross_entropy_error, cross_entropy_error_onehot, softmax};
pub use threads::on_pool;
pub use winograd::{Winograd4Conv, WinogradConv};

/// The tensor type used across dlfs: a dynamically shaped `f32` array (NCHW for images).
pub type Tensor = ndarray::ArrayD<f32>;

/// A parameter handed to an optimizer: its name (unique within the network, e.g. `"W1"`),
/// its value, updated in place, and its gradient from the last backward pass.
#[derive(Debug)]
pub struct ParamMut<'a> {
    /// Unique name of the parameter within its network (the book's dictionary key).
    pub name: String,
    /// The parameter value, updated in place by the optimizer.
    pub value: &'a mut Tensor,
    /// The gradient of the loss with respect to `value`, same shape.
    pub grad: &'a Tensor,
}

pub mod fs;
