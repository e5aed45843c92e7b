use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dl_layers::{Bf16Kernel, ConvAlgo, Deskew, Labels, Layer, LayerError, Sequential, SoftmaxWithLoss, Tensor};
use dl_tensor::lowp::Precision;
use dl_tensor::{argmax_rows, on_pool, ParamMut};
use ndarray::{Axis, Ix2};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use crate::ModelError;

/// A network: one root layer (a [`Sequential`], whose children may be blocks of any
/// depth), then the book's `last_layer`, a [`SoftmaxWithLoss`].
///
/// Parameters and buffers are named by their path in the root (`layer1.0.conv1.W`,
/// `features.1.running_mean`), from one traversal, so names are unique by construction.
/// A model may rename them with an explicit table: the book's networks keep the book's
/// `W1` ... `b8` (and `gamma1`, `running_mean1` for batch norm) that way, so their files
/// and the book's pickle load unchanged.
#[derive(Clone)]
pub struct Network {
    kind: String,
    root: Sequential,
    last_layer: SoftmaxWithLoss,
    /// Path in the root -> public name, for the parameters and buffers a model renames.
    renames: HashMap<String, String>,
    /// The model's configuration and settings saved with it; `"input": "deskew"` makes
    /// the network deskew its images ([`Network::set_deskew`]).
    metadata: BTreeMap<String, String>,
    /// Copies of `root` that evaluate a batch's other shares in parallel
    /// ([`Network::predict`]), made when first needed, without the training step's
    /// activations ([`Sequential::inference_copy`]). Every `&mut self` method that
    /// could change a parameter, a buffer or a layer's setting drops them.
    replicas: Replicas,
}

/// The evaluation replicas of a network's root: not copied with the network (a copy
/// makes its own when it needs them).
#[derive(Default)]
struct Replicas(Vec<Sequential>);

impl Clone for Replicas {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("kind", &self.kind)
            .field("root", &self.root)
            .finish()
    }
}

/// The prefix of the tensors in a parameter file that belong to training rather than to
/// the network (a checkpoint's optimizer state, [`Network::params_to_bytes_with`]); the
/// loaders skip them.
pub const TRAINING_PREFIX: &str = "training/";

/// The bytes of the file at `path`.
fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The values of a float32 little-endian tensor.
/// The values of a stored tensor, widened to `f32`: float32, float16 or bfloat16; any
/// other dtype is an error naming the tensor.
fn f32_values(view: &TensorView<'_>, path: &Path, name: &str) -> Result<Vec<f32>, ModelError> {
    let precision = match view.dtype() {
        Dtype::F32 => Precision::F32,
        Dtype::F16 => Precision::F16,
        Dtype::BF16 => Precision::Bf16,
        other => {
            return Err(ModelError::DType {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok(precision.from_le_bytes(view.data()))
}

/// safetensors' dtype of a precision.
fn dtype(precision: Precision) -> Dtype {
    match precision {
        Precision::F32 => Dtype::F32,
        Precision::F16 => Dtype::F16,
        Precision::Bf16 => Dtype::BF16,
    }
}

/// What [`Network::load_matching`] did, tensor by tensor (names in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// The network's tensors taken from the file (same name and shape).
    pub loaded: Vec<String>,
    /// The network's tensors the file does not have: they keep their values.
    pub missing: Vec<String>,
    /// The file's tensors left out, each with the reason: a name this network does not
    /// have, or another shape.
    pub skipped: Vec<(String, String)>,
}

impl std::fmt::Display for TransferReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tensors loaded, {} kept as they were (not in the file), {} of the file's skipped",
            self.loaded.len(),
            self.missing.len(),
            self.skipped.len()
        )?;
        for name in &self.missing {
            write!(f, "\n  kept: {name}")?;
        }
        for (name, why) in &self.skipped {
            write!(f, "\n  skipped: {name} ({why})")?;
        }
        Ok(())
    }
}

impl Network {
    /// A network with the given root; `kind` names it in saved files (`"ResNet"`).
    pub fn new(kind: impl Into<String>, mut root: Sequential) -> Self {
        // Nobody reads the gradient with respect to the input images.
        root.set_input_gradient_needed(false);
        Self {
            kind: kind.into(),
            root,
            last_layer: SoftmaxWithLoss::new(),
            renames: HashMap::new(),
            metadata: BTreeMap::new(),
            replicas: Replicas::default(),
        }
    }

