use crate::{prefixed, ConvAlgo, Layer, LayerError, Op, Param, Tensor};

/// Layers applied one after another; itself a [`Layer`], so blocks nest. Each layer has
/// a name, its position unless given one ([`Sequential::with_named`]), and its
/// parameters are named under it: `"0.W"`, `"conv1.W"`, `"layer1.0.bn1.gamma"`.
#[derive(Clone, Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
    names: Vec<String>,
    /// Nobody reads the chain's `dL/dx` (it was told so).
    input_gradient_unread: bool,
    /// The input shape of the last training forward.
    input_shape: Vec<usize>,
    /// Per layer, whether the last training forward ran it inside a layer before it (a
    /// ReLU after a [`Layer::fuses_relu_in_training`] layer, a ReLU and a pooling after
    /// a [`Layer::fuses_relu_pool`] one): `backward` skips it.
    fused: Vec<bool>,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.names.iter().zip(self.layers.iter().map(|l| l.name())))
            .finish()
    }
}

impl Sequential {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer named by its position (builder style).
    pub fn with(mut self, layer: impl Layer + 'static) -> Self {
        self.push(Box::new(layer));
        self
    }

    /// Appends a layer under `name` (builder style).
    ///
    /// # Panics
    /// If the name is empty, contains a `.`, or is taken: a programmer error.
    pub fn with_named(mut self, name: &str, layer: impl Layer + 'static) -> Self {
        self.push_named(name, Box::new(layer));
        self
    }

    /// Appends a boxed layer named by its position.
    pub fn push(&mut self, layer: Box<dyn Layer>) {
        let name = self.layers.len().to_string();
        self.push_named(&name, layer);
    }

    /// Appends a boxed layer under `name`.
    ///
    /// # Panics
    /// If the name is empty, contains a `.`, or is taken: a programmer error.
    pub fn push_named(&mut self, name: &str, layer: Box<dyn Layer>) {
        assert!(
            !name.is_empty() && !name.contains('.') && !self.names.iter().any(|n| n == name),
            "Sequential: layer name {name:?} is empty, has a '.' or is taken"
        );
        self.names.push(name.to_string());
        self.layers.push(layer);
    }

    /// A copy for evaluation ([`Layer::clone_for_inference`] of every layer): the
    /// parameters, buffers and settings without what the last training forward kept
    /// for `backward`.
    pub fn inference_copy(&self) -> Sequential {
        Sequential {
            layers: self.layers.iter().map(|l| l.clone_for_inference()).collect(),
            names: self.names.clone(),
            input_gradient_unread: self.input_gradient_unread,
            input_shape: Vec::new(),
            fused: Vec::new(),
        }
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// Mutable access to the layers, in order.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        &mut self.layers
    }

    /// The layers' names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The inference form of every layer, in order ([`Layer::inference_op`]).
    pub fn inference_ops(&self) -> Result<Vec<Op>, LayerError> {
        self.layers.iter().map(|l| l.inference_op()).collect()
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Per layer, whether anyone reads the `dL/dx` of its input: the chain's reader, or
    /// a trainable layer before it.
    fn input_gradients_read(&self) -> Vec<bool> {
        let mut read = !self.input_gradient_unread;
        self.layers
            .iter()
            .map(|l| {
                let mine = read;
                read |= l.is_trainable();
                mine
            })
            .collect()
    }

    /// Tells every layer whether its input gradient is read.
    fn tell_input_gradients(&mut self) {
        let read = self.input_gradients_read();
        for (l, r) in self.layers.iter_mut().zip(read) {
            l.set_input_gradient_needed(r);
        }
    }
}

impl FromIterator<Box<dyn Layer>> for Sequential {
    /// The layers in a row, named by position.
    fn from_iter<I: IntoIterator<Item = Box<dyn Layer>>>(iter: I) -> Self {
        let mut s = Sequential::new();
        iter.into_iter().for_each(|l| s.push(l));
        s
    }
}

impl Layer for Sequential {
    fn name(&self) -> &str {
        "Sequential"
    }

