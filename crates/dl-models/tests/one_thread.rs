//! The network's passes on a global pool of one thread (this test binary is a process
//! of its own, so its global pool can be set).

use dl_layers::{Labels, Layer, Tensor};
use dl_models::Network;

/// A layer that passes its input on and records whether each pass ran on a thread of
/// rayon's pool.
#[derive(Clone)]
struct WhereItRuns(std::sync::Arc<std::sync::Mutex<Vec<(&'static str, bool)>>>);

impl WhereItRuns {
    fn record(&self, pass: &'static str) {
        self.0
            .lock()
            .unwrap()
            .push((pass, rayon::current_thread_index().is_some()));
    }
}

impl Layer for WhereItRuns {
    fn name(&self) -> &str {
        "WhereItRuns"
    }
    fn forward(&mut self, x: Tensor, _train: bool) -> Result<Tensor, dl_layers::LayerError> {
        self.record("forward");
        Ok(x)
    }
    fn backward(&mut self, dout: Tensor) -> Tensor {
        self.record("backward");
        dout
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, dl_layers::LayerError> {
        Ok(input.to_vec())
    }
    fn clone_box(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }
}

/// Called from a thread outside rayon's global pool of one thread, the network's passes
/// run on that thread (`dl_tensor::on_pool`): in evaluation, in the book's `gradient`
/// and in a data-parallel rank's `gradient_of_slice`.
#[test]
fn on_one_thread_the_passes_run_on_the_pools_thread() {
    rayon::ThreadPoolBuilder::new().num_threads(1).build_global().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = WhereItRuns(log.clone());
    let outside = std::thread::spawn(move || {
        // an Affine layer first, so that the probe is above a trainable layer and its
        // backward runs
        let affine = dl_layers::Affine::new(3, 3, dl_layers::Init::He, 0);
        let mut net = Network::new("probe", dl_layers::Sequential::new().with(affine).with(probe));
        let x = Tensor::from_shape_vec(vec![1, 3], vec![0.5, -1.0, 2.0]).unwrap();
        assert_eq!(rayon::current_thread_index(), None);
        net.predict(x.clone(), false).unwrap();
        net.gradient(x.clone(), Labels::Indices(&[2])).unwrap();
        net.gradient_of_slice(x, Labels::Indices(&[0]), 4).unwrap();
    });
    outside.join().unwrap();
    let passes = log.lock().unwrap().clone();
    let expect = ["forward", "forward", "backward", "forward", "backward"];
    assert_eq!(passes.iter().map(|p| p.0).collect::<Vec<_>>(), expect);
    assert!(passes.iter().all(|p| p.1), "{passes:?}");
}
