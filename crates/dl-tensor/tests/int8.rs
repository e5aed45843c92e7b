//! The integer convolution's kernels against the definition, bit for bit, at every
//! level this CPU has; the quantization rules against hand-worked values.

use dl_tensor::int8::{
    max_pool_nhwc, quantize_weights, reference_accumulate, Int8Error, Int8Kernel, Int8Scratch, QConv, QuantParams,
    Requantize, MAX_DEPTH, WEIGHT_MAX,
};
use dl_tensor::{ConvGeometry, Isa};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Case {
    f: usize,
    c: usize,
    fh: usize,
    fw: usize,
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
}

/// 16 filters of 3x3 over 8 channels, on a 6x6 image padded by 1.
const SIXTEEN_BY_EIGHT: Case = Case {
    f: 16,
    c: 8,
    fh: 3,
    fw: 3,
    stride: 1,
    pad: 1,
    h: 6,
    w: 6,
};

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for &(f, c) in &[
        (1, 1),
        (3, 1),
        (8, 3),
        (5, 2),
        (16, 16),
        (17, 5),
        (33, 4),
        (10, 50),
        (64, 32),
    ] {
        // (3, 3, 2, 1) on 3 channels: a lowered input whose filter rows (9 bytes) do not
        // fit one 8-byte word, at a stride
        for &(fh, fw, stride, pad) in &[
            (3, 3, 1, 1),
            (3, 3, 1, 2),
            (1, 1, 1, 0),
            (3, 2, 2, 1),
            (2, 2, 2, 0),
            (3, 3, 2, 1),
        ] {
            for &(h, w) in &[(5, 7), (1, 13), (8, 8)] {
                if h + 2 * pad >= fh && w + 2 * pad >= fw {
                    out.push(Case {
                        f,
                        c,
                        fh,
                        fw,
                        stride,
                        pad,
                        h,
                        w,
                    });
                }
            }
        }
    }
    out
}

/// A convolution of random weights: any `i8`, one of them -128 (the AVX2 kernel widens
/// them to `i16`), or with `narrow`, `-64..=64` as `quantize_weights` gives them (the
/// AVX2 kernel multiplies the bytes).
fn random_conv_of(rng: &mut ChaCha8Rng, k: &Case, zero: u8, narrow: bool) -> (QConv, Vec<i8>, Vec<i32>) {
    let n = k.f * k.c * k.fh * k.fw;
    let mut w: Vec<i8> = (0..n)
        .map(|_| if narrow { rng.gen_range(-64..=64) } else { rng.gen() })
        .collect();
    if !narrow {
        w[n / 2] = -128;
    }
    let bias: Vec<i32> = (0..k.f).map(|_| rng.gen_range(-5000..5000)).collect();
    let conv = QConv::new(w.clone(), [k.f, k.c, k.fh, k.fw], k.stride, k.pad, bias.clone(), zero).unwrap();
    (conv, w, bias)
}

fn random_conv(rng: &mut ChaCha8Rng, k: &Case, zero: u8) -> (QConv, Vec<i8>, Vec<i32>) {
    random_conv_of(rng, k, zero, false)
}

#[test]
fn every_kernel_gives_the_definitions_sums() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let levels = Int8Kernel::supported_levels();
    assert!(levels.contains(&Int8Kernel::Scalar));
    let mut scratch = Int8Scratch::default();
    for (k, narrow) in cases().iter().flat_map(|k| [(k, true), (k, false)]) {
        let zero = rng.gen::<u8>();
        let (conv, w, bias) = random_conv_of(&mut rng, k, zero, narrow);
        let x: Vec<u8> = (0..k.h * k.w * k.c).map(|_| rng.gen()).collect();
        let want = reference_accumulate(&x, k.h, k.w, zero, &w, conv.dims(), k.stride, k.pad, &bias);
        for &kernel in &levels {
            let mut got = vec![0; want.len()];
            conv.accumulate(&x, k.h, k.w, &mut got, &mut scratch, kernel).unwrap();
            assert_eq!(
                got, want,
                "{kernel}: f {} c {} filter {}x{} stride {} pad {} image {}x{}, narrow {narrow}",
                k.f, k.c, k.fh, k.fw, k.stride, k.pad, k.h, k.w
            );
        }
    }
}

