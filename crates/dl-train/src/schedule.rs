//! Learning-rate schedules (chapter 8: "learning-rate decay").
//!
//! A schedule maps the step count to a learning rate. It is stepped per iteration or per
//! epoch ([`Unit`]); the [`Trainer`](crate::Trainer) sets the optimizer's rate from it
//! before every update and records the rate in the history.

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// `Ok` when `v` is a finite number above 0 (`or_zero`: at least 0).
fn positive(what: &str, v: f32, or_zero: bool) -> Result<(), TrainError> {
    if v.is_finite() && (v > 0.0 || (or_zero && v == 0.0)) {
        Ok(())
    } else {
        let bound = if or_zero { ">= 0" } else { "> 0" };
        Err(TrainError::Config(format!(
            "{what} {v}: must be a finite number {bound}"
        )))
    }
}

/// Whether a schedule counts iterations or epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// `t` counts mini-batches (0-based).
    Iteration,
    /// `t` counts epochs (0-based); the rate is constant within an epoch.
    Epoch,
}

/// A learning-rate schedule. `base` is the configured learning rate and `t` the
/// 0-based step in the schedule's [`Unit`]; `total` the number of steps of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// `base` throughout.
    Constant,
    /// `base * gamma^floor(t / step_size)`.
    Step {
        /// Steps between drops.
        step_size: usize,
        /// Factor of each drop.
        gamma: f32,
    },
    /// `base * gamma^t`.
    Exponential {
        /// Factor per step.
        gamma: f32,
    },
    /// Linear warm-up from 0 over `warmup` steps, then cosine annealing from `base` to
    /// `min_lr` at `total`.
    Cosine {
        /// Warm-up steps.
        warmup: usize,
        /// Rate at the end.
        min_lr: f32,
    },
    /// Smith's one-cycle: linear from `base / div_factor` up to `base` over the first
    /// `pct_start` of the run, then cosine down to `base / final_div_factor`.
    OneCycle {
        /// Fraction of the run spent rising.
        pct_start: f32,
        /// `base / initial rate`.
        div_factor: f32,
        /// `base / final rate`.
        final_div_factor: f32,
    },
}

impl Schedule {
    /// Refuses a schedule whose rates would not be finite and positive: a step size of
    /// 0, a `gamma` or a division factor that is not a finite number above 0, a
    /// `min_lr` below 0, a `pct_start` outside `[0, 1]`. A `gamma` above 1 is taken (the
    /// rate then grows).
    pub fn validate(&self) -> Result<(), TrainError> {
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::Step { step_size: 0, .. } => {
                Err(TrainError::Config("step schedule: step size must be at least 1".into()))
            }
            Schedule::Step { gamma, .. } => positive("step schedule: gamma", gamma, false),
            Schedule::Exponential { gamma } => positive("exponential schedule: gamma", gamma, false),
            Schedule::Cosine { min_lr, .. } => positive("cosine schedule: min_lr", min_lr, true),
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                if !(0.0..=1.0).contains(&pct_start) {
                    return Err(TrainError::Config(format!(
                        "one-cycle schedule: pct_start {pct_start}: must be from 0 to 1"
                    )));
                }
                positive("one-cycle schedule: div_factor", div_factor, false)?;
                positive("one-cycle schedule: final_div_factor", final_div_factor, false)
            }
        }
    }

    /// The learning rate at step `t` of `total`.
    pub fn lr_at(&self, base: f32, t: usize, total: usize) -> f32 {
        let cos_interp = |from: f32, to: f32, frac: f32| {
            let frac = frac.clamp(0.0, 1.0);
            to + (from - to) * 0.5 * (1.0 + (std::f32::consts::PI * frac).cos())
        };
        match *self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => base * gamma.powi((t / step_size.max(1)) as i32),
            Schedule::Exponential { gamma } => base * gamma.powi(t as i32),
            Schedule::Cosine { warmup, min_lr } => {
                if t < warmup {
                    base * (t + 1) as f32 / warmup as f32
                } else {
                    let span = total.saturating_sub(warmup).max(1);
                    cos_interp(base, min_lr, (t - warmup) as f32 / span as f32)
                }
            }
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let rise = ((total as f32 * pct_start).round() as usize).max(1);
                let start = base / div_factor;
                if t < rise {
                    start + (base - start) * t as f32 / rise as f32
                } else {
                    let span = total.saturating_sub(rise).max(1);
                    cos_interp(base, base / final_div_factor, (t - rise) as f32 / span as f32)
                }
            }
        }
    }
}

