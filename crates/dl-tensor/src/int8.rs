//! 8-bit integer convolution, the kernels of the book's "8 bits are enough" remark
//! (chapter 8) and of post-training quantization.
//!
//! Values are stored as integers and a scale: an activation `x` as a `u8` `q` with
//! `x = scale * (q - zero_point)` ([`QuantParams`], one per tensor), a filter's weights
//! as `i8` with one symmetric scale per output channel ([`quantize_weights`]). A
//! convolution ([`QConv`]) sums `u8 x i8` products into `i32` accumulators, adds an
//! `i32` bias, and requantizes: one `f32` multiply per output and one rounding (ties
//! to even) back to `u8`, with the ReLU as the lower clamp; or, for a network's last
//! layer, the `f32` value itself. An affine layer is the same convolution with a 1x1
//! filter over a batch laid out as one row of pixels.
//!
//! Activations are NHWC (channels last), so the products of a filter tap are a
//! contiguous run of channels; a convolution reads them straight from the padded image
//! with no lowered matrix. The accumulators are computed by one of three kernels
//! ([`Int8Kernel`]), chosen at run time, which give the same `i32` sums bit for bit:
//!
//! * `avx512-vnni`: `vpdpbusd`, sixteen output channels of four `u8 x i8` products per
//!   instruction;
//! * `avx2`: `vpmaddubsw` multiplies the bytes and sums them in pairs into `i16`, and
//!   `vpmaddwd` by ones sums those pairs into `i32`, four products per lane as VNNI's.
//!   The pair sums saturate unless every weight is in `-64..=64` (`2 * 255 * 64 <=
//!   32767`), which [`quantize_weights`] keeps them in (as oneDNN does on CPUs without
//!   VNNI); a convolution with a weight outside it widens the `u8` and `i8` values to
//!   `i16` and sums them in pairs by `vpmaddwd` alone, half as many products per
//!   instruction.
//! * `scalar`: plain loops, the reference; and [`reference_accumulate`], written from
//!   the definition without packing or padding, which all three are tested against.
//!
//! ```
//! use dl_tensor::int8::{quantize_weights, Int8Kernel, Int8Scratch, QConv, QuantParams, Requantize};
//!
//! // a 3x3 convolution, 2 channels in, 3 filters out, on a 5x5 image (NHWC)
//! let w: Vec<f32> = (0..3 * 2 * 9).map(|i| (i as f32 - 27.0) / 30.0).collect();
//! let (wq, w_scale) = quantize_weights(&w, 3);
//! let input = QuantParams::from_range(0.0, 1.0);
//! let conv = QConv::new(wq, [3, 2, 3, 3], 1, 1, vec![0; 3], input.zero_point).unwrap();
//! let x: Vec<u8> = (0..5 * 5 * 2).map(|i| (i * 5) as u8).collect();
//! let output = QuantParams::from_range(0.0, 4.0);
//! let multiplier: Vec<f32> = w_scale.iter().map(|s| input.scale * s / output.scale).collect();
//! let mut y = vec![0u8; 5 * 5 * 3];
//! let requantize = Requantize { multiplier: &multiplier, zero_point: output.zero_point, relu: true };
//! let mut scratch = Int8Scratch::default();
//! conv.forward_u8(&x, 5, 5, requantize, &mut y, &mut scratch, Int8Kernel::Scalar).unwrap();
//! // every kernel this CPU has gives the same bytes
//! for kernel in Int8Kernel::supported_levels() {
//!     let mut z = vec![0u8; y.len()];
//!     conv.forward_u8(&x, 5, 5, requantize, &mut z, &mut scratch, kernel).unwrap();
//!     assert_eq!(z, y);
//! }
//! ```

use crate::{ConvGeometry, Isa};

/// Filters per block of the packed weights: one 512-bit register of `i32` sums.
const BLOCK: usize = 16;

/// The kernel that computes the `i32` sums of a [`QConv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Int8Kernel {
    /// Plain loops: any CPU, and the reference of the other two.
    Scalar,
    /// AVX2: byte products summed in pairs (`vpmaddubsw`), or, for weights beyond
    /// `-64..=64`, `i16` products summed in pairs (`vpmaddwd`).
    Avx2,
    /// AVX-512 VNNI: four `u8 x i8` products summed per lane (`vpdpbusd`).
    Avx512Vnni,
}

impl Int8Kernel {
    /// Every kernel, narrowest first.
    pub const ALL: [Int8Kernel; 3] = [Int8Kernel::Scalar, Int8Kernel::Avx2, Int8Kernel::Avx512Vnni];

    /// `"scalar"`, `"avx2"` or `"avx512-vnni"`.
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Scalar => "scalar",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU has its instructions.
    pub fn supported(self) -> bool {
        match self {
            Int8Kernel::Scalar => true,
            Int8Kernel::Avx2 => Isa::Avx2.supported(),
            Int8Kernel::Avx512Vnni => Isa::Avx512.supported() && vnni(),
        }
    }

    /// The widest kernel this CPU has at or below the instruction-set level `isa`
    /// (`Avx512` without VNNI runs the AVX2 kernel).
    pub fn for_isa(isa: Isa) -> Int8Kernel {
        Int8Kernel::ALL
            .into_iter()
            .rev()
            .find(|k| {
                k.supported()
                    && match k {
                        Int8Kernel::Scalar => true,
                        Int8Kernel::Avx2 => isa >= Isa::Avx2,
                        Int8Kernel::Avx512Vnni => isa >= Isa::Avx512,
                    }
            })
            .unwrap_or(Int8Kernel::Scalar)
    }

    /// The kernel at [`Isa::active`] (which `DLFS_SIMD` overrides).
    pub fn active() -> Int8Kernel {
        Int8Kernel::for_isa(Isa::active())
    }

    /// `self` where the CPU has it, else the scalar kernel.
    fn usable(self) -> Int8Kernel {
        if self.supported() {
            self
        } else {
            Int8Kernel::Scalar
        }
    }

    /// Every kernel this CPU has, narrowest first.
    pub fn supported_levels() -> Vec<Int8Kernel> {
        Int8Kernel::ALL.into_iter().filter(|k| k.supported()).collect()
    }
}

