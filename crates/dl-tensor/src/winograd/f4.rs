//! Winograd F(4x4, 3x3): 36 multiplies per 4x4 output tile, against F(2x2, 3x3)'s 64
//! for the same 16 outputs.
//!
//! For a 6x6 input tile `d` and a 3x3 filter `g`, the 4x4 output tile is
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` with the interpolation points 0, ±1, ±2 (Lavin and
//! Gray, 2015):
//!
//! ```text
//!      | 4  0 -5  0  1  0 |        |  1/4    0     0   |
//!      | 0 -4 -4  1  1  0 |        | -1/6  -1/6  -1/6  |        | 1  1  1  1  1  0 |
//! Bᵀ = | 0  4 -4 -1  1  0 |    G = | -1/6   1/6  -1/6  |   Aᵀ = | 0  1 -1  2 -2  0 |
//!      | 0 -2 -1  2  1  0 |        |  1/24  1/12  1/6  |        | 0  1  1  4  4  0 |
//!      | 0  2 -1 -2  1  0 |        |  1/24 -1/12  1/6  |        | 0  1 -1  8 -8  1 |
//!      | 0  4  0 -5  0  1 |        |  0     0     1    |
//! ```
//!
//! As in F(2x2, 3x3) ([`WinogradConv`]), each of the 36 positions `ξ` of the transformed
//! tiles is a matrix product over the channels, `M[ξ] (FN, tiles) = U[ξ] (FN, C) · V[ξ]
//! (C, tiles)`, run by the same register kernel. The multiplies per output fall from 4
//! to 2.25; the price is a larger transform per tile and larger rounding errors (the
//! transforms multiply by up to 8 and divide by 24), still within the kernels' test
//! tolerance.
//!
//! Outputs up to 32 wide run through transforms written for them, whose registers hold
//! one value of many tiles; each output row leaves in whole-register stores after a
//! transpose in registers:
//! * up to 4 tiles a row (16 wide), AVX-512: 4 tile rows of 4 tiles a register, the 36
//!   input values per tile taken from whole-row loads by two permutes and two 128-bit
//!   shuffles per pair of registers;
//! * 4 tiles a row, AVX2: 2 tile rows of 4 tiles a register (128-bit lane swaps and
//!   in-lane 4 x 4 transposes);
//! * 5 to 8 tiles a row (17 to 32 wide), AVX2 and AVX-512: one tile row of 8 tiles an
//!   AVX2 register, from in-lane 4 x 4 transposes of whole-row loads, tiles 0, 2, 4, 6
//!   in the low 128 bits and 1, 3, 5, 7 in the high (the columns of `V` and `M` follow
//!   that order). These beat AVX-512 registers of 2 tile rows of 8.
//!
//! Elsewhere (other widths, the other levels) the transforms run tile by tile in plain
//! Rust.
//! [`Winograd4Conv::pays`] says where the convolution plan picks it over F(2x2, 3x3).
//!
//! Its filter gradient runs F(4x4, 3x3) too: `dU[ξ] = Σ_tiles (A dY Aᵀ)[ξ] V[ξ]` over
//! the same input tiles `V` and the same register kernel as F(2x2, 3x3)'s, then
//! `dW = Gᵀ dU G` once a step (in `f64`).

use std::mem::MaybeUninit;

use super::{
    add_transformed_gradient, by_lanes, empty_accumulator, gradient_products, grid_filters_last, images_of_forward,
    images_of_gradient, multiply, pack_filters, pad_channel, transform, WinogradConv, NR,
};
use crate::kernel::{check_forward_args, MR};
use crate::{ConvGeometry, ConvKernel, GradientAccumulator, Isa};

/// A stride-1 3x3 convolution's filters transformed for Winograd F(4x4, 3x3), with the
/// geometry they apply to. Build it once per weight update and call
/// [`ConvKernel::forward_image`] for every image, from as many threads as wanted.
#[derive(Debug, Clone)]
pub struct Winograd4Conv {
    g: ConvGeometry,
    isa: Isa,
    filters: usize,
    /// `U = G g Gᵀ` as `[ξ][block][c][MR]`, zeros past `filters`.
    packed: Vec<f32>,
    /// Offsets of the channels' rows in one position of `V` of `n` images (index
    /// `n - 1`): `c n tp`.
    offsets: Vec<Vec<usize>>,
    /// Images the forward pass takes at once: 3 where an image's tiles take 16 columns
    /// (outputs of 13 to 16 on a side: the products' register tiles 48 columns wide),
    /// else 1.
    forward_images: usize,
    /// Tile rows and columns: `ceil(OH/4)`, `ceil(OW/4)`.
    th: usize,
    tw: usize,
    /// The columns of an image's tiles, `th` times `row_slots`, rounded
    /// up to 16 (the row length of `V` and `M`).
    tp: usize,
    /// Rows and row length of a padded input plane: `4 th + 2`, `4 tw + 2`.
    hs: usize,
    ws: usize,
    /// Images the filter gradient takes at once (`WinogradConv::gradient_images_for`
    /// the columns of an image's tiles).
    gradient_images: usize,
}

impl Winograd4Conv {
    /// Whether the convolution plan runs this forward pass instead of F(2x2, 3x3)'s or the
    /// direct kernel's for `filters` filters on `g` at `isa`: 3x3 stride 1, at least 8
    /// input channels and `C * FN >= 256`, on outputs at least 9 high and, at AVX-512, 9
    /// to 32 wide (3 to 8 tiles a row), at AVX2 13 to 32 wide (4 to 8 tiles a row: its
    /// transforms are written for those). There it runs about half F(2x2, 3x3)'s
    /// products, and on DeepConvNet's 28 x 28, 14 x 14 and 16 x 16 layers takes 0.5-0.8x
    /// F(2x2, 3x3)'s time, and about half the direct kernel's at AVX2 on the 28 x 28 one
    /// (16 channels in and out), where F(2x2, 3x3) does not pay (the kernels' F(4x4,
    /// 3x3) table, docs/PERFORMANCE.md).
    pub fn pays(g: &ConvGeometry, filters: usize, isa: Isa) -> bool {
        let widths = match isa {
            Isa::Avx512 => 9..=32,
            Isa::Avx2 => 13..=32,
            _ => return false,
        };
        WinogradConv::applies(g) && g.c >= 8 && g.c * filters >= 256 && widths.contains(&g.out_w) && g.out_h >= 9
    }

