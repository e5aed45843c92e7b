//! Data augmentation for single-channel images (chapter 8: "data augmentation").
//!
//! Each transform is a plain function on one `(H, W)` image (row-major `f32`), and
//! [`Augment`] draws its parameters from a range; a [`Pipeline`] applies a list of them to
//! every image of a mini-batch, in parallel, with a ChaCha8 generator per image derived
//! from the pipeline's seed, the batch number and the image's position: the same seed gives
//! the same batch on every machine and with any thread count. Labels are never touched.
//!
//! Resampling is bilinear; pixels that come from outside the image are 0 (background).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Bilinear sample of `img` at the (fractional) position `(y, x)`; 0 outside.
fn sample(img: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| {
        if yy < 0.0 || xx < 0.0 || yy >= h as f32 || xx >= w as f32 {
            0.0
        } else {
            img[yy as usize * w + xx as usize]
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
    let bottom = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// `out(y, x) = img(source(y, x))`, bilinear.
fn warp(img: &[f32], h: usize, w: usize, source: impl Fn(f32, f32) -> (f32, f32)) -> Vec<f32> {
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            let (sy, sx) = source(y as f32, x as f32);
            out[y * w + x] = sample(img, h, w, sy, sx);
        }
    }
    out
}

/// Translates by `dy` rows down and `dx` columns right (fractional shifts interpolate).
pub fn shift(img: &[f32], h: usize, w: usize, dy: f32, dx: f32) -> Vec<f32> {
    warp(img, h, w, |y, x| (y - dy, x - dx))
}

/// Rotates by `degrees` counter-clockwise about the image centre.
pub fn rotate(img: &[f32], h: usize, w: usize, degrees: f32) -> Vec<f32> {
    let (s, c) = degrees.to_radians().sin_cos();
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    // inverse rotation of the output position gives the source position
    warp(img, h, w, |y, x| {
        let (ry, rx) = (y - cy, x - cx);
        (cy + c * ry + s * rx, cx - s * ry + c * rx)
    })
}

/// Zooms by `factor` about the centre (> 1 enlarges).
pub fn scale(img: &[f32], h: usize, w: usize, factor: f32) -> Vec<f32> {
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    warp(img, h, w, |y, x| (cy + (y - cy) / factor, cx + (x - cx) / factor))
}

/// Mirrors left to right.
pub fn flip_horizontal(img: &[f32], h: usize, w: usize) -> Vec<f32> {
    (0..h * w).map(|i| img[(i / w) * w + (w - 1 - i % w)]).collect()
}

/// Mirrors top to bottom.
pub fn flip_vertical(img: &[f32], h: usize, w: usize) -> Vec<f32> {
    (0..h * w).map(|i| img[(h - 1 - i / w) * w + i % w]).collect()
}

/// The `ch x cw` window at `(top, left)` of the image padded by `pad` zeros on each side.
///
/// # Panics
/// If the window does not fit in the padded image.
#[allow(clippy::too_many_arguments)]
pub fn crop(img: &[f32], h: usize, w: usize, pad: usize, top: usize, left: usize, ch: usize, cw: usize) -> Vec<f32> {
    assert!(
        top + ch <= h + 2 * pad && left + cw <= w + 2 * pad,
        "crop: window outside the padded image"
    );
    let mut out = vec![0.0; ch * cw];
    for y in 0..ch {
        for x in 0..cw {
            let (sy, sx) = ((top + y) as isize - pad as isize, (left + x) as isize - pad as isize);
            if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                out[y * cw + x] = img[sy as usize * w + sx as usize];
            }
        }
    }
    out
}

/// Gaussian blur of a field with standard deviation `sigma` (separable, zero border).
fn blur(field: &[f32], h: usize, w: usize, sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = kernel.iter().sum();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0; h * w];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut acc = 0.0;
                for (k, &kv) in kernel.iter().enumerate() {
                    let o = k as isize - r;
                    let (yy, xx) = if horizontal { (y, x + o) } else { (y + o, x) };
                    if yy >= 0 && xx >= 0 && yy < h as isize && xx < w as isize {
                        acc += kv * src[yy as usize * w + xx as usize];
                    }
                }
                out[y as usize * w + x as usize] = acc / norm;
            }
        }
        out
    };
    pass(&pass(field, true), false)
}

