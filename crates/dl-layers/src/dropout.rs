use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{check_dout, Layer, LayerError, Op, Tensor};

/// The book's `Dropout`, any input shape.
///
/// By default it is the book's *non-inverted* form: training multiplies by a 0/1 mask
/// (a unit is kept when a uniform draw is `> ratio`), evaluation multiplies by
/// `1 - ratio`. The weights the book trained expect exactly this. [`Dropout::inverted`]
/// gives the common modern form: training divides the kept units by `1 - ratio`,
/// evaluation is the identity.
///
/// The mask comes from the layer's own seeded ChaCha8 generator, so a run is
/// reproducible from its seed. [`Layer::set_iteration`] restarts the generator on the
/// stream of that iteration (ChaCha's 64-bit stream number), so the masks of an
/// iteration depend only on `(seed, iteration)`; without it the generator runs on from
/// call to call. Sample `i` of an iteration's mini-batch takes the draws `i * len ..
/// (i + 1) * len` of that stream (`len` values per sample), so a data-parallel rank
/// given [`Layer::set_batch_offset`] draws for its slice what one process draws for the
/// same samples of the whole mini-batch.
#[derive(Debug, Clone)]
pub struct Dropout {
    ratio: f32,
    inverted: bool,
    seed: u64,
    rng: ChaCha8Rng,
    /// The first sample of the next training forward within its mini-batch.
    batch_offset: u64,
    mask: Vec<bool>,
    shape: Vec<usize>,
}

impl Dropout {
    /// The book's non-inverted dropout dropping a fraction `ratio` of units.
    ///
    /// # Panics
    /// If `ratio` is not in `[0, 1)`.
    pub fn new(ratio: f32, seed: u64) -> Self {
        assert!((0.0..1.0).contains(&ratio), "Dropout: ratio {ratio} not in [0, 1)");
        Self {
            ratio,
            inverted: false,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            batch_offset: 0,
            mask: Vec::new(),
            shape: Vec::new(),
        }
    }

    /// Inverted dropout: kept units are scaled by `1 / (1 - ratio)` in training and
    /// evaluation is the identity.
    pub fn inverted(ratio: f32, seed: u64) -> Self {
        Self {
            inverted: true,
            ..Self::new(ratio, seed)
        }
    }

    /// The dropout ratio.
    pub fn ratio(&self) -> f32 {
        self.ratio
    }

    /// Restarts the mask generator from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    fn keep_scale(&self) -> f32 {
        if self.inverted {
            1.0 / (1.0 - self.ratio)
        } else {
            1.0
        }
    }
}

impl Layer for Dropout {
    fn name(&self) -> &str {
        "Dropout"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        let mut x = crate::into_standard(x);
        let samples = x.shape().first().copied().unwrap_or(1).max(1);
        let xs = x.as_slice_mut().expect("standard layout");
        if train {
            let ratio = self.ratio;
            self.mask.clear();
            // sample `first` of the mini-batch starts `first` samples' draws in
            let first = std::mem::take(&mut self.batch_offset);
            let per_sample = xs.len() / samples;
            let at = self.rng.get_word_pos() + u128::from(first) * per_sample as u128;
            self.rng.set_word_pos(at);
            let rng = &mut self.rng;
            self.mask.extend((0..xs.len()).map(|_| rng.gen::<f32>() > ratio));
            let scale = self.keep_scale();
            for (v, &keep) in xs.iter_mut().zip(&self.mask) {
                *v = if keep { *v * scale } else { 0.0 };
            }
            self.shape = x.shape().to_vec();
        } else if !self.inverted {
            let scale = 1.0 - self.ratio;
            xs.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(x)
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        check_dout("Dropout", &dout, &self.shape);
        let mut dout = crate::into_standard(dout);
        let scale = self.keep_scale();
        for (d, &keep) in dout.as_slice_mut().expect("standard layout").iter_mut().zip(&self.mask) {
            *d = if keep { *d * scale } else { 0.0 };
        }
        dout
    }

    fn set_iteration(&mut self, iteration: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(self.seed);
        self.rng.set_stream(iteration);
        self.batch_offset = 0;
    }

    fn set_batch_offset(&mut self, first: u64) {
        self.batch_offset = first;
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        Ok(input.to_vec())
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(if self.inverted {
            Op::Sequential(Vec::new())
        } else {
            Op::Multiply(1.0 - self.ratio)
        })
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(Dropout {
            ratio: self.ratio,
            inverted: self.inverted,
            seed: self.seed,
            rng: self.rng.clone(),
            batch_offset: self.batch_offset,
            mask: Vec::new(),
            shape: Vec::new(),
        })
    }
}
