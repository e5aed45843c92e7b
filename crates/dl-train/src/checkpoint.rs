//! Checkpoints: everything a stopped run needs to go on as if it had never stopped.
//!
//! A checkpoint is one safetensors file: the network's parameters and buffers under
//! their own names (so it loads anywhere a parameter file does: `cargo xtask eval
//! --params`, [`dl_models::load`]), the optimizer's state under
//! [`TRAINING_PREFIX`]`slot/parameter` (with the parameters' moving average, when the run
//! keeps one, in the slot [`dl_optim::AVERAGE_SLOT`]), and a metadata entry [`METADATA_KEY`] holding
//! the format version, the optimizer's step count and the [`TrainerState`] as JSON.
//! Files are written atomically ([`dl_tensor::fs::atomic_write`]): a kill at any moment
//! leaves the previous checkpoints whole and no file under a checkpoint's name that is
//! not complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dl_layers::Tensor;
use dl_models::{Network, TRAINING_PREFIX};
use dl_optim::{Optimizer, OptimizerState, WeightAverage};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::{EpochRecord, TrainError, TrainerConfig};

/// The metadata entry of a checkpoint that holds its [`CheckpointInfo`] as JSON.
pub const METADATA_KEY: &str = "dlfs_checkpoint";

/// The checkpoint format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The Trainer's own state at the end of an epoch: with the network and the optimizer
/// state, all a resumed run needs (batch order, augmentation and dropout draws follow
/// from the seed and the iteration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The settings of the run.
    pub config: TrainerConfig,
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations completed.
    pub iteration: usize,
    /// The base rate the schedule scales (reduce-on-plateau lowers it).
    pub base_lr: f32,
    /// Reduce-on-plateau's best accuracy and epochs without improvement.
    pub plateau: Option<(Option<f64>, usize)>,
    /// The best per-epoch evaluation accuracy so far and its epoch.
    pub best: Option<(f64, usize)>,
    /// Every iteration's loss so far.
    pub train_loss_list: Vec<f32>,
    /// Every epoch's record so far.
    pub epochs: Vec<EpochRecord>,
    /// Wall-clock seconds of training so far.
    pub elapsed_seconds: f64,
}

/// What a checkpoint's metadata entry holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// The optimizer's book name.
    pub optimizer: String,
    /// The optimizer's step count.
    pub optimizer_steps: u64,
    /// The Trainer's state.
    pub trainer: TrainerState,
}

/// A checkpoint read back: its bytes (the network loads from them), the optimizer's
/// state (with the parameters' moving average in the slot [`dl_optim::AVERAGE_SLOT`],
/// when the run keeps one) and the Trainer's.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// The optimizer's state.
    pub optimizer: OptimizerState,
    /// The Trainer's state.
    pub trainer: TrainerState,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The file name of the checkpoint after `epoch` epochs.
pub fn file_name(epoch: usize) -> String {
    format!("checkpoint-{epoch:04}.safetensors")
}

/// The epoch of a checkpoint file name, or `None` for any other name.
fn epoch_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("checkpoint-")?.strip_suffix(".safetensors")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The checkpoint bytes of `network`, `optimizer`, the parameters' moving `average` (if
/// the run keeps one) and `state`.
pub fn to_bytes(
    network: &Network,
    optimizer: &dyn Optimizer,
    average: Option<&WeightAverage>,
    state: &TrainerState,
) -> Vec<u8> {
    let mut opt = optimizer.state();
    if let Some(avg) = average {
        opt.tensors.extend(avg.state().tensors);
    }
    let info = CheckpointInfo {
        format: FORMAT_VERSION,
        optimizer: opt.optimizer.clone(),
        optimizer_steps: opt.steps,
        trainer: state.clone(),
    };
    let meta = BTreeMap::from([(
        METADATA_KEY.to_string(),
        serde_json::to_string(&info).expect("plain data serialises"),
    )]);
    let extra: Vec<(String, &Tensor)> = opt.tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
    network.params_to_bytes_with(&extra, &meta)
}

/// Writes the checkpoint after `state.epoch` epochs ([`to_bytes`]) into `dir` (created if needed),
/// atomically, then removes all but the `keep` newest checkpoints there (`keep` 0
/// keeps all). Returns the file's path.
pub fn write(
    dir: &Path,
    network: &Network,
    optimizer: &dyn Optimizer,
    average: Option<&WeightAverage>,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join(file_name(state.epoch));
    dl_tensor::fs::atomic_write(&path, &to_bytes(network, optimizer, average, state)).map_err(io_error(&path))?;
    if keep > 0 {
        let all = list(dir)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_file(old).map_err(io_error(old))?;
        }
    }
    remove_stale_temporaries(dir)?;
    Ok(path)
}

/// Removes the temporary files of checkpoint writes that a killed process left
/// (`.checkpoint-EEEE.safetensors.tmp-PID`, and `.best.safetensors.tmp-PID` of the
/// best weights, which the same process writes before its checkpoint): never read, they
/// would only fill the disk.
fn remove_stale_temporaries(dir: &Path) -> Result<(), TrainError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let stale = name
            .to_str()
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.split_once(".tmp-"))
            .is_some_and(|(target, _)| epoch_of(target).is_some() || target == crate::BEST_FILE);
        if stale {
            std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
        }
    }
    Ok(())
}

/// The checkpoints in `dir`, oldest first, by epoch.
pub fn list(dir: &Path) -> Result<Vec<(usize, PathBuf)>, TrainError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(epoch) = entry.file_name().to_str().and_then(epoch_of) {
            out.push((epoch, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint in `dir`, or `None` when there is none.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    Ok(list(dir)?.pop().map(|(_, p)| p))
}

/// Reads and checks a checkpoint: a safetensors file with a [`METADATA_KEY`] entry of
/// this [`FORMAT_VERSION`] and float32 training tensors. The network's part is checked
/// when it is loaded ([`crate::Trainer::resume`]).
pub fn read(path: &Path) -> Result<Checkpoint, TrainError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    from_bytes(bytes, path)
}

/// [`read`] from bytes in memory; `path` names the source in errors.
pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Checkpoint, TrainError> {
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, e.to_string()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| {
            bad(
                path,
                format!("no {METADATA_KEY:?} metadata: a parameter file, not a checkpoint"),
            )
        })?;
    let info: CheckpointInfo =
        serde_json::from_str(json).map_err(|e| bad(path, format!("{METADATA_KEY:?} metadata: {e}")))?;
    if info.format != FORMAT_VERSION {
        return Err(bad(
            path,
            format!("format {} (this dlfs reads format {FORMAT_VERSION})", info.format),
        ));
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let Some(key) = name.strip_prefix(TRAINING_PREFIX) else {
            continue;
        };
        if view.dtype() != Dtype::F32 {
            return Err(bad(path, format!("{name}: dtype {:?}, want F32", view.dtype())));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let t = Tensor::from_shape_vec(view.shape().to_vec(), data).map_err(|e| bad(path, format!("{name}: {e}")))?;
        tensors.insert(key.to_string(), t);
    }
    let optimizer = OptimizerState {
        optimizer: info.optimizer,
        steps: info.optimizer_steps,
        tensors,
    };
    Ok(Checkpoint {
        path: path.to_path_buf(),
        bytes,
        optimizer,
        trainer: info.trainer,
    })
}