impl std::fmt::Display for Int8Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Why an integer convolution cannot be built or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Int8Error {
    /// The parts do not fit each other.
    #[error("int8 convolution: {0}")]
    Invalid(String),
    /// The input does not fit the filters.
    #[error(transparent)]
    Geometry(#[from] crate::GeometryError),
}

/// How a tensor of real values is stored in `u8`: `x = scale * (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantParams {
    /// The real step between two neighbouring integers (positive).
    pub scale: f32,
    /// The integer that stands for 0.0 (exactly, so that zero padding is exact).
    pub zero_point: u8,
}

impl QuantParams {
    /// The parameters that spread `[min, max]`, widened to hold 0, over `0..=255`: a
    /// zero point of 0 when `min >= 0` (after a ReLU, or for pixels). A range that is a
    /// single point, or not finite, gets scale 1.
    pub fn from_range(min: f32, max: f32) -> QuantParams {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let span = hi - lo;
        let scale = if span.is_finite() && span > 0.0 {
            span / 255.0
        } else {
            1.0
        };
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        QuantParams { scale, zero_point }
    }

    /// `x` as the nearest integer (ties to even), clamped to `0..=255` (NaN to 0).
    #[inline]
    pub fn quantize(self, x: f32) -> u8 {
        let v = (x / self.scale).round_ties_even() + f32::from(self.zero_point);
        // an integer, or infinite, or NaN (which fails the test and becomes 0)
        round_to_byte(if v > 0.0 { v.min(255.0) } else { 0.0 })
    }

    /// [`QuantParams::quantize`] of every value of `x` into `out`, by the plain loop
    /// compiled for `kernel`'s instruction set (the same bytes at every level).
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn quantize_into(self, x: &[f32], out: &mut [u8], kernel: Int8Kernel) {
        assert_eq!(x.len(), out.len(), "quantize_into: lengths");
        match kernel.usable() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `usable()` checked the CPU has AVX-512 F.
            Int8Kernel::Avx512Vnni => unsafe { quantize_avx512(self, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2.
            Int8Kernel::Avx2 => unsafe { quantize_avx2(self, x, out) },
            _ => quantize_plain(self, x, out),
        }
    }

    /// The real value `q` stands for.
    pub fn dequantize(self, q: u8) -> f32 {
        self.scale * (f32::from(q) - f32::from(self.zero_point))
    }
}

#[inline(always)]
fn quantize_plain(q: QuantParams, x: &[f32], out: &mut [u8]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = q.quantize(v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(q: QuantParams, x: &[f32], out: &mut [u8]) {
    quantize_plain(q, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_avx512(q: QuantParams, x: &[f32], out: &mut [u8]) {
    quantize_plain(q, x, out)
}

/// The largest magnitude [`quantize_weights`] gives a weight: 129 levels, so that AVX2's
/// `vpmaddubsw` sums two products of a byte and a weight without saturating.
pub const WEIGHT_MAX: i8 = 64;

/// Symmetric per-output-channel quantization of `filters` rows of weights: each row's
/// scale is its largest magnitude over [`WEIGHT_MAX`] (1 for a row of zeros), and each
/// weight the nearest integer in `-64..=64` (ties to even). Returns the integers and the
/// scales.
pub fn quantize_weights(w: &[f32], filters: usize) -> (Vec<i8>, Vec<f32>) {
    let top = f32::from(WEIGHT_MAX);
    let per = w.len().checked_div(filters).unwrap_or(0);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(filters);
    for row in w.chunks(per.max(1)).take(filters) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max.is_finite() && max > 0.0 { max / top } else { 1.0 };
        q.extend(row.iter().map(|v| (v / scale).round_ties_even().clamp(-top, top) as i8));
        scales.push(scale);
    }
    (q, scales)
}

/// How `i32` sums become `u8` outputs: `q = zero_point + round(sum * multiplier[f])`
/// (ties to even), clamped to `zero_point..=255` with `relu`, else `0..=255`.
#[derive(Debug, Clone, Copy)]
pub struct Requantize<'a> {
    /// One per filter: input scale times weight scale over output scale.
    pub multiplier: &'a [f32],
    /// The output's zero point.
    pub zero_point: u8,
    /// Clamp at the zero point (real 0).
    pub relu: bool,
}

impl Requantize<'_> {
    /// The output byte of filter `f` for the sum `acc` (bias included).
    #[inline]
    pub fn apply(&self, acc: i32, f: usize) -> u8 {
        let z = f32::from(self.zero_point);
        let lo = if self.relu { 0.0 } else { -z };
        round_to_byte((acc as f32 * self.multiplier[f]).max(lo).min(255.0 - z)).wrapping_add(self.zero_point)
    }
}

/// `v` in `-255.0..=255.0` rounded to the nearest integer, ties to even, as a byte
/// (wrapping). Adding 1.5 * 2^23 rounds `v` to an integer by the FPU's own rule
/// (nearest, ties to even) and leaves that integer in the low bits of the sum's
/// mantissa: the same in every kernel and vectorizable, unlike
/// `f32::round_ties_even` and `as` casts on a baseline x86-64 target.
#[inline(always)]
fn round_to_byte(v: f32) -> u8 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as u8
}

/// Scratch memory of [`QConv`]: the padded input image (and the same widened to 16
/// bits for the AVX2 kernel), and the lowered rows of an input with fewer than 4
/// channels.
#[derive(Debug, Default, Clone)]
pub struct Int8Scratch {
    padded: Vec<u8>,
    /// What `padded` holds the border of: `(h, w, c, pad, cp, zero)`. An image of the
    /// same geometry only rewrites the inside.
    padded_for: Option<(usize, usize, usize, usize, usize, u8)>,
    image: Vec<u8>,
    wide: Vec<u16>,
}

impl Int8Scratch {
    /// The bytes it holds (its buffers' capacities).
    pub fn bytes(&self) -> usize {
        self.padded.capacity() + self.image.capacity() + 2 * self.wide.capacity()
    }
}

/// A convolution in integers: `i8` filters `(F, C, FH, FW)`, an `i32` bias, and the
/// input's zero point, packed for every [`Int8Kernel`].
#[derive(Debug, Clone)]
pub struct QConv {
    dims: [usize; 4],
    stride: usize,
    pad: usize,
    /// Channels rounded up to a multiple of 4 (the packed layout's unit); when
    /// `lowered`, `C*FH*FW` rounded up.
    cp: usize,
    /// Whether the input is lowered to a row per output pixel (fewer than 4 channels).
    lowered: bool,
    input_zero: u8,
    weights: Vec<i8>,
    /// The bias less `input_zero` times each filter's weight sum, in blocks of 16
    /// (zeros beyond the filters): the kernels' starting sums.
    bias: Vec<[i32; BLOCK]>,
    /// `[F/16][FH][FW][CP/4][16][4]` (`[F/16][CP/4][16][4]` when `lowered`), zeros
    /// beyond the filters and channels.
    packed: Vec<i8>,
    /// Whether every weight is in `-64..=64`, where the AVX2 kernel's `vpmaddubsw`
    /// cannot saturate.
    narrow: bool,
    /// `[F/16][FH][FW][CP/2][16][2]`, the same widened, for `vpmaddwd` (empty when
    /// `narrow`; only on x86-64, where the AVX2 kernel is).
    #[cfg(target_arch = "x86_64")]
    packed16: Vec<i16>,
}

/// The largest `C*FH*FW` whose `i32` sums cannot overflow, whatever the bytes:
/// `255 * 128 * k <= 2^31 - 1` (an `i8` weight can be -128).
pub const MAX_DEPTH: usize = (i32::MAX as usize) / (255 * 128);

impl QConv {
    /// The convolution of `weights` `(F, C, FH, FW)` (`dims`) with `bias` (one per
    /// filter, in units of input scale times weight scale), on inputs whose zero point
    /// is `input_zero`.
    pub fn new(
        weights: Vec<i8>,
        dims: [usize; 4],
        stride: usize,
        pad: usize,
        bias: Vec<i32>,
        input_zero: u8,
    ) -> Result<QConv, Int8Error> {
        use Int8Error::Invalid;
        let [f, c, fh, fw] = dims;
        if dims.contains(&0) || stride == 0 {
            return Err(Invalid(format!("filters {dims:?} with stride {stride}")));
        }
        // (checked: the dimensions may come from a file)
        let depth = c.checked_mul(fh).and_then(|v| v.checked_mul(fw)).unwrap_or(usize::MAX);
        if Some(weights.len()) != f.checked_mul(depth) || bias.len() != f {
            return Err(Invalid(format!(
                "{} weights and {} biases for filters {dims:?}",
                weights.len(),
                bias.len()
            )));
        }
        if depth > MAX_DEPTH {
            return Err(Invalid(format!(
                "{depth} products per output could overflow an i32 sum (at most {MAX_DEPTH})"
            )));
        }
        // Fewer than 4 channels would leave most of each 4-byte group empty: such an
        // input is lowered to one row of `FH*FW*C` values per output pixel instead,
        // and the filters become 1x1 over that row.
        let lowered = c < 4 && fh * fw > 1;
        let (taps, cp) = if lowered {
            (1, depth.next_multiple_of(4))
        } else {
            (fh * fw, c.next_multiple_of(4))
        };
        let blocks = f.div_ceil(BLOCK);
        let mut packed = vec![0i8; blocks * taps * cp * BLOCK];
        let narrow = weights.iter().all(|v| (-WEIGHT_MAX..=WEIGHT_MAX).contains(v));
        #[cfg(target_arch = "x86_64")]
        let mut packed16 = vec![0i16; if narrow { 0 } else { packed.len() }];
        for fi in 0..f {
            let (b, lane) = (fi / BLOCK, fi % BLOCK);
            for ci in 0..c {
                for i in 0..fh {
                    for j in 0..fw {
                        let v = weights[((fi * c + ci) * fh + i) * fw + j];
                        let (tap, ch) = if lowered {
                            (b, (i * fw + j) * c + ci)
                        } else {
                            ((b * fh + i) * fw + j, ci)
                        };
                        packed[((tap * cp + ch - ch % 4) * BLOCK + lane * 4) + ch % 4] = v;
                        #[cfg(target_arch = "x86_64")]
                        if !narrow {
                            packed16[((tap * cp + ch - ch % 2) * BLOCK + lane * 2) + ch % 2] = i16::from(v);
                        }
                    }
                }
            }
        }
        let mut blocks_bias = vec![[0i32; BLOCK]; blocks];
        for (fi, (&b, row)) in bias.iter().zip(weights.chunks_exact(depth)).enumerate() {
            let sum: i32 = row.iter().map(|&v| i32::from(v)).sum();
            blocks_bias[fi / BLOCK][fi % BLOCK] = b.wrapping_sub(i32::from(input_zero) * sum);
        }
        let bias = blocks_bias;
        Ok(QConv {
            dims,
            stride,
            pad,
            cp,
            lowered,
            input_zero,
            weights,
            bias,
            packed,
            narrow,
            #[cfg(target_arch = "x86_64")]
            packed16,
        })
    }