#[test]
fn extreme_values_do_not_saturate() {
    // 255 x -128 and 255 x 127 at full depth: the pair sums vpmaddubsw would saturate;
    // 255 x -64 and 255 x 64, the largest pair sums it takes
    let k = Case {
        f: 16,
        c: 64,
        fh: 3,
        fw: 3,
        stride: 1,
        pad: 1,
        h: 4,
        w: 4,
    };
    let mut scratch = Int8Scratch::default();
    for fill in [-128i8, 127, -64, 64, -65, 65] {
        let w = vec![fill; 16 * 64 * 9];
        let conv = QConv::new(w.clone(), [16, 64, 3, 3], 1, 1, vec![0; 16], 0).unwrap();
        let x = vec![255u8; 4 * 4 * 64];
        let want = reference_accumulate(&x, k.h, k.w, 0, &w, conv.dims(), 1, 1, &[0; 16]);
        // the centre pixel sees all 9 taps of all 64 channels
        assert_eq!(want[(4 + 1) * 16], 255 * i32::from(fill) * 64 * 9);
        for kernel in Int8Kernel::supported_levels() {
            let mut got = vec![0; want.len()];
            conv.accumulate(&x, 4, 4, &mut got, &mut scratch, kernel).unwrap();
            assert_eq!(got, want, "{kernel}");
        }
    }
}

#[test]
fn requantized_outputs_match_the_sums_on_every_kernel() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut scratch = Int8Scratch::default();
    let mut negative = 0;
    for (i, k) in cases().iter().step_by(3).enumerate() {
        let zero = rng.gen_range(0..20);
        let (conv, w, bias) = random_conv_of(&mut rng, k, zero, i % 2 == 0);
        let x: Vec<u8> = (0..k.h * k.w * k.c).map(|_| rng.gen()).collect();
        let sums = reference_accumulate(&x, k.h, k.w, zero, &w, conv.dims(), k.stride, k.pad, &bias);
        let multiplier: Vec<f32> = (0..k.f).map(|_| rng.gen_range(1e-5..1e-3)).collect();
        for relu in [false, true] {
            let rq = Requantize {
                multiplier: &multiplier,
                zero_point: 40,
                relu,
            };
            let want_u8: Vec<u8> = sums.iter().enumerate().map(|(i, &a)| rq.apply(a, i % k.f)).collect();
            let want_f32: Vec<f32> = sums
                .iter()
                .enumerate()
                .map(|(i, &a)| {
                    let v = a as f32 * multiplier[i % k.f];
                    if relu {
                        v.max(0.0)
                    } else {
                        v
                    }
                })
                .collect();
            for kernel in Int8Kernel::supported_levels() {
                let mut got = vec![0u8; sums.len()];
                conv.forward_u8(&x, k.h, k.w, rq, &mut got, &mut scratch, kernel)
                    .unwrap();
                assert_eq!(got, want_u8, "{kernel}");
                let mut got = vec![0f32; sums.len()];
                conv.forward_f32(&x, k.h, k.w, &multiplier, relu, &mut got, &mut scratch, kernel)
                    .unwrap();
                assert_eq!(got, want_f32, "{kernel}");
            }
            if relu {
                assert!(want_u8.iter().all(|&q| q >= 40));
            } else {
                negative += want_u8.iter().filter(|&&q| q < 40).count();
            }
        }
    }
    assert!(negative > 100, "some outputs are negative: {negative}");
}

#[test]
fn requantize_rounds_ties_to_even_and_clamps() {
    let m = [0.5f32, 1.0];
    let rq = Requantize {
        multiplier: &m,
        zero_point: 10,
        relu: false,
    };
    assert_eq!(rq.apply(5, 0), 12); // 2.5 -> 2
    assert_eq!(rq.apply(7, 0), 14); // 3.5 -> 4
    assert_eq!(rq.apply(-3, 1), 7);
    assert_eq!(rq.apply(-30, 1), 0);
    assert_eq!(rq.apply(300, 1), 255);
    let relu = Requantize { relu: true, ..rq };
    assert_eq!(relu.apply(-3, 1), 10);
    assert_eq!(relu.apply(3, 1), 13);
}

