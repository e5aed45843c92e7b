//! Winograd F(2x2, 3x3): a stride-1 3x3 convolution with 16 multiplies per 2x2 output
//! tile instead of 36.
//!
//! Lavin and Gray's minimal filtering ("Fast Algorithms for Convolutional Neural
//! Networks", 2015): for a 4x4 input tile `d` and a 3x3 filter `g`, the 2x2 output tile is
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` with
//!
//! ```text
//!      | 1  0 -1  0 |        | 1    0    0  |        | 1  1  1  0 |
//! Bᵀ = | 0  1  1  0 |    G = | 1/2  1/2  1/2|   Aᵀ = | 0  1 -1 -1 |
//!      | 0 -1  1  0 |        | 1/2 -1/2  1/2|
//!      | 0  1  0 -1 |        | 0    0    1  |
//! ```
//!
//! Summed over the input channels, each of the 16 positions `ξ` of the transformed tiles
//! is a matrix product: `M[ξ] (FN, tiles) = U[ξ] (FN, C) · V[ξ] (C, tiles)`, with
//! `U = G g Gᵀ` (the filters, transformed once per weight update) and `V = Bᵀ d B` (the
//! input tiles). [`WinogradConv`] transforms one image's tiles with AVX-512 (16 tiles of
//! a tile row per register), runs the 16 products with the direct convolution's register
//! kernel, and transforms back. 2.25x fewer multiplies than [`DirectConv`](crate::DirectConv),
//! and no computed-then-dropped columns (the direct kernel computes `Wp` columns per
//! output row); in exchange the transforms read and write the image four times. Whether
//! that pays depends on the channel counts: see [`WinogradConv::pays`].

use std::mem::MaybeUninit;

use crate::kernel::{check_forward_args, GRADIENT_TILE, MR};
use crate::simd::{gradient, products};
use crate::{ConvGeometry, ConvKernel, GradientAccumulator, Isa};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod f4;
mod portable;

pub use f4::Winograd4Conv;

/// Tile columns of the widest register tile of the products (three 16-lane vectors).
const NR: usize = 48;

/// A stride-1 3x3 convolution's filters transformed for Winograd F(2x2, 3x3), with the
/// geometry they apply to. Build it once per weight update and call
/// [`WinogradConv::forward_image`] for every image, from as many threads as wanted.
#[derive(Debug, Clone)]
pub struct WinogradConv {
    g: ConvGeometry,
    isa: Isa,
    filters: usize,
    /// `U = G g Gᵀ` as `[ξ][block][c][MR]`, zeros past `filters`.
    packed: Vec<f32>,
    /// Offset of channel `c`'s row in one position of `V` of `n` images, for `n` from 1
    /// to [`ConvKernel::images_per_forward`]: `offsets[n - 1][c] = c n tp`.
    offsets: Vec<Vec<usize>>,
    /// Tile rows and columns: `ceil(OH/2)`, `ceil(OW/2)`.
    th: usize,
    tw: usize,
    /// Tiles per image rounded up to 16 (the row length of `V` and `M`).
    tp: usize,
    /// Rows and row length of a padded input plane: `2 th + 2`, `2 tw + 2`.
    hs: usize,
    ws: usize,
    /// Lanes per tile row in the transforms' registers: 16, or 8 or 4 when the tile rows
    /// are that short (then a register holds 2 or 4 tile rows).
    l: usize,
    /// Images whose filter gradient one call sums
    /// ([`ConvKernel::weight_gradient_images`]).
    gradient_images: usize,
    /// Images one forward call transforms and multiplies at once
    /// ([`ConvKernel::forward_images_uninit`]).
    forward_images: usize,
}

impl WinogradConv {
    /// Whether this geometry is one Winograd F(2x2, 3x3) computes: 3x3 filters, stride 1.
    pub fn applies(g: &ConvGeometry) -> bool {
        g.fh == 3 && g.fw == 3 && g.stride == 1
    }

    /// Whether Winograd's forward pass beats the direct kernel's for `filters` filters on
    /// this geometry at the instruction set `isa`: with at least 8 input channels and
    /// `C * FN >= 512`, or at AVX-512 `C * FN >= 256`. The transforms cost per channel,
    /// the products per channel and filter: with one input channel the transforms cost
    /// more than the multiplies they save; with 16 in and 16 out (DeepConvNet's conv2
    /// and its input gradient, 28 x 28) Winograd takes 0.75x the direct kernel's time
    /// per image at AVX-512 and 1.2x at AVX2 (the `convolution` group of the kernels'
    /// benchmark, docs/PERFORMANCE.md).
    pub fn pays(g: &ConvGeometry, filters: usize, isa: Isa) -> bool {
        let least = if isa == Isa::Avx512 { 256 } else { 512 };
        Self::applies(g) && g.c >= 8 && g.c * filters >= least
    }

    /// Whether Winograd's filter gradient beats the direct kernel's on this geometry:
    /// with at least 8 input channels and an output of at least 8 x 8 (16 tiles). On a
    /// 7 x 7 output the tiles, the gradient's inner dimension, are too few: 64 to 128
    /// channels took 1.05-1.66x the direct kernel's time (docs/PERFORMANCE.md).
    pub fn gradient_pays_on(g: &ConvGeometry) -> bool {
        Self::applies(g) && g.c >= 8 && g.out_h >= 8 && g.out_w >= 8
    }

    /// Transforms `w` `(filters, C, 3, 3)` (row-major) for the geometry `g`, at the
    /// instruction set [`Isa::active`]. `None` when the geometry is not a 3x3 stride-1
    /// convolution ([`WinogradConv::applies`]).
    ///
    /// # Panics
    /// If `w` does not hold `filters * g.col_rows()` values.
    pub fn new(w: &[f32], filters: usize, g: &ConvGeometry) -> Option<Self> {
        Self::with_isa(w, filters, g, Isa::active())
    }

    /// [`WinogradConv::new`] at the instruction set `isa`; `None` also when `isa` cannot
    /// run here (AVX2 or AVX-512 on a CPU without them).
    ///
    /// # Panics
    /// If `w` does not hold `filters * g.col_rows()` values.
    pub fn with_isa(w: &[f32], filters: usize, g: &ConvGeometry, isa: Isa) -> Option<Self> {
        let k = g.col_rows();
        assert_eq!(
            w.len(),
            filters * k,
            "WinogradConv: W has {} values, want {filters} x {k}",
            w.len()
        );
        let mut k = Self::for_gradient(filters, g, isa)?;
        k.packed = pack_filters(w, filters, g.c, transform_filters::<MR>);
        Some(k)
    }

    /// The kernel of `filters` filters on `g` at `isa` without its filters: for the
    /// filter gradient only (`weight_gradient_image`, `add_gradient`, which depend on the
    /// geometry alone); its forward pass must not run. `None` as for
    /// [`WinogradConv::with_isa`].
    pub(crate) fn for_gradient(filters: usize, g: &ConvGeometry, isa: Isa) -> Option<Self> {
        if !Self::applies(g) || filters == 0 || !isa.runs_here() {
            return None;
        }
        let (c, packed) = (g.c, Vec::new());
        let (th, tw) = (g.out_h.div_ceil(2), g.out_w.div_ceil(2));
        let tp = (th * tw).div_ceil(16) * 16;
        // the products' widest register tile is `NR` tiles: images of 16 tiles (outputs
        // of 8 x 8 or less) fill it three at once
        let forward_images = (NR / tp).max(1);
        Some(Self {
            g: *g,
            isa,
            filters,
            packed,
            offsets: (1..=forward_images)
                .map(|n| (0..c).map(|ci| ci * n * tp).collect())
                .collect(),
            forward_images,
            th,
            tw,
            tp,
            hs: 2 * th + 2,
            ws: 2 * tw + 2,
            l: match tw {
                0..=4 => 4,
                5..=8 => 8,
                _ => 16,
            },
            gradient_images: Self::gradient_images_for(th * tw),
        })
    }

    /// Images whose tiles the filter gradient's products take at once, for `tiles` tiles
    /// an image: the products' inner dimension is the tiles, and each call reads and
    /// writes the whole accumulator (16 C FN sums), so an image of 16 tiles (an 8 x 8
    /// output) takes 5 (80 tiles), of 32 two. Only where the tiles fill their rows
    /// (`tiles` a multiple of 16), so that the images' tiles follow one another without
    /// a gap and the sums run in the order image by image would: the same bits.
    fn gradient_images_for(tiles: usize) -> usize {
        if tiles.is_multiple_of(16) {
            (80 / tiles.max(16)).max(1)
        } else {
            1
        }
    }