    /// `(F, C, FH, FW)`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// The stride.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The zero padding.
    pub fn pad(&self) -> usize {
        self.pad
    }

    /// The input zero point it was built for.
    pub fn input_zero(&self) -> u8 {
        self.input_zero
    }

    /// The weights `(F, C, FH, FW)` as given.
    pub fn weights(&self) -> &[i8] {
        &self.weights
    }

    /// The geometry of an `h x w` input.
    pub fn geometry(&self, h: usize, w: usize) -> Result<ConvGeometry, Int8Error> {
        let [_, c, fh, fw] = self.dims;
        Ok(ConvGeometry::new(c, h, w, fh, fw, self.stride, self.pad)?)
    }

    /// The `i32` sums (bias included) of one NHWC image `x` `(h, w, C)` into `out`
    /// `(OH, OW, F)`.
    ///
    /// # Panics
    /// If the slice lengths do not fit the geometry.
    pub fn accumulate(
        &self,
        x: &[u8],
        h: usize,
        w: usize,
        out: &mut [i32],
        scratch: &mut Int8Scratch,
        kernel: Int8Kernel,
    ) -> Result<(), Int8Error> {
        let f = self.dims[0];
        self.run(x, h, w, out.len(), scratch, kernel, None, |p0, rows, f0, acc| {
            let n = BLOCK.min(f - f0);
            for (r, a) in acc.iter().take(rows).enumerate() {
                let at = (p0 + r) * f + f0;
                out[at..at + n].copy_from_slice(&a[..n]);
            }
        })
    }

