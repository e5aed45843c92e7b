use std::path::PathBuf;

use clap::Args;
use dl_data::Mnist;
use dl_train::ensemble::MemberEntry;
use dl_train::{evaluate, Ensemble, EnsembleError, Vote};

use crate::train::{ModelName, VoteArg};
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
    /// Evaluate an ensemble folder (with ensemble.json) instead; without DIR, the shipped
    /// ensemble.
    #[arg(long, value_name = "DIR", num_args = 0..=1, conflicts_with_all = ["params", "model"])]
    ensemble: Option<Option<PathBuf>>,
    /// For an ensemble: combine by this rule instead of the manifest's.
    #[arg(long, value_enum, requires = "ensemble")]
    vote: Option<VoteArg>,
}

/// Builds the network a manifest entry names.
pub fn build_member(entry: &MemberEntry) -> Result<dl_models::Network, EnsembleError> {
    let model = ModelName::from_kind(&entry.model).ok_or_else(|| EnsembleError::Manifest {
        path: PathBuf::from(&entry.file),
        message: format!(
            "model {:?} is not one this command builds (DeepConvNet, SimpleConvNet)",
            entry.model
        ),
    })?;
    Ok(model.build(0))
}

fn run_ensemble(dir: PathBuf, vote: Option<VoteArg>, data: Option<PathBuf>, batch: usize) -> Result<(), CliError> {
    let mnist = Mnist::load(data.unwrap_or_else(crate::default_data_dir))?;
    let (mut ensemble, manifest) = Ensemble::load(&dir, build_member)?;
    let vote = vote.map_or(manifest.vote, Vote::from);
    let start = std::time::Instant::now();
    let ev = ensemble.evaluate(&mnist.test, None, batch)?;
    for (i, (e, entry)) in ev.members.iter().zip(&manifest.members).enumerate() {
        let seed = entry.seed.map_or(String::new(), |s| format!(", seed {s}"));
        println!("member {i} ({}{seed}): {e}", entry.model);
    }
    println!("mean of softmax: {}", ev.mean);
    println!("majority vote:   {}", ev.majority);
    println!(
        "{}: {} members on {} test images in {:.2} s",
        dir.display(),
        ensemble.len(),
        ev.mean.total,
        start.elapsed().as_secs_f64()
    );
    println!("test accuracy: {}", ev.by(vote));
    Ok(())
}

pub fn run(a: EvalArgs) -> Result<(), CliError> {
    if let Some(dir) = a.ensemble {
        return run_ensemble(
            dir.unwrap_or_else(crate::shipped_ensemble),
            a.vote,
            a.data,
            a.batch_size,
        );
    }
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