/// Simard et al. (2003) elastic distortion: random displacement fields uniform in
/// `[-1, 1]`, smoothed by a Gaussian of `sigma` pixels and scaled by `alpha`.
pub fn elastic(img: &[f32], h: usize, w: usize, alpha: f32, sigma: f32, rng: &mut impl Rng) -> Vec<f32> {
    let mut field = || {
        let f: Vec<f32> = (0..h * w).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        blur(&f, h, w, sigma)
    };
    let (fy, fx) = (field(), field());
    warp(img, h, w, |y, x| {
        let i = y as usize * w + x as usize;
        (y + alpha * fy[i], x + alpha * fx[i])
    })
}

/// One random transform, its parameters drawn per image from the given range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Augment {
    /// Shift by `dy, dx` uniform in `[-max, max]` pixels.
    Shift {
        /// Largest shift in pixels.
        max: f32,
    },
    /// Rotate by an angle uniform in `[-max_degrees, max_degrees]`.
    Rotate {
        /// Largest angle.
        max_degrees: f32,
    },
    /// Zoom by a factor uniform in `[min, max]`.
    Scale {
        /// Smallest factor.
        min: f32,
        /// Largest factor.
        max: f32,
    },
    /// Random crop of the original size from the image padded by `pad` (a random integer
    /// shift of up to `pad` pixels).
    Crop {
        /// Padding on each side.
        pad: usize,
    },
    /// Mirror left-right with probability `p` (not for digits: a mirrored digit is another
    /// glyph).
    FlipHorizontal {
        /// Probability.
        p: f32,
    },
    /// Mirror top-bottom with probability `p`.
    FlipVertical {
        /// Probability.
        p: f32,
    },
    /// Elastic distortion.
    Elastic {
        /// Displacement scale in pixels.
        alpha: f32,
        /// Smoothing in pixels.
        sigma: f32,
    },
}

impl Augment {
    /// Applies the transform with parameters drawn from `rng`.
    pub fn apply(&self, img: &[f32], h: usize, w: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let sym = |rng: &mut ChaCha8Rng, m: f32| if m > 0.0 { rng.gen_range(-m..=m) } else { 0.0 };
        match *self {
            Augment::Shift { max } => {
                let (dy, dx) = (sym(rng, max), sym(rng, max));
                shift(img, h, w, dy, dx)
            }
            Augment::Rotate { max_degrees } => rotate(img, h, w, sym(rng, max_degrees)),
            Augment::Scale { min, max } => scale(img, h, w, if max > min { rng.gen_range(min..=max) } else { min }),
            Augment::Crop { pad } => {
                let (top, left) = (rng.gen_range(0..=2 * pad), rng.gen_range(0..=2 * pad));
                crop(img, h, w, pad, top, left, h, w)
            }
            Augment::FlipHorizontal { p } => {
                if rng.gen::<f32>() < p {
                    flip_horizontal(img, h, w)
                } else {
                    img.to_vec()
                }
            }
            Augment::FlipVertical { p } => {
                if rng.gen::<f32>() < p {
                    flip_vertical(img, h, w)
                } else {
                    img.to_vec()
                }
            }
            Augment::Elastic { alpha, sigma } => elastic(img, h, w, alpha, sigma, rng),
        }
    }
}

/// A list of [`Augment`]s applied in order to every image of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// The transforms, applied in order.
    pub steps: Vec<Augment>,
    /// The seed every random draw derives from.
    pub seed: u64,
}

impl Pipeline {
    /// A pipeline of `steps` seeded by `seed`.
    pub fn new(steps: Vec<Augment>, seed: u64) -> Self {
        Self { steps, seed }
    }

    /// The MNIST recipe (`cargo xtask train --augment`): rotation up to 10 degrees, zoom
    /// 0.9-1.1, shift up to 2 pixels, and with `elastic` Simard's elastic distortion
    /// (alpha 8, sigma 3). No flips: a mirrored digit is another glyph or none.
    pub fn mnist(elastic: bool, seed: u64) -> Self {
        let mut steps = vec![
            Augment::Rotate { max_degrees: 10.0 },
            Augment::Scale { min: 0.9, max: 1.1 },
            Augment::Shift { max: 2.0 },
        ];
        if elastic {
            steps.push(Augment::Elastic { alpha: 8.0, sigma: 3.0 });
        }
        Self::new(steps, seed)
    }

