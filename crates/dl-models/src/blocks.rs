//! Pieces the deeper models share: a seed counter, torchvision's conv-bn-relu unit, and
//! the wrapper boilerplate of a model type.

use dl_layers::{BatchNormalization, Convolution, Init, Relu, Sequential};

use crate::{derive_seed, ModelError};

/// Hands out the seeds of a model's random parts in order: `derive_seed(seed, 1)`, 2, ...
pub(crate) struct Seeds {
    seed: u64,
    k: u64,
}

impl Seeds {
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed, k: 0 }
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.k += 1;
        derive_seed(self.seed, self.k)
    }
}

/// A `k x k` convolution without bias, He-initialised.
pub(crate) fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, seeds: &mut Seeds) -> Convolution {
    Convolution::new(c_in, c_out, k, k, stride, pad, Init::He, seeds.next()).without_bias()
}

/// torchvision's `BasicConv2d` (GoogLeNet): `conv` (no bias), `bn` (eps `1e-3`), `relu`.
pub(crate) fn basic_conv(c_in: usize, c_out: usize, k: usize, seeds: &mut Seeds) -> Sequential {
    Sequential::new()
        .with_named("conv", conv(c_in, c_out, k, 1, k / 2, seeds))
        .with_named("bn", BatchNormalization::torchvision(c_out).with_eps(1e-3))
        .with_named("relu", Relu::new())
}

/// Checks a size read from a configuration: at least 1 and at most `max`.
pub(crate) fn check_size(kind: &str, what: &str, value: usize, max: usize) -> Result<(), ModelError> {
    if value == 0 || value > max {
        return Err(ModelError::Config {
            kind: kind.into(),
            message: format!("{what} is {value}, must be 1 to {max}"),
        });
    }
    Ok(())
}

/// Checks a configuration's input `(C, H, W)`: each 1 to [`MAX_SIZE`].
pub(crate) fn check_input(kind: &str, (c, h, w): (usize, usize, usize)) -> Result<(), ModelError> {
    for (what, v) in [("channels", c), ("height", h), ("width", w)] {
        check_size(kind, &format!("input {what}"), v, MAX_SIZE)?;
    }
    Ok(())
}

/// Checks the book's `conv_param` read from a configuration: filter number 1 to
/// [`MAX_SIZE`], filter size and stride 1 to 64, padding at most 63.
pub(crate) fn check_conv_param(kind: &str, p: &crate::ConvParam) -> Result<(), ModelError> {
    check_size(kind, "filter number", p.filter_num, MAX_SIZE)?;
    check_size(kind, "filter size", p.filter_size, 64)?;
    check_size(kind, "stride", p.stride, 64)?;
    if p.pad > 63 {
        return Err(ModelError::Config {
            kind: kind.into(),
            message: format!("pad is {}, must be at most 63", p.pad),
        });
    }
    Ok(())
}

/// The largest channel count, image side or hidden width a configuration may ask for.
pub(crate) const MAX_SIZE: usize = 4096;

/// The most parameters a configuration may ask for (2^28: 1 GiB of `f32`), checked
/// before anything is allocated.
pub const MAX_PARAMS: u128 = 1 << 28;

/// Refuses a configuration of more than [`MAX_PARAMS`] parameters.
pub(crate) fn check_params(kind: &str, count: u128) -> Result<(), ModelError> {
    if count > MAX_PARAMS {
        return Err(ModelError::Config {
            kind: kind.into(),
            message: format!("{count} parameters, more than the {MAX_PARAMS} a model may have"),
        });
    }
    Ok(())
}

/// Parameters of a `k x k` convolution from `c_in` to `c_out` channels, with or without
/// its bias.
pub(crate) fn conv_params(c_in: usize, c_out: usize, k: usize, bias: bool) -> u128 {
    let (c_in, c_out, k) = (c_in as u128, c_out as u128, k as u128);
    c_in * c_out * k * k + if bias { c_out } else { 0 }
}

