//! An exponential moving average of the parameters (Polyak averaging, as TensorFlow's
//! `ExponentialMovingAverage` and timm's `ModelEma` keep it): a shadow copy of every
//! trained parameter that follows the parameters slowly, and that is evaluated and saved
//! in their place. The average of the last few thousand steps' weights is a smoother
//! network than the last step's.

use std::collections::HashMap;

use dl_tensor::{ParamMut, Tensor};
use ndarray::Zip;

use crate::{export, import, OptimError, OptimizerState};

/// The shadow copies' slot in an [`OptimizerState`] (`"ema/conv1.W"`).
pub const AVERAGE_SLOT: &str = "ema";

/// An exponential moving average of parameters.
///
/// The first [`WeightAverage::update`] copies the parameters; update `t` (2, 3, ...)
/// then sets every average to `d * average + (1 - d) * parameter` with
/// `d = min(decay, (1 + t) / (10 + t))`: the warm-up of TensorFlow's `num_updates`,
/// so that the average forgets its first steps' weights quickly, and a steady decay of
/// `decay` after about `9 / (1 - decay)` updates.
///
/// ```
/// use dl_optim::WeightAverage;
/// use dl_tensor::Tensor;
///
/// let mut ema = WeightAverage::new(0.999).unwrap();
/// let w = Tensor::from_elem(vec![2], 1.0);
/// ema.update([("W1", &w)]);
/// let w = Tensor::from_elem(vec![2], 0.0);
/// ema.update([("W1", &w)]); // d = min(0.999, 3 / 12) = 0.25
/// assert_eq!(ema.average("W1").unwrap()[0], 0.25);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WeightAverage {
    decay: f32,
    updates: u64,
    averages: HashMap<String, Tensor>,
}

impl WeightAverage {
    /// The name [`WeightAverage::state`] files its state under (its
    /// [`OptimizerState::optimizer`]).
    pub const NAME: &'static str = "WeightAverage";

    /// An empty average with steady decay `decay`, in `[0, 1)` (0: the average is the
    /// last parameters).
    pub fn new(decay: f32) -> Result<Self, OptimError> {
        if !(0.0..1.0).contains(&decay) {
            return Err(OptimError::InvalidHyperParameter {
                name: "average decay",
                value: decay,
                reason: "must be at least 0 and below 1",
            });
        }
        Ok(Self {
            decay,
            updates: 0,
            averages: HashMap::new(),
        })
    }

    /// The steady decay.
    pub fn decay(&self) -> f32 {
        self.decay
    }

    /// Updates taken.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay of update `t` (1-based): `min(decay, (1 + t) / (10 + t))`.
    pub fn decay_at(&self, t: u64) -> f32 {
        self.decay.min((1 + t) as f32 / (10 + t) as f32)
    }