    /// Transforms the `n` images of `(H, W)` in `x` in place (parallel over images).
    /// `batch` numbers the batch within the run, so that each batch gets fresh but
    /// reproducible draws.
    pub fn apply_batch(&self, x: &mut [f32], h: usize, w: usize, batch: u64) {
        self.apply_batch_chw(x, 1, h, w, batch);
    }

    /// [`Pipeline::apply_batch`] for images of `c` channels `(B, C, H, W)`: every channel
    /// of an image gets the same transformation (the same random draws).
    pub fn apply_batch_chw(&self, x: &mut [f32], c: usize, h: usize, w: usize, batch: u64) {
        self.apply_slice_chw(x, c, h, w, batch, 0);
    }

    /// [`Pipeline::apply_batch_chw`] for a slice of a batch whose first image is image
    /// `first` of the whole batch: every image gets the draws it gets in the whole batch
    /// (the draws of image `i` depend only on the seed, `batch` and `i`), so that
    /// data-parallel ranks, each with its slice, transform the batch as one process does.
    pub fn apply_slice_chw(&self, x: &mut [f32], c: usize, h: usize, w: usize, batch: u64, first: u64) {
        x.par_chunks_mut(c * h * w).enumerate().for_each(|(i, img)| {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ batch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            rng.set_stream(first + i as u64);
            for plane in img.chunks_exact_mut(h * w) {
                let mut r = rng.clone();
                let mut cur = plane.to_vec();
                for step in &self.steps {
                    cur = step.apply(&cur, h, w, &mut r);
                }
                plane.copy_from_slice(&cur);
            }
        });
    }
}

/// One fixed transformation of an image, for test-time augmentation: a classifier that
/// scores each image as it is and as a few views of it, and averages the scores, errs
/// less on digits drawn off-centre or aslant (`dl_train::Ensemble::with_views`).
///
/// Written and parsed as `shift:DY:DX` (rows down, columns right), `rotate:DEGREES`
/// (counter-clockwise) or `scale:FACTOR`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum View {
    /// Translate by `dy` rows down and `dx` columns right ([`shift`]).
    Shift {
        /// Rows down.
        dy: f32,
        /// Columns right.
        dx: f32,
    },
    /// Rotate counter-clockwise about the centre ([`rotate`]).
    Rotate {
        /// The angle.
        degrees: f32,
    },
    /// Zoom about the centre ([`scale`]); > 1 enlarges.
    Scale {
        /// The factor, > 0.
        factor: f32,
    },
}

impl View {
    /// The view of the `(H, W)` image `img`.
    pub fn apply(&self, img: &[f32], h: usize, w: usize) -> Vec<f32> {
        match *self {
            View::Shift { dy, dx } => shift(img, h, w, dy, dx),
            View::Rotate { degrees } => rotate(img, h, w, degrees),
            View::Scale { factor } => scale(img, h, w, factor),
        }
    }

    /// Replaces every `(H, W)` plane of `x` (a batch of `(C, H, W)` images, or any run of
    /// planes) by its view, in parallel.
    pub fn apply_planes(&self, x: &mut [f32], h: usize, w: usize) {
        x.par_chunks_mut((h * w).max(1)).for_each(|plane| {
            let out = self.apply(plane, h, w);
            plane.copy_from_slice(&out);
        });
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            View::Shift { dy, dx } => write!(f, "shift:{dy}:{dx}"),
            View::Rotate { degrees } => write!(f, "rotate:{degrees}"),
            View::Scale { factor } => write!(f, "scale:{factor}"),
        }
    }
}