/// Reduce-on-plateau: multiplies the rate by `factor` when the monitored accuracy has not
/// improved by more than `threshold` for `patience` epochs (never below `min_lr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceOnPlateau {
    /// Factor applied on a plateau.
    pub factor: f32,
    /// Epochs without improvement before reducing.
    pub patience: usize,
    /// Improvement that counts.
    pub threshold: f64,
    /// Lowest rate.
    pub min_lr: f32,
    #[serde(skip)]
    best: Option<f64>,
    #[serde(skip)]
    bad_epochs: usize,
}

impl ReduceOnPlateau {
    /// A plateau rule with the given factor and patience (threshold 1e-4, no floor).
    pub fn new(factor: f32, patience: usize) -> Self {
        Self {
            factor,
            patience,
            threshold: 1e-4,
            min_lr: 0.0,
            best: None,
            bad_epochs: 0,
        }
    }

    /// Refuses a `factor` outside `(0, 1]`, a `threshold` or `min_lr` that is not a
    /// finite number >= 0.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.factor > 0.0 && self.factor <= 1.0) {
            return Err(TrainError::Config(format!(
                "reduce-on-plateau: factor {}: must be above 0 and at most 1",
                self.factor
            )));
        }
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(TrainError::Config(format!(
                "reduce-on-plateau: threshold {}: must be a finite number >= 0",
                self.threshold
            )));
        }
        positive("reduce-on-plateau: min_lr", self.min_lr, true)
    }

    /// The best accuracy seen and the epochs since it improved (what a checkpoint keeps).
    pub fn progress(&self) -> (Option<f64>, usize) {
        (self.best, self.bad_epochs)
    }

    /// Restores [`ReduceOnPlateau::progress`].
    pub fn set_progress(&mut self, best: Option<f64>, bad_epochs: usize) {
        (self.best, self.bad_epochs) = (best, bad_epochs);
    }

    /// Given this epoch's accuracy and the current rate, returns the rate for the next
    /// epoch.
    pub fn step(&mut self, accuracy: f64, lr: f32) -> f32 {
        match self.best {
            Some(b) if accuracy <= b + self.threshold => {
                self.bad_epochs += 1;
                if self.bad_epochs > self.patience {
                    self.bad_epochs = 0;
                    return (lr * self.factor).max(self.min_lr);
                }
            }
            _ => {
                self.best = Some(accuracy);
                self.bad_epochs = 0;
            }
        }
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn closed_form_values() {
        close(Schedule::Constant.lr_at(0.1, 57, 100), 0.1);
        let step = Schedule::Step {
            step_size: 10,
            gamma: 0.5,
        };
        close(step.lr_at(0.1, 9, 100), 0.1);
        close(step.lr_at(0.1, 10, 100), 0.05);
        close(step.lr_at(0.1, 25, 100), 0.025);
        let exp = Schedule::Exponential { gamma: 0.9 };
        close(exp.lr_at(1.0, 3, 100), 0.729);
        let cos = Schedule::Cosine { warmup: 0, min_lr: 0.0 };
        close(cos.lr_at(1.0, 0, 100), 1.0);
        close(cos.lr_at(1.0, 50, 100), 0.5);
        close(
            cos.lr_at(1.0, 25, 100),
            0.5 * (1.0 + (std::f32::consts::PI / 4.0).cos()),
        );
        close(cos.lr_at(1.0, 100, 100), 0.0);
        let warm = Schedule::Cosine {
            warmup: 10,
            min_lr: 0.1,
        };
        close(warm.lr_at(1.0, 0, 110), 0.1);
        close(warm.lr_at(1.0, 4, 110), 0.5);
        close(warm.lr_at(1.0, 10, 110), 1.0);
        close(warm.lr_at(1.0, 60, 110), 0.55);
        let one = Schedule::OneCycle {
            pct_start: 0.25,
            div_factor: 10.0,
            final_div_factor: 100.0,
        };
        close(one.lr_at(1.0, 0, 100), 0.1);
        close(one.lr_at(1.0, 25, 100), 1.0);
        close(one.lr_at(1.0, 12, 100), 0.1 + 0.9 * 12.0 / 25.0);
        close(one.lr_at(1.0, 100, 100), 0.01);
    }

    #[test]
    fn plateau_reduces_after_patience_epochs_without_improvement() {
        let mut p = ReduceOnPlateau::new(0.5, 2);
        let mut lr = 0.1;
        for acc in [0.90, 0.95, 0.95, 0.95] {
            lr = p.step(acc, lr);
        }
        close(lr, 0.1);
        lr = p.step(0.949, lr); // third epoch without improvement
        close(lr, 0.05);
        lr = p.step(0.96, lr);
        close(lr, 0.05);
    }

    #[test]
    fn degenerate_schedules_stay_finite() {
        // a step size of 0 drops every step, as 1 does
        let step = Schedule::Step {
            step_size: 0,
            gamma: 0.5,
        };
        close(step.lr_at(1.0, 3, 10), 0.125);
        // a warm-up as long as the run: the last step reaches the base rate
        let warm = Schedule::Cosine {
            warmup: 10,
            min_lr: 0.0,
        };
        close(warm.lr_at(1.0, 9, 10), 1.0);
        // a run two steps longer than its warm-up: the fall spans those two, half done
        // at the second
        close(warm.lr_at(1.0, 11, 12), 0.5);
        // a one-cycle rise rounds to whole steps: 0.25 of 10 is 2.5, rounded to 3
        let one = Schedule::OneCycle {
            pct_start: 0.25,
            div_factor: 10.0,
            final_div_factor: 100.0,
        };
        close(one.lr_at(1.0, 2, 10), 0.1 + 0.9 * 2.0 / 3.0);
        close(one.lr_at(1.0, 3, 10), 1.0);
        // three sevenths of the way down the cosine from 1 to 0.01 (the fall spans 7 steps)
        close(
            one.lr_at(1.0, 3 + 7 / 2, 10),
            0.01 + 0.99 * 0.5 * (1.0 + (std::f32::consts::PI * 3.0 / 7.0).cos()),
        );
        // a run too short for a rise: one step of it, then the fall over the rest
        let short = Schedule::OneCycle {
            pct_start: 0.1,
            div_factor: 4.0,
            final_div_factor: 8.0,
        };
        close(short.lr_at(1.0, 0, 2), 0.25);
        close(short.lr_at(1.0, 1, 2), 1.0);
        close(short.lr_at(1.0, 2, 2), 0.125);
    }

    #[test]
    fn plateau_counts_an_improvement_only_beyond_the_threshold_and_stops_at_the_floor() {
        let mut p = ReduceOnPlateau::new(0.1, 0);
        p.min_lr = 0.002;
        assert_eq!(p.step(0.5, 1.0), 1.0);
        // exactly the threshold above the best is no improvement: the rate drops
        let just = 0.5 + p.threshold;
        close(p.step(just, 1.0), 0.1);
        assert_eq!(p.progress(), (Some(0.5), 0));
        // beyond it is one, and becomes the best
        assert_eq!(p.step(0.6, 0.1), 0.1);
        assert_eq!(p.progress(), (Some(0.6), 0));
        // the drops stop at the floor
        close(p.step(0.6, 0.1), 0.01);
        close(p.step(0.6, 0.01), 0.002);
        close(p.step(0.6, 0.002), 0.002);
    }

    #[test]
    fn plateau_progress_round_trips() {
        let mut p = ReduceOnPlateau::new(0.5, 2);
        let mut lr = 0.1;
        for acc in [0.90, 0.95, 0.94] {
            lr = p.step(acc, lr);
        }
        assert_eq!(p.progress(), (Some(0.95), 1));
        let mut q = ReduceOnPlateau::new(0.5, 2);
        q.set_progress(Some(0.95), 1);
        assert_eq!(q.progress(), p.progress());
        // two more epochs without improvement: both reduce at the same one
        for acc in [0.95, 0.949] {
            let (a, b) = (p.step(acc, lr), q.step(acc, lr));
            assert_eq!(a, b);
            lr = a;
        }
        close(lr, 0.05);
    }
}
