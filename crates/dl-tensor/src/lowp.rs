//! Fewer bits: tensors stored as 16-bit floats (IEEE half, `f16`, and bfloat16, `bf16`)
//! and the kernels of inference over them, which read 16-bit values, multiply and
//! accumulate in `f32`, and round each output once to 16 bits.
//!
//! A [`Storage`] is an element type a tensor can be kept in: `f32` itself, [`f16`](struct@f16)
//! (5 exponent bits, 10 mantissa bits: three decimal digits, largest 65504) or [`bf16`]
//! (`f32`'s 8 exponent bits, 7 mantissa bits: two digits, `f32`'s range). Conversions
//! round to nearest, ties to even (the `half` crate, which converts whole slices with
//! the CPU's F16C instructions where it has them).

use ndarray::ArrayView2;

pub use half::{bf16, f16};

use crate::{gemm, im2col_chw, ConvAlgo, ConvGeometry, ConvKernel, Isa};

/// An element type a tensor is stored in: `f32`, [`f16`](struct@f16) or [`bf16`].
pub trait Storage: Copy + Default + PartialEq + Send + Sync + std::fmt::Debug + 'static {
    /// The type's name as safetensors and the command line spell it (`"f32"`, `"f16"`,
    /// `"bf16"`).
    const NAME: &'static str;
    /// Bytes per element.
    const BYTES: usize;

    /// The nearest value of this type (ties to even; beyond the range, infinity).
    fn from_f32(v: f32) -> Self;

    /// The value as `f32` (exact: every value of the three types is an `f32`).
    fn to_f32(self) -> f32;

    /// `dst[i] = src[i].to_f32()`.
    ///
    /// # Panics
    /// If the lengths differ.
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "to_f32_slice: lengths differ");
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
    }

    /// `dst[i] = Self::from_f32(src[i])`.
    ///
    /// # Panics
    /// If the lengths differ.
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        assert_eq!(src.len(), dst.len(), "from_f32_slice: lengths differ");
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = Self::from_f32(*s));
    }
}

impl Storage for f32 {
    const NAME: &'static str = "f32";
    const BYTES: usize = 4;

    fn from_f32(v: f32) -> Self {
        v
    }

    fn to_f32(self) -> f32 {
        self
    }

    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl Storage for f16 {
    const NAME: &'static str = "f16";
    const BYTES: usize = 2;

    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }

    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        assert_eq!(src.len(), dst.len(), "to_f32_slice: lengths differ");
        src.convert_to_f32_slice(dst);
    }

    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        assert_eq!(src.len(), dst.len(), "from_f32_slice: lengths differ");
        dst.convert_from_f32_slice(src);
    }
}

impl Storage for bf16 {
    const NAME: &'static str = "bf16";
    const BYTES: usize = 2;

    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }

    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// `v` rounded to the nearest bfloat16 (ties to even; beyond the range, infinity; a NaN
/// stays a NaN), kept as an `f32`: the value `bf16::from_f32(v).to_f32()`, computed on
/// the bits. The product of two such values is exact in `f32` (8 significant bits
/// each), so a sum of products of rounded operands is what a bf16 dot product with an
/// `f32` accumulator computes (`vdpbf16ps`, up to the order of the additions).
pub fn round_bf16(v: f32) -> f32 {
    let b = v.to_bits();
    if v.is_nan() {
        return f32::from_bits((b | 0x0040_0000) & 0xFFFF_0000);
    }
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

/// [`round_bf16`] on every value of `xs`, in place (in parallel on large slices).
pub fn round_bf16_slice(xs: &mut [f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    xs.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = round_bf16(*v)));
}

/// The number format weights and activations are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit IEEE floats: the format networks are trained in.
    F32,
    /// 16-bit IEEE half floats: 10 mantissa bits, largest value 65504.
    F16,
    /// bfloat16: `f32`'s exponent with 7 mantissa bits.
    Bf16,
}

/// A precision name other than `f32`, `f16` and `bf16`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision {0:?}: expected f32, f16 or bf16")]
pub struct UnknownPrecision(pub String);