    /// One channel's plane, padded (`hs x ws`): the input transform pads each channel
    /// into it just before it reads it, so that the copy and its reads stay in the
    /// first-level cache.
    fn padded_len(&self) -> usize {
        // slack: a register's tiles read up to `2 (16 / l) + 2` rows (past the last
        // tile row when it is not full) of up to 34 values
        self.hs * self.ws + 8 * self.ws + 64
    }

    /// The register groups of tiles the transforms work on: `(i0, j0, mask)`, the first
    /// tile row and column and which lanes hold tiles (lane `ii l + j` is tile
    /// `(i0 + ii, j0 + j)`). The selected tiles are `t0 = i0 tw + j0` onwards, in order.
    fn groups(&self) -> impl Iterator<Item = (usize, usize, u16)> + '_ {
        let (l, r) = (self.l, 16 / self.l);
        (0..self.th).step_by(r).flat_map(move |i0| {
            (0..self.tw).step_by(l).map(move |j0| {
                let lanes = (self.tw - j0).min(l);
                let row: u16 = if lanes >= 16 { 0xffff } else { (1u16 << lanes) - 1 };
                let mask = (0..r.min(self.th - i0)).fold(0u16, |m, ii| m | (row << (ii * l)));
                (i0, j0, mask)
            })
        })
    }

    /// Distance between two positions `ξ` of `V` of `n` images, whose channels' rows
    /// hold the images' tiles one after the other (`n tp` values): `C n tp` plus one
    /// cache line, so that the transforms' 16 loads or stores, one per position, do not
    /// all fall in the same cache set when `C n tp` is a multiple of 4 KiB; the AVX2
    /// input transform's whole register stores also run into those 16 values past the
    /// last channel's row.
    fn v_stride_of(&self, n: usize) -> usize {
        self.g.c * n * self.tp + 16
    }

    /// Distance between two positions of `M` of `n` images (rows `blocks*MR` of `n tp`),
    /// padded as `V`'s.
    fn m_stride_of(&self, n: usize) -> usize {
        self.filters.div_ceil(MR) * MR * n * self.tp + 16
    }

    /// Filters rounded up to 16: the lanes of the filter gradient's rows.
    fn fp(&self) -> usize {
        self.filters.div_ceil(16) * 16
    }

    /// `dout` on the tiles' grid `(2 th, 2 tw)`, filters last: `dt[y][x][fp]`.
    fn dt_len(&self) -> usize {
        4 * self.th * self.tw * self.fp()
    }

    /// Distance between two positions of `Z` of `n` images (`n tp` rows of `fp`), padded
    /// as `V`'s.
    fn z_stride_of(&self, n: usize) -> usize {
        n * self.tp * self.fp() + 16
    }

    /// `V[ξ][c][t] = (Bᵀ d B)[ξ]` for every channel and tile, `d` the 4x4 patches of
    /// `x` padded with zeros. Each channel's plane is first copied into `padded` (zeros
    /// around it, at row and column `pad`); the slack after it keeps what it held: the
    /// transform reads it only into lanes its masks drop. The padding lanes
    /// `t >= tiles` of `V` keep what they held: `M`'s columns there are never read, and
    /// the filter gradient sums over the tiles only.
    ///
    /// `x` holds `n` images one after the other; in `V` (`v_stride_of(n)` a position)
    /// each channel's row holds their tiles in that order, image `i`'s from column
    /// `i tp`. The channels go in the outer loop, the images in the inner, so that the
    /// writes to each position go forward through it.
    fn transform_input(&self, x: &[f32], padded: &mut [f32], v: &mut [f32]) {
        let g = &self.g;
        let plane = g.h * g.w;
        let n = x.len() / (g.c * plane).max(1);
        let (row, v_stride) = (n * self.tp, self.v_stride_of(n));
        assert!(n > 0 && x.len() == n * g.c * plane && padded.len() >= self.padded_len());
        assert!(v.len() >= 16 * v_stride);
        let (image_len, plane_i) = (g.c * plane, plane as isize);
        for ci in 0..g.c {
            for image in 0..n {
                let src = &x[image * image_len + ci * plane..][..plane];
                // the next image's plane of this channel, or after the last image the
                // first image's of the next channel
                let next = match image + 1 < n {
                    true => image_len as isize,
                    false => plane_i - ((n - 1) * image_len) as isize,
                };
                pad_channel(self.isa, g, (src, next), padded, (self.hs, self.ws));
                for (i0, j0, mask) in self.groups() {
                    // SAFETY: `self.isa` runs on this CPU, as above. The group reads rows
                    // `2 i0 + k`, `k < 2 (16 / l) + 2`, of the plane from column `2 j0`,
                    // 34 values each: at most `2 (16 / l) - 1` rows past the plane's
                    // end, which `padded_len`'s slack covers. It writes
                    // `popcount(mask)` values from `t = i0 tw + j0` (all `< tiles`) of
                    // the image's part of row `ci` (`tp` values from `image tp`) of each
                    // of the 16 positions of `v` (`v_stride` apart), and the AVX2 level
                    // up to 16 values from `t`: the values past the group's tiles are
                    // the next groups' tiles, the next image's part of the row or the
                    // next channel's row, all written after it in this loop's order, or
                    // past the last channel, the 16 values of slack `v_stride` leaves.
                    let first = 2 * i0 * self.ws + 2 * j0;
                    debug_assert!(first + (2 * (16 / self.l) + 1) * self.ws + 34 <= padded.len());
                    unsafe {
                        let src = padded.as_ptr().add(first);
                        let dst = v.as_mut_ptr().add(ci * row + image * self.tp + i0 * self.tw + j0);
                        transform::input_tiles(self.isa, src, self.ws, self.l, dst, v_stride, mask);
                    }
                }
            }
        }
    }

    /// `out[f] = Aᵀ M A + b[f]` tile by tile, dropping the outputs past `OH` and `OW`,
    /// for the image `image` of the `n` whose tiles `M` holds (its tiles from column
    /// `image tp` of each filter's row).
    fn transform_output(
        &self,
        m: &[f32],
        (n, image): (usize, usize),
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (oh, ow) = (self.g.out_h, self.g.out_w);
        let (stride, row) = (self.m_stride_of(n), n * self.tp);
        // the loads read up to 15 values past a row's last tile
        assert!(image < n && m.len() >= 16 * stride + 16 && out.len() >= self.filters * oh * ow);
        for f in 0..self.filters {
            let b = bias.map_or(0.0, |b| b[f]);
            for (i0, j0, mask) in self.groups() {
                let (rows, cols) = (oh - 2 * i0, (ow - 2 * j0).min(2 * self.l));
                // SAFETY: `self.isa` runs here, as above. Reads 16 values at `f n tp + image tp
                // + i0 tw + j0 + ξ stride`: at most 15 past the image's last tile
                // `tiles - 1 < tp` of the last row, which the slack after `M` covers.
                // Writes `cols <= OW - 2 j0` values of output rows `2 i0 + k < OH` of
                // plane `f`.
                let first = f * row + image * self.tp + i0 * self.tw + j0;
                debug_assert!(first + 15 * stride + 16 <= m.len());
                unsafe {
                    let src = m.as_ptr().add(first);
                    let dst = out.as_mut_ptr().cast::<f32>().add(f * oh * ow + 2 * i0 * ow + 2 * j0);
                    transform::output_tiles(self.isa, src, stride, self.l, mask, b, dst, ow, rows, cols);
                }
            }
        }
    }
}