    /// One NHWC image `x` `(h, w, C)` into `out` `(OH, OW, F)` of bytes, requantized.
    ///
    /// # Panics
    /// If the slice lengths do not fit the geometry or `requantize` has not one
    /// multiplier per filter.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_u8(
        &self,
        x: &[u8],
        h: usize,
        w: usize,
        requantize: Requantize<'_>,
        out: &mut [u8],
        scratch: &mut Int8Scratch,
        kernel: Int8Kernel,
    ) -> Result<(), Int8Error> {
        let f = self.dims[0];
        assert_eq!(requantize.multiplier.len(), f, "QConv: one multiplier per filter");
        let kernel = kernel.usable();
        let z = requantize.zero_point;
        let lo = if requantize.relu { 0.0 } else { -f32::from(z) };
        let hi = 255.0 - f32::from(z);
        let m = blocks_of(requantize.multiplier);
        if kernel == Int8Kernel::Avx512Vnni {
            // the kernel requantizes its sums in registers and stores the bytes
            let out_len = out.len();
            let mut direct = DirectBytes {
                out,
                f,
                m: &m,
                lo,
                hi,
                z,
            };
            return self.run(x, h, w, out_len, scratch, kernel, Some(&mut direct), |_, _, _, _| {
                unreachable!("the VNNI kernels store their bytes themselves")
            });
        }
        let mut bytes = [[0u8; BLOCK]; TILE];
        self.run(x, h, w, out.len(), scratch, kernel, None, |p0, rows, f0, acc| {
            let m = &m[f0 / BLOCK];
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `run` hands out only kernels the CPU has.
                Int8Kernel::Avx512Vnni => unsafe { requantize_tile_avx512(acc, m, lo, hi, z, &mut bytes) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Int8Kernel::Avx2 => unsafe { requantize_tile_avx2(acc, m, lo, hi, z, &mut bytes) },
                _ => requantize_tile(acc, m, lo, hi, z, &mut bytes),
            }
            let n = BLOCK.min(f - f0);
            for (r, b) in bytes.iter().take(rows).enumerate() {
                let at = (p0 + r) * f + f0;
                if n == BLOCK {
                    // a fixed-size copy: one vector move, not a call to memcpy
                    let dst: &mut [u8; BLOCK] = (&mut out[at..at + BLOCK]).try_into().expect("16 bytes");
                    *dst = *b;
                } else {
                    out[at..at + n].copy_from_slice(&b[..n]);
                }
            }
        })
    }

