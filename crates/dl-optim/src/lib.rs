//! # dl-optim
//!
//! The optimizers of the book's `common/optimizer.py`: [`Sgd`], [`Momentum`],
//! [`Nesterov`], [`AdaGrad`], [`RmsProp`] and [`Adam`] (bias-corrected as the book writes
//! it), each with an optional L2 weight decay, all behind one [`Optimizer`] interface:
//! parameters and their gradients in ([`ParamMut`]), parameters updated in place.
//!
//! State (velocities, moments) is kept per parameter name, like the book's `dict` of
//! parameters, so a network may hand over only the parameters it wants trained (frozen
//! layers simply are not passed). [`Optimizer::state`] exports it and
//! [`Optimizer::load_state`] puts it back, so a stopped run continues exactly where it
//! was (a checkpoint). [`WeightAverage`] keeps an exponential moving average of the
//! parameters beside any optimizer, to evaluate and save in their place.
//!
//! ```
//! use dl_optim::{Adam, Optimizer};
//! use dl_tensor::{ParamMut, Tensor};
//!
//! let mut w = Tensor::from_elem(vec![2], 1.0);
//! let g = Tensor::from_elem(vec![2], 0.5);
//! let mut adam = Adam::new(0.001);
//! adam.update(&mut [ParamMut { name: "W1".into(), value: &mut w, grad: &g }]);
//! // Adam's first step moves each weight by about lr against the sign of its gradient
//! assert!((w[0] - (1.0 - 0.001)).abs() < 1e-5);
//! ```

use std::collections::{BTreeMap, HashMap};

mod average;

pub use average::{WeightAverage, AVERAGE_SLOT};
pub use dl_tensor::{ParamMut, Tensor};
use ndarray::Zip;
use serde::{Deserialize, Serialize};

/// The book's small constant in the AdaGrad/RMSprop/Adam denominators.
const EPS: f32 = 1e-7;

/// Why an optimizer could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimError {
    /// No optimizer of that name.
    #[error("unknown optimizer {0:?}: expected one of sgd, momentum, nesterov, adagrad, rmsprop, adam")]
    UnknownName(String),
    /// A saved state that does not fit this optimizer or these parameters.
    #[error("optimizer state does not fit: {0}")]
    State(String),
    /// A hyper-parameter outside its range.
    #[error("invalid {name} {value}: {reason}")]
    InvalidHyperParameter {
        /// Which hyper-parameter.
        name: &'static str,
        /// Its value.
        value: f32,
        /// The allowed range.
        reason: &'static str,
    },
}

/// Learning rates per parameter group, as PyTorch's `param_groups` give them: a
/// parameter whose name lies under a group's prefix (`"layer1"` holds `layer1.0.conv1.W`,
/// not `layer10.W`; `""` holds every name) learns at the optimizer's rate times the
/// group's factor, the longest prefix winning; every other parameter at the rate itself.
/// Fine-tuning trains a pretrained backbone at a fraction of the new head's rate.
///
/// ```
/// use dl_optim::LrGroups;
///
/// let mut groups = LrGroups::new();
/// groups.set("", 0.1).unwrap(); // the backbone: everything ...
/// groups.set("fc", 1.0).unwrap(); // ... but the new head
/// assert_eq!(groups.factor("layer1.0.conv1.W"), 0.1);
/// assert_eq!(groups.factor("fc.W"), 1.0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LrGroups {
    groups: Vec<(String, f32)>,
}

impl LrGroups {
    /// No groups: every parameter learns at the optimizer's rate.
    pub fn new() -> Self {
        Self::default()
    }

    /// The groups of `(prefix, factor)` pairs, later pairs replacing earlier ones with
    /// the same prefix.
    pub fn from_pairs(pairs: &[(String, f32)]) -> Result<Self, OptimError> {
        let mut g = Self::new();
        for (prefix, factor) in pairs {
            g.set(prefix, *factor)?;
        }
        Ok(g)
    }

