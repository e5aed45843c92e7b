//! 1-bit convolution, the kernels of a binarized network (Courbariaux et al., 2016).
//!
//! Values are signs, `+1` or `-1`, stored one bit each (1 for `+1`): 64 to a word. The
//! product of two signs is `+1` where the bits agree, so a dot product of `n` signs is
//! `n - 2 * popcount(a XOR b)`. Activations are a [`BitGrid`], channels last (NHWC):
//! each pixel's channels fill `words(C)` whole words, the unused high bits zero, so that
//! they agree with the filters' (also zero) and add nothing. Zero padding (which has no
//! sign) is left out: an output sums over the filter taps that fall inside the image
//! only, exactly as a float convolution of the signs with zero padding does.
//!
//! [`BinaryConv`] computes a convolution's `i32` sums with one of three kernels
//! ([`PopcountKernel`]), chosen at run time, which give the same sums bit for bit:
//!
//! * `avx512-vpopcntdq`: eight filters' words XORed with the broadcast input word and
//!   counted in one `vpopcntq`;
//! * `popcnt`: the scalar loop compiled with the `popcnt` instruction (every AVX2 CPU
//!   has it);
//! * `scalar`: the same loop for the baseline target (`count_ones` as bit arithmetic
//!   where the target has no count instruction), the reference; and
//!   [`reference_conv`], written from the definition on `±1.0` floats, which all three
//!   are tested against.
//!
//! An affine layer is the convolution whose filter covers the whole image
//! ([`BinaryConv::affine`]).
//!
//! ```
//! use dl_tensor::binary::{reference_conv, BinaryConv, BitGrid, PopcountKernel};
//!
//! // 3 filters of 2 channels, 3x3, pad 1, on one 4x4 image of signs (NCHW)
//! let w: Vec<f32> = (0..3 * 2 * 9).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
//! let x: Vec<f32> = (0..2 * 16).map(|i| if i % 5 < 2 { 1.0 } else { -1.0 }).collect();
//! let conv = BinaryConv::new(&w, [3, 2, 3, 3], 1, 1).unwrap();
//! let grid = BitGrid::from_nchw(&x, 1, 2, 4, 4);
//! let sums = conv.forward(&grid, PopcountKernel::Scalar).unwrap();
//! // the same integers as the float convolution of the signs, in NHWC
//! let expected = reference_conv(&x, 1, 2, 4, 4, &w, [3, 2, 3, 3], 1, 1);
//! assert_eq!(sums.to_nchw(), expected);
//! for kernel in PopcountKernel::supported_levels() {
//!     assert_eq!(conv.forward(&grid, kernel).unwrap(), sums);
//! }
//! ```

use rayon::prelude::*;

use crate::{ConvGeometry, GeometryError, Isa};

/// Filters per block of the packed weights: one 512-bit register of `u64` counts.
const LANES: usize = 8;

/// Blocks of filters one pass of the AVX-512 kernel keeps in registers.
const BLOCKS: usize = 8;

/// Words that hold `bits` bits.
pub fn words(bits: usize) -> usize {
    bits.div_ceil(64)
}

/// The kernel that computes the sums of a [`BinaryConv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PopcountKernel {
    /// Plain loops for the baseline target: any CPU, and the reference of the others.
    Scalar,
    /// The same loops with the `popcnt` instruction.
    Popcnt,
    /// AVX-512 VPOPCNTDQ: eight words counted per instruction.
    Avx512Vpopcntdq,
}

impl PopcountKernel {
    /// Every kernel, narrowest first.
    pub const ALL: [PopcountKernel; 3] = [
        PopcountKernel::Scalar,
        PopcountKernel::Popcnt,
        PopcountKernel::Avx512Vpopcntdq,
    ];