    /// One NHWC image `x` `(h, w, C)` into `out` `(OH, OW, F)` of real values:
    /// `sum * multiplier[f]` (input scale times weight scale), with the ReLU if asked.
    ///
    /// # Panics
    /// If the slice lengths do not fit the geometry or there is not one multiplier
    /// per filter.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_f32(
        &self,
        x: &[u8],
        h: usize,
        w: usize,
        multiplier: &[f32],
        relu: bool,
        out: &mut [f32],
        scratch: &mut Int8Scratch,
        kernel: Int8Kernel,
    ) -> Result<(), Int8Error> {
        let f = self.dims[0];
        assert_eq!(multiplier.len(), f, "QConv: one multiplier per filter");
        self.run(x, h, w, out.len(), scratch, kernel, None, |p0, rows, f0, acc| {
            let n = BLOCK.min(f - f0);
            for (r, a) in acc.iter().take(rows).enumerate() {
                let at = (p0 + r) * f + f0;
                for ((o, &a), &m) in out[at..at + n].iter_mut().zip(a).zip(&multiplier[f0..]) {
                    let v = a as f32 * m;
                    *o = if relu { v.max(0.0) } else { v };
                }
            }
        })
    }

    /// Pads `x`, runs `kernel` over every tile of output pixels and filter block, and
    /// hands each tile's sums (bias included) to `sink(first pixel, pixels, first
    /// filter, sums)`, or, with `direct` and the VNNI kernel, has the kernel store
    /// them as bytes.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[u8],
        h: usize,
        w: usize,
        out_len: usize,
        scratch: &mut Int8Scratch,
        kernel: Int8Kernel,
        mut direct: Option<&mut DirectBytes<'_>>,
        mut sink: impl FnMut(usize, usize, usize, &[[i32; BLOCK]; TILE]),
    ) -> Result<(), Int8Error> {
        let [f, c, fh, fw] = self.dims;
        let g = self.geometry(h, w)?;
        assert_eq!(x.len(), h * w * c, "QConv: input length");
        assert_eq!(out_len, g.out_h * g.out_w * f, "QConv: output length");
        let (cp, s, pad) = (self.cp, self.stride, self.pad);
        let pixels = g.out_h * g.out_w;
        let wp = w + 2 * pad;
        let out_w = g.out_w;
        let lowered = self.lowered;
        // where output pixel `p`'s window starts in the padded image (or its lowered row)
        let offset = move |p: usize| {
            if lowered {
                p * cp
            } else {
                ((p / out_w) * s * wp + (p % out_w) * s) * cp
            }
        };
        let taps: Vec<usize> = if self.lowered {
            // one row of `FH*FW*C` values per output pixel, gathered tap by tap from
            // the padded image (`C` values per pixel there)
            let image = &mut scratch.image;
            image.clear();
            image.resize((h + 2 * pad) * wp * c, self.input_zero);
            pad_inside(x, h, w, c, pad, c, image);
            // 8 bytes of slack after the image and the rows: each filter row's `FW*C`
            // values move as one 8-byte word when they fit in one, whose surplus bytes
            // the next filter row (or pixel) overwrites, or that land beyond `C*FH*FW`
            // where the packed weights are zero
            image.resize(image.len() + 8, 0);
            // (not cleared: every byte a nonzero weight meets is written below)
            scratch.padded.resize(pixels * cp + 8, 0);
            scratch.padded_for = None;
            // slices, so that the loop does not reload the vectors' pointers
            let (image, col): (&[u8], &mut [u8]) = (image, &mut scratch.padded);
            let run = fw * c;
            if run <= 8 {
                // the last word read starts at the last window's last filter row, which
                // ends `run` bytes into the image's last row, and the last word written
                // at the last pixel's last row: both inside the 8 bytes of slack
                let last_from = (((g.out_h - 1) * s + fh - 1) * wp + (g.out_w - 1) * s) * c;
                let last_to = (pixels - 1) * cp + (fh - 1) * run;
                assert!(last_from + 8 <= image.len() && last_to + 8 <= col.len());
                let (src, dst) = (image.as_ptr(), col.as_mut_ptr());
                let mut p = 0;
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let from = (oy * s * wp + ox * s) * c;
                        for i in 0..fh {
                            // SAFETY: at most `last_from` and `last_to` (asserted above);
                            // the two buffers are distinct.
                            unsafe {
                                std::ptr::copy_nonoverlapping(src.add(from + i * wp * c), dst.add(p * cp + i * run), 8)
                            };
                        }
                        p += 1;
                    }
                }
            } else {
                let mut p = 0;
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        for i in 0..fh {
                            let from = ((oy * s + i) * wp + ox * s) * c;
                            let to = p * cp + i * run;
                            col[to..to + run].copy_from_slice(&image[from..from + run]);
                        }
                        p += 1;
                    }
                }
            }
            vec![0]
        } else {
            let key = Some((h, w, c, pad, cp, self.input_zero));
            if scratch.padded_for != key {
                scratch.padded.clear();
                scratch.padded.resize((h + 2 * pad) * wp * cp, self.input_zero);
                scratch.padded_for = key;
            }
            pad_inside(x, h, w, c, pad, cp, &mut scratch.padded);
            (0..fh).flat_map(|i| (0..fw).map(move |j| (i * wp + j) * cp)).collect()
        };
        let padded = &scratch.padded;
        // the AVX2 kernel for weights beyond -64..=64 reads the input widened, two
        // channels as one 32-bit word
        let wide_avx2 = kernel == Int8Kernel::Avx2 && !self.narrow;
        if wide_avx2 {
            scratch.wide.clear();
            scratch.wide.extend(padded.iter().map(|&v| u16::from(v)));
        }
        let kernel = kernel.usable();
        // only the x86-64 VNNI kernel stores bytes itself
        #[cfg(not(target_arch = "x86_64"))]
        let _ = &mut direct;
        let block_len = taps.len() * cp * BLOCK;
        let mut acc = [[0i32; BLOCK]; TILE];
        #[cfg(target_arch = "x86_64")]
        let mut acc2 = [[0i32; BLOCK]; TILE];
        for p0 in (0..pixels).step_by(TILE) {
            let rows = TILE.min(pixels - p0);
            let mut offs = [0usize; TILE];
            for (r, o) in offs.iter_mut().enumerate() {
                *o = offset(p0 + r.min(rows - 1));
            }
            let blocks = f.div_ceil(BLOCK);
            let mut b = 0;
            while b < blocks {
                let tile = Tile {
                    x: padded,
                    #[cfg(target_arch = "x86_64")]
                    x16: if wide_avx2 { &scratch.wide } else { &[] },
                    offs: &offs,
                    taps: &taps,
                    cp,
                };
                let bias = &self.bias[b];
                let w = |b: usize| &self.packed[b * block_len..][..block_len];
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `supported()` checked the CPU has AVX-512F and VNNI; `Tile`
                    // reads only inside the padded image (see `Tile`).
                    Int8Kernel::Avx512Vnni if b + 1 < blocks => {
                        let store = direct.as_deref_mut().map(|d| (d, p0, rows, b * BLOCK));
                        let stored = store.is_some();
                        unsafe { tile.vnni2([w(b), w(b + 1)], [bias, &self.bias[b + 1]], &mut acc, &mut acc2, store) };
                        if !stored {
                            sink(p0, rows, b * BLOCK, &acc);
                            sink(p0, rows, (b + 1) * BLOCK, &acc2);
                        }
                        b += 2;
                        continue;
                    }
                    Int8Kernel::Scalar => tile.scalar(w(b), bias, &mut acc),
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `supported()` checked the CPU has AVX2.
                    Int8Kernel::Avx2 if self.narrow => unsafe { tile.avx2_bytes(w(b), bias, &mut acc) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Int8Kernel::Avx2 => unsafe {
                        tile.avx2(&self.packed16[b * block_len..][..block_len], bias, &mut acc)
                    },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above, AVX-512F and VNNI.
                    Int8Kernel::Avx512Vnni => {
                        let store = direct.as_deref_mut().map(|d| (d, p0, rows, b * BLOCK));
                        if store.is_some() {
                            unsafe { tile.vnni(w(b), bias, &mut acc, store) };
                            b += 1;
                            continue;
                        }
                        unsafe { tile.vnni(w(b), bias, &mut acc, None) }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => tile.scalar(w(b), bias, &mut acc),
                }
                sink(p0, rows, b * BLOCK, &acc);
                b += 1;
            }
        }
        Ok(())
    }
}

/// `x` `(h, w, c)` into the inside of `out` `(h + 2 pad, w + 2 pad, cp)`, whose
/// border and channels beyond `c` hold the zero point already.
#[allow(clippy::too_many_arguments)]
fn pad_inside(x: &[u8], h: usize, w: usize, c: usize, pad: usize, cp: usize, out: &mut [u8]) {
    let wp = w + 2 * pad;
    debug_assert_eq!(out.len(), (h + 2 * pad) * wp * cp);
    for (yi, row) in x.chunks_exact(w * c).enumerate() {
        let at = ((yi + pad) * wp + pad) * cp;
        if c == cp {
            out[at..at + w * c].copy_from_slice(row);
        } else {
            for (xi, px) in row.chunks_exact(c).enumerate() {
                out[at + xi * cp..at + xi * cp + c].copy_from_slice(px);
            }
        }
    }
}

/// `values` (one per filter) in blocks of 16, zeros beyond the end.
fn blocks_of(values: &[f32]) -> Vec<[f32; BLOCK]> {
    values
        .chunks(BLOCK)
        .map(|c| {
            let mut b = [0.0; BLOCK];
            b[..c.len()].copy_from_slice(c);
            b
        })
        .collect()
}

/// The bytes of a tile's sums: `z + round(sum * m[f])` clamped so that the byte is in
/// `lo + z..=hi + z`. One source for every kernel (compiled at each one's instruction
/// set below), so the bytes agree bit for bit.
#[inline(always)]
fn requantize_tile(
    acc: &[[i32; BLOCK]; TILE],
    m: &[f32; BLOCK],
    lo: f32,
    hi: f32,
    z: u8,
    out: &mut [[u8; BLOCK]; TILE],
) {
    for (o, a) in out.iter_mut().zip(acc) {
        for f in 0..BLOCK {
            let v = a[f] as f32 * m[f];
            let v = if v > lo { v } else { lo };
            let v = if v < hi { v } else { hi };
            o[f] = round_to_byte(v).wrapping_add(z);
        }
    }
}

