use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::Tensor;

/// How a weight tensor is initialised: Gaussian with mean 0 and a standard deviation
/// chosen from the fan-in, as in the book's `weight_init_std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// He et al.: `std = sqrt(2 / fan_in)`, for ReLU networks (the book's `'relu'`/`'he'`).
    He,
    /// Xavier/Glorot as the book writes it: `std = sqrt(1 / fan_in)` (`'sigmoid'`/`'xavier'`).
    Xavier,
    /// A fixed standard deviation (the book's numeric `weight_init_std`, e.g. 0.01).
    Std(f32),
}

impl Init {
    /// The standard deviation for a layer whose units each see `fan_in` inputs.
    pub fn std(self, fan_in: usize) -> f32 {
        match self {
            Init::He => (2.0 / fan_in as f32).sqrt(),
            Init::Xavier => (1.0 / fan_in as f32).sqrt(),
            Init::Std(s) => s,
        }
    }

    /// A tensor of `shape` drawn from `N(0, std(fan_in)^2)` with a ChaCha8 generator
    /// seeded by `seed` (the same seed gives the same weights on every machine).
    pub fn sample(self, shape: &[usize], fan_in: usize, seed: u64) -> Tensor {
        let std = self.std(fan_in);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, std.max(0.0)).expect("finite std");
        Tensor::from_shape_simple_fn(shape.to_vec(), || normal.sample(&mut rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn he_and_xavier_follow_the_fan_in() {
        assert!((Init::He.std(50) - 0.2).abs() < 1e-7);
        assert!((Init::Xavier.std(100) - 0.1).abs() < 1e-7);
        assert_eq!(Init::Std(0.01).std(7), 0.01);
        let w = Init::He.sample(&[200, 50], 50, 1);
        let n = w.len() as f32;
        let mean = w.sum() / n;
        let std = (w.mapv(|v| (v - mean) * (v - mean)).sum() / n).sqrt();
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((std - 0.2).abs() < 0.01, "{std}");
        assert_eq!(w, Init::He.sample(&[200, 50], 50, 1));
        assert_ne!(w, Init::He.sample(&[200, 50], 50, 2));
    }
}