    /// `"scalar"`, `"popcnt"` or `"avx512-vpopcntdq"`.
    pub fn name(self) -> &'static str {
        match self {
            PopcountKernel::Scalar => "scalar",
            PopcountKernel::Popcnt => "popcnt",
            PopcountKernel::Avx512Vpopcntdq => "avx512-vpopcntdq",
        }
    }

    /// Whether this CPU has its instructions.
    pub fn supported(self) -> bool {
        match self {
            PopcountKernel::Scalar => true,
            PopcountKernel::Popcnt => Isa::Avx2.supported() && has_popcnt(),
            PopcountKernel::Avx512Vpopcntdq => Isa::Avx512.supported() && has_vpopcntdq(),
        }
    }

    /// The widest kernel this CPU has at or below the instruction-set level `isa`
    /// (`Avx512` without VPOPCNTDQ runs the `popcnt` kernel).
    pub fn for_isa(isa: Isa) -> PopcountKernel {
        PopcountKernel::ALL
            .into_iter()
            .rev()
            .find(|k| {
                k.supported()
                    && match k {
                        PopcountKernel::Scalar => true,
                        PopcountKernel::Popcnt => isa >= Isa::Avx2,
                        PopcountKernel::Avx512Vpopcntdq => isa >= Isa::Avx512,
                    }
            })
            .unwrap_or(PopcountKernel::Scalar)
    }

    /// The kernel at [`Isa::active`] (which `DLFS_SIMD` overrides).
    pub fn active() -> PopcountKernel {
        PopcountKernel::for_isa(Isa::active())
    }

    /// Every kernel this CPU has, narrowest first.
    pub fn supported_levels() -> Vec<PopcountKernel> {
        PopcountKernel::ALL.into_iter().filter(|k| k.supported()).collect()
    }

    /// `self` where the CPU has it, else the scalar kernel.
    fn usable(self) -> PopcountKernel {
        if self.supported() {
            self
        } else {
            PopcountKernel::Scalar
        }
    }
}

impl std::fmt::Display for PopcountKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn has_popcnt() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn has_vpopcntdq() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vpopcntdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Why a 1-bit convolution cannot be built or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// The parts do not fit each other.
    #[error("1-bit convolution: {0}")]
    Invalid(String),
    /// The input does not fit the filters.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
}

/// Signs of `n` images of `h x w` pixels of `c` channels, one bit each, channels last:
/// pixel `(i, y, x)` is the `words(c)` words from `((i * h + y) * w + x) * words(c)`,
/// channel `ch` bit `ch % 64` of its word `ch / 64`, set for `+1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitGrid {
    /// Images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// The words, `n * h * w * words(c)`.
    pub data: Vec<u64>,
}

impl BitGrid {
    /// The signs (`v >= 0` is `+1`) of `values` laid out `(n, c, h, w)`.
    pub fn from_nchw(values: &[f32], n: usize, c: usize, h: usize, w: usize) -> BitGrid {
        let wpp = words(c);
        let mut data = vec![0u64; n * h * w * wpp];
        let plane = h * w;
        data.par_chunks_mut((plane * wpp).max(1))
            .zip(values.par_chunks((c * plane).max(1)))
            .for_each(|(out, img)| {
                for ch in 0..c {
                    let (word, bit) = (ch / 64, ch % 64);
                    for (p, &v) in img[ch * plane..(ch + 1) * plane].iter().enumerate() {
                        out[p * wpp + word] |= u64::from(v >= 0.0) << bit;
                    }
                }
            });
        BitGrid { n, h, w, c, data }
    }

    /// The signs (`v >= 0` is `+1`) of `values` laid out `(n, h, w, c)`.
    pub fn from_nhwc(values: &[f32], n: usize, h: usize, w: usize, c: usize) -> BitGrid {
        let wpp = words(c);
        let mut data = vec![0u64; n * h * w * wpp];
        data.par_chunks_mut(wpp.max(1))
            .zip(values.par_chunks(c.max(1)))
            .for_each(|(out, pixel)| {
                for (ch, &v) in pixel.iter().enumerate() {
                    out[ch / 64] |= u64::from(v >= 0.0) << (ch % 64);
                }
            });
        BitGrid { n, h, w, c, data }
    }

    /// Words per pixel.
    pub fn words_per_pixel(&self) -> usize {
        words(self.c)
    }

    /// The sign at image `i`, pixel `(y, x)`, channel `ch`: `+1.0` or `-1.0`.
    pub fn sign(&self, i: usize, y: usize, x: usize, ch: usize) -> f32 {
        let word = self.data[((i * self.h + y) * self.w + x) * self.words_per_pixel() + ch / 64];
        if word >> (ch % 64) & 1 == 1 {
            1.0
        } else {
            -1.0
        }
    }

