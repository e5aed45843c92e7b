//! A digit from any picture, made the way MNIST itself was made.
//!
//! LeCun, Cortes and Burges describe it on the MNIST page: the digit was "size
//! normalized to fit in a 20x20 pixel box while preserving their aspect ratio", with
//! grey levels from the anti-aliasing of that scaling, then "centered in a 28x28 image
//! by computing the center of mass of the pixels, and translating the image so as to
//! position this point at the center of the 28x28 field". [`mnist_like`] does those
//! three steps on an image of any size:
//!
//! 1. the bounding box of the ink (pixels above [`INK_THRESHOLD`]);
//! 2. that box scaled so its longer side is [`BOX`] pixels, by exact area averaging
//!    (each output pixel is the mean of the input area it covers: a box filter, the
//!    anti-aliasing);
//! 3. the scaled digit placed in 28x28 so that its centre of mass lands on pixel 14
//!    (rows and columns counted from 0; rounded to whole pixels, halves away from the
//!    top left), never cut by the border. MNIST's own digits have their centres of
//!    mass within half a pixel of 14 in row and column (the middle of the test set:
//!    13.99, 14.02), half a pixel below and right of the geometric centre 13.5.
//!
//! [`ink_from_gray`] turns an 8-bit grey image (a photo or a scan: dark ink on light
//! paper, or a canvas: light ink on black) into ink values, choosing the polarity from
//! the image's border.
//!
//! ```
//! use dl_data::preprocess::{mnist_like, SIDE};
//!
//! // a 3-pixel-wide vertical bar drawn on a 100x100 canvas
//! let mut ink = vec![0.0f32; 100 * 100];
//! for y in 20..80 {
//!     for x in 40..43 {
//!         ink[y * 100 + x] = 1.0;
//!     }
//! }
//! let digit = mnist_like(100, 100, &ink).unwrap();
//! assert_eq!(digit.len(), SIDE * SIDE);
//! // 60 pixels tall -> 20 rows, centred on row 14
//! let rows: Vec<usize> = (0..SIDE).filter(|r| digit[r * SIDE..(r + 1) * SIDE].iter().any(|&v| v > 0.0)).collect();
//! assert_eq!((rows[0], rows.len()), (5, 20));
//! ```

use crate::DataError;

/// Side of the output image (MNIST's 28).
pub const SIDE: usize = 28;
/// Side of the box the digit is scaled into (MNIST's 20).
pub const BOX: usize = 20;
/// Ink values above this belong to the digit's bounding box.
pub const INK_THRESHOLD: f32 = 0.1;
/// Largest accepted input side, in pixels.
pub const MAX_SIDE: usize = 4096;

/// An image that cannot become a digit.
fn bad(reason: impl Into<String>) -> DataError {
    DataError::BadImage { reason: reason.into() }
}

/// Ink values in `[0, 1]` (`1` = full ink) from 8-bit grey levels, row-major.
///
/// MNIST's digits are light on black. A picture whose border is mostly light (dark ink
/// on paper) is inverted; one whose border is mostly dark (a drawing canvas) is not.
/// The border is the outermost row and column on each side.
pub fn ink_from_gray(width: usize, height: usize, gray: &[u8]) -> Result<Vec<f32>, DataError> {
    check_size(width, height, gray.len())?;
    let mut border_sum = 0u64;
    let mut border_n = 0u64;
    for y in 0..height {
        for x in 0..width {
            if y == 0 || x == 0 || y + 1 == height || x + 1 == width {
                border_sum += u64::from(gray[y * width + x]);
                border_n += 1;
            }
        }
    }
    let light_paper = border_sum * 2 > border_n * 255;
    Ok(gray
        .iter()
        .map(|&g| {
            let v = f32::from(g) / 255.0;
            if light_paper {
                1.0 - v
            } else {
                v
            }
        })
        .collect())
}

fn check_size(width: usize, height: usize, len: usize) -> Result<(), DataError> {
    if width == 0 || height == 0 {
        return Err(bad(format!("the image is {width}x{height}: it has no pixels")));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(bad(format!(
            "the image is {width}x{height}: the largest accepted side is {MAX_SIDE}"
        )));
    }
    if len != width * height {
        return Err(bad(format!(
            "{len} pixel values for a {width}x{height} image (expected {})",
            width * height
        )));
    }
    Ok(())
}

