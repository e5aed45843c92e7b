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
//!   counted in one `vpopcntq`; where a pixel's channels fit half a word (`C <= 32`),
//!   sixteen filters' halves in one `vpopcntd`;
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
#[cfg(target_arch = "x86_64")]
const BLOCKS: usize = 8;

/// Filters per block of the narrow AVX-512 kernel (channels in half a word): one
/// 512-bit register of `u32` counts.
const NARROW_LANES: usize = 16;

/// Blocks of filters one pass of the narrow AVX-512 kernel keeps in registers: 64
/// filters, one word of signs.
#[cfg(target_arch = "x86_64")]
const NARROW_BLOCKS: usize = 4;

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
    /// Where a pixel's channels leave most of its word empty (`C < 64`, and the window
    /// packed densely takes fewer words than a word per tap): the window's taps and
    /// channels packed densely, tap `t` channel `ch` at bit `t * C + ch`, as
    /// `[words(FH * FW * C)][F rounded up to LANES]`, for the pixels whose window lies
    /// inside the image, in the scalar and `popcnt` kernels. (The AVX-512 kernel counts
    /// tap by tap, which measures faster there: docs/RESULTS.md, "1 bit".) Empty
    /// elsewhere.
    dense: Vec<u64>,
    /// Where a pixel's channels fit half a word (`C <= 32`): the filters' low halves,
    /// `[FH * FW][F rounded up to NARROW_LANES]`, which the AVX-512 kernel counts sixteen
    /// to a register (the full words would leave half of every register empty). Empty
    /// elsewhere.
    narrow: Vec<u32>,
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
        let dense_words = words(fh * fw * c);
        let mut dense = if c < 64 && dense_words < fh * fw {
            vec![0u64; dense_words * fp]
        } else {
            Vec::new()
        };
        let fn_ = f.next_multiple_of(NARROW_LANES);
        let mut narrow = if c <= 32 { vec![0u32; fh * fw * fn_] } else { Vec::new() };
        for fi in 0..f {
            for ch in 0..c {
                for t in 0..fh * fw {
                    if w[(fi * c + ch) * fh * fw + t] >= 0.0 {
                        packed[(t * wpp + ch / 64) * fp + fi] |= 1 << (ch % 64);
                        if !narrow.is_empty() {
                            narrow[t * fn_ + fi] |= 1 << ch;
                        }
                        if !dense.is_empty() {
                            let bit = t * c + ch;
                            dense[bit / 64 * fp + fi] |= 1 << (bit % 64);
                        }
                    }
                }
            }
        }
        Ok(BinaryConv {
            dims,
            stride,
            pad,
            packed,
            dense,
            narrow,
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

    /// Filters whose counts one instruction of `kernel` (the scalar kernel where the CPU
    /// lacks it) computes on this layer: 16 for the AVX-512 kernel where a pixel's
    /// channels fit half a word (`C <= 32`), 8 for it elsewhere, 1 for the others.
    pub fn lanes(&self, kernel: PopcountKernel) -> usize {
        match kernel.usable() {
            PopcountKernel::Avx512Vpopcntdq if !self.narrow.is_empty() => NARROW_LANES,
            PopcountKernel::Avx512Vpopcntdq => LANES,
            PopcountKernel::Scalar | PopcountKernel::Popcnt => 1,
        }
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
        let g = self.check_input(x)?;
        let f = self.dims[0];
        let kernel = kernel.usable();
        let (per_in, per_out) = (x.h * x.w * words(x.c), g.out_h * g.out_w * f);
        let mut data = vec![0i32; x.n * per_out];
        // a valid geometry's output is never empty: per_out >= 1
        data.par_chunks_mut(per_out)
            .zip(x.data.par_chunks(per_in.max(1)))
            .for_each(|(out, img)| self.image(img, &g, Sink::Ints(out), kernel));
        Ok(IntGrid {
            n: x.n,
            h: g.out_h,
            w: g.out_w,
            c: f,
            data,
        })
    }

    /// The signs the thresholds `t` give the sums of `x` with the filters, packed
    /// (`(n, out_h, out_w)` pixels of `F` channels): [`BinaryConv::forward`] followed by
    /// [`Thresholds::signs`], without the sums leaving the registers.
    pub fn forward_signs(&self, x: &BitGrid, t: &Thresholds, kernel: PopcountKernel) -> Result<BitGrid, BinaryError> {
        let g = self.check_input(x)?;
        let f = self.dims[0];
        if t.channels != f {
            return Err(BinaryError::Invalid(format!(
                "thresholds of {} channels for {f} filters",
                t.channels
            )));
        }
        let kernel = kernel.usable();
        let (per_in, per_out) = (x.h * x.w * words(x.c), g.out_h * g.out_w * words(f));
        let mut data = vec![0u64; x.n * per_out];
        // a valid geometry's output is never empty: per_out >= 1
        data.par_chunks_mut(per_out)
            .zip(x.data.par_chunks(per_in.max(1)))
            .for_each(|(out, img)| self.image(img, &g, Sink::Bits(out, t), kernel));
        Ok(BitGrid {
            n: x.n,
            h: g.out_h,
            w: g.out_w,
            c: f,
            data,
        })
    }

    /// The geometry of `x` after checking that it fits the filters.
    fn check_input(&self, x: &BitGrid) -> Result<ConvGeometry, BinaryError> {
        let c = self.dims[1];
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
        Ok(self.geometry(x.h, x.w)?)
    }

    /// The largest sum in absolute value: every tap and channel agreeing.
    pub fn bound(&self) -> usize {
        let [_, c, fh, fw] = self.dims;
        fh * fw * c
    }

    /// One image's outputs.
    fn image(&self, img: &[u64], g: &ConvGeometry, sink: Sink<'_>, kernel: PopcountKernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `usable` checked the CPU has the instructions.
            PopcountKernel::Avx512Vpopcntdq if self.lanes(kernel) == NARROW_LANES => unsafe {
                self.image_avx512_narrow(img, g, sink)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            PopcountKernel::Avx512Vpopcntdq => unsafe { self.image_avx512(img, g, sink) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            PopcountKernel::Popcnt => unsafe { self.image_popcnt(img, g, sink) },
            _ => self.image_scalar(img, g, sink),
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

    /// Whether the pixel with window `(rows, cols)` runs on the densely packed window.
    #[inline(always)]
    fn runs_dense(&self, rows: &std::ops::Range<usize>, cols: &std::ops::Range<usize>) -> bool {
        !self.dense.is_empty() && rows.len() == self.dims[2] && cols.len() == self.dims[3]
    }

    /// The window of output pixel `(oy, ox)` (inside the image; one word per pixel)
    /// packed densely into `buf` (`words(FH * FW * C)` words), as the filters in
    /// `dense`.
    #[inline(always)]
    fn gather(&self, img: &[u64], g: &ConvGeometry, oy: usize, ox: usize, buf: &mut [u64]) {
        let [_, c, fh, fw] = self.dims;
        // the bits not yet written, in a register: `pending` low bits of `acc`
        let (mut acc, mut pending, mut k) = (0u128, 0, 0);
        for ky in 0..fh {
            let row = &img[(oy * g.stride + ky - g.pad) * g.w + ox * g.stride - g.pad..][..fw];
            for &v in row {
                acc |= u128::from(v) << pending;
                pending += c;
                if pending >= 64 {
                    buf[k] = acc as u64;
                    (acc, pending, k) = (acc >> 64, pending - 64, k + 1);
                }
            }
        }
        if pending > 0 {
            buf[k] = acc as u64;
        }
    }

    /// The loop of the scalar kernels: per output pixel and filter, the counts over the
    /// taps inside the image (over the densely packed window where there is one).
    #[inline(always)]
    fn image_loop(&self, img: &[u64], g: &ConvGeometry, mut sink: Sink<'_>) {
        let [f, c, fh, fw] = self.dims;
        let (wpp, fp) = (words(c), f.next_multiple_of(LANES));
        let mut counts = vec![0u32; f];
        let mut window = vec![0u64; words(fh * fw * c)];
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let (rows, cols) = self.window(g, oy, ox);
                counts.iter_mut().for_each(|v| *v = 0);
                let runs_dense = self.runs_dense(&rows, &cols);
                if runs_dense {
                    self.gather(img, g, oy, ox, &mut window);
                    for (k, &a) in window.iter().enumerate() {
                        for (n, &w) in counts.iter_mut().zip(&self.dense[k * fp..][..f]) {
                            *n += (a ^ w).count_ones();
                        }
                    }
                }
                for ky in rows.clone().filter(|_| !runs_dense) {
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
                let p = oy * g.out_w + ox;
                match &mut sink {
                    Sink::Ints(out) => {
                        for (o, &n) in out[p * f..][..f].iter_mut().zip(&counts) {
                            *o = full - 2 * n as i32;
                        }
                    }
                    Sink::Bits(out, t) => {
                        let o = &mut out[p * words(f)..][..words(f)];
                        for (j, &n) in counts.iter().enumerate() {
                            o[j / 64] |= u64::from(t.contains(j, full - 2 * n as i32)) << (j % 64);
                        }
                    }
                }
            }
        }
    }

    fn image_scalar(&self, img: &[u64], g: &ConvGeometry, sink: Sink<'_>) {
        self.image_loop(img, g, sink);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn image_popcnt(&self, img: &[u64], g: &ConvGeometry, sink: Sink<'_>) {
        self.image_loop(img, g, sink);
    }

    /// The AVX-512 kernel: per output pixel, up to 64 filters' counts in eight
    /// registers; each input word broadcast, XORed with eight filters' words, counted;
    /// the outputs `full - 2 * count` computed and narrowed to `i32` (or compared with
    /// the thresholds and gathered into one word of signs) in registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    unsafe fn image_avx512(&self, img: &[u64], g: &ConvGeometry, mut sink: Sink<'_>) {
        let f = self.dims[0];
        let fp = f.next_multiple_of(LANES);
        for first in (0..fp).step_by(LANES * BLOCKS) {
            // the number of registers of counts is a constant in each instance, so that
            // they stay in registers
            // SAFETY (each): the CPU has the instructions (the caller's contract).
            let blocks = ((fp - first) / LANES).min(BLOCKS);
            macro_rules! run {
                ($($b:literal)*) => {
                    match (blocks, words(self.dims[1]) == 1, &mut sink) {
                        $(($b, true, Sink::Ints(out)) => unsafe { self.blocks_avx512::<$b, true, false>(img, g, out, &mut [], None, first) },
                          ($b, false, Sink::Ints(out)) => unsafe { self.blocks_avx512::<$b, false, false>(img, g, out, &mut [], None, first) },
                          ($b, true, Sink::Bits(out, t)) => unsafe { self.blocks_avx512::<$b, true, true>(img, g, &mut [], out, Some(t), first) },
                          ($b, false, Sink::Bits(out, t)) => unsafe { self.blocks_avx512::<$b, false, true>(img, g, &mut [], out, Some(t), first) },)*
                        _ => unreachable!("1 to 8 blocks"),
                    }
                };
            }
            run!(1 2 3 4 5 6 7 8);
        }
    }

    /// [`BinaryConv::image_avx512`] for the `B` blocks of eight filters from `first`;
    /// `ONE`: each pixel's channels fit one word (`C <= 64`); `BITS`: the signs by the
    /// thresholds `t` written to `bits` (the word `first / 64` of each pixel), else the
    /// sums to `ints`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    unsafe fn blocks_avx512<const B: usize, const ONE: bool, const BITS: bool>(
        &self,
        img: &[u64],
        g: &ConvGeometry,
        ints: &mut [i32],
        bits: &mut [u64],
        t: Option<&Thresholds>,
        first: usize,
    ) {
        use std::arch::x86_64::*;
        let [f, c, _, fw] = self.dims;
        let (wpp, fp) = (if ONE { 1 } else { words(c) }, f.next_multiple_of(LANES));
        let mut tail = [0i32; LANES];
        let packed = self.packed.as_ptr();
        let mut bounds = [(_mm512_setzero_si512(), _mm512_setzero_si512()); B];
        if let (true, Some(t)) = (BITS, t) {
            for (b, bound) in bounds.iter_mut().enumerate() {
                // SAFETY: the thresholds hold `fp` of each bound (`channels == f`).
                *bound = unsafe {
                    (
                        _mm512_loadu_si512(t.lo.as_ptr().add(first + b * LANES).cast()),
                        _mm512_loadu_si512(t.hi.as_ptr().add(first + b * LANES).cast()),
                    )
                };
            }
        }
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
                let p = oy * g.out_w + ox;
                if BITS {
                    let mut word = 0u64;
                    for (b, (acc, (lo, hi))) in acc.iter().zip(&bounds).enumerate() {
                        let v = _mm512_sub_epi64(full, _mm512_slli_epi64::<1>(*acc));
                        let m = _mm512_mask_cmple_epi64_mask(_mm512_cmpge_epi64_mask(v, *lo), v, *hi);
                        word |= u64::from(m) << (b * LANES);
                    }
                    bits[p * words(f) + first / 64] = word;
                    continue;
                }
                let o = &mut ints[p * f..][..f];
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

    /// The AVX-512 kernel where a pixel's channels fit half a word (`C <= 32`): per
    /// output pixel, up to 64 filters' counts in four registers of sixteen `u32`; each
    /// input pixel's low half broadcast, XORed with sixteen filters' halves, counted in
    /// one `vpopcntd`; the outputs `full - 2 * count` (or their signs by the thresholds)
    /// computed in registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    unsafe fn image_avx512_narrow(&self, img: &[u64], g: &ConvGeometry, mut sink: Sink<'_>) {
        let fp = self.dims[0].next_multiple_of(NARROW_LANES);
        for first in (0..fp).step_by(NARROW_LANES * NARROW_BLOCKS) {
            let blocks = ((fp - first) / NARROW_LANES).min(NARROW_BLOCKS);
            macro_rules! run {
                ($($b:literal)*) => {
                    match (blocks, &mut sink) {
                        // SAFETY (each): the CPU has the instructions (the caller's contract).
                        $(($b, Sink::Ints(out)) => unsafe { self.narrow_avx512::<$b, false>(img, g, out, &mut [], None, first) },
                          ($b, Sink::Bits(out, t)) => unsafe { self.narrow_avx512::<$b, true>(img, g, &mut [], out, Some(t), first) },)*
                        _ => unreachable!("1 to 4 blocks"),
                    }
                };
            }
            run!(1 2 3 4);
        }
    }

    /// [`BinaryConv::image_avx512_narrow`] for the `B` blocks of sixteen filters from
    /// `first`; `BITS`: the signs by the thresholds `t` written to `bits` (the word
    /// `first / 64` of each pixel), else the sums to `ints`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    unsafe fn narrow_avx512<const B: usize, const BITS: bool>(
        &self,
        img: &[u64],
        g: &ConvGeometry,
        ints: &mut [i32],
        bits: &mut [u64],
        t: Option<&Thresholds>,
        first: usize,
    ) {
        use std::arch::x86_64::*;
        let [f, c, _, fw] = self.dims;
        let fp = f.next_multiple_of(NARROW_LANES);
        let mut tail = [0i32; NARROW_LANES];
        let narrow = self.narrow.as_ptr();
        let mut bounds = [(_mm512_setzero_si512(), _mm512_setzero_si512()); B];
        if let (true, Some(t)) = (BITS, t) {
            for (b, bound) in bounds.iter_mut().enumerate() {
                // sixteen filters' bounds as `i32` (they lie within the sums' range),
                // an empty range past the thresholds' padding
                let lanes = |v: &[i64], empty: i64| -> [i32; NARROW_LANES] {
                    std::array::from_fn(|j| v.get(first + b * NARROW_LANES + j).map_or(empty, |&v| v) as i32)
                };
                let (lo, hi) = (lanes(&t.lo, 1), lanes(&t.hi, 0));
                // SAFETY: each is sixteen `i32`.
                *bound = unsafe {
                    (
                        _mm512_loadu_si512(lo.as_ptr().cast()),
                        _mm512_loadu_si512(hi.as_ptr().cast()),
                    )
                };
            }
        }
        // 3x3 filters: every tap's registers of filters, loaded once
        let taps3 = (self.dims[2] == 3 && fw == 3).then(|| {
            std::array::from_fn::<_, 3, _>(|ky| {
                std::array::from_fn::<_, 3, _>(|kx| {
                    std::array::from_fn::<_, B, _>(|b| {
                        // SAFETY: the narrow filters hold `fp` halves per tap, and
                        // `first + B * 16 <= fp`.
                        unsafe { _mm512_loadu_si512(narrow.add((ky * 3 + kx) * fp + first + b * NARROW_LANES).cast()) }
                    })
                })
            })
        });
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let (rows, cols) = self.window(g, oy, ox);
                let full = _mm512_set1_epi32((rows.len() * cols.len() * c) as i32);
                let mut acc = [_mm512_setzero_si512(); B];
                match taps3.as_ref().filter(|_| rows.len() == 3 && cols.len() == 3) {
                    Some(taps) => {
                        // a 3x3 window inside the image: nine taps unrolled on the
                        // filters loaded before the loop
                        let at = (oy * g.stride - g.pad) * g.w + ox * g.stride - g.pad;
                        for (ky, taps) in taps.iter().enumerate() {
                            for (&pixel, taps) in img[at + ky * g.w..][..3].iter().zip(taps) {
                                let a = _mm512_set1_epi32(pixel as u32 as i32);
                                for (acc, &w) in acc.iter_mut().zip(taps) {
                                    *acc = _mm512_add_epi32(*acc, _mm512_popcnt_epi32(_mm512_xor_si512(a, w)));
                                }
                            }
                        }
                    }
                    None => {
                        for ky in rows.clone() {
                            let y = oy * g.stride + ky - g.pad;
                            let pixels = &img[y * g.w + ox * g.stride + cols.start - g.pad..][..cols.len()];
                            for (&pixel, kx) in pixels.iter().zip(cols.clone()) {
                                let a = _mm512_set1_epi32(pixel as u32 as i32);
                                // SAFETY: the narrow filters hold `fp` halves per tap, and
                                // `first + B * 16 <= fp`.
                                let row = unsafe { narrow.add((ky * fw + kx) * fp + first) };
                                for (b, acc) in acc.iter_mut().enumerate() {
                                    let w = unsafe { _mm512_loadu_si512(row.add(b * NARROW_LANES).cast()) };
                                    *acc = _mm512_add_epi32(*acc, _mm512_popcnt_epi32(_mm512_xor_si512(a, w)));
                                }
                            }
                        }
                    }
                }
                let p = oy * g.out_w + ox;
                if BITS {
                    let mut word = 0u64;
                    for (b, (acc, (lo, hi))) in acc.iter().zip(&bounds).enumerate() {
                        let v = _mm512_sub_epi32(full, _mm512_slli_epi32::<1>(*acc));
                        let m = _mm512_mask_cmple_epi32_mask(_mm512_cmpge_epi32_mask(v, *lo), v, *hi);
                        word |= u64::from(m) << (b * NARROW_LANES);
                    }
                    bits[p * words(f) + first / 64] = word;
                    continue;
                }
                let o = &mut ints[p * f..][..f];
                for (b, acc) in acc.iter().enumerate() {
                    let v = _mm512_sub_epi32(full, _mm512_slli_epi32::<1>(*acc));
                    let at = first + b * NARROW_LANES;
                    if at + NARROW_LANES <= f {
                        // SAFETY: `o` has room for 16 `i32` at `at`.
                        unsafe { _mm512_storeu_si512(o.as_mut_ptr().add(at).cast(), v) };
                    } else {
                        // SAFETY: `tail` is 16 `i32`.
                        unsafe { _mm512_storeu_si512(tail.as_mut_ptr().cast(), v) };
                        o[at..].copy_from_slice(&tail[..f - at]);
                    }
                }
            }
        }
    }
}