    /// Renames parameters and buffers: `(path, public name)` pairs (builder style).
    ///
    /// # Panics
    /// If a path is not a parameter or buffer of the network, or two names coincide: a
    /// programmer error in the model's table.
    pub fn with_renames(mut self, table: impl IntoIterator<Item = (String, String)>) -> Self {
        self.renames = table.into_iter().collect();
        let paths: Vec<String> = (self.root.params().into_iter().map(|(n, _)| n))
            .chain(self.root.buffers().into_iter().map(|(n, _)| n))
            .collect();
        for from in self.renames.keys() {
            assert!(
                paths.contains(from),
                "Network: renamed path {from:?} is not in the network"
            );
        }
        let mut names = self.saved_tensors().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "Network: the renames make two names coincide");
        self
    }

    /// The public name of the parameter or buffer at `path`.
    fn public(&self, path: String) -> String {
        self.renames.get(&path).cloned().unwrap_or(path)
    }

    /// The model's name, e.g. `"DeepConvNet"`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Extra text saved in the header of parameter files (the model configuration).
    pub fn set_metadata(&mut self, key: &str, value: String) {
        self.metadata.insert(key.to_string(), value);
    }

    /// Deskews every image ([`Deskew`]: sheared upright and centred by its moments)
    /// before the root sees it, in training and in evaluation (`true`), or not (`false`,
    /// the default): the input a network was trained on is part of the network. A saved
    /// file records it (metadata entry `"input": "deskew"`), and loading a file's
    /// parameters ([`Network::load_params`]) sets it as the file says.
    pub fn set_deskew(&mut self, deskew: bool) {
        if deskew {
            self.metadata.insert(INPUT_KEY.into(), DESKEW.into());
        } else {
            self.metadata.remove(INPUT_KEY);
        }
    }

    /// Whether images are deskewed before the root sees them ([`Network::set_deskew`]).
    pub fn deskews(&self) -> bool {
        self.metadata.get(INPUT_KEY).map(String::as_str) == Some(DESKEW)
    }

    /// The root's input for images `x`: `x` deskewed when the network deskews
    /// ([`Network::set_deskew`]), else `x` itself. [`Network::predict`] applies it; an
    /// engine that runs the root alone (another precision's) needs it applied first.
    pub fn prepare_input(&self, x: Tensor) -> Result<Tensor, ModelError> {
        if self.deskews() {
            Ok(Deskew::new().forward(x, false)?)
        } else {
            Ok(x)
        }
    }

    /// The metadata saved with the parameters (`"config"`: the model's configuration as
    /// JSON).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The root layer.
    pub fn root(&self) -> &Sequential {
        &self.root
    }

    /// Mutable access to the root layer.
    pub fn root_mut(&mut self) -> &mut Sequential {
        self.replicas.0.clear();
        &mut self.root
    }

    /// The root's layers, in order.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        self.root.layers()
    }

    /// Mutable access to the root's layers.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        self.replicas.0.clear();
        self.root.layers_mut()
    }

    /// Sets the algorithm of every convolution ([`ConvAlgo::Auto`] by default: the
    /// fastest this CPU has; [`ConvAlgo::Lowered`] is the book's `im2col` + GEMM).
    pub fn set_conv_algo(&mut self, algo: ConvAlgo) {
        self.replicas.0.clear();
        self.root.set_conv_algo(algo);
    }

    /// Tells every layer which training iteration comes next ([`Layer::set_iteration`]):
    /// dropout then draws the masks of `(seed, iteration)`. The [`Trainer`] calls it
    /// before every step, which makes a resumed run draw what an unbroken one would.
    ///
    /// [`Trainer`]: https://docs.rs/dl-train
    pub fn set_iteration(&mut self, iteration: u64) {
        self.replicas.0.clear();
        self.root.set_iteration(iteration);
    }

    /// Trains (`true`) or freezes (`false`) the layer at `path` and everything inside
    /// it, as when fine-tuning a pretrained network: `path` is a layer's path as the
    /// parameter names have it before any rename (`"layer1"`, `"layer2.1.conv1"`,
    /// `"features.3"`, `"0"` for the book's first convolution), or `""` for the whole
    /// network. A frozen layer gets no weight gradient and [`Network::params_and_grads`]
    /// leaves its parameters out (the optimizer does not touch them), a frozen batch
    /// norm uses and keeps its running statistics, and no input gradient is computed
    /// below the lowest trainable layer ([`Layer::set_trainable`]).
    pub fn set_trainable(&mut self, path: &str, trainable: bool) -> Result<(), ModelError> {
        self.replicas.0.clear();
        let mut at: &mut dyn Layer = &mut self.root;
        for part in path.split('.').filter(|_| !path.is_empty()) {
            at = at
                .child_mut(part)
                .ok_or_else(|| ModelError::Input(format!("no layer of the network at {path:?}")))?;
        }
        at.set_trainable(trainable);
        // every container works out again which input gradients are read
        self.root.set_input_gradient_needed(false);
        Ok(())
    }

    /// A copy for evaluation and saving: the same parameters, buffers, settings, names
    /// and metadata, without what the last training step kept for `backward` (a batch's
    /// activations, [`Layer::clone_for_inference`]). Its [`Network::predict`] in
    /// evaluation gives this network's scores, bit for bit, and [`Network::gradient`] on
    /// it gives what it gives on this network: a training forward keeps afresh what
    /// backward reads.
    pub fn clone_for_inference(&self) -> Network {
        Network {
            kind: self.kind.clone(),
            root: self.root.inference_copy(),
            last_layer: SoftmaxWithLoss::default(),
            renames: self.renames.clone(),
            metadata: self.metadata.clone(),
            replicas: Replicas::default(),
        }
    }

    /// The book's `predict(x, train_flg)`: scores `(N, classes)` for input `x`.
    ///
    /// In evaluation, on more than one thread, a batch of four images or more is split
    /// into one share per thread (fewer when the batch has under two images per thread:
    /// every share has at least two), and each share runs through every layer on a copy
    /// of the root of its own, in parallel (a share of twice [`EVAL_CHUNK`] images or
    /// more, `EVAL_CHUNK` at a time): each core keeps its own images' activations in its
    /// cache, and no layer waits for the other threads between layers. Each image's
    /// scores are computed as they are for the whole batch, so the result does not
    /// depend on the thread count.
    ///
    /// On a rayon pool of one thread, called from outside it, runs on the pool's thread,
    /// as [`Network::gradient`] does ([`dl_tensor::on_pool`]).
    pub fn predict(&mut self, x: Tensor, train: bool) -> Result<Tensor, ModelError> {
        on_pool(|| self.predict_pass(x, train))
    }

    fn predict_pass(&mut self, x: Tensor, train: bool) -> Result<Tensor, ModelError> {
        let x = self.prepare_input(x)?;
        let n = x.shape().first().copied().unwrap_or(0);
        let shares = rayon::current_num_threads().min(n / 2);
        if train {
            self.replicas.0.clear();
            return Ok(self.root.forward(x, true)?);
        }
        if shares < 2 {
            return Ok(forward_in_chunks(&mut self.root, x)?);
        }
        while self.replicas.0.len() < shares - 1 {
            self.replicas.0.push(self.root.inference_copy());
        }
        // shares of n / shares images, the first n % shares of them one more: every
        // share at least two (a one-row product may take another summation order)
        let parts: Vec<Tensor> = (0..shares)
            .scan(0, |start, k| {
                let len = n / shares + usize::from(k < n % shares);
                *start += len;
                Some(
                    x.slice_axis(Axis(0), ndarray::Slice::from(*start - len..*start))
                        .to_owned(),
                )
            })
            .collect();
        let roots = std::iter::once(&mut self.root).chain(self.replicas.0.iter_mut());
        let outs: Vec<Result<Tensor, LayerError>> = roots
            .zip(parts)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(root, part)| forward_in_chunks(root, part))
            .collect();
        let outs = outs.into_iter().collect::<Result<Vec<_>, _>>()?;
        let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| ModelError::Input(format!("the shares' scores: {e}")))
    }

    /// The book's `loss(x, t)`: the forward pass in training mode, then the mean
    /// cross-entropy.
    pub fn loss(&mut self, x: Tensor, t: Labels<'_>) -> Result<f32, ModelError> {
        self.replicas.0.clear();
        let y = self.predict(x, true)?;
        Ok(self.last_layer.forward(&y, t)?)
    }

    /// The book's `gradient(x, t)`: loss, then backpropagation through every layer. The
    /// gradients are stored on the parameters ([`Network::grads`]); returns the loss.
    ///
    /// On a rayon pool of one thread, called from outside it, the pass runs on the pool's
    /// thread, so that no loop of it is handed over ([`dl_tensor::on_pool`]).
    pub fn gradient(&mut self, x: Tensor, t: Labels<'_>) -> Result<f32, ModelError> {
        on_pool(|| {
            self.replicas.0.clear();
            let loss = self.loss(x, t)?;
            let dout = self.last_layer.backward();
            self.root.backward(dout);
            Ok(loss)
        })
    }

    /// [`Network::gradient`] for a slice of a mini-batch of `total` samples, as a
    /// data-parallel rank computes it: the gradients are those of the whole mini-batch's
    /// mean loss restricted to this slice (divided by `total`, not by the slice's
    /// length), so the ranks' gradients add up to the whole mini-batch's. Returns the
    /// slice's own mean loss.
    pub fn gradient_of_slice(&mut self, x: Tensor, t: Labels<'_>, total: usize) -> Result<f32, ModelError> {
        on_pool(|| {
            self.replicas.0.clear();
            let loss = self.loss(x, t)?;
            let dout = self.last_layer.backward_over(total);
            self.root.backward(dout);
            Ok(loss)
        })
    }

    /// Computes every product of the network (convolutions, affine layers) in bfloat16
    /// by `kernel`, summed in `f32` (`Some`; [`Bf16Kernel::Rounded`] is the fastest),
    /// or in `f32` (`None`, the default): bf16 training with `f32` master weights
    /// ([`Layer::set_bf16_products`]).
    ///
    /// # Panics
    /// If `kernel` cannot run on this CPU ([`Bf16Kernel::supported`]).
    pub fn set_bf16_products(&mut self, kernel: Option<Bf16Kernel>) {
        self.replicas.0.clear();
        self.root.set_bf16_products(kernel);
    }

    /// Puts every parameter back in its allowed set after an optimizer step
    /// ([`Layer::clip_params`]: a binarized layer's latent weights to `[-1, 1]`). The
    /// Trainer calls it after every update; a loop of one's own should too.
    pub fn clip_params(&mut self) {
        self.replicas.0.clear();
        self.root.clip_params();
    }

    /// Tells every layer where the next training forward's samples sit in the global
    /// mini-batch ([`Layer::set_batch_offset`]); call it after
    /// [`Network::set_iteration`].
    pub fn set_batch_offset(&mut self, first: u64) {
        self.replicas.0.clear();
        self.root.set_batch_offset(first);
    }

    /// The gradients of the parameters [`Network::params_and_grads`] gives, in its
    /// order, to be changed in place (summed across data-parallel ranks, say).
    pub fn trainable_grads_mut(&mut self) -> Vec<&mut Tensor> {
        self.replicas.0.clear();
        let params = self.root.trainable_params_mut().into_iter();
        params.map(|(_, p)| &mut p.grad).collect()
    }

    /// Calls `f` on every parameter and buffer (what [`Network::save_params`] saves),
    /// parameters first, in layer order, to change them in place: to copy them from one
    /// data-parallel rank to the others, say.
    pub fn visit_state_mut(&mut self, mut f: impl FnMut(&mut Tensor)) {
        self.replicas.0.clear();
        self.root.params_mut().into_iter().for_each(|(_, p)| f(&mut p.value));
        self.root.buffers_mut().into_iter().for_each(|(_, b)| f(b));
    }

    /// Class predictions (argmax of the scores) for `x`, in evaluation mode, `batch_size`
    /// images at a time.
    pub fn classify(&mut self, x: &Tensor, batch_size: usize) -> Result<Vec<usize>, ModelError> {
        let mut out = Vec::with_capacity(x.shape().first().copied().unwrap_or(0));
        for chunk in x.axis_chunks_iter(Axis(0), batch_size.max(1)) {
            let y = self.predict(chunk.to_owned(), false)?;
            let y = y
                .into_dimensionality::<Ix2>()
                .map_err(|_| ModelError::Input("the network's output is not (N, classes)".into()))?;
            out.extend(argmax_rows(&y.view()));
        }
        Ok(out)
    }

    /// The book's `accuracy(x, t, batch_size)`: the fraction of `x` classified as `t`.
    pub fn accuracy(&mut self, x: &Tensor, t: &[usize], batch_size: usize) -> Result<f32, ModelError> {
        let n = x.shape().first().copied().unwrap_or(0);
        if n != t.len() {
            return Err(ModelError::Input(format!("{n} inputs but {} labels", t.len())));
        }
        let pred = self.classify(x, batch_size)?;
        let correct = pred.iter().zip(t).filter(|(a, b)| a == b).count();
        Ok(correct as f32 / n.max(1) as f32)
    }

    /// The parameters by name (`W1`, `b1`, ... for the book's networks, paths such as
    /// `layer1.0.conv1.W` for the others), in layer order.
    pub fn params(&self) -> Vec<(String, &Tensor)> {
        let params = self.root.params().into_iter();
        params.map(|(n, p)| (self.public(n), &p.value)).collect()
    }

    /// The gradients from the last [`Network::gradient`], by parameter name.
    pub fn grads(&self) -> Vec<(String, &Tensor)> {
        let params = self.root.params().into_iter();
        params.map(|(n, p)| (self.public(n), &p.grad)).collect()
    }

    /// Parameters with their gradients, for an optimizer; frozen ones are left out.
    pub fn params_and_grads(&mut self) -> Vec<ParamMut<'_>> {
        self.replicas.0.clear();
        let renames = &self.renames;
        self.root
            .trainable_params_mut()
            .into_iter()
            .map(|(n, p)| {
                let p = &mut *p;
                ParamMut {
                    name: renames.get(&n).cloned().unwrap_or(n),
                    value: &mut p.value,
                    grad: &p.grad,
                }
            })
            .collect()
    }

    /// Number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.params().iter().map(|(_, p)| p.len()).sum()
    }

    /// The buffers (batch norm's running statistics) by name, in layer order.
    pub fn buffers(&self) -> Vec<(String, &Tensor)> {
        let buffers = self.root.buffers().into_iter();
        buffers.map(|(n, b)| (self.public(n), b)).collect()
    }

    /// Everything that is saved: parameters, then buffers, by name.
    fn saved_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = self.params();
        let buffers = self.root.buffers().into_iter();
        out.extend(buffers.map(|(n, b)| (self.public(n), b)));
        out
    }

    /// The parameter file as bytes (safetensors, little-endian float32).
    pub fn params_to_bytes(&self) -> Vec<u8> {
        self.params_to_bytes_with(&[], &BTreeMap::new())
    }

    /// The parameter file as bytes with every tensor stored at `precision` (safetensors'
    /// `F32`, `F16` or `BF16`), each value rounded to nearest: half the bytes at 16 bits.
    /// Every loader reads such a file, widening the values to `f32` (exactly).
    pub fn params_to_bytes_as(&self, precision: Precision) -> Vec<u8> {
        self.serialize(&self.saved_tensors(), &BTreeMap::new(), precision)
    }

    /// [`Network::save_params`] at `precision` ([`Network::params_to_bytes_as`]),
    /// atomically.
    pub fn save_params_as(&self, path: impl AsRef<Path>, precision: Precision) -> Result<(), ModelError> {
        let path = path.as_ref();
        let bytes = self.params_to_bytes_as(precision);
        dl_tensor::fs::atomic_write(path, &bytes).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// [`Network::params_to_bytes`] with more in the same file: `extra` tensors, each
    /// stored under [`TRAINING_PREFIX`]`name` (so they never collide with the network's
    /// own), and `metadata` entries beside the network's `"dlfs"` entry (which a key
    /// `"dlfs"` here does not replace). A checkpoint is such a file: it loads as a
    /// parameter file, since the loaders skip the prefixed tensors.
    pub fn params_to_bytes_with(&self, extra: &[(String, &Tensor)], metadata: &BTreeMap<String, String>) -> Vec<u8> {
        let mut tensors = self.saved_tensors();
        tensors.extend(extra.iter().map(|(n, t)| (format!("{TRAINING_PREFIX}{n}"), *t)));
        self.serialize(&tensors, metadata, Precision::F32)
    }

    fn serialize(
        &self,
        tensors: &[(String, &Tensor)],
        metadata: &BTreeMap<String, String>,
        precision: Precision,
    ) -> Vec<u8> {
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec(), precision.to_le_bytes(t.iter().copied())))
            .collect();
        let views: Vec<(String, TensorView<'_>)> = raw
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(dtype(precision), s.clone(), b).expect("consistent view"),
                )
            })
            .collect();
        // One metadata entry holding an ordered JSON object, so that the same network
        // always gives the same bytes (a HashMap of several entries would not).
        let mut info = self.metadata.clone();
        info.insert("model".into(), self.kind.clone());
        let mut meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        meta.insert("dlfs".to_string(), serde_json::to_string(&info).expect("string map"));
        safetensors::serialize(views, &Some(meta)).expect("serialising in-memory tensors")
    }

    /// The book's `save_params`: writes the parameters (and batch-norm statistics) to
    /// `path` in safetensors format, atomically.
    pub fn save_params(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let path = path.as_ref();
        dl_tensor::fs::atomic_write(path, &self.params_to_bytes()).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The book's `load_params`: reads a safetensors file whose names and shapes match
    /// this network exactly (tensors under [`TRAINING_PREFIX`], a checkpoint's optimizer
    /// state, are skipped). On any error the network is unchanged.
    pub fn load_params(&mut self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        self.replicas.0.clear();
        let path = path.as_ref();
        let bytes = read_file(path)?;
        self.load_params_from_bytes(&bytes, path)
    }

    /// The book's `load_params("deep_convnet_params.pkl")`: reads the pickle the book's
    /// code writes (a dict of NumPy arrays under the book's names) with
    /// [`book::read_pickled_arrays`](crate::book::read_pickled_arrays), which runs no code
    /// from the file, and loads it with the same checks as [`Network::load_params`].
    /// float64 values become float32. On any error the network is unchanged.
    pub fn load_book_params(&mut self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        self.replicas.0.clear();
        let path = path.as_ref();
        let arrays = crate::book::read_pickled_arrays(path)?;
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = arrays
            .into_iter()
            .map(|(n, a)| (n, a.shape, a.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views = raw
            .iter()
            .map(|(n, s, b)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| ModelError::Format {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = safetensors::serialize(views, &None).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        self.load_params_from_bytes(&bytes, path)
    }

    /// Replaces each parameter and buffer named (by public name) in `values`.
    fn set_tensors(&mut self, mut values: HashMap<String, Tensor>) {
        self.replicas.0.clear();
        let renames = &self.renames;
        let public = |n: String| renames.get(&n).cloned().unwrap_or(n);
        for (name, p) in self.root.params_mut() {
            if let Some(v) = values.remove(&public(name)) {
                p.value = v;
            }
        }
        for (name, b) in self.root.buffers_mut() {
            if let Some(v) = values.remove(&public(name)) {
                *b = v;
            }
        }
    }

    /// Transfer learning's first step: copies from the parameter file `path` every
    /// tensor whose name and shape match one of this network's (parameters and batch-norm
    /// statistics), and leaves the rest as they are: a pretrained backbone goes into a
    /// network with a new head. Returns what was loaded, what the file lacked and what
    /// it held that did not fit. A checkpoint's training state is ignored. On an error
    /// (not a safetensors file, a tensor not float32) the network is unchanged.
    pub fn load_matching(&mut self, path: impl AsRef<Path>) -> Result<TransferReport, ModelError> {
        self.replicas.0.clear();
        self.load_matching_except(path, &[])
    }

    /// [`Network::load_matching`], leaving the tensors named in `except` as they are
    /// even where the file has them in the same shape (reported as skipped): a new head
    /// for as many classes as the old one.
    pub fn load_matching_except(
        &mut self,
        path: impl AsRef<Path>,
        except: &[String],
    ) -> Result<TransferReport, ModelError> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        self.load_matching_from_bytes_except(&bytes, path, except)
    }

    /// [`Network::load_matching`] from bytes in memory; `path` only names the source in
    /// errors.
    pub fn load_matching_from_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<TransferReport, ModelError> {
        self.replicas.0.clear();
        self.load_matching_from_bytes_except(bytes, path, &[])
    }

    fn load_matching_from_bytes_except(
        &mut self,
        bytes: &[u8],
        path: &Path,
        except: &[String],
    ) -> Result<TransferReport, ModelError> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut report = TransferReport::default();
        let mut values: HashMap<String, Tensor> = HashMap::new();
        let ours: HashMap<String, Vec<usize>> = self
            .saved_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect();
        let mut names: Vec<&String> = st.names();
        names.sort();
        for name in names {
            if name.starts_with(TRAINING_PREFIX) {
                continue;
            }
            let view = st.tensor(name).map_err(|e| ModelError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            let Some(shape) = ours.get(name) else {
                report.skipped.push((name.clone(), "not in this network".into()));
                continue;
            };
            if except.contains(name) {
                report
                    .skipped
                    .push((name.clone(), "left as it starts (a new head)".into()));
                continue;
            }
            let data = f32_values(&view, path, name)?;
            if view.shape() != &shape[..] {
                report.skipped.push((
                    name.clone(),
                    format!("shape {:?} here, {:?} in the file", shape, view.shape()),
                ));
                continue;
            }
            values.insert(
                name.clone(),
                Tensor::from_shape_vec(shape.clone(), data).expect("checked shape"),
            );
            report.loaded.push(name.clone());
        }
        let in_file: std::collections::HashSet<&String> = st.names().into_iter().collect();
        let mut missing: Vec<String> = ours.into_keys().filter(|n| !in_file.contains(n)).collect();
        missing.sort();
        report.missing = missing;
        self.set_tensors(values);
        Ok(report)
    }

    /// [`Network::load_params`] from bytes in memory; `path` only names the source in
    /// errors.
    pub fn load_params_from_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<(), ModelError> {
        self.replicas.0.clear();
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let deskew = file_deskews(bytes, path)?;
        let mut values: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in self.saved_tensors() {
            let view = st.tensor(&name).map_err(|_| ModelError::Missing {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: t.shape().to_vec(),
            })?;
            let data = f32_values(&view, path, &name)?;
            if view.shape() != t.shape() {
                return Err(ModelError::Shape {
                    path: path.to_path_buf(),
                    name,
                    expected: t.shape().to_vec(),
                    found: view.shape().to_vec(),
                });
            }
            values.insert(
                name,
                Tensor::from_shape_vec(t.shape().to_vec(), data).expect("checked shape"),
            );
        }
        let mut extra: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| !values.contains_key(*n) && !n.starts_with(TRAINING_PREFIX))
            .cloned()
            .collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(ModelError::Unexpected {
                path: path.to_path_buf(),
                names: extra,
            });
        }
        self.set_tensors(values);
        self.set_deskew(deskew);
        Ok(())
    }
}

/// The metadata key (in the `"dlfs"` entry) naming a network's input stage.
const INPUT_KEY: &str = "input";
/// [`INPUT_KEY`]'s value for a network that deskews its images.
const DESKEW: &str = "deskew";

/// Whether a safetensors file's network deskews its images: its `"dlfs"` entry's
/// `"input"` is `"deskew"` (`true`), or it has none (`false`). Any other value is an
/// error: an input stage this version does not know.
fn file_deskews(bytes: &[u8], path: &Path) -> Result<bool, ModelError> {
    let format = |message: String| ModelError::Format {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
    let Some(entry) = meta.metadata().as_ref().and_then(|m| m.get("dlfs")) else {
        return Ok(false);
    };
    let Ok(info) = serde_json::from_str::<BTreeMap<String, String>>(entry) else {
        return Ok(false);
    };
    match info.get(INPUT_KEY).map(String::as_str) {
        None => Ok(false),
        Some(DESKEW) => Ok(true),
        Some(other) => Err(format(format!(
            "its input stage {other:?} is not one this version knows (\"{DESKEW}\" or none)"
        ))),
    }
}

/// Images per pass in evaluation: [`Network::predict`] runs a share of twice this many
/// images or more through the layers this many at a time, so that each layer's input and
/// output stay in the core's cache.
pub const EVAL_CHUNK: usize = 32;

/// `root.forward(x, false)`, [`EVAL_CHUNK`] images at a time when `x` has twice as many
/// or more (the last pass takes the rest: `EVAL_CHUNK` images or more, under twice as
/// many).
fn forward_in_chunks(root: &mut Sequential, x: Tensor) -> Result<Tensor, LayerError> {
    let n = x.shape().first().copied().unwrap_or(0);
    let passes = n / EVAL_CHUNK;
    if passes < 2 {
        return root.forward(x, false);
    }
    let outs = (0..passes)
        .map(|i| {
            let end = if i + 1 == passes { n } else { (i + 1) * EVAL_CHUNK };
            let chunk = x.slice_axis(Axis(0), ndarray::Slice::from(i * EVAL_CHUNK..end));
            root.forward(chunk.to_owned(), false)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| LayerError::Invalid {
        layer: "Network".into(),
        message: format!("the passes' outputs do not join: {e}"),
    })
}
