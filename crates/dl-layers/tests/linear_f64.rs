//! The linear layers (Affine, Convolution) against the same formulas in f64: forward,
//! input gradient and every parameter gradient within 1e-5 relative (to the larger of 1
//! and the reference's magnitude). Each sum here has at most a few hundred terms of
//! unit scale, so f32 accumulation is off by about 1e-6 at most; a wrong index, a
//! missing term or a gradient added to the last call's is off by far more. Each layer
//! runs backward twice on one input, with different `dout`: the gradients must be the
//! second call's alone.

mod common;

use common::{ConvCase, CONV_CASES};
use dl_layers::gradcheck::random_input;
use dl_layers::{Affine, Convolution, Init, Layer, Tensor};

const TOL: f64 = 1e-5;

fn close(what: &str, got: &Tensor, want: &[f64]) {
    let got = got.as_slice().expect("standard layout");
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs() / w.abs().max(1.0);
        assert!(err <= TOL, "{what}[{i}]: {g} against {w} (relative error {err:e})");
    }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.iter().map(|&v| f64::from(v)).collect()
}

#[test]
fn affine_is_its_formula_in_f64() {
    // (batch, D, M), the input 2-D or a feature map flattened
    let cases: [(usize, &[usize], usize); 3] = [(3, &[3, 7], 5), (4, &[4, 2, 3, 3], 6), (1, &[1, 40], 10)];
    for (i, &(n, shape_in, m)) in cases.iter().enumerate() {
        let d: usize = shape_in[1..].iter().product();
        let mut layer = Affine::new(d, m, Init::He, 100 + i as u64);
        layer.b.value = random_input(&[m], 0.0, 110 + i as u64);
        let x = random_input(shape_in, 0.0, 120 + i as u64);
        let first = random_input(&[n, m], 0.0, 130 + i as u64);
        let dout = random_input(&[n, m], 0.0, 140 + i as u64);
        let (w, b, xs, ds) = (f64s(&layer.w.value), f64s(&layer.b.value), f64s(&x), f64s(&dout));

        layer.forward(x.clone(), true).unwrap();
        layer.backward(first);
        let y = layer.forward(x.clone(), true).unwrap();
        let dx = layer.backward(dout);

        let mut want_y = vec![0.0; n * m];
        let mut want_dx = vec![0.0; n * d];
        let mut want_dw = vec![0.0; d * m];
        let mut want_db = vec![0.0; m];
        for r in 0..n {
            for j in 0..m {
                want_y[r * m + j] = b[j] + (0..d).map(|k| xs[r * d + k] * w[k * m + j]).sum::<f64>();
                want_db[j] += ds[r * m + j];
            }
            for k in 0..d {
                want_dx[r * d + k] = (0..m).map(|j| ds[r * m + j] * w[k * m + j]).sum();
                for j in 0..m {
                    want_dw[k * m + j] += xs[r * d + k] * ds[r * m + j];
                }
            }
        }
        assert_eq!(dx.shape(), shape_in, "case {i}: dx keeps the input's shape");
        close(&format!("case {i} out"), &y, &want_y);
        close(&format!("case {i} dx"), &dx, &want_dx);
        close(&format!("case {i} dW"), &layer.w.grad, &want_dw);
        close(&format!("case {i} db"), &layer.b.grad, &want_db);
    }
}

#[test]
fn convolution_is_its_formula_in_f64() {
    // the gradient check's cases, and two more: 16 channels on 8x8 (Winograd both ways)
    // and a 1x1 stride-2 convolution
    let more: &[ConvCase] = &[(16, 16, 3, 3, 1, 1, [2, 16, 8, 8]), (4, 6, 1, 1, 2, 0, [2, 4, 7, 7])];
    for (i, &(c, f, fh, fw, s, p, [n, _, h, w])) in CONV_CASES.iter().chain(more).enumerate() {
        let mut layer = Convolution::new(c, f, fh, fw, s, p, Init::He, 200 + i as u64);
        layer.b.as_mut().unwrap().value = random_input(&[f], 0.0, 210 + i as u64);
        let x = random_input(&[n, c, h, w], 0.0, 220 + i as u64);
        let (oh, ow) = ((h + 2 * p - fh) / s + 1, (w + 2 * p - fw) / s + 1);
        let first = random_input(&[n, f, oh, ow], 0.0, 230 + i as u64);
        let dout = random_input(&[n, f, oh, ow], 0.0, 240 + i as u64);
        let wt = f64s(&layer.w.value);
        let b = f64s(&layer.b.as_ref().unwrap().value);
        let (xs, ds) = (f64s(&x), f64s(&dout));

        layer.forward(x.clone(), true).unwrap();
        layer.backward(first);
        let y = layer.forward(x.clone(), true).unwrap();
        let dx = layer.backward(dout);

        let mut want_y = vec![0.0; n * f * oh * ow];
        let mut want_dx = vec![0.0; n * c * h * w];
        let mut want_dw = vec![0.0; f * c * fh * fw];
        let mut want_db = vec![0.0; f];
        for im in 0..n {
            for fi in 0..f {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let o = ((im * f + fi) * oh + oy) * ow + ox;
                        let mut sum = b[fi];
                        want_db[fi] += ds[o];
                        for ci in 0..c {
                            for ky in 0..fh {
                                for kx in 0..fw {
                                    let (yy, xx) = ((oy * s + ky).wrapping_sub(p), (ox * s + kx).wrapping_sub(p));
                                    if yy >= h || xx >= w {
                                        continue;
                                    }
                                    let xi = ((im * c + ci) * h + yy) * w + xx;
                                    let wi = ((fi * c + ci) * fh + ky) * fw + kx;
                                    sum += wt[wi] * xs[xi];
                                    want_dx[xi] += wt[wi] * ds[o];
                                    want_dw[wi] += xs[xi] * ds[o];
                                }
                            }
                        }
                        want_y[o] = sum;
                    }
                }
            }
        }
        close(&format!("case {i} out"), &y, &want_y);
        close(&format!("case {i} dx"), &dx, &want_dx);
        close(&format!("case {i} dW"), &layer.w.grad, &want_dw);
        close(&format!("case {i} db"), &layer.b.as_ref().unwrap().grad, &want_db);
    }
}