/// Parameters of an Affine layer (weights and bias).
pub(crate) fn affine_params(n_in: usize, n_out: usize) -> u128 {
    n_in as u128 * n_out as u128 + n_out as u128
}

/// The output side of a convolution or pool, `None` when the window does not fit.
pub(crate) fn out_side(side: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    (side + 2 * pad).checked_sub(k).map(|d| d / stride.max(1) + 1)
}

/// A dropout ratio in `[0, 1)`.
pub(crate) fn check_ratio(kind: &str, ratio: f32) -> Result<(), ModelError> {
    if !(0.0..1.0).contains(&ratio) {
        return Err(ModelError::Config {
            kind: kind.into(),
            message: format!("dropout ratio {ratio} is not in [0, 1)"),
        });
    }
    Ok(())
}

/// The checks a VGG-style configuration ([`Vgg`](crate::Vgg),
/// [`BinaryConvNet`](crate::BinaryConvNet)) passes before anything is built: its input;
/// 1 to 8 blocks of 1 to 8 convolutions of 1 to [`MAX_SIZE`] channels; the hidden and
/// output sizes; the dropout ratio, when it has one; the parameter count (`param_count`,
/// asked for once the sizes are known to be in range); and an image that each block
/// can halve.
pub(crate) fn check_vgg_style(
    kind: &str,
    input_dim: (usize, usize, usize),
    blocks: &[(usize, usize)],
    (hidden_size, output_size): (usize, usize),
    dropout_ratio: Option<f32>,
    param_count: impl FnOnce() -> u128,
) -> Result<(), ModelError> {
    check_input(kind, input_dim)?;
    check_size(kind, "number of blocks", blocks.len(), 8)?;
    for &(n, c) in blocks {
        check_size(kind, "convolutions in a block", n, 8)?;
        check_size(kind, "block channels", c, MAX_SIZE)?;
    }
    check_size(kind, "hidden size", hidden_size, MAX_SIZE)?;
    check_size(kind, "output size", output_size, MAX_SIZE)?;
    if let Some(ratio) = dropout_ratio {
        check_ratio(kind, ratio)?;
    }
    check_params(kind, param_count())?;
    let (_, h, w) = input_dim;
    if h >> blocks.len() == 0 || w >> blocks.len() == 0 {
        return Err(ModelError::Config {
            kind: kind.into(),
            message: format!("a {h}x{w} image cannot be halved {} times", blocks.len()),
        });
    }
    Ok(())
}

/// `Deref`/`DerefMut` to the [`Network`](crate::Network) field and `into_network`, for
/// a model type `$t { network: Network, config: $c }`.
macro_rules! model_type {
    ($t:ident, $c:ty) => {
        impl $t {
            /// The configuration it was built with.
            pub fn config(&self) -> &$c {
                &self.config
            }

            /// The underlying [`Network`](crate::Network), by value.
            pub fn into_network(self) -> crate::Network {
                self.network
            }
        }

        impl std::ops::Deref for $t {
            type Target = crate::Network;
            fn deref(&self) -> &crate::Network {
                &self.network
            }
        }

        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut crate::Network {
                &mut self.network
            }
        }
    };
}
pub(crate) use model_type;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_bound_is_inclusive() {
        assert!(check_params("m", MAX_PARAMS).is_ok());
        assert!(check_params("m", 0).is_ok());
        let e = check_params("m", MAX_PARAMS + 1).unwrap_err();
        assert!(e.to_string().contains(&(MAX_PARAMS + 1).to_string()), "{e}");
        assert_eq!(conv_params(2, 3, 5, true), 2 * 3 * 25 + 3);
        assert_eq!(conv_params(2, 3, 5, false), 150);
        assert_eq!(affine_params(4, 7), 35);
        assert_eq!(out_side(28, 5, 1, 0), Some(24));
        assert_eq!(out_side(7, 3, 2, 1), Some(4));
        assert_eq!(out_side(2, 5, 1, 1), None);
    }
}
