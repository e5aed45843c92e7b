//! bf16 products (`Layer::set_bf16_products`): a layer computes exactly what the f32
//! layer computes on operands rounded to bfloat16 (weights, input, upstream gradient),
//! keeps its f32 master weights, and goes back to f32 when told; containers pass the
//! setting on.

use dl_layers::gradcheck::random_input;
use dl_layers::{Affine, Bf16Kernel, Concat, ConvAlgo, Convolution, Init, Layer, Relu, Residual, Sequential, Tensor};
use dl_tensor::lowp::round_bf16;

fn rounded(t: &Tensor) -> Tensor {
    t.mapv(round_bf16)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.iter().map(|v| v.to_bits()).collect()
}

/// A layer with bf16 products against its f32 twin whose weights, input and upstream
/// gradient are rounded by hand: forward, dx, every parameter gradient, bit for bit;
/// the master weights unrounded; and the f32 layer's results differ.
fn check(mut layer: Box<dyn Layer>, input: &[usize], what: &str) {
    let x = random_input(input, 0.0, 1);
    let mut plain = layer.clone_box();
    let mut twin = layer.clone_box();
    // the weights are rounded, the bias is added in f32
    for (name, p) in twin.params_mut() {
        if name.ends_with('W') {
            p.value = rounded(&p.value);
        }
    }
    let masters: Vec<Tensor> = layer.params().iter().map(|(_, p)| p.value.clone()).collect();
    layer.set_bf16_products(Some(Bf16Kernel::Rounded));
    let y = layer.forward(x.clone(), true).unwrap();
    let want = twin.forward(rounded(&x), true).unwrap();
    assert_eq!(bits(&y), bits(&want), "{what}: forward");
    let y32 = plain.forward(x.clone(), true).unwrap();
    assert_ne!(bits(&y), bits(&y32), "{what}: bf16 products must round");
    let dout = random_input(y.shape(), 0.0, 2);
    let dx = layer.backward(dout.clone());
    let want_dx = twin.backward(rounded(&dout));
    assert_eq!(bits(&dx), bits(&want_dx), "{what}: dx");
    let dx32 = plain.backward(dout.clone());
    assert_ne!(bits(&dx), bits(&dx32), "{what}: dx in bf16 products");
    for ((name, p), (_, q)) in layer.params().iter().zip(twin.params()) {
        assert_eq!(bits(&p.grad), bits(&q.grad), "{what}: d{name}");
    }
    for ((name, p), m) in layer.params().iter().zip(&masters) {
        assert_eq!(bits(&p.value), bits(m), "{what}: master {name} kept in f32");
    }
    // evaluation rounds too; switched off, the layer is the f32 layer again
    assert_eq!(
        bits(&layer.forward(x.clone(), false).unwrap()),
        bits(&twin.forward(rounded(&x), false).unwrap())
    );
    layer.set_bf16_products(None);
    assert_eq!(
        bits(&layer.forward(x.clone(), true).unwrap()),
        bits(&y32),
        "{what}: back to f32"
    );
    assert_eq!(bits(&layer.backward(dout)), bits(&dx32), "{what}: backward back to f32");
}

#[test]
fn a_convolution_with_bf16_products_is_the_f32_convolution_of_rounded_operands() {
    // every algorithm: the book's lowered GEMM, the direct kernel, Winograd
    for algo in [ConvAlgo::Lowered, ConvAlgo::Direct, ConvAlgo::Winograd] {
        let mut conv = Convolution::new(8, 16, 3, 3, 1, 1, Init::He, 3);
        conv.b.as_mut().unwrap().value = random_input(&[16], 0.0, 4);
        conv.set_algo(algo);
        check(Box::new(conv), &[3, 8, 10, 10], &format!("convolution {algo:?}"));
    }
    // the first layer of the book's network (1 channel) and a strided one
    check(
        Box::new(Convolution::new(1, 16, 3, 3, 1, 1, Init::He, 5)),
        &[2, 1, 12, 12],
        "conv1",
    );
    check(
        Box::new(Convolution::new(4, 8, 3, 3, 2, 1, Init::He, 6)),
        &[2, 4, 9, 9],
        "stride 2",
    );
}

#[test]
fn an_affine_layer_with_bf16_products_is_the_f32_layer_of_rounded_operands() {
    let mut affine = Affine::new(40, 12, Init::He, 7);
    affine.b.value = random_input(&[12], 0.0, 8);
    check(Box::new(affine.clone()), &[5, 40], "affine");
    // a feature map flattened on the way in, restored on the way out
    check(Box::new(affine), &[5, 10, 2, 2], "affine on (N, C, H, W)");
}

#[test]
fn binary_layers_with_bf16_products_are_the_f32_layers_of_rounded_operands() {
    use dl_layers::{BinaryAffine, BinaryConvolution};
    check(
        Box::new(BinaryAffine::new(40, 12, Init::Xavier, 9)),
        &[5, 40],
        "binary affine",
    );
    check(
        Box::new(BinaryConvolution::new(8, 16, 3, 3, 1, 1, Init::Xavier, 10)),
        &[2, 8, 6, 6],
        "binary convolution",
    );
}

/// A container told to use bf16 products by `kernel` computes what the same container
/// of layers each told so computes, and not what the f32 container computes.
fn check_container(
    mut told: Box<dyn Layer>,
    mut each: Box<dyn Layer>,
    mut plain: Box<dyn Layer>,
    kernel: Bf16Kernel,
    what: &str,
) {
    let x = random_input(&[2, 4, 6, 6], 0.0, 1);
    told.set_bf16_products(Some(kernel));
    let y = told.forward(x.clone(), true).unwrap();
    assert_eq!(
        bits(&y),
        bits(&each.forward(x.clone(), true).unwrap()),
        "{what} {kernel}: forward"
    );
    assert_ne!(
        bits(&y),
        bits(&plain.forward(x, true).unwrap()),
        "{what} {kernel}: bf16 products must round"
    );
    let dout = random_input(y.shape(), 0.0, 2);
    assert_eq!(
        bits(&told.backward(dout.clone())),
        bits(&each.backward(dout)),
        "{what} {kernel}: backward"
    );
    for ((name, p), (_, q)) in told.params().iter().zip(each.params()) {
        assert_eq!(bits(&p.grad), bits(&q.grad), "{what} {kernel}: d{name}");
    }
}

