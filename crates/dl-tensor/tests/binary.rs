//! The 1-bit kernels against the float convolution of the signs, at every kernel this
//! CPU has.

use dl_tensor::binary::{
    reference_conv, BinaryConv, BinaryError, BitGrid, IntGrid, PopcountKernel, Thresholds, MAX_THRESHOLD_EVALUATIONS,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn signs(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    // values of both signs and zeros (which count as +1)
    (0..len)
        .map(|_| [-0.7, -0.1, 0.0, 0.3, 1.5][rng.gen_range(0..5)])
        .collect()
}

#[test]
fn every_kernel_gives_the_float_convolution_of_the_signs() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // channels inside one word, a full word, across words; filters below, at and above
    // a register (8) and a pass (64); strides, paddings and filters larger than 1
    let cases = [
        (1, 1, 5, 6, 3, 3, 1, 1),
        (2, 3, 7, 5, 7, 3, 1, 0),
        (2, 64, 6, 6, 8, 3, 1, 1),
        (1, 65, 5, 7, 9, 3, 2, 1),
        (3, 130, 4, 4, 70, 3, 1, 2),
        (2, 32, 9, 8, 64, 2, 2, 0),
        (1, 5, 3, 3, 130, 1, 1, 0),
        // windows packed densely whose taps straddle words (24 and 40 channels)
        (2, 24, 6, 7, 9, 3, 1, 1),
        (1, 40, 5, 5, 12, 3, 1, 1),
        (1, 63, 4, 4, 8, 2, 1, 0),
        // channels in half a word: strided 3x3 windows, 5x5 ones, filters that end
        // inside a register and a second pass
        (2, 20, 9, 9, 40, 3, 2, 1),
        (1, 32, 8, 8, 100, 5, 1, 2),
    ];
    for (n, c, h, w, f, k, stride, pad) in cases {
        let x = signs(n * c * h * w, &mut rng);
        let wt = signs(f * c * k * k, &mut rng);
        let dims = [f, c, k, k];
        let conv = BinaryConv::new(&wt, dims, stride, pad).unwrap();
        let expected = reference_conv(&x, n, c, h, w, &wt, dims, stride, pad);
        let grid = BitGrid::from_nchw(&x, n, c, h, w);
        for kernel in PopcountKernel::supported_levels() {
            let out = conv.forward(&grid, kernel).unwrap();
            assert_eq!((out.n, out.c), (n, f));
            assert_eq!(
                out.to_nchw(),
                expected,
                "{kernel} on {:?}",
                (n, c, h, w, f, k, stride, pad)
            );
        }
    }
}

#[test]
fn channels_in_half_a_word_count_sixteen_filters_per_instruction() {
    let conv = |c: usize| BinaryConv::new(&vec![1.0; 20 * c * 9], [20, c, 3, 3], 1, 1).unwrap();
    for kernel in PopcountKernel::ALL {
        let wide = match kernel {
            PopcountKernel::Avx512Vpopcntdq if kernel.supported() => (16, 8),
            _ => (1, 1),
        };
        assert_eq!((conv(32).lanes(kernel), conv(33).lanes(kernel)), wide, "{kernel}");
        assert_eq!(conv(1).lanes(kernel), wide.0, "{kernel}");
    }
}

#[test]
fn the_affine_form_is_the_product_of_the_flattened_signs() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, c, h, w, m) = (3, 70, 3, 2, 11);
    let d = c * h * w;
    let x = signs(n * d, &mut rng);
    let wt = signs(d * m, &mut rng);
    let sign = |v: f32| if v >= 0.0 { 1.0 } else { -1.0 };
    let dense = BinaryConv::affine(&wt, m, (c, h, w)).unwrap();
    let grid = BitGrid::from_nchw(&x, n, c, h, w);
    for kernel in PopcountKernel::supported_levels() {
        let out = dense.forward(&grid, kernel).unwrap();
        assert_eq!((out.h, out.w, out.c), (1, 1, m));
        for i in 0..n {
            for j in 0..m {
                let s: f32 = (0..d).map(|k| sign(x[i * d + k]) * sign(wt[k * m + j])).sum();
                assert_eq!(out.data[i * m + j] as f32, s, "{kernel} image {i} output {j}");
            }
        }
    }
    assert!(BinaryConv::affine(&wt, m + 1, (c, h, w)).is_err());
}

