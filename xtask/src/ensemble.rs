//! `cargo xtask ensemble`: combine weights files trained one by one into an ensemble
//! folder that `cargo xtask eval --ensemble DIR` reads.

use std::path::{Path, PathBuf};

use clap::Args;
use dl_data::{Mnist, View};
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
    /// Test-time augmentation, recorded in the manifest: each member also scores these
    /// views of every image (comma-separated `shift:DY:DX`, `rotate:DEGREES`,
    /// `scale:FACTOR`, or `shifts`: the four one-pixel shifts) and averages.
    #[arg(long, value_name = "VIEWS", value_parser = parse_views)]
    tta: Option<Views>,
}

/// The views of `--tta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Views(pub Vec<View>);

/// `--tta`'s value: `none`, `shifts` (one pixel up, down, left and right), or a
/// comma-separated list of views.
pub fn parse_views(s: &str) -> Result<Views, String> {
    match s.trim() {
        "none" => Ok(Views(Vec::new())),
        "shifts" => Ok(Views(
            [(-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)]
                .map(|(dy, dx)| View::Shift { dy, dx })
                .to_vec(),
        )),
        list => {
            let mut views = Vec::new();
            for item in list.split(',') {
                match item.trim() {
                    "shifts" => views.extend(parse_views("shifts")?.0),
                    one => views.push(one.parse()?),
                }
            }
            Ok(Views(views))
        }
    }
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
    let views = a.tta.map(|v| v.0).unwrap_or_default();
    let mut ensemble = Ensemble::new(members)?.with_views(views);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tta_names_views_presets_and_none() {
        let shifts = parse_views("shifts").unwrap().0;
        assert_eq!(
            shifts,
            [(-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)].map(|(dy, dx)| View::Shift { dy, dx })
        );
        assert_eq!(parse_views("none").unwrap().0, []);
        assert_eq!(parse_views(" none ").unwrap().0, []);
        let mixed = parse_views("rotate:6, shifts,scale:1.1").unwrap().0;
        assert_eq!(mixed.len(), 6);
        assert_eq!(mixed[0], View::Rotate { degrees: 6.0 });
        assert_eq!(&mixed[1..5], &shifts[..]);
        assert_eq!(mixed[5], View::Scale { factor: 1.1 });
        assert_eq!(
            parse_views("shift:2:-1").unwrap().0,
            [View::Shift { dy: 2.0, dx: -1.0 }]
        );
        for bad in ["", "shifts,", "rotate", "none,shifts", "scale:0"] {
            assert!(parse_views(bad).is_err(), "{bad:?}");
        }
    }
}
