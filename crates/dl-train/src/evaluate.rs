use dl_data::ImageSet;
use dl_models::{ModelError, Network};
use serde::{Deserialize, Serialize};

/// How many of a set's images a network classifies correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Correctly classified images.
    pub correct: usize,
    /// Images evaluated.
    pub total: usize,
}

impl Evaluation {
    /// `correct / total` (0 for an empty set).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

impl std::fmt::Display for Evaluation {
    /// The line scripts rely on: `0.9938 (9938/10000)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ({}/{})", self.accuracy(), self.correct, self.total)
    }
}

/// Evaluates `network` (evaluation mode) on the first `limit` images of `set` (all when
/// `None`), `batch_size` at a time, converting each batch from bytes as it goes.
pub fn evaluate(
    network: &mut Network,
    set: &ImageSet,
    limit: Option<usize>,
    batch_size: usize,
) -> Result<Evaluation, ModelError> {
    let total = limit.map_or(set.len(), |l| l.min(set.len()));
    let bs = batch_size.max(1);
    let (mut x, mut t) = (Vec::new(), Vec::new());
    let mut correct = 0;
    for start in (0..total).step_by(bs) {
        let idx: Vec<usize> = (start..(start + bs).min(total)).collect();
        set.fill_batch(&idx, &mut x, &mut t);
        let xb =
            dl_layers::Tensor::from_shape_vec(set.batch_shape(idx.len()), std::mem::take(&mut x)).expect("batch shape");
        let pred = network.classify(&xb, bs)?;
        correct += pred.iter().zip(&t).filter(|(p, t)| p == t).count();
        x = xb.into_raw_vec_and_offset().0;
    }
    Ok(Evaluation { correct, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_is_the_fraction_correct_and_prints_as_scripts_read_it() {
        let e = Evaluation {
            correct: 9938,
            total: 10000,
        };
        assert_eq!(e.accuracy(), 0.9938);
        assert_eq!(e.to_string(), "0.9938 (9938/10000)");
        let third = Evaluation { correct: 1, total: 3 };
        assert_eq!(third.to_string(), "0.3333 (1/3)");
        let none = Evaluation { correct: 0, total: 0 };
        assert_eq!(none.accuracy(), 0.0);
        assert_eq!(none.to_string(), "0.0000 (0/0)");
    }
}