#[test]
fn the_packed_filters_take_a_word_per_64_channels_per_tap_for_8_filters_at_a_time() {
    let conv = BinaryConv::new(&vec![1.0; 5 * 70 * 3 * 3], [5, 70, 3, 3], 1, 1).unwrap();
    assert_eq!(conv.dims(), [5, 70, 3, 3]);
    // 9 taps, 2 words of channels each, 5 filters rounded up to 8, 8 bytes a word
    assert_eq!(conv.weight_bytes(), 9 * 2 * 8 * 8);
}

#[test]
fn bit_grids_hold_the_signs_in_either_layout() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (n, c, h, w) = (2, 67, 3, 4);
    let x = signs(n * c * h * w, &mut rng);
    let grid = BitGrid::from_nchw(&x, n, c, h, w);
    let sign = |v: f32| if v >= 0.0 { 1.0 } else { -1.0 };
    assert_eq!(grid.to_nchw(), x.iter().map(|&v| sign(v)).collect::<Vec<_>>());
    assert_eq!(grid.words_per_pixel(), 2);
    // unused bits are zero
    assert!(grid.data.iter().skip(1).step_by(2).all(|w| w >> 3 == 0));
    let mut nhwc = vec![0.0; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                nhwc[(i * h * w + p) * c + ch] = x[(i * c + ch) * h * w + p];
            }
        }
    }
    assert_eq!(BitGrid::from_nhwc(&nhwc, n, h, w, c), grid);
}

#[test]
fn bad_shapes_are_errors() {
    let w = vec![1.0; 2 * 3 * 9];
    assert!(matches!(
        BinaryConv::new(&w, [2, 3, 3, 3], 0, 1),
        Err(BinaryError::Invalid(_))
    ));
    assert!(matches!(
        BinaryConv::new(&w, [2, 4, 3, 3], 1, 1),
        Err(BinaryError::Invalid(_))
    ));
    let conv = BinaryConv::new(&w, [2, 3, 3, 3], 1, 0).unwrap();
    let grid = BitGrid::from_nchw(&[1.0; 4 * 4 * 4], 1, 4, 4, 4);
    assert!(matches!(
        conv.forward(&grid, PopcountKernel::Scalar),
        Err(BinaryError::Invalid(_))
    ));
    let small = BitGrid::from_nchw(&[1.0; 3 * 2 * 2], 1, 3, 2, 2);
    assert!(matches!(
        conv.forward(&small, PopcountKernel::Scalar),
        Err(BinaryError::Geometry(_))
    ));
}

#[test]
fn the_kernel_follows_the_instruction_set_level() {
    use dl_tensor::Isa;
    assert_eq!(PopcountKernel::for_isa(Isa::Scalar), PopcountKernel::Scalar);
    for isa in Isa::supported_levels() {
        let k = PopcountKernel::for_isa(isa);
        assert!(k.supported());
        if isa == Isa::Avx2 {
            assert_eq!(k, PopcountKernel::Popcnt, "every AVX2 CPU has popcnt");
        }
        if isa == Isa::Avx512 && PopcountKernel::Avx512Vpopcntdq.supported() {
            assert_eq!(k, PopcountKernel::Avx512Vpopcntdq);
        }
    }
    assert_eq!(
        PopcountKernel::ALL.map(|k| k.name()),
        ["scalar", "popcnt", "avx512-vpopcntdq"]
    );
    assert_eq!(PopcountKernel::Avx512Vpopcntdq.to_string(), "avx512-vpopcntdq");
    let levels = PopcountKernel::supported_levels();
    assert_eq!(levels[0], PopcountKernel::Scalar);
    assert!(levels.contains(&PopcountKernel::active()));
    assert_eq!(
        levels,
        PopcountKernel::ALL
            .into_iter()
            .filter(|k| k.supported())
            .collect::<Vec<_>>()
    );
}