impl Precision {
    /// Every precision, widest first.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The name on the command line: `"f32"`, `"f16"`, `"bf16"` ([`Storage::NAME`]).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => f32::NAME,
            Precision::F16 => f16::NAME,
            Precision::Bf16 => bf16::NAME,
        }
    }

    /// Bytes per stored value ([`Storage::BYTES`]).
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => f32::BYTES,
            Precision::F16 => f16::BYTES,
            Precision::Bf16 => bf16::BYTES,
        }
    }

    /// `values` rounded to this precision, as little-endian bytes (safetensors' layout).
    pub fn to_le_bytes(self, values: impl Iterator<Item = f32>) -> Vec<u8> {
        match self {
            Precision::F32 => values.flat_map(f32::to_le_bytes).collect(),
            Precision::F16 => values.flat_map(|v| f16::from_f32(v).to_le_bytes()).collect(),
            Precision::Bf16 => values.flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }

    /// The values of little-endian `bytes` of this precision, widened to `f32` (exact);
    /// a trailing partial value is ignored.
    pub fn from_le_bytes(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Precision::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Precision::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Precision::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPrecision(s.to_string()))
    }
}

/// Scratch memory of [`LowpConv`] and [`affine`]: the input, the column matrix (or the
/// kernel's scratch) and the output, in `f32`.
#[derive(Debug, Default, Clone)]
pub struct LowpScratch {
    image: Vec<f32>,
    col: Vec<f32>,
    out: Vec<f32>,
}

/// Bias and activation applied to a product before it is rounded to its storage type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to each output row (a convolution's filters) or column (an affine layer's
    /// outputs), as the kernel says.
    pub bias: Option<&'a [f32]>,
    /// `max(0, v)` after the bias.
    pub relu: bool,
}

/// A convolution over stored values for one geometry and one set of filters: the
/// filters in `f32` (widened once per batch by the caller) and the kernel of
/// [`ConvAlgo`] that computes it (Winograd or the direct kernel where they apply, at
/// the instruction set asked for; else `im2col` + GEMM).
#[derive(Debug)]
pub struct LowpConv {
    g: ConvGeometry,
    filters: usize,
    w: Vec<f32>,
    kernel: Option<Box<dyn ConvKernel>>,
}

impl LowpConv {
    /// The convolution of `w` `(filters, C*FH*FW)` on `g`, by `algo` at the instruction
    /// set [`Isa::active`].
    ///
    /// # Panics
    /// If `w` does not hold `filters` filters of the geometry.
    pub fn new(w: Vec<f32>, filters: usize, g: ConvGeometry, algo: ConvAlgo) -> Self {
        Self::at(w, filters, g, algo, Isa::active())
    }

    /// [`LowpConv::new`] at the instruction set `isa` (the lowered path where the
    /// kernel cannot run at it).
    ///
    /// # Panics
    /// If `w` does not hold `filters` filters of the geometry.
    pub fn at(w: Vec<f32>, filters: usize, g: ConvGeometry, algo: ConvAlgo, isa: Isa) -> Self {
        assert_eq!(w.len(), filters * g.col_rows(), "LowpConv: filter length");
        let kernel = algo.kernel_at(isa, &w, filters, &g);
        Self { g, filters, w, kernel }
    }

