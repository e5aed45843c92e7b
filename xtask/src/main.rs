//! `cargo xtask`: the command line of dlfs. `cargo xtask --help` lists the commands.

mod bench;
mod download;
mod eval;
mod preview;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The workspace root (xtask lives one folder below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent folder")
        .to_path_buf()
}

/// The MNIST copy shipped in the repository.
pub fn default_data_dir() -> PathBuf {
    root().join("datasets").join("mnist")
}

/// The trained DeepConvNet weights shipped in the repository.
pub fn shipped_params() -> PathBuf {
    root().join("crates/dl-models/weights/deep_convnet.safetensors")
}

#[derive(Parser)]
#[command(name = "cargo xtask", about = "dlfs: deep learning from scratch, in Rust", version)]
struct Cli {
    /// Rayon worker threads (default: RAYON_NUM_THREADS, else every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network on MNIST (defaults: the book's chapter 8 run).
    Train(train::TrainArgs),
    /// Full test accuracy of saved weights (default: the shipped DeepConvNet).
    Eval(eval::EvalArgs),
    /// Fetch and verify MNIST, Fashion-MNIST or KMNIST.
    Download(download::DownloadArgs),
    /// Write a PNG grid of original and augmented digits.
    AugmentPreview(preview::PreviewArgs),
    /// Throughput, per-layer times and peak memory (table, and JSON with --json).
    Bench(bench::BenchArgs),
}

/// Errors of the command line, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Data(#[from] dl_data::DataError),
    #[error(transparent)]
    Model(#[from] dl_models::ModelError),
    #[error(transparent)]
    Train(#[from] dl_train::TrainError),
    #[error(transparent)]
    Layer(#[from] dl_layers::LayerError),
    #[error("{0}")]
    Other(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("error: cannot set up {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Download(a) => download::run(a),
        Command::AugmentPreview(a) => preview::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
