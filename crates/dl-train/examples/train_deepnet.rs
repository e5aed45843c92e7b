//! The book's `ch08/train_deepnet.py` on the library alone: DeepConvNet trained on the
//! shipped MNIST for 20 epochs (mini-batches of 100, Adam at 0.001, each epoch's
//! accuracies on 1,000 images), the book's per-epoch lines, the final test accuracy,
//! and the parameters saved.
//!
//! ```sh
//! cargo run --release -p dl-train --example train_deepnet           # the book's 20 epochs
//! cargo run --release -p dl-train --example train_deepnet -- 1      # one epoch
//! ```
//!
//! It writes `deep_convnet_params.safetensors` in the current folder, the file
//! `misclassified_mnist` reads, and refuses to start when that file is already there.
//! `cargo xtask train` is the same run with checkpoints, a progress bar, curves and
//! every other flag.

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;

use dl_data::Mnist;
use dl_models::{DeepConvNet, DeepConvNetConfig};
use dl_train::{Trainer, TrainerConfig};

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
    let epochs = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| format!("the number of epochs, not {arg:?}"))?,
        None => 20,
    };
    let out = Path::new("deep_convnet_params.safetensors");
    if out.exists() {
        return Err(format!("{} is already there: move it away first", out.display()).into());
    }

    // keep the blocks a training step frees for the next step, as `cargo xtask train` does
    dl_tensor::retain_freed_memory();
    // load_mnist(flatten=False)
    let mnist = Mnist::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/mnist"))?;
    let mut network = DeepConvNet::new(DeepConvNetConfig::default(), 0).into_network();
    // Trainer(network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
    //         optimizer='Adam', optimizer_param={'lr': 0.001},
    //         evaluate_sample_num_per_epoch=1000)
    let config = TrainerConfig {
        epochs,
        verbose: true,
        ..TrainerConfig::default()
    };
    Trainer::new(&mut network, &mnist.train, &mnist.test, config)?.train()?;

    network.save_params(out)?;
    println!("Saved Network Parameters!");
    Ok(())
}
