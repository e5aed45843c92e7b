//! Ensembles (chapter 8, "ensemble learning"): several networks trained apart whose
//! outputs are combined, by averaging their softmax outputs or by majority vote.
//!
//! [`train_ensemble`] trains `K` members that differ by seed (member `i` uses the run's
//! seed + `i` for weights, dropout, batch order and augmentation; the model may differ per
//! member too), one after another or several at once on their own share of the threads:
//! training is thread-count independent, so both ways give the same members.
//! [`Ensemble::save`] writes one folder of member weights plus `ensemble.json`, a small
//! [`Manifest`] with each file's SHA-256, and [`Ensemble::load`] checks all of it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use dl_data::{ImageSet, View};
use dl_layers::Tensor;
use dl_models::{ModelError, Network};
use ndarray::{Array2, Ix2};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Evaluation, History, Observer, TrainError, Trainer, TrainerConfig};

/// The manifest's file name inside an ensemble folder.
pub const MANIFEST_FILE: &str = "ensemble.json";
/// The manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "dlfs-ensemble";
/// The newest manifest version this code writes and reads: 2 records test-time views,
/// which a version-1 reader would drop unseen, so a manifest without views is still
/// written as version 1.
pub const MANIFEST_VERSION: u32 = 2;

/// How the members' outputs become one prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vote {
    /// Average the members' softmax outputs, then take the largest (the usual choice).
    #[default]
    Mean,
    /// Each member votes for its top class; the most votes win, ties go to the class with
    /// the larger mean softmax output.
    Majority,
}

/// What can go wrong with an ensemble.
#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    /// An ensemble needs at least one member.
    #[error("an ensemble needs at least one member")]
    Empty,
    /// Members disagree on the number of classes.
    #[error("member {member} gives {found} classes, member 0 gives {expected}")]
    Classes {
        /// The member.
        member: usize,
        /// Classes of member 0.
        expected: usize,
        /// Classes of this member.
        found: usize,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The manifest is not what this version reads.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A member's file is not the one the manifest recorded.
    #[error("{path}: SHA-256 {found} does not match the manifest's {expected}")]
    Checksum {
        /// The member file.
        path: PathBuf,
        /// The manifest's hash.
        expected: String,
        /// The file's hash.
        found: String,
    },
    /// A member's network failed (wrong weights, wrong input).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A thread pool for parallel members could not be built.
    #[error("could not start a thread pool: {0}")]
    ThreadPool(String),
    /// Training a member failed.
    #[error("member {member}: {source}")]
    Train {
        /// The member.
        member: usize,
        /// The error.
        source: TrainError,
    },
}

/// One member in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The weights file, relative to the ensemble folder.
    pub file: String,
    /// The model kind ([`Network::kind`]), e.g. `"DeepConvNet"`.
    pub model: String,
    /// The seed the member was trained with, when known.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// The member's own test accuracy, when measured.
    #[serde(default)]
    pub test_evaluation: Option<Evaluation>,
}

/// `ensemble.json`: what a saved ensemble holds and how to combine it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// 1, or 2 ([`MANIFEST_VERSION`]) when it records `views`.
    pub version: u32,
    /// The combination rule the figures below were measured with.
    pub vote: Vote,
    /// The members, in order.
    pub members: Vec<MemberEntry>,
    /// The ensemble's test accuracy with `vote` (and `views`), when measured.
    #[serde(default)]
    pub test_evaluation: Option<Evaluation>,
    /// Test-time augmentation: the views of each image scored beside the image itself
    /// ([`Ensemble::with_views`]); none when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<View>,
    /// Free text: how the ensemble was made (a command line, a note).
    #[serde(default)]
    pub description: String,
}

/// The accuracies of an ensemble and of each of its members on one set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsembleEvaluation {
    /// Each member alone.
    pub members: Vec<Evaluation>,
    /// Averaged softmax outputs.
    pub mean: Evaluation,
    /// Majority vote.
    pub majority: Evaluation,
}

impl EnsembleEvaluation {
    /// The figure for `vote`.
    pub fn by(&self, vote: Vote) -> Evaluation {
        match vote {
            Vote::Mean => self.mean,
            Vote::Majority => self.majority,
        }
    }
}