/// Where a kernel writes one image's outputs.
enum Sink<'a> {
    /// The sums, `(out_h, out_w, F)`.
    Ints(&'a mut [i32]),
    /// The signs of the thresholded sums, `(out_h, out_w, words(F))`, zeroed.
    Bits(&'a mut [u64], &'a Thresholds),
}

/// Most sums (channels times the range of sums) [`Thresholds::from_fn`] evaluates.
pub const MAX_THRESHOLD_EVALUATIONS: usize = 1 << 26;

/// The batch norm and sign that follow a binarized layer, folded into integer bounds
/// (FINN's thresholds): per channel, the range `lo..=hi` of the sums whose sign is `+1`.
///
/// Built from the float arithmetic itself ([`Thresholds::from_fn`] evaluates it on every
/// sum the layer can give), so that the signs are those of the float layers exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    channels: usize,
    bound: i32,
    /// Per channel (padded to a multiple of 8 with empty ranges), the least sum with
    /// sign `+1`.
    lo: Vec<i64>,
    /// The greatest.
    hi: Vec<i64>,
}

impl Thresholds {
    /// The thresholds of `plus(channel, sum)` (whether the sign of `sum` in `channel` is
    /// `+1`) for sums in `-bound..=bound`. An error if, in some channel, the sums with
    /// sign `+1` are not one range (a batch norm's are: its arithmetic is monotone in
    /// the sum), or if `channels * (2 * bound + 1)` exceeds
    /// [`MAX_THRESHOLD_EVALUATIONS`].
    pub fn from_fn(
        channels: usize,
        bound: usize,
        plus: impl Fn(usize, i32) -> bool,
    ) -> Result<Thresholds, BinaryError> {
        let span = bound.checked_mul(2).and_then(|v| v.checked_add(1)).filter(|&span| {
            channels
                .checked_mul(span)
                .is_some_and(|n| n <= MAX_THRESHOLD_EVALUATIONS)
        });
        let Some(span) = span else {
            return Err(BinaryError::Invalid(format!(
                "thresholds of {channels} channels over sums up to {bound}: too many to evaluate"
            )));
        };
        let bound = bound as i32;
        let padded = channels.next_multiple_of(LANES);
        let (mut lo, mut hi) = (vec![1i64; padded], vec![0i64; padded]);
        for ch in 0..channels {
            let mut range: Option<(i32, i32)> = None;
            let mut ended = false;
            for s in (0..span).map(|i| i as i32 - bound) {
                match (plus(ch, s), &mut range) {
                    (true, Some(_)) if ended => {
                        return Err(BinaryError::Invalid(format!(
                            "channel {ch}: the sums with sign +1 are not one range"
                        )))
                    }
                    (true, Some((_, last))) => *last = s,
                    (true, None) => range = Some((s, s)),
                    (false, Some(_)) => ended = true,
                    (false, None) => {}
                }
            }
            if let Some((a, b)) = range {
                (lo[ch], hi[ch]) = (a.into(), b.into());
            }
        }
        Ok(Thresholds {
            channels,
            bound,
            lo,
            hi,
        })
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Whether `sum` in channel `ch` has sign `+1`.
    pub fn contains(&self, ch: usize, sum: i32) -> bool {
        (self.lo[ch]..=self.hi[ch]).contains(&i64::from(sum))
    }

    /// The signs of the sums `x` (channels last), packed.
    pub fn signs(&self, x: &IntGrid) -> Result<BitGrid, BinaryError> {
        if x.c != self.channels || x.data.len() != x.n * x.h * x.w * x.c {
            return Err(BinaryError::Invalid(format!(
                "sums of {} channels ({} values for {}x{}x{}) for thresholds of {}",
                x.c,
                x.data.len(),
                x.n,
                x.h,
                x.w,
                self.channels
            )));
        }
        let wpp = words(x.c);
        let mut data = vec![0u64; x.n * x.h * x.w * wpp];
        data.par_chunks_mut(wpp.max(1))
            .zip(x.data.par_chunks(x.c.max(1)))
            .for_each(|(out, sums)| {
                for (ch, &v) in sums.iter().enumerate() {
                    out[ch / 64] |= u64::from(self.contains(ch, v)) << (ch % 64);
                }
            });
        Ok(BitGrid {
            n: x.n,
            h: x.h,
            w: x.w,
            c: x.c,
            data,
        })
    }

    /// Per word of a pixel's channels, the channels whose range reaches up to the bound
    /// (a bit set: the sign of a maximum is the OR of the signs) rather than down to
    /// it (clear: the AND); `None` if some channel's range reaches neither, so that
    /// the sign of a maximum does not follow from the signs. An empty or full range is
    /// both.
    fn pool_masks(&self) -> Option<Vec<u64>> {
        let mut masks = vec![0u64; words(self.channels)];
        for ch in 0..self.channels {
            let (lo, hi) = (self.lo[ch], self.hi[ch]);
            if lo > hi || hi >= i64::from(self.bound) {
                masks[ch / 64] |= 1 << (ch % 64);
            } else if lo > -i64::from(self.bound) {
                return None;
            }
        }
        Some(masks)
    }

    /// Whether [`Thresholds::max_pool`] can pool these channels' signs: whether every
    /// range reaches up or down to the bound.
    pub fn poolable(&self) -> bool {
        self.pool_masks().is_some()
    }

    /// The signs of the max-pooled sums (`ph x pw` windows, `stride`, `pad`; padding
    /// never wins) from the signs of the sums: per channel the OR of a window's signs
    /// where the range of `+1` reaches up to the bound, the AND where it reaches down.
    /// An error if the thresholds are not [`Thresholds::poolable`] or the window does
    /// not fit.
    pub fn max_pool(
        &self,
        x: &BitGrid,
        ph: usize,
        pw: usize,
        stride: usize,
        pad: usize,
    ) -> Result<BitGrid, BinaryError> {
        let masks = self.pool_masks().ok_or_else(|| {
            BinaryError::Invalid("a channel whose range of +1 reaches neither end cannot be pooled on signs".into())
        })?;
        let wpp = words(x.c);
        if x.c != self.channels || x.data.len() != x.n * x.h * x.w * wpp {
            return Err(BinaryError::Invalid(format!(
                "signs of {} channels for thresholds of {}",
                x.c, self.channels
            )));
        }
        let g = ConvGeometry::new(x.c, x.h, x.w, ph, pw, stride, pad)?;
        if pad >= ph || pad >= pw {
            return Err(BinaryError::Invalid(format!(
                "padding {pad} must be smaller than the window"
            )));
        }
        let (oh, ow) = (g.out_h, g.out_w);
        let mut data = vec![0u64; x.n * oh * ow * wpp];
        if !data.is_empty() {
            data.par_chunks_mut(oh * ow * wpp)
                .zip(x.data.par_chunks((x.h * x.w * wpp).max(1)))
                .for_each(|(out, img)| {
                    let (mut any, mut all) = (vec![0u64; wpp], vec![0u64; wpp]);
                    for oy in 0..oh {
                        for ox in 0..ow {
                            any.fill(0);
                            all.fill(u64::MAX);
                            let inside = |o: usize, k: usize, side: usize| {
                                (o * stride + k).checked_sub(pad).filter(|&v| v < side)
                            };
                            for y in (0..ph).filter_map(|ky| inside(oy, ky, x.h)) {
                                for xx in (0..pw).filter_map(|kx| inside(ox, kx, x.w)) {
                                    for (k, &v) in img[(y * x.w + xx) * wpp..][..wpp].iter().enumerate() {
                                        any[k] |= v;
                                        all[k] &= v;
                                    }
                                }
                            }
                            let o = &mut out[(oy * ow + ox) * wpp..][..wpp];
                            for (k, o) in o.iter_mut().enumerate() {
                                let used = if (k + 1) * 64 <= x.c {
                                    u64::MAX
                                } else {
                                    (1u64 << (x.c % 64)) - 1
                                };
                                *o = ((any[k] & masks[k]) | (all[k] & !masks[k])) & used;
                            }
                        }
                    }
                });
        }
        Ok(BitGrid {
            n: x.n,
            h: oh,
            w: ow,
            c: x.c,
            data,
        })
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
