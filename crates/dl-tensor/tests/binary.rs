//! The 1-bit kernels against the float convolution of the signs, at every kernel this
//! CPU has.

use dl_tensor::binary::{reference_conv, BinaryConv, BinaryError, BitGrid, PopcountKernel};
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
