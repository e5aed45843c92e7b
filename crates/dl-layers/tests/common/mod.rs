//! What several test files share.

/// A convolution's geometry: (in, filters, fh, fw, stride, pad, input shape).
pub type ConvCase = (usize, usize, usize, usize, usize, usize, [usize; 4]);

/// Convolutions that reach every algorithm (lowered, direct, Winograd) and both
/// input-gradient paths: odd shapes, batch > 1, strides 1 to 3, pads 0 to 4.
pub const CONV_CASES: &[ConvCase] = &[
    (1, 2, 3, 3, 1, 1, [2, 1, 5, 5]),
    (2, 3, 3, 3, 2, 2, [2, 2, 7, 6]),
    (3, 2, 2, 3, 1, 0, [3, 3, 5, 4]),
    (2, 2, 3, 3, 3, 1, [1, 2, 8, 7]),
    // stride 1, square filters: dx through the transposed convolution
    (2, 3, 3, 3, 1, 2, [2, 2, 6, 5]),
    (2, 2, 3, 3, 1, 0, [5, 2, 6, 6]),
    (1, 2, 5, 5, 1, 2, [1, 1, 7, 7]),
    (2, 2, 5, 5, 1, 4, [2, 2, 3, 4]),
    // C*FH*FW >= 24: dW through the direct kernel where the CPU has AVX-512, with 17
    // filters (two lane blocks, the second mostly padding); dx (17 channels in)
    // through Winograd F(2x2, 3x3)
    (3, 17, 3, 3, 1, 1, [2, 3, 5, 4]),
    // 8 input channels: the forward pass through Winograd, odd output sizes
    (8, 3, 3, 3, 1, 1, [2, 8, 5, 7]),
];