/// [`requantize_tile`] in 256-bit vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn requantize_tile_avx2(
    acc: &[[i32; BLOCK]; TILE],
    m: &[f32; BLOCK],
    lo: f32,
    hi: f32,
    z: u8,
    out: &mut [[u8; BLOCK]; TILE],
) {
    requantize_tile(acc, m, lo, hi, z, out)
}

/// [`requantize_tile`] in 512-bit vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn requantize_tile_avx512(
    acc: &[[i32; BLOCK]; TILE],
    m: &[f32; BLOCK],
    lo: f32,
    hi: f32,
    z: u8,
    out: &mut [[u8; BLOCK]; TILE],
) {
    requantize_tile(acc, m, lo, hi, z, out)
}

/// Where the VNNI kernels store requantized bytes themselves: [`requantize_tile`]'s
/// arithmetic on the sums in registers, the bytes of output pixel `p`, filter `f0 + i`
/// at `out[p * f + f0 + i]`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct DirectBytes<'a> {
    out: &'a mut [u8],
    /// Filters per output pixel.
    f: usize,
    /// The multipliers in blocks of 16.
    m: &'a [[f32; BLOCK]],
    lo: f32,
    hi: f32,
    z: u8,
}

#[cfg(target_arch = "x86_64")]
impl DirectBytes<'_> {
    /// The first `rows` sums of `sums` (pixels `p0..`, filters `f0..f0 + 16`, those
    /// beyond `f` left out) as bytes: `z + round(sum * m)` clamped to `lo..=hi` first,
    /// exactly as [`requantize_tile`] computes them.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VL. (Inlined into the kernels, which are
    /// compiled for them, rather than compiled for them itself: a call would pass the
    /// sums through memory.)
    #[inline(always)]
    unsafe fn store(&mut self, sums: [std::arch::x86_64::__m512i; TILE], p0: usize, rows: usize, f0: usize) {
        use std::arch::x86_64::*;
        const MAGIC: f32 = 12_582_912.0;
        let n = BLOCK.min(self.f - f0);
        assert!(
            rows <= TILE && (p0 + rows) * self.f <= self.out.len(),
            "DirectBytes: tile outside the output"
        );
        let mask: __mmask16 = ((1u32 << n) - 1) as u16;
        // SAFETY: 16 multipliers per block.
        let m = unsafe { _mm512_loadu_ps(self.m[f0 / BLOCK].as_ptr()) };
        let (lo, hi, magic) = (_mm512_set1_ps(self.lo), _mm512_set1_ps(self.hi), _mm512_set1_ps(MAGIC));
        let z = _mm_set1_epi8(self.z as i8);
        let out = self.out.as_mut_ptr();
        for (r, sum) in sums.into_iter().take(rows).enumerate() {
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), m);
            // `max(v, lo)` is `v > lo ? v : lo`, `min(v, hi)` is `v < hi ? v : hi`
            let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            let b = _mm_add_epi8(_mm512_cvtepi32_epi8(_mm512_castps_si512(_mm512_add_ps(v, magic))), z);
            // SAFETY: the `n` bytes at `(p0 + r) * f + f0` are inside `out` (asserted
            // above: `f0 + n <= f`); the mask keeps the store to them.
            unsafe { _mm_mask_storeu_epi8(out.add((p0 + r) * self.f + f0).cast(), mask, b) };
        }
    }
}

/// A block's 16 `i32` as two AVX2 registers: filters 0-7 and 8-15.
///
/// # Safety
/// The CPU must have AVX2. (Inlined into the AVX2 kernels, which are compiled for it.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_halves(v: &[i32; BLOCK]) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // SAFETY: 16 `i32`, read as two runs of 8; AVX2 by the contract.
    unsafe {
        (
            _mm256_loadu_si256(v.as_ptr().cast()),
            _mm256_loadu_si256(v.as_ptr().add(8).cast()),
        )
    }
}

/// Each row's sums, filters 0-7 from `lo` and 8-15 from `hi`, into `acc`.
///
/// # Safety
/// As [`avx2_halves`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_avx2_halves(
    acc: &mut [[i32; BLOCK]],
    lo: &[std::arch::x86_64::__m256i],
    hi: &[std::arch::x86_64::__m256i],
) {
    use std::arch::x86_64::*;
    for ((a, l), h) in acc.iter_mut().zip(lo).zip(hi) {
        // SAFETY: each half of `a` is 8 `i32`; AVX2 by the contract.
        unsafe {
            _mm256_storeu_si256(a.as_mut_ptr().cast(), *l);
            _mm256_storeu_si256(a.as_mut_ptr().add(8).cast(), *h);
        }
    }
}

/// Output pixels per tile: each is one accumulator register per filter block.
const TILE: usize = 12;

/// One tile of output pixels: `offs[r]` is where pixel `r`'s window starts in the
/// padded image `x`, `taps` where each filter tap is from there. Every read is the
/// four (or two) bytes at `offs[r] + taps[t] + ci` with `ci + 4 <= cp`, inside `x`
/// because the offsets come from the geometry of the padded image.
struct Tile<'a> {
    x: &'a [u8],
    /// `x` widened to 16 bits, for the AVX2 kernel (empty for the others).
    #[cfg(target_arch = "x86_64")]
    x16: &'a [u16],
    offs: &'a [usize; TILE],
    taps: &'a [usize],
    cp: usize,
}