    /// The geometry it was made for.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.g
    }

    /// The kernel that runs: `"winograd"`, `"direct"` or `"lowered"`.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.as_ref().map_or("lowered", |k| k.name())
    }

    /// One image: `x` `(C, H, W)` of type `E` into `out` `(FN, OH*OW)` of type `E`. The
    /// image is widened to `f32`, convolved (products and sums in `f32`), the bias and
    /// the ReLU of `epilogue` are applied, and each output is rounded once to `E`.
    ///
    /// # Panics
    /// If the slice lengths do not fit the geometry.
    pub fn forward_image<E: Storage>(&self, x: &[E], epilogue: Epilogue<'_>, out: &mut [E], scratch: &mut LowpScratch) {
        let g = &self.g;
        let (f, k, p) = (self.filters, g.col_rows(), g.col_cols());
        assert_eq!(x.len(), g.c * g.h * g.w, "LowpConv: input length");
        assert_eq!(out.len(), f * p, "LowpConv: output length");
        if let Some(b) = epilogue.bias {
            assert_eq!(b.len(), f, "LowpConv: bias length");
        }
        scratch.image.resize(x.len(), 0.0);
        E::to_f32_slice(x, &mut scratch.image);
        scratch.out.resize(f * p, 0.0);
        match &self.kernel {
            Some(kernel) => {
                scratch.col.resize(kernel.scratch_len(), 0.0);
                kernel.forward_image(&scratch.image, epilogue.bias, &mut scratch.out, &mut scratch.col);
            }
            None => {
                scratch.col.resize(k * p, 0.0);
                im2col_chw(&scratch.image, g, &mut scratch.col);
                let wv = ArrayView2::from_shape((f, k), &self.w[..]).expect("checked length");
                let cv = ArrayView2::from_shape((k, p), &scratch.col[..]).expect("checked length");
                let mut ov = ndarray::ArrayViewMut2::from_shape((f, p), &mut scratch.out[..]).expect("checked length");
                gemm(1.0, &wv, &cv, 0.0, &mut ov);
                if let Some(b) = epilogue.bias {
                    for (row, &bv) in scratch.out.chunks_exact_mut(p).zip(b) {
                        row.iter_mut().for_each(|v| *v += bv);
                    }
                }
            }
        }
        if epilogue.relu {
            scratch.out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        E::from_f32_slice(&scratch.out, out);
    }
}