#[test]
fn quantization_parameters() {
    let pixels = QuantParams::from_range(0.0, 1.0);
    assert_eq!(pixels.zero_point, 0);
    assert_eq!(pixels.scale, 1.0 / 255.0);
    // every MNIST pixel value k/255 is stored as k exactly
    for k in 0..=255u8 {
        let x = f32::from(k) / 255.0;
        assert_eq!(pixels.quantize(x), k);
        assert!((pixels.dequantize(k) - x).abs() < 1e-6);
    }
    let signed = QuantParams::from_range(-1.0, 3.0);
    assert_eq!(signed.scale, 4.0 / 255.0);
    assert_eq!(signed.zero_point, 64); // 63.75 rounded
    assert_eq!(signed.quantize(0.0), 64);
    assert_eq!(signed.quantize(-5.0), 0);
    assert_eq!(signed.quantize(5.0), 255);
    assert_eq!(signed.quantize(f32::NAN), 0);
    assert!((signed.dequantize(255) - 191.0 * 4.0 / 255.0).abs() < 1e-6);
    // a range that excludes 0 is widened to hold it
    assert_eq!(QuantParams::from_range(2.0, 5.1), QuantParams::from_range(0.0, 5.1));
    assert_eq!(QuantParams::from_range(-2.0, -1.0).zero_point, 255);
    for degenerate in [(0.0, 0.0), (f32::NEG_INFINITY, 1.0), (0.0, f32::NAN)] {
        let q = QuantParams::from_range(degenerate.0, degenerate.1);
        assert_eq!(q.scale, 1.0, "{degenerate:?}");
    }
}

#[test]
fn weights_are_quantized_per_filter() {
    let w = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 2.0, 1.0, -0.01];
    let (q, s) = quantize_weights(&w, 3);
    assert_eq!(WEIGHT_MAX, 64);
    assert_eq!(s, vec![1.0 / 64.0, 1.0, 2.0 / 64.0]);
    // 0.25 * 64 = 16; -0.01 / (2 / 64) = -0.32 -> 0; 0.5 * 64 = 32
    assert_eq!(q, vec![32, -64, 16, 0, 0, 0, 64, 32, 0]);
    let (q, s) = quantize_weights(&[0.9, -1.0, 0.3, 1.0 / 128.0, 3.0 / 128.0], 1);
    // 0.9 * 64 = 57.6 -> 58, 0.3 * 64 = 19.2 -> 19, ties 0.5 -> 0 and 1.5 -> 2
    assert_eq!(s, vec![1.0 / 64.0]);
    assert_eq!(q, vec![58, -64, 19, 0, 2]);
}

#[test]
fn bad_filters_are_typed_errors() {
    let e = |r: Result<QConv, Int8Error>| r.unwrap_err().to_string();
    assert!(e(QConv::new(vec![], [0, 1, 3, 3], 1, 0, vec![], 0)).contains("filters"));
    assert!(e(QConv::new(vec![0; 9], [1, 1, 3, 3], 0, 0, vec![0], 0)).contains("stride 0"));
    assert!(e(QConv::new(vec![0; 8], [1, 1, 3, 3], 1, 0, vec![0], 0)).contains("8 weights"));
    assert!(e(QConv::new(vec![0; 9], [1, 1, 3, 3], 1, 0, vec![0, 0], 0)).contains("2 biases"));
    let huge = usize::MAX / 2;
    assert!(e(QConv::new(vec![0; 4], [2, huge, huge, 1], 1, 0, vec![0; 2], 0)).contains("4 weights"));
    assert!(e(QConv::new(vec![0; 4], [huge, 2, 2, 1], 1, 0, vec![0; 2], 0)).contains("4 weights"));
    let deep = MAX_DEPTH + 1;
    assert!(e(QConv::new(vec![0; deep], [1, deep, 1, 1], 1, 0, vec![0], 0)).contains("overflow"));
    assert!(QConv::new(vec![0; MAX_DEPTH], [1, MAX_DEPTH, 1, 1], 1, 0, vec![0], 0).is_ok());
    let conv = QConv::new(vec![0; 9], [1, 1, 3, 3], 1, 0, vec![0], 0).unwrap();
    let mut out = vec![0; 4];
    let err = conv
        .accumulate(&[0; 4], 2, 2, &mut out, &mut Int8Scratch::default(), Int8Kernel::Scalar)
        .unwrap_err();
    assert!(matches!(err, Int8Error::Geometry(_)), "{err}");
}

#[test]
fn the_zero_point_is_folded_into_the_bias() {
    // x - zero is what is multiplied: an image all at the zero point sums to the bias,
    // padding included
    let conv = QConv::new(vec![5; 2 * 3 * 9], [2, 3, 3, 3], 1, 1, vec![7, -9], 100).unwrap();
    assert_eq!(conv.input_zero(), 100);
    let mut out = vec![0; 4 * 4 * 2];
    conv.accumulate(
        &[100; 48],
        4,
        4,
        &mut out,
        &mut Int8Scratch::default(),
        Int8Kernel::Scalar,
    )
    .unwrap();
    assert!(out.chunks(2).all(|p| p == [7, -9]), "{out:?}");
}

