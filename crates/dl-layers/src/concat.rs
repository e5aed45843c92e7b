use rayon::prelude::*;

use crate::{check_dout, prefixed, ConvAlgo, Layer, LayerError, Op, Param, Sequential, Tensor};

/// GoogLeNet's inception module: branches run side by side on the same input
/// `(N, C, H, W)`, their outputs `(N, C_i, H, W)` joined along the channels into
/// `(N, ΣC_i, H, W)` (as `torch.cat(.., 1)`). Backward splits the gradient by channels,
/// sends each part back through its branch and sums the branches' input gradients.
///
/// Each branch has a name (`branch1`, `branch2`, ...) and its parameters are named under
/// it (`branch2.0.W`).
#[derive(Debug, Clone, Default)]
pub struct Concat {
    branches: Vec<Sequential>,
    names: Vec<String>,
    /// Channels of each branch's output in the last training forward.
    channels: Vec<usize>,
    shape: Vec<usize>,
}

impl Concat {
    /// No branches yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a branch under `name` (builder style).
    ///
    /// # Panics
    /// If the name is empty, has a `.` or is taken.
    pub fn with_branch(mut self, name: &str, branch: Sequential) -> Self {
        assert!(
            !name.is_empty() && !name.contains('.') && !self.names.iter().any(|n| n == name),
            "Concat: branch name {name:?} is empty, has a '.' or is taken"
        );
        self.names.push(name.to_string());
        self.branches.push(branch);
        self
    }

    /// The branches, in order.
    pub fn branches(&self) -> &[Sequential] {
        &self.branches
    }

    fn mismatch(shapes: &[Vec<usize>]) -> LayerError {
        LayerError::Invalid {
            layer: "Concat".into(),
            message: format!("the branches' outputs {shapes:?} differ in more than their channels"),
        }
    }
}

impl Layer for Concat {
    fn name(&self) -> &str {
        "Concat"
    }

    fn forward(&mut self, x: Tensor, train: bool) -> Result<Tensor, LayerError> {
        // every branch but the last gets a copy of the input, the last the input itself
        let Some((last, rest)) = self.branches.split_last_mut() else {
            return Err(LayerError::Invalid {
                layer: "Concat".into(),
                message: "no branches".into(),
            });
        };
        let mut outs = Vec::new();
        for b in rest {
            outs.push(b.forward(x.clone(), train)?);
        }
        outs.push(last.forward(x, train)?);
        let shapes: Vec<Vec<usize>> = outs.iter().map(|o| o.shape().to_vec()).collect();
        let first = &shapes[0];
        let same = |s: &Vec<usize>| s.len() == first.len() && s[0] == first[0] && s[2..] == first[2..];
        if first.len() < 2 || !shapes.iter().all(same) {
            return Err(Self::mismatch(&shapes));
        }
        // each image's block of each branch (its channels, whole) is contiguous: copied
        // into place, images in parallel
        let (n, inner) = (first[0], first[2..].iter().product::<usize>());
        let blocks: Vec<usize> = shapes.iter().map(|s| s[1] * inner).collect();
        let image = blocks.iter().sum::<usize>();
        let parts: Vec<_> = outs.iter().map(|o| o.as_standard_layout()).collect();
        let parts: Vec<&[f32]> = parts.iter().map(|p| p.as_slice().expect("standard layout")).collect();
        let mut y = vec![0.0f32; n * image];
        y.par_chunks_mut(image.max(1)).enumerate().for_each(|(i, out)| {
            let mut at = 0;
            for (part, &len) in parts.iter().zip(&blocks) {
                out[at..at + len].copy_from_slice(&part[i * len..(i + 1) * len]);
                at += len;
            }
        });
        let mut shape = first.clone();
        shape[1] = shapes.iter().map(|s| s[1]).sum();
        if train {
            self.channels = shapes.iter().map(|s| s[1]).collect();
            self.shape = shape.clone();
        }
        Ok(Tensor::from_shape_vec(shape, y).expect("joined shape"))
    }

