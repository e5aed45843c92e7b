//! What the convolution kernels without lowering ([`DirectConv`](crate::DirectConv),
//! [`WinogradConv`](crate::WinogradConv)) share: the [`ConvKernel`] trait, the
//! [`GradientAccumulator`] their filter-gradient sums live in, and the AVX-512 register
//! kernels both run their products on.

use std::mem::MaybeUninit;

use crate::ConvGeometry;

/// Filters per register tile of the products.
pub(crate) const MR: usize = 8;
/// Registers of sums in one tile of the weight gradient: `(rows of dW^T) x (16-filter
/// vectors)` = 24 x 1, 12 x 2, 8 x 3 or 6 x 4.
pub(crate) const GRADIENT_TILE: usize = 24;

/// Whether this CPU runs the AVX-512 kernels (x86-64 with AVX-512F).
pub fn avx512_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A stride-1 convolution computed without a lowered matrix, for one set of filters
/// and one geometry: [`DirectConv`](crate::DirectConv) or [`WinogradConv`](crate::WinogradConv). Build one
/// per weight update; every method takes one image and may be called from many threads
/// at once, each with its own scratch space (which needs no clearing).
pub trait ConvKernel: std::fmt::Debug + Send + Sync {
    /// The geometry the kernel was built for.
    fn geometry(&self) -> &ConvGeometry;

    /// A short name for reports: `"direct"`, `"winograd"`.
    fn name(&self) -> &'static str;

    /// Values of scratch space [`ConvKernel::forward_image_uninit`] needs.
    fn scratch_len(&self) -> usize;

    /// One image: `out` `(FN, OH, OW)` `= W * x + b` for `x` `(C, H, W)`, with `bias`
    /// `(FN,)` (or none), into memory that need not be initialised: every element of
    /// `out` is written, so a caller can allocate a whole batch's output without clearing
    /// it. `scratch` holds at least [`ConvKernel::scratch_len`] values.
    ///
    /// # Panics
    /// If a slice length does not match the geometry.
    fn forward_image_uninit(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [MaybeUninit<f32>], scratch: &mut [f32]);

    /// [`ConvKernel::forward_image_uninit`] into initialised memory.
    ///
    /// # Panics
    /// If a slice length does not match the geometry.
    fn forward_image(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32], scratch: &mut [f32]) {
        self.forward_image_uninit(x, bias, as_uninit(out), scratch);
    }

    /// Whether [`ConvKernel::weight_gradient_image`] beats lowering the image and a GEMM
    /// on this geometry.
    fn gradient_pays(&self) -> bool {
        true
    }

    /// Values of scratch space [`ConvKernel::weight_gradient_image`] needs.
    fn gradient_scratch_len(&self) -> usize;

    /// A zeroed accumulator for [`ConvKernel::weight_gradient_image`].
    fn gradient_accumulator(&self) -> GradientAccumulator;

    /// The filter gradient of one image, **added** to `acc`: `dW += dout · col(x)^T`,
    /// `db += ` row sums of `dout`, for the input `x` `(C, H, W)` and the output gradient
    /// `dout` `(FN, OH, OW)`; [`ConvKernel::add_gradient`] hands the sums over.
    /// `scratch` holds at least [`ConvKernel::gradient_scratch_len`] values.
    ///
    /// # Panics
    /// If a slice length does not match the geometry or `acc` is another kernel's.
    fn weight_gradient_image(&self, x: &[f32], dout: &[f32], acc: &mut GradientAccumulator, scratch: &mut [f32]);

    /// Adds the sums in `acc` (this kernel's layout) to `dw` `(FN, C*FH*FW)` and `db`
    /// `(FN,)`.
    ///
    /// # Panics
    /// If the lengths do not match the kernel's convolution.
    fn add_gradient(&self, acc: &GradientAccumulator, dw: &mut [f32], db: &mut [f32]);
}

/// `out` seen as memory the `forward_image_uninit` kernels may write.
///
/// Sound because `[f32]` and `[MaybeUninit<f32>]` have the same layout and those kernels
/// only ever store initialised values, so `out` stays a valid `[f32]`.
pub(crate) fn as_uninit(out: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: see above; the length and the borrow carry over.
    unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<MaybeUninit<f32>>(), out.len()) }
}

/// The length checks of a `forward_image_uninit`: input `(C, H, W)`, bias `(FN,)`,
/// output `(FN, OH, OW)`, and scratch long enough.
///
/// # Panics
/// If one does not hold, naming `kernel`.
pub(crate) fn check_forward_args(
    kernel: &str,
    g: &ConvGeometry,
    filters: usize,
    (x, bias, out_len): (&[f32], Option<&[f32]>, usize),
    scratch_ok: bool,
) {
    assert_eq!(x.len(), g.c * g.h * g.w, "{kernel}: input length");
    assert_eq!(out_len, filters * g.out_h * g.out_w, "{kernel}: output length");
    assert!(scratch_ok, "{kernel}: scratch too short");
    if let Some(b) = bias {
        assert_eq!(b.len(), filters, "{kernel}: bias length");
    }
}