/// What the kernels say the CPU has against what Linux says (`/proc/cpuinfo`).
#[test]
fn the_kernels_a_cpu_supports_are_those_its_flags_name() {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return; // not Linux: nothing independent to compare with
    };
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map_or(Vec::new(), |l| l.split_whitespace().collect());
    if flags.is_empty() {
        return; // not x86 (aarch64 names its "Features")
    }
    use dl_tensor::Isa;
    assert_eq!(
        PopcountKernel::Popcnt.supported(),
        Isa::Avx2.supported() && flags.contains(&"popcnt")
    );
    assert_eq!(
        PopcountKernel::Avx512Vpopcntdq.supported(),
        Isa::Avx512.supported() && flags.contains(&"avx512_vpopcntdq")
    );
    assert!(PopcountKernel::Scalar.supported());
}

/// A batch norm's sign on a sum: `v * scale + shift >= 0` in `f32`.
fn batch_norm_sign<'a>(scale: &'a [f32], shift: &'a [f32]) -> impl Fn(usize, i32) -> bool + 'a {
    move |ch, v| v as f32 * scale[ch] + shift[ch] >= 0.0
}

/// Per channel a scale and a shift of every kind: positive, negative, zero, a shift
/// beyond every sum, and ranges that are empty, full, or end inside.
fn batch_norms(channels: usize, bound: f32, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<f32>) {
    (0..channels)
        .map(|ch| match ch % 6 {
            0 => (rng.gen_range(0.1..2.0), rng.gen_range(-bound..bound)),
            1 => (-rng.gen_range(0.1..2.0), rng.gen_range(-bound..bound)),
            2 => (0.0, if ch % 12 == 2 { 0.5 } else { -0.5 }),
            3 => (1.0, 3.0 * bound),
            4 => (-1.0, -3.0 * bound),
            _ => (0.37, -0.37 * rng.gen_range(-3..4) as f32 - 0.1),
        })
        .unzip()
}

#[test]
fn thresholds_hold_the_sums_a_batch_norm_makes_positive() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (channels, bound) = (24, 40);
    let (scale, shift) = batch_norms(channels, bound as f32, &mut rng);
    let plus = batch_norm_sign(&scale, &shift);
    let t = Thresholds::from_fn(channels, bound, &plus).unwrap();
    assert_eq!(t.channels(), channels);
    for ch in 0..channels {
        for v in -(bound as i32)..=bound as i32 {
            assert_eq!(t.contains(ch, v), plus(ch, v), "channel {ch} sum {v}");
        }
    }
    // every channel of a batch norm reaches one end of the sums
    assert!(t.poolable());
    // the range as bounds: exactly the sums from 3 to 7
    let t = Thresholds::from_fn(1, 10, |_, v| (3..=7).contains(&v)).unwrap();
    assert!((3..=7).all(|v| t.contains(0, v)));
    assert!(!t.contains(0, 2) && !t.contains(0, 8));
    assert!(!t.poolable());
    // one sum alone, inside the range of sums
    let one = Thresholds::from_fn(1, 10, |_, v| v == 4).unwrap();
    assert!(one.contains(0, 4) && !one.contains(0, 3) && !one.contains(0, 5));
    assert!(!one.poolable());
    // the ends: up to the bound, down to it, none, all
    assert!(Thresholds::from_fn(1, 10, |_, v| v >= 3).unwrap().poolable());
    assert!(Thresholds::from_fn(1, 10, |_, v| v <= -3).unwrap().poolable());
    let none = Thresholds::from_fn(2, 10, |_, _| false).unwrap();
    assert!(none.poolable() && !(-10..=10).any(|v| none.contains(0, v) || none.contains(1, v)));
    let all = Thresholds::from_fn(1, 10, |_, _| true).unwrap();
    assert!(all.poolable() && (-10..=10).all(|v| all.contains(0, v)));
}

