use crate::{Layer, LayerError, Param, Tensor};

/// Layers applied one after another; itself a [`Layer`], so blocks nest. Parameter
/// names are prefixed by the layer's position: `"0.W"`, `"2.b"`, ...
#[derive(Clone, Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.layers.iter().map(|l| l.name())).finish()
    }
}

impl Sequential {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer (builder style).
    pub fn with(mut self, layer: impl Layer + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer.
    pub fn push(&mut self, layer: Box<dyn Layer>) {
        self.layers.push(layer);
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// Mutable access to the layers, in order.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        &mut self.layers
    }
}

impl Layer for Sequential {
    fn name(&self) -> &str {
        "Sequential"
    }

    fn forward(&mut self, mut x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        for layer in &mut self.layers {
            x = layer.forward(x, train)?;
        }
        Ok(x)
    }

    fn backward(&mut self, mut dout: Tensor) -> Tensor {
        for layer in self.layers.iter_mut().rev() {
            dout = layer.backward(dout);
        }
        dout
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(l.params().into_iter().map(|(n, p)| (format!("{i}.{n}"), p)));
        }
        out
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            out.extend(l.params_mut().into_iter().map(|(n, p)| (format!("{i}.{n}"), p)));
        }
        out
    }

    fn buffers(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(l.buffers().into_iter().map(|(n, p)| (format!("{i}.{n}"), p)));
        }
        out
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            out.extend(l.buffers_mut().into_iter().map(|(n, p)| (format!("{i}.{n}"), p)));
        }
        out
    }

    fn set_input_gradient_needed(&mut self, needed: bool) {
        // only the first layer's dx leaves the block
        if let Some(first) = self.layers.first_mut() {
            first.set_input_gradient_needed(needed);
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        self.layers.iter().try_fold(input.to_vec(), |s, l| l.output_shape(&s))
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}