    fn backward(&mut self, dout: Tensor) -> Tensor {
        check_dout("Concat", &dout, &self.shape);
        let dout = dout.as_standard_layout();
        let ds = dout.as_slice().expect("standard layout");
        let (n, inner) = (self.shape[0], self.shape[2..].iter().product::<usize>());
        let image = self.shape[1] * inner;
        let mut dx: Option<Tensor> = None;
        let mut at = 0;
        for (b, &c) in self.branches.iter_mut().zip(&self.channels) {
            // the branch's channels of each image, a contiguous block of it
            let len = c * inner;
            let mut part = vec![0.0f32; n * len];
            part.par_chunks_mut(len.max(1)).enumerate().for_each(|(i, p)| {
                p.copy_from_slice(&ds[i * image + at..i * image + at + len]);
            });
            let mut shape = self.shape.clone();
            shape[1] = c;
            at += len;
            let d = b.backward(Tensor::from_shape_vec(shape, part).expect("branch shape"));
            match &mut dx {
                None => dx = Some(crate::into_standard(d)),
                Some(acc) => *acc += &d,
            }
        }
        dx.expect("at least one branch")
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let children = self.names.iter().zip(&self.branches);
        children.flat_map(|(n, b)| prefixed(n, b.params())).collect()
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let children = self.names.iter().zip(&mut self.branches);
        children.flat_map(|(n, b)| prefixed(n, b.params_mut())).collect()
    }

    fn buffers(&self) -> Vec<(String, &Tensor)> {
        let children = self.names.iter().zip(&self.branches);
        children.flat_map(|(n, b)| prefixed(n, b.buffers())).collect()
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let children = self.names.iter().zip(&mut self.branches);
        children.flat_map(|(n, b)| prefixed(n, b.buffers_mut())).collect()
    }

    fn set_input_gradient_needed(&mut self, needed: bool) {
        self.branches
            .iter_mut()
            .for_each(|b| b.set_input_gradient_needed(needed));
    }

    fn set_trainable(&mut self, trainable: bool) {
        self.branches.iter_mut().for_each(|b| b.set_trainable(trainable));
    }

    fn is_trainable(&self) -> bool {
        self.branches.iter().any(|b| b.is_trainable())
    }

    fn trainable_params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let children = self.names.iter().zip(&mut self.branches);
        children
            .flat_map(|(n, b)| prefixed(n, b.trainable_params_mut()))
            .collect()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Layer> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&mut self.branches[i])
    }

    fn set_conv_algo(&mut self, algo: ConvAlgo) {
        self.branches.iter_mut().for_each(|b| b.set_conv_algo(algo));
    }

    fn set_iteration(&mut self, iteration: u64) {
        self.branches.iter_mut().for_each(|b| b.set_iteration(iteration));
    }

    fn set_batch_offset(&mut self, first: u64) {
        self.branches.iter_mut().for_each(|b| b.set_batch_offset(first));
    }

    fn set_bf16_products(&mut self, kernel: Option<crate::Bf16Kernel>) {
        self.branches.iter_mut().for_each(|b| b.set_bf16_products(kernel));
    }

    fn clip_params(&mut self) {
        self.branches.iter_mut().for_each(|b| b.clip_params());
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerError> {
        let shapes = self
            .branches
            .iter()
            .map(|b| b.output_shape(input))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(s0) = shapes.first() else {
            return Err(LayerError::Invalid {
                layer: "Concat".into(),
                message: "no branches".into(),
            });
        };
        if s0.len() < 2
            || shapes
                .iter()
                .any(|s| s.len() != s0.len() || s[0] != s0[0] || s[2..] != s0[2..])
        {
            return Err(Self::mismatch(&shapes));
        }
        let mut out = s0.clone();
        out[1] = shapes.iter().map(|s| s[1]).sum();
        Ok(out)
    }

    fn inference_op(&self) -> Result<Op, LayerError> {
        let branches = self
            .branches
            .iter()
            .map(Sequential::inference_ops)
            .collect::<Result<_, _>>()?;
        Ok(Op::Concat(branches))
    }

    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn clone_for_inference(&self) -> Box<dyn Layer> {
        Box::new(Concat {
            branches: self.branches.iter().map(Sequential::inference_copy).collect(),
            names: self.names.clone(),
            channels: Vec::new(),
            shape: Vec::new(),
        })
    }
}