    /// Sets the factor of the parameters under `prefix` (replacing the prefix's old one).
    /// A factor is finite and at least 0 (0 holds the parameters still).
    pub fn set(&mut self, prefix: &str, factor: f32) -> Result<(), OptimError> {
        if !(factor.is_finite() && factor >= 0.0) {
            return Err(OptimError::InvalidHyperParameter {
                name: "learning-rate factor",
                value: factor,
                reason: "must be a finite number >= 0",
            });
        }
        self.groups.retain(|(p, _)| p != prefix);
        self.groups.push((prefix.to_string(), factor));
        Ok(())
    }

    /// The factor of the parameter `name`: its longest group prefix's, else 1.
    pub fn factor(&self, name: &str) -> f32 {
        self.groups
            .iter()
            .filter(|(p, _)| lies_under(name, p))
            .max_by_key(|(p, _)| p.len())
            .map_or(1.0, |(_, f)| *f)
    }

    /// The prefixes under which none of `names` lies: groups that change nothing, as a
    /// misspelt prefix makes.
    ///
    /// ```
    /// let groups = dl_optim::LrGroups::from_pairs(&[("fc".into(), 1.0), ("layer9".into(), 0.1)]).unwrap();
    /// assert_eq!(groups.unmatched(&["fc.W", "layer1.0.conv1.W"]), ["layer9"]);
    /// ```
    pub fn unmatched(&self, names: &[impl AsRef<str>]) -> Vec<&str> {
        self.groups
            .iter()
            .map(|(p, _)| p.as_str())
            .filter(|p| !names.iter().any(|n| lies_under(n.as_ref(), p)))
            .collect()
    }

    /// The `(prefix, factor)` pairs, in the order they were set.
    pub fn pairs(&self) -> &[(String, f32)] {
        &self.groups
    }
}

/// Whether the parameter `name` lies under the group `prefix`: every name under the
/// empty prefix, else the prefix itself and the names it starts followed by a dot.
fn lies_under(name: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || name == prefix
        || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'.'))
}

