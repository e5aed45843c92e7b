//! What the convolution kernels without lowering ([`DirectConv`](crate::DirectConv),
//! [`WinogradConv`](crate::WinogradConv)) share: the [`ConvKernel`] trait, the
//! [`GradientAccumulator`] their filter-gradient sums live in (the register kernels both
//! run their products on are in `simd.rs`).

use std::mem::MaybeUninit;

use crate::{ConvGeometry, Isa};

/// Filters per register tile of the products.
pub(crate) const MR: usize = 8;
/// Registers of sums in one tile of the weight gradient: `(rows of dW^T) x (16-filter
/// vectors)` = 24 x 1, 12 x 2, 8 x 3 or 6 x 4.
pub(crate) const GRADIENT_TILE: usize = 24;

/// A convolution computed without a lowered matrix, for one set of filters
/// and one geometry: [`DirectConv`](crate::DirectConv) or [`WinogradConv`](crate::WinogradConv). Build one
/// per weight update; every method takes one image (or, the `*_images` ones, several one
/// after the other) and may be called from many threads at once, each with its own
/// scratch space (which needs no clearing).
pub trait ConvKernel: std::fmt::Debug + Send + Sync {
    /// The geometry the kernel was built for.
    fn geometry(&self) -> &ConvGeometry;

    /// A short name for reports: `"direct"`, `"winograd"`.
    fn name(&self) -> &'static str;

    /// The instruction set the kernel runs at.
    fn isa(&self) -> Isa;

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

    /// Images [`ConvKernel::forward_images_uninit`] takes in one call: 1, or more where
    /// a kernel's products fill their register tiles only with several images' columns
    /// (Winograd on outputs of 8 x 8 or less). [`ConvKernel::scratch_len`] covers that
    /// many.
    fn images_per_forward(&self) -> usize {
        1
    }

    /// [`ConvKernel::forward_image_uninit`] of `n` images at once, `1 <= n <=`
    /// [`ConvKernel::images_per_forward`]: `x` holds their inputs one after the other, `out`
    /// their outputs. Each output is the one image by image gives, bit for bit.
    ///
    /// # Panics
    /// If a slice length does not match the geometry or there are more images than
    /// [`ConvKernel::images_per_forward`].
    fn forward_images_uninit(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        check_one_image(self.name(), self.geometry(), x);
        self.forward_image_uninit(x, bias, out, scratch);
    }

    /// [`ConvKernel::forward_image_uninit`] into initialised memory.
    ///
    /// # Panics
    /// If a slice length does not match the geometry.
    fn forward_image(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32], scratch: &mut [f32]) {
        self.forward_image_uninit(x, bias, as_uninit(out), scratch);
    }

    /// [`ConvKernel::forward_images_uninit`] into initialised memory.
    ///
    /// # Panics
    /// As [`ConvKernel::forward_images_uninit`].
    fn forward_images(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32], scratch: &mut [f32]) {
        self.forward_images_uninit(x, bias, as_uninit(out), scratch);
    }

    /// Whether [`ConvKernel::weight_gradient_image`] beats lowering the image and a GEMM
    /// on this geometry.
    fn gradient_pays(&self) -> bool {
        true
    }

    /// Values of scratch space [`ConvKernel::weight_gradient_image`] needs.
    fn gradient_scratch_len(&self) -> usize;

    /// An accumulator for [`ConvKernel::weight_gradient_image`] with no image in (its
    /// sums zero).
    fn gradient_accumulator(&self) -> GradientAccumulator;

    /// The filter gradient of one image, **added** to `acc`: `dW += dout · col(x)^T`,
    /// `db += ` row sums of `dout`, for the input `x` `(C, H, W)` and the output gradient
    /// `dout` `(FN, OH, OW)`; [`ConvKernel::add_gradient`] hands the sums over.
    /// `scratch` holds at least [`ConvKernel::gradient_scratch_len`] values.
    ///
    /// # Panics
    /// If a slice length does not match the geometry or `acc` is another kernel's.
    fn weight_gradient_image(&self, x: &[f32], dout: &[f32], acc: &mut GradientAccumulator, scratch: &mut [f32]);

    /// Images [`ConvKernel::weight_gradient_images`] takes in one call: 1, or more where
    /// a kernel's products gain by a longer inner dimension (Winograd's on small
    /// outputs). [`ConvKernel::gradient_scratch_len`] covers that many.
    fn images_per_gradient(&self) -> usize {
        1
    }

    /// The filter gradient of `n` images at once, `1 <= n <=`
    /// [`ConvKernel::images_per_gradient`]: `x` holds their inputs one after the other,
    /// `dout` their output gradients. The sums are those of
    /// [`ConvKernel::weight_gradient_image`] on each image in turn, bit for bit.
    ///
    /// # Panics
    /// If a slice length does not match the geometry, there are more images than
    /// [`ConvKernel::images_per_gradient`], or `acc` is another kernel's.
    fn weight_gradient_images(&self, x: &[f32], dout: &[f32], acc: &mut GradientAccumulator, scratch: &mut [f32]) {
        check_one_image(self.name(), self.geometry(), x);
        self.weight_gradient_image(x, dout, acc, scratch);
    }

    /// Adds the sums in `acc` (this kernel's layout) to `dw` `(FN, C*FH*FW)` and `db`
    /// `(FN,)`.
    ///
    /// # Panics
    /// If the lengths do not match the kernel's convolution.
    fn add_gradient(&self, acc: &GradientAccumulator, dw: &mut [f32], db: &mut [f32]);
}

