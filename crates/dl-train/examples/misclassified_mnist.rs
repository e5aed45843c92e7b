//! The book's `ch08/misclassified_mnist.py`: the test accuracy of a trained network
//! (the shipped DeepConvNet, or any model's saved file), and the test digits it gets
//! wrong, drawn here in text (the book plots the first 20 with matplotlib).
//!
//! ```sh
//! cargo run --release -p dl-train --example misclassified_mnist                    # the shipped weights
//! cargo run --release -p dl-train --example misclassified_mnist -- deep_convnet_params.safetensors
//! ```
//!
//! `cargo xtask misclassified` draws them as a PNG grid, for an ensemble too.

use std::error::Error;
use std::process::ExitCode;

use dl_data::Mnist;

/// How many of the misclassified digits to draw, as the book plots.
const SHOWN: usize = 20;

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
    let mut network = dl_models::load(&params)?;

    println!("calculating test accuracy ... ");
    let x_test = mnist.test.to_f32(true, false);
    let t_test: Vec<usize> = mnist.test.labels.iter().map(|&t| usize::from(t)).collect();
    let classified = network.classify(&x_test, 100)?;
    let wrong: Vec<usize> = (0..t_test.len()).filter(|&i| classified[i] != t_test[i]).collect();
    let acc = (t_test.len() - wrong.len()) as f64 / t_test.len() as f64;
    println!("test accuracy:{acc}");

    println!("======= misclassified result =======");
    println!("{{view index: (label, inference), ...}}");
    let pairs: Vec<String> = wrong
        .iter()
        .take(SHOWN)
        .enumerate()
        .map(|(k, &i)| format!("{}: ({}, {})", k + 1, t_test[i], classified[i]))
        .collect();
    println!("{{{}}}", pairs.join(", "));
    for (k, &i) in wrong.iter().take(SHOWN).enumerate() {
        println!(
            "\n{}: test image {i}, label {}, read as {}",
            k + 1,
            t_test[i],
            classified[i]
        );
        let pixels = &mnist.test.images[i * mnist.test.image_len()..][..mnist.test.image_len()];
        for row in pixels.chunks(mnist.test.width) {
            let line: String = row.iter().map(|&p| [' ', '.', '+', '#'][usize::from(p) / 64]).collect();
            println!("{}", format!("    {line}").trim_end());
        }
    }
    Ok(())
}
