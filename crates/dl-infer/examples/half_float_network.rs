//! The book's `ch08/half_float_network.py`: a trained network's test accuracy (the
//! shipped DeepConvNet, or any model's saved file) with its weights and activations in
//! 16 bits against 32, the same trained parameters.
//!
//! ```sh
//! cargo run --release -p dl-infer --example half_float_network                    # the shipped weights
//! cargo run --release -p dl-infer --example half_float_network -- deep_convnet_params.safetensors
//! ```
//!
//! The book's float64 run is `f32` here, the library's training precision, and its
//! float16 is IEEE half ([`Precision::F16`]); bfloat16, the other 16-bit format, is
//! printed beside them. `cargo xtask bench --precision` times all three.

use std::error::Error;
use std::process::ExitCode;

use dl_data::Mnist;
use dl_infer::{Inference, Precision};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let params = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../dl-models/weights/deep_convnet.safetensors"
        )
        .to_string()
    });
    let mnist = Mnist::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/mnist"))?;
    // any saved model rebuilds from its file: the book's DeepConvNet by default
    let network = dl_models::load(&params)?;
    let x_test = mnist.test.to_f32(true, false);
    let t_test: Vec<usize> = mnist.test.labels.iter().map(|&t| usize::from(t)).collect();

    for (name, precision) in [
        ("float32", Precision::F32),
        ("float16", Precision::F16),
        ("bfloat16", Precision::Bf16),
    ] {
        println!("calculate accuracy ({name}) ... ");
        let engine = Inference::new(network.root(), precision)?;
        println!("{}", engine.accuracy(&x_test, &t_test, 100)?);
    }
    Ok(())
}