#[test]
fn kernels_are_chosen_by_level() {
    assert_eq!(Int8Kernel::for_isa(Isa::Scalar), Int8Kernel::Scalar);
    assert_eq!(Int8Kernel::for_isa(Isa::Neon), Int8Kernel::Scalar);
    if Isa::Avx2.supported() {
        assert_eq!(Int8Kernel::for_isa(Isa::Avx2), Int8Kernel::Avx2);
    }
    if Isa::Avx512.supported() {
        let want = if Int8Kernel::Avx512Vnni.supported() {
            Int8Kernel::Avx512Vnni
        } else {
            Int8Kernel::Avx2
        };
        assert_eq!(Int8Kernel::for_isa(Isa::Avx512), want);
    }
    assert!(Int8Kernel::active().supported());
    assert_eq!(Int8Kernel::for_isa(Isa::active()), Int8Kernel::active());
    let names: Vec<&str> = Int8Kernel::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, ["scalar", "avx2", "avx512-vnni"]);
    assert_eq!(Int8Kernel::Avx512Vnni.to_string(), "avx512-vnni");
}

#[test]
fn quantizing_a_slice_is_quantize_at_every_kernel() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut x: Vec<f32> = (0..1000).map(|_| rng.gen_range(-3.0..5.0)).collect();
    // specials, ties and values past both ends, at odd positions of the vectors
    x.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        0.0,
        1e30,
        -1e30,
        f32::MIN_POSITIVE,
        0.5 / 255.0 * 4.0,
        1.5 / 255.0 * 4.0,
        2.5 / 255.0 * 4.0,
    ]);
    for q in [QuantParams::from_range(-1.0, 3.0), QuantParams::from_range(0.0, 1.0)] {
        let want: Vec<u8> = x.iter().map(|&v| q.quantize(v)).collect();
        for kernel in Int8Kernel::supported_levels() {
            for start in [0, 3] {
                let mut got = vec![7u8; x.len() - start];
                q.quantize_into(&x[start..], &mut got, kernel);
                assert_eq!(got, want[start..], "{kernel}");
            }
        }
    }
    // the hand-worked ends of `quantize` itself
    let q = QuantParams::from_range(-1.0, 3.0);
    assert_eq!(q.quantize(f32::INFINITY), 255);
    assert_eq!(q.quantize(f32::NEG_INFINITY), 0);
    assert_eq!(q.quantize(-0.0), 64);
    // 0.5 and 1.5 steps above zero: ties to even
    assert_eq!(q.quantize(0.5 * q.scale), 64);
    assert_eq!(q.quantize(1.5 * q.scale), 66);
}

#[test]
fn max_pool_on_bytes_matches_the_float_pool() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // 2x2 windows at stride 2 without padding take the one-pass path, on odd and even
    // sizes (the last row and column of an odd size belong to no window); 300 channels
    // are 18 vectors of 16 and a tail of 12
    for &(c, h, w, p, s, pad) in &[
        (300, 4, 4, 2, 2, 0),
        (3, 6, 6, 2, 2, 0),
        (16, 7, 5, 3, 2, 1),
        (1, 4, 4, 2, 1, 1),
        (16, 7, 7, 2, 2, 0),
        (32, 8, 6, 2, 2, 0),
        (5, 4, 6, 2, 2, 1),
    ] {
        let g = ConvGeometry::new(c, h, w, p, p, s, pad).unwrap();
        let x: Vec<u8> = (0..h * w * c).map(|_| rng.gen()).collect();
        let mut got = vec![0u8; g.out_h * g.out_w * c];
        max_pool_nhwc(&x, &g, &mut got);
        // the same in CHW floats
        let chw: Vec<f32> = (0..c * h * w)
            .map(|i| {
                let (ci, yx) = (i / (h * w), i % (h * w));
                f32::from(x[yx * c + ci])
            })
            .collect();
        let mut want = vec![0f32; c * g.out_h * g.out_w];
        dl_tensor::lowp::max_pool_image(&chw, &g, &mut want);
        for (i, &v) in got.iter().enumerate() {
            let (yx, ci) = (i / c, i % c);
            assert_eq!(f32::from(v), want[ci * g.out_h * g.out_w + yx]);
        }
    }
}