impl ConvKernel for WinogradConv {
    /// The geometry this convolution was built for.
    fn name(&self) -> &'static str {
        "winograd"
    }

    fn isa(&self) -> Isa {
        self.isa
    }

    fn geometry(&self) -> &ConvGeometry {
        &self.g
    }

    /// Values of scratch space [`WinogradConv::forward_image`] needs (for
    /// [`ConvKernel::images_per_forward`] images).
    fn scratch_len(&self) -> usize {
        let n = self.forward_images;
        self.padded_len() + 16 * self.v_stride_of(n) + 16 * self.m_stride_of(n) + 16
    }

    /// [`WinogradConv::forward_image`] into memory that need not be initialised: every
    /// element of `out` is written.
    ///
    /// # Panics
    /// If a slice length does not match the geometry.
    fn forward_image_uninit(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [MaybeUninit<f32>], scratch: &mut [f32]) {
        check_forward_args(
            "WinogradConv",
            &self.g,
            self.filters,
            (x, bias, out.len()),
            scratch.len() >= self.scratch_len(),
        );
        self.forward_images_uninit(x, bias, out, scratch);
    }

    fn images_per_forward(&self) -> usize {
        self.forward_images
    }

    /// The forward pass of `n` images at once (`x` their inputs one after the other,
    /// `out` their outputs, `1 <= n <=` [`ConvKernel::images_per_forward`]): their tiles go
    /// side by side through one product per position, so that on outputs of 8 x 8 or
    /// less (16 tiles an image) the products' register tiles are full. Each output is
    /// the one image by image gives, bit for bit.
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
        let scratch_ok = scratch.len() >= self.scratch_len();
        let (n, out_len) = images_of_forward(
            ("WinogradConv", &self.g, self.filters, self.forward_images),
            (x, bias, out.len()),
            scratch_ok,
        );
        let (v_stride, m_stride) = (self.v_stride_of(n), self.m_stride_of(n));
        let (padded, rest) = scratch.split_at_mut(self.padded_len());
        let (v, rest) = rest.split_at_mut(16 * v_stride);
        let m = &mut rest[..16 * m_stride + 16];
        debug_assert!(
            !self.packed.is_empty(),
            "WinogradConv: a forward pass of a gradient-only kernel"
        );
        self.transform_input(x, padded, v);
        multiply(
            self.isa,
            &self.packed,
            (&self.offsets[n - 1], self.filters, n * self.tp),
            (v, v_stride),
            (m, m_stride),
        );
        for (image, out) in out.chunks_exact_mut(out_len).enumerate() {
            self.transform_output(m, (n, image), bias, out);
        }
    }

    /// Values of scratch space [`WinogradConv::weight_gradient_images`] needs (for
    /// [`ConvKernel::images_per_gradient`] images).
    fn gradient_scratch_len(&self) -> usize {
        let n = self.gradient_images;
        self.padded_len() + 16 * self.v_stride_of(n) + self.dt_len() + 16 * self.z_stride_of(n)
    }

    /// An accumulator for [`WinogradConv::weight_gradient_image`] with no image in: its
    /// sums are allocated and stored by the first image's products (not cleared first).
    fn gradient_accumulator(&self) -> GradientAccumulator {
        empty_accumulator(&self.g, self.filters, self.fp(), 16)
    }

    /// The filter gradient of one image, **added** to `acc`: `dW += dout · col(x)^T`,
    /// `db += ` row sums of `dout`, for the input `x` `(C, H, W)` and the output gradient
    /// `dout` `(FN, OH, OW)`: [`WinogradConv::weight_gradient_images`] of one image.
    ///
    /// # Panics
    /// If a slice length does not match the geometry or `acc` is another layer's.
    fn weight_gradient_image(&self, x: &[f32], dout: &[f32], acc: &mut GradientAccumulator, scratch: &mut [f32]) {
        self.weight_gradient_images(x, dout, acc, scratch);
    }

    fn images_per_gradient(&self) -> usize {
        self.gradient_images
    }

    /// The filter gradient of `n` images (`x` `n` inputs `(C, H, W)` one after the
    /// other, `dout` their output gradients `(FN, OH, OW)`, `1 <= n <=`
    /// [`ConvKernel::images_per_gradient`]), **added** to `acc`.
    ///
    /// The forward pass is `Y = Aᵀ (U ⊙ V) A` per tile, so the gradient of the
    /// transformed filters is `dU[ξ] = Σ_tiles Z[ξ] V[ξ]` with `Z = A dY Aᵀ` (the 2x2
    /// output-gradient tile `dY` taken back to 4x4), and `dW = Gᵀ dU G`, applied once in
    /// [`ConvKernel::add_gradient`]. The 16 products `(C, tiles) · (tiles, FN)` have
    /// the tiles as inner dimension, the `n` images' tiles one after the other (which
    /// gives the sums image by image would, as the register kernel adds the tiles to
    /// the accumulator's sums in order); the direct kernel's `dW` register tiles compute
    /// them, each value of `V` broadcast, `Z` stored filters-last. `scratch` (at least
    /// [`WinogradConv::gradient_scratch_len`] values) needs no clearing.
    ///
    /// # Panics
    /// If a slice length does not match the geometry, there are more images than
    /// [`ConvKernel::images_per_gradient`], or `acc` is another layer's.
    fn weight_gradient_images(&self, x: &[f32], dout: &[f32], acc: &mut GradientAccumulator, scratch: &mut [f32]) {
        let g = &self.g;
        let (c, fp, tp) = (g.c, self.fp(), self.tp);
        let scratch_ok = scratch.len() >= self.gradient_scratch_len();
        let (n, out_len) = images_of_gradient(
            ("WinogradConv", g, self.filters, self.gradient_images),
            (x, dout, acc, 16),
            scratch_ok,
        );
        let (v_stride, z_stride) = (self.v_stride_of(n), self.z_stride_of(n));
        let (padded, rest) = scratch.split_at_mut(self.padded_len());
        let (v, rest) = rest.split_at_mut(16 * v_stride);
        let (dt, rest) = rest.split_at_mut(self.dt_len());
        let z = &mut rest[..16 * z_stride];
        self.transform_input(x, padded, v);
        let gw = 2 * self.tw;
        for (image, dout) in dout.chunks_exact(out_len).enumerate() {
            grid_filters_last(self.isa, dout, (g.out_h, g.out_w), (2 * self.th, gw), dt, &mut acc.db);
            for i in 0..self.th {
                for j in 0..self.tw {
                    for f0 in (0..fp).step_by(16) {
                        // SAFETY: `self.isa` runs here, as in `transform_input`. Reads 16
                        // values at grid positions (2i + a, 2j + b), `a, b < 2`, inside
                        // the `2 th x 2 tw` grid of `dt`, from lane `f0 + 16 <= fp`;
                        // writes 16 values at row `image tp + i tw + j < n tp` of each of
                        // the 16 positions of `z` (`z_stride` apart).
                        unsafe {
                            let src = dt.as_ptr().add((2 * i * gw + 2 * j) * fp + f0);
                            let dst = z.as_mut_ptr().add((image * tp + i * self.tw + j) * fp + f0);
                            transform::output_gradient_tile(self.isa, src, gw * fp, fp, dst, z_stride);
                        }
                    }
                }
            }
        }
        // with more than one image, the tiles fill their rows (`gradient_images_for`), so
        // the images' tiles follow one another
        let tiles = self.th * self.tw;
        debug_assert!(n == 1 || tiles == tp);
        gradient_products(
            self.isa,
            (v, v_stride),
            (z, z_stride),
            (c, n * tp),
            (n - 1) * tp + tiles,
            acc,
        );
    }

    fn add_gradient(&self, acc: &GradientAccumulator, dw: &mut [f32], db: &mut [f32]) {
        add_transformed_gradient("WinogradConv", self.filters, acc, (dw, db), transform_filter_gradient);
    }
}

/// The filter-gradient accumulator of a Winograd kernel of `positions` transformed
/// positions (16 for F(2x2, 3x3), 36 for F(4x4, 3x3)), `filters` filters padded to
/// `fp`, with no image in: its sums are allocated and stored by the first image's
/// products (not cleared first).
fn empty_accumulator(g: &ConvGeometry, filters: usize, fp: usize, positions: usize) -> GradientAccumulator {
    GradientAccumulator {
        sums: Vec::new(),
        db: vec![0.0; filters],
        k: g.col_rows(),
        fp,
        winograd: Some((positions, g.c.div_ceil(16) * 16)),
    }
}

/// [`ConvKernel::add_gradient`] of both Winograd kernels: `dW += Gᵀ dU G` for every
/// filter and channel (3x3 filters: `k = 9 C`), `dU` the `P` transformed sums of `acc`
/// and `transform` the kernel's `Gᵀ dU G`, and `db +=` the bias sums; no image in, no
/// sums (zeros).
///
/// # Panics
/// If `acc` is not a kernel's of `P` positions or a length does not match.
fn add_transformed_gradient<const P: usize>(
    kernel: &str,
    filters: usize,
    acc: &GradientAccumulator,
    (dw, db): (&mut [f32], &mut [f32]),
    transform: fn(&[f32; P]) -> [f32; 9],
) {
    let (f, k) = (filters, acc.k);
    let cp = match acc.winograd {
        Some((positions, cp)) if positions == P => cp,
        _ => panic!("{kernel}: accumulator of another kernel"),
    };
    assert_eq!(dw.len(), f * k, "{kernel}: dW length");
    assert_eq!(db.len(), f, "{kernel}: db length");
    for (fi, row) in dw.chunks_exact_mut(k).enumerate().filter(|_| !acc.sums.is_empty()) {
        for (ci, g) in row.chunks_exact_mut(9).enumerate() {
            let du: [f32; P] = std::array::from_fn(|xi| acc.sums[(xi * cp + ci) * acc.fp + fi]);
            for (v, d) in g.iter_mut().zip(transform(&du)) {
                *v += d;
            }
        }
    }
    for (a, b) in db.iter_mut().zip(&acc.db) {
        *a += b;
    }
}