/// Updates parameters from their gradients.
pub trait Optimizer: Send {
    /// The book's name: `"SGD"`, `"Adam"`, ...
    fn name(&self) -> &'static str;
    /// One step: every parameter given is updated in place from its gradient.
    fn update(&mut self, params: &mut [ParamMut<'_>]);
    /// The current learning rate.
    fn learning_rate(&self) -> f32;
    /// Sets the learning rate (learning-rate schedules call this between steps).
    fn set_learning_rate(&mut self, lr: f32);
    /// The learning-rate factors per parameter group (none by default).
    fn lr_groups(&self) -> &LrGroups;
    /// Sets the learning-rate factors per parameter group.
    fn set_lr_groups(&mut self, groups: LrGroups);
    /// Everything the optimizer has learned so far (not its hyper-parameters).
    fn state(&self) -> OptimizerState;
    /// Replaces the learned state with `state`, exported by an optimizer of the same
    /// kind for the parameters `params` (name and value, as a network lists them). On
    /// an error (another optimizer's state, an unknown parameter, a shape that differs
    /// from the parameter's) the optimizer is unchanged.
    fn load_state(&mut self, state: &OptimizerState, params: &[(String, &Tensor)]) -> Result<(), OptimError>;
}

/// What an optimizer has learned: its step count and its per-parameter tensors, each
/// under `slot/parameter` (`"m/conv1.W"`: Adam's first moment of `conv1.W`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptimizerState {
    /// The optimizer's book name ([`Optimizer::name`]).
    pub optimizer: String,
    /// Steps taken (Adam's `t`; the other optimizers do not depend on it and keep 0).
    pub steps: u64,
    /// The tensors by `slot/parameter`, in name order.
    pub tensors: BTreeMap<String, Tensor>,
}

/// The state of `optimizer` with the slots `slots` (`("v", &velocities)`).
fn export(optimizer: &str, steps: u64, slots: &[(&str, &HashMap<String, Tensor>)]) -> OptimizerState {
    let mut tensors = BTreeMap::new();
    for (slot, map) in slots {
        for (name, t) in map.iter() {
            tensors.insert(format!("{slot}/{name}"), t.clone());
        }
    }
    OptimizerState {
        optimizer: optimizer.to_string(),
        steps,
        tensors,
    }
}

/// The slots' maps rebuilt from `state`, checked against `optimizer`'s name and slots
/// and against the parameters' names and shapes.
fn import(
    optimizer: &str,
    slot_names: &[&str],
    state: &OptimizerState,
    params: &[(String, &Tensor)],
) -> Result<Vec<HashMap<String, Tensor>>, OptimError> {
    if state.optimizer != optimizer {
        return Err(OptimError::State(format!(
            "it is {:?}'s, this optimizer is {optimizer}",
            state.optimizer
        )));
    }
    let shapes: HashMap<&str, &[usize]> = params.iter().map(|(n, t)| (n.as_str(), t.shape())).collect();
    let mut maps = vec![HashMap::new(); slot_names.len()];
    for (key, t) in &state.tensors {
        let (slot, name) = key
            .split_once('/')
            .ok_or_else(|| OptimError::State(format!("{key:?} is not slot/parameter")))?;
        let i = slot_names
            .iter()
            .position(|s| *s == slot)
            .ok_or_else(|| OptimError::State(format!("{optimizer} has no slot {slot:?} (in {key:?})")))?;
        let shape = shapes
            .get(name)
            .ok_or_else(|| OptimError::State(format!("no parameter {name:?} (in {key:?})")))?;
        if t.shape() != *shape {
            return Err(OptimError::State(format!(
                "{key:?} has shape {:?}, the parameter {:?}",
                t.shape(),
                shape
            )));
        }
        maps[i].insert(name.to_string(), t.clone());
    }
    Ok(maps)
}

/// Builds an optimizer from its book name (case-insensitive) with learning rate `lr` and
/// the book's defaults for the rest.
pub fn by_name(name: &str, lr: f32) -> Result<Box<dyn Optimizer>, OptimError> {
    by_name_with_decay(name, lr, 0.0)
}

/// [`by_name`] with an L2 weight decay `weight_decay` on the weights (0: none).
pub fn by_name_with_decay(name: &str, lr: f32, weight_decay: f32) -> Result<Box<dyn Optimizer>, OptimError> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(OptimError::InvalidHyperParameter {
            name: "learning rate",
            value: lr,
            reason: "must be a positive finite number",
        });
    }
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return Err(OptimError::InvalidHyperParameter {
            name: "weight decay",
            value: weight_decay,
            reason: "must be a finite number >= 0",
        });
    }
    let wd = weight_decay;
    Ok(match name.to_ascii_lowercase().as_str() {
        "sgd" => Box::new(Sgd {
            weight_decay: wd,
            ..Sgd::new(lr)
        }),
        "momentum" => Box::new(Momentum {
            weight_decay: wd,
            ..Momentum::new(lr, 0.9)
        }),
        "nesterov" => Box::new(Nesterov {
            weight_decay: wd,
            ..Nesterov::new(lr, 0.9)
        }),
        "adagrad" => Box::new(AdaGrad {
            weight_decay: wd,
            ..AdaGrad::new(lr)
        }),
        "rmsprop" => Box::new(RmsProp {
            weight_decay: wd,
            ..RmsProp::new(lr, 0.99)
        }),
        "adam" => Box::new(Adam {
            weight_decay: wd,
            ..Adam::new(lr)
        }),
        _ => return Err(OptimError::UnknownName(name.to_string())),
    })
}

/// The L2 weight decay that applies to `p`: the gradient used is `g + lambda * w` for
/// weight tensors (two or more dimensions); biases and other 1-D parameters are not
/// decayed, as in the book's `MultiLayerNet`.
fn decay_for(p: &ParamMut<'_>, lambda: f32) -> f32 {
    if p.value.ndim() < 2 {
        0.0
    } else {
        lambda
    }
}

