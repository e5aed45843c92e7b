use dl_tensor::reference::{conv2d_reference, im2col_reference, matmul_reference};
use dl_tensor::{col2im, col2im_chw, gemm, im2col, im2col_chw, ConvGeometry};
use ndarray::{Array1, Array2, Array4, ArrayView2};
use rand::{Rng, SeedableRng};

fn random4(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_fn(shape, |_| rng.gen_range(-1.0..1.0))
}

/// (N, C, H, W, FH, FW, stride, pad).
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

/// Odd sizes, stride 2 and 3, pad 0..2, non-square inputs and filters.
const CASES: &[Case] = &[
    (1, 1, 5, 5, 3, 3, 1, 0),
    (2, 3, 7, 7, 5, 5, 1, 0),
    (2, 3, 7, 9, 3, 3, 2, 1),
    (3, 2, 8, 6, 3, 2, 1, 2),
    (1, 4, 11, 10, 3, 3, 3, 2),
    (2, 1, 28, 28, 3, 3, 1, 1),
    (2, 2, 4, 4, 2, 2, 2, 0),
    (1, 2, 3, 3, 5, 5, 1, 2),
    // "same"-width convolutions (the one-piece copy path of im2col_chw)
    (2, 3, 9, 7, 3, 3, 1, 1),
    (1, 2, 6, 5, 5, 5, 1, 2),
    (2, 2, 5, 4, 1, 1, 1, 0),
    (1, 1, 4, 6, 3, 5, 1, 2),
    // images smaller than the filter's reach: rows of a filter offset wholly in the
    // padding
    (2, 2, 1, 1, 3, 3, 1, 1),
    // strided, with two or more whole output rows in the top padding, and a one-column
    // output with a padded bottom row
    (2, 1, 5, 5, 3, 3, 2, 3),
    (2, 2, 5, 1, 3, 3, 2, 1),
    // a stride and padding past the image: filter offsets with no valid column
    (1, 1, 5, 1, 1, 1, 3, 4),
    // stride 1 with a padding of 3: the padded plane's rows are w + 6 long
    (1, 2, 4, 5, 3, 3, 1, 3),
    (1, 3, 2, 2, 5, 5, 1, 2),
    (1, 1, 1, 3, 3, 3, 1, 1),
];

#[test]
fn im2col_matches_plain_loop_reference() {
    for (i, &(n, c, h, w, fh, fw, s, p)) in CASES.iter().enumerate() {
        let x = random4((n, c, h, w), i as u64);
        let fast = im2col(&x.view(), fh, fw, s, p);
        let slow = im2col_reference(&x.view(), fh, fw, s, p);
        assert_eq!(fast, slow, "case {i}");
    }
}

#[test]
fn im2col_and_col2im_are_adjoint() {
    // <im2col(x), y> == <x, col2im(y)> for random x and y
    for (i, &(n, c, h, w, fh, fw, s, p)) in CASES.iter().enumerate() {
        let x = random4((n, c, h, w), 100 + i as u64);
        let col = im2col(&x.view(), fh, fw, s, p);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(200 + i as u64);
        let y = Array2::from_shape_fn(col.dim(), |_| rng.gen_range(-1.0f32..1.0));
        let back = col2im(&y.view(), (n, c, h, w), fh, fw, s, p);
        let lhs: f64 = col.iter().zip(&y).map(|(a, b)| f64::from(a * b)).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| f64::from(a * b)).sum();
        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "case {i}: {lhs} vs {rhs}");
    }
}

#[test]
fn col2im_counts_window_overlaps() {
    // col2im of all-ones counts how many windows cover each pixel: a 3x3 window with
    // stride 1 and no padding over 4x4 covers the corner once and the centre four times.
    let ones = Array2::<f32>::ones((4, 9));
    let img = col2im(&ones.view(), (1, 1, 4, 4), 3, 3, 1, 0);
    assert_eq!(img[[0, 0, 0, 0]], 1.0);
    assert_eq!(img[[0, 0, 1, 1]], 4.0);
    assert_eq!(img[[0, 0, 0, 1]], 2.0);
}