/// The check of the one-image defaults of [`ConvKernel::forward_images_uninit`] and
/// [`ConvKernel::weight_gradient_images`].
///
/// # Panics
/// If `x` is not one input image of `g`.
fn check_one_image(kernel: &str, g: &ConvGeometry, x: &[f32]) {
    assert!(
        x.len() == g.c * g.h * g.w,
        "{kernel}: one image at once, not {} values",
        x.len()
    );
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
/// `(C*FH*FW, FN)` for the direct kernel, `dU` `(16, C, FN)` or `(36, C, FN)` (the
/// gradient of the transformed filters) for Winograd F(2x2, 3x3) or F(4x4, 3x3); rows
/// and lanes padded.
#[derive(Debug, Clone)]
pub struct GradientAccumulator {
    pub(crate) sums: Vec<f32>,
    pub(crate) db: Vec<f32>,
    /// `C*FH*FW`.
    pub(crate) k: usize,
    /// Filters rounded up to 16 (the lanes of a row of `sums`).
    pub(crate) fp: usize,
    /// For Winograd: the positions of a transformed tile (16 or 36) and the channels
    /// rounded up to 16 (the rows of one position of `sums`).
    pub(crate) winograd: Option<(usize, usize)>,
}

impl GradientAccumulator {
    /// Adds `other`'s sums to these (the sums of two groups of images, in the kernel's
    /// own layout: cheaper than [`ConvKernel::add_gradient`] for each group).
    ///
    /// # Panics
    /// If `other` belongs to a convolution of another shape or kernel.
    pub fn merge(&mut self, other: &GradientAccumulator) {
        self.check_same_shape(other);
        if !other.sums.is_empty() {
            for (a, b) in self.written_sums().iter_mut().zip(&other.sums) {
                *a += b;
            }
        }
        for (a, b) in self.db.iter_mut().zip(&other.db) {
            *a += b;
        }
    }
}

impl GradientAccumulator {
    /// Values of `sums` once an image is in: `positions cp fp` for Winograd, whose sums
    /// start empty; the direct kernel's are allocated, cleared, with the accumulator.
    pub(crate) fn sums_len(&self) -> usize {
        match self.winograd {
            Some((positions, cp)) => positions * cp * self.fp,
            None => self.sums.len(),
        }
    }

    /// `sums`, as zeros if no image is in yet (Winograd's accumulators start empty: the
    /// first image's products store their sums rather than add them to zeros).
    pub(crate) fn written_sums(&mut self) -> &mut Vec<f32> {
        if self.sums.is_empty() {
            self.sums = vec![0.0; self.sums_len()];
        }
        &mut self.sums
    }
    /// # Panics
    /// If `other` belongs to a convolution of another shape or kernel.
    pub(crate) fn check_same_shape(&self, other: &GradientAccumulator) {
        assert!(
            self.sums_len() == other.sums_len()
                && self.db.len() == other.db.len()
                && (self.k, self.fp, self.winograd) == (other.k, other.fp, other.winograd),
            "GradientAccumulator: merging sums of another shape"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DirectConv, WinogradConv};

    /// The panic message of `f`, which must panic.
    fn panic_message(f: impl FnOnce()) -> String {
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("a panic");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    /// A kernel without a gain from several images (the direct one) takes one image a
    /// call, as its one-image methods would, and refuses two.
    #[test]
    fn the_direct_kernel_takes_one_image_at_once() {
        let g = ConvGeometry::new(8, 8, 8, 3, 3, 1, 1).unwrap();
        let w: Vec<f32> = (0..8 * 8 * 9).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let x: Vec<f32> = (0..2 * 512).map(|i| (i % 11) as f32 * 0.1 - 0.5).collect();
        for isa in Isa::supported_levels() {
            let k = DirectConv::with_isa(&w, 8, &g, isa).unwrap();
            assert_eq!((k.images_per_forward(), k.images_per_gradient()), (1, 1));
            let mut scratch = vec![0.0; k.scratch_len().max(k.gradient_scratch_len())];
            let (mut want, mut got) = (vec![0.0; 512], vec![f32::NAN; 512]);
            k.forward_image(&x[..512], None, &mut want, &mut scratch);
            k.forward_images(&x[..512], None, &mut got, &mut scratch);
            assert_eq!(got, want, "{isa}");
            let (mut a, mut b) = (k.gradient_accumulator(), k.gradient_accumulator());
            k.weight_gradient_image(&x[..512], &x[512..], &mut a, &mut scratch);
            k.weight_gradient_images(&x[..512], &x[512..], &mut b, &mut scratch);
            assert_eq!((&a.sums, &a.db), (&b.sums, &b.db), "{isa}");
            let mut out = vec![0.0; 1024];
            let message = panic_message(|| k.forward_images(&x, None, &mut out, &mut scratch));
            assert!(
                message.contains("direct: one image at once, not 1024 values"),
                "{message}"
            );
            let message = panic_message(|| k.weight_gradient_images(&x, &out, &mut a, &mut scratch));
            assert!(
                message.contains("direct: one image at once, not 1024 values"),
                "{message}"
            );
        }
    }

    /// Sums of another convolution or kernel are refused, by `merge` as by the plan's
    /// merge tree (`check_same_shape`): the direct kernel's into Winograd's, Winograd's
    /// of another channel count or filter count, the direct kernel's of another filter
    /// size; the same shape is taken.
    #[test]
    fn accumulators_of_another_shape_do_not_merge() {
        let g = |c| ConvGeometry::new(c, 8, 8, 3, 3, 1, 1).unwrap();
        let five = ConvGeometry::new(8, 8, 8, 5, 5, 1, 2).unwrap();
        let winograd = |c, f| WinogradConv::with_isa(&vec![0.5; f * c * 9], f, &g(c), Isa::Scalar).unwrap();
        let direct =
            |g: &ConvGeometry| DirectConv::with_isa(&vec![0.5; 16 * g.col_rows()], 16, g, Isa::Scalar).unwrap();
        let mut same = winograd(8, 16).gradient_accumulator();
        same.merge(&winograd(8, 16).gradient_accumulator());
        direct(&g(8))
            .gradient_accumulator()
            .merge(&direct(&g(8)).gradient_accumulator());
        let others = [
            direct(&g(8)).gradient_accumulator(),
            winograd(17, 16).gradient_accumulator(),
            winograd(8, 32).gradient_accumulator(),
        ];
        for other in &others {
            let message = panic_message(|| winograd(8, 16).gradient_accumulator().merge(other));
            assert!(message.contains("merging sums of another shape"), "{message}");
        }
        let message = panic_message(|| {
            direct(&g(8))
                .gradient_accumulator()
                .merge(&direct(&five).gradient_accumulator())
        });
        assert!(message.contains("merging sums of another shape"), "{message}");
    }

    #[test]
    fn a_kernel_names_the_slice_whose_length_is_wrong() {
        // 8 to 8 channels on 8x8, 3x3, pad 1: 512 input and 512 output values
        let g = ConvGeometry::new(8, 8, 8, 3, 3, 1, 1).unwrap();
        let w = vec![0.5f32; 8 * 8 * 9];
        let kernels: Vec<Box<dyn ConvKernel>> = Isa::supported_levels()
            .into_iter()
            .flat_map(|isa| {
                [
                    DirectConv::with_isa(&w, 8, &g, isa).map(|k| Box::new(k) as Box<dyn ConvKernel>),
                    WinogradConv::with_isa(&w, 8, &g, isa).map(|k| Box::new(k) as Box<dyn ConvKernel>),
                ]
            })
            .flatten()
            .collect();
        assert!(kernels.iter().any(|k| k.name() == "direct"));
        assert!(kernels.iter().any(|k| k.name() == "winograd"));
        for k in &kernels {
            let name = match k.name() {
                "direct" => "DirectConv",
                _ => "WinogradConv",
            };
            let (x, b, mut out, mut scratch) = (
                vec![1.0f32; 512],
                vec![0.0f32; 8],
                vec![0.0f32; 512],
                vec![0.0f32; k.scratch_len()],
            );
            k.forward_image(&x, Some(&b), &mut out, &mut scratch);
            for (what, x, b, out, scratch) in [
                ("input length", 511, 8, 512, k.scratch_len()),
                ("output length", 512, 8, 520, k.scratch_len()),
                ("bias length", 512, 7, 512, k.scratch_len()),
                ("scratch too short", 512, 8, 512, k.scratch_len() - 1),
            ] {
                let (x, b, mut out, mut scratch) = (
                    vec![1.0f32; x],
                    vec![0.0f32; b],
                    vec![0.0f32; out],
                    vec![0.0f32; scratch],
                );
                let message = panic_message(|| k.forward_image(&x, Some(&b), &mut out, &mut scratch));
                assert!(
                    message.contains(&format!("{name}: {what}")),
                    "{} at {}: {message}",
                    k.name(),
                    k.isa()
                );
            }
        }
    }
}