fn state<'a>(map: &'a mut HashMap<String, Tensor>, p: &ParamMut<'_>) -> &'a mut Tensor {
    map.entry(p.name.clone())
        .or_insert_with(|| Tensor::zeros(p.value.raw_dim()))
}

macro_rules! lr_accessors {
    () => {
        fn learning_rate(&self) -> f32 {
            self.lr
        }
        fn set_learning_rate(&mut self, lr: f32) {
            self.lr = lr;
        }
        fn lr_groups(&self) -> &LrGroups {
            &self.lr_groups
        }
        fn set_lr_groups(&mut self, groups: LrGroups) {
            self.lr_groups = groups;
        }
    };
}

/// Stochastic gradient descent: `W -= lr * dW`.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// L2 weight decay on weights.
    pub weight_decay: f32,
    /// Learning-rate factors per parameter group.
    pub lr_groups: LrGroups,
}

impl Sgd {
    /// The book's `SGD(lr)`.
    pub fn new(lr: f32) -> Self {
        Self {
            lr,
            weight_decay: 0.0,
            lr_groups: LrGroups::new(),
        }
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        "SGD"
    }
    fn update(&mut self, params: &mut [ParamMut<'_>]) {
        for p in params.iter_mut() {
            let wd = decay_for(p, self.weight_decay);
            let lr = self.lr * self.lr_groups.factor(&p.name);
            Zip::from(&mut *p.value)
                .and(p.grad)
                .for_each(|w, &g| *w -= lr * (g + wd * *w));
        }
    }
    lr_accessors!();
    fn state(&self) -> OptimizerState {
        export(self.name(), 0, &[])
    }
    fn load_state(&mut self, state: &OptimizerState, params: &[(String, &Tensor)]) -> Result<(), OptimError> {
        import(self.name(), &[], state, params).map(|_| ())
    }
}

/// Momentum SGD: `v = momentum * v - lr * dW; W += v`.
#[derive(Debug, Clone)]
pub struct Momentum {
    /// Learning rate.
    pub lr: f32,
    /// Momentum coefficient.
    pub momentum: f32,
    /// L2 weight decay on weights.
    pub weight_decay: f32,
    /// Learning-rate factors per parameter group.
    pub lr_groups: LrGroups,
    v: HashMap<String, Tensor>,
}

impl Momentum {
    /// The book's `Momentum(lr, momentum)`.
    pub fn new(lr: f32, momentum: f32) -> Self {
        Self {
            lr,
            momentum,
            weight_decay: 0.0,
            lr_groups: LrGroups::new(),
            v: HashMap::new(),
        }
    }
}

impl Optimizer for Momentum {
    fn name(&self) -> &'static str {
        "Momentum"
    }
    fn update(&mut self, params: &mut [ParamMut<'_>]) {
        for p in params.iter_mut() {
            let wd = decay_for(p, self.weight_decay);
            let v = state(&mut self.v, p);
            let (m, lr) = (self.momentum, self.lr * self.lr_groups.factor(&p.name));
            Zip::from(&mut *p.value).and(v).and(p.grad).for_each(|w, v, &g| {
                let g = g + wd * *w;
                *v = m * *v - lr * g;
                *w += *v;
            });
        }
    }
    lr_accessors!();
    fn state(&self) -> OptimizerState {
        export(self.name(), 0, &[("v", &self.v)])
    }
    fn load_state(&mut self, state: &OptimizerState, params: &[(String, &Tensor)]) -> Result<(), OptimError> {
        let [v] = <[_; 1]>::try_from(import(self.name(), &["v"], state, params)?).expect("one slot");
        self.v = v;
        Ok(())
    }
}

/// Nesterov's accelerated gradient in the book's form:
/// `v = m*v - lr*dW; W += m*m*v - (1+m)*lr*dW`.
#[derive(Debug, Clone)]
pub struct Nesterov {
    /// Learning rate.
    pub lr: f32,
    /// Momentum coefficient.
    pub momentum: f32,
    /// L2 weight decay on weights.
    pub weight_decay: f32,
    /// Learning-rate factors per parameter group.
    pub lr_groups: LrGroups,
    v: HashMap<String, Tensor>,
}

impl Nesterov {
    /// The book's `Nesterov(lr, momentum)`.
    pub fn new(lr: f32, momentum: f32) -> Self {
        Self {
            lr,
            momentum,
            weight_decay: 0.0,
            lr_groups: LrGroups::new(),
            v: HashMap::new(),
        }
    }
}

impl Optimizer for Nesterov {
    fn name(&self) -> &'static str {
        "Nesterov"
    }
    fn update(&mut self, params: &mut [ParamMut<'_>]) {
        for p in params.iter_mut() {
            let wd = decay_for(p, self.weight_decay);
            let v = state(&mut self.v, p);
            let (m, lr) = (self.momentum, self.lr * self.lr_groups.factor(&p.name));
            Zip::from(&mut *p.value).and(v).and(p.grad).for_each(|w, v, &g| {
                let g = g + wd * *w;
                *v = m * *v - lr * g;
                *w += m * m * *v - (1.0 + m) * lr * g;
            });
        }
    }
    lr_accessors!();
    fn state(&self) -> OptimizerState {
        export(self.name(), 0, &[("v", &self.v)])
    }
    fn load_state(&mut self, state: &OptimizerState, params: &[(String, &Tensor)]) -> Result<(), OptimError> {
        let [v] = <[_; 1]>::try_from(import(self.name(), &["v"], state, params)?).expect("one slot");
        self.v = v;
        Ok(())
    }
}

/// AdaGrad: `h += dW^2; W -= lr * dW / (sqrt(h) + 1e-7)`.
#[derive(Debug, Clone)]
pub struct AdaGrad {
    /// Learning rate.
    pub lr: f32,
    /// L2 weight decay on weights.
    pub weight_decay: f32,
    /// Learning-rate factors per parameter group.
    pub lr_groups: LrGroups,
    h: HashMap<String, Tensor>,
}

impl AdaGrad {
    /// The book's `AdaGrad(lr)`.
    pub fn new(lr: f32) -> Self {
        Self {
            lr,
            weight_decay: 0.0,
            lr_groups: LrGroups::new(),
            h: HashMap::new(),
        }
    }
}

impl Optimizer for AdaGrad {
    fn name(&self) -> &'static str {
        "AdaGrad"
    }
    fn update(&mut self, params: &mut [ParamMut<'_>]) {
        for p in params.iter_mut() {
            let wd = decay_for(p, self.weight_decay);
            let h = state(&mut self.h, p);
            let lr = self.lr * self.lr_groups.factor(&p.name);
            Zip::from(&mut *p.value).and(h).and(p.grad).for_each(|w, h, &g| {
                let g = g + wd * *w;
                *h += g * g;
                *w -= lr * g / (h.sqrt() + EPS);
            });
        }
    }
    lr_accessors!();
    fn state(&self) -> OptimizerState {
        export(self.name(), 0, &[("h", &self.h)])
    }
    fn load_state(&mut self, state: &OptimizerState, params: &[(String, &Tensor)]) -> Result<(), OptimError> {
        let [h] = <[_; 1]>::try_from(import(self.name(), &["h"], state, params)?).expect("one slot");
        self.h = h;
        Ok(())
    }
}

/// RMSprop: `h = decay*h + (1-decay)*dW^2; W -= lr * dW / (sqrt(h) + 1e-7)`.
#[derive(Debug, Clone)]
pub struct RmsProp {
    /// Learning rate.
    pub lr: f32,
    /// Decay rate of the running mean of squares.
    pub decay_rate: f32,
    /// L2 weight decay on weights.
    pub weight_decay: f32,
    /// Learning-rate factors per parameter group.
    pub lr_groups: LrGroups,
    h: HashMap<String, Tensor>,
}

impl RmsProp {
    /// The book's `RMSprop(lr, decay_rate)`.
    pub fn new(lr: f32, decay_rate: f32) -> Self {
        Self {
            lr,
            decay_rate,
            weight_decay: 0.0,
            lr_groups: LrGroups::new(),
            h: HashMap::new(),
        }
    }
}

impl Optimizer for RmsProp {
    fn name(&self) -> &'static str {
        "RMSprop"
    }
    fn update(&mut self, params: &mut [ParamMut<'_>]) {
        for p in params.iter_mut() {
            let wd = decay_for(p, self.weight_decay);
            let h = state(&mut self.h, p);
            let (lr, d) = (self.lr * self.lr_groups.factor(&p.name), self.decay_rate);
            Zip::from(&mut *p.value).and(h).and(p.grad).for_each(|w, h, &g| {
                let g = g + wd * *w;
                *h = d * *h + (1.0 - d) * g * g;
                *w -= lr * g / (h.sqrt() + EPS);
            });
        }
    }
    lr_accessors!();
    fn state(&self) -> OptimizerState {
        export(self.name(), 0, &[("h", &self.h)])
    }
    fn load_state(&mut self, state: &OptimizerState, params: &[(String, &Tensor)]) -> Result<(), OptimError> {
        let [h] = <[_; 1]>::try_from(import(self.name(), &["h"], state, params)?).expect("one slot");
        self.h = h;
        Ok(())
    }
}

/// Adam as the book writes it:
/// `lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`, `m += (1-beta1)(g - m)`,
/// `v += (1-beta2)(g^2 - v)`, `W -= lr_t * m / (sqrt(v) + 1e-7)`.
#[derive(Debug, Clone)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// L2 weight decay on weights.
    pub weight_decay: f32,
    /// Learning-rate factors per parameter group.
    pub lr_groups: LrGroups,
    iter: u64,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
}