#[test]
fn chw_layout_is_the_transpose_of_the_books_block() {
    for (i, &(n, c, h, w, fh, fw, s, p)) in CASES.iter().enumerate() {
        let x = random4((n, c, h, w), 300 + i as u64);
        let g = ConvGeometry::new(c, h, w, fh, fw, s, p).unwrap();
        let book = im2col(&x.view(), fh, fw, s, p);
        let rows = g.col_cols();
        let mut chw = vec![0.0; g.col_rows() * g.col_cols()];
        for b in 0..n {
            // fill with garbage first: im2col_chw must write every element
            chw.fill(f32::NAN);
            im2col_chw(x.slice(ndarray::s![b, .., .., ..]).as_slice().unwrap(), &g, &mut chw);
            let chw_view = ArrayView2::from_shape((g.col_rows(), g.col_cols()), &chw).unwrap();
            let block = book.slice(ndarray::s![b * rows..(b + 1) * rows, ..]);
            assert_eq!(chw_view, block.t(), "case {i} image {b}");
            // and col2im_chw of it equals the book's col2im for that image
            let mut img = vec![0.0f32; c * h * w];
            col2im_chw(&chw, &g, &mut img);
            let want = col2im(&block, (1, c, h, w), fh, fw, s, p);
            assert_eq!(img.as_slice(), want.as_slice().unwrap(), "case {i} image {b}");
        }
    }
}

#[test]
fn im2col_gemm_convolution_matches_direct_seven_loop_convolution() {
    for (i, &(n, c, h, w, fh, fw, s, p)) in CASES.iter().enumerate() {
        let fnum = 3;
        let x = random4((n, c, h, w), 400 + i as u64);
        let wt = random4((fnum, c, fh, fw), 500 + i as u64);
        let b = Array1::from_shape_fn(fnum, |k| k as f32 * 0.1);
        let want = conv2d_reference(&x.view(), &wt.view(), &b.view(), s, p);
        // the book's way: col · W^T + b, then reshape and transpose
        let col = im2col(&x.view(), fh, fw, s, p);
        let w2 = wt.view().into_shape_with_order((fnum, c * fh * fw)).unwrap();
        let mut out = matmul_reference(&col.view(), &w2.t());
        out += &b;
        let (oh, ow) = (want.dim().2, want.dim().3);
        let book = out
            .into_shape_with_order((n, oh, ow, fnum))
            .unwrap()
            .permuted_axes([0, 3, 1, 2]);
        // the per-image way: W · col_chw
        let g = ConvGeometry::new(c, h, w, fh, fw, s, p).unwrap();
        let mut chw = vec![0.0; g.col_rows() * g.col_cols()];
        let mut fast = Array4::<f32>::zeros((n, fnum, oh, ow));
        for bi in 0..n {
            im2col_chw(x.slice(ndarray::s![bi, .., .., ..]).as_slice().unwrap(), &g, &mut chw);
            let colv = ArrayView2::from_shape((g.col_rows(), g.col_cols()), &chw).unwrap();
            let mut o = fast.slice_mut(ndarray::s![bi, .., .., ..]);
            let mut o2 = o.view_mut().into_shape_with_order((fnum, oh * ow)).unwrap();
            gemm(1.0, &w2, &colv, 0.0, &mut o2);
        }
        fast += &b.view().into_shape_with_order((1, fnum, 1, 1)).unwrap();
        for ((a, bk), r) in fast.iter().zip(book.iter()).zip(want.iter()) {
            assert!((a - r).abs() < 1e-4, "case {i}: fast {a} vs direct {r}");
            assert!((bk - r).abs() < 1e-4, "case {i}: book {bk} vs direct {r}");
        }
    }
}

#[test]
fn geometry_rejects_impossible_windows() {
    assert!(ConvGeometry::new(1, 5, 5, 3, 3, 0, 0).is_err());
    let e = ConvGeometry::new(1, 2, 2, 5, 5, 1, 1).unwrap_err().to_string();
    assert!(e.contains("larger than the padded input"), "{e}");
    assert!(ConvGeometry::new(1, 2, 2, 5, 5, 1, 2).is_ok());
}