/// Copies one channel's plane `src` (`H x W` of `g`) into the plane `padded` of
/// `hs x ws`, at row and column `g.pad`, zeros around it: the first step of both
/// Winograd kernels' input transforms, a channel at a time. `next` is where the plane
/// read after this one starts, in values from `src`'s start (the next channel's, `H W`,
/// or another image's): its rows are asked for as this one's are copied. Up to 16
/// values past the plane may be written (zeros: the AVX-512 level's whole-register
/// stores on rows shorter than 16); the kernels' `padded_len` leave more slack.
///
/// # Panics
/// If `src` is not one plane, `padded` holds fewer than `hs ws + 16` values, or the
/// padded plane does not fit in `hs x ws`.
pub(crate) fn pad_channel(
    isa: Isa,
    g: &ConvGeometry,
    (src, next): (&[f32], isize),
    padded: &mut [f32],
    (hs, ws): (usize, usize),
) {
    assert!(src.len() == g.h * g.w && padded.len() >= hs * ws + 16 && g.pad + g.h <= hs && g.pad + g.w <= ws);
    // SAFETY: `isa` runs here (the kernels' `with_isa` checked it); `src` holds the
    // `H x W` plane and `padded` the `hs x ws` one and 16 values more, with
    // `pad + H <= hs`, `pad + W <= ws` (asserted above); `next` is only a hint for the
    // prefetches, which never fault.
    unsafe { transform::pad_plane(isa, src.as_ptr(), g.h, g.w, g.pad, next, padded.as_mut_ptr(), hs, ws) };
}

/// The number of images `x` holds, for a Winograd kernel's forward pass of at most
/// `most` images at once, and an image's output length, after checking `x`, `bias` and
/// the output's length `out_len` against the geometry (and the scratch, `scratch_ok`).
///
/// # Panics
/// As [`check_forward_args`], or if there are no images or more than `most`.
fn images_of_forward(
    (name, g, filters, most): (&str, &ConvGeometry, usize, usize),
    (x, bias, out_len): (&[f32], Option<&[f32]>, usize),
    scratch_ok: bool,
) -> (usize, usize) {
    let (in_len, image_out) = (g.c * g.h * g.w, filters * g.out_h * g.out_w);
    let n = x.len() / in_len.max(1);
    assert!((1..=most).contains(&n), "{name}: {n} images at once, at most {most}");
    check_forward_args(name, g, filters, (&x[..in_len], bias, out_len / n), scratch_ok);
    assert!(
        x.len() == n * in_len && out_len == n * image_out,
        "{name}: {n} images' lengths"
    );
    (n, image_out)
}

/// The number of images `x` holds, for a Winograd kernel's filter gradient of at most
/// `most` images at once, and an image's output length, after checking `x`, `dout`,
/// the accumulator (of `positions` positions a tile) and the scratch (`scratch_ok`).
///
/// # Panics
/// If a length does not match the geometry, there are no images or more than `most`,
/// `acc` is another layer's or the scratch is too short.
fn images_of_gradient(
    (name, g, filters, most): (&str, &ConvGeometry, usize, usize),
    (x, dout, acc, positions): (&[f32], &[f32], &GradientAccumulator, usize),
    scratch_ok: bool,
) -> (usize, usize) {
    let (in_len, out_len) = (g.c * g.h * g.w, filters * g.out_h * g.out_w);
    let n = x.len() / in_len.max(1);
    assert_eq!(x.len(), n * in_len, "{name}: input length");
    assert!((1..=most).contains(&n), "{name}: {n} images at once, at most {most}");
    assert_eq!(dout.len(), n * out_len, "{name}: dout length");
    assert!(
        acc.winograd == Some((positions, g.c.div_ceil(16) * 16))
            && acc.k == g.col_rows()
            && acc.fp == filters.div_ceil(16) * 16
            && acc.db.len() == filters,
        "{name}: accumulator of another shape"
    );
    assert!(scratch_ok, "{name}: scratch too short");
    (n, out_len)
}

/// One image's output gradient `dout` `(FN, OH, OW)` on the tiles' grid of `gh x gw`
/// positions, filters last: `dt[y][x][f]`, `fp` lanes a position (`FN = db.len()`
/// rounded up to 16), zeros outside `OH x OW` and past `FN`, in 16 x 16 blocks
/// transposed in registers; the row sums of `dout` are added to `db`. Both Winograd
/// kernels' filter gradients start from it.
///
/// # Panics
/// If `dout` is not `FN OH OW` values, the grid is smaller than the output or `dt`
/// holds fewer than `gh gw fp` values.
fn grid_filters_last(
    isa: Isa,
    dout: &[f32],
    (oh, ow): (usize, usize),
    (gh, gw): (usize, usize),
    dt: &mut [f32],
    db: &mut [f32],
) {
    let filters = db.len();
    let fp = filters.div_ceil(16) * 16;
    assert!(dout.len() == filters * oh * ow && gh >= oh && gw >= ow && dt.len() >= gh * gw * fp);
    for f0 in (0..fp).step_by(16) {
        // f0 < FN: the filters rounded up to 16 end less than 16 past FN
        let rows = (filters - f0).min(16);
        let mut sums = [0.0f32; 16];
        for oy in 0..gh {
            for ox0 in (0..gw).step_by(16) {
                let lanes = if oy < oh { ow.saturating_sub(ox0).min(16) } else { 0 };
                let stores = (gw - ox0).min(16);
                debug_assert!(lanes == 0 || (f0 + rows - 1) * oh * ow + oy * ow + ox0 + lanes <= dout.len());
                debug_assert!((oy * gw + ox0 + stores) * fp <= dt.len());
                // SAFETY: `isa` runs here (the kernels' `with_isa` checked it). Reads
                // `lanes` values (none when 0) at `(f0 + r, oy, ox0)` of `dout` for
                // `r < rows`, with `f0 + rows <= FN`, `oy < OH` and `ox0 + lanes <= OW`;
                // writes 16 values at each of the `stores` grid positions `(oy, ox0 + q)`,
                // `ox0 + stores <= gw`, `oy < gh`, from lane `f0 + 16 <= fp` of `dt`.
                unsafe {
                    let src = dout.as_ptr().wrapping_add(f0 * oh * ow + oy * ow + ox0);
                    let dst = dt.as_mut_ptr().add((oy * gw + ox0) * fp + f0);
                    transform::transpose_block(isa, src, oh * ow, rows, lanes, dst, fp, stores, &mut sums);
                }
            }
        }
        for (b, s) in db[f0..].iter_mut().zip(&sums[..rows]) {
            *b += s;
        }
    }
}

/// The Winograd filter gradient's products, added to `acc` (or stored, into its new
/// buffer, by the first images into it): `dU[ξ] (C, FN) += V[ξ] (C, inner) · Z[ξ]
/// (inner, FN)` for each of the accumulator's positions `ξ`, `V`'s channel rows `row`
/// values apart (positions `v_stride` apart), `Z`'s rows `fp` lanes (positions
/// `z_stride` apart); the inner dimension is the tiles, in order. The register tiles are
/// rows of channels by lanes of filters (16, 32, 48 or 64 at a time); rows past `C`
/// read channel `C - 1` again and land in the accumulator's padding rows.
///
/// # Panics
/// If `acc` is not a Winograd accumulator, `V` or `Z` is too short for its positions,
/// or `inner > row`.
fn gradient_products(
    isa: Isa,
    (v, v_stride): (&[f32], usize),
    (z, z_stride): (&[f32], usize),
    (c, row): (usize, usize),
    inner: usize,
    acc: &mut GradientAccumulator,
) {
    let (positions, cp) = acc.winograd.expect("Winograd: accumulator of another kernel");
    let fp = acc.fp;
    assert!(isa.runs_here() && c > 0 && c <= cp && cp.is_multiple_of(16) && (1..=row).contains(&inner));
    assert!(v_stride >= c * row && z_stride >= row * fp);
    assert!(v.len() >= (positions - 1) * v_stride + c * row && z.len() >= (positions - 1) * z_stride + row * fp);
    let (fresh, len) = (acc.sums.is_empty(), acc.sums_len());
    if fresh {
        acc.sums.reserve_exact(len);
    }
    assert!(fresh || acc.sums.len() == len, "Winograd: accumulator of another shape");
    let sums = acc.sums.as_mut_ptr();
    let positions = v.chunks(v_stride).zip(z.chunks(z_stride)).take(positions);
    for (xi, (vx, zx)) in positions.enumerate() {
        let (vx, zx) = (&vx[..c * row], &zx[..row * fp]);
        for f0 in (0..fp).step_by(64) {
            let nv = ((fp - f0) / 16).min(4);
            let mr = match nv {
                1 => 16,
                2 | 3 => 8,
                _ => 4,
            };
            for c0 in (0..cp).step_by(mr) {
                let mut offs = [0usize; GRADIENT_TILE];
                for (m, o) in offs.iter_mut().enumerate().take(mr) {
                    *o = (c0 + m).min(c - 1) * row;
                }
                debug_assert!(offs[..mr].iter().all(|&o| o + inner <= vx.len()));
                debug_assert!((inner - 1) * fp + f0 + 16 * nv <= zx.len());
                // SAFETY: `isa` runs here (asserted). The kernel reads `inner <= row`
                // values at each offset `c' row`, `c' < C`, of `vx` (`C row` values);
                // `16 nv` values from lane `f0` (`f0 + 16 nv <= fp`) at each of `inner`
                // rows of `zx` (`fp` apart); it adds to `mr` rows from `(ξ cp + c0)` of
                // `acc.sums` (`fp` apart, `c0 + mr <= cp` as `mr` divides 16), `16 nv`
                // lanes from `f0` (of the buffer's capacity, `positions cp fp` values,
                // when `fresh`: then it only writes).
                unsafe {
                    let (xp, d) = (vx.as_ptr(), zx.as_ptr().add(f0));
                    let out = sums.add((xi * cp + c0) * fp + f0);
                    gradient(isa, xp, &offs, mr, d, fp, inner, out, nv, fresh);
                }
            }
        }
    }
    if fresh {
        // SAFETY: the capacity is `len`, and the loops above wrote every value: the
        // positions, the rows `c0 + m < cp` (`mr` divides `cp`), and the lanes
        // `f0 + l < fp` (`16 nv` from each multiple of 64, `fp` a multiple of 16).
        unsafe { acc.sums.set_len(len) };
    }
}

