//! # dl-serve
//!
//! A web page where a person draws a digit and a dlfs network reads it, and the JSON API
//! behind it, on [axum](https://docs.rs/axum).
//!
//! * `GET /`: the page. Draw with a mouse, a pen or a finger; the answer and the ten
//!   probabilities update as you draw; the 28x28 picture the network saw is shown
//!   beside them. A PNG or JPEG can be uploaded instead.
//! * `POST /api/predict`: the same for scripts. The body is a PNG or JPEG
//!   (`Content-Type: image/png` or `image/jpeg`), or JSON
//!   `{"width": W, "height": H, "pixels": [W*H grey levels 0-255]}`. The answer is
//!   `{"digit": 7, "probabilities": [10 numbers], "input": [784 numbers]}`.
//! * `GET /api/model`: what is being served.
//!
//! Every picture is made into a digit the way MNIST's were
//! ([`dl_data::preprocess`]): the ink's bounding box scaled into 20x20 with
//! anti-aliasing, centred by its centre of mass in 28x28. That happens here, in Rust,
//! so the page and any script get the same answer for the same picture.
//!
//! Errors are JSON (`{"error": "..."}`) with a 4xx status: 400 for malformed JSON, 413
//! for a body over 2 MiB, 415 for another content type, 422 for a picture that cannot
//! be read or has no ink, 404 for another path. Requests run in parallel on copies of
//! the model ([`Classifier`]); none waits for another's inference.
//!
//! ```no_run
//! use std::sync::Arc;
//! use dl_serve::{router, Classifier, RequestLog};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let classifier = Arc::new(Classifier::from_params("crates/dl-models/weights/deep_convnet.safetensors")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! dl_serve::serve(listener, router(classifier, RequestLog::Stderr), async {
//!     tokio::signal::ctrl_c().await.ok();
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Without HTTP, [`digit_from_image`] and [`Classifier::classify`] do the same work:
//!
//! ```
//! use dl_serve::digit_from_gray;
//!
//! // a vertical stroke on a white 50x50 card
//! let mut gray = vec![255u8; 50 * 50];
//! for y in 10..40 {
//!     gray[y * 50 + 25] = 0;
//! }
//! let input = digit_from_gray(50, 50, &gray).unwrap();
//! assert_eq!(input.len(), 28 * 28);
//! assert!(input.iter().any(|&v| v == 1.0));
//! ```

mod http;
mod model;

pub use http::{router, serve, ApiError, PixelsRequest, RequestLog, PAGE};
pub use model::{digit_from_gray, digit_from_image, Classifier, Prediction, SharedClassifier, MAX_BODY_BYTES};

/// Everything that can go wrong serving predictions.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The bytes are not a PNG or JPEG this server can read.
    #[error("cannot read the image: {0}")]
    Image(String),
    /// The picture cannot be made into a digit (no ink, wrong size).
    #[error(transparent)]
    Data(#[from] dl_data::DataError),
    /// The input does not fit the network.
    #[error("{0}")]
    Input(String),
    /// The model file could not be read.
    #[error(transparent)]
    Model(#[from] dl_models::ModelError),
    /// The ensemble folder could not be read, or the prediction failed.
    #[error(transparent)]
    Ensemble(#[from] dl_train::EnsembleError),
}
