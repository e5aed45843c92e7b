//! Direct convolution without a lowered matrix (an "implicit GEMM").
//!
//! For a stride-1 convolution, row `(c, ky, kx)` of the per-image column matrix that
//! [`im2col_chw`](crate::im2col_chw) builds is the zero-padded channel `c` read from
//! offset `ky * Wp + kx`, where `Wp = W + 2*pad` is the padded width, provided the output
//! is computed `Wp` columns wide instead of `OW` (the `FW - 1` extra columns of each output
//! row are computed and dropped). So the product `W · col` can read its right-hand side
//! straight from the padded image: one copy of the input instead of `FH*FW` copies, and
//! no packing. [`DirectConv`] does that with register tiles of the output (8 filters x
//! 48 columns in 24 registers on AVX-512, 4 x 24 in 12 on AVX2, 4 x 16 on NEON), at
//! the instruction set [`Isa`] chosen at run time; the tests compare every level with the
//! reference convolution.
//!
//! A stride-`s` convolution is brought to the same form by splitting each padded plane
//! into its `s x s` phases (the values at rows `Y ≡ py` and columns `X ≡ px` modulo
//! `s`, each phase a plane of `ceil(Hp/s) x ceil(Wp/s)`): the input of output `(oy, ox)`
//! under tap `(ky, kx)` is value `(oy + ky / s, ox + kx / s)` of phase
//! `(ky % s, kx % s)`, so every tap is again one offset into the phase planes, and the
//! output is computed `ceil(Wp/s)` columns wide. The same kernels then run strided
//! layers without lowering, with no zero taps.

use std::mem::MaybeUninit;

use crate::im2col::copy_short;
use crate::kernel::{check_forward_args, GRADIENT_TILE, MR};
use crate::simd::{gradient, products};
use crate::{ConvGeometry, ConvKernel, GradientAccumulator, Isa};

/// Output columns per full register tile (three 16-lane vectors).
const NR: usize = 48;

/// A convolution's filters packed for the direct kernel, with the geometry they
/// apply to. Build it once per weight update (packing is `FN*C*FH*FW` copies) and call
/// [`DirectConv::forward_image`] for every image, from as many threads as wanted.
#[derive(Debug, Clone)]
pub struct DirectConv {
    g: ConvGeometry,
    isa: Isa,
    filters: usize,
    /// `W` in blocks of [`MR`] filters, `[block][k][MR]`, zero rows past `filters`.
    packed: Vec<f32>,
    /// Offset in the padded phase planes of the virtual column-matrix row
    /// `k = (c, ky, kx)`.
    offsets: Vec<usize>,
    /// Width of a phase plane, `ceil((W + 2*pad) / stride)` (the padded width at stride
    /// 1): the row length of the computed output.
    wp: usize,
    /// Computed output columns, `OH * wp`, rounded up to a multiple of 16.
    cols: usize,
    /// Length of the padded image with the slack the last tile reads.
    padded_len: usize,
}

impl DirectConv {
    /// Packs `w` `(filters, C, FH, FW)` (row-major, `filters*C*FH*FW` values) for the
    /// geometry `g`, at the instruction set [`Isa::active`]. `None` without filters.
    ///
    /// # Panics
    /// If `w` does not hold `filters * g.col_rows()` values.
    pub fn new(w: &[f32], filters: usize, g: &ConvGeometry) -> Option<Self> {
        Self::with_isa(w, filters, g, Isa::active())
    }