#[test]
fn thresholds_refuse_what_is_not_one_range_or_too_much_to_evaluate() {
    // +1 in two separate ranges
    assert!(matches!(
        Thresholds::from_fn(3, 10, |ch, v| ch != 1 || !(-2..=2).contains(&v)),
        Err(BinaryError::Invalid(_))
    ));
    // at the limit, and one past it
    let span = MAX_THRESHOLD_EVALUATIONS / 8;
    assert!(Thresholds::from_fn(8, (span - 1) / 2, |_, v| v >= 0).is_ok());
    assert!(matches!(
        Thresholds::from_fn(8, span / 2, |_, v| v >= 0),
        Err(BinaryError::Invalid(_))
    ));
    assert!(Thresholds::from_fn(1, usize::MAX / 2, |_, _| true).is_err());
    assert!(Thresholds::from_fn(usize::MAX, 1, |_, _| true).is_err());
}

#[test]
fn the_fused_kernel_gives_the_signs_of_the_sums() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // filters below, at and above a register and a word; channels across words
    let cases = [
        (2, 3, 5, 6, 5, 3, 1, 1),
        (2, 64, 6, 5, 64, 3, 1, 1),
        (1, 70, 5, 5, 70, 3, 2, 1),
        (2, 32, 4, 4, 130, 3, 1, 0),
        (3, 130, 3, 3, 9, 3, 1, 1),
        (2, 24, 6, 6, 16, 3, 1, 1),
        (1, 17, 9, 9, 40, 3, 2, 1),
        (1, 32, 7, 7, 100, 5, 1, 2),
    ];
    for (n, c, h, w, f, k, stride, pad) in cases {
        let x = signs(n * c * h * w, &mut rng);
        let wt = signs(f * c * k * k, &mut rng);
        let conv = BinaryConv::new(&wt, [f, c, k, k], stride, pad).unwrap();
        assert_eq!(conv.bound(), c * k * k);
        let (scale, shift) = batch_norms(f, (c * k) as f32, &mut rng);
        let t = Thresholds::from_fn(f, conv.bound(), batch_norm_sign(&scale, &shift)).unwrap();
        let grid = BitGrid::from_nchw(&x, n, c, h, w);
        let sums = conv.forward(&grid, PopcountKernel::Scalar).unwrap();
        let expected = t.signs(&sums).unwrap();
        // the signs are those of the batch norm on every sum, unused bits zero
        let wpp = f.div_ceil(64);
        for (p, pixel) in sums.data.chunks(f).enumerate() {
            for (ch, &v) in pixel.iter().enumerate() {
                let bit = expected.data[p * wpp + ch / 64] >> (ch % 64) & 1 == 1;
                assert_eq!(bit, v as f32 * scale[ch] + shift[ch] >= 0.0);
            }
            if f % 64 != 0 {
                assert_eq!(expected.data[p * wpp + wpp - 1] >> (f % 64), 0);
            }
        }
        for kernel in PopcountKernel::supported_levels() {
            let out = conv.forward_signs(&grid, &t, kernel).unwrap();
            assert_eq!(out, expected, "{kernel} on {:?}", (n, c, h, w, f, k, stride, pad));
        }
        let other = Thresholds::from_fn(f + 1, conv.bound(), |_, v| v >= 0).unwrap();
        assert!(matches!(
            conv.forward_signs(&grid, &other, PopcountKernel::Scalar),
            Err(BinaryError::Invalid(_))
        ));
        assert!(t
            .signs(&IntGrid {
                c: f + 1,
                ..sums.clone()
            })
            .is_err());
        let short = IntGrid {
            data: sums.data[1..].to_vec(),
            ..sums.clone()
        };
        assert!(matches!(t.signs(&short), Err(BinaryError::Invalid(_))));
    }
}

