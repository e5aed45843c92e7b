use std::path::PathBuf;

use clap::Args;
use dl_train::{evaluate, Ensemble, Vote};

use crate::train::{ModelName, VoteArg};
use crate::CliError;

#[derive(Args)]
pub struct EvalArgs {
    /// A safetensors file with the network's parameters (default: the shipped weights),
    /// or the book's own pickle (`deep_convnet_params.pkl`, read without running it).
    #[arg(long)]
    params: Option<PathBuf>,
    /// The data set whose test images are scored: mnist (or any set in its format, with
    /// --data), or optdigits (all 1,797 of UCI's optical digits: how well a network
    /// trained on MNIST carries over, before any fine-tuning).
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: crate::Dataset,
    /// Folder with the data set's files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Images per evaluation batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Evaluate an ensemble folder (with ensemble.json) instead; without DIR, the shipped
    /// ensemble.
    #[arg(long, value_name = "DIR", num_args = 0..=1, conflicts_with_all = ["params"])]
    ensemble: Option<Option<PathBuf>>,
    /// For an ensemble: combine by this rule instead of the manifest's.
    #[arg(long, value_enum, requires = "ensemble")]
    vote: Option<VoteArg>,
}

/// The images `eval` scores: the test set, or all of a set that has none.
fn eval_set(dataset: crate::Dataset, data: Option<&std::path::Path>) -> Result<dl_data::ImageSet, CliError> {
    let set = dataset.load(data)?;
    Ok(match dataset {
        crate::Dataset::Mnist => set.test,
        crate::Dataset::Optdigits => set.train,
    })
}

fn run_ensemble(dir: PathBuf, vote: Option<VoteArg>, test: &dl_data::ImageSet, batch: usize) -> Result<(), CliError> {
    let (mut ensemble, manifest) = Ensemble::load(&dir)?;
    let vote = vote.map_or(manifest.vote, Vote::from);
    let start = std::time::Instant::now();
    let ev = ensemble.evaluate(test, None, batch)?;
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
    let test = eval_set(a.dataset, a.data.as_deref())?;
    if let Some(dir) = a.ensemble {
        return run_ensemble(dir.unwrap_or_else(crate::shipped_ensemble), a.vote, &test, a.batch_size);
    }
    let params = a.params.unwrap_or_else(crate::shipped_params);
    // the model is rebuilt from the file's metadata (the book's pickle: DeepConvNet)
    let mut net = dl_models::load(&params)?;
    let start = std::time::Instant::now();
    let e = evaluate(&mut net, &test, None, a.batch_size)?;
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
    use dl_data::Mnist;

    #[test]
    fn the_shipped_ensemble_reaches_the_documented_accuracy() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let (mut e, manifest) = Ensemble::load(crate::shipped_ensemble()).unwrap();
        assert_eq!(e.len(), 5);
        let ev = e.evaluate(&mnist.test, None, 500).unwrap();
        assert_eq!(Some(ev.by(manifest.vote)), manifest.test_evaluation);
        assert!(ev.mean.accuracy() >= 0.997, "shipped ensemble: {}", ev.mean);
        for (got, entry) in ev.members.iter().zip(&manifest.members) {
            assert_eq!(Some(*got), entry.test_evaluation);
        }
    }

    #[test]
    fn the_shipped_weights_reach_the_documented_accuracy() {
        let mnist = Mnist::load(crate::default_data_dir()).unwrap();
        let mut net = dl_models::load(crate::shipped_params()).unwrap();
        assert_eq!(net.kind(), "DeepConvNet");
        let e = evaluate(&mut net, &mnist.test, None, 500).unwrap();
        assert_eq!(e.total, 10_000);
        assert_eq!(e.correct, 9943, "shipped weights: {e}");
    }
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The book's pickle (`deep_convnet_params.pkl`); read without running any of it.
    pkl: PathBuf,
    /// The safetensors file to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// The network the parameters belong to.
    #[arg(long, value_enum, default_value = "deep")]
    model: ModelName,
}

/// `cargo xtask convert-book`: the book's pickled parameters as safetensors.
pub fn convert(a: ConvertArgs) -> Result<(), CliError> {
    let mut net = a.model.build(0);
    net.load_book_params(&a.pkl)?;
    net.save_params(&a.out)?;
    println!(
        "wrote {} ({} parameters of {} from {})",
        a.out.display(),
        net.param_count(),
        net.kind(),
        a.pkl.display()
    );
    Ok(())
}
