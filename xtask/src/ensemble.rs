//! `cargo xtask ensemble`: combine weights files trained one by one into an ensemble
//! folder that `cargo xtask eval --ensemble DIR` reads.

use std::path::{Path, PathBuf};

use clap::Args;
use dl_data::Mnist;
use dl_train::Ensemble;

use crate::train::VoteArg;
use crate::CliError;

#[derive(Args)]
pub struct EnsembleArgs {
    /// The members' weights files (safetensors, of any model, or the book's pickle). A
    /// history.json beside a file (as `cargo xtask train` writes) supplies the member's
    /// seed for the manifest.
    #[arg(required = true, value_name = "PARAMS")]
    params: Vec<PathBuf>,
    /// The rule the manifest records (and the final line uses).
    #[arg(long, value_enum, default_value = "mean")]
    vote: VoteArg,
    /// Folder to write the members and ensemble.json into.
    #[arg(long)]
    out: PathBuf,
    /// Folder with the MNIST files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// How the members were made, for the manifest (default: this command line).
    #[arg(long)]
    description: Option<String>,
}

/// The seed in the `history.json` beside `params`, if there is one.
fn seed_beside(params: &Path) -> Option<u64> {
    let hist = params.parent()?.join("history.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(hist).ok()?).ok()?;
    v.get("config")?.get("seed")?.as_u64()
}

pub fn run(a: EnsembleArgs) -> Result<(), CliError> {
    let mnist = Mnist::load(a.data.unwrap_or_else(crate::default_data_dir))?;
    let mut members = Vec::with_capacity(a.params.len());
    let mut seeds = Vec::with_capacity(a.params.len());
    for p in &a.params {
        // each member is rebuilt from its file: an ensemble may mix models
        members.push(dl_models::load(p)?);
        seeds.push(seed_beside(p));
    }
    let seeds: Option<Vec<u64>> = seeds.into_iter().collect();
    let mut ensemble = Ensemble::new(members)?;
    let ev = ensemble.evaluate(&mnist.test, None, 100)?;
    let description = a.description.unwrap_or_else(|| crate::command_line("ensemble"));
    let vote = a.vote.into();
    ensemble.save(&a.out, vote, seeds.as_deref(), Some(&ev), &description)?;
    for (p, e) in a.params.iter().zip(&ev.members) {
        println!("{}: {e}", p.display());
    }
    println!("mean of softmax: {}", ev.mean);
    println!("majority vote:   {}", ev.majority);
    println!("wrote {}", a.out.join(dl_train::ensemble::MANIFEST_FILE).display());
    println!("test accuracy: {}", ev.by(vote));
    Ok(())
}