#[test]
fn one_scratch_serves_convolutions_of_any_kind_in_turn() {
    // the padded border is kept between images of one geometry: a lowered convolution
    // (which uses the same memory for its rows) or another zero point must not see it
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut scratch = Int8Scratch::default();
    let wide = SIXTEEN_BY_EIGHT;
    let narrow = Case {
        f: 16,
        c: 1,
        fh: 3,
        fw: 3,
        stride: 1,
        pad: 1,
        h: 6,
        w: 6,
    };
    for kernel in Int8Kernel::supported_levels() {
        for (i, (k, zero)) in [
            (&wide, 3),
            (&narrow, 3),
            (&wide, 3),
            (&wide, 9),
            (&narrow, 200),
            (&wide, 3),
            (&wide, 3),
        ]
        .into_iter()
        .enumerate()
        {
            // weights in -64..=64 and beyond, in turn
            let (conv, w, bias) = random_conv_of(&mut rng, k, zero, i % 2 == 1);
            let x: Vec<u8> = (0..k.h * k.w * k.c).map(|_| rng.gen()).collect();
            let want = reference_accumulate(&x, k.h, k.w, zero, &w, conv.dims(), k.stride, k.pad, &bias);
            let mut got = vec![0; want.len()];
            conv.accumulate(&x, k.h, k.w, &mut got, &mut scratch, kernel).unwrap();
            assert_eq!(got, want, "{kernel}, {} channels, zero point {zero}", k.c);
        }
    }
}

#[test]
fn a_scratch_counts_the_bytes_it_holds() {
    let mut scratch = Int8Scratch::default();
    assert_eq!(scratch.bytes(), 0);
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let k = SIXTEEN_BY_EIGHT;
    let (conv, _, _) = random_conv(&mut rng, &k, 5);
    let x: Vec<u8> = (0..6 * 6 * 8).map(|_| rng.gen()).collect();
    let mut out = vec![0; 6 * 6 * 16];
    // the padded image: 8 x 8 pixels of 8 channels
    conv.accumulate(&x, 6, 6, &mut out, &mut scratch, Int8Kernel::Scalar)
        .unwrap();
    let padded = scratch.bytes();
    assert!((8 * 8 * 8..2 * 8 * 8 * 8).contains(&padded), "{padded}");
    if Int8Kernel::Avx2.supported() {
        // weights in -64..=64: the AVX2 kernel reads the bytes as they are
        let (small, _, _) = random_conv_of(&mut rng, &k, 5, true);
        small
            .accumulate(&x, 6, 6, &mut out, &mut scratch, Int8Kernel::Avx2)
            .unwrap();
        assert_eq!(scratch.bytes(), padded);
        // beyond it, it reads them widened to 16 bits
        conv.accumulate(&x, 6, 6, &mut out, &mut scratch, Int8Kernel::Avx2)
            .unwrap();
        assert!(scratch.bytes() >= padded + 2 * 8 * 8 * 8, "{}", scratch.bytes());
        assert!(scratch.bytes() < 2 * padded + 4 * 8 * 8 * 8, "{}", scratch.bytes());
    }
    // a lowered convolution's image and rows come on top
    let narrow = Case { c: 1, ..k };
    let (conv, _, _) = random_conv(&mut rng, &narrow, 5);
    let before = scratch.bytes();
    conv.accumulate(&x[..36], 6, 6, &mut out, &mut scratch, Int8Kernel::Scalar)
        .unwrap();
    assert!(scratch.bytes() >= before + 8 * 8, "{} after {before}", scratch.bytes());
}

#[test]
fn kernels_are_there_exactly_when_the_cpu_has_their_instructions() {
    let flags = dl_tensor::cpu_simd_flags();
    let has = |f: &str| flags.contains(&f);
    assert_eq!(
        Int8Kernel::Avx512Vnni.supported(),
        has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512vnni")
    );
    assert_eq!(Int8Kernel::Avx2.supported(), has("avx2") && has("fma"));
    assert!(Int8Kernel::Scalar.supported());
}

#[test]
fn the_depth_bound_is_where_i32_sums_stop_being_safe() {
    // 255 x -128, the largest product, at every tap
    let worst = |k: usize| -255 * 128 * k as i64;
    assert_eq!(MAX_DEPTH, 65_793);
    assert!(-worst(MAX_DEPTH) <= i64::from(i32::MAX));
    assert!(-worst(MAX_DEPTH + 1) > i64::from(i32::MAX));
}

#[test]
fn a_convolution_keeps_what_it_was_built_from() {
    let w: Vec<i8> = (0..2 * 3 * 2 * 2).map(|i| i as i8 - 12).collect();
    let conv = QConv::new(w.clone(), [2, 3, 2, 2], 3, 2, vec![5, 6], 7).unwrap();
    assert_eq!(conv.weights(), &w[..]);
    assert_eq!((conv.stride(), conv.pad(), conv.input_zero()), (3, 2, 7));
    assert_eq!(conv.dims(), [2, 3, 2, 2]);
    let g = conv.geometry(5, 4).unwrap();
    assert_eq!((g.out_h, g.out_w), (3, 3));
}