#[test]
fn every_container_passes_bf16_products_to_its_layers() {
    // the kernel itself is passed on, not only "on": the two give different sums
    for kernel in [Bf16Kernel::Rounded, Bf16Kernel::Scalar] {
        let conv = |seed, bf16| {
            let mut c = Convolution::new(4, 4, 3, 3, 1, 1, Init::He, seed);
            c.set_bf16_products(bf16);
            c
        };
        let seq = |bf16| {
            Sequential::new()
                .with(conv(1, bf16))
                .with(Relu::new())
                .with(conv(2, bf16))
        };
        let on = Some(kernel);
        check_container(
            Box::new(seq(None)),
            Box::new(seq(on)),
            Box::new(seq(None)),
            kernel,
            "sequential",
        );
        let res = |bf16| Residual::new(seq(bf16), Some(Sequential::new().with(conv(3, bf16))));
        check_container(
            Box::new(res(None)),
            Box::new(res(on)),
            Box::new(res(None)),
            kernel,
            "residual",
        );
        let cat = |bf16| {
            Concat::new()
                .with_branch("a", Sequential::new().with(conv(4, bf16)))
                .with_branch("b", seq(bf16))
        };
        check_container(
            Box::new(cat(None)),
            Box::new(cat(on)),
            Box::new(cat(None)),
            kernel,
            "concat",
        );
    }
}

/// The bf16 GEMM kernels in a layer: forward, dx and every parameter gradient are those
/// of the rounded-operand layer up to the order of the f32 additions, the master
/// weights stay in f32, and `vdpbf16ps` (where the CPU has it) gives the plain-Rust
/// kernel's results bit for bit.
fn check_gemm_kernels(layer: Box<dyn Layer>, input: &[usize], what: &str) {
    let x = random_input(input, 0.0, 1);
    let dout_of = |shape: &[usize]| random_input(shape, 0.0, 2);
    let run = |kernel: Option<Bf16Kernel>| {
        let mut l = layer.clone_box();
        l.set_bf16_products(kernel);
        let y = l.forward(x.clone(), true).unwrap();
        let dx = l.backward(dout_of(y.shape()));
        let grads: Vec<Tensor> = l.params().iter().map(|(_, p)| p.grad.clone()).collect();
        let values: Vec<Tensor> = l.params().iter().map(|(_, p)| p.value.clone()).collect();
        (y, dx, grads, values)
    };
    let (y, dx, grads, values) = run(Some(Bf16Kernel::Scalar));
    let (ry, rdx, rgrads, _) = run(Some(Bf16Kernel::Rounded));
    // the bias gradient has no products: the sum of the upstream gradient as it came
    let (_, _, fgrads, _) = run(None);
    let close = |a: &Tensor, b: &Tensor, name: &str| {
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (p, q) in a.iter().zip(b.iter()) {
            assert!((p - q).abs() <= 1e-5 * scale, "{what} {name}: {p} vs {q}");
        }
    };
    close(&y, &ry, "forward");
    close(&dx, &rdx, "dx");
    for (((name, _), g), (r, f)) in layer.params().iter().zip(&grads).zip(rgrads.iter().zip(&fgrads)) {
        close(g, if name.ends_with('b') { f } else { r }, &format!("d{name}"));
    }
    for (v, (_, p)) in values.iter().zip(layer.params()) {
        assert_eq!(bits(v), bits(&p.value), "{what}: master weights kept in f32");
    }
    if Bf16Kernel::Avx512.supported() {
        let (vy, vdx, vgrads, _) = run(Some(Bf16Kernel::Avx512));
        assert_eq!(bits(&vy), bits(&y), "{what}: vdpbf16ps forward");
        assert_eq!(bits(&vdx), bits(&dx), "{what}: vdpbf16ps dx");
        for (g, v) in grads.iter().zip(&vgrads) {
            assert_eq!(bits(g), bits(v), "{what}: vdpbf16ps gradients");
        }
    } else {
        eprintln!("{what}: no AVX-512 BF16 here, the plain-Rust kernel alone is checked");
    }
}

#[test]
fn the_bf16_gemm_kernels_compute_the_rounded_layers_products() {
    // 3x3 with padding (the transposed-convolution input gradient), stride 2 (col2im),
    // 1x1 (no lowering), an odd inner dimension (3 channels of 3x3: 27)
    for (c, f, k, stride, pad, hw) in [
        (4, 5, 3, 1, 1, 7),
        (3, 6, 3, 2, 1, 9),
        (6, 4, 1, 1, 0, 5),
        (3, 33, 3, 1, 0, 6),
    ] {
        let mut conv = Convolution::new(c, f, k, k, stride, pad, Init::He, 3);
        conv.b.as_mut().unwrap().value = random_input(&[f], 0.0, 4);
        check_gemm_kernels(
            Box::new(conv),
            &[3, c, hw, hw],
            &format!("conv {c}->{f} {k}x{k} s{stride} p{pad}"),
        );
    }
    let mut affine = Affine::new(41, 12, Init::He, 7);
    affine.b.value = random_input(&[12], 0.0, 8);
    check_gemm_kernels(Box::new(affine), &[5, 41], "affine");
}