/// `M[ξ] = U[ξ] · V[ξ]`, `(blocks*MR, tp)`, for each position `ξ` of `packed`: `U` as
/// `[ξ][block][c][MR]` (`blocks = ceil(filters / MR)`), `V` as `[ξ][c][tp]` (channel
/// `c`'s row at `offsets[c]`, positions `v_stride` apart), `M` as `[ξ][block*MR][tp]`
/// (positions `m_stride` apart). F(2x2, 3x3) and F(4x4, 3x3) share it.
///
/// # Panics
/// If `isa` cannot run here, `tp` is not a multiple of 16, or `v` or `m` is too short
/// for the positions of `packed`.
fn multiply(
    isa: Isa,
    packed: &[f32],
    (offsets, filters, tp): (&[usize], usize, usize),
    (v, v_stride): (&[f32], usize),
    (m, m_stride): (&mut [f32], usize),
) {
    let (c, blocks) = (offsets.len(), filters.div_ceil(MR));
    assert!(isa.runs_here() && tp.is_multiple_of(16) && c > 0);
    assert!(offsets.iter().all(|&o| o + tp <= v_stride) && m_stride >= blocks * MR * tp);
    let positions = packed.len() / (blocks * c * MR);
    assert!(
        v.len() >= positions * v_stride && m.len() >= positions * m_stride,
        "multiply: V or M shorter than the {positions} positions of U"
    );
    // per position ξ: U[ξ] (blocks of MR filters), V[ξ] and M[ξ]
    let positions = packed
        .chunks_exact(blocks * c * MR)
        .zip(v.chunks(v_stride))
        .zip(m.chunks_mut(m_stride));
    for ((u, vx), mx) in positions {
        for (w, rows) in u.chunks_exact(c * MR).zip(mx.chunks_exact_mut(MR * tp)) {
            let mut j = 0;
            while j < tp {
                let width = (tp - j).min(NR);
                // SAFETY: `isa` runs here (checked above). The kernel reads `width` values
                // at `j + offsets[c']` of `vx` for each channel `c'` (`j + width <= tp`,
                // and `offsets[c'] + tp <= v_stride`, all within `vx`), the `C MR` values
                // of `w`, and writes `MR` rows of `width` values `tp` apart from column
                // `j` of `rows` (`MR tp`).
                unsafe {
                    let (x, out) = (vx.as_ptr().add(j), rows.as_mut_ptr().add(j));
                    products(isa, offsets, w.as_ptr(), x, out, tp, width);
                }
                j += width;
            }
        }
    }
}

/// `U = G g Gᵀ` of every filter and channel of `w` `(filters, C, 3, 3)` (row-major),
/// packed as `[ξ][block][c][MR]` for the `P` positions `ξ` of a transformed tile
/// (zeros past `filters`): `transform` takes the 9 taps of the `MR` filters of a block
/// side by side (lane `r` is filter `block MR + r`), so that its arithmetic runs on
/// whole registers, and each position's `MR` values are stored together. Both Winograd
/// kernels build their filters with it once a weight update.
fn pack_filters<const P: usize>(
    w: &[f32],
    filters: usize,
    c: usize,
    transform: impl Fn(&[[f32; MR]; 9]) -> [[f32; MR]; P],
) -> Vec<f32> {
    assert_eq!(w.len(), filters * c * 9, "pack_filters: W length");
    let blocks = filters.div_ceil(MR);
    let mut packed = vec![0.0f32; P * blocks * c * MR];
    for (b, ci) in (0..blocks).flat_map(|b| (0..c).map(move |ci| (b, ci))) {
        let taps: [[f32; MR]; 9] = std::array::from_fn(|t| {
            std::array::from_fn(|r| {
                let f = b * MR + r;
                if f < filters {
                    w[(f * c + ci) * 9 + t]
                } else {
                    0.0
                }
            })
        });
        for (xi, lanes) in transform(&taps).iter().enumerate() {
            packed[((xi * blocks + b) * c + ci) * MR..][..MR].copy_from_slice(lanes);
        }
    }
    packed
}

/// `f` applied lane by lane to three arrays of `L` lanes: `out[p][l] = f(a[l], b[l],
/// c[l])[p]`.
#[inline(always)]
fn by_lanes<const L: usize, const P: usize>(
    (a, b, c): (&[f32; L], &[f32; L], &[f32; L]),
    f: impl Fn(f32, f32, f32) -> [f32; P],
) -> [[f32; L]; P] {
    let mut out = [[0.0f32; L]; P];
    for l in 0..L {
        for (o, v) in out.iter_mut().zip(f(a[l], b[l], c[l])) {
            o[l] = v;
        }
    }
    out
}

/// `U = G g Gᵀ` for `L` 3x3 filters side by side (`g[tap][lane]`, taps row-major), as
/// 16 positions `ξ = 4 row + col` of `L` lanes.
fn transform_filters<const L: usize>(g: &[[f32; L]; 9]) -> [[f32; L]; 16] {
    // G applied to the three values of a row or column
    let gv = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    // G g: 4 x 3, column by column; then each of its rows times Gᵀ
    let cols: [[[f32; L]; 4]; 3] = std::array::from_fn(|col| by_lanes((&g[col], &g[3 + col], &g[6 + col]), gv));
    let mut u = [[0.0f32; L]; 16];
    for row in 0..4 {
        let r = by_lanes((&cols[0][row], &cols[1][row], &cols[2][row]), gv);
        u[4 * row..4 * row + 4].copy_from_slice(&r);
    }
    u
}

/// `U = G g Gᵀ` for one 3x3 filter `g` (row-major), as 16 values `ξ = 4 row + col`.
#[cfg(test)]
fn transform_filter(g: &[f32; 9]) -> [f32; 16] {
    transform_filters::<1>(&g.map(|v| [v])).map(|[v]| v)
}

/// `Gᵀ dU G` for one filter's 16 transformed-gradient values (`ξ = 4 row + col`): the
/// gradient of the 3x3 filter, row-major.
pub(crate) fn transform_filter_gradient(du: &[f32; 16]) -> [f32; 9] {
    // Gᵀ applied to the four values of a row or column
    let gt = |a: f32, b: f32, c: f32, d: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d];
    let mut t = [[0.0f32; 4]; 3]; // Gᵀ dU: 3 x 4
    for col in 0..4 {
        let r = gt(du[col], du[4 + col], du[8 + col], du[12 + col]);
        for (row, v) in r.iter().enumerate() {
            t[row][col] = *v;
        }
    }
    let mut g = [0.0f32; 9];
    for (row, tr) in t.iter().enumerate() {
        g[3 * row..3 * row + 3].copy_from_slice(&gt(tr[0], tr[1], tr[2], tr[3]));
    }
    g
}

/// The transforms at a kernel's instruction set: the AVX-512 ones, the AVX2 ones, or the
/// portable ones.
mod transform {
    use super::portable;
    use crate::Isa;