    /// [`DirectConv::new`] at the instruction set `isa`; `None` also when `isa` cannot
    /// run here (AVX2 or AVX-512 on a CPU without them).
    ///
    /// # Panics
    /// If `w` does not hold `filters * g.col_rows()` values.
    pub fn with_isa(w: &[f32], filters: usize, g: &ConvGeometry, isa: Isa) -> Option<Self> {
        let k = g.col_rows();
        assert_eq!(
            w.len(),
            filters * k,
            "DirectConv: W has {} values, want {filters} x {k}",
            w.len()
        );
        if filters == 0 || !isa.runs_here() {
            return None;
        }
        let st = g.stride;
        let (wp, hp) = ((g.w + 2 * g.pad).div_ceil(st), (g.h + 2 * g.pad).div_ceil(st));
        let blocks = filters.div_ceil(MR);
        let mut packed = vec![0.0f32; blocks * k * MR];
        for (f, row) in w.chunks_exact(k).enumerate() {
            let (b, r) = (f / MR, f % MR);
            for (j, &v) in row.iter().enumerate() {
                packed[(b * k + j) * MR + r] = v;
            }
        }
        let mut offsets = Vec::with_capacity(k);
        for c in 0..g.c {
            for ky in 0..g.fh {
                for kx in 0..g.fw {
                    let phase = (c * st + ky % st) * st + kx % st;
                    offsets.push(phase * hp * wp + ky / st * wp + kx / st);
                }
            }
        }
        let cols = (g.out_h * wp).div_ceil(16) * 16;
        // The last tile reads up to column `cols - 1` at the largest offset.
        let padded_len = (g.c * st * st * hp * wp).max(cols + offsets.iter().max().copied().unwrap_or(0));
        Some(Self {
            g: *g,
            isa,
            filters,
            packed,
            offsets,
            wp,
            cols,
            padded_len,
        })
    }

    /// Whether the direct kernel beats lowering on this geometry: at stride 1, and at a
    /// larger stride when the filter is at least as large as the stride (every phase
    /// holds taps). A 1x1 stride-2 convolution would copy four phases to read one; the
    /// lowered path reads only that one (`ConvPlan` timings in docs/PERFORMANCE.md).
    pub fn pays(g: &ConvGeometry) -> bool {
        g.stride == 1 || (g.fh >= g.stride && g.fw >= g.stride)
    }

    /// Copies `x` into the zero-padded planes (their phases at a stride above 1) and
    /// clears the slack after them.
    fn pad_image(&self, x: &[f32], padded: &mut [f32]) {
        let g = &self.g;
        if g.stride > 1 {
            self.pad_phases(x, padded);
            return;
        }
        let (p, wp, hp) = (g.pad, self.wp, g.h + 2 * g.pad);
        let planes = g.c * hp * wp;
        padded[planes..].fill(0.0);
        if p == 0 {
            padded[..planes].copy_from_slice(x);
            return;
        }
        for (src, dst) in x.chunks_exact(g.h * g.w).zip(padded.chunks_exact_mut(hp * wp)) {
            dst[..p * wp + p].fill(0.0);
            for (y, row) in src.chunks_exact(g.w).enumerate() {
                let at = (y + p) * wp + p;
                copy_short(&mut dst[at..at + g.w], row);
                // right pad of this row and left pad of the next
                let end = (at + g.w + 2 * p).min(hp * wp);
                dst[at + g.w..end].fill(0.0);
            }
            dst[(g.h + p) * wp..].fill(0.0);
        }
    }