impl Tile<'_> {
    /// The sums of the block's 16 filters (`w` `[taps][CP/4][16][4]`), plain loops.
    fn scalar(&self, w: &[i8], bias: &[i32; BLOCK], acc: &mut [[i32; BLOCK]; TILE]) {
        *acc = [*bias; TILE];
        let mut wi = w.chunks_exact(4 * BLOCK);
        for &t in self.taps {
            for c4 in (0..self.cp).step_by(4) {
                let wv = wi.next().expect("packed to the taps and channels");
                for (a, &o) in acc.iter_mut().zip(self.offs) {
                    let xv = &self.x[o + t + c4..o + t + c4 + 4];
                    for (s, wf) in a.iter_mut().zip(wv.chunks_exact(4)) {
                        let dot: i32 = xv.iter().zip(wf).map(|(&x, &w)| i32::from(x) * i32::from(w)).sum();
                        *s = s.wrapping_add(dot);
                    }
                }
            }
        }
    }

    /// The AVX2 kernel: `w` `[taps][CP/2][16][2]` in `i16`; two input bytes widened
    /// and broadcast, `vpmaddwd` against the 16 filters' pairs in two registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(&self, w: &[i16], bias: &[i32; BLOCK], acc: &mut [[i32; BLOCK]; TILE]) {
        use std::arch::x86_64::*;
        const R: usize = 6;
        let x = self.x16.as_ptr();
        // SAFETY: the CPU has AVX2 (this function's contract).
        let (b0, b1) = unsafe { avx2_halves(bias) };
        for half in 0..TILE / R {
            let offs = &self.offs[half * R..half * R + R];
            let mut lo = [b0; R];
            let mut hi = [b1; R];
            let mut wp = w.as_ptr();
            for &t in self.taps {
                for c2 in (0..self.cp).step_by(2) {
                    // SAFETY: `w` holds `taps * CP/2` groups of 32 values, read in order.
                    let w0 = unsafe { _mm256_loadu_si256(wp.cast()) };
                    let w1 = unsafe { _mm256_loadu_si256(wp.add(16).cast()) };
                    wp = unsafe { wp.add(32) };
                    for r in 0..R {
                        // SAFETY: inside the padded image (see `Tile`).
                        let pair = unsafe { (x.add(offs[r] + t + c2) as *const i32).read_unaligned() };
                        let b = _mm256_set1_epi32(pair);
                        lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(b, w0));
                        hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(b, w1));
                    }
                }
            }
            // SAFETY: as above.
            unsafe { store_avx2_halves(&mut acc[half * R..half * R + R], &lo, &hi) };
        }
    }

    /// The AVX2 kernel for weights in `-64..=64`: `w` `[taps][CP/4][16][4]` as VNNI's;
    /// four input bytes broadcast, `vpmaddubsw` against the 16 filters' quadruples in
    /// two registers (pair sums of at most `2 * 255 * 64`, no saturation), then
    /// `vpmaddwd` by ones to sum the pairs into `i32`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_bytes(&self, w: &[i8], bias: &[i32; BLOCK], acc: &mut [[i32; BLOCK]; TILE]) {
        use std::arch::x86_64::*;
        const R: usize = 6;
        let x = self.x.as_ptr();
        let ones = _mm256_set1_epi16(1);
        // SAFETY: the CPU has AVX2 (this function's contract).
        let (b0, b1) = unsafe { avx2_halves(bias) };
        for half in 0..TILE / R {
            let offs = &self.offs[half * R..half * R + R];
            let mut lo = [b0; R];
            let mut hi = [b1; R];
            let mut wp = w.as_ptr();
            for &t in self.taps {
                for c4 in (0..self.cp).step_by(4) {
                    // SAFETY: `w` holds `taps * CP/4` groups of 64 bytes, read in order.
                    let w0 = unsafe { _mm256_loadu_si256(wp.cast()) };
                    let w1 = unsafe { _mm256_loadu_si256(wp.add(32).cast()) };
                    wp = unsafe { wp.add(64) };
                    for r in 0..R {
                        // SAFETY: inside the padded image (see `Tile`).
                        let quad = unsafe { (x.add(offs[r] + t + c4) as *const i32).read_unaligned() };
                        let q = _mm256_set1_epi32(quad);
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q, w0), ones);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q, w1), ones);
                        lo[r] = _mm256_add_epi32(lo[r], p0);
                        hi[r] = _mm256_add_epi32(hi[r], p1);
                    }
                }
            }
            // SAFETY: as above.
            unsafe { store_avx2_halves(&mut acc[half * R..half * R + R], &lo, &hi) };
        }
    }

    /// The AVX-512 VNNI kernel: `w` `[taps][CP/4][16][4]`; four input bytes broadcast,
    /// `vpdpbusd` against the 16 filters' quadruples in one register.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vnni,avx512bw,avx512vl")]
    unsafe fn vnni(
        &self,
        w: &[i8],
        bias: &[i32; BLOCK],
        acc: &mut [[i32; BLOCK]; TILE],
        store: Option<(&mut DirectBytes<'_>, usize, usize, usize)>,
    ) {
        use std::arch::x86_64::*;
        let x = self.x.as_ptr();
        // SAFETY: `bias` is 16 `i32`.
        let mut sums = [unsafe { _mm512_loadu_si512(bias.as_ptr().cast()) }; TILE];
        let mut wp = w.as_ptr();
        for &t in self.taps {
            for c4 in (0..self.cp).step_by(4) {
                // SAFETY: `w` holds `taps * CP/4` groups of 64 bytes, read in order.
                let wv = unsafe { _mm512_loadu_si512(wp.cast()) };
                wp = unsafe { wp.add(64) };
                for (sum, &o) in sums.iter_mut().zip(self.offs) {
                    // SAFETY: inside the padded image (see `Tile`).
                    let quad = unsafe { (x.add(o + t + c4) as *const i32).read_unaligned() };
                    *sum = _mm512_dpbusd_epi32(*sum, _mm512_set1_epi32(quad), wv);
                }
            }
        }
        if let Some((d, p0, rows, f0)) = store {
            // SAFETY: the CPU has AVX-512 BW and VL (`vnni()`).
            unsafe { d.store(sums, p0, rows, f0) };
            return;
        }
        for (a, s) in acc.iter_mut().zip(sums) {
            // SAFETY: `a` is 16 `i32`.
            unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), s) };
        }
    }
}