    /// The signs as `±1.0`, laid out `(n, c, h, w)`.
    pub fn to_nchw(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.c * self.h * self.w);
        for i in 0..self.n {
            for ch in 0..self.c {
                for y in 0..self.h {
                    for x in 0..self.w {
                        out.push(self.sign(i, y, x, ch));
                    }
                }
            }
        }
        out
    }
}

/// Integer sums of `n` images of `h x w` pixels of `c` channels, channels last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntGrid {
    /// Images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// The values, `n * h * w * c`.
    pub data: Vec<i32>,
}

impl IntGrid {
    /// The values as `f32`, laid out `(n, c, h, w)`.
    pub fn to_nchw(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.data.len()];
        let plane = self.h * self.w;
        for (i, v) in self.data.iter().enumerate() {
            let (img, p, ch) = (i / (plane * self.c), i / self.c % plane, i % self.c);
            out[(img * self.c + ch) * plane + p] = *v as f32;
        }
        out
    }
}

/// A 1-bit convolution: filters of signs `(F, C, FH, FW)`, packed for every
/// [`PopcountKernel`] as `[tap][word][filter]`, the filters padded to a multiple of 8.
#[derive(Debug, Clone)]
pub struct BinaryConv {
    dims: [usize; 4],
    stride: usize,
    pad: usize,
    /// `[FH * FW][words(C)][F rounded up to LANES]`.
    packed: Vec<u64>,
}

impl BinaryConv {
    /// The convolution with the signs of `w` (`v >= 0` is `+1`), laid out as `dims`
    /// `(F, C, FH, FW)`.
    pub fn new(w: &[f32], dims: [usize; 4], stride: usize, pad: usize) -> Result<BinaryConv, BinaryError> {
        let [f, c, fh, fw] = dims;
        if dims.contains(&0) || stride == 0 || w.len() != f * c * fh * fw {
            return Err(BinaryError::Invalid(format!(
                "{} weights for filters {dims:?}, stride {stride}",
                w.len()
            )));
        }
        let (wpp, fp) = (words(c), f.next_multiple_of(LANES));
        let mut packed = vec![0u64; fh * fw * wpp * fp];
        for fi in 0..f {
            for ch in 0..c {
                for t in 0..fh * fw {
                    if w[(fi * c + ch) * fh * fw + t] >= 0.0 {
                        packed[(t * wpp + ch / 64) * fp + fi] |= 1 << (ch % 64);
                    }
                }
            }
        }
        Ok(BinaryConv {
            dims,
            stride,
            pad,
            packed,
        })
    }

    /// An affine layer `(D, M)` (`w` row-major, `D = c * h * w`, the input flattened
    /// from `(c, h, w)`) as the convolution of `M` filters that cover the whole `h x w`
    /// image: its output is `1 x 1` with `M` channels.
    pub fn affine(w: &[f32], m: usize, (c, h, wd): (usize, usize, usize)) -> Result<BinaryConv, BinaryError> {
        let d = c * h * wd;
        if w.len() != d * m {
            return Err(BinaryError::Invalid(format!(
                "{} weights for an affine layer of {d} inputs and {m} outputs",
                w.len()
            )));
        }
        // filter j's weight at (ch, y, x) is W[ch * h * w + y * w + x][j]
        let filters: Vec<f32> = (0..m * d).map(|i| w[(i % d) * m + i / d]).collect();
        BinaryConv::new(&filters, [m, c, h, wd], 1, 0)
    }

    /// `(F, C, FH, FW)`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// The bytes of the packed filters.
    pub fn weight_bytes(&self) -> usize {
        self.packed.len() * 8
    }

    /// The geometry on an `h x w` input.
    pub fn geometry(&self, h: usize, w: usize) -> Result<ConvGeometry, GeometryError> {
        let [_, c, fh, fw] = self.dims;
        ConvGeometry::new(c, h, w, fh, fw, self.stride, self.pad)
    }

