use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dl_layers::{Labels, Layer, SoftmaxWithLoss, Tensor};
use dl_tensor::{argmax_rows, ParamMut};
use ndarray::{Axis, Ix2};
use safetensors::tensor::{Dtype, TensorView};

use crate::ModelError;

/// A network: layers applied in order, then the book's `last_layer`, a
/// [`SoftmaxWithLoss`]. Parameters are named the book's way: the `k`-th layer with
/// weights contributes `W{k}` and `b{k}`; a batch norm after it contributes `gamma{k}`,
/// `beta{k}` and saves its running statistics as `running_mean{k}`, `running_var{k}`.
#[derive(Clone)]
pub struct Network {
    kind: String,
    layers: Vec<Box<dyn Layer>>,
    last_layer: SoftmaxWithLoss,
    /// Public parameter names, per layer, in the order of `Layer::params`.
    names: Vec<Vec<String>>,
    /// Public buffer names, per layer, in the order of `Layer::buffers`.
    buffer_names: Vec<Vec<String>>,
    /// Layers whose parameters the optimizer leaves alone.
    frozen: Vec<bool>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("kind", &self.kind)
            .field("layers", &self.layers.iter().map(|l| l.name()).collect::<Vec<_>>())
            .finish()
    }
}

impl Network {
    /// A network of the given layers; `kind` names it in saved files (`"DeepConvNet"`).
    pub fn new(kind: impl Into<String>, mut layers: Vec<Box<dyn Layer>>) -> Self {
        // Nobody reads the gradient with respect to the input images.
        if let Some(first) = layers.first_mut() {
            first.set_input_gradient_needed(false);
        }
        let mut k = 0;
        let mut names = Vec::new();
        let mut buffer_names = Vec::new();
        for layer in &layers {
            let params = layer.params();
            // A layer with weights starts the next number; batch norm's gamma and beta
            // share the number of the weights they follow (the book's MultiLayerNetExtend).
            if params.iter().any(|(n, _)| n == "W") || (k == 0 && !params.is_empty()) {
                k += 1;
            }
            names.push(params.iter().map(|(n, _)| format!("{n}{k}")).collect());
            buffer_names.push(layer.buffers().iter().map(|(n, _)| format!("{n}{k}")).collect());
        }
        let frozen = vec![false; layers.len()];
        Self {
            kind: kind.into(),
            layers,
            last_layer: SoftmaxWithLoss::new(),
            names,
            buffer_names,
            frozen,
            metadata: BTreeMap::new(),
        }
    }

    /// The model's name, e.g. `"DeepConvNet"`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Extra text saved in the header of parameter files (the model configuration).
    pub fn set_metadata(&mut self, key: &str, value: String) {
        self.metadata.insert(key.to_string(), value);
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// Mutable access to the layers.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        &mut self.layers
    }

    /// Freezes (or unfreezes) layer `index`: [`Network::params_and_grads`] leaves out its
    /// parameters, so the optimizer does not change them (fine-tuning).
    ///
    /// # Panics
    /// If `index` is not a layer index.
    pub fn set_frozen(&mut self, index: usize, frozen: bool) {
        self.frozen[index] = frozen;
    }

    /// The book's `predict(x, train_flg)`: scores `(N, classes)` for input `x`.
    pub fn predict(&mut self, mut x: Tensor, train: bool) -> Result<Tensor, ModelError> {
        for layer in &mut self.layers {
            x = layer.forward(x, train)?;
        }
        Ok(x)
    }

    /// The book's `loss(x, t)`: the forward pass in training mode, then the mean
    /// cross-entropy.
    pub fn loss(&mut self, x: Tensor, t: Labels<'_>) -> Result<f32, ModelError> {
        let y = self.predict(x, true)?;
        Ok(self.last_layer.forward(&y, t)?)
    }

