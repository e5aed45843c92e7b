//! The classifier behind the page: a network or an ensemble, shared by every request.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

use dl_data::preprocess::{self, SIDE};
use dl_train::Ensemble;
use ndarray::Array4;
use serde::Serialize;

use crate::ServeError;

/// Largest encoded image accepted (the HTTP body limit is the same).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Largest memory the image decoder may allocate for one picture.
const MAX_DECODED_BYTES: u64 = 64 * 1024 * 1024;

/// What the classifier says about one picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The most probable digit.
    pub digit: usize,
    /// Softmax probability of each digit, 0 to 9 (the ensemble's mean, for an
    /// ensemble).
    pub probabilities: Vec<f32>,
    /// The 28x28 picture the network saw, row-major, ink in `[0, 1]` (MNIST's form,
    /// [`dl_data::preprocess`]).
    pub input: Vec<f32>,
}

/// A network or an ensemble, read-only, shared by any number of threads.
///
/// A layer keeps its forward pass's cache on itself (the book's design), so a forward
/// pass needs the network mutably. Each request takes a copy of the model from a pool
/// (made on first need, returned after the pass): the pool's lock is held only to take
/// or return a copy, never during inference, so requests run in parallel.
#[derive(Debug)]
pub struct Classifier {
    prototype: Ensemble,
    idle: Mutex<Vec<Ensemble>>,
    description: String,
}

impl Classifier {
    /// A classifier of one network or of several (their mean probabilities).
    pub fn new(ensemble: Ensemble, description: impl Into<String>) -> Self {
        Self {
            prototype: ensemble,
            idle: Mutex::new(Vec::new()),
            description: description.into(),
        }
    }

    /// One network read from a weights file (any model: the file names its kind).
    pub fn from_params(path: impl AsRef<Path>) -> Result<Self, ServeError> {
        let path = path.as_ref();
        let net = dl_models::registry::load(path)?;
        let description = format!("{} from {}", net.kind(), path.display());
        Ok(Self::new(Ensemble::new(vec![net])?, description))
    }

    /// An ensemble folder (`ensemble.json` and its members), checked as
    /// [`Ensemble::load`] checks it.
    pub fn from_ensemble_dir(dir: impl AsRef<Path>) -> Result<Self, ServeError> {
        let dir = dir.as_ref();
        let (ensemble, _) = Ensemble::load(dir)?;
        let description = format!("ensemble of {} from {}", ensemble.len(), dir.display());
        Ok(Self::new(ensemble, description))
    }

    /// What is being served, for logs and `GET /api/model`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Number of networks whose probabilities are averaged.
    pub fn members(&self) -> usize {
        self.prototype.len()
    }

    /// The prediction for a 28x28 MNIST-style picture (row-major, ink in `[0, 1]`).
    pub fn classify(&self, input: Vec<f32>) -> Result<Prediction, ServeError> {
        if input.len() != SIDE * SIDE {
            return Err(ServeError::Input(format!(
                "{} input values, a 28x28 picture has {}",
                input.len(),
                SIDE * SIDE
            )));
        }
        let x = Array4::from_shape_vec((1, 1, SIDE, SIDE), input.clone())
            .expect("784 values")
            .into_dyn();
        let mut model = self.checkout();
        let result = model.predict_proba(&x, 1);
        self.give_back(model);
        let probs = result?;
        let probabilities: Vec<f32> = probs.row(0).to_vec();
        let digit = argmax(&probabilities);
        Ok(Prediction {
            digit,
            probabilities,
            input,
        })
    }

    /// The prediction for an encoded PNG or JPEG ([`digit_from_image`]).
    pub fn classify_image(&self, bytes: &[u8]) -> Result<Prediction, ServeError> {
        self.classify(digit_from_image(bytes)?)
    }

    fn checkout(&self) -> Ensemble {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        idle.unwrap_or_else(|| self.prototype.clone())
    }

    fn give_back(&self, model: Ensemble) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(model);
    }

    /// Copies of the model waiting in the pool. With no request in flight: every copy
    /// made so far, which is the most requests that ever ran at once.
    pub fn pooled(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The index of the largest value (the first, on a tie).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &p) in v.iter().enumerate() {
        if p > v[best] {
            best = i;
        }
    }
    best
}

/// A shared classifier, as the router holds it.
pub type SharedClassifier = Arc<Classifier>;

/// The 28x28 MNIST-style picture of an 8-bit grey image, `width x height`, row-major
/// (either polarity: [`preprocess::ink_from_gray`]).
pub fn digit_from_gray(width: usize, height: usize, gray: &[u8]) -> Result<Vec<f32>, ServeError> {
    let ink = preprocess::ink_from_gray(width, height, gray)?;
    Ok(preprocess::mnist_like(width, height, &ink)?)
}

/// The 28x28 MNIST-style picture of an encoded PNG or JPEG (the format is read from the
/// bytes, not trusted from a name). Colour is turned to grey; transparent pixels are laid
/// over white, so dark ink on a transparent background reads as ink. Pictures above
/// [`preprocess::MAX_SIDE`] on a side, or that would need more than 64 MiB decoded, are
/// refused before they are decoded.
pub fn digit_from_image(bytes: &[u8]) -> Result<Vec<f32>, ServeError> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ServeError::Image(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        _ => return Err(ServeError::Image("not a PNG or JPEG image".into())),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(preprocess::MAX_SIDE as u32);
    limits.max_image_height = Some(preprocess::MAX_SIDE as u32);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let picture = reader.decode().map_err(|e| ServeError::Image(e.to_string()))?;
    let la = picture.to_luma_alpha8();
    let (w, h) = (la.width() as usize, la.height() as usize);
    let gray: Vec<u8> = la
        .pixels()
        .map(|p| {
            let [l, a] = p.0;
            // over white: l * a + 255 * (1 - a)
            ((u32::from(l) * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255) as u8
        })
        .collect();
    digit_from_gray(w, h, &gray)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_pixels_are_laid_over_white() {
        // dark ink on a transparent background, with half-transparent pixels
        let (w, h) = (30u32, 30u32);
        let la = image::GrayAlphaImage::from_fn(w, h, |x, y| match (x, y) {
            (10..=19, 5..=24) => image::LumaA([0, 255]),
            (20, 5..=24) => image::LumaA([0, 128]),
            (21, 5..=24) => image::LumaA([200, 100]),
            _ => image::LumaA([0, 0]),
        });
        let mut png = Cursor::new(Vec::new());
        la.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let over_white: Vec<u8> = la
            .pixels()
            .map(|p| {
                let (l, a) = (f64::from(p.0[0]), f64::from(p.0[1]));
                ((l * a + 255.0 * (255.0 - a)) / 255.0).round() as u8
            })
            .collect();
        assert_eq!(over_white[(5 * w + 20) as usize], 127);
        assert_eq!(over_white[(5 * w + 21) as usize], 233);
        assert_eq!(over_white[0], 255);
        let expected = digit_from_gray(w as usize, h as usize, &over_white).unwrap();
        assert_eq!(digit_from_image(png.get_ref()).unwrap(), expected);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_values() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[0.3, 0.3, 0.4]), 2);
        assert_eq!(argmax(&[0.5, 0.5]), 0);
        assert_eq!(argmax(&[0.2, 0.5, 0.5]), 1);
    }
}
