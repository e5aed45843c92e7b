//! # dl-train
//!
//! The book's `common/trainer.py` and what grows around it: [`Trainer`] runs
//! mini-batch training of a [`Network`](dl_models::Network) on an
//! [`ImageSet`](dl_data::ImageSet) with any optimizer, evaluates each epoch on a sample
//! (the book's `evaluate_sample_num_per_epoch`), measures the full test set at the end,
//! keeps a [`History`] that can be written as JSON, and reports progress to an
//! [`Observer`] while it runs. [`schedule`] holds the learning-rate decays and
//! [`ensemble`] the chapter's ensembles: several networks trained with different seeds
//! ([`train_ensemble`]) whose softmax outputs are averaged (or which vote), saved as a
//! folder with a checked manifest. [`checkpoint`] holds what a stopped run needs to go
//! on: a [`Trainer`] with a [`CheckpointPolicy`] writes one atomically at the end of
//! every N epochs (network, optimizer state and [`TrainerState`] in one safetensors
//! file), and [`Trainer::resume`] continues from one to the same parameters, bit for
//! bit, as a run that never stopped. [`distributed`] trains one network on many ranks
//! at once (synchronous data parallelism: each rank a slice of every mini-batch, the
//! gradients summed), over threads ([`ThreadGroup`]) or, with the `dl-mpi` crate, over
//! MPI processes and machines.
//!
//! ```no_run
//! use dl_data::Mnist;
//! use dl_models::{DeepConvNet, DeepConvNetConfig};
//! use dl_train::{Trainer, TrainerConfig};
//!
//! let mnist = Mnist::load("datasets/mnist").unwrap();
//! let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 0).into_network();
//! let config = TrainerConfig::default(); // the book's run: 20 epochs, batch 100, Adam 0.001
//! let history = Trainer::new(&mut net, &mnist.train, &mnist.test, config).unwrap().train().unwrap();
//! println!("test accuracy: {:.4}", history.test_accuracy);
//! ```

pub mod checkpoint;
pub mod distributed;
pub mod ensemble;
mod evaluate;
pub mod schedule;
mod trainer;

pub use checkpoint::{Checkpoint, TrainerState};
pub use distributed::{Communicator, Distributed, ThreadGroup};
pub use ensemble::{train_ensemble, Ensemble, EnsembleError, EnsembleEvaluation, EnsembleRun, Manifest, Vote};
pub use evaluate::{evaluate, Evaluation};
pub use schedule::{ReduceOnPlateau, Schedule, Unit};
pub use trainer::{
    CheckpointPolicy, EpochRecord, History, IterationInfo, Observer, TrainError, Trainer, TrainerConfig, BEST_FILE,
};