    /// The book's `gradient(x, t)`: loss, then backpropagation through every layer. The
    /// gradients are stored on the parameters ([`Network::grads`]); returns the loss.
    pub fn gradient(&mut self, x: Tensor, t: Labels<'_>) -> Result<f32, ModelError> {
        let loss = self.loss(x, t)?;
        let mut dout = self.last_layer.backward();
        for layer in self.layers.iter_mut().rev() {
            dout = layer.backward(dout);
        }
        Ok(loss)
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

    /// Every [`Param`](dl_layers::Param) under its book name, in layer order.
    fn named_params(&self) -> Vec<(String, &dl_layers::Param)> {
        let mut out = Vec::new();
        for (layer, names) in self.layers.iter().zip(&self.names) {
            for ((_, p), name) in layer.params().into_iter().zip(names) {
                out.push((name.clone(), p));
            }
        }
        out
    }

    /// The parameters by their book names (`W1`, `b1`, ...), in layer order.
    pub fn params(&self) -> Vec<(String, &Tensor)> {
        self.named_params().into_iter().map(|(n, p)| (n, &p.value)).collect()
    }

    /// The gradients from the last [`Network::gradient`], by parameter name.
    pub fn grads(&self) -> Vec<(String, &Tensor)> {
        self.named_params().into_iter().map(|(n, p)| (n, &p.grad)).collect()
    }

    /// Parameters with their gradients, for an optimizer; frozen layers are left out.
    pub fn params_and_grads(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        for ((layer, names), &frozen) in self.layers.iter_mut().zip(&self.names).zip(&self.frozen) {
            if frozen {
                continue;
            }
            for ((_, p), name) in layer.params_mut().into_iter().zip(names) {
                let p = &mut *p;
                out.push(ParamMut {
                    name: name.clone(),
                    value: &mut p.value,
                    grad: &p.grad,
                });
            }
        }
        out
    }

    /// Number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.params().iter().map(|(_, p)| p.len()).sum()
    }

    /// Everything that is saved: parameters, then buffers, by name.
    fn saved_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = self.params();
        for (layer, names) in self.layers.iter().zip(&self.buffer_names) {
            for ((_, b), name) in layer.buffers().into_iter().zip(names) {
                out.push((name.clone(), b));
            }
        }
        out
    }

    /// The parameter file as bytes (safetensors, little-endian float32).
    pub fn params_to_bytes(&self) -> Vec<u8> {
        let tensors = self.saved_tensors();
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, t)| {
                let bytes: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
                (n.clone(), t.shape().to_vec(), bytes)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = raw
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).expect("consistent view"),
                )
            })
            .collect();
        // One metadata entry holding an ordered JSON object, so that the same network
        // always gives the same bytes (a HashMap of several entries would not).
        let mut info = self.metadata.clone();
        info.insert("model".into(), self.kind.clone());
        let meta = HashMap::from([("dlfs".to_string(), serde_json::to_string(&info).expect("string map"))]);
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
    /// this network exactly. On any error the network is unchanged.
    pub fn load_params(&mut self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_params_from_bytes(&bytes, path)
    }

    /// The book's `load_params("deep_convnet_params.pkl")`: reads the pickle the book's
    /// code writes (a dict of NumPy arrays under the book's names) with
    /// [`book::read_pickled_arrays`](crate::book::read_pickled_arrays), which runs no code
    /// from the file, and loads it with the same checks as [`Network::load_params`].
    /// float64 values become float32. On any error the network is unchanged.
    pub fn load_book_params(&mut self, path: impl AsRef<Path>) -> Result<(), ModelError> {
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

    /// [`Network::load_params`] from bytes in memory; `path` only names the source in
    /// errors.
    pub fn load_params_from_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<(), ModelError> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut values: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in self.saved_tensors() {
            let view = st.tensor(&name).map_err(|_| ModelError::Missing {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: t.shape().to_vec(),
            })?;
            if view.dtype() != Dtype::F32 {
                return Err(ModelError::DType {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            if view.shape() != t.shape() {
                return Err(ModelError::Shape {
                    path: path.to_path_buf(),
                    name,
                    expected: t.shape().to_vec(),
                    found: view.shape().to_vec(),
                });
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            values.insert(
                name,
                Tensor::from_shape_vec(t.shape().to_vec(), data).expect("checked shape"),
            );
        }
        let mut extra: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| !values.contains_key(*n))
            .cloned()
            .collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(ModelError::Unexpected {
                path: path.to_path_buf(),
                names: extra,
            });
        }
        for ((layer, names), bnames) in self.layers.iter_mut().zip(&self.names).zip(&self.buffer_names) {
            for ((_, p), name) in layer.params_mut().into_iter().zip(names) {
                p.value = values.remove(name).expect("checked above");
            }
            for ((_, b), name) in layer.buffers_mut().into_iter().zip(bnames) {
                *b = values.remove(name).expect("checked above");
            }
        }
        Ok(())
    }
}