/// Sums of the filter gradients of several images ([`ConvKernel::weight_gradient_image`]),
/// kept in the kernel's own layout until [`ConvKernel::add_gradient`]: `dW^T`
/// `(C*FH*FW, FN)` for the direct kernel, `dU` `(16, C, FN)` (the gradient of the
/// transformed filters) for Winograd; rows and lanes padded.
#[derive(Debug, Clone)]
pub struct GradientAccumulator {
    pub(crate) sums: Vec<f32>,
    pub(crate) db: Vec<f32>,
    /// `C*FH*FW`.
    pub(crate) k: usize,
    /// Filters rounded up to 16 (the lanes of a row of `sums`).
    pub(crate) fp: usize,
    /// For Winograd: channels rounded up (the rows of one position of `sums`).
    pub(crate) winograd: Option<usize>,
}

impl GradientAccumulator {
    /// Adds `other`'s sums to these (the sums of two groups of images, in the kernel's
    /// own layout: cheaper than [`ConvKernel::add_gradient`] for each group).
    ///
    /// # Panics
    /// If `other` belongs to a convolution of another shape or kernel.
    pub fn merge(&mut self, other: &GradientAccumulator) {
        assert!(
            self.sums.len() == other.sums.len()
                && self.db.len() == other.db.len()
                && (self.k, self.fp, self.winograd) == (other.k, other.fp, other.winograd),
            "GradientAccumulator: merging sums of another shape"
        );
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        for (a, b) in self.db.iter_mut().zip(&other.db) {
            *a += b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod products {
    use super::MR;
    use std::arch::x86_64::*;

    /// `out[r][16v + l] = sum_k w[k][r] * x[offsets[k] + 16v + l]` for `r < MR`,
    /// `v < V`, `l < 16`; `out` rows `ld` apart.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `w` holds `offsets.len() * MR` values; `x + off` is valid for
    /// `16 V` reads at every offset; `out` is valid for `MR` rows of `16 V` writes.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const V: usize>(offsets: &[usize], w: *const f32, x: *const f32, out: *mut f32, ld: usize) {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for (k, &off) in offsets.iter().enumerate() {
            let mut b = [_mm512_setzero_ps(); V];
            for (v, bv) in b.iter_mut().enumerate() {
                // SAFETY: see the function's contract.
                *bv = unsafe { _mm512_loadu_ps(x.add(off + 16 * v)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: k < offsets.len(), r < MR.
                let a = _mm512_set1_ps(unsafe { *w.add(k * MR + r) });
                for (v, bv) in b.iter().enumerate() {
                    row[v] = _mm512_fmadd_ps(a, *bv, row[v]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, val) in row.iter().enumerate() {
                // SAFETY: see the function's contract.
                unsafe { _mm512_storeu_ps(out.add(r * ld + 16 * v), *val) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod gradient {
    use super::GRADIENT_TILE;
    use std::arch::x86_64::*;

    /// `out[m*ld + l] += sum_{p < cols} x[offs[m] + p] * d[p*ld + l]` for `m < MR`,
    /// `l < 16 V`: MR rows of `dW^T`, each value of `x` broadcast, `V` vectors of
    /// `dout^T` loaded per `p`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `x + offs[m]` is valid for `cols` reads for `m < MR`; `d`
    /// for `16 V` reads at each of `cols` rows `ld` apart; `out` for reads and writes of
    /// `16 V` values at each of `MR` rows `ld` apart; `MR <= GRADIENT_TILE`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const MR: usize, const V: usize>(
        x: *const f32,
        offs: &[usize; GRADIENT_TILE],
        d: *const f32,
        ld: usize,
        cols: usize,
        out: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for (m, row) in acc.iter_mut().enumerate() {
            for (v, val) in row.iter_mut().enumerate() {
                // SAFETY: see the function's contract.
                *val = unsafe { _mm512_loadu_ps(out.add(m * ld + 16 * v)) };
            }
        }
        for p in 0..cols {
            let mut b = [_mm512_setzero_ps(); V];
            for (v, bv) in b.iter_mut().enumerate() {
                // SAFETY: see the function's contract.
                *bv = unsafe { _mm512_loadu_ps(d.add(p * ld + 16 * v)) };
            }
            for (m, row) in acc.iter_mut().enumerate() {
                // SAFETY: see the function's contract.
                let a = _mm512_set1_ps(unsafe { *x.add(offs[m] + p) });
                for (v, bv) in b.iter().enumerate() {
                    row[v] = _mm512_fmadd_ps(a, *bv, row[v]);
                }
            }
        }
        for (m, row) in acc.iter().enumerate() {
            for (v, val) in row.iter().enumerate() {
                // SAFETY: see the function's contract.
                unsafe { _mm512_storeu_ps(out.add(m * ld + 16 * v), *val) };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod products {
    /// Never called: the kernels' `new` returns `None` off x86-64.
    pub unsafe fn tile<const V: usize>(_: &[usize], _: *const f32, _: *const f32, _: *mut f32, _: usize) {
        unreachable!("the register kernels exist only on x86-64 with AVX-512")
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod gradient {
    use super::GRADIENT_TILE;

    /// Never called: the kernels' `new` returns `None` off x86-64.
    pub unsafe fn tile<const MR: usize, const V: usize>(
        _: *const f32,
        _: &[usize; GRADIENT_TILE],
        _: *const f32,
        _: usize,
        _: usize,
        _: *mut f32,
    ) {
        unreachable!("the register kernels exist only on x86-64 with AVX-512")
    }
}