impl Tile<'_> {
    /// [`Tile::vnni`] for two blocks of filters at once: each broadcast input word
    /// feeds both, halving the loads per product.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vnni,avx512bw,avx512vl")]
    unsafe fn vnni2(
        &self,
        w: [&[i8]; 2],
        bias: [&[i32; BLOCK]; 2],
        acc: &mut [[i32; BLOCK]; TILE],
        acc2: &mut [[i32; BLOCK]; TILE],
        store: Option<(&mut DirectBytes<'_>, usize, usize, usize)>,
    ) {
        use std::arch::x86_64::*;
        let x = self.x.as_ptr();
        // SAFETY: each bias is 16 `i32`.
        let mut s0 = [unsafe { _mm512_loadu_si512(bias[0].as_ptr().cast()) }; TILE];
        let mut s1 = [unsafe { _mm512_loadu_si512(bias[1].as_ptr().cast()) }; TILE];
        let (mut w0, mut w1) = (w[0].as_ptr(), w[1].as_ptr());
        for &t in self.taps {
            for c4 in (0..self.cp).step_by(4) {
                // SAFETY: both blocks hold `taps * CP/4` groups of 64 bytes, read in order.
                let (v0, v1) = unsafe { (_mm512_loadu_si512(w0.cast()), _mm512_loadu_si512(w1.cast())) };
                (w0, w1) = unsafe { (w0.add(64), w1.add(64)) };
                for ((a, b), &o) in s0.iter_mut().zip(s1.iter_mut()).zip(self.offs) {
                    // SAFETY: inside the padded image (see `Tile`).
                    let quad = unsafe { (x.add(o + t + c4) as *const i32).read_unaligned() };
                    let q = _mm512_set1_epi32(quad);
                    *a = _mm512_dpbusd_epi32(*a, q, v0);
                    *b = _mm512_dpbusd_epi32(*b, q, v1);
                }
            }
        }
        if let Some((d, p0, rows, f0)) = store {
            // SAFETY: the CPU has AVX-512 BW and VL (`vnni()`).
            unsafe {
                d.store(s0, p0, rows, f0);
                d.store(s1, p0, rows, f0 + BLOCK);
            }
            return;
        }
        for ((a, b), (s, t)) in acc.iter_mut().zip(acc2.iter_mut()).zip(s0.into_iter().zip(s1)) {
            // SAFETY: each row is 16 `i32`.
            unsafe {
                _mm512_storeu_si512(a.as_mut_ptr().cast(), s);
                _mm512_storeu_si512(b.as_mut_ptr().cast(), t);
            }
        }
    }
}

/// The `i32` sums of a convolution from its definition, with nothing packed or padded:
/// `out[y][x][f] = bias[f] + sum over (c, i, j) inside the image of
/// w[f][c][i][j] * (x[y*s+i-pad][x*s+j-pad][c] - input_zero)`. Input `(h, w, C)` NHWC,
/// output `(OH, OW, F)`. The yardstick of [`QConv`]'s kernels.
///
/// # Panics
/// If the geometry is invalid or the slices do not fit it.
#[allow(clippy::too_many_arguments)]
pub fn reference_accumulate(
    x: &[u8],
    h: usize,
    w: usize,
    input_zero: u8,
    weights: &[i8],
    dims: [usize; 4],
    stride: usize,
    pad: usize,
    bias: &[i32],
) -> Vec<i32> {
    let [f, c, fh, fw] = dims;
    let g = ConvGeometry::new(c, h, w, fh, fw, stride, pad).expect("valid geometry");
    assert_eq!(x.len(), h * w * c);
    assert_eq!(weights.len(), f * c * fh * fw);
    let mut out = vec![0i32; g.out_h * g.out_w * f];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for fi in 0..f {
                let mut sum = bias[fi];
                for ci in 0..c {
                    for i in 0..fh {
                        for j in 0..fw {
                            let (y, xx) = (
                                (oy * stride + i) as isize - pad as isize,
                                (ox * stride + j) as isize - pad as isize,
                            );
                            if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                continue;
                            }
                            let q = i32::from(x[(y as usize * w + xx as usize) * c + ci]) - i32::from(input_zero);
                            sum += i32::from(weights[((fi * c + ci) * fh + i) * fw + j]) * q;
                        }
                    }
                }
                out[(oy * g.out_w + ox) * f + fi] = sum;
            }
        }
    }
    out
}

/// `o[k]` = the largest of `x[0][k]`, ..., `x[3][k]`: sixteen bytes at a time (one
/// vector maximum each), then one by one.
#[inline(always)]
fn max4(o: &mut [u8], x: [&[u8]; 4]) {
    const V: usize = 16;
    let whole = o.len() / V * V;
    let (head, tail) = o.split_at_mut(whole);
    for (k, o) in head.chunks_exact_mut(V).enumerate() {
        let at = k * V;
        let [a, b, c, d] = x.map(|x| -> &[u8; V] { x[at..at + V].try_into().expect("16 bytes") });
        for j in 0..V {
            o[j] = a[j].max(b[j]).max(c[j].max(d[j]));
        }
    }
    for (j, o) in tail.iter_mut().enumerate() {
        let k = whole + j;
        *o = x[0][k].max(x[1][k]).max(x[2][k].max(x[3][k]));
    }
}

/// Max pooling of one NHWC image `(h, w, C)` of bytes into `(OH, OW, C)` with `g`'s
/// window, stride and padding (padding never wins: it cannot, as every window holds an
/// input value and 0 is the smallest byte). The scale is unchanged: the maximum of the
/// integers stands for the maximum of the values.
///
/// # Panics
/// If the slices do not fit `g`.
pub fn max_pool_nhwc(x: &[u8], g: &ConvGeometry, out: &mut [u8]) {
    let c = g.c;
    assert_eq!(x.len(), g.h * g.w * c, "max_pool_nhwc: input length");
    assert_eq!(out.len(), g.out_h * g.out_w * c, "max_pool_nhwc: output length");
    if (g.fh, g.fw, g.stride, g.pad) == (2, 2, 2, 0) {
        // every window inside the image: the four pixels' channels in one pass
        for oy in 0..g.out_h {
            let (top, bottom) = (2 * oy * g.w * c, (2 * oy + 1) * g.w * c);
            for ox in 0..g.out_w {
                let o = &mut out[(oy * g.out_w + ox) * c..][..c];
                let at = 2 * ox * c;
                let (a, b) = (&x[top + at..][..2 * c], &x[bottom + at..][..2 * c]);
                let (a0, a1) = a.split_at(c);
                let (b0, b1) = b.split_at(c);
                max4(o, [a0, a1, b0, b1]);
            }
        }
        return;
    }
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let o = &mut out[(oy * g.out_w + ox) * c..][..c];
            o.fill(0);
            for i in 0..g.fh {
                let y = (oy * g.stride + i).wrapping_sub(g.pad);
                if y >= g.h {
                    continue;
                }
                for j in 0..g.fw {
                    let xx = (ox * g.stride + j).wrapping_sub(g.pad);
                    if xx >= g.w {
                        continue;
                    }
                    let px = &x[(y * g.w + xx) * c..][..c];
                    o.iter_mut().zip(px).for_each(|(m, &v)| *m = (*m).max(v));
                }
            }
        }
    }
}
