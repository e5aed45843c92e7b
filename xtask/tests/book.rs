//! The book's own trained parameters (`shared/book/` beside the checkout; not shipped:
//! the test says so and passes where the file is absent). An independent PyTorch float64
//! forward of the same file classifies the same 9,797 images.

use std::path::Path;

#[test]
fn the_books_pickled_parameters_load_and_give_the_cross_checked_accuracy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pkl = root.join("../shared/book/deep_convnet_params.pkl");
    if !pkl.is_file() {
        eprintln!("{} is absent: nothing to check", pkl.display());
        return;
    }
    let mnist = dl_data::Mnist::load(root.join("datasets/mnist")).unwrap();
    let mut net = dl_models::load(&pkl).unwrap();
    assert_eq!(net.kind(), "DeepConvNet");
    let e = dl_train::evaluate(&mut net, &mnist.test, None, 500).unwrap();
    assert_eq!(e.correct, 9797, "the book's parameters: {e}");
}