    fn forward(&mut self, mut x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        if train {
            self.input_shape = x.shape().to_vec();
            self.fused.clear();
            self.fused.resize(self.layers.len(), false);
        }
        // a layer followed by a ReLU and a 2x2 max pooling runs the three as one where
        // it can; else a layer followed by a ReLU runs the two as one: in evaluation any
        // layer, in training one that keeps the ReLU's mask itself
        let mut i = 0;
        while i < self.layers.len() {
            let layer = &self.layers[i];
            let relu_next = self.layers.get(i + 1).is_some_and(|next| is_relu(next.as_ref()));
            let pool = relu_next
                && self
                    .layers
                    .get(i + 2)
                    .is_some_and(|next| is_max_pool_2x2(next.as_ref()))
                && layer.fuses_relu_pool(x.shape());
            let fuse = relu_next && (!train || layer.fuses_relu_in_training());
            let layer = &mut self.layers[i];
            x = match (pool, fuse, train) {
                (true, _, _) => layer.forward_relu_pool(x, train)?,
                (false, true, true) => layer.forward_relu_train(x)?,
                (false, true, false) => layer.forward_relu(x)?,
                (false, false, _) => layer.forward(x, train)?,
            };
            let skipped = if pool { 2 } else { usize::from(fuse) };
            if train {
                self.fused[i + 1..i + 1 + skipped].fill(true);
            }
            i += 1 + skipped;
        }
        Ok(x)
    }

    fn backward(&mut self, mut dout: Tensor) -> Tensor {
        let read = self.input_gradients_read();
        for (i, (layer, read)) in self.layers.iter_mut().zip(read).enumerate().rev() {
            if !read && !layer.is_trainable() {
                // nothing from here down learns and nobody reads dx: stop
                return Tensor::zeros(self.input_shape.clone());
            }
            if !self.fused.get(i).copied().unwrap_or(false) {
                // (a fused ReLU's backward runs in the layer before it)
                dout = layer.backward(dout);
            }
        }
        dout
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let children = self.names.iter().zip(&self.layers);
        children.flat_map(|(n, l)| prefixed(n, l.params())).collect()
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let children = self.names.iter().zip(&mut self.layers);
        children.flat_map(|(n, l)| prefixed(n, l.params_mut())).collect()
    }

    fn buffers(&self) -> Vec<(String, &Tensor)> {
        let children = self.names.iter().zip(&self.layers);
        children.flat_map(|(n, l)| prefixed(n, l.buffers())).collect()
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let children = self.names.iter().zip(&mut self.layers);
        children.flat_map(|(n, l)| prefixed(n, l.buffers_mut())).collect()
    }

    fn set_input_gradient_needed(&mut self, needed: bool) {
        self.input_gradient_unread = !needed;
        self.tell_input_gradients();
    }

    fn set_trainable(&mut self, trainable: bool) {
        self.layers.iter_mut().for_each(|l| l.set_trainable(trainable));
        self.tell_input_gradients();
    }

    fn is_trainable(&self) -> bool {
        self.layers.iter().any(|l| l.is_trainable())
    }

    fn trainable_params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let children = self.names.iter().zip(&mut self.layers);
        children
            .flat_map(|(n, l)| prefixed(n, l.trainable_params_mut()))
            .collect()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Layer> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(self.layers[i].as_mut())
    }

    fn set_conv_algo(&mut self, algo: ConvAlgo) {
        self.layers.iter_mut().for_each(|l| l.set_conv_algo(algo));
    }

    fn set_iteration(&mut self, iteration: u64) {
        self.layers.iter_mut().for_each(|l| l.set_iteration(iteration));
    }

    fn set_batch_offset(&mut self, first: u64) {
        self.layers.iter_mut().for_each(|l| l.set_batch_offset(first));
    }

    fn set_bf16_products(&mut self, kernel: Option<crate::Bf16Kernel>) {
        self.layers.iter_mut().for_each(|l| l.set_bf16_products(kernel));
    }

    fn clip_params(&mut self) {
        self.layers.iter_mut().for_each(|l| l.clip_params());
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        self.layers.iter().try_fold(input.to_vec(), |s, l| l.output_shape(&s))
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        Ok(Op::Sequential(self.inference_ops()?))
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(self.inference_copy())
    }
}

/// Whether `layer` is the book's 2x2 max pooling with stride 2 and no padding: named
/// `Pooling`, with that [`Op::Pooling`] as its evaluation form.
fn is_max_pool_2x2(layer: &dyn Layer) -> bool {
    layer.name() == "Pooling"
        && matches!(
            layer.inference_op(),
            Ok(Op::Pooling {
                kind: crate::PoolKind::Max,
                ph: 2,
                pw: 2,
                stride: 2,
                pad: 0,
            })
        )
}

/// Whether `layer` is a ReLU: named `Relu`, with [`Op::Relu`] as its evaluation form
/// (asked only of layers of that name: a convolution's form copies its weights).
fn is_relu(layer: &dyn Layer) -> bool {
    layer.name() == "Relu" && matches!(layer.inference_op(), Ok(Op::Relu))
}
