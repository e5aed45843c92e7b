//! The ranks of dl-mpi's tests, started by `mpirun` (tests/mpirun.rs). Each scenario
//! prints what the test checks; `train` writes rank 0's parameters to a file.
//!
//! ```text
//! dl-mpi-check collectives
//! dl-mpi-check train OUT ordered|native IMAGES
//! dl-mpi-check bad-file | nan | kill
//! ```

use std::io::Write;
use std::path::Path;

use dl_data::{ImageSet, Mnist};
use dl_models::{DeepConvNet, DeepConvNetConfig, Network};
use dl_mpi::{Mpi, Reduction};
use dl_train::{Communicator, Distributed, IterationInfo, Observer, TrainError, Trainer, TrainerConfig};

fn sets(n: usize) -> (ImageSet, ImageSet) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist");
    let mnist = Mnist::load(dir).expect("the shipped MNIST");
    (mnist.train.take(n), mnist.test.take(100))
}

/// The test's settings: the book's network and run, batches of 50, augmentation.
fn config() -> TrainerConfig {
    TrainerConfig {
        epochs: 1,
        mini_batch_size: 50,
        seed: 7,
        evaluate_sample_num_per_epoch: Some(50),
        augment: Some(dl_data::Pipeline::mnist(false, 7)),
        ..TrainerConfig::default()
    }
}

fn net() -> Network {
    DeepConvNet::new(DeepConvNetConfig::default(), 0).into_network()
}

/// Kills this process (SIGKILL) at iteration 3.
struct KillAt3;
impl Observer for KillAt3 {
    fn on_iteration(&mut self, info: &IterationInfo) {
        if info.iteration == 3 {
            let _ = std::process::Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

/// Ends the job with `err`'s message, as `cargo xtask train --distributed` does.
fn fail(mpi: &Mpi, err: impl std::fmt::Display) -> ! {
    eprintln!("rank {}: error: {err}", mpi.rank());
    let _ = std::io::stderr().flush();
    mpi.abort(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mpi = Mpi::init().expect("MPI");
    let (rank, size) = (mpi.rank(), mpi.size());
    match args.first().map(String::as_str) {
        Some("collectives") => {
            println!("rank {rank} host {}", mpi.processor_name());
            let mut mpi = mpi;
            for reduction in [Reduction::Ordered, Reduction::Native] {
                mpi.set_reduction(reduction);
                let mut b = vec![rank as f32; 3];
                mpi.broadcast(&mut b, size - 1);
                let mut d = [rank as f64 + 0.5];
                mpi.broadcast_f64(&mut d, 0);
                let g = mpi.all_gather_u64(100 + rank as u64);
                // 1e8 + 1 - 1e8 + 2: the order of the additions shows
                let mut s = vec![[1e8f32, 1.0, -1e8, 2.0][rank % 4], rank as f32];
                mpi.all_reduce_sum(&mut s);
                // what the Mpi value says it sums with, and how it shows itself
                println!("rank {rank} {:?} b={b:?} d={d:?} g={g:?} s={s:?}", mpi.reduction());
                println!("{mpi:?}");
            }
        }
        Some("train") => {
            let out = &args[1];
            let reduction: Reduction = args[2].parse().expect("reduction");
            let images: usize = args[3].parse().expect("images");
            let mpi = mpi.with_reduction(reduction);
            let (train, test) = sets(images);
            let mut n = net();
            let h = Trainer::new(&mut n, &train, &test, config())
                .and_then(|t| t.distributed(Distributed::new(&mpi)).train())
                .unwrap_or_else(|e| fail(&mpi, e));
            if rank == 0 {
                let mut bytes = Vec::new();
                n.visit_state_mut(|t| t.iter().for_each(|v| bytes.extend(v.to_le_bytes())));
                std::fs::write(out, bytes).expect("write");
                let steps = h.train_loss_list.len();
                println!("steps {steps} ranks {} test {}", h.ranks, h.test_evaluation.correct);
            }
        }
        Some("bad-file") => {
            // rank 1 is given a file that is not there; the others start training
            let mut n = net();
            if rank == 1 {
                if let Err(e) = n.load_params("/nonexistent/params.safetensors") {
                    fail(&mpi, e);
                }
            }
            let (train, test) = sets(200);
            let r = Trainer::new(&mut n, &train, &test, config())
                .and_then(|t| t.distributed(Distributed::new(&mpi)).train());
            r.unwrap_or_else(|e| fail(&mpi, e));
            println!("rank {rank} finished");
        }
        Some("nan") => {
            let (train, test) = sets(200);
            let mut n = net();
            let cfg = TrainerConfig {
                optimizer: "sgd".into(),
                lr: 1e30,
                ..config()
            };
            match Trainer::new(&mut n, &train, &test, cfg).and_then(|t| t.distributed(Distributed::new(&mpi)).train()) {
                Err(e @ TrainError::Diverged { .. }) => {
                    println!("rank {rank} stopped: {e}");
                }
                other => fail(
                    &mpi,
                    format!("expected a divergence, got {:?}", other.map(|h| h.test_accuracy)),
                ),
            }
        }
        Some("kill") => {
            let (train, test) = sets(400);
            let mut n = net();
            let t = Trainer::new(&mut n, &train, &test, config()).unwrap_or_else(|e| fail(&mpi, e));
            let t = t.distributed(Distributed::new(&mpi));
            let r = if rank == 1 {
                t.train_with(&mut KillAt3)
            } else {
                t.train()
            };
            r.unwrap_or_else(|e| fail(&mpi, e));
            println!("rank {rank} finished");
        }
        other => {
            eprintln!("unknown scenario {other:?}");
            mpi.abort(2);
        }
    }
}