    /// The sums of `x` with the filters, `(n, out_h, out_w, F)`, by `kernel` (the scalar
    /// kernel where the CPU lacks it).
    pub fn forward(&self, x: &BitGrid, kernel: PopcountKernel) -> Result<IntGrid, BinaryError> {
        let [f, c, _, _] = self.dims;
        if x.c != c || x.data.len() != x.n * x.h * x.w * words(c) {
            return Err(BinaryError::Invalid(format!(
                "input of {} channels ({} words for {}x{}x{}) for filters of {c}",
                x.c,
                x.data.len(),
                x.n,
                x.h,
                x.w
            )));
        }
        let g = self.geometry(x.h, x.w)?;
        let kernel = kernel.usable();
        let (per_in, per_out) = (x.h * x.w * words(c), g.out_h * g.out_w * f);
        let mut data = vec![0i32; x.n * per_out];
        if per_out > 0 {
            data.par_chunks_mut(per_out)
                .zip(x.data.par_chunks(per_in.max(1)))
                .for_each(|(out, img)| self.image(img, &g, out, kernel));
        }
        Ok(IntGrid {
            n: x.n,
            h: g.out_h,
            w: g.out_w,
            c: f,
            data,
        })
    }

    /// One image's sums.
    fn image(&self, img: &[u64], g: &ConvGeometry, out: &mut [i32], kernel: PopcountKernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `usable` checked the CPU has the instructions.
            PopcountKernel::Avx512Vpopcntdq => unsafe { self.image_avx512(img, g, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            PopcountKernel::Popcnt => unsafe { self.image_popcnt(img, g, out) },
            _ => self.image_scalar(img, g, out),
        }
    }

    /// The filter rows and columns of output pixel `(oy, ox)` that fall inside the image
    /// (a rectangle): `(ky0..ky1, kx0..kx1)`.
    #[inline(always)]
    fn window(&self, g: &ConvGeometry, oy: usize, ox: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let [_, _, fh, fw] = self.dims;
        // filter row ky reads image row oy * stride + ky - pad, inside when in 0..h
        let inside = |o: usize, k: usize, side: usize| {
            let first = o * g.stride;
            let lo = g.pad.saturating_sub(first);
            let hi = (side + g.pad).saturating_sub(first).min(k);
            lo..hi.max(lo)
        };
        (inside(oy, fh, g.h), inside(ox, fw, g.w))
    }

    /// The loop of the scalar kernels: per output pixel and filter, the counts over the
    /// taps inside the image.
    #[inline(always)]
    fn image_loop(&self, img: &[u64], g: &ConvGeometry, out: &mut [i32]) {
        let [f, c, _, fw] = self.dims;
        let (wpp, fp) = (words(c), f.next_multiple_of(LANES));
        let mut counts = vec![0u32; f];
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let (rows, cols) = self.window(g, oy, ox);
                counts.iter_mut().for_each(|v| *v = 0);
                for ky in rows.clone() {
                    let y = oy * g.stride + ky - g.pad;
                    for kx in cols.clone() {
                        let p = y * g.w + ox * g.stride + kx - g.pad;
                        let t = ky * fw + kx;
                        for k in 0..wpp {
                            let a = img[p * wpp + k];
                            let row = &self.packed[(t * wpp + k) * fp..][..f];
                            for (n, &w) in counts.iter_mut().zip(row) {
                                *n += (a ^ w).count_ones();
                            }
                        }
                    }
                }
                let full = (rows.len() * cols.len() * c) as i32;
                let o = &mut out[(oy * g.out_w + ox) * f..][..f];
                for (o, &n) in o.iter_mut().zip(&counts) {
                    *o = full - 2 * n as i32;
                }
            }
        }
    }

    fn image_scalar(&self, img: &[u64], g: &ConvGeometry, out: &mut [i32]) {
        self.image_loop(img, g, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn image_popcnt(&self, img: &[u64], g: &ConvGeometry, out: &mut [i32]) {
        self.image_loop(img, g, out);
    }

    /// The AVX-512 kernel: per output pixel, up to 64 filters' counts in eight
    /// registers; each input word broadcast, XORed with eight filters' words, counted;
    /// the outputs `full - 2 * count` computed and narrowed to `i32` in registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    unsafe fn image_avx512(&self, img: &[u64], g: &ConvGeometry, out: &mut [i32]) {
        let f = self.dims[0];
        let fp = f.next_multiple_of(LANES);
        for first in (0..fp).step_by(LANES * BLOCKS) {
            // the number of registers of counts is a constant in each instance, so that
            // they stay in registers
            // SAFETY (each): the CPU has the instructions (the caller's contract).
            let blocks = ((fp - first) / LANES).min(BLOCKS);
            macro_rules! run {
                ($($b:literal)*) => {
                    match (blocks, words(self.dims[1]) == 1) {
                        $(($b, true) => unsafe { self.blocks_avx512::<$b, true>(img, g, out, first) },
                          ($b, false) => unsafe { self.blocks_avx512::<$b, false>(img, g, out, first) },)*
                        _ => unreachable!("1 to 8 blocks"),
                    }
                };
            }
            run!(1 2 3 4 5 6 7 8);
        }
    }

    /// [`BinaryConv::image_avx512`] for the `B` blocks of eight filters from `first`;
    /// `ONE`: each pixel's channels fit one word (`C <= 64`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    unsafe fn blocks_avx512<const B: usize, const ONE: bool>(
        &self,
        img: &[u64],
        g: &ConvGeometry,
        out: &mut [i32],
        first: usize,
    ) {
        use std::arch::x86_64::*;
        let [f, c, _, fw] = self.dims;
        let (wpp, fp) = (if ONE { 1 } else { words(c) }, f.next_multiple_of(LANES));
        let mut tail = [0i32; LANES];
        let packed = self.packed.as_ptr();
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let (rows, cols) = self.window(g, oy, ox);
                let full = _mm512_set1_epi64((rows.len() * cols.len() * c) as i64);
                let mut acc = [_mm512_setzero_si512(); B];
                for ky in rows.clone() {
                    let y = oy * g.stride + ky - g.pad;
                    let pixels = &img[(y * g.w + ox * g.stride + cols.start - g.pad) * wpp..][..cols.len() * wpp];
                    for (j, kx) in cols.clone().enumerate() {
                        let t = ky * fw + kx;
                        for k in 0..wpp {
                            let a = _mm512_set1_epi64(pixels[j * wpp + k] as i64);
                            // SAFETY: the packed filters hold `fp` words per (tap, word),
                            // and `first + B * 8 <= fp`.
                            let row = unsafe { packed.add((t * wpp + k) * fp + first) };
                            for (b, acc) in acc.iter_mut().enumerate() {
                                let w = unsafe { _mm512_loadu_si512(row.add(b * LANES).cast()) };
                                *acc = _mm512_add_epi64(*acc, _mm512_popcnt_epi64(_mm512_xor_si512(a, w)));
                            }
                        }
                    }
                }
                let o = &mut out[(oy * g.out_w + ox) * f..][..f];
                for (b, acc) in acc.iter().enumerate() {
                    let v = _mm512_cvtepi64_epi32(_mm512_sub_epi64(full, _mm512_slli_epi64::<1>(*acc)));
                    let at = first + b * LANES;
                    if at + LANES <= f {
                        // SAFETY: `o` has room for 8 `i32` at `at`.
                        unsafe { _mm256_storeu_si256(o.as_mut_ptr().add(at).cast(), v) };
                    } else {
                        // SAFETY: `tail` is 8 `i32`.
                        unsafe { _mm256_storeu_si256(tail.as_mut_ptr().cast(), v) };
                        o[at..].copy_from_slice(&tail[..f - at]);
                    }
                }
            }
        }
    }
}

