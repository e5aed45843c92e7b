//! bf16 products (`Layer::set_bf16_products`): a layer computes exactly what the f32
//! layer computes on operands rounded to bfloat16 (weights, input, upstream gradient),
//! keeps its f32 master weights, and goes back to f32 when told; containers pass the
//! setting on.

use dl_layers::gradcheck::random_input;
use dl_layers::{Affine, Concat, ConvAlgo, Convolution, Init, Layer, Relu, Residual, Sequential, Tensor};
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
    layer.set_bf16_products(true);
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
    layer.set_bf16_products(false);
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

/// A container told to use bf16 products computes what the same container of layers
/// each told so computes, and not what the f32 container computes.
fn check_container(mut told: Box<dyn Layer>, mut each: Box<dyn Layer>, mut plain: Box<dyn Layer>, what: &str) {
    let x = random_input(&[2, 4, 6, 6], 0.0, 1);
    told.set_bf16_products(true);
    let y = told.forward(x.clone(), true).unwrap();
    assert_eq!(
        bits(&y),
        bits(&each.forward(x.clone(), true).unwrap()),
        "{what}: forward"
    );
    assert_ne!(
        bits(&y),
        bits(&plain.forward(x, true).unwrap()),
        "{what}: bf16 products must round"
    );
    let dout = random_input(y.shape(), 0.0, 2);
    assert_eq!(
        bits(&told.backward(dout.clone())),
        bits(&each.backward(dout)),
        "{what}: backward"
    );
    for ((name, p), (_, q)) in told.params().iter().zip(each.params()) {
        assert_eq!(bits(&p.grad), bits(&q.grad), "{what}: d{name}");
    }
}

#[test]
fn every_container_passes_bf16_products_to_its_layers() {
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
    check_container(
        Box::new(seq(false)),
        Box::new(seq(true)),
        Box::new(seq(false)),
        "sequential",
    );
    let res = |bf16| Residual::new(seq(bf16), Some(Sequential::new().with(conv(3, bf16))));
    check_container(
        Box::new(res(false)),
        Box::new(res(true)),
        Box::new(res(false)),
        "residual",
    );
    let cat = |bf16| {
        Concat::new()
            .with_branch("a", Sequential::new().with(conv(4, bf16)))
            .with_branch("b", seq(bf16))
    };
    check_container(
        Box::new(cat(false)),
        Box::new(cat(true)),
        Box::new(cat(false)),
        "concat",
    );
}
