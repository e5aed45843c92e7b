use std::path::PathBuf;

use clap::Args;
use dl_data::Mnist;
use dl_train::evaluate;

use crate::train::ModelName;
use crate::CliError;

#[derive(Args)]
pub struct EvalArgs {
    /// A safetensors file with the network's parameters (default: the shipped weights).
    #[arg(long)]
    params: Option<PathBuf>,
    /// The network the parameters belong to.
    #[arg(long, value_enum, default_value = "deep")]
    model: ModelName,
    /// Folder with the MNIST files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Images per evaluation batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
}

pub fn run(a: EvalArgs) -> Result<(), CliError> {
    let params = a.params.unwrap_or_else(crate::shipped_params);
    let mnist = Mnist::load(a.data.unwrap_or_else(crate::default_data_dir))?;
    let mut net = a.model.build(0);
    net.load_params(&params)?;
    let start = std::time::Instant::now();
    let e = evaluate(&mut net, &mnist.test, None, a.batch_size)?;
    println!(
        "{}: {} on {} test images in {:.2} s",
        params.display(),
        net.kind(),
        e.total,
        start.elapsed().as_secs_f64()
    );
    println!("test accuracy: {e}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_weights_reach_the_documented_accuracy() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let mut net = ModelName::Deep.build(0);
        net.load_params(crate::shipped_params()).unwrap();
        let e = evaluate(&mut net, &mnist.test, None, 500).unwrap();
        assert_eq!(e.total, 10_000);
        assert!(e.accuracy() >= 0.9929, "shipped weights: {e}");
    }
}
