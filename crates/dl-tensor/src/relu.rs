//! The ReLU's elementwise passes (the book's `Relu`: `max(0, x)` forward, the mask
//! `x <= 0` kept in training, the gradient zeroed where the mask is set), at an
//! instruction-set level: one plain loop, compiled once per level with that level's
//! target features, so each runs as wide as the CPU allows (the crate's default build
//! targets the x86-64 baseline, whose 128-bit SSE2 would run them otherwise).
//!
//! ```
//! use dl_tensor::{relu, Isa};
//!
//! let mut x = [1.5f32, -2.0, 0.0, f32::NAN];
//! let mut mask = [false; 4];
//! relu::forward_masked(Isa::active(), &mut x, &mut mask);
//! assert_eq!(x, [1.5, 0.0, 0.0, 0.0]);              // a NaN becomes 0 ...
//! assert_eq!(mask, [false, true, true, false]);     // ... and lets its gradient pass
//! let mut dout = [1.0f32, 2.0, 3.0, 4.0];
//! relu::backward_in_place(Isa::active(), &mut dout, &mask);
//! assert_eq!(dout, [1.0, 0.0, 0.0, 4.0]);
//! ```
//!
//! Every level computes the same values bit for bit (the tests run each level the CPU
//! has against the book's definition). A level the CPU lacks, or [`Isa::Neon`], runs
//! the plain build ([`crate::norm::level`] says which level runs).

use crate::Isa;

// The passes' plain loops, inlined into each level's copy (`crate::levels`).

/// The book's `max(0, v)`, written so that every value has one result on every level:
/// `-0` and NaN give `+0` (`f32::max` leaves the sign of a zero to the compiler).
#[inline(always)]
pub(crate) fn relu(v: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

#[inline(always)]
fn forward_loop(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = relu(*v));
}

#[inline(always)]
fn forward_masked_loop(values: &mut [f32], mask: &mut [bool]) {
    for (v, m) in values.iter_mut().zip(mask) {
        *m = *v <= 0.0;
        *v = relu(*v);
    }
}

#[inline(always)]
fn backward_loop(dout: &[f32], mask: &[bool], out: &mut [f32]) {
    for ((o, &d), &m) in out.iter_mut().zip(dout).zip(mask) {
        // a select, not a branch: vectorises
        *o = if m { 0.0 } else { d };
    }
}

#[inline(always)]
fn backward_in_place_loop(dout: &mut [f32], mask: &[bool]) {
    for (d, &m) in dout.iter_mut().zip(mask) {
        *d = if m { 0.0 } else { *d };
    }
}

builds! {
    forward_loop(values: &mut [f32]);
    forward_masked_loop(values: &mut [f32], mask: &mut [bool]);
    backward_loop(dout: &[f32], mask: &[bool], out: &mut [f32]);
    backward_in_place_loop(dout: &mut [f32], mask: &[bool]);
}

/// `v = max(0, v)` for every value (a NaN becomes 0, as the book's `Relu` in this
/// project makes it).
pub fn forward(isa: Isa, values: &mut [f32]) {
    at_level!(isa, forward_loop(values))
}

/// [`forward`], and `mask = v <= 0` (before the ReLU) for every value, as the book's
/// `Relu.forward` keeps it for the backward pass (a NaN: 0, mask `false`). Values past
/// the shorter of the two slices are left alone.
pub fn forward_masked(isa: Isa, values: &mut [f32], mask: &mut [bool]) {
    at_level!(isa, forward_masked_loop(values, mask))
}

/// The book's `Relu.backward` into `out`: `dout` where the mask is `false`, 0 where it
/// is `true`, over the shortest of the three slices.
pub fn backward(isa: Isa, dout: &[f32], mask: &[bool], out: &mut [f32]) {
    at_level!(isa, backward_loop(dout, mask, out))
}

/// [`backward`] in place: `dout` zeroed where the mask is `true`.
pub fn backward_in_place(isa: Isa, dout: &mut [f32], mask: &[bool]) {
    at_level!(isa, backward_in_place_loop(dout, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every kind the passes meet: positive, negative, both zeros, NaN,
    /// infinities, subnormals; `n` of them.
    fn values(n: usize) -> Vec<f32> {
        let kinds = [
            1.5f32,
            -2.25,
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            -1e-40,
            3.0,
            -0.5,
        ];
        (0..n)
            .map(|i| kinds[(i * 7 + i / 3) % kinds.len()] * (1.0 + i as f32 / 64.0))
            .collect()
    }

    #[test]
    fn every_level_is_the_book_relu_on_every_length_and_kind_of_value() {
        // lengths across the vector widths' tails (4, 8, 16 lanes; the loops unrolled)
        for n in (0..=70).chain([255, 256, 257, 1000]) {
            let x = values(n);
            // the book's definition, written out
            let want: Vec<f32> = x.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect();
            let want_mask: Vec<bool> = x.iter().map(|&v| v <= 0.0).collect();
            let dout: Vec<f32> = (0..n).map(|i| i as f32 - 20.5).collect();
            let want_dx: Vec<f32> = dout
                .iter()
                .zip(&want_mask)
                .map(|(&d, &m)| if m { 0.0 } else { d })
                .collect();
            for isa in Isa::ALL {
                let at = format!("{isa}, n = {n}");
                let mut y = x.clone();
                forward(isa, &mut y);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&want), "forward {at}");
                let mut y = x.clone();
                let mut mask = vec![n % 2 == 0; n];
                forward_masked(isa, &mut y, &mut mask);
                assert_eq!(bits(&y), bits(&want), "forward_masked {at}");
                assert_eq!(mask, want_mask, "mask {at}");
                let mut dx = vec![f32::NAN; n];
                backward(isa, &dout, &mask, &mut dx);
                assert_eq!(bits(&dx), bits(&want_dx), "backward {at}");
                let mut d = dout.clone();
                backward_in_place(isa, &mut d, &mask);
                assert_eq!(bits(&d), bits(&want_dx), "backward_in_place {at}");
            }
        }
    }

    #[test]
    fn the_passes_stop_at_the_shortest_slice() {
        for isa in Isa::ALL {
            let mut y = [-1.0f32, -2.0, -3.0];
            let mut mask = [false; 2];
            forward_masked(isa, &mut y, &mut mask);
            assert_eq!((y, mask), ([0.0, 0.0, -3.0], [true, true]), "{isa}");
            let mut out = [7.0f32; 3];
            backward(isa, &[1.0, 2.0, 3.0], &[true, false], &mut out);
            assert_eq!(out, [0.0, 2.0, 7.0], "{isa}");
            let mut d = [1.0f32, 2.0, 3.0];
            backward_in_place(isa, &mut d, &[true, true]);
            assert_eq!(d, [0.0, 0.0, 3.0], "{isa}");
        }
    }
}