/// An affine layer over stored values: `x` `(N, D)` of type `E` times `w` `(D, M)` in
/// `f32`, plus the bias per output column of `epilogue`, its ReLU, and one rounding to
/// `E` into `out` `(N, M)`. Products and sums in `f32`.
///
/// # Panics
/// If the slice lengths do not fit `w`'s shape.
pub fn affine<E: Storage>(
    x: &[E],
    w: &ArrayView2<f32>,
    epilogue: Epilogue<'_>,
    out: &mut [E],
    scratch: &mut LowpScratch,
) {
    let (d, m) = w.dim();
    assert!(d > 0 && x.len().is_multiple_of(d), "affine: input length");
    let n = x.len() / d;
    assert_eq!(out.len(), n * m, "affine: output length");
    scratch.image.resize(n * d, 0.0);
    E::to_f32_slice(x, &mut scratch.image);
    scratch.out.resize(n * m, 0.0);
    let xv = ArrayView2::from_shape((n, d), &scratch.image[..]).expect("checked length");
    let mut ov = ndarray::ArrayViewMut2::from_shape((n, m), &mut scratch.out[..]).expect("checked length");
    gemm(1.0, &xv, w, 0.0, &mut ov);
    if let Some(b) = epilogue.bias {
        assert_eq!(b.len(), m, "affine: bias length");
        for row in scratch.out.chunks_exact_mut(m) {
            row.iter_mut().zip(b).for_each(|(v, bv)| *v += bv);
        }
    }
    if epilogue.relu {
        scratch.out.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    E::from_f32_slice(&scratch.out, out);
}

/// Max pooling of one `(C, H, W)` plane stack of stored values into `(C, OH, OW)`: the
/// largest value of each window (padding never wins), compared exactly, so the output
/// holds input values unchanged.
///
/// # Panics
/// If the slice lengths do not fit the geometry.
pub fn max_pool_image<E: Storage>(x: &[E], g: &ConvGeometry, out: &mut [E]) {
    pool_image(
        x,
        g,
        out,
        f32::NEG_INFINITY,
        |best, v| if v > best { v } else { best },
        |m| m,
    );
}

/// Average pooling of one `(C, H, W)` plane stack of stored values into `(C, OH, OW)`:
/// the mean over the whole `FH x FW` window (padding counts as zero), summed in `f32`
/// and rounded once.
///
/// # Panics
/// If the slice lengths do not fit the geometry.
pub fn average_pool_image<E: Storage>(x: &[E], g: &ConvGeometry, out: &mut [E]) {
    let area = (g.fh * g.fw) as f32;
    pool_image(x, g, out, 0.0, |sum, v| sum + v, |sum| sum / area);
}

/// Reduces each window of each plane by `step` from `init`, then `finish`, widening one
/// plane at a time to `f32`.
fn pool_image<E: Storage>(
    x: &[E],
    g: &ConvGeometry,
    out: &mut [E],
    init: f32,
    step: impl Fn(f32, f32) -> f32,
    finish: impl Fn(f32) -> f32,
) {
    let (h, w, oh, ow) = (g.h, g.w, g.out_h, g.out_w);
    assert_eq!(x.len(), g.c * h * w, "pool_image: input length");
    assert_eq!(out.len(), g.c * oh * ow, "pool_image: output length");
    let span = |o: usize, k: usize, len: usize| {
        let start = (o * g.stride) as isize - g.pad as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + k as isize).max(0) as usize).min(len);
        lo..hi
    };
    let mut plane32 = vec![0.0f32; h * w];
    let mut row32 = vec![0.0f32; ow];
    for (plane, oplane) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        E::to_f32_slice(plane, &mut plane32);
        for (oy, orow) in oplane.chunks_exact_mut(ow).enumerate() {
            let ys = span(oy, g.fh, h);
            for (ox, o) in row32.iter_mut().enumerate() {
                let xs = span(ox, g.fw, w);
                let mut acc = init;
                for y in ys.clone() {
                    for &v in &plane32[y * w + xs.start..y * w + xs.end] {
                        acc = step(acc, v);
                    }
                }
                *o = finish(acc);
            }
            E::from_f32_slice(&row32, orow);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{conv2d_reference, pool_reference};
    use crate::testing::random4;
    use ndarray::{Array1, Array2, Array4};

    /// Every `f16` bit pattern converts to `f32` and back to itself (NaNs to a NaN), in
    /// the slice conversion as in the scalar one.
    #[test]
    fn f16_slice_conversion_matches_the_scalar_one_on_every_value() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut wide = vec![0.0f32; all.len()];
        f16::to_f32_slice(&all, &mut wide);
        let mut back = vec![f16::ZERO; all.len()];
        f16::from_f32_slice(&wide, &mut back);
        for ((h, w), b) in all.iter().zip(&wide).zip(&back) {
            assert_eq!(w.to_bits(), h.to_f32().to_bits(), "{h:?}");
            if h.is_nan() {
                assert!(b.is_nan());
            } else {
                assert_eq!(b.to_bits(), h.to_bits(), "{h:?}");
            }
        }
    }

    /// `round_bf16` is `half`'s rounding to bfloat16 and back, on the edges (ties both
    /// ways, the largest finite values, infinities, NaNs, subnormals, signed zeros) and
    /// on a million random bit patterns; the slice version agrees with it.
    #[test]
    fn round_bf16_is_halfs_rounding_on_every_kind_of_value() {
        use rand::{Rng, SeedableRng};
        let want = |v: f32| bf16::from_f32(v).to_f32();
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            1.0 + f32::powi(2.0, -8),                       // tie, to the even 1
            1.0 + f32::powi(2.0, -7) + f32::powi(2.0, -8),  // tie, to the even 1 + 2^-6
            1.0 + f32::powi(2.0, -8) + f32::powi(2.0, -20), // just above a tie
            f32::MAX,
            -f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x007F_FFFF),
            f32::from_bits(0x7F7F_7FFF), // the largest value below bf16's halfway to infinity
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        values.extend(
            (0..1_000_000)
                .map(|_| f32::from_bits(rng.gen()))
                .filter(|v| !v.is_nan()),
        );
        for &v in &values {
            assert_eq!(
                round_bf16(v).to_bits(),
                want(v).to_bits(),
                "{v:e} ({:#010x})",
                v.to_bits()
            );
        }
        assert_eq!(round_bf16(1.0 + f32::powi(2.0, -8)), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 * f32::powi(2.0, -8)), 1.0 + f32::powi(2.0, -6));
        for nan in [f32::NAN, f32::from_bits(0x7F80_0001), f32::from_bits(0xFF81_2345)] {
            let r = round_bf16(nan);
            assert!(r.is_nan() && r.to_bits() & 0xFFFF == 0, "{:#010x}", r.to_bits());
            assert_eq!(r.is_sign_negative(), nan.is_sign_negative());
        }
        let mut slice = values.clone();
        slice.truncate(200_000);
        round_bf16_slice(&mut slice);
        assert!(slice
            .iter()
            .zip(&values)
            .all(|(r, v)| r.to_bits() == round_bf16(*v).to_bits()));
    }

    /// Rounding to 16 bits is to nearest, ties to even, and overflows to infinity; the
    /// slice conversions agree with the scalar ones on values between representable ones.
    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-11 lies halfway between f16's 1 and 1 + 2^-10: ties go to the even 1.
        let half_ulp = 1.0 + f32::powi(2.0, -11);
        assert_eq!(f16::from_f32(half_ulp), f16::ONE);
        // just above the halfway point rounds up.
        assert_eq!(
            f16::from_f32(half_ulp + f32::powi(2.0, -20)).to_f32(),
            1.0 + f32::powi(2.0, -10)
        );
        assert_eq!(f16::from_f32(70000.0), f16::INFINITY);
        // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        assert_eq!(bf16::from_f32(1.0 + f32::powi(2.0, -8)), bf16::ONE);
        assert_eq!(bf16::from_f32(f32::MAX), bf16::INFINITY);
        let values: Vec<f32> = (0..20_000).map(|i| (i as f32 - 10_000.0) * 0.013_7).collect();
        for convert in [round_trip::<f16> as fn(&[f32]) -> Vec<f32>, round_trip::<bf16>] {
            let got = convert(&values);
            assert!(got.iter().zip(&values).any(|(g, v)| g != v), "16 bits must round");
        }
        let mut h = vec![f16::ZERO; values.len()];
        f16::from_f32_slice(&values, &mut h);
        let mut b = vec![bf16::ZERO; values.len()];
        bf16::from_f32_slice(&values, &mut b);
        for ((v, h), b) in values.iter().zip(&h).zip(&b) {
            assert_eq!(h.to_bits(), f16::from_f32(*v).to_bits());
            assert_eq!(b.to_bits(), bf16::from_f32(*v).to_bits());
        }
    }

    #[test]
    fn precision_names_bytes_and_byte_layout() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!("f8".parse::<Precision>(), Err(UnknownPrecision("f8".into())));
        assert_eq!(Precision::ALL.map(Precision::bytes), [4, 2, 2]);
        // f32 stores every f32 as it is
        for v in [1.5f32, -3.0e-39, f32::MAX] {
            assert_eq!(<f32 as Storage>::from_f32(v).to_bits(), v.to_bits());
            assert_eq!(Storage::to_f32(v).to_bits(), v.to_bits());
        }
        let values = [1.0f32, -2.5, 1.0 + f32::powi(2.0, -9), 3.0e-6, 65504.0];
        let f32_bytes = Precision::F32.to_le_bytes(values.into_iter());
        assert_eq!(&f32_bytes[..4], &[0, 0, 0x80, 0x3f]);
        assert_eq!(Precision::F32.from_le_bytes(&f32_bytes), values);
        let h = Precision::F16.to_le_bytes(values.into_iter());
        assert_eq!(h.len(), 10);
        assert_eq!(&h[..4], &[0x00, 0x3c, 0x00, 0xc1], "1.0 and -2.5 as IEEE halves");
        assert_eq!(Precision::F16.from_le_bytes(&h), round_trip::<f16>(&values));
        let b = Precision::Bf16.to_le_bytes(values.into_iter());
        assert_eq!(&b[..4], &[0x80, 0x3f, 0x20, 0xc0], "1.0 and -2.5 as bfloat16");
        assert_eq!(Precision::Bf16.from_le_bytes(&b), round_trip::<bf16>(&values));
        // a trailing partial value is ignored
        assert_eq!(Precision::F16.from_le_bytes(&h[..3]).len(), 1);
    }

    fn round_trip<E: Storage>(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| E::from_f32(x).to_f32()).collect()
    }

    fn stored<E: Storage>(a: &[f32]) -> Vec<E> {
        a.iter().map(|&v| E::from_f32(v)).collect()
    }

    /// Whether `got` is `want` rounded to `E`, or a neighbour of it: `want` is summed in
    /// `f64`, the kernel in `f32`, so a sum within an `f32` rounding of a halfway point
    /// may round to the other side. At 16 bits that is rare (at most 1% of the values);
    /// for `f32` itself only the summation error is allowed (Winograd's transforms add a
    /// little).
    fn assert_rounded<E: Storage>(got: &[E], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        let eps = match E::NAME {
            "f16" => f32::powi(2.0, -10),
            "bf16" => f32::powi(2.0, -7),
            _ => 1e-5,
        };
        let mut exact = 0;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let r = E::from_f32(*w);
            if *g == r {
                exact += 1;
                continue;
            }
            assert!(
                (g.to_f32() - w).abs() <= eps * w.abs() + 1e-5,
                "{what} ({}): element {i} is {g:?}, want {w} rounded, {r:?}",
                E::NAME
            );
        }
        if E::BYTES == 2 {
            assert!(
                exact * 100 >= got.len() * 99,
                "{what}: only {exact} of {} exact",
                got.len()
            );
        }
    }

    fn conv_case<E: Storage>(c: usize, h: usize, f: usize, k: usize, stride: usize, pad: usize, relu: bool) {
        let x32 = random4((2, c, h, h + 1), 1);
        let w32 = random4((f, c, k, k), 2);
        let b = Array1::from_shape_fn(f, |j| j as f32 * 0.25 - 0.5);
        // The values as stored: the reference sees exactly what the kernel sees.
        let x: Vec<E> = stored(x32.as_slice().unwrap());
        let w: Vec<f32> = round_trip::<E>(w32.as_slice().unwrap());
        let xr = Array4::from_shape_vec(x32.dim(), x.iter().map(|v| v.to_f32()).collect()).unwrap();
        let wr = Array4::from_shape_vec(w32.dim(), w.clone()).unwrap();
        let mut want = conv2d_reference(&xr.view(), &wr.view(), &b.view(), stride, pad);
        if relu {
            want.mapv_inplace(|v| v.max(0.0));
        }
        let g = ConvGeometry::new(c, h, h + 1, k, k, stride, pad).unwrap();
        let per = f * g.col_cols();
        let mut kernels = std::collections::BTreeSet::new();
        for isa in Isa::supported_levels() {
            for algo in [ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd] {
                let conv = LowpConv::at(w.clone(), f, g, algo, isa);
                kernels.insert(conv.kernel_name());
                let mut out = vec![E::from_f32(f32::NAN); 2 * per];
                let mut scratch = LowpScratch::default();
                for (xi, oi) in x.chunks_exact(c * h * (h + 1)).zip(out.chunks_exact_mut(per)) {
                    let epilogue = Epilogue {
                        bias: Some(b.as_slice().unwrap()),
                        relu,
                    };
                    conv.forward_image(xi, epilogue, oi, &mut scratch);
                }
                let what = format!("{} at {isa} {algo:?}", conv.kernel_name());
                assert_rounded(&out, want.as_slice().unwrap(), &what);
            }
        }
        let all = ["direct", "lowered", "winograd"];
        let expected: Vec<&str> = match (stride, k) {
            (1, 3) => all.to_vec(),
            (1, _) => all[..2].to_vec(),
            // the direct kernel on the phases, where every phase holds taps
            (s, k) if k >= s => all[..2].to_vec(),
            _ => vec!["lowered"],
        };
        assert_eq!(kernels.into_iter().collect::<Vec<_>>(), expected);
    }

    /// Every kernel (`im2col` + GEMM, direct, Winograd) at every instruction set this
    /// CPU runs, at every storage type, against the seven-loop reference.
    #[test]
    fn every_kernel_is_the_reference_convolution_rounded_once() {
        for (c, h, f, k, stride, pad, relu) in [
            (1, 8, 4, 3, 1, 1, false),
            (3, 7, 5, 3, 2, 1, true),
            (16, 6, 8, 3, 1, 0, true),
            (2, 9, 3, 5, 1, 2, false),
            (4, 7, 6, 1, 2, 0, false),
        ] {
            conv_case::<f32>(c, h, f, k, stride, pad, relu);
            conv_case::<f16>(c, h, f, k, stride, pad, relu);
            conv_case::<bf16>(c, h, f, k, stride, pad, relu);
        }
    }

    fn affine_case<E: Storage>(relu: bool) {
        let (n, d, m) = (5, 37, 11);
        let x32 = random4((1, 1, n, d), 3);
        let w32 = random4((1, 1, d, m), 4);
        let b: Vec<f32> = (0..m).map(|j| j as f32 * 0.1 - 0.4).collect();
        let x: Vec<E> = stored(x32.as_slice().unwrap());
        let w = round_trip::<E>(w32.as_slice().unwrap());
        let xr = Array2::from_shape_vec((n, d), x.iter().map(|v| v.to_f32()).collect()).unwrap();
        let wr = Array2::from_shape_vec((d, m), w.clone()).unwrap();
        let mut want = crate::reference::matmul_reference(&xr.view(), &wr.view());
        for mut row in want.rows_mut() {
            row.iter_mut().zip(&b).for_each(|(v, bv)| *v += bv);
        }
        if relu {
            want.mapv_inplace(|v| v.max(0.0));
        }
        let mut out = vec![E::from_f32(f32::NAN); n * m];
        let epilogue = Epilogue { bias: Some(&b), relu };
        let wv = ArrayView2::from_shape((d, m), &w[..]).unwrap();
        affine(&x, &wv, epilogue, &mut out, &mut LowpScratch::default());
        assert_rounded(&out, want.as_slice().unwrap(), "affine");
    }

    #[test]
    fn affine_is_the_reference_product_rounded_once() {
        for relu in [false, true] {
            affine_case::<f32>(relu);
            affine_case::<f16>(relu);
            affine_case::<bf16>(relu);
        }
    }

    fn pool_case<E: Storage>(k: usize, stride: usize, pad: usize) {
        let x32 = random4((1, 3, 7, 8), 5);
        let x: Vec<E> = stored(x32.as_slice().unwrap());
        let xr = Array4::from_shape_vec(x32.dim(), x.iter().map(|v| v.to_f32()).collect()).unwrap();
        let g = ConvGeometry::new(3, 7, 8, k, k, stride, pad).unwrap();
        for average in [false, true] {
            let want = pool_reference(&xr.view(), k, k, stride, pad, average);
            let mut out = vec![E::from_f32(f32::NAN); 3 * g.col_cols()];
            if average {
                average_pool_image(&x, &g, &mut out);
                assert_rounded(&out, want.as_slice().unwrap(), "average_pool_image");
            } else {
                max_pool_image(&x, &g, &mut out);
                let got: Vec<f32> = out.iter().map(|v| v.to_f32()).collect();
                assert_eq!(&got[..], want.as_slice().unwrap(), "max pooling is exact");
            }
        }
    }

    /// Of equal maxima the first wins, as in the f32 `Pooling` layer: a window of -0
    /// then +0 gives -0.
    fn first_maximum_case<E: Storage>() {
        let x: Vec<E> = stored(&[-0.0, 0.0, -1.0, -1.0]);
        let g = ConvGeometry::new(1, 2, 2, 2, 2, 2, 0).unwrap();
        let mut out = vec![E::from_f32(f32::NAN)];
        max_pool_image(&x, &g, &mut out);
        assert_eq!(out[0].to_f32().to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn max_pooling_keeps_the_first_of_equal_maxima() {
        first_maximum_case::<f32>();
        first_maximum_case::<f16>();
        first_maximum_case::<bf16>();
    }

    #[test]
    fn pooling_matches_the_reference() {
        for (k, stride, pad) in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)] {
            pool_case::<f32>(k, stride, pad);
            pool_case::<f16>(k, stride, pad);
            pool_case::<bf16>(k, stride, pad);
        }
    }
}