/// Max pooling of sums, channels last, from the definition (padding never wins).
fn max_pool_sums(x: &IntGrid, k: usize, stride: usize, pad: usize) -> IntGrid {
    let (oh, ow) = ((x.h + 2 * pad - k) / stride + 1, (x.w + 2 * pad - k) / stride + 1);
    let mut data = Vec::new();
    for i in 0..x.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..x.c {
                    let mut best = i32::MIN;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (y, xx) = (
                                (oy * stride + ky) as isize - pad as isize,
                                (ox * stride + kx) as isize - pad as isize,
                            );
                            if y >= 0 && xx >= 0 && (y as usize) < x.h && (xx as usize) < x.w {
                                best = best.max(x.data[((i * x.h + y as usize) * x.w + xx as usize) * x.c + ch]);
                            }
                        }
                    }
                    data.push(best);
                }
            }
        }
    }
    IntGrid {
        n: x.n,
        h: oh,
        w: ow,
        c: x.c,
        data,
    }
}

#[test]
fn pooling_the_signs_gives_the_signs_of_the_pooled_sums() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for (n, c, h, w, f, k, stride, pad) in [
        (2, 8, 6, 6, 70, 2, 2, 0),
        (1, 64, 7, 5, 64, 3, 2, 1),
        (2, 5, 5, 5, 12, 2, 1, 1),
    ] {
        let x = signs(n * c * h * w, &mut rng);
        let wt = signs(f * c * 9, &mut rng);
        let conv = BinaryConv::new(&wt, [f, c, 3, 3], 1, 1).unwrap();
        let (scale, shift) = batch_norms(f, (c * 3) as f32, &mut rng);
        let t = Thresholds::from_fn(f, conv.bound(), batch_norm_sign(&scale, &shift)).unwrap();
        let sums = conv
            .forward(&BitGrid::from_nchw(&x, n, c, h, w), PopcountKernel::Scalar)
            .unwrap();
        let expected = t.signs(&max_pool_sums(&sums, k, stride, pad)).unwrap();
        let pooled = t.max_pool(&t.signs(&sums).unwrap(), k, k, stride, pad).unwrap();
        assert_eq!(pooled, expected, "{:?}", (n, c, h, w, f, k, stride, pad));
        // a window that does not fit, padding as wide as the window
        assert!(t.max_pool(&t.signs(&sums).unwrap(), h + 3, k, 1, 0).is_err());
        assert!(t.max_pool(&t.signs(&sums).unwrap(), k, k, 1, k).is_err());
        // bits beyond the channels set in the input (its fields are public) are not
        // carried into the output
        let mut junk = t.signs(&sums).unwrap();
        if f % 64 != 0 {
            junk.data
                .iter_mut()
                .skip(f / 64)
                .step_by(f.div_ceil(64))
                .for_each(|w| *w |= u64::MAX << (f % 64));
            let pooled = t.max_pool(&junk, k, k, stride, pad).unwrap();
            assert_eq!(pooled, expected, "junk bits dropped");
        }
        // as wide as one side of the window only
        assert!(t.max_pool(&t.signs(&sums).unwrap(), 3, 2, 1, 2).is_err());
        assert!(t.max_pool(&t.signs(&sums).unwrap(), 2, 3, 1, 2).is_err());
    }
    // a range inside the sums: the sign of the maximum does not follow from the signs
    let t = Thresholds::from_fn(3, 9, |ch, v| ch != 2 || (-1..=1).contains(&v)).unwrap();
    let grid = BitGrid::from_nchw(&[1.0; 3 * 4], 1, 3, 2, 2);
    assert!(matches!(t.max_pool(&grid, 2, 2, 2, 0), Err(BinaryError::Invalid(_))));
    let wrong = BitGrid::from_nchw(&[1.0; 4 * 4], 1, 4, 2, 2);
    assert!(Thresholds::from_fn(3, 9, |_, v| v > 0)
        .unwrap()
        .max_pool(&wrong, 2, 2, 2, 0)
        .is_err());
}