impl Adam {
    /// The book's `Adam(lr)` with `beta1 = 0.9`, `beta2 = 0.999`.
    pub fn new(lr: f32) -> Self {
        Self::with_betas(lr, 0.9, 0.999)
    }

    /// Adam with the given moment decays.
    pub fn with_betas(lr: f32, beta1: f32, beta2: f32) -> Self {
        Self {
            lr,
            beta1,
            beta2,
            weight_decay: 0.0,
            lr_groups: LrGroups::new(),
            iter: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// Steps taken so far (the `t` of the bias correction).
    pub fn iterations(&self) -> u64 {
        self.iter
    }
}

impl Optimizer for Adam {
    fn name(&self) -> &'static str {
        "Adam"
    }
    fn update(&mut self, params: &mut [ParamMut<'_>]) {
        self.iter += 1;
        let t = self.iter as f64;
        let (b1, b2) = (self.beta1, self.beta2);
        let lr_t = (f64::from(self.lr) * (1.0 - f64::from(b2).powf(t)).sqrt() / (1.0 - f64::from(b1).powf(t))) as f32;
        for p in params.iter_mut() {
            let wd = decay_for(p, self.weight_decay);
            let lr_t = lr_t * self.lr_groups.factor(&p.name);
            let m = state(&mut self.m, p);
            let v = state(&mut self.v, p);
            Zip::from(&mut *p.value)
                .and(m)
                .and(v)
                .and(p.grad)
                .for_each(|w, m, v, &g| {
                    let g = g + wd * *w;
                    *m += (1.0 - b1) * (g - *m);
                    *v += (1.0 - b2) * (g * g - *v);
                    *w -= lr_t * *m / (v.sqrt() + EPS);
                });
        }
    }
    lr_accessors!();
    fn state(&self) -> OptimizerState {
        export(self.name(), self.iter, &[("m", &self.m), ("v", &self.v)])
    }
    fn load_state(&mut self, state: &OptimizerState, params: &[(String, &Tensor)]) -> Result<(), OptimError> {
        let [m, v] = <[_; 2]>::try_from(import(self.name(), &["m", "v"], state, params)?).expect("two slots");
        (self.iter, self.m, self.v) = (state.steps, m, v);
        Ok(())
    }
}