/// The 28x28 MNIST-style digit (row-major, values in `[0, 1]`, ink = 1) of an image
/// of ink values, `width x height`, row-major. See the [module](self) for the steps.
///
/// Errors: a size of zero or above [`MAX_SIDE`], a pixel count that does not match, a
/// value outside `[0, 1]` or not finite, or no pixel above [`INK_THRESHOLD`].
pub fn mnist_like(width: usize, height: usize, ink: &[f32]) -> Result<Vec<f32>, DataError> {
    check_size(width, height, ink.len())?;
    if let Some(v) = ink.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(bad(format!("ink value {v} is outside [0, 1]")));
    }
    // 1. bounding box of the ink
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for y in 0..height {
        for x in 0..width {
            if ink[y * width + x] > INK_THRESHOLD {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
    }
    if x0 == usize::MAX {
        return Err(bad("the image has no ink (nothing drawn)"));
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    // 2. scale the longer side to BOX, keeping the aspect ratio
    let scale = BOX as f64 / bw.max(bh) as f64;
    let ow = ((bw as f64 * scale).round() as usize).clamp(1, BOX);
    let oh = ((bh as f64 * scale).round() as usize).clamp(1, BOX);
    let xs = area_weights(bw, ow);
    let ys = area_weights(bh, oh);
    let mut small = vec![0.0f32; ow * oh];
    for (oy, wy) in ys.iter().enumerate() {
        for (ox, wx) in xs.iter().enumerate() {
            let mut acc = 0.0f64;
            for &(sy, fy) in wy {
                let row = &ink[(y0 + sy) * width + x0..];
                for &(sx, fx) in wx {
                    acc += fy * fx * f64::from(row[sx]);
                }
            }
            small[oy * ow + ox] = acc as f32;
        }
    }
    // 3. centre of mass on pixel 14, the digit kept whole inside 28x28
    let (mut mass, mut my, mut mx) = (0.0f64, 0.0f64, 0.0f64);
    for y in 0..oh {
        for x in 0..ow {
            let v = f64::from(small[y * ow + x]);
            mass += v;
            my += v * y as f64;
            mx += v * x as f64;
        }
    }
    let half = (SIDE / 2) as f64;
    let place = |centre: f64, len: usize| -> usize {
        let offset = (half - centre / mass).round();
        offset.clamp(0.0, (SIDE - len) as f64) as usize
    };
    let (top, left) = (place(my, oh), place(mx, ow));
    let mut out = vec![0.0f32; SIDE * SIDE];
    for y in 0..oh {
        out[(top + y) * SIDE + left..(top + y) * SIDE + left + ow].copy_from_slice(&small[y * ow..(y + 1) * ow]);
    }
    Ok(out)
}

/// For each of `m` output cells over `n` input cells, the input cells it covers and
/// the fraction of the output cell each one fills (the fractions sum to 1).
fn area_weights(n: usize, m: usize) -> Vec<Vec<(usize, f64)>> {
    let step = n as f64 / m as f64;
    (0..m)
        .map(|o| {
            let (a, b) = (o as f64 * step, (o + 1) as f64 * step);
            // cells floor(a) .. ceil(b): each overlaps [a, b) by a positive length,
            // since b > a
            let (first, last) = (a.floor() as usize, (b.ceil() as usize).min(n));
            (first..last)
                .map(|i| (i, (b.min((i + 1) as f64) - a.max(i as f64)) / step))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full ink on rows `ys` and columns `xs` of a `w`-wide image.
    fn fill(ink: &mut [f32], w: usize, ys: std::ops::Range<usize>, xs: std::ops::Range<usize>) {
        for y in ys {
            ink[y * w + xs.start..y * w + xs.end].fill(1.0);
        }
    }

    fn bounding_box(img: &[f32], side: usize) -> (usize, usize, usize, usize) {
        let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
        for y in 0..side {
            for x in 0..side {
                if img[y * side + x] > 0.0 {
                    x0 = x0.min(x);
                    x1 = x1.max(x);
                    y0 = y0.min(y);
                    y1 = y1.max(y);
                }
            }
        }
        (x0, x1, y0, y1)
    }

    fn centre_of_mass(img: &[f32], side: usize) -> (f64, f64) {
        let (mut m, mut cy, mut cx) = (0.0, 0.0, 0.0);
        for y in 0..side {
            for x in 0..side {
                let v = f64::from(img[y * side + x]);
                m += v;
                cy += v * y as f64;
                cx += v * x as f64;
            }
        }
        (cy / m, cx / m)
    }

    #[test]
    fn area_weights_cover_each_output_cell_exactly_once() {
        for (n, m) in [(60, 20), (7, 20), (20, 20), (33, 7), (1, 1), (3, 2)] {
            let w = area_weights(n, m);
            assert_eq!(w.len(), m);
            let mut per_input = vec![0.0; n];
            for cells in &w {
                let total: f64 = cells.iter().map(|&(_, f)| f).sum();
                assert!((total - 1.0).abs() < 1e-9, "{n}->{m}: {total}");
                for &(i, f) in cells {
                    per_input[i] += f * n as f64 / m as f64;
                }
            }
            // every input cell is used in full, no more
            for (i, &p) in per_input.iter().enumerate() {
                assert!((p - 1.0).abs() < 1e-9, "{n}->{m}: input {i} used {p}");
            }
        }
        // 3 -> 2: the middle input is split in half
        assert_eq!(area_weights(3, 2)[0], vec![(0, 2.0 / 3.0), (1, 1.0 / 3.0)]);
    }

    #[test]
    fn a_wide_box_is_scaled_to_twenty_columns_and_centred() {
        // a solid 90x30 rectangle in a 200x100 image, off centre
        let (w, h) = (200, 100);
        let mut ink = vec![0.0f32; w * h];
        fill(&mut ink, w, 5..35, 100..190);
        let d = mnist_like(w, h, &ink).unwrap();
        let (x0, x1, y0, y1) = bounding_box(&d, SIDE);
        assert_eq!(
            (x1 - x0 + 1, y1 - y0 + 1),
            (20, 7),
            "aspect ratio kept (90:30 -> 20:6.7)"
        );
        // the box's centre of mass is 9.5 columns in: 14 - 9.5 = 4.5, rounded to 5
        assert_eq!((x0, y0), (5, 11));
        // a solid box stays solid: area averaging of ones is one (up to the edge rows)
        assert!((d[14 * SIDE + 14] - 1.0).abs() < 1e-6);
        let (cy, cx) = centre_of_mass(&d, SIDE);
        assert!((cy - 14.0).abs() <= 0.5 && (cx - 14.0).abs() <= 0.5, "{cy} {cx}");
    }

    #[test]
    fn the_centre_of_mass_moves_a_lopsided_digit_but_never_cuts_it() {
        // an L: a tall bar and a heavy foot on the right
        let (w, h) = (40, 40);
        let mut ink = vec![0.0f32; w * h];
        for y in 0..40 {
            ink[y * w] = 1.0;
        }
        fill(&mut ink, w, 30..40, 0..40);
        let d = mnist_like(w, h, &ink).unwrap();
        let (x0, x1, y0, y1) = bounding_box(&d, SIDE);
        assert_eq!((x1 - x0 + 1, y1 - y0 + 1), (20, 20));
        assert_eq!(y0, 0, "moved up as far as the border allows");
        assert!(x0 > 4, "the bar pulls it left of centre, so the box moves right: {x0}");
        let sum_in: f32 = ink.iter().sum::<f32>() * (20.0 * 20.0) / (40.0 * 40.0);
        let sum_out: f32 = d.iter().sum();
        assert!(
            (sum_in - sum_out).abs() < 1e-3,
            "area averaging keeps the mass: {sum_in} {sum_out}"
        );
        // centred in the columns; in the rows, as close to 14 as the border lets it be
        let (cy, cx) = centre_of_mass(&d, SIDE);
        assert!(cy > 16.0 && (cx - 14.0).abs() <= 0.5, "{cy} {cx}");
    }

    #[test]
    fn a_tiny_drawing_is_scaled_up() {
        let (w, h) = (10, 10);
        let mut ink = vec![0.0f32; w * h];
        ink[5 * w + 5] = 1.0;
        ink[6 * w + 5] = 1.0;
        let d = mnist_like(w, h, &ink).unwrap();
        let (x0, x1, y0, y1) = bounding_box(&d, SIDE);
        assert_eq!((x1 - x0 + 1, y1 - y0 + 1), (10, 20));
        assert_eq!((y0, x0), (5, 10));
    }

    #[test]
    fn an_mnist_digit_scaled_up_comes_back_as_itself() {
        // a digit in MNIST's form (box 20 tall, centre of mass within half a pixel of
        // 14, not on a half), scaled x10
        let mut small = vec![0.0f32; SIDE * SIDE];
        for y in 4..24 {
            for x in 9..19 {
                small[y * SIDE + x] = 0.4 + 0.3 * (y - 4) as f32 / 19.0 + 0.3 * (x - 9) as f32 / 9.0;
            }
        }
        let (cy, cx) = centre_of_mass(&small, SIDE);
        assert!((cy - 14.25).abs() < 1e-6 && (cx - 13.892857).abs() < 1e-6, "{cy} {cx}");
        let big_side = SIDE * 10;
        let big: Vec<f32> = (0..big_side * big_side)
            .map(|i| small[(i / big_side / 10) * SIDE + (i % big_side) / 10])
            .collect();
        let d = mnist_like(big_side, big_side, &big).unwrap();
        let diff: f32 = d.iter().zip(&small).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn polarity_follows_the_border() {
        // dark ink on white paper is inverted
        let paper = [255u8, 255, 255, 255, 0, 255, 255, 255, 255];
        assert_eq!(ink_from_gray(3, 3, &paper).unwrap()[4], 1.0);
        assert_eq!(ink_from_gray(3, 3, &paper).unwrap()[0], 0.0);
        // light ink on black stays
        let canvas = [0u8, 0, 0, 0, 255, 0, 0, 0, 51];
        let ink = ink_from_gray(3, 3, &canvas).unwrap();
        assert_eq!((ink[4], ink[8]), (1.0, 0.2));
        // a border exactly half light stays as it is
        let half = [0u8, 255, 0, 255];
        assert_eq!(ink_from_gray(2, 2, &half).unwrap()[0], 0.0);
        let just_over = [0u8, 255, 255, 255];
        assert_eq!(ink_from_gray(2, 2, &just_over).unwrap()[0], 1.0);
    }

    #[test]
    fn polarity_is_decided_by_the_outermost_ring_alone() {
        // random images of many shapes against the definition: invert when the mean of
        // the pixels on the outermost ring is above half
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut inverted = 0;
        for _ in 0..400 {
            let (w, h) = (rng.gen_range(1..9usize), rng.gen_range(1..9usize));
            let gray: Vec<u8> = (0..w * h).map(|_| rng.gen()).collect();
            let ring: Vec<f64> = (0..w * h)
                .filter(|i| {
                    let (x, y) = (i % w, i / w);
                    x.min(y).min(w - 1 - x).min(h - 1 - y) == 0
                })
                .map(|i| f64::from(gray[i]))
                .collect();
            let light = ring.iter().sum::<f64>() / ring.len() as f64 > 127.5;
            let ink = ink_from_gray(w, h, &gray).unwrap();
            for (v, &g) in ink.iter().zip(&gray) {
                let want = if light {
                    1.0 - f32::from(g) / 255.0
                } else {
                    f32::from(g) / 255.0
                };
                assert_eq!(*v, want, "{w}x{h} {gray:?}");
            }
            inverted += usize::from(light);
        }
        assert!((100..300).contains(&inverted), "both polarities are tried: {inverted}");
    }

    #[test]
    fn a_digit_heavy_at_the_top_is_kept_whole_at_the_bottom_border() {
        // a T: a thick bar on top of a thin stem; its centre of mass is high, so the box
        // moves down as far as the border lets it
        let (w, h) = (40, 40);
        let mut ink = vec![0.0f32; w * h];
        fill(&mut ink, w, 0..12, 0..40);
        for y in 12..40 {
            ink[y * w + 20] = 1.0;
        }
        let d = mnist_like(w, h, &ink).unwrap();
        let (_, _, y0, y1) = bounding_box(&d, SIDE);
        assert_eq!((y0, y1), (8, 27), "flush with the bottom, nothing cut");
    }

    #[test]
    fn bad_images_are_typed_errors() {
        for (w, h, ink, want) in [
            (0, 5, vec![], "no pixels"),
            (5, 0, vec![], "no pixels"),
            (MAX_SIDE + 1, 1, vec![0.0; MAX_SIDE + 1], "largest"),
            (1, MAX_SIDE + 1, vec![0.0; MAX_SIDE + 1], "largest"),
            (3, 3, vec![0.0; 8], "8 pixel values for a 3x3"),
            (2, 2, vec![0.0, 0.5, f32::NAN, 0.0], "outside"),
            (2, 2, vec![0.0, 1.5, 0.0, 0.0], "outside"),
            (2, 2, vec![0.0, -0.1, 0.0, 0.0], "outside"),
            (2, 2, vec![0.0, INK_THRESHOLD, 0.0, 0.0], "no ink"),
        ] {
            let e = mnist_like(w, h, &ink).unwrap_err();
            assert!(matches!(e, DataError::BadImage { .. }), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
        assert!(ink_from_gray(2, 2, &[0; 3]).is_err());
        // the largest side itself is accepted
        let mut ink = vec![0.0; MAX_SIDE];
        ink[7] = 1.0;
        assert!(mnist_like(MAX_SIDE, 1, &ink).is_ok());
        assert!(mnist_like(1, MAX_SIDE, &ink).is_ok());
    }
}