    /// Transforms `w` `(filters, C, 3, 3)` (row-major) for the geometry `g` at the
    /// instruction set `isa`. `None` when the geometry is not a 3x3 stride-1 convolution
    /// ([`WinogradConv::applies`]), without filters, or when `isa` cannot run here.
    ///
    /// # Panics
    /// If `w` does not hold `filters * g.col_rows()` values.
    pub fn with_isa(w: &[f32], filters: usize, g: &ConvGeometry, isa: Isa) -> Option<Self> {
        let k = g.col_rows();
        assert_eq!(
            w.len(),
            filters * k,
            "Winograd4Conv: W has {} values, want {filters} x {k}",
            w.len()
        );
        if !WinogradConv::applies(g) || filters == 0 || !isa.runs_here() {
            return None;
        }
        let (c, packed) = (g.c, pack_filters(w, filters, g.c, transform_filters::<MR>));
        let (th, tw) = (g.out_h.div_ceil(4), g.out_w.div_ceil(4));
        let tp = (th * Self::row_slots(isa, tw)).div_ceil(16) * 16;
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
            hs: 4 * th + 2,
            ws: 4 * tw + 2,
            gradient_images: WinogradConv::gradient_images_for(th * Self::row_slots(isa, tw)),
        })
    }

    /// Whether the transforms written for AVX-512 and up to 4 tiles a row run (4 tile
    /// rows a register).
    fn grouped(&self) -> bool {
        self.isa == Isa::Avx512 && self.tw <= 4
    }

    /// Whether the transforms written for AVX2 run: 4 tiles a row (outputs 13 to 16
    /// wide), 2 tile rows a register.
    fn grouped_avx2(&self) -> bool {
        self.isa == Isa::Avx2 && self.tw == 4
    }

    /// Whether the transforms of one tile row of up to 8 tiles an AVX2 register run: 5 to
    /// 8 tiles a row (outputs 17 to 32 wide), at AVX2 and at AVX-512 (where they beat
    /// AVX-512 registers of 2 tile rows: 20.7 against 29.3 µs on DeepConvNet's 28 x 28
    /// layer, docs/PERFORMANCE.md).
    fn by_rows(&self) -> bool {
        Self::by_rows_at(self.isa, self.tw)
    }

    fn by_rows_at(isa: Isa, tw: usize) -> bool {
        matches!(isa, Isa::Avx2 | Isa::Avx512) && (5..=8).contains(&tw)
    }

    /// The columns of `V` and `M` a tile row takes: `tw`, or 8 where the transforms of a
    /// tile row a register run (tile `(i, j)` in column `8 i + j / 2 + 4 (j % 2)`).
    fn row_slots(isa: Isa, tw: usize) -> usize {
        if Self::by_rows_at(isa, tw) {
            8
        } else {
            tw
        }
    }

    fn padded_len(&self) -> usize {
        // one channel's plane (`transform_input` pads each into it in turn); slack: an
        // AVX-512 group of 4 tile rows reads rows up to 4 i0 + 17 (12 past the plane
        // when only one of its tile rows is there), 18 values from each; an AVX2 group
        // of 2 tile rows up to 4 i0 + 9, 18 values from each; a tile row (`by_rows`)
        // 36 values from each of its 6 rows
        self.hs * self.ws + 16 * self.ws + 36
    }

    /// Distance between two positions `ξ` of `V` of `n` images, whose channels' rows
    /// hold the images' tiles one after the other (`n tp` values): `C n tp` plus one
    /// cache line, so that the 36 stores of a group do not all fall in the same cache
    /// set.
    fn v_stride_of(&self, n: usize) -> usize {
        self.g.c * n * self.tp + 16
    }

    /// Distance between two positions of `M` of `n` images (rows `blocks*MR` of `n tp`),
    /// padded as `V`'s.
    fn m_stride_of(&self, n: usize) -> usize {
        self.filters.div_ceil(MR) * MR * n * self.tp + 16
    }

    fn m_len_of(&self, n: usize) -> usize {
        // the grouped output transform loads 16 values from a group's first tile
        36 * self.m_stride_of(n) + 16
    }

    /// Filters rounded up to 16: the lanes of the filter gradient's rows.
    fn fp(&self) -> usize {
        self.filters.div_ceil(16) * 16
    }

    /// The column of an image's part of `V`'s (and `M`'s, `Z`'s) rows that holds tile
    /// `(i, j)`: `i tw + j`, or where the transforms of a tile row a register run,
    /// `8 i + j / 2 + 4 (j % 2)` (`j < 8`: the columns of a row of fewer than 8 tiles
    /// that hold none too).
    fn column(&self, i: usize, j: usize) -> usize {
        if self.by_rows() {
            8 * i + j / 2 + 4 * (j % 2)
        } else {
            i * self.tw + j
        }
    }

    /// `dout` on the tiles' grid `(4 th, 4 tw)`, filters last: `dt[y][x][fp]`.
    fn dt_len(&self) -> usize {
        16 * self.th * self.tw * self.fp()
    }

    /// Distance between two positions of `Z` of `n` images (`n tp` rows of `fp`), padded
    /// as `V`'s.
    fn z_stride_of(&self, n: usize) -> usize {
        n * self.tp * self.fp() + 16
    }

    /// The groups of the AVX-512 transforms: `(i0, mask)`, the first tile row and the
    /// lanes that hold tiles (lane `4 ii + j` is tile `(i0 + ii, j)`; the selected tiles
    /// are `i0 tw` onwards, in order).
    fn groups(&self) -> impl Iterator<Item = (usize, u16)> + '_ {
        let row = (1u16 << self.tw) - 1;
        (0..self.th).step_by(4).map(move |i0| {
            let mask = (0..(self.th - i0).min(4)).fold(0u16, |m, ii| m | (row << (4 * ii)));
            (i0, mask)
        })
    }

    /// `V[ξ][c][t] = (Bᵀ d B)[ξ]` for every channel and tile, `d` the 6x6 patches of
    /// `x` padded with zeros. Each channel's plane is first copied into `padded` (zeros
    /// around it, at row and column `pad`); the slack after it keeps what it held: the
    /// transforms read it only into lanes or tiles they drop. The padding lanes
    /// `t >= tiles` of `V` keep what they held: `M`'s columns there are never read, and
    /// the filter gradient's `Z` has zeros in those it reads.
    ///
    /// `x` holds `n` images one after the other; in `V` (`v_stride_of(n)` a position)
    /// each channel's row holds their tiles in that order, image `i`'s from column
    /// `i tp`, channels in the outer loop and images in the inner.
    // outside x86-64 the branches of the AVX2 and AVX-512 transforms are unreachable
    // (`with_isa` takes those levels only where they run)
    #[cfg_attr(not(target_arch = "x86_64"), allow(clippy::never_loop))]
    fn transform_input(&self, x: &[f32], padded: &mut [f32], v: &mut [f32]) {
        let g = &self.g;
        let plane = g.h * g.w;
        let n = x.len() / (g.c * plane).max(1);
        let (row, pos) = (n * self.tp, self.v_stride_of(n));
        assert!(n > 0 && x.len() == n * g.c * plane && padded.len() >= self.padded_len() && v.len() >= 36 * pos);
        let (image_len, plane_i) = (g.c * plane, plane as isize);
        for (ci, image) in (0..g.c).flat_map(|ci| (0..n).map(move |image| (ci, image))) {
            let src = &x[image * image_len + ci * plane..][..plane];
            // the next image's plane of this channel, or after the last image the first
            // image's of the next channel
            let next = match image + 1 < n {
                true => image_len as isize,
                false => plane_i - ((n - 1) * image_len) as isize,
            };
            // (`pad + H <= hs` and `pad + W <= ws`: `4 th >= OH = H + 2 pad - 2`, and the
            // same for the width)
            pad_channel(self.isa, g, (src, next), padded, (self.hs, self.ws));
            let padded = &*padded;
            // the image's part of channel `ci`'s row: `tp` columns from `col`
            let col = ci * row + image * self.tp;
            if self.grouped() {
                for (i0, mask) in self.groups() {
                    let first = 4 * i0 * self.ws;
                    debug_assert!(first + 17 * self.ws + 18 <= padded.len());
                    // SAFETY: `grouped` means the CPU has AVX-512 (`with_isa` checked
                    // `isa`) and `tw <= 4`. The group reads rows `4 ii + r` (`ii < 4`,
                    // `r < 6`) of 18 values from `first`, within `padded_len`'s slack; it
                    // writes `popcount(mask)` values from tile `i0 tw` (all tiles
                    // `< tiles <= tp`) of channel `ci`'s row for the image (`tp` values
                    // from `col`) of each of the 36 positions (`pos` apart).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let src = padded.as_ptr().add(first);
                        let dst = v.as_mut_ptr().add(col + i0 * self.tw);
                        avx512::input_group(src, self.ws, dst, pos, mask);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("AVX-512 outside x86-64: {i0} {mask}");
                }
            } else if self.grouped_avx2() {
                for i0 in (0..self.th).step_by(2) {
                    let first = 4 * i0 * self.ws;
                    debug_assert!(first + 9 * self.ws + 18 <= padded.len());
                    // SAFETY: `grouped_avx2` means the CPU has AVX2 and FMA and `tw = 4`
                    // (`ws = 18`). The group reads rows `4 ii + r` (`ii < 2`, `r < 6`) of
                    // 18 values from `first`, within `padded_len`'s slack; it writes the
                    // tiles of `min(2, th - i0)` tile rows, 4 each from tile `4 i0`, of
                    // channel `ci`'s row for the image of each of the 36 positions.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let src = padded.as_ptr().add(first);
                        let dst = v.as_mut_ptr().add(col + i0 * self.tw);
                        avx2::input_group(src, self.ws, dst, pos, (self.th - i0).min(2));
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("AVX2 outside x86-64: {i0}");
                }
            } else if self.by_rows() {
                for i in 0..self.th {
                    let first = 4 * i * self.ws;
                    debug_assert!(first + 5 * self.ws + 36 <= padded.len());
                    // SAFETY: `by_rows` means the CPU has AVX2 and FMA (AVX2 or AVX-512,
                    // which `with_isa` checked) and `tw` is 5 to 8. The row reads rows
                    // `4 i + r` (`r < 6`) of 36 values from `first`, within
                    // `padded_len`'s slack; it writes 8 values from column `8 i`
                    // (`8 (i + 1) <= 8 th <= tp`) of channel `ci`'s row for the image
                    // (`tp` values from `col`) of each of the 36 positions.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let src = padded.as_ptr().add(first);
                        let dst = v.as_mut_ptr().add(col + 8 * i);
                        avx2::input_row8(src, self.ws, dst, pos);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("AVX2 outside x86-64: {first}");
                }
            } else {
                let p = &padded[..self.hs * self.ws];
                for i in 0..self.th {
                    for j in 0..self.tw {
                        let d: [[f32; 6]; 6] =
                            std::array::from_fn(|r| std::array::from_fn(|k| p[(4 * i + r) * self.ws + 4 * j + k]));
                        let t = col + i * self.tw + j;
                        for (xi, val) in input_tile(&d).into_iter().enumerate() {
                            v[xi * pos + t] = val;
                        }
                    }
                }
            }
        }
    }

    /// `out[f] = Aᵀ M A + b[f]` tile by tile, dropping the outputs past `OH` and `OW`,
    /// for the image `image` of the `n` whose tiles `M` holds (its tiles from column
    /// `image tp` of each filter's row).
    // outside x86-64 the branches of the AVX2 and AVX-512 transforms are unreachable
    // (`with_isa` takes those levels only where they run)
    #[cfg_attr(not(target_arch = "x86_64"), allow(clippy::never_loop))]
    fn transform_output(
        &self,
        m: &[f32],
        (n, image): (usize, usize),
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (oh, ow, pos) = (self.g.out_h, self.g.out_w, self.m_stride_of(n));
        assert!(image < n && m.len() >= self.m_len_of(n) && out.len() >= self.filters * oh * ow);
        for f in 0..self.filters {
            let b = bias.map_or(0.0, |b| b[f]);
            let of = &mut out[f * oh * ow..(f + 1) * oh * ow];
            // filter `f`'s columns of the image
            let fc = f * n * self.tp + image * self.tp;
            if self.grouped() {
                for (i0, mask) in self.groups() {
                    let first = fc + i0 * self.tw;
                    debug_assert!(first + 35 * pos + 16 <= m.len());
                    // SAFETY: `grouped` means the CPU has AVX-512 and `tw <= 4`. Reads 16
                    // values from `first` at each of the 36 positions: at most 15 past
                    // the last tile of the last filter's row, which `m_len`'s slack
                    // covers. Writes `OW` values of the output rows `4 i0 + k < OH` of
                    // plane `f` (`OW <= 4 tw <= 16`, the lanes of a row's tiles).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let (src, dst) = (m.as_ptr().add(first), of.as_mut_ptr().cast::<f32>().add(4 * i0 * ow));
                        avx512::output_group(src, pos, mask, b, dst, ow, oh - 4 * i0);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("AVX-512 outside x86-64: {i0} {mask} {b}");
                }
            } else if self.grouped_avx2() {
                for i0 in (0..self.th).step_by(2) {
                    let first = fc + i0 * self.tw;
                    debug_assert!(first + 35 * pos + 8 <= m.len());
                    // SAFETY: `grouped_avx2` means the CPU has AVX2 and FMA and `tw = 4`.
                    // Reads 8 values from `first` at each of the 36 positions (past the
                    // last tile only into `m_len`'s slack); writes `OW <= 16` values of
                    // the output rows `4 i0 + k < OH` of plane `f`.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let (src, dst) = (m.as_ptr().add(first), of.as_mut_ptr().cast::<f32>().add(4 * i0 * ow));
                        avx2::output_group(src, pos, b, dst, ow, oh - 4 * i0);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("AVX2 outside x86-64: {i0} {b}");
                }
            } else if self.by_rows() {
                for i in 0..self.th {
                    let first = fc + 8 * i;
                    debug_assert!(first + 35 * pos + 8 <= m.len());
                    // SAFETY: `by_rows` means the CPU has AVX2 and FMA and `tw` is 5 to 8
                    // (`OW <= 32`). Reads 8 values from `first` (within filter `f`'s
                    // row: `8 (i + 1) <= tp`) at each of the 36 positions; writes `OW`
                    // values of the output rows `4 i + a < OH` of plane `f`.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let (src, dst) = (m.as_ptr().add(first), of.as_mut_ptr().cast::<f32>().add(4 * i * ow));
                        avx2::output_row8(src, pos, b, dst, ow, oh - 4 * i);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("AVX2 outside x86-64: {first} {b}");
                }
            } else {
                for i in 0..self.th {
                    for j in 0..self.tw {
                        let t = fc + i * self.tw + j;
                        let y = output_tile(&std::array::from_fn(|xi| m[xi * pos + t]));
                        for (a, ya) in y.iter().enumerate().take(oh - 4 * i) {
                            let row = &mut of[(4 * i + a) * ow + 4 * j..];
                            for (o, &val) in row.iter_mut().zip(ya).take(ow - 4 * j) {
                                o.write(val + b);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl ConvKernel for Winograd4Conv {
    fn geometry(&self) -> &ConvGeometry {
        &self.g
    }

    fn name(&self) -> &'static str {
        "winograd-f4"
    }

    fn isa(&self) -> Isa {
        self.isa
    }

    fn scratch_len(&self) -> usize {
        let n = self.forward_images;
        self.padded_len() + 36 * self.v_stride_of(n) + self.m_len_of(n)
    }

    fn forward_image_uninit(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [MaybeUninit<f32>], scratch: &mut [f32]) {
        check_forward_args(
            "Winograd4Conv",
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
    /// `out` their outputs, `1 <= n <=` [`ConvKernel::images_per_forward`]): their tiles
    /// go side by side through one product per position (on outputs of 13 to 16 on a
    /// side, 16 columns an image, three images fill the products' register tiles). Each
    /// output is the one image by image gives, bit for bit.
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
            ("Winograd4Conv", &self.g, self.filters, self.forward_images),
            (x, bias, out.len()),
            scratch_ok,
        );
        let (v_stride, m_stride) = (self.v_stride_of(n), self.m_stride_of(n));
        let (padded, rest) = scratch.split_at_mut(self.padded_len());
        let (v, rest) = rest.split_at_mut(36 * v_stride);
        let m = &mut rest[..self.m_len_of(n)];
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

    /// Values of scratch space [`Winograd4Conv::weight_gradient_images`] needs (for
    /// [`ConvKernel::images_per_gradient`] images).
    fn gradient_scratch_len(&self) -> usize {
        let n = self.gradient_images;
        self.padded_len() + 36 * self.v_stride_of(n) + self.dt_len() + 36 * self.z_stride_of(n)
    }

    /// An accumulator for [`Winograd4Conv::weight_gradient_image`] with no image in: its
    /// 36 positions' sums are allocated and stored by the first image's products.
    fn gradient_accumulator(&self) -> GradientAccumulator {
        empty_accumulator(&self.g, self.filters, self.fp(), 36)
    }

    /// The filter gradient of one image, **added** to `acc`:
    /// [`Winograd4Conv::weight_gradient_images`] of one image.
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
    /// [`ConvKernel::images_per_gradient`]), **added** to `acc`: `dW += dout · col(x)^T`,
    /// `db += ` row sums of `dout`.
    ///
    /// As F(2x2, 3x3)'s ([`WinogradConv`]), by F(4x4, 3x3): the gradient of the
    /// transformed filters is `dU[ξ] = Σ_tiles Z[ξ] V[ξ]` over the 36 positions, with
    /// `Z = A dY Aᵀ` (the 4x4 output-gradient tile `dY` taken back to 6x6) and `V` the
    /// forward pass's input tiles; `dW = Gᵀ dU G` once in [`ConvKernel::add_gradient`].
    /// 2.25 multiply-adds a filter tap per output instead of 4. The columns of rows of
    /// fewer than 8 tiles that the tile-row transforms leave empty get zeros in `Z`.
    /// `scratch` (at least [`Winograd4Conv::gradient_scratch_len`] values) needs no
    /// clearing.
    ///
    /// # Panics
    /// If a slice length does not match the geometry, there are more images than
    /// [`ConvKernel::images_per_gradient`], or `acc` is another layer's.
    fn weight_gradient_images(&self, x: &[f32], dout: &[f32], acc: &mut GradientAccumulator, scratch: &mut [f32]) {
        let g = &self.g;
        let (c, fp, tp) = (g.c, self.fp(), self.tp);
        let scratch_ok = scratch.len() >= self.gradient_scratch_len();
        let (n, out_len) = images_of_gradient(
            ("Winograd4Conv", g, self.filters, self.gradient_images),
            (x, dout, acc, 36),
            scratch_ok,
        );
        let (v_stride, z_stride) = (self.v_stride_of(n), self.z_stride_of(n));
        let (padded, rest) = scratch.split_at_mut(self.padded_len());
        // the tile-row transforms read the slack after the plane into the columns of a
        // row of fewer than 8 tiles that hold no tile, whose `Z` rows are zeros: zeros
        // there keep those products zeros, whatever the scratch held
        padded[self.hs * self.ws..].fill(0.0);
        let (v, rest) = rest.split_at_mut(36 * v_stride);
        let (dt, rest) = rest.split_at_mut(self.dt_len());
        let z = &mut rest[..36 * z_stride];
        self.transform_input(x, padded, v);
        let (gw, slots) = (4 * self.tw, Self::row_slots(self.isa, self.tw));
        for (image, dout) in dout.chunks_exact(out_len).enumerate() {
            grid_filters_last(self.isa, dout, (g.out_h, g.out_w), (4 * self.th, gw), dt, &mut acc.db);
            for i in 0..self.th {
                for j in self.tw..slots {
                    let row = (image * tp + self.column(i, j)) * fp;
                    // 16 lanes at a time (`fp` is a multiple of 16): whole-register
                    // stores, not a `memset` call per row
                    for zx in z.chunks_mut(z_stride) {
                        for lanes in zx[row..row + fp].chunks_exact_mut(16) {
                            lanes.copy_from_slice(&[0.0; 16]);
                        }
                    }
                }
                for j in 0..self.tw {
                    for f0 in (0..fp).step_by(16) {
                        // SAFETY: `self.isa` runs here, as in `transform_input`. Reads 16
                        // values at grid positions (4i + a, 4j + b), `a, b < 4`, inside
                        // the `4 th x 4 tw` grid of `dt`, from lane `f0 + 16 <= fp`;
                        // writes 16 values at row `image tp + column(i, j) < n tp` of
                        // each of the 36 positions of `z` (`z_stride` apart).
                        unsafe {
                            let src = dt.as_ptr().add((4 * i * gw + 4 * j) * fp + f0);
                            let dst = z.as_mut_ptr().add((image * tp + self.column(i, j)) * fp + f0);
                            transform::output_gradient_tile4(self.isa, src, gw * fp, fp, dst, z_stride);
                        }
                    }
                }
            }
        }
        // with more than one image, the columns fill their rows (`gradient_images_for`),
        // so the images' tiles follow one another
        let columns = self.th * slots;
        debug_assert!(n == 1 || columns == tp);
        gradient_products(
            self.isa,
            (v, v_stride),
            (z, z_stride),
            (c, n * tp),
            (n - 1) * tp + columns,
            acc,
        );
    }

    fn add_gradient(&self, acc: &GradientAccumulator, dw: &mut [f32], db: &mut [f32]) {
        add_transformed_gradient("Winograd4Conv", self.filters, acc, (dw, db), transform_filter_gradient);
    }
}

/// `Gᵀ dU G` for one filter's 36 transformed-gradient values (`ξ = 6 row + col`): the
/// gradient of the 3x3 filter, row-major. In `f64` (it runs once a step, and `G`'s
/// sixths and twenty-fourths weigh sums that largely cancel).
fn transform_filter_gradient(du: &[f32; 36]) -> [f32; 9] {
    // Gᵀ applied to the six values of a column (or G to a row)
    let gt = |u: [f64; 6]| {
        let (s12, d21, s34, d34) = (u[1] + u[2], u[2] - u[1], u[3] + u[4], u[3] - u[4]);
        [
            u[0] / 4.0 - s12 / 6.0 + s34 / 24.0,
            d21 / 6.0 + d34 / 12.0,
            (s34 - s12) / 6.0 + u[5],
        ]
    };
    // Gᵀ dU: 3 x 6, column by column; then each of its rows times G
    let cols: [[f64; 3]; 6] = std::array::from_fn(|col| gt(std::array::from_fn(|row| f64::from(du[6 * row + col]))));
    let mut g = [0.0f32; 9];
    for (p, out) in g.chunks_exact_mut(3).enumerate() {
        for (o, v) in out.iter_mut().zip(gt(std::array::from_fn(|col| cols[col][p]))) {
            *o = v as f32;
        }
    }
    g
}

/// `U = G g Gᵀ` for `L` 3x3 filters side by side (`g[tap][lane]`, taps row-major), as
/// 36 positions `ξ = 6 row + col` of `L` lanes.
fn transform_filters<const L: usize>(g: &[[f32; L]; 9]) -> [[f32; L]; 36] {
    // G applied to the three values of a column (or Gᵀ's to a row)
    let gv = |a: f32, b: f32, c: f32| {
        let (ac, b6) = ((a + c) / 6.0, b / 6.0);
        let (q, h) = (a / 24.0 + c / 6.0, b / 12.0);
        [a / 4.0, -(ac + b6), b6 - ac, q + h, q - h, c]
    };
    // G g: 6 x 3, column by column; then each of its rows times Gᵀ
    let cols: [[[f32; L]; 6]; 3] = std::array::from_fn(|c| by_lanes((&g[c], &g[3 + c], &g[6 + c]), gv));
    let mut u = [[0.0f32; L]; 36];
    for (row, out) in u.chunks_exact_mut(6).enumerate() {
        out.copy_from_slice(&by_lanes((&cols[0][row], &cols[1][row], &cols[2][row]), gv));
    }
    u
}

/// `U = G g Gᵀ` for one 3x3 filter `g` (row-major), as 36 values `ξ = 6 row + col`.
#[cfg(test)]
fn transform_filter(g: &[f32; 9]) -> [f32; 36] {
    transform_filters::<1>(&g.map(|v| [v])).map(|[v]| v)
}

/// `Bᵀ d` for the six values of a tile column (or `d B` for a row).
fn bt(d: [f32; 6]) -> [f32; 6] {
    let [d0, d1, d2, d3, d4, d5] = d;
    [
        4.0 * d0 - 5.0 * d2 + d4,
        (d3 + d4) - 4.0 * (d1 + d2),
        4.0 * (d1 - d2) + (d4 - d3),
        2.0 * (d3 - d1) + (d4 - d2),
        2.0 * (d1 - d3) + (d4 - d2),
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `Aᵀ m` for the six values of a transformed tile column (or `m A` for a row).
fn at(m: [f32; 6]) -> [f32; 4] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [m0 + s12 + s34, d12 + 2.0 * d34, s12 + 4.0 * s34, d12 + 8.0 * d34 + m5]
}

/// `Bᵀ d B` of one 6x6 tile `d[row][col]`, as 36 values `ξ = 6 row + col`.
fn input_tile(d: &[[f32; 6]; 6]) -> [f32; 36] {
    // d B, row by row; then Bᵀ, column by column
    let rows = d.map(bt);
    let mut v = [0.0f32; 36];
    for col in 0..6 {
        for (row, val) in bt(rows.map(|r| r[col])).into_iter().enumerate() {
            v[6 * row + col] = val;
        }
    }
    v
}

/// `Aᵀ m A` of one transformed tile (`ξ = 6 row + col`): the 4x4 output tile.
fn output_tile(m: &[f32; 36]) -> [[f32; 4]; 4] {
    // Aᵀ m, column by column; then A, row by row
    let cols: [[f32; 4]; 6] = std::array::from_fn(|col| at(std::array::from_fn(|row| m[6 * row + col])));
    std::array::from_fn(|a| at(cols.map(|c| c[a])))
}

/// The transforms of 4 tile rows of up to 4 tiles at a time, one register per value of
/// a tile: lane `4 ii + j` is tile `j` of tile row `ii`.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::avx512::prefix;

    /// Vector [`super::bt`].
    #[inline(always)]
    fn bt(d: [__m512; 6]) -> [__m512; 6] {
        // SAFETY: register arithmetic; only reached from the AVX-512F functions below.
        unsafe {
            let [d0, d1, d2, d3, d4, d5] = d;
            let (four, five, two) = (_mm512_set1_ps(4.0), _mm512_set1_ps(5.0), _mm512_set1_ps(2.0));
            let (s12, s34, d12, d43) = (
                _mm512_add_ps(d1, d2),
                _mm512_add_ps(d3, d4),
                _mm512_sub_ps(d1, d2),
                _mm512_sub_ps(d4, d3),
            );
            let (d31, d42) = (_mm512_sub_ps(d3, d1), _mm512_sub_ps(d4, d2));
            [
                _mm512_fmadd_ps(four, d0, _mm512_fnmadd_ps(five, d2, d4)),
                _mm512_fnmadd_ps(four, s12, s34),
                _mm512_fmadd_ps(four, d12, d43),
                _mm512_fmadd_ps(two, d31, d42),
                _mm512_fnmadd_ps(two, d31, d42),
                _mm512_fmadd_ps(four, d1, _mm512_fnmadd_ps(five, d3, d5)),
            ]
        }
    }

    /// Vector [`super::at`].
    #[inline(always)]
    fn at(m: [__m512; 6]) -> [__m512; 4] {
        // SAFETY: register arithmetic; only reached from the AVX-512F functions below.
        unsafe {
            let [m0, m1, m2, m3, m4, m5] = m;
            let (s12, d12, s34, d34) = (
                _mm512_add_ps(m1, m2),
                _mm512_sub_ps(m1, m2),
                _mm512_add_ps(m3, m4),
                _mm512_sub_ps(m3, m4),
            );
            [
                _mm512_add_ps(_mm512_add_ps(m0, s12), s34),
                _mm512_fmadd_ps(_mm512_set1_ps(2.0), d34, d12),
                _mm512_fmadd_ps(_mm512_set1_ps(4.0), s34, s12),
                _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), d34, d12), m5),
            ]
        }
    }

    /// Two values of every tile from four registers of tile rows' values: lane
    /// `4 ii + j` of the first is value `4 j + k` of tile row `ii`, of the second value
    /// `4 j + k + 1`, for the `k` that `idx` selects (`IDX01` or `IDX23`); `s[ii]` holds
    /// 16 values of tile row `ii`.
    #[inline(always)]
    fn pair(s: &[__m512; 4], idx: __m512i) -> (__m512, __m512) {
        // SAFETY: register shuffles; only reached from the AVX-512F functions below.
        unsafe {
            // lanes 0-7 from s[0] and s[1] (value k of 4 + 4 tiles), lanes 8-15
            // value k + 1; the same from s[2] and s[3]
            let lo = _mm512_permutex2var_ps(s[0], idx, s[1]);
            let hi = _mm512_permutex2var_ps(s[2], idx, s[3]);
            // 128-bit lanes 0, 1 of each, then 2, 3 of each
            (
                _mm512_shuffle_f32x4::<0x44>(lo, hi),
                _mm512_shuffle_f32x4::<0xee>(lo, hi),
            )
        }
    }

    /// The permutes of [`pair`] for `k = 0` and for `k = 2`: value `4 j + k` of 8 tiles
    /// in two registers (lanes 0-7), then `4 j + k + 1` (lanes 8-15).
    const IDX01: [i32; 16] = [0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29];
    const IDX23: [i32; 16] = [2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31];

    /// The input transform of up to 16 tiles: 4 tile rows of 4 tiles from `src` (the
    /// top-left value of the first tile; image rows `ws` apart, tile rows `4 ws`).
    /// `Bᵀ d B` position `ξ` of the tiles selected by `mask` (lane `4 ii + j`) is stored,
    /// packed in lane order, as `popcount(mask)` values at `dst + ξ pos`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `src` is valid for reads of 18 values from each of the rows
    /// `k ws`, `k < 18`; `dst` for writes of `popcount(mask)` values at each of 36 rows
    /// `pos` apart.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn input_group(src: *const f32, ws: usize, dst: *mut f32, pos: usize, mask: u16) {
        // SAFETY (both): reads of two constant arrays of 16 values.
        let idx01 = unsafe { _mm512_loadu_si512(IDX01.as_ptr().cast()) };
        let idx23 = unsafe { _mm512_loadu_si512(IDX23.as_ptr().cast()) };
        // (d B)[r][c] of every tile, row by row, built in place
        let t: [[__m512; 6]; 6] = std::array::from_fn(|r| {
            // SAFETY: row `4 ii + r < 18`, columns 0-15 and 2-17: within the contract.
            let (a, b) = unsafe {
                let row = |ii: usize| src.add((4 * ii + r) * ws);
                (
                    [0, 1, 2, 3].map(|ii| _mm512_loadu_ps(row(ii))),
                    [0, 1, 2, 3].map(|ii| _mm512_loadu_ps(row(ii).add(2))),
                )
            };
            // columns 4j + k: k = 0, 1 and 2, 3 from the first loads, 4, 5 (2, 3 of the
            // loads from column 2) from the second
            let ((d0, d1), (d2, d3), (d4, d5)) = (pair(&a, idx01), pair(&a, idx23), pair(&b, idx23));
            bt([d0, d1, d2, d3, d4, d5])
        });
        let count = mask.count_ones() as usize;
        let gaps = prefix(count) != mask;
        // indexed by column, not `t.map(..)`: that copies all 36 registers through memory
        #[allow(clippy::needless_range_loop)]
        for col in 0..6 {
            for (row, v) in bt(std::array::from_fn(|r| t[r][col])).into_iter().enumerate() {
                let v = if gaps { _mm512_maskz_compress_ps(mask, v) } else { v };
                // SAFETY: position `6 row + col < 36`, `count` values, within the contract.
                unsafe { _mm512_mask_storeu_ps(dst.add((6 * row + col) * pos), prefix(count), v) };
            }
        }
    }

    /// The output transform of up to 16 tiles laid out as in [`input_group`]: `Aᵀ m A +
    /// b`, with `m[ξ]` of the tiles selected by `mask` packed at `src + ξ pos`. Writes,
    /// for tile row `ii` and output row `a < 4` with `4 ii + a < rows`, the first `ow`
    /// values of output row `4 ii + a` to `dst + (4 ii + a) ow`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `ow <= 16`; `src` is valid for reads of 16 values at each of
    /// 36 rows `pos` apart; `dst + (4 ii + a) ow` for writes of `ow` values for each
    /// written row.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn output_group(src: *const f32, pos: usize, mask: u16, b: f32, dst: *mut f32, ow: usize, rows: usize) {
        let gaps = prefix(mask.count_ones() as usize) != mask;
        let load = |xi: usize| {
            // SAFETY: position `xi < 36`, within the contract.
            let v = unsafe { _mm512_loadu_ps(src.add(xi * pos)) };
            if gaps {
                _mm512_maskz_expand_ps(mask, v)
            } else {
                v
            }
        };
        // (Aᵀ m)[a][c], column by column
        let cols: [[__m512; 4]; 6] = std::array::from_fn(|c| at(std::array::from_fn(|row| load(6 * row + c))));
        let s: [[__m512; 6]; 4] = std::array::from_fn(|a| cols.map(|col| col[a]));
        let bias = _mm512_set1_ps(b);
        for (a, sa) in s.into_iter().enumerate() {
            let [y0, y1, y2, y3] = at(sa).map(|y| _mm512_add_ps(y, bias));
            // y_b lane l ii + j is output (4 ii + a, 4 j + b): transpose each 128-bit
            // lane's 4 x 4 (u_q: 128-bit lane p holds the 4 values of the register's
            // tile 4 p + q), then the 4 x 4 of 128-bit lanes (out[p]: the 16 values of
            // tiles 4 p to 4 p + 3, lanes p of u_0..u_3)
            let (t0, t1) = (_mm512_unpacklo_ps(y0, y1), _mm512_unpackhi_ps(y0, y1));
            let (t2, t3) = (_mm512_unpacklo_ps(y2, y3), _mm512_unpackhi_ps(y2, y3));
            let pd = _mm512_castps_pd;
            let ps = _mm512_castpd_ps;
            let u0 = ps(_mm512_unpacklo_pd(pd(t0), pd(t2)));
            let u1 = ps(_mm512_unpackhi_pd(pd(t0), pd(t2)));
            let u2 = ps(_mm512_unpacklo_pd(pd(t1), pd(t3)));
            let u3 = ps(_mm512_unpackhi_pd(pd(t1), pd(t3)));
            let (v0, v1) = (
                _mm512_shuffle_f32x4::<0x44>(u0, u1),
                _mm512_shuffle_f32x4::<0xee>(u0, u1),
            );
            let (v2, v3) = (
                _mm512_shuffle_f32x4::<0x44>(u2, u3),
                _mm512_shuffle_f32x4::<0xee>(u2, u3),
            );
            let out = [
                _mm512_shuffle_f32x4::<0x88>(v0, v2),
                _mm512_shuffle_f32x4::<0xdd>(v0, v2),
                _mm512_shuffle_f32x4::<0x88>(v1, v3),
                _mm512_shuffle_f32x4::<0xdd>(v1, v3),
            ];
            // out[p]: the 16 values of tile row p's output row a
            for (p, v) in out.into_iter().enumerate() {
                let row = 4 * p + a;
                if row < rows {
                    // SAFETY: `ow <= 16` values of a row `< rows`, within the contract.
                    unsafe { _mm512_mask_storeu_ps(dst.add(row * ow), prefix(ow), v) };
                }
            }
        }
    }
}

/// The transforms of 2 tile rows of 4 tiles at a time, one AVX2 register per value of a
/// tile: lane `4 ii + j` is tile `j` of tile row `ii`.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Vector [`super::bt`].
    #[inline(always)]
    fn bt(d: [__m256; 6]) -> [__m256; 6] {
        // SAFETY: register arithmetic; only reached from the AVX2 + FMA functions below.
        unsafe {
            let [d0, d1, d2, d3, d4, d5] = d;
            let (four, five, two) = (_mm256_set1_ps(4.0), _mm256_set1_ps(5.0), _mm256_set1_ps(2.0));
            let (s12, s34, d12, d43) = (
                _mm256_add_ps(d1, d2),
                _mm256_add_ps(d3, d4),
                _mm256_sub_ps(d1, d2),
                _mm256_sub_ps(d4, d3),
            );
            let (d31, d42) = (_mm256_sub_ps(d3, d1), _mm256_sub_ps(d4, d2));
            [
                _mm256_fmadd_ps(four, d0, _mm256_fnmadd_ps(five, d2, d4)),
                _mm256_fnmadd_ps(four, s12, s34),
                _mm256_fmadd_ps(four, d12, d43),
                _mm256_fmadd_ps(two, d31, d42),
                _mm256_fnmadd_ps(two, d31, d42),
                _mm256_fmadd_ps(four, d1, _mm256_fnmadd_ps(five, d3, d5)),
            ]
        }
    }

    /// Vector [`super::at`].
    #[inline(always)]
    fn at(m: [__m256; 6]) -> [__m256; 4] {
        // SAFETY: register arithmetic; only reached from the AVX2 + FMA functions below.
        unsafe {
            let [m0, m1, m2, m3, m4, m5] = m;
            let (s12, d12, s34, d34) = (
                _mm256_add_ps(m1, m2),
                _mm256_sub_ps(m1, m2),
                _mm256_add_ps(m3, m4),
                _mm256_sub_ps(m3, m4),
            );
            [
                _mm256_add_ps(_mm256_add_ps(m0, s12), s34),
                _mm256_fmadd_ps(_mm256_set1_ps(2.0), d34, d12),
                _mm256_fmadd_ps(_mm256_set1_ps(4.0), s34, s12),
                _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0), d34, d12), m5),
            ]
        }
    }

    /// The 4 x 4 transpose within each 128-bit lane: value `k` of lane `p` of the result
    /// `q` is value `q` of lane `p` of `x[k]`.
    #[inline(always)]
    fn transpose4(x: [__m256; 4]) -> [__m256; 4] {
        // SAFETY: register shuffles; only reached from the AVX2 + FMA functions below.
        unsafe {
            let (t0, t1) = (_mm256_unpacklo_ps(x[0], x[1]), _mm256_unpackhi_ps(x[0], x[1]));
            let (t2, t3) = (_mm256_unpacklo_ps(x[2], x[3]), _mm256_unpackhi_ps(x[2], x[3]));
            let (pd, ps) = (_mm256_castps_pd, _mm256_castpd_ps);
            [
                ps(_mm256_unpacklo_pd(pd(t0), pd(t2))),
                ps(_mm256_unpackhi_pd(pd(t0), pd(t2))),
                ps(_mm256_unpacklo_pd(pd(t1), pd(t3))),
                ps(_mm256_unpackhi_pd(pd(t1), pd(t3))),
            ]
        }
    }

    /// The first `n` values of `v` to `dst` (all 8 for `n >= 8`, none for `n == 0`).
    ///
    /// # Safety
    /// The CPU has AVX2; `dst` is valid for writes of `min(n, 8)` values.
    #[inline(always)]
    unsafe fn store_first(dst: *mut f32, n: usize, v: __m256) {
        // SAFETY: within the contract; the masked store writes the lanes below `n` only.
        unsafe {
            if n >= 8 {
                _mm256_storeu_ps(dst, v);
            } else {
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
                _mm256_maskstore_ps(dst, mask, v);
            }
        }
    }

    /// The input transform of 2 tile rows of 4 tiles from `src` (the top-left value of
    /// the first tile; image rows `ws` apart, tile rows `4 ws`): `Bᵀ d B` position `ξ` of
    /// the tiles of the first `rows` tile rows (1 or 2) is stored as `4 rows` values at
    /// `dst + ξ pos`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `src` is valid for reads of 18 values from each of the
    /// rows `k ws`, `k < 10`; `dst` for writes of `4 rows` values at each of 36 rows
    /// `pos` apart.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn input_group(src: *const f32, ws: usize, dst: *mut f32, pos: usize, rows: usize) {
        // built in place, not zeroed and then overwritten (a `memset` of 36 registers)
        let t: [[__m256; 6]; 6] = std::array::from_fn(|r| {
            // values c0 + 4 j + k, k < 4, of the two tile rows: tile j's four values of
            // each tile row in one 128-bit lane (`x[j]`), transposed
            let quad = |c0: usize| {
                // SAFETY: rows `4 ii + r < 10`, columns `c0` to `c0 + 15 <= 17`, within
                // the contract.
                let x = unsafe {
                    let row = |ii: usize| src.add((4 * ii + r) * ws + c0);
                    let (a0, a1) = (_mm256_loadu_ps(row(0)), _mm256_loadu_ps(row(0).add(8)));
                    let (b0, b1) = (_mm256_loadu_ps(row(1)), _mm256_loadu_ps(row(1).add(8)));
                    [
                        _mm256_permute2f128_ps::<0x20>(a0, b0),
                        _mm256_permute2f128_ps::<0x31>(a0, b0),
                        _mm256_permute2f128_ps::<0x20>(a1, b1),
                        _mm256_permute2f128_ps::<0x31>(a1, b1),
                    ]
                };
                transpose4(x)
            };
            let [d0, d1, d2, d3] = quad(0);
            let [_, _, d4, d5] = quad(2);
            bt([d0, d1, d2, d3, d4, d5])
        });
        // indexed by column, not `t.map(..)` or a transposed copy: those go through memory
        #[allow(clippy::needless_range_loop)]
        for col in 0..6 {
            for (row, v) in bt(std::array::from_fn(|r| t[r][col])).into_iter().enumerate() {
                // SAFETY: position `6 row + col < 36`, `4 rows` values, within the contract.
                unsafe { store_first(dst.add((6 * row + col) * pos), 4 * rows, v) };
            }
        }
    }

    /// The output transform of 2 tile rows of 4 tiles laid out as in [`input_group`]:
    /// `Aᵀ m A + b`, with `m[ξ]` of the tiles at `src + ξ pos`. Writes, for tile row
    /// `ii < 2` and output row `a < 4` with `4 ii + a < rows`, the first `ow` values of
    /// output row `4 ii + a` to `dst + (4 ii + a) ow`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `ow <= 16`; `src` is valid for reads of 8 values at each
    /// of 36 rows `pos` apart; `dst + (4 ii + a) ow` for writes of `ow` values for each
    /// written row.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn output_group(src: *const f32, pos: usize, b: f32, dst: *mut f32, ow: usize, rows: usize) {
        // SAFETY: position `xi < 36`, within the contract.
        let load = |xi: usize| unsafe { _mm256_loadu_ps(src.add(xi * pos)) };
        // (Aᵀ m)[a][c], column by column
        let cols: [[__m256; 4]; 6] = std::array::from_fn(|c| at(std::array::from_fn(|row| load(6 * row + c))));
        let s: [[__m256; 6]; 4] = std::array::from_fn(|a| cols.map(|col| col[a]));
        let bias = _mm256_set1_ps(b);
        for (a, sa) in s.into_iter().enumerate() {
            // u[j]: lane ii holds tile (ii, j)'s 4 values of output row 4 ii + a
            let u = transpose4(at(sa).map(|y| _mm256_add_ps(y, bias)));
            let halves = [
                (
                    _mm256_permute2f128_ps::<0x20>(u[0], u[1]),
                    _mm256_permute2f128_ps::<0x20>(u[2], u[3]),
                ),
                (
                    _mm256_permute2f128_ps::<0x31>(u[0], u[1]),
                    _mm256_permute2f128_ps::<0x31>(u[2], u[3]),
                ),
            ];
            for (ii, (lo, hi)) in halves.into_iter().enumerate() {
                let row = 4 * ii + a;
                if row < rows {
                    // SAFETY: `ow` values of a row `< rows`, within the contract.
                    unsafe {
                        store_first(dst.add(row * ow), ow, lo);
                        if ow > 8 {
                            store_first(dst.add(row * ow + 8), ow - 8, hi);
                        }
                    }
                }
            }
        }
    }

    /// The input transform of one tile row of up to 8 tiles from `src` (the top-left
    /// value of its first tile; image rows `ws` apart): `Bᵀ d B` position `ξ` of the
    /// tiles is stored as 8 values at `dst + ξ pos`, tile `j` in lane `j / 2 + 4 (j % 2)`
    /// (tiles 0, 2, 4, 6 in the low 128 bits, 1, 3, 5, 7 in the high: the order an
    /// in-lane transpose of whole-row loads gives). Lanes of tiles past the row's last
    /// hold what the values after it give.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `src` is valid for reads of 36 values from each of the
    /// rows `k ws`, `k < 6`; `dst` for writes of 8 values at each of 36 rows `pos` apart.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn input_row8(src: *const f32, ws: usize, dst: *mut f32, pos: usize) {
        let (pd, ps) = (_mm256_castps_pd, _mm256_castpd_ps);
        let t: [[__m256; 6]; 6] = std::array::from_fn(|r| {
            // SAFETY: 8 values from columns `8 q` and `8 q + 4`, `q < 4`: columns up to
            // 35 of row `r < 6`, within the contract.
            let (a, b) = unsafe {
                let p = src.add(r * ws);
                let a: [__m256; 4] = std::array::from_fn(|q| _mm256_loadu_ps(p.add(8 * q)));
                let b: [__m256; 4] = std::array::from_fn(|q| _mm256_loadu_ps(p.add(8 * q + 4)));
                (a, b)
            };
            // values 0-3 of each tile, then 4 and 5 (values 0 and 1 of the loads 4 on)
            let [d0, d1, d2, d3] = transpose4(a);
            let (e0, e1) = (_mm256_unpacklo_ps(b[0], b[1]), _mm256_unpacklo_ps(b[2], b[3]));
            let (d4, d5) = (
                ps(_mm256_unpacklo_pd(pd(e0), pd(e1))),
                ps(_mm256_unpackhi_pd(pd(e0), pd(e1))),
            );
            bt([d0, d1, d2, d3, d4, d5])
        });
        // indexed by column, as in `input_group`
        #[allow(clippy::needless_range_loop)]
        for col in 0..6 {
            for (row, v) in bt(std::array::from_fn(|r| t[r][col])).into_iter().enumerate() {
                // SAFETY: position `6 row + col < 36`, 8 values, within the contract.
                unsafe { _mm256_storeu_ps(dst.add((6 * row + col) * pos), v) };
            }
        }
    }

    /// The output transform of one tile row of up to 8 tiles laid out as in
    /// [`input_row8`]: `Aᵀ m A + b`, with `m[ξ]` of the tiles at `src + ξ pos`. Writes,
    /// for the output rows `a < rows.min(4)`, the first `ow` values of output row `a` to
    /// `dst + a ow`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `ow <= 32`; `src` is valid for reads of 8 values at each
    /// of 36 rows `pos` apart; `dst + a ow` for writes of `ow` values for each written
    /// row.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn output_row8(src: *const f32, pos: usize, b: f32, dst: *mut f32, ow: usize, rows: usize) {
        // SAFETY: position `xi < 36`, within the contract.
        let load = |xi: usize| unsafe { _mm256_loadu_ps(src.add(xi * pos)) };
        // (Aᵀ m)[a][c], column by column
        let cols: [[__m256; 4]; 6] = std::array::from_fn(|c| at(std::array::from_fn(|row| load(6 * row + c))));
        let bias = _mm256_set1_ps(b);
        // indexed by output row, as in `input_group`
        #[allow(clippy::needless_range_loop)]
        for a in 0..rows.min(4) {
            // u[q]: tiles 2 q and 2 q + 1's 4 values of output row a: columns 8 q to 8 q + 7
            let u = transpose4(at(std::array::from_fn(|c| cols[c][a])).map(|y| _mm256_add_ps(y, bias)));
            for (q, v) in u.into_iter().enumerate() {
                if 8 * q < ow {
                    // SAFETY: values `8 q` to `min(8 q + 8, ow)` of row `a < rows`,
                    // within the contract.
                    unsafe { store_first(dst.add(a * ow + 8 * q), ow - 8 * q, v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{
        assert_empty_accumulators_are_zeros, assert_forward_images_at_once_are_each_in_turn,
        assert_images_at_once_are_each_in_turn, assert_images_at_once_at,
    };
    use super::*;
    use crate::testing::{assert_forward_matches_reference, assert_weight_gradient_matches_reference};

    #[test]
    fn filter_transform_is_g_g_gt() {
        let gm = [
            [0.25f64, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        let f: [f32; 9] = std::array::from_fn(|i| i as f32 - 3.5);
        let u = transform_filter(&f);
        for r in 0..6 {
            for c in 0..6 {
                let mut want = 0.0f64;
                for a in 0..3 {
                    for b in 0..3 {
                        want += gm[r][a] * f64::from(f[3 * a + b]) * gm[c][b];
                    }
                }
                assert!((f64::from(u[6 * r + c]) - want).abs() < 1e-6, "U[{r}][{c}]");
            }
        }
    }

    #[test]
    fn one_tile_is_the_convolution_of_its_six_by_six_patch() {
        // the three transforms and the products of one tile against the definition,
        // with small integers: every output of the 4x4 tile
        let d: [[f32; 6]; 6] = std::array::from_fn(|r| std::array::from_fn(|c| ((r * 6 + c) % 7) as f32 - 3.0));
        let g: [f32; 9] = std::array::from_fn(|i| (i % 4) as f32 - 1.5);
        let (u, v) = (transform_filter(&g), input_tile(&d));
        let y = output_tile(&std::array::from_fn(|xi| u[xi] * v[xi]));
        for a in 0..4 {
            for b in 0..4 {
                let mut want = 0.0f32;
                for p in 0..3 {
                    for q in 0..3 {
                        want += d[a + p][b + q] * g[3 * p + q];
                    }
                }
                assert!((y[a][b] - want).abs() < 1e-4, "Y[{a}][{b}] {} vs {want}", y[a][b]);
            }
        }
    }

    #[test]
    fn matches_the_reference_convolution() {
        // (C, H, W, FN, FH, FW, pad): the network's layers it runs (14 x 14 out of 14 x
        // 14, 16 x 16 out of 14 x 14 padded by 2, 14 x 14 out of 16 x 16 unpadded), and
        // the input gradients'; outputs that are not a multiple of 4 (the last tile row
        // and column partly outside), 1 to 4 tiles a row, 1 to 9 tile rows (groups of 4
        // with 1, 2 and 3 rows left over), filters not a multiple of 8, wider outputs
        // (the tile-by-tile transforms), one tile, and outputs narrower than a tile
        let cases = [
            (16, 14, 14, 32, 3, 3, 1),
            (32, 14, 14, 32, 3, 3, 2),
            (32, 16, 16, 16, 3, 3, 0),
            (32, 14, 14, 16, 3, 3, 1),
            (3, 9, 11, 5, 3, 3, 0),
            (5, 13, 10, 13, 3, 3, 1),
            (4, 34, 16, 9, 3, 3, 1),
            (2, 21, 7, 3, 3, 3, 2),
            (2, 3, 3, 3, 3, 3, 0),
            (1, 4, 3, 2, 3, 3, 0),
            (6, 40, 6, 8, 3, 3, 1),
            (16, 28, 28, 16, 3, 3, 1),
            (3, 18, 20, 5, 3, 3, 0),
            (2, 21, 24, 3, 3, 3, 1),
            (4, 30, 30, 9, 3, 3, 2),
            (3, 33, 33, 8, 3, 3, 1),
        ];
        assert_forward_matches_reference(&cases, Winograd4Conv::with_isa);
    }

    #[test]
    fn an_image_gives_the_same_bits_whatever_the_scratch_held() {
        // outputs of 14 x 14 (3 full groups' lanes short of 16 tiles) and 9 x 13, at
        // every level: after another image, after zeros and after large values
        for (c, h, w, f, pad) in [
            (16, 14, 14, 16, 1),
            (8, 9, 13, 8, 1),
            (32, 16, 16, 32, 0),
            (16, 28, 28, 16, 1),
        ] {
            let g = ConvGeometry::new(c, h, w, 3, 3, 1, pad).unwrap();
            let x: Vec<f32> = (0..c * h * w).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
            let other: Vec<f32> = x.iter().map(|v| 1e6 * v).collect();
            let wt: Vec<f32> = (0..f * c * 9).map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0).collect();
            for isa in Isa::supported_levels() {
                let k = Winograd4Conv::with_isa(&wt, f, &g, isa).unwrap();
                let run = |scratch: &mut Vec<f32>| {
                    let mut out = vec![0.0f32; f * g.out_h * g.out_w];
                    k.forward_image(&x, None, &mut out, scratch);
                    out
                };
                let want = run(&mut vec![0.0; k.scratch_len()]);
                let mut used = vec![1e30f32; k.scratch_len()];
                assert_eq!(run(&mut used), want, "{isa} {g:?}: after large values");
                let mut out = vec![0.0f32; f * g.out_h * g.out_w];
                k.forward_image(&other, None, &mut out, &mut used);
                assert_eq!(run(&mut used), want, "{isa} {g:?}: after another image");
            }
        }
    }

    #[test]
    fn its_filter_gradient_matches_the_reference() {
        // the forward's cases: the network's layers (16 -> 16 on 28 x 28: rows of 7
        // tiles in 8 columns), ragged tiles, filters not a multiple of 16, 1 to 9 tiles
        // a row (rows of 5, 6 and 7 tiles with empty columns, 8, and the tile-by-tile
        // transforms past 8); 80 filters (register tiles of 64 and 16 lanes); the
        // scratch starts as NaN
        let cases = [
            (16, 14, 14, 32, 3, 3, 1),
            (32, 14, 14, 32, 3, 3, 2),
            (32, 16, 16, 16, 3, 3, 0),
            (3, 9, 11, 5, 3, 3, 0),
            (5, 13, 10, 13, 3, 3, 1),
            (4, 34, 16, 9, 3, 3, 1),
            (2, 21, 7, 3, 3, 3, 2),
            (2, 3, 3, 3, 3, 3, 0),
            (1, 4, 3, 2, 3, 3, 0),
            (6, 40, 6, 8, 3, 3, 1),
            (16, 28, 28, 16, 3, 3, 1),
            (3, 18, 20, 5, 3, 3, 0),
            (2, 21, 24, 3, 3, 3, 1),
            (4, 30, 30, 9, 3, 3, 2),
            (3, 33, 33, 8, 3, 3, 1),
            (17, 12, 12, 80, 3, 3, 1),
        ];
        assert_weight_gradient_matches_reference(&cases, Winograd4Conv::with_isa);
    }

    /// Several images at once give each in turn's bits: outputs of 14 x 14 and 16 x 16
    /// (16 tiles: 5 images), 16 x 32 (32 columns: 2), and those that take one (28 x 28:
    /// 56 columns in 64; 10 x 10: 9 tiles).
    #[test]
    fn its_filter_gradient_of_images_at_once_is_that_of_each_in_turn() {
        let cases = [
            (32, 16, 16, 64, 0, 5),
            (17, 14, 14, 70, 1, 5),
            (16, 14, 14, 16, 2, 5),
            (9, 16, 32, 20, 1, 2),
            (8, 28, 28, 16, 1, 1),
            (8, 10, 10, 16, 1, 1),
        ];
        assert_images_at_once_are_each_in_turn(&cases, |f, g, isa| {
            Box::new(Winograd4Conv::with_isa(&vec![0.5; f * g.col_rows()], f, g, isa).unwrap())
        });
    }

    /// Several images at once in rows of 5 to 7 tiles, where the levels that transform a
    /// tile row a register leave columns empty: outputs of 16 x 24 (4 rows of 6 tiles in
    /// 8 columns: 2 images at once) and 8 x 20 (2 rows of 5: 5 images), one image at a
    /// time at the other levels. Each image's empty columns get zeros in `Z`, not only
    /// the first image's: the scratch starts as NaN.
    #[test]
    fn its_filter_gradient_of_images_at_once_clears_each_images_empty_columns() {
        for (case, c, h, w, f, at_once) in [(0, 8, 16, 24, 16, 2), (1, 5, 8, 20, 20, 5)] {
            for isa in Isa::ALL.into_iter().filter(|i| i.runs_here()) {
                let most = if Winograd4Conv::by_rows_at(isa, w / 4) {
                    at_once
                } else {
                    1
                };
                assert_images_at_once_at(case, (c, h, w, f, 1), isa, most, |f, g, isa| {
                    Box::new(Winograd4Conv::with_isa(&vec![0.5; f * g.col_rows()], f, g, isa).unwrap())
                });
            }
        }
    }

    /// Several images' forward at once gives each in turn's bits: 14 x 14 and 16 x 16
    /// outputs (16 columns an image: 3 at once, at every level), and those that take one
    /// (28 x 28; 9 x 9: 9 tiles in 16 columns).
    #[test]
    fn its_forward_of_images_at_once_is_that_of_each_in_turn() {
        let cases = [
            (32, 16, 16, 32, 0, 3),
            (16, 14, 14, 20, 1, 3),
            (9, 14, 14, 8, 2, 3),
            (8, 28, 28, 16, 1, 1),
            (8, 9, 9, 16, 1, 3),
            (8, 20, 20, 8, 1, 1),
        ];
        assert_forward_images_at_once_are_each_in_turn(&cases, |w, f, g, isa| {
            Box::new(Winograd4Conv::with_isa(w, f, g, isa).unwrap())
        });
    }

    #[test]
    fn an_accumulator_of_no_images_is_zeros() {
        assert_empty_accumulators_are_zeros(|f, g, isa| {
            Box::new(Winograd4Conv::with_isa(&vec![0.5; f * g.col_rows()], f, g, isa).unwrap())
        });
    }

    /// F(2x2, 3x3)'s accumulators (16 positions) are not F(4x4, 3x3)'s (36): they do
    /// not merge, and neither kernel takes the other's.
    #[test]
    fn takes_no_accumulator_of_f2() {
        let g = ConvGeometry::new(16, 14, 14, 3, 3, 1, 1).unwrap();
        let w = vec![0.5; 16 * 16 * 9];
        let (k4, k2) = (
            Winograd4Conv::with_isa(&w, 16, &g, Isa::Scalar).unwrap(),
            WinogradConv::with_isa(&w, 16, &g, Isa::Scalar).unwrap(),
        );
        let (a4, a2) = (k4.gradient_accumulator(), k2.gradient_accumulator());
        let fails = |f: &mut dyn FnMut()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        assert!(fails(&mut || a4.clone().merge(&a2)));
        assert!(fails(&mut || a2.clone().merge(&a4)));
        let (mut dw, mut db) = (vec![0.0; 16 * 144], vec![0.0; 16]);
        assert!(fails(&mut || k4.add_gradient(&a2, &mut dw, &mut db)));
        assert!(fails(&mut || k2.add_gradient(&a4, &mut dw, &mut db)));
        let (x, dout) = (vec![0.0; 16 * 196], vec![0.0; 16 * 196]);
        let mut scratch = vec![0.0; k4.gradient_scratch_len().max(k2.gradient_scratch_len())];
        assert!(fails(&mut || k4.weight_gradient_image(
            &x,
            &dout,
            &mut a2.clone(),
            &mut scratch
        )));
        assert!(fails(&mut || k2.weight_gradient_image(
            &x,
            &dout,
            &mut a4.clone(),
            &mut scratch
        )));
    }

    /// `Aᵀ` of F(4x4, 3x3), row-major (4 x 6).
    const AT: [[f64; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];

    /// The output-gradient transform of one tile and 16 filters at every level: `A dY
    /// Aᵀ` by the matrices, and the same bits at each level; it reads `dY` from a grid
    /// (rows `row` apart, positions `fp`) and writes positions `pos` apart.
    #[test]
    fn output_gradient_tile_is_a_dy_at() {
        let (fp, row, pos) = (32, 32 * 9, 16 * 3 + 5);
        let grid: Vec<f32> = (0..4 * row).map(|i| ((i * 7919) % 211) as f32 / 16.0 - 6.5).collect();
        let mut first: Option<Vec<f32>> = None;
        for isa in Isa::supported_levels() {
            let mut z = vec![f32::NAN; 36 * pos];
            // SAFETY: `isa` runs here; reads 16 values at `a row + b fp` (`a, b < 4`) of
            // the grid, writes 16 at each of 36 rows `pos` apart.
            unsafe { transform::output_gradient_tile4(isa, grid.as_ptr(), row, fp, z.as_mut_ptr(), pos) };
            for l in 0..16 {
                let dy = |a: usize, b: usize| f64::from(grid[a * row + b * fp + l]);
                for k in 0..6 {
                    for q in 0..6 {
                        let mut want = 0.0;
                        for (a, ra) in AT.iter().enumerate() {
                            for (b, rb) in AT.iter().enumerate() {
                                want += ra[k] * dy(a, b) * rb[q];
                            }
                        }
                        let got = f64::from(z[(6 * k + q) * pos + l]);
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{isa}: Z[{k}][{q}] lane {l}"
                        );
                    }
                }
            }
            let written: Vec<f32> = z.chunks(pos).flat_map(|r| r[..16].to_vec()).collect();
            match &first {
                None => first = Some(written),
                Some(f) => assert!(f.iter().zip(&written).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa}"),
            }
        }
    }

    #[test]
    fn filter_gradient_transform_is_gt_du_g() {
        let gm = [
            [0.25f64, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        let du: [f32; 36] = std::array::from_fn(|i| ((i * 17) % 13) as f32 - 6.0);
        let dw = transform_filter_gradient(&du);
        for p in 0..3 {
            for q in 0..3 {
                let mut want = 0.0f64;
                for k in 0..6 {
                    for l in 0..6 {
                        want += gm[k][p] * f64::from(du[6 * k + l]) * gm[l][q];
                    }
                }
                assert!((f64::from(dw[3 * p + q]) - want).abs() < 1e-6, "dW[{p}][{q}]");
            }
        }
    }

    #[test]
    fn pays_on_outputs_of_three_to_eight_tiles_a_row() {
        let g = |hw, pad| ConvGeometry::new(32, hw, hw, 3, 3, 1, pad).unwrap();
        for (hw, pad) in [(14, 1), (14, 2), (16, 0), (11, 1), (28, 1), (32, 1), (17, 1)] {
            let out = hw + 2 * pad - 2;
            assert!(Winograd4Conv::pays(&g(hw, pad), 32, Isa::Avx512), "{hw} pad {pad}");
            // at AVX2, from 4 tiles a row on
            assert_eq!(
                Winograd4Conv::pays(&g(hw, pad), 32, Isa::Avx2),
                out >= 13,
                "{hw} pad {pad} at AVX2"
            );
            assert!(
                !Winograd4Conv::pays(&g(hw, pad), 32, Isa::Scalar),
                "{hw} pad {pad} scalar"
            );
            assert!(!Winograd4Conv::pays(&g(hw, pad), 32, Isa::Neon), "{hw} pad {pad} NEON");
        }
        // from C * FN = 256 on, with 8 channels or more
        let c8 = |f| ConvGeometry::new(8, 14, 14, 3, 3, 1, 1).map(|g| Winograd4Conv::pays(&g, f, Isa::Avx2));
        assert_eq!((c8(31), c8(32)), (Ok(false), Ok(true)));
        let c4 = ConvGeometry::new(4, 14, 14, 3, 3, 1, 1).unwrap();
        assert!(!Winograd4Conv::pays(&c4, 64, Isa::Avx512));
        assert!(!Winograd4Conv::pays(&g(14, 1), 7, Isa::Avx512));
        assert!(Winograd4Conv::pays(&g(14, 1), 8, Isa::Avx512));
        // 8 and 33 wide, against 9 and 32; 16 wide but 8 high; 5x5 filters; stride 2
        assert!(!Winograd4Conv::pays(&g(10, 0), 32, Isa::Avx512));
        assert!(Winograd4Conv::pays(&g(9, 1), 32, Isa::Avx512));
        assert!(!Winograd4Conv::pays(&g(33, 1), 32, Isa::Avx512));
        assert!(!Winograd4Conv::pays(&g(33, 1), 32, Isa::Avx2));
        assert!(Winograd4Conv::pays(&g(32, 1), 32, Isa::Avx2));
        let flat = ConvGeometry::new(32, 8, 16, 3, 3, 1, 1).unwrap();
        assert!(!Winograd4Conv::pays(&flat, 32, Isa::Avx512));
        let tall = ConvGeometry::new(32, 9, 16, 3, 3, 1, 1).unwrap();
        assert!(Winograd4Conv::pays(&tall, 32, Isa::Avx512));
        let five = ConvGeometry::new(32, 16, 16, 5, 5, 1, 2).unwrap();
        assert!(!Winograd4Conv::pays(&five, 32, Isa::Avx512));
        let strided = ConvGeometry::new(32, 32, 32, 3, 3, 2, 1).unwrap();
        assert!(!Winograd4Conv::pays(&strided, 32, Isa::Avx512));
    }

    #[test]
    fn the_written_transforms_run_on_the_widths_they_were_written_for() {
        let w = vec![0.25f32; 8 * 8 * 9];
        let kernel = |out_w: usize, isa: Isa| {
            let g = ConvGeometry::new(8, 12, out_w + 2, 3, 3, 1, 0).unwrap();
            Winograd4Conv::with_isa(&w, 8, &g, isa).unwrap()
        };
        for isa in Isa::supported_levels() {
            for out_w in [4, 9, 13, 16, 17, 29, 32, 33] {
                let k = kernel(out_w, isa);
                let tw = out_w.div_ceil(4);
                assert_eq!(k.grouped(), isa == Isa::Avx512 && tw <= 4, "{isa} {out_w}");
                assert_eq!(k.grouped_avx2(), isa == Isa::Avx2 && tw == 4, "{isa} {out_w}");
                let by_rows = matches!(isa, Isa::Avx2 | Isa::Avx512) && (5..=8).contains(&tw);
                assert_eq!(k.by_rows(), by_rows, "{isa} {out_w}");
            }
        }
    }

    #[test]
    fn its_scratch_is_a_padded_plane_v_and_m_and_a_little_slack() {
        // (C, H, W, FN, pad, images of the forward, images of the gradient): planes of
        // 18 x 18, 16 tiles (conv4: 3 images at once forward, 5 in the gradient), 49
        // tiles in 64, 6 tiles in 16 with 9 filters
        let cases = [
            (32, 14, 14, 32, 2, 3, 5),
            (16, 28, 28, 16, 1, 1, 1),
            (3, 9, 11, 9, 0, 3, 1),
        ];
        for (c, h, w, f, pad, nf, ng) in cases {
            let g = ConvGeometry::new(c, h, w, 3, 3, 1, pad).unwrap();
            let k = Winograd4Conv::with_isa(&vec![0.0; f * c * 9], f, &g, Isa::Scalar).unwrap();
            assert_eq!((k.images_per_forward(), k.images_per_gradient()), (nf, ng), "{g:?}");
            let (th, tw) = (g.out_h.div_ceil(4), g.out_w.div_ceil(4));
            let (hs, ws, tp) = (4 * th + 2, 4 * tw + 2, (th * tw).div_ceil(16) * 16);
            let fp = f.div_ceil(16) * 16;
            let forward = hs * ws + 36 * c * nf * tp + 36 * f.div_ceil(MR) * MR * nf * tp;
            let gradient = hs * ws + 36 * c * ng * tp + 16 * th * tw * fp + 36 * ng * tp * fp;
            for (got, least) in [(k.scratch_len(), forward), (k.gradient_scratch_len(), gradient)] {
                // slack: the padded plane's, and a cache line a position
                let most = least + 16 * ws + 36 + 2 * 36 * 16 + 16;
                assert!((least..=most).contains(&got), "{g:?}: {got} not in {least}..={most}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_compute() {
        let strided = ConvGeometry::new(1, 8, 8, 3, 3, 2, 1).unwrap();
        assert!(Winograd4Conv::with_isa(&[0.0; 9], 1, &strided, Isa::Scalar).is_none());
        let g1 = ConvGeometry::new(1, 8, 8, 3, 3, 1, 1).unwrap();
        assert!(Winograd4Conv::with_isa(&[], 0, &g1, Isa::Scalar).is_none());
        let k = Winograd4Conv::with_isa(&[0.0; 9], 1, &g1, Isa::Scalar).unwrap();
        assert_eq!((k.name(), k.isa()), ("winograd-f4", Isa::Scalar));
    }
}