/// Networks whose predictions are combined.
#[derive(Debug, Clone)]
pub struct Ensemble {
    members: Vec<Network>,
    /// Test-time augmentation: each member scores the image and these views of it.
    views: Vec<View>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnsembleError + '_ {
    move |source| EnsembleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Each of `views` of the batch `x`: what every member scores beside `x` itself.
fn viewed_batches(x: &Tensor, views: &[View]) -> Result<Vec<Tensor>, EnsembleError> {
    let mut batches = Vec::with_capacity(views.len());
    if views.is_empty() {
        return Ok(batches);
    }
    let &[_, _, h, w] = x.shape() else {
        return Err(ModelError::Input(format!("test-time views need (N, C, H, W) images, got {:?}", x.shape())).into());
    };
    for v in views {
        let mut b = x.as_standard_layout().into_owned();
        v.apply_planes(b.as_slice_mut().expect("standard layout"), h, w);
        batches.push(b);
    }
    Ok(batches)
}

/// Every member's scores for one batch, as `(N, classes)` softmax outputs: with
/// `views`, the mean of its softmax outputs on the image and on each view.
fn member_probabilities(
    members: &mut [Network],
    views: &[View],
    x: &Tensor,
) -> Result<Vec<Array2<f32>>, EnsembleError> {
    let viewed = viewed_batches(x, views)?;
    let mut out: Vec<Array2<f32>> = Vec::with_capacity(members.len());
    for (m, net) in members.iter_mut().enumerate() {
        let mut scored = Vec::with_capacity(1 + viewed.len());
        for b in std::iter::once(x).chain(&viewed) {
            let y = net
                .predict(b.clone(), false)?
                .into_dimensionality::<Ix2>()
                .map_err(|_| ModelError::Input("the network's output is not (N, classes)".into()))?;
            scored.push(dl_tensor::softmax(&y.view()));
        }
        let p = mean_of(&scored);
        if let Some(first) = out.first() {
            if first.ncols() != p.ncols() {
                return Err(EnsembleError::Classes {
                    member: m,
                    expected: first.ncols(),
                    found: p.ncols(),
                });
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// The top class of every row.
fn argmax(p: &Array2<f32>) -> Vec<usize> {
    dl_tensor::argmax_rows(&p.view()).to_vec()
}

/// The classes the members' softmax outputs `probs` (one `(N, classes)` array per
/// member, at least one) give together by `vote`: what [`Ensemble::classify`] does with
/// its own members' outputs, for outputs computed elsewhere (another precision, another
/// engine).
///
/// # Panics
/// If `probs` is empty or the arrays differ in shape.
pub fn combine(probs: &[Array2<f32>], vote: Vote) -> Vec<usize> {
    let mean = mean_proba(probs);
    match vote {
        Vote::Mean => argmax(&mean),
        Vote::Majority => majority_of(probs, &mean),
    }
}

/// The mean of the members' softmax outputs `probs` (one `(N, classes)` array per
/// member, at least one): what [`Ensemble::predict_proba`] gives from its members'
/// [`Ensemble::member_proba`], bit for bit.
///
/// # Panics
/// If `probs` is empty or the arrays differ in shape.
pub fn mean_proba(probs: &[Array2<f32>]) -> Array2<f32> {
    assert!(!probs.is_empty(), "mean_proba: no members");
    assert!(
        probs.iter().all(|p| p.dim() == probs[0].dim()),
        "mean_proba: the members' outputs differ in shape"
    );
    mean_of(probs)
}

/// Mean of the members' probabilities.
fn mean_of(probs: &[Array2<f32>]) -> Array2<f32> {
    let mut mean = probs[0].clone();
    for p in &probs[1..] {
        mean += p;
    }
    mean / probs.len() as f32
}

/// Majority vote per row; ties go to the larger mean probability.
fn majority_of(probs: &[Array2<f32>], mean: &Array2<f32>) -> Vec<usize> {
    let tops: Vec<Vec<usize>> = probs.iter().map(argmax).collect();
    (0..mean.nrows())
        .map(|r| {
            let mut votes = vec![0usize; mean.ncols()];
            for t in &tops {
                votes[t[r]] += 1;
            }
            let most = votes.iter().copied().max().unwrap_or(0);
            (0..mean.ncols())
                .filter(|&c| votes[c] == most)
                .fold(None, |best: Option<usize>, c| match best {
                    Some(b) if mean[[r, b]] >= mean[[r, c]] => Some(b),
                    _ => Some(c),
                })
                .unwrap_or(0)
        })
        .collect()
}

impl Ensemble {
    /// An ensemble of `members` (at least one).
    pub fn new(members: Vec<Network>) -> Result<Self, EnsembleError> {
        if members.is_empty() {
            return Err(EnsembleError::Empty);
        }
        Ok(Self {
            members,
            views: Vec::new(),
        })
    }

    /// The ensemble with test-time augmentation: every member scores each image and
    /// each of `views` of it (which need `(N, C, H, W)` images), and its softmax outputs
    /// are averaged over them before the members are combined. An empty list turns it
    /// off. [`Ensemble::save`] records the views and [`Ensemble::load`] restores them.
    pub fn with_views(mut self, views: Vec<View>) -> Self {
        self.views = views;
        self
    }

    /// The test-time views (empty: none).
    pub fn views(&self) -> &[View] {
        &self.views
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: an ensemble has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members.
    pub fn members(&self) -> &[Network] {
        &self.members
    }

    /// The members, mutably (to fine-tune one, say).
    pub fn members_mut(&mut self) -> &mut [Network] {
        &mut self.members
    }

    /// The members, by value.
    pub fn into_members(self) -> Vec<Network> {
        self.members
    }

    /// The averaged softmax outputs `(N, classes)` for `x`, in evaluation mode,
    /// `batch_size` images at a time: [`mean_proba`] of [`Ensemble::member_proba`].
    pub fn predict_proba(&mut self, x: &Tensor, batch_size: usize) -> Result<Array2<f32>, EnsembleError> {
        Ok(mean_of(&self.member_proba(x, batch_size)?))
    }

    /// Every member's softmax outputs `(N, classes)` for `x` (each averaged over the
    /// test-time views), in evaluation mode, `batch_size` images at a time: the arrays
    /// [`Ensemble::predict_proba`] averages, one per member in order, so that a caller
    /// can see which members read an image as the whole does.
    pub fn member_proba(&mut self, x: &Tensor, batch_size: usize) -> Result<Vec<Array2<f32>>, EnsembleError> {
        let mut rows: Vec<Vec<Array2<f32>>> = vec![Vec::new(); self.members.len()];
        for chunk in x.axis_chunks_iter(ndarray::Axis(0), batch_size.max(1)) {
            let probs = member_probabilities(&mut self.members, &self.views, &chunk.to_owned())?;
            for (member, p) in rows.iter_mut().zip(probs) {
                member.push(p);
            }
        }
        Ok(rows
            .iter()
            .map(|chunks| {
                let views: Vec<_> = chunks.iter().map(|r| r.view()).collect();
                if views.is_empty() {
                    return Array2::zeros((0, 0));
                }
                ndarray::concatenate(ndarray::Axis(0), &views).expect("same number of classes")
            })
            .collect())
    }

    /// Class predictions for `x` combined by `vote`.
    pub fn classify(&mut self, x: &Tensor, batch_size: usize, vote: Vote) -> Result<Vec<usize>, EnsembleError> {
        let mut out = Vec::new();
        for chunk in x.axis_chunks_iter(ndarray::Axis(0), batch_size.max(1)) {
            let probs = member_probabilities(&mut self.members, &self.views, &chunk.to_owned())?;
            out.extend(combine(&probs, vote));
        }
        Ok(out)
    }

    /// Accuracy of every member and of both combinations on the first `limit` images of
    /// `set` (all when `None`), in one pass over the data.
    pub fn evaluate(
        &mut self,
        set: &ImageSet,
        limit: Option<usize>,
        batch_size: usize,
    ) -> Result<EnsembleEvaluation, EnsembleError> {
        let total = limit.map_or(set.len(), |l| l.min(set.len()));
        let bs = batch_size.max(1);
        let mut member_correct = vec![0usize; self.members.len()];
        let (mut mean_correct, mut majority_correct) = (0usize, 0usize);
        let (mut x, mut t) = (Vec::new(), Vec::new());
        for start in (0..total).step_by(bs) {
            let idx: Vec<usize> = (start..(start + bs).min(total)).collect();
            set.fill_batch(&idx, &mut x, &mut t);
            let xb = Tensor::from_shape_vec(set.batch_shape(idx.len()), std::mem::take(&mut x)).expect("batch shape");
            let probs = member_probabilities(&mut self.members, &self.views, &xb)?;
            let right = |pred: &[usize]| pred.iter().zip(&t).filter(|(p, t)| p == t).count();
            for (c, p) in member_correct.iter_mut().zip(&probs) {
                *c += right(&argmax(p));
            }
            let mean = mean_of(&probs);
            mean_correct += right(&argmax(&mean));
            majority_correct += right(&majority_of(&probs, &mean));
            x = xb.into_raw_vec_and_offset().0;
        }
        let ev = |correct| Evaluation { correct, total };
        Ok(EnsembleEvaluation {
            members: member_correct.into_iter().map(ev).collect(),
            mean: ev(mean_correct),
            majority: ev(majority_correct),
        })
    }

    /// Writes `member-{i}.safetensors` for every member and then `ensemble.json` into
    /// `dir` (created if needed), each file atomically; the manifest is written last, so
    /// a folder with a manifest always has every file it names. `seeds`, `evaluation`
    /// (measured with `vote`) and `description` go into the manifest.
    pub fn save(
        &self,
        dir: impl AsRef<Path>,
        vote: Vote,
        seeds: Option<&[u64]>,
        evaluation: Option<&EnsembleEvaluation>,
        description: &str,
    ) -> Result<Manifest, EnsembleError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut members = Vec::with_capacity(self.members.len());
        for (i, net) in self.members.iter().enumerate() {
            let file = format!("member-{i}.safetensors");
            let path = dir.join(&file);
            let bytes = net.params_to_bytes();
            dl_tensor::fs::atomic_write(&path, &bytes).map_err(io_err(&path))?;
            members.push(MemberEntry {
                file,
                model: net.kind().to_string(),
                seed: seeds.and_then(|s| s.get(i).copied()),
                sha256: sha256_hex(&bytes),
                test_evaluation: evaluation.and_then(|e| e.members.get(i).copied()),
            });
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: if self.views.is_empty() { 1 } else { MANIFEST_VERSION },
            vote,
            members,
            test_evaluation: evaluation.map(|e| e.by(vote)),
            views: self.views.clone(),
            description: description.into(),
        };
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        dl_tensor::fs::atomic_write(&path, &json).map_err(io_err(&path))?;
        Ok(manifest)
    }

    /// Reads the manifest of the ensemble in `dir`.
    pub fn read_manifest(dir: impl AsRef<Path>) -> Result<Manifest, EnsembleError> {
        let path = dir.as_ref().join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        Self::parse_manifest(&bytes, &path)
    }

    /// [`Ensemble::read_manifest`] from bytes in memory: the JSON, its format and
    /// version, at least one member, and member files that are plain names inside the
    /// folder. `path` names the source in errors.
    pub fn parse_manifest(bytes: &[u8], path: &Path) -> Result<Manifest, EnsembleError> {
        let bad = |message: String| EnsembleError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a valid manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(bad(format!("format is {:?}, expected {MANIFEST_FORMAT:?}", m.format)));
        }
        if !(1..=MANIFEST_VERSION).contains(&m.version) {
            return Err(bad(format!(
                "version {} is not supported (this build reads 1 to {MANIFEST_VERSION})",
                m.version
            )));
        }
        if m.version < 2 && !m.views.is_empty() {
            return Err(bad("test-time views need version 2".into()));
        }
        if m.members.is_empty() {
            return Err(bad("lists no members".into()));
        }
        for e in &m.members {
            let p = Path::new(&e.file);
            if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(bad(format!(
                    "member file {:?} is not a plain name inside the folder",
                    e.file
                )));
            }
        }
        Ok(m)
    }

    /// Loads the ensemble in `dir`: reads the manifest, checks every member file's
    /// SHA-256, rebuilds each member from its file (the model kind and configuration in
    /// its metadata, [`dl_models::registry`]; members may be of different kinds) and
    /// loads its weights. Nothing is returned unless every member loaded.
    pub fn load(dir: impl AsRef<Path>) -> Result<(Self, Manifest), EnsembleError> {
        let dir = dir.as_ref();
        let manifest = Self::read_manifest(dir)?;
        let mut members = Vec::with_capacity(manifest.members.len());
        for entry in &manifest.members {
            let path = dir.join(&entry.file);
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let found = sha256_hex(&bytes);
            if !found.eq_ignore_ascii_case(&entry.sha256) {
                return Err(EnsembleError::Checksum {
                    path,
                    expected: entry.sha256.clone(),
                    found,
                });
            }
            let net = dl_models::registry::load_from_bytes(&bytes, &path)?;
            if net.kind() != entry.model {
                return Err(EnsembleError::Manifest {
                    path,
                    message: format!("the manifest says {:?}, the file holds a {}", entry.model, net.kind()),
                });
            }
            members.push(net);
        }
        let ensemble = Self::new(members)?.with_views(manifest.views.clone());
        Ok((ensemble, manifest))
    }
}

/// The settings of member `i` of an ensemble trained with `config`: the seed, and the
/// augmentation pipeline's seed, moved on by `i`. Training a single network with this
/// configuration gives exactly member `i`.
pub fn member_config(config: &TrainerConfig, i: usize) -> TrainerConfig {
    let mut c = config.clone();
    c.seed = config.seed.wrapping_add(i as u64);
    if let Some(p) = c.augment.as_mut() {
        p.seed = p.seed.wrapping_add(i as u64);
    }
    c
}

/// The threads each of `parallel` members training at once gets: an equal share of the
/// current rayon pool's threads, at least one.
pub fn threads_per_member(parallel: usize) -> usize {
    (rayon::current_num_threads() / parallel.max(1)).max(1)
}

/// An ensemble fresh from [`train_ensemble`].
#[derive(Debug)]
pub struct EnsembleRun {
    /// The trained members.
    pub ensemble: Ensemble,
    /// Each member's training history.
    pub histories: Vec<History>,
    /// The seed of each member.
    pub seeds: Vec<u64>,
}

/// Trains `members` networks for an ensemble. Member `i` is `build(i, seed_i)` trained
/// with [`member_config`]`(config, i)`, whose seed is `seed_i`. `parallel` members train
/// at once, each on an equal share of the current rayon pool's threads (at least one);
/// the members are the same whatever `parallel` is. `observer(i)` reports member `i`'s
/// progress.
pub fn train_ensemble<O: Observer + Send>(
    build: impl Fn(usize, u64) -> Network + Sync,
    train: &ImageSet,
    test: &ImageSet,
    config: &TrainerConfig,
    members: usize,
    parallel: usize,
    observer: impl Fn(usize) -> O + Sync,
) -> Result<EnsembleRun, EnsembleError> {
    if members == 0 {
        return Err(EnsembleError::Empty);
    }
    let parallel = parallel.clamp(1, members);
    let one = |i: usize| -> Result<(Network, History), EnsembleError> {
        let cfg = member_config(config, i);
        let mut net = build(i, cfg.seed);
        let mut obs = observer(i);
        let history = Trainer::new(&mut net, train, test, cfg)
            .and_then(|t| t.train_with(&mut obs))
            .map_err(|source| EnsembleError::Train { member: i, source })?;
        Ok((net, history))
    };
    let mut results: Vec<Option<(Network, History)>> = (0..members).map(|_| None).collect();
    if parallel == 1 {
        for (i, slot) in results.iter_mut().enumerate() {
            *slot = Some(one(i)?);
        }
    } else {
        let threads = threads_per_member(parallel);
        let next = AtomicUsize::new(0);
        let done = Mutex::new(&mut results);
        let first_error: Mutex<Option<EnsembleError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..parallel {
                s.spawn(|| {
                    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
                        Ok(p) => p,
                        Err(e) => {
                            let err = EnsembleError::ThreadPool(e.to_string());
                            first_error.lock().expect("no panics while locked").get_or_insert(err);
                            return;
                        }
                    };
                    loop {
                        if first_error.lock().expect("no panics while locked").is_some() {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= members {
                            return;
                        }
                        match pool.install(|| one(i)) {
                            Ok(r) => done.lock().expect("no panics while locked")[i] = Some(r),
                            Err(e) => {
                                first_error.lock().expect("no panics while locked").get_or_insert(e);
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().expect("no panics while locked") {
            return Err(e);
        }
    }
    let (nets, histories): (Vec<Network>, Vec<History>) =
        results.into_iter().map(|r| r.expect("every member trained")).unzip();
    Ok(EnsembleRun {
        ensemble: Ensemble::new(nets)?,
        histories,
        seeds: (0..members).map(|i| config.seed.wrapping_add(i as u64)).collect(),
    })
}