    /// [`DirectConv::pad_image`] at a stride `s` above 1: value `(c, y, x)` goes to row
    /// `Y / s`, column `X / s` of phase `(Y % s, X % s)` of channel `c`, where
    /// `(Y, X) = (y + pad, x + pad)`; everything else is zero.
    fn pad_phases(&self, x: &[f32], padded: &mut [f32]) {
        let g = &self.g;
        let (st, p, wp) = (g.stride, g.pad, self.wp);
        let plane = (g.h + 2 * p).div_ceil(st) * wp;
        padded.fill(0.0);
        for (c, src) in x.chunks_exact(g.h * g.w).enumerate() {
            for (y, row) in src.chunks_exact(g.w).enumerate() {
                let yy = y + p;
                let base = (c * st + yy % st) * st * plane + yy / st * wp;
                // the values of phase column px: input columns x with (x + p) % s == px
                for px in 0..st {
                    let first = (px + st - p % st) % st;
                    let dst = &mut padded[base + px * plane + (first + p) / st..];
                    for (d, &v) in dst.iter_mut().zip(row.iter().skip(first).step_by(st)) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// `wide` `(blocks*MR, cols)` `= packed W · virtual col`, tile by tile.
    fn multiply(&self, padded: &[f32], wide: &mut [f32]) {
        let k = self.offsets.len();
        debug_assert!(padded.len() >= self.cols + self.offsets[k - 1]);
        for (w, rows) in self
            .packed
            .chunks_exact(k * MR)
            .zip(wide.chunks_exact_mut(MR * self.cols))
        {
            let mut j = 0;
            while j < self.cols {
                let width = (self.cols - j).min(NR);
                // SAFETY: `self.isa` runs on this CPU (`with_isa` checked it). The kernel reads
                // `padded[j + off .. j + off + width]` for every offset, and
                // `j + width <= cols` with `cols + max offset <= padded.len()`; it reads
                // `w[k*MR]` values of the packed block and writes `MR` rows of `width`
                // values at stride `cols` starting at column `j` of `rows`, which holds
                // `MR * cols` values.
                unsafe {
                    let (x, out) = (padded.as_ptr().add(j), rows.as_mut_ptr().add(j));
                    products(self.isa, &self.offsets, w.as_ptr(), x, out, self.cols, width);
                }
                j += width;
            }
        }
    }
}

impl ConvKernel for DirectConv {
    /// The geometry this convolution was packed for.
    fn name(&self) -> &'static str {
        "direct"
    }

    fn isa(&self) -> Isa {
        self.isa
    }

    fn geometry(&self) -> &ConvGeometry {
        &self.g
    }

    /// Values of scratch space [`DirectConv::forward_image`] needs.
    fn scratch_len(&self) -> usize {
        self.padded_len + self.filters.div_ceil(MR) * MR * self.cols
    }

    /// [`DirectConv::forward_image`] into memory that need not be initialised: every
    /// element of `out` is written, so a caller can allocate the output of a whole batch
    /// without clearing it first.
    ///
    /// # Panics
    /// If a slice length does not match the geometry.
    fn forward_image_uninit(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [MaybeUninit<f32>], scratch: &mut [f32]) {
        let g = &self.g;
        check_forward_args(
            "DirectConv",
            g,
            self.filters,
            (x, bias, out.len()),
            scratch.len() >= self.scratch_len(),
        );
        let (padded, rest) = scratch.split_at_mut(self.padded_len);
        let wide = &mut rest[..self.filters.div_ceil(MR) * MR * self.cols];
        self.pad_image(x, padded);
        self.multiply(padded, wide);
        // Drop the FW - 1 extra columns of every output row, add the bias.
        let (oh, ow) = (g.out_h, g.out_w);
        for (f, plane) in out.chunks_exact_mut(oh * ow).enumerate() {
            let b = bias.map_or(0.0, |b| b[f]);
            let src = &wide[f * self.cols..];
            for (oy, dst) in plane.chunks_exact_mut(ow).enumerate() {
                for (d, s) in dst.iter_mut().zip(&src[oy * self.wp..oy * self.wp + ow]) {
                    d.write(s + b);
                }
            }
        }
    }

    /// Whether [`DirectConv::weight_gradient_image`] beats lowering the image and a GEMM
    /// for this geometry: when `C*FH*FW` fills at least one register tile (24 rows of
    /// `dW^T`). Below that (the 1-channel first layer, `K = 9`) most of the tile would
    /// be padding and the lowered matrix is tiny anyway (`cargo bench -p dl-tensor --bench
    /// kernels -- convolution/dW`: conv1 16.5 µs direct against 6.0 µs lowered; conv2
    /// 47 against 78).
    fn gradient_pays(&self) -> bool {
        self.g.col_rows() >= GRADIENT_TILE
    }

    /// Values of scratch space [`DirectConv::weight_gradient_image`] needs.
    fn gradient_scratch_len(&self) -> usize {
        self.padded_len + self.cols * self.filters.div_ceil(16) * 16
    }

    /// A zeroed accumulator for [`DirectConv::weight_gradient_image`].
    fn gradient_accumulator(&self) -> GradientAccumulator {
        let k = self.g.col_rows();
        let fp = self.filters.div_ceil(16) * 16;
        GradientAccumulator {
            sums: vec![0.0; k.div_ceil(GRADIENT_TILE) * GRADIENT_TILE * fp],
            db: vec![0.0; self.filters],
            k,
            fp,
            winograd: None,
        }
    }

    /// The filter gradient of one image, **added** to `acc`: `dW += dout · col(x)^T`,
    /// `db += ` row sums of `dout`, for the input `x` `(C, H, W)` and the output gradient
    /// `dout` `(FN, OH, OW)`.
    ///
    /// The lowered `col(x)` is never built. `dW^T = col(x) · dout^T` is computed with the
    /// rows of `col(x)` read from the padded image as in the forward pass (each value
    /// broadcast to a register) and `dout^T` `(OH*Wp, FN)` built once, with zeros in the
    /// rows of the extra columns: every register holds 16 filters' sums for one
    /// `(c, ky, kx)`, so no horizontal sums are needed, and the sums stay in `acc` as
    /// `dW^T` until [`ConvKernel::add_gradient`]. `scratch` (at least
    /// [`DirectConv::gradient_scratch_len`] values) needs no clearing.
    ///
    /// # Panics
    /// If a slice length does not match the geometry or `acc` is another layer's.
    fn weight_gradient_image(&self, x: &[f32], dout: &[f32], acc: &mut GradientAccumulator, scratch: &mut [f32]) {
        let g = &self.g;
        let k = g.col_rows();
        let f = self.filters;
        let fp = f.div_ceil(16) * 16;
        assert_eq!(x.len(), g.c * g.h * g.w, "DirectConv: input length");
        assert_eq!(dout.len(), f * g.out_h * g.out_w, "DirectConv: dout length");
        assert!(
            acc.k == k && acc.fp == fp && acc.db.len() == f && acc.winograd.is_none(),
            "DirectConv: accumulator of another shape"
        );
        assert!(
            scratch.len() >= self.gradient_scratch_len(),
            "DirectConv: scratch too short"
        );
        let (padded, rest) = scratch.split_at_mut(self.padded_len);
        let dt = &mut rest[..self.cols * fp];
        self.pad_image(x, padded);
        // dout^T (cols, fp): row oy*Wp + ox holds the FN values at (oy, ox); rows of the
        // extra columns, rows past OH*Wp and lanes past FN are zero.
        let (oh, ow) = (g.out_h, g.out_w);
        dt.fill(0.0);
        for (fi, (plane, b)) in dout.chunks_exact(oh * ow).zip(acc.db.iter_mut()).enumerate() {
            let mut sum = 0.0f32;
            for (oy, row) in plane.chunks_exact(ow).enumerate() {
                for (ox, &v) in row.iter().enumerate() {
                    dt[(oy * self.wp + ox) * fp + fi] = v;
                    sum += v;
                }
            }
            *b += sum;
        }
        // Filters in blocks of up to 64 (four registers), rows of dW^T in groups of
        // GRADIENT_TILE / vectors; the last group's offsets are padded with 0 and its
        // extra rows land in the accumulator's padding rows.
        for f0 in (0..fp).step_by(64) {
            let v = ((fp - f0) / 16).min(4);
            let mr = GRADIENT_TILE / v;
            for k0 in (0..k).step_by(mr) {
                let mut offs = [0usize; GRADIENT_TILE];
                for (o, &off) in offs.iter_mut().zip(&self.offsets[k0..(k0 + mr).min(k)]) {
                    *o = off;
                }
                // SAFETY: `self.isa` runs here (as in `multiply`). The kernel reads
                // `padded[off + p]` for `p < cols` at each offset, with
                // `cols + max offset <= padded.len()`, and `16 v` values of each of the
                // `cols` rows of `dt` (stride fp) from lane f0, with `f0 + 16 v <= fp`; it
                // adds to `mr` rows of `acc.sums` (stride fp) from row k0, lane f0, and
                // `k0 + mr <= k` rounded up to GRADIENT_TILE, the accumulator's row count.
                unsafe {
                    let (d, xp) = (dt.as_ptr().add(f0), padded.as_ptr());
                    let out = acc.sums.as_mut_ptr().add(k0 * fp + f0);
                    gradient(self.isa, xp, &offs, mr, d, fp, self.cols, out, v, false);
                }
            }
        }
    }

    fn add_gradient(&self, acc: &GradientAccumulator, dw: &mut [f32], db: &mut [f32]) {
        let (f, k) = (self.filters, acc.k);
        assert!(acc.winograd.is_none(), "DirectConv: accumulator of another kernel");
        assert_eq!(dw.len(), f * k, "DirectConv: dW length");
        assert_eq!(db.len(), f, "DirectConv: db length");
        // the sums are dW^T (k, fp)
        for (fi, row) in dw.chunks_exact_mut(k).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v += acc.sums[j * acc.fp + fi];
            }
        }
        for (a, b) in db.iter_mut().zip(&acc.db) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_forward_matches_reference, assert_forward_matches_reference_at,
        assert_weight_gradient_matches_reference, assert_weight_gradient_matches_reference_at,
    };

    #[test]
    fn matches_the_reference_convolution() {
        // (C, H, W, FN, FH, FW, pad): the network's six layers, odd sizes, wide and
        // narrow filters, filter counts that are not a multiple of 8, pad 0 and pad > 1.
        let cases = [
            (1, 28, 28, 16, 3, 3, 1),
            (16, 28, 28, 16, 3, 3, 1),
            (16, 14, 14, 32, 3, 3, 1),
            (32, 14, 14, 32, 3, 3, 2),
            (32, 8, 8, 64, 3, 3, 1),
            (64, 7, 7, 64, 3, 3, 1),
            (3, 9, 11, 5, 3, 3, 0),
            (2, 6, 5, 13, 5, 5, 2),
            (4, 5, 7, 3, 2, 3, 1),
            (1, 3, 3, 1, 3, 3, 0),
            // one input column and a pad of 3: the zeroing between two padded rows
            // reaches exactly the next row's first value
            (2, 4, 1, 3, 3, 3, 1),
            (2, 5, 4, 3, 3, 3, 3),
            // a 1x1 filter on one channel: every offset is 0, yet the last tile reads
            // past the padded plane
            (1, 3, 3, 2, 1, 1, 0),
        ];
        assert_forward_matches_reference(&cases, DirectConv::with_isa);
    }

    #[test]
    fn scratch_holds_the_padded_image_and_the_wide_output_and_little_more() {
        // (C, H, W, FN, FH, FW, pad) at stride 1
        for (c, h, w, f, fh, fw, pad) in [
            (16, 28, 28, 16, 3, 3, 1),
            (3, 9, 11, 5, 3, 3, 0),
            (2, 6, 5, 13, 5, 5, 2),
        ] {
            let g = ConvGeometry::new(c, h, w, fh, fw, 1, pad).unwrap();
            let d = DirectConv::with_isa(&vec![0.5; f * c * fh * fw], f, &g, Isa::Scalar).unwrap();
            let (hp, wp) = (h + 2 * pad, w + 2 * pad);
            // the padded planes, then each filter's output rows at the padded width
            // (FW - 1 extra columns a row); the last tile may read up to FW + 15 values
            // past the planes and round the columns up to a whole tile of 16
            let planes = c * hp * wp;
            let cols = g.out_h * wp;
            for (got, rows) in [
                (d.scratch_len(), f.div_ceil(MR) * MR),
                (d.gradient_scratch_len(), f.div_ceil(16) * 16),
            ] {
                let (least, most) = (planes + rows * cols, planes + fw + 16 + rows * (cols + 15));
                assert!((least..=most).contains(&got), "{got} not in {least}..={most}");
            }
        }
    }

    #[test]
    fn weight_gradient_matches_dout_times_lowered_input() {
        // (C, H, W, FN, FH, FW, pad): filter counts not a multiple of 16 (padded lanes)
        // and above 64 (two filter blocks), C*FH*FW not a multiple of the 24-row tile,
        // wide images, pad 0 and 2.
        let cases = [
            (1, 28, 28, 16, 3, 3, 1),
            (3, 6, 6, 70, 3, 3, 1),
            (16, 14, 14, 32, 3, 3, 1),
            (32, 14, 14, 32, 3, 3, 2),
            (64, 8, 8, 64, 3, 3, 1),
            (3, 9, 11, 5, 3, 3, 0),
            (2, 6, 5, 13, 5, 5, 2),
            (4, 5, 7, 3, 2, 3, 1),
        ];
        assert_weight_gradient_matches_reference(&cases, DirectConv::with_isa);
    }

    /// (C, H, W, FN, FH, FW, pad) at strides 2 and 3: ResNet's stride-2 layers (3x3
    /// and the 1x1 projection), odd sizes whose last phase rows and columns are short,
    /// filters wider than the stride and narrower, no padding and more than the stride.
    const STRIDED: [(usize, usize, usize, usize, usize, usize, usize); 8] = [
        (16, 28, 28, 32, 3, 3, 1),
        (32, 14, 14, 64, 3, 3, 1),
        (16, 28, 28, 32, 1, 1, 0),
        (3, 9, 11, 5, 3, 3, 0),
        (2, 7, 6, 13, 5, 5, 2),
        (4, 5, 7, 3, 2, 3, 1),
        (3, 8, 8, 70, 3, 3, 3),
        (1, 3, 3, 1, 3, 3, 0),
    ];

    #[test]
    fn strided_geometries_match_the_reference_convolution() {
        for stride in [2, 3] {
            assert_forward_matches_reference_at(&STRIDED, stride, DirectConv::with_isa);
        }
    }

    #[test]
    fn strided_weight_gradients_match_dout_times_lowered_input() {
        for stride in [2, 3] {
            assert_weight_gradient_matches_reference_at(&STRIDED, stride, DirectConv::with_isa);
        }
    }

    #[test]
    fn pays_where_every_phase_holds_taps() {
        let g = |fh, fw, stride| ConvGeometry::new(4, 9, 9, fh, fw, stride, 0).unwrap();
        assert!(DirectConv::pays(&g(1, 1, 1)), "stride 1, any filter");
        assert!(DirectConv::pays(&g(3, 3, 2)));
        assert!(DirectConv::pays(&g(2, 2, 2)));
        assert!(DirectConv::pays(&g(3, 3, 3)));
        assert!(!DirectConv::pays(&g(1, 1, 2)), "1x1 stride 2");
        assert!(!DirectConv::pays(&g(3, 1, 2)), "too narrow for the stride");
        assert!(!DirectConv::pays(&g(1, 3, 2)), "too short for the stride");
        assert!(!DirectConv::pays(&g(2, 2, 3)));
    }

    #[test]
    fn declines_a_convolution_without_filters() {
        let g1 = ConvGeometry::new(1, 8, 8, 3, 3, 1, 1).unwrap();
        for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
            assert!(DirectConv::with_isa(&[], 0, &g1, isa).is_none(), "no filters at {isa}");
        }
    }
}