impl std::str::FromStr for View {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let number = |t: &str| -> Result<f32, String> {
            match t.trim().parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(format!("{s:?}: {t:?} is not a finite number")),
            }
        };
        match parts.as_slice() {
            ["shift", dy, dx] => Ok(View::Shift {
                dy: number(dy)?,
                dx: number(dx)?,
            }),
            ["rotate", d] => Ok(View::Rotate { degrees: number(d)? }),
            ["scale", f] => match number(f)? {
                factor if factor > 0.0 => Ok(View::Scale { factor }),
                _ => Err(format!("{s:?}: the factor must be above 0")),
            },
            _ => Err(format!("{s:?}: a view is shift:DY:DX, rotate:DEGREES or scale:FACTOR")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit() -> Vec<f32> {
        // an asymmetric 7x7 pattern
        (0..49).map(|i| ((i * 37) % 11) as f32 / 10.0).collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "pixel {i}: {x} vs {y}");
        }
    }

    #[test]
    fn an_integer_shift_moves_a_pixel_by_that_many_pixels() {
        let mut img = vec![0.0; 49];
        img[2 * 7 + 3] = 1.0;
        let s = shift(&img, 7, 7, 2.0, -1.0);
        assert_eq!(s[4 * 7 + 2], 1.0);
        assert_eq!(s.iter().sum::<f32>(), 1.0);
        // a half-pixel shift splits it between two neighbours
        let s = shift(&img, 7, 7, 0.0, 0.5);
        assert!((s[2 * 7 + 3] - 0.5).abs() < 1e-6 && (s[2 * 7 + 4] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn a_view_is_its_transform_on_every_plane_and_reads_back_as_written() {
        let img = digit();
        let views = [
            View::Shift { dy: 1.0, dx: -2.0 },
            View::Rotate { degrees: 7.5 },
            View::Scale { factor: 1.25 },
        ];
        let wants = [
            shift(&img, 7, 7, 1.0, -2.0),
            rotate(&img, 7, 7, 7.5),
            scale(&img, 7, 7, 1.25),
        ];
        for (v, want) in views.iter().zip(&wants) {
            assert_eq!(&v.apply(&img, 7, 7), want, "{v}");
            // two images of two channels: every plane gets the same view
            let other: Vec<f32> = img.iter().map(|p| 1.0 - p).collect();
            let mut batch = [img.clone(), other.clone(), other.clone(), img.clone()].concat();
            v.apply_planes(&mut batch, 7, 7);
            let want_other = v.apply(&other, 7, 7);
            assert_eq!(&batch[..49], &want[..], "{v}");
            assert_eq!(&batch[49..98], &want_other[..], "{v}");
            assert_eq!(&batch[98..147], &want_other[..], "{v}");
            assert_eq!(&batch[147..], &want[..], "{v}");
            assert_eq!(v.to_string().parse::<View>(), Ok(*v));
        }
        assert_eq!("shift:0:1".parse::<View>(), Ok(View::Shift { dy: 0.0, dx: 1.0 }));
        assert_eq!("rotate:-6".parse::<View>(), Ok(View::Rotate { degrees: -6.0 }));
        assert_eq!("scale:0.9".parse::<View>(), Ok(View::Scale { factor: 0.9 }));
        for (bad, says) in [
            ("shift:1", "a view is"),
            ("flip", "a view is"),
            ("rotate:x", "not a finite number"),
            ("rotate:inf", "not a finite number"),
            ("shift:NaN:0", "not a finite number"),
            ("scale:0", "above 0"),
            ("scale:-1", "above 0"),
        ] {
            let e = bad.parse::<View>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn four_quarter_turns_give_back_the_image_and_one_turn_moves_corners() {
        let img = digit();
        let mut r = img.clone();
        for _ in 0..4 {
            r = rotate(&r, 7, 7, 90.0);
        }
        close(&r, &img, 1e-4);
        // counter-clockwise: the top-right corner goes to the top-left
        let mut one = vec![0.0; 49];
        one[6] = 1.0;
        let r = rotate(&one, 7, 7, 90.0);
        assert!((r[0] - 1.0).abs() < 1e-4, "{r:?}");
    }

    #[test]
    fn flipping_twice_is_the_identity() {
        let img = digit();
        assert_eq!(flip_horizontal(&flip_horizontal(&img, 7, 7), 7, 7), img);
        assert_eq!(flip_vertical(&flip_vertical(&img, 7, 7), 7, 7), img);
        assert_ne!(flip_horizontal(&img, 7, 7), img);
        assert_eq!(flip_horizontal(&img, 7, 7)[0], img[6]);
    }

    #[test]
    fn crops_have_the_asked_size_and_content() {
        let img = digit();
        let c = crop(&img, 7, 7, 2, 1, 3, 5, 4);
        assert_eq!(c.len(), 20);
        // (top 1, left 3) in the padded image is (-1, 1) in the original: a zero row first
        assert!(c[..4].iter().all(|&v| v == 0.0));
        assert_eq!(c[4], img[1]);
        assert_eq!(crop(&img, 7, 7, 0, 0, 0, 7, 7), img);
    }

    #[test]
    fn scale_one_and_zero_distortion_are_identities() {
        let img = digit();
        close(&scale(&img, 7, 7, 1.0), &img, 1e-6);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        close(&elastic(&img, 7, 7, 0.0, 2.0, &mut rng), &img, 1e-6);
        let moved = elastic(&img, 7, 7, 3.0, 1.0, &mut rng);
        assert_ne!(moved, img);
    }

    #[test]
    fn both_flips_move_every_pixel_to_its_mirror_place() {
        let img = digit();
        let (h, v) = (flip_horizontal(&img, 7, 7), flip_vertical(&img, 7, 7));
        for y in 0..7 {
            for x in 0..7 {
                assert_eq!(h[y * 7 + x], img[y * 7 + 6 - x], "horizontal ({y}, {x})");
                assert_eq!(v[y * 7 + x], img[(6 - y) * 7 + x], "vertical ({y}, {x})");
            }
        }
        // a non-square image: the row length is w, the row count h
        let wide: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(flip_horizontal(&wide, 3, 4)[..4], [3.0, 2.0, 1.0, 0.0]);
        assert_eq!(flip_vertical(&wide, 3, 4)[..4], [8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn a_crop_must_fit_in_the_padded_image_in_both_directions() {
        let img = digit();
        // the largest windows that fit: the padded image itself, and its last row or column
        assert_eq!(crop(&img, 7, 7, 1, 0, 0, 9, 9).len(), 81);
        assert_eq!(crop(&img, 7, 7, 1, 8, 0, 1, 9), vec![0.0; 9]);
        assert_eq!(crop(&img, 7, 7, 1, 0, 8, 9, 1), vec![0.0; 9]);
        // the bottom-right corner of the image, at the padded window's last place
        assert_eq!(crop(&img, 7, 7, 1, 7, 7, 1, 1), vec![img[48]]);
        for (top, left, ch, cw) in [(1, 0, 9, 9), (0, 1, 9, 9), (9, 0, 1, 1), (0, 9, 1, 1)] {
            let outside = std::panic::catch_unwind(|| crop(&img, 7, 7, 1, top, left, ch, cw));
            assert!(outside.is_err(), "({top}, {left}) {ch}x{cw} is outside");
        }
    }

    #[test]
    fn scale_two_enlarges_about_the_centre() {
        // one lit pixel one row below and one column right of the centre (3, 3)
        let mut img = vec![0.0; 49];
        img[4 * 7 + 4] = 1.0;
        let s = scale(&img, 7, 7, 2.0);
        // output (y, x) samples (3 + (y - 3) / 2, 3 + (x - 3) / 2): (5, 5) lands on it
        // exactly, (4, 4) a quarter of the way in each direction, (5, 4) half way in one
        assert!((s[5 * 7 + 5] - 1.0).abs() < 1e-6, "{s:?}");
        assert!((s[4 * 7 + 4] - 0.25).abs() < 1e-6, "{s:?}");
        assert!((s[5 * 7 + 4] - 0.5).abs() < 1e-6, "{s:?}");
        assert!((s[4 * 7 + 5] - 0.5).abs() < 1e-6, "{s:?}");
        assert!(
            (s.iter().sum::<f32>() - 4.0).abs() < 1e-5,
            "the pixel covers four: {s:?}"
        );
        // and one half shrinks: the pixel two away from the centre moves one in
        let mut far = vec![0.0; 49];
        far[3 * 7 + 5] = 1.0;
        let s = scale(&far, 7, 7, 0.5);
        assert!((s[3 * 7 + 4] - 1.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn samples_outside_the_image_are_background_on_every_side() {
        let ones = vec![1.0; 12];
        // inside, next to each border, a sample is the pixel itself
        for (y, x) in [(0.0, 0.0), (2.0, 3.0), (0.0, 3.0), (2.0, 0.0)] {
            assert_eq!(sample(&ones, 3, 4, y, x), 1.0, "({y}, {x})");
        }
        // half a pixel beyond each border, half the value
        for (y, x) in [(-0.5, 1.0), (2.5, 1.0), (1.0, -0.5), (1.0, 3.5)] {
            assert!((sample(&ones, 3, 4, y, x) - 0.5).abs() < 1e-6, "({y}, {x})");
        }
        // a whole pixel beyond: nothing
        for (y, x) in [(-1.0, 1.0), (3.0, 1.0), (1.0, -1.0), (1.0, 4.0)] {
            assert_eq!(sample(&ones, 3, 4, y, x), 0.0, "({y}, {x})");
        }
    }

    #[test]
    fn a_blurred_point_is_the_normalised_gaussian_and_the_border_is_zero() {
        let (h, w, sigma) = (11, 13, 1.25f32);
        let mut point = vec![0.0; h * w];
        point[5 * w + 6] = 1.0;
        let b = blur(&point, h, w, sigma);
        // the kernel reaches 3 sigma, rounded up: exp(-i^2 / (2 sigma^2)) for i in -4..=4
        // (a sigma at which 3 sigma, 3 + sigma and 3 / sigma round up apart, and 2 sigma^2
        // differs from 2 sigma + sigma)
        let g: Vec<f32> = (-4..=4i32).map(|i| (-(i * i) as f32 / 3.125).exp()).collect();
        let norm: f32 = g.iter().sum();
        for y in 0..h {
            for x in 0..w {
                let (dy, dx) = (y as i32 - 5, x as i32 - 6);
                let want = if dy.abs() <= 4 && dx.abs() <= 4 {
                    g[(dy + 4) as usize] * g[(dx + 4) as usize] / (norm * norm)
                } else {
                    0.0
                };
                assert!(
                    (b[y * w + x] - want).abs() < 1e-7,
                    "({y}, {x}): {} vs {want}",
                    b[y * w + x]
                );
            }
        }
        // a constant field keeps its value where the kernel fits, and loses some at the
        // border, where outside counts as zero
        let b = blur(&vec![2.0; h * w], h, w, sigma);
        assert!((b[5 * w + 6] - 2.0).abs() < 1e-5);
        let corner = 2.0 * (g[4..].iter().sum::<f32>() / norm).powi(2);
        assert!((b[0] - corner).abs() < 1e-5, "{} vs {corner}", b[0]);
    }

    #[test]
    fn an_elastic_distortion_with_a_constant_field_is_a_shift() {
        use rand::rngs::mock::StepRng;
        // a generator whose every draw is the same: both displacement fields are that
        // value everywhere, and the blur keeps it away from the border
        let word = 0xC000_0000_C000_0000;
        let v: f32 = StepRng::new(word, 0).gen_range(-1.0f32..1.0);
        assert!(v.abs() > 0.1, "{v}");
        let (h, w) = (9, 10);
        let img: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 11) as f32).collect();
        let e = elastic(&img, h, w, 1.0 / v, 0.3, &mut StepRng::new(word, 0));
        // displacement alpha * v = 1 row and 1 column: out(y, x) = img(y + 1, x + 1)
        for y in 1..h - 2 {
            for x in 1..w - 2 {
                let want = img[(y + 1) * w + x + 1];
                assert!(
                    (e[y * w + x] - want).abs() < 1e-4,
                    "({y}, {x}): {} vs {want}",
                    e[y * w + x]
                );
            }
        }
    }

    #[test]
    fn each_augment_draws_its_parameters_from_its_range() {
        let img = digit();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut twin = rng.clone();
        // the draws in order: a shift draws dy then dx, uniform in [-max, max]
        let out = Augment::Shift { max: 1.5 }.apply(&img, 7, 7, &mut rng);
        let (dy, dx) = (twin.gen_range(-1.5f32..=1.5), twin.gen_range(-1.5f32..=1.5));
        assert_eq!(out, shift(&img, 7, 7, dy, dx));
        let out = Augment::Rotate { max_degrees: 20.0 }.apply(&img, 7, 7, &mut rng);
        assert_eq!(out, rotate(&img, 7, 7, twin.gen_range(-20.0f32..=20.0)));
        let out = Augment::Scale { min: 0.8, max: 1.2 }.apply(&img, 7, 7, &mut rng);
        assert_eq!(out, scale(&img, 7, 7, twin.gen_range(0.8f32..=1.2)));
        let out = Augment::Crop { pad: 2 }.apply(&img, 7, 7, &mut rng);
        let (top, left) = (twin.gen_range(0..=4), twin.gen_range(0..=4));
        assert_eq!(out, crop(&img, 7, 7, 2, top, left, 7, 7));
        let out = Augment::Elastic { alpha: 2.0, sigma: 1.0 }.apply(&img, 7, 7, &mut rng);
        assert_eq!(out, elastic(&img, 7, 7, 2.0, 1.0, &mut twin));
        assert_eq!(rng, twin, "the same number of draws");
        // empty ranges draw nothing and change nothing
        for a in [
            Augment::Shift { max: 0.0 },
            Augment::Rotate { max_degrees: 0.0 },
            Augment::Scale { min: 1.0, max: 1.0 },
            Augment::Crop { pad: 0 },
        ] {
            let before = rng.clone();
            close(&a.apply(&img, 7, 7, &mut rng), &img, 1e-6);
            if a != (Augment::Crop { pad: 0 }) {
                assert_eq!(rng, before, "{a:?} drew");
            }
        }
        // a fixed factor is used as is
        let out = Augment::Scale { min: 2.0, max: 2.0 }.apply(&img, 7, 7, &mut rng);
        assert_eq!(out, scale(&img, 7, 7, 2.0));
        // flips: p = 1 always, p = 0 never, p = 0.5 on the draw below one half
        for _ in 0..8 {
            assert_eq!(
                Augment::FlipHorizontal { p: 1.0 }.apply(&img, 7, 7, &mut rng),
                flip_horizontal(&img, 7, 7)
            );
            assert_eq!(
                Augment::FlipVertical { p: 1.0 }.apply(&img, 7, 7, &mut rng),
                flip_vertical(&img, 7, 7)
            );
            assert_eq!(Augment::FlipHorizontal { p: 0.0 }.apply(&img, 7, 7, &mut rng), img);
            assert_eq!(Augment::FlipVertical { p: 0.0 }.apply(&img, 7, 7, &mut rng), img);
        }
        // a flip happens with probability p: on a draw in [0, 1) below p, so not on a
        // draw equal to p
        for _ in 0..4 {
            let p = rng.clone().gen::<f32>();
            assert_eq!(Augment::FlipHorizontal { p }.apply(&img, 7, 7, &mut rng), img);
            let p = rng.clone().gen::<f32>();
            assert_eq!(Augment::FlipVertical { p }.apply(&img, 7, 7, &mut rng), img);
        }
        let mut twin = rng.clone();
        for _ in 0..16 {
            let flip = twin.gen::<f32>() < 0.5;
            let out = Augment::FlipVertical { p: 0.5 }.apply(&img, 7, 7, &mut rng);
            assert_eq!(out, if flip { flip_vertical(&img, 7, 7) } else { img.clone() });
            let flip = twin.gen::<f32>() < 0.5;
            let out = Augment::FlipHorizontal { p: 0.5 }.apply(&img, 7, 7, &mut rng);
            assert_eq!(out, if flip { flip_horizontal(&img, 7, 7) } else { img.clone() });
        }
    }

    #[test]
    fn the_mnist_recipe_is_rotation_zoom_and_shift_then_elastic() {
        let plain = Pipeline::mnist(false, 7);
        assert_eq!(
            plain.steps,
            [
                Augment::Rotate { max_degrees: 10.0 },
                Augment::Scale { min: 0.9, max: 1.1 },
                Augment::Shift { max: 2.0 },
            ]
        );
        assert_eq!(plain.seed, 7);
        let full = Pipeline::mnist(true, 7);
        assert_eq!(full.steps[..3], plain.steps[..]);
        assert_eq!(full.steps[3..], [Augment::Elastic { alpha: 8.0, sigma: 3.0 }]);
    }

    #[test]
    fn every_channel_of_an_image_gets_the_same_transformation() {
        let p = Pipeline::mnist(true, 4);
        let img = digit();
        // two 3-channel images whose channels are the digit times 1, 2 and 3
        let one: Vec<f32> = (1..=3).flat_map(|k| img.iter().map(move |v| v * k as f32)).collect();
        let mut x: Vec<f32> = one.iter().chain(&one).copied().collect();
        p.apply_batch_chw(&mut x, 3, 7, 7, 2);
        for image in x.chunks(3 * 49) {
            let c: Vec<&[f32]> = image.chunks(49).collect();
            close(&c[1].iter().map(|v| v / 2.0).collect::<Vec<_>>(), c[0], 1e-5);
            close(&c[2].iter().map(|v| v / 3.0).collect::<Vec<_>>(), c[0], 1e-5);
            assert_ne!(c[0], &img[..], "transformed");
        }
        assert_ne!(&x[..49], &x[3 * 49..4 * 49], "the two images get their own draws");
        // one channel: the same as apply_batch
        let mut a: Vec<f32> = img.iter().chain(&img).copied().collect();
        let mut b = a.clone();
        p.apply_batch(&mut a, 7, 7, 2);
        p.apply_batch_chw(&mut b, 1, 7, 7, 2);
        assert_eq!(a, b);
        // channel k of image i equals the one-channel transform of image i
        let mut single: Vec<f32> = img.iter().chain(&img).copied().collect();
        p.apply_batch(&mut single, 7, 7, 2);
        close(&x[..49], &single[..49], 1e-6);
        close(&x[3 * 49..4 * 49], &single[49..], 1e-6);
    }

    #[test]
    fn a_slice_of_a_batch_gets_the_draws_its_images_get_in_the_whole_batch() {
        let p = Pipeline::mnist(true, 5);
        let batch: Vec<f32> = (0..5)
            .flat_map(|k| digit().into_iter().map(move |v| v + k as f32))
            .collect();
        let mut whole = batch.clone();
        p.apply_batch(&mut whole, 7, 7, 3);
        for (first, last) in [(0, 2), (2, 5), (4, 5)] {
            let mut part = batch[first * 49..last * 49].to_vec();
            p.apply_slice_chw(&mut part, 1, 7, 7, 3, first as u64);
            assert_eq!(part, whole[first * 49..last * 49], "images {first}..{last}");
        }
        // the draws follow the image's place, not its content
        let mut moved = batch[2 * 49..3 * 49].to_vec();
        p.apply_slice_chw(&mut moved, 1, 7, 7, 3, 3);
        assert_ne!(moved, whole[2 * 49..3 * 49]);
    }

    #[test]
    fn a_pipeline_is_reproducible_from_its_seed_and_batch_number() {
        let p = Pipeline::new(
            vec![
                Augment::Rotate { max_degrees: 15.0 },
                Augment::Shift { max: 2.0 },
                Augment::Elastic { alpha: 2.0, sigma: 1.5 },
            ],
            9,
        );
        let batch: Vec<f32> = (0..4).flat_map(|_| digit()).collect();
        let run = |b: u64| {
            let mut x = batch.clone();
            p.apply_batch(&mut x, 7, 7, b);
            x
        };
        assert_eq!(run(0), run(0));
        assert_ne!(run(0), run(1));
        let x = run(0);
        assert_ne!(&x[..49], &x[49..98], "images of a batch get their own draws");
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| run(0));
        assert_eq!(one_thread, x);
        // the seed and the batch number both count, in every combination: seeds 0 and 1
        // (which `0 | K == 1 | K` would merge) at batches 0 and 1
        let with_seed = |seed: u64, b: u64| {
            let mut x = batch.clone();
            Pipeline::new(p.steps.clone(), seed).apply_batch(&mut x, 7, 7, b);
            x
        };
        for b in [0, 1] {
            assert_ne!(with_seed(0, b), with_seed(1, b), "batch {b}");
        }
    }
}