    macro_rules! dispatch {
        ($(fn $name:ident($($arg:ident: $ty:ty),*);)*) => {$(
            /// The transform of the same name at the level `isa`.
            ///
            /// # Safety
            /// `isa` runs on this CPU; the transform's own contract.
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn $name(isa: Isa, $($arg: $ty),*) {
                // SAFETY: the contract, passed on; each level's version needs only the
                // instruction set `isa` running here guarantees.
                unsafe {
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx512 => super::avx512::$name($($arg),*),
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2 => super::avx2::$name($($arg),*),
                        _ => portable::$name($($arg),*),
                    }
                }
            }
        )*};
    }

    dispatch! {
        fn input_tiles(src: *const f32, ws: usize, l: usize, dst: *mut f32, pos: usize, mask: u16);
        fn output_gradient_tile(src: *const f32, row: usize, fp: usize, dst: *mut f32, pos: usize);
        fn output_gradient_tile4(src: *const f32, row: usize, fp: usize, dst: *mut f32, pos: usize);
        fn pad_plane(x: *const f32, h: usize, w: usize, p: usize, next: isize, dst: *mut f32, hs: usize, ws: usize);
        fn transpose_block(
            src: *const f32, plane: usize, rows: usize, lanes: usize, dst: *mut f32, fp: usize, stores: usize,
            sums: &mut [f32; 16]
        );
        fn output_tiles(
            src: *const f32, pos: usize, l: usize, mask: u16, b: f32, dst: *mut f32, ow: usize, rows: usize,
            cols: usize
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_forward_matches_reference, assert_weight_gradient_matches_reference, random4};

    #[test]
    fn multiply_refuses_buffers_shorter_than_the_positions_of_u() {
        // 2 channels, 8 filters, 16 tiles: U of 16 positions, V and M one value short
        let (c, tp) = (2, 16);
        let packed = vec![0.5f32; 16 * c * MR];
        let offsets = [0, tp];
        let (vs, ms) = (c * tp, MR * tp);
        for (v_len, m_len) in [(16 * vs - 1, 16 * ms), (16 * vs, 16 * ms - 1)] {
            let (v, mut m) = (vec![1.0f32; v_len], vec![0.0f32; m_len]);
            let message = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                multiply(Isa::Scalar, &packed, (&offsets, MR, tp), (&v, vs), (&mut m, ms))
            }))
            .expect_err("a panic");
            let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(message.contains("shorter than the 16 positions"), "{message}");
        }
        // long enough: every product is the sum over 2 channels of 0.5 x 1
        let (v, mut m) = (vec![1.0f32; 16 * vs], vec![0.0f32; 16 * ms]);
        multiply(Isa::Scalar, &packed, (&offsets, MR, tp), (&v, vs), (&mut m, ms));
        assert!(m.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn pad_plane_copies_the_image_into_zeros_at_every_level() {
        // (h, w, p, hs, ws): images of 8 and wider (the AVX2 level's register path, its
        // last 8 overlapping the ones before when w is not a multiple of 8), padded by
        // 0, 1, 2 and 7, narrower images and planes, and sides past 8 (portable loops)
        let cases = [
            (28, 28, 1, 30, 30),
            (14, 14, 2, 18, 18),
            (8, 8, 1, 10, 10),
            (16, 16, 0, 16, 16),
            (13, 40, 1, 16, 42),
            (9, 11, 0, 10, 12),
            (5, 35, 2, 10, 40),
            (8, 9, 7, 22, 24),
            (7, 7, 1, 10, 10),
            (3, 3, 0, 4, 4),
            (4, 10, 9, 22, 28),
            (6, 12, 1, 8, 22),
            // rows of 16 values or more at AVX-512: whole registers, the last ending at
            // the row's end (18, 30, 42 above), or not overlapping (32, 48)
            (20, 30, 1, 22, 32),
            (6, 44, 2, 10, 48),
            // rows past 48 values (the AVX-512 level's masks computed register by
            // register): 49, 64 and 66
            (3, 47, 1, 5, 49),
            (5, 50, 3, 11, 64),
            (4, 60, 2, 8, 66),
        ];
        for (h, w, p, hs, ws) in cases {
            let x: Vec<f32> = (0..h * w).map(|i| i as f32 + 1.0).collect();
            for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
                // NaN in the plane (every value must be written), and a guard of 32 past it
                let mut dst = vec![f32::NAN; hs * ws + 32];
                dst[hs * ws..].fill(-7.0);
                // SAFETY: `isa` runs here; `x` holds `h w` values and `dst` `hs ws + 16`
                // and more.
                unsafe { transform::pad_plane(isa, x.as_ptr(), h, w, p, (h * w) as isize, dst.as_mut_ptr(), hs, ws) };
                for y in 0..hs {
                    for c in 0..ws {
                        let inside = (p..p + h).contains(&y) && (p..p + w).contains(&c);
                        let want = if inside { x[(y - p) * w + c - p] } else { 0.0 };
                        assert_eq!(dst[y * ws + c], want, "{isa}, {h}x{w} pad {p} in {hs}x{ws}: ({y}, {c})");
                    }
                }
                // zeros at most, and only as far as a 16-value row would reach
                let (near, far) = dst[hs * ws..].split_at(16usize.saturating_sub(ws));
                assert!(
                    near.iter().all(|&v| v == -7.0 || v == 0.0),
                    "{isa}: wrote past the plane"
                );
                assert!(far.iter().all(|&v| v == -7.0), "{isa}: wrote past the plane");
            }
        }
    }

    #[test]
    fn filter_transform_matches_g_times_g_times_gt() {
        let g = [[1.0f32, 0.5, 0.25], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        let f: [f32; 9] = std::array::from_fn(|i| i as f32 - 3.5);
        let u = transform_filter(&f);
        for r in 0..4 {
            for c in 0..4 {
                // (G f Gᵀ)[r][c] = sum_ab G[r][a] f[a][b] G[c][b], with G's first row (1, 0, 0)
                let gr = |r: usize, a: usize| if r == 0 { [1.0, 0.0, 0.0][a] } else { g[r][a] };
                let mut want = 0.0f32;
                for a in 0..3 {
                    for b in 0..3 {
                        want += gr(r, a) * f[3 * a + b] * gr(c, b);
                    }
                }
                assert!(
                    (u[4 * r + c] - want).abs() < 1e-5,
                    "U[{r}][{c}] {} vs {want}",
                    u[4 * r + c]
                );
            }
        }
    }

    #[test]
    fn matches_the_reference_convolution() {
        // (C, H, W, FN, FH, FW, pad): the network's 3x3 layers (conv4 with pad 2, 16x16 output),
        // odd output sizes (the last tile row and column half outside), pad 0, filter
        // counts that are not a multiple of 8, images wider than 32 (two tile chunks of a
        // row), 1x1 and 2x1 outputs.
        let cases = [
            (16, 28, 28, 16, 3, 3, 1),
            (16, 14, 14, 32, 3, 3, 1),
            (32, 14, 14, 32, 3, 3, 2),
            (32, 8, 8, 64, 3, 3, 1),
            (64, 7, 7, 64, 3, 3, 1),
            (3, 9, 11, 5, 3, 3, 0),
            (5, 13, 40, 13, 3, 3, 1),
            (2, 3, 3, 3, 3, 3, 0),
            (1, 4, 3, 2, 3, 3, 0),
            (8, 5, 35, 9, 3, 3, 2),
            // 6x6 output: tile rows of 3 in 4-lane groups, three to a register (gaps)
            (4, 6, 6, 5, 3, 3, 1),
            // 1x8 output: one row of 4 tiles in a 4-lane group, which reads 5 rows and
            // 34 values past the padded image (the most any geometry reads past it)
            (1, 3, 10, 2, 3, 3, 0),
            // 10x10 output, 8 filters: the last group starts at tile 20 of 32, so the
            // output transform's 16-value loads of the last filter run past `M`'s last
            // row into `m_len`'s slack
            (4, 10, 10, 8, 3, 3, 1),
            // 8x24 and 16x12 outputs: 48 tiles, a multiple of 16, in groups that do not
            // fill a register (one row of 12 tiles; two rows of 6), so the AVX2 input
            // transform's whole-register stores of each channel's last group run into
            // the next channel's row and, for the last channel, into `v_stride`'s slack
            (3, 8, 24, 5, 3, 3, 1),
            (2, 16, 12, 4, 3, 3, 1),
        ];
        assert_forward_matches_reference(&cases, WinogradConv::with_isa);
    }

    #[test]
    fn scratch_holds_the_tiles_and_their_transforms_and_little_more() {
        // (C, H, W, FN, images of the forward, images of the gradient) with pad 1: the
        // network's layers, odd sizes, few filters; 16 tiles an image, 3 images in the
        // forward pass and, where they fill their row, 5 in the gradient
        let cases = [
            (16, 28, 28, 16, 1, 1),
            (32, 14, 14, 64, 1, 1),
            (64, 8, 8, 64, 3, 5),
            (3, 9, 11, 5, 1, 1),
            (20, 5, 6, 48, 3, 1),
        ];
        for (c, h, w, f, nf, ng) in cases {
            let g = ConvGeometry::new(c, h, w, 3, 3, 1, 1).unwrap();
            let d = WinogradConv::with_isa(&vec![0.5; f * c * 9], f, &g, Isa::Scalar).unwrap();
            // 2x2 output tiles, each reading a 4x4 patch: one padded plane of
            // (2 th + 2) x (2 tw + 2); the 16 transformed positions of every channel's
            // tiles (rounded up to 16) and of every filter's (filters rounded up to 8),
            // or, for the filter gradient, `dout` on the tiles' grid and its transform
            // with the filters rounded up to 16
            let (th, tw) = (g.out_h.div_ceil(2), g.out_w.div_ceil(2));
            let tp = (th * tw).div_ceil(16) * 16;
            let (ws, image) = (2 * tw + 2, (2 * th + 2) * (2 * tw + 2));
            let fp = f.div_ceil(16) * 16;
            let forward = image + 16 * c * nf * tp + 16 * f.div_ceil(8) * 8 * nf * tp;
            let gradient = image + 16 * c * ng * tp + 4 * th * tw * fp + 16 * ng * tp * fp;
            for (got, least) in [(d.scratch_len(), forward), (d.gradient_scratch_len(), gradient)] {
                // slack: a register group reads up to 9 rows past its first tile row, and
                // each of the 16 positions is padded by a cache line
                let most = least + 10 * ws + 1000;
                assert!((least..=most).contains(&got), "{got} not in {least}..={most}");
            }
        }
    }

    #[test]
    fn the_register_groups_select_every_tile_once_in_order() {
        // output sizes: 4, 8 and 16 tiles to a register row, rows that fill a register
        // and rows that do not, a last column chunk of 4 tiles (40 wide) and of 1
        for (oh, ow) in [(1, 1), (6, 6), (9, 8), (16, 16), (28, 28), (7, 7), (13, 40), (5, 34)] {
            let g = ConvGeometry::new(2, oh, ow, 3, 3, 1, 1).unwrap();
            let d = WinogradConv::with_isa(&[0.5; 2 * 2 * 9], 2, &g, Isa::Scalar).unwrap();
            let mut tiles = Vec::new();
            for (i0, j0, mask) in d.groups() {
                for lane in (0..16).filter(|b| mask >> b & 1 == 1) {
                    let (ii, j) = (lane / d.l, lane % d.l);
                    tiles.push((i0 + ii) * d.tw + j0 + j);
                }
            }
            let all: Vec<usize> = (0..d.th * d.tw).collect();
            assert_eq!(tiles, all, "{oh}x{ow}: {} lanes to a row", d.l);
        }
    }

    #[test]
    fn filter_gradient_transform_is_gt_times_du_times_g() {
        let gm = [[1.0f32, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        let du: [f32; 16] = std::array::from_fn(|i| (i as f32 * 0.37).sin());
        let got = transform_filter_gradient(&du);
        for a in 0..3 {
            for b in 0..3 {
                // (Gᵀ dU G)[a][b] = sum_rc G[r][a] dU[r][c] G[c][b]
                let mut want = 0.0f32;
                for r in 0..4 {
                    for c in 0..4 {
                        want += gm[r][a] * du[4 * r + c] * gm[c][b];
                    }
                }
                assert!(
                    (got[3 * a + b] - want).abs() < 1e-5,
                    "dW[{a}][{b}] {} vs {want}",
                    got[3 * a + b]
                );
            }
        }
    }

    #[test]
    fn weight_gradient_matches_dout_times_lowered_input() {
        // (C, H, W, FN, FH, FW, pad): the network's 3x3 layers, channel counts that are not a
        // multiple of the 16-row groups, 70 filters (lane blocks of 64 and 16), 48
        // filters (three vectors), odd output sizes, pad 0 and 2.
        let cases = [
            (16, 28, 28, 16, 3, 3, 1),
            (16, 14, 14, 32, 3, 3, 1),
            (32, 14, 14, 32, 3, 3, 2),
            (64, 8, 8, 64, 3, 3, 1),
            (5, 7, 9, 70, 3, 3, 1),
            (3, 9, 11, 5, 3, 3, 0),
            (20, 5, 6, 48, 3, 3, 2),
            (1, 3, 3, 1, 3, 3, 0),
            (4, 6, 6, 5, 3, 3, 1),
        ];
        assert_weight_gradient_matches_reference(&cases, WinogradConv::with_isa);
    }

    /// The filter gradient of several images at once gives the sums of the images one
    /// by one, bit for bit, at every level, from an accumulator that already holds sums:
    /// images of 16 tiles (5 at once; an 8 x 8 output, and a 7 x 7 one, whose tiles
    /// reach past it), of 32 (2 at once), of 16 whose register groups do not fill (a
    /// 16 x 4 output: 8 tiles a group, the AVX2 stores run 8 past each), fewer images
    /// than the most, and where the tiles do not fill their rows, one at a time.
    #[test]
    fn the_gradient_of_images_at_once_is_that_of_each_in_turn() {
        // (C, H, W, FN, pad, images at once)
        let cases = [
            (32, 8, 8, 64, 1, 5),
            (17, 8, 8, 70, 1, 5),
            (16, 7, 7, 16, 1, 5),
            (9, 8, 16, 20, 1, 2),
            (8, 16, 4, 16, 1, 5),
            (16, 14, 14, 16, 2, 1),
            (8, 10, 10, 16, 1, 1),
        ];
        assert_images_at_once_are_each_in_turn(&cases, |f, g, isa| {
            Box::new(WinogradConv::for_gradient(f, g, isa).unwrap())
        });
    }

    /// A kernel for the filter gradient of `FN` filters on a geometry at a level.
    pub(super) type GradientKernel = fn(usize, &ConvGeometry, Isa) -> Box<dyn ConvKernel>;

    /// For each case `(C, H, W, FN, pad, images at once)` at every level: the kernel
    /// `build` gives takes that many images at once, and the filter gradient of all of
    /// them (and of half as many), after one image in the accumulator, gives the bits of
    /// each in turn; the scratch starts as NaN.
    pub(super) fn assert_images_at_once_are_each_in_turn(
        cases: &[(usize, usize, usize, usize, usize, usize)],
        build: GradientKernel,
    ) {
        for (case, &(c, h, w, f, pad, most)) in cases.iter().enumerate() {
            for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
                assert_images_at_once_at(case, (c, h, w, f, pad), isa, most, build);
            }
        }
    }

    /// [`assert_images_at_once_are_each_in_turn`] for one case `(C, H, W, FN, pad)` at
    /// one level, where the kernel takes `most` images at once.
    pub(super) fn assert_images_at_once_at(
        case: usize,
        (c, h, w, f, pad): (usize, usize, usize, usize, usize),
        isa: Isa,
        most: usize,
        build: GradientKernel,
    ) {
        let g = ConvGeometry::new(c, h, w, 3, 3, 1, pad).unwrap();
        let (in_len, out_len) = (c * h * w, f * g.out_h * g.out_w);
        let k = build(f, &g, isa);
        assert_eq!(k.images_per_gradient(), most, "case {case} at {isa}");
        for n in [most, most.div_ceil(2)] {
            let x = random4((n, c, h, w), 40 + case as u64);
            let dout = random4((n, f, g.out_h, g.out_w), 50 + case as u64);
            let (x, dout) = (x.as_slice().unwrap(), dout.as_slice().unwrap());
            let mut scratch = vec![f32::NAN; k.gradient_scratch_len()];
            let mut want = k.gradient_accumulator();
            let mut got = k.gradient_accumulator();
            for a in [&mut want, &mut got] {
                let first = &x[..in_len];
                k.weight_gradient_image(first, &dout[..out_len], a, &mut scratch);
            }
            for (xi, di) in x.chunks(in_len).zip(dout.chunks(out_len)) {
                k.weight_gradient_image(xi, di, &mut want, &mut scratch);
            }
            scratch.fill(f32::NAN);
            k.weight_gradient_images(x, dout, &mut got, &mut scratch);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.sums), bits(&want.sums), "case {case}, {n} images at {isa}");
            assert_eq!(bits(&got.db), bits(&want.db), "case {case}, {n} images at {isa}");
        }
    }

    /// The forward pass of several images at once gives each image's output as one at
    /// a time does, bit for bit, at every level: outputs of 16 tiles or fewer (3 at
    /// once: 8 x 8, 7 x 7, 4 x 4, 16 x 4), fewer images than the most, and where the
    /// tiles take more than a third of the widest register tile, one at a time.
    #[test]
    fn the_forward_of_images_at_once_is_that_of_each_in_turn() {
        // (C, H, W, FN, pad, images at once)
        let cases = [
            (64, 8, 8, 64, 1, 3),
            (9, 7, 7, 20, 1, 3),
            (8, 4, 4, 9, 1, 3),
            (8, 16, 4, 16, 1, 3),
            (8, 10, 10, 16, 1, 1),
            (8, 8, 16, 8, 1, 1),
        ];
        assert_forward_images_at_once_are_each_in_turn(&cases, |w, f, g, isa| {
            Box::new(WinogradConv::with_isa(w, f, g, isa).unwrap())
        });
    }

    /// A kernel of the filters `w` (`FN` of them) on a geometry at a level.
    pub(super) type ForwardKernel = fn(&[f32], usize, &ConvGeometry, Isa) -> Box<dyn ConvKernel>;

    /// For each case `(C, H, W, FN, pad, images at once)` at every level: the kernel
    /// `build` gives takes that many images at once, and the forward pass of all of them
    /// (and of half as many), with a bias and without, gives the bits of each in turn;
    /// the scratch starts as NaN.
    pub(super) fn assert_forward_images_at_once_are_each_in_turn(
        cases: &[(usize, usize, usize, usize, usize, usize)],
        build: ForwardKernel,
    ) {
        for (case, &(c, h, w, f, pad, most)) in cases.iter().enumerate() {
            let g = ConvGeometry::new(c, h, w, 3, 3, 1, pad).unwrap();
            let out_len = f * g.out_h * g.out_w;
            let filters = random4((f, c, 3, 3), 60 + case as u64);
            let bias: Vec<f32> = (0..f).map(|i| 0.1 * i as f32 - 0.4).collect();
            for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
                let k = build(filters.as_slice().unwrap(), f, &g, isa);
                assert_eq!(k.images_per_forward(), most, "case {case} at {isa}");
                for n in [most, most.div_ceil(2)] {
                    let x = random4((n, c, h, w), 70 + case as u64);
                    let x = x.as_slice().unwrap();
                    let mut scratch = vec![f32::NAN; k.scratch_len()];
                    for b in [Some(&bias[..]), None] {
                        let mut want = vec![f32::NAN; n * out_len];
                        for (xi, o) in x.chunks(c * h * w).zip(want.chunks_mut(out_len)) {
                            k.forward_image(xi, b, o, &mut scratch);
                        }
                        let mut got = vec![f32::NAN; n * out_len];
                        scratch.fill(f32::NAN);
                        k.forward_images_uninit(x, b, crate::kernel::as_uninit(&mut got), &mut scratch);
                        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "case {case}, {n} images at {isa}");
                    }
                }
            }
        }
    }

    /// An accumulator with no image in (its sums not yet allocated) is zeros: its `dW`
    /// and `db` add nothing, merging it changes nothing, merging into it gives the
    /// other's sums, and the first image's products store what they would add to zeros.
    #[test]
    fn an_accumulator_of_no_images_is_zeros() {
        assert_empty_accumulators_are_zeros(|f, g, isa| Box::new(WinogradConv::for_gradient(f, g, isa).unwrap()));
    }

    /// An accumulator of no images (the kernel `build` gives, 16 filters on an 8 x 8
    /// input of 8 channels): the first image's sums are those added to zeros; it adds
    /// nothing to `dW` and `db`, and merges as zeros both ways.
    pub(super) fn assert_empty_accumulators_are_zeros(build: GradientKernel) {
        let g = ConvGeometry::new(8, 8, 8, 3, 3, 1, 1).unwrap();
        for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
            let k = build(16, &g, isa);
            let (x, dout) = (random4((1, 8, 8, 8), 1), random4((1, 16, 8, 8), 2));
            let (x, dout) = (x.as_slice().unwrap(), dout.as_slice().unwrap());
            let mut scratch = vec![f32::NAN; k.gradient_scratch_len()];
            let (mut one, mut cleared) = (k.gradient_accumulator(), k.gradient_accumulator());
            assert!(one.sums.is_empty());
            cleared.written_sums();
            k.weight_gradient_image(x, dout, &mut one, &mut scratch);
            k.weight_gradient_image(x, dout, &mut cleared, &mut scratch);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one.sums), bits(&cleared.sums), "{isa}");
            let empty = k.gradient_accumulator();
            let (mut dw, mut db) = (vec![1.5; 16 * 72], vec![-2.0; 16]);
            k.add_gradient(&empty, &mut dw, &mut db);
            assert!(dw.iter().all(|v| *v == 1.5) && db.iter().all(|v| *v == -2.0));
            let mut a = one.clone();
            a.merge(&empty);
            assert_eq!((bits(&a.sums), bits(&a.db)), (bits(&one.sums), bits(&one.db)));
            let mut b = k.gradient_accumulator();
            b.merge(&one);
            assert_eq!((&b.sums, &b.db), (&one.sums, &one.db));
        }
    }

    #[test]
    fn refuses_more_images_at_once_than_it_takes() {
        let g = ConvGeometry::new(8, 8, 8, 3, 3, 1, 1).unwrap();
        let k = WinogradConv::for_gradient(8, &g, Isa::Scalar).unwrap();
        let mut acc = k.gradient_accumulator();
        let mut scratch = vec![0.0; k.gradient_scratch_len()];
        let (x, dout) = (vec![0.0; 6 * 8 * 64], vec![0.0; 6 * 8 * 64]);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            k.weight_gradient_images(&x, &dout, &mut acc, &mut scratch)
        }));
        let message = caught.expect_err("6 images").downcast::<String>().unwrap();
        assert!(message.contains("6 images at once, at most 5"), "{message}");
        let k = WinogradConv::with_isa(&[0.5; 8 * 72], 8, &g, Isa::Scalar).unwrap();
        let mut out = vec![0.0; 4 * 8 * 64];
        let mut scratch = vec![0.0; k.scratch_len()];
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            k.forward_images_uninit(&x[..4 * 8 * 64], None, crate::kernel::as_uninit(&mut out), &mut scratch)
        }));
        let message = caught.expect_err("4 images").downcast::<String>().unwrap();
        assert!(message.contains("4 images at once, at most 3"), "{message}");
    }

    #[test]
    fn declines_what_it_does_not_compute() {
        let strided = ConvGeometry::new(1, 8, 8, 3, 3, 2, 1).unwrap();
        assert!(WinogradConv::new(&[0.0; 9], 1, &strided).is_none());
        let g1 = ConvGeometry::new(1, 8, 8, 3, 3, 1, 1).unwrap();
        for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
            assert!(
                WinogradConv::with_isa(&[], 0, &g1, isa).is_none(),
                "no filters at {isa}"
            );
        }
        let five = ConvGeometry::new(1, 8, 8, 5, 5, 1, 1).unwrap();
        assert!(WinogradConv::new(&[0.0; 25], 1, &five).is_none());
        let g = |c, hw| ConvGeometry::new(c, hw, hw, 3, 3, 1, 1).unwrap();
        for isa in Isa::ALL {
            assert!(!WinogradConv::pays(&g(1, 28), 64, isa), "one channel at {isa}");
            assert!(!WinogradConv::pays(&g(4, 28), 128, isa), "4 channels at {isa}");
            assert!(!WinogradConv::pays(&g(8, 28), 16, isa), "8 x 16 at {isa}");
            assert!(WinogradConv::pays(&g(16, 28), 32, isa));
            assert!(WinogradConv::pays(&g(8, 28), 64, isa));
            assert!(!WinogradConv::pays(&strided, 64, isa), "stride 2 at {isa}");
            // 16 x 16 only at AVX-512
            assert_eq!(
                WinogradConv::pays(&g(16, 28), 16, isa),
                isa == Isa::Avx512,
                "16 x 16 at {isa}"
            );
            assert_eq!(
                WinogradConv::pays(&g(8, 28), 32, isa),
                isa == Isa::Avx512,
                "8 x 32 at {isa}"
            );
        }
        assert!(WinogradConv::gradient_pays_on(&g(16, 28)));
        assert!(WinogradConv::gradient_pays_on(&g(8, 8)));
        assert!(!WinogradConv::gradient_pays_on(&g(64, 7)), "7 x 7");
        assert!(!WinogradConv::gradient_pays_on(&g(4, 28)), "4 channels");
        assert!(!WinogradConv::gradient_pays_on(
            &ConvGeometry::new(16, 28, 28, 3, 3, 2, 1).unwrap()
        ));
        assert!(
            !WinogradConv::gradient_pays_on(&ConvGeometry::new(16, 8, 7, 3, 3, 1, 1).unwrap()),
            "7 wide"
        );
    }
}