/// The sums of a convolution of the signs of `x` `(n, c, h, w)` with the signs of `w`
/// (`dims` `(F, C, FH, FW)`), zero padding counting as 0, computed from the definition
/// in `f32` on `±1.0` (exact: every partial sum is a small integer). Laid out
/// `(n, F, OH, OW)`.
#[allow(clippy::too_many_arguments)]
pub fn reference_conv(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    weights: &[f32],
    dims: [usize; 4],
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let sign = |v: f32| if v >= 0.0 { 1.0 } else { -1.0 };
    let [f, _, fh, fw] = dims;
    let oh = (h + 2 * pad - fh) / stride + 1;
    let ow = (w + 2 * pad - fw) / stride + 1;
    let mut out = vec![0.0; n * f * oh * ow];
    for i in 0..n {
        for fi in 0..f {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0.0;
                    for ch in 0..c {
                        for ky in 0..fh {
                            for kx in 0..fw {
                                let (y, xx) = (
                                    (oy * stride + ky) as isize - pad as isize,
                                    (ox * stride + kx) as isize - pad as isize,
                                );
                                if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                let v = x[((i * c + ch) * h + y as usize) * w + xx as usize];
                                s += sign(v) * sign(weights[((fi * c + ch) * fh + ky) * fw + kx]);
                            }
                        }
                    }
                    out[((i * f + fi) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    out
}