    /// Moves the averages towards `params` (name and value): one update, after an
    /// optimizer step. A parameter seen for the first time (or with another shape than
    /// its average's) starts its average at its value.
    pub fn update<'a>(&mut self, params: impl IntoIterator<Item = (&'a str, &'a Tensor)>) {
        self.updates += 1;
        let d = self.decay_at(self.updates);
        for (name, value) in params {
            match self.averages.get_mut(name) {
                Some(avg) if avg.shape() == value.shape() => {
                    Zip::from(avg).and(value).for_each(|a, &p| *a = d * *a + (1.0 - d) * p);
                }
                _ => {
                    self.averages.insert(name.to_string(), value.clone());
                }
            }
        }
    }

    /// The average of the parameter `name`, if it has one.
    pub fn average(&self, name: &str) -> Option<&Tensor> {
        self.averages.get(name)
    }

    /// Writes the averages into the parameters of the same names (the others are left
    /// as they are).
    pub fn copy_to(&self, params: &mut [ParamMut<'_>]) {
        for p in params.iter_mut() {
            if let Some(avg) = self.averages.get(&p.name).filter(|a| a.shape() == p.value.shape()) {
                p.value.assign(avg);
            }
        }
    }

    /// The averages and the update count, as an [`OptimizerState`] with one slot,
    /// [`AVERAGE_SLOT`] (for a checkpoint).
    pub fn state(&self) -> OptimizerState {
        export(Self::NAME, self.updates, &[(AVERAGE_SLOT, &self.averages)])
    }

    /// Replaces the averages and the update count with `state`, exported by
    /// [`WeightAverage::state`] for the parameters `params`. On an error (another
    /// object's state, an unknown parameter, a shape that differs from the parameter's)
    /// nothing is changed.
    pub fn load_state(&mut self, state: &OptimizerState, params: &[(String, &Tensor)]) -> Result<(), OptimError> {
        let [averages] =
            <[_; 1]>::try_from(import(Self::NAME, &[AVERAGE_SLOT], state, params)?).expect("one map per slot");
        self.averages = averages;
        self.updates = state.steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_shape_vec(vec![v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn the_decay_is_refused_outside_zero_to_one() {
        for bad in [-0.1, 1.0, 1.5, f32::NAN, f32::INFINITY] {
            let err = WeightAverage::new(bad).unwrap_err();
            assert!(err.to_string().contains("average decay"), "{err}");
        }
        assert_eq!(WeightAverage::new(0.0).unwrap().decay(), 0.0);
        assert_eq!(WeightAverage::new(0.999).unwrap().decay(), 0.999);
    }

    #[test]
    fn the_decay_warms_up_then_holds() {
        let ema = WeightAverage::new(0.9).unwrap();
        assert_eq!(ema.decay_at(1), 2.0 / 11.0);
        assert_eq!(ema.decay_at(2), 3.0 / 12.0);
        assert_eq!(ema.decay_at(80), 81.0 / 90.0);
        assert_eq!(ema.decay_at(81), 0.9);
        assert_eq!(ema.decay_at(10_000), 0.9);
    }

    #[test]
    fn updates_follow_hand_computed_steps() {
        let mut ema = WeightAverage::new(0.5).unwrap();
        let (a, b) = (t(&[2.0, -4.0]), t(&[1.0]));
        ema.update([("W", &a), ("b", &b)]);
        assert_eq!(ema.updates(), 1);
        assert_eq!(ema.average("W").unwrap(), &a);
        assert_eq!(ema.average("b").unwrap(), &b);
        // update 2: d = min(0.5, 3 / 12) = 0.25
        let (a2, b2) = (t(&[6.0, 4.0]), t(&[-3.0]));
        ema.update([("W", &a2), ("b", &b2)]);
        assert_eq!(ema.updates(), 2);
        assert_eq!(
            ema.average("W").unwrap(),
            &t(&[0.25 * 2.0 + 0.75 * 6.0, 0.25 * -4.0 + 0.75 * 4.0])
        );
        assert_eq!(ema.average("b").unwrap(), &t(&[0.25 * 1.0 + 0.75 * -3.0]));
        // update 9: d = min(0.5, 10 / 19) = 0.5
        for _ in 3..9 {
            ema.update([("b", &b2)]);
        }
        let before = ema.average("b").unwrap()[0];
        ema.update([("b", &t(&[10.0]))]);
        assert_eq!(ema.average("b").unwrap()[0], 0.5 * before + 0.5 * 10.0);
        // W was not passed since update 2: unchanged
        assert_eq!(ema.average("W").unwrap(), &t(&[5.0, 2.0]));
        assert_eq!(ema.average("c"), None);
    }

    #[test]
    fn a_parameter_of_another_shape_starts_over() {
        let mut ema = WeightAverage::new(0.9).unwrap();
        ema.update([("W", &t(&[1.0, 2.0]))]);
        ema.update([("W", &t(&[5.0]))]);
        assert_eq!(ema.average("W").unwrap(), &t(&[5.0]));
    }

    #[test]
    fn copy_to_writes_the_averages_into_parameters_of_their_names() {
        let mut ema = WeightAverage::new(0.9).unwrap();
        ema.update([("W", &t(&[1.0, 2.0])), ("b", &t(&[3.0]))]);
        let (mut w, mut b, mut c, mut wrong) = (t(&[0.0, 0.0]), t(&[0.0]), t(&[7.0]), t(&[0.0; 3]));
        let g = t(&[0.0; 3]);
        ema.copy_to(&mut [
            ParamMut {
                name: "W".into(),
                value: &mut w,
                grad: &g,
            },
            ParamMut {
                name: "b".into(),
                value: &mut b,
                grad: &g,
            },
            ParamMut {
                name: "c".into(),
                value: &mut c,
                grad: &g,
            },
        ]);
        assert_eq!((w, b, c), (t(&[1.0, 2.0]), t(&[3.0]), t(&[7.0])));
        ema.copy_to(&mut [ParamMut {
            name: "W".into(),
            value: &mut wrong,
            grad: &g,
        }]);
        assert_eq!(wrong, t(&[0.0; 3]));
    }

    #[test]
    fn state_round_trips_and_bad_states_change_nothing() {
        let mut ema = WeightAverage::new(0.9).unwrap();
        let (w, b) = (t(&[1.0, 2.0]), t(&[3.0]));
        ema.update([("W", &w), ("b", &b)]);
        ema.update([("W", &t(&[0.0, 0.0])), ("b", &b)]);
        let state = ema.state();
        assert_eq!(state.steps, 2);
        assert_eq!(state.tensors.keys().collect::<Vec<_>>(), ["ema/W", "ema/b"]);
        let params = vec![("W".to_string(), &w), ("b".to_string(), &b)];
        let mut back = WeightAverage::new(0.9).unwrap();
        back.load_state(&state, &params).unwrap();
        assert_eq!(back, ema);

        let fresh = WeightAverage::new(0.9).unwrap();
        let mut other = state.clone();
        other.optimizer = "Adam".into();
        let mut unknown = state.clone();
        unknown.tensors.insert("ema/c".into(), t(&[1.0]));
        let mut misshapen = state.clone();
        misshapen.tensors.insert("ema/b".into(), t(&[1.0, 1.0]));
        for bad in [other, unknown, misshapen] {
            let mut e = fresh.clone();
            assert!(matches!(e.load_state(&bad, &params), Err(OptimError::State(_))));
            assert_eq!(e, fresh);
        }
    }
}
