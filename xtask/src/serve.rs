//! `cargo xtask serve` (the draw-a-digit page), `cargo xtask predict` (the same answer
//! for image files) and the server's load benchmark (`cargo xtask bench --serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use dl_serve::Classifier;
use serde::Serialize;

use crate::CliError;

/// Which model to serve or ask.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Weights file, any model (default: the shipped DeepConvNet).
    #[arg(long)]
    params: Option<PathBuf>,
    /// An ensemble folder instead (mean of its members' probabilities); without DIR,
    /// the shipped ensemble.
    #[arg(long, value_name = "DIR", num_args = 0..=1, conflicts_with = "params")]
    ensemble: Option<Option<PathBuf>>,
}

impl ModelArgs {
    fn classifier(&self) -> Result<Classifier, CliError> {
        let c = match &self.ensemble {
            Some(dir) => Classifier::from_ensemble_dir(dir.clone().unwrap_or_else(crate::shipped_ensemble)),
            None => Classifier::from_params(self.params.clone().unwrap_or_else(crate::shipped_params)),
        };
        c.map_err(|e| CliError::Other(e.to_string()))
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default: use 0.0.0.0:PORT to let other
    /// machines in).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))
}

pub fn serve(a: ServeArgs) -> Result<(), CliError> {
    let classifier = Arc::new(a.model.classifier()?);
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.addr)
            .await
            .map_err(|e| CliError::Other(format!("cannot listen on {}: {e}", a.addr)))?;
        let addr = listener.local_addr().map_err(|e| CliError::Other(e.to_string()))?;
        println!("serving {} at http://{addr}/  (Ctrl-C stops)", classifier.description());
        let app = dl_serve::router(classifier, dl_serve::RequestLog::Stderr);
        dl_serve::serve(listener, app, async {
            // a failure to install the handler leaves the server to be killed instead
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CliError::Other(format!("the server failed: {e}")))?;
        println!("stopped");
        Ok(())
    })
}

#[derive(Args)]
pub struct PredictArgs {
    /// PNG or JPEG files, each one digit (either polarity: dark on light or light on
    /// dark).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

/// One file's answer as `predict` prints it.
fn describe(p: &dl_serve::Prediction) -> String {
    let probs: Vec<String> = p
        .probabilities
        .iter()
        .enumerate()
        .map(|(d, q)| format!("{d}:{:.1}", q * 100.0))
        .collect();
    format!(
        "{} ({:.1}%)   [{}]",
        p.digit,
        p.probabilities[p.digit] * 100.0,
        probs.join(" ")
    )
}

pub fn predict(a: PredictArgs) -> Result<(), CliError> {
    let classifier = a.model.classifier()?;
    let mut failed = 0;
    for path in &a.images {
        let answer = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| classifier.classify_image(&bytes).map_err(|e| e.to_string()));
        match answer {
            Ok(p) => println!("{}: {}", path.display(), describe(&p)),
            Err(e) => {
                failed += 1;
                println!("{}: error: {e}", path.display());
            }
        }
    }
    if failed > 0 {
        return Err(CliError::Other(format!(
            "{failed} of {} images could not be read",
            a.images.len()
        )));
    }
    Ok(())
}

/// The server's latency under load, as `cargo xtask bench --serve` reports it.
#[derive(Debug, Serialize)]
pub struct ServeReport {
    pub cpu: String,
    pub model: String,
    pub clients: usize,
    /// Each client starts a request at most this often (0: as soon as the last answer
    /// came back).
    pub interval_ms: u64,
    pub requests: usize,
    /// The body each request sends.
    pub body: String,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests_per_sec: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// A 28x28 digit as the page sends it: 280x280, each pixel a 10x10 square.
fn page_drawing(digit: &[u8]) -> image::GrayImage {
    image::GrayImage::from_fn(280, 280, |x, y| image::Luma([digit[(y / 10 * 28 + x / 10) as usize]]))
}

/// Starts the server in this process on a free loopback port, then `clients` threads
/// each send `per_client` predictions (a 280x280 PNG drawing, as the page sends) over
/// one kept-alive connection, one every `interval_ms` at most (the page's pace is 100:
/// a person drawing); every answer is checked.
pub fn bench(
    clients: usize,
    per_client: usize,
    interval_ms: u64,
    data: Option<PathBuf>,
) -> Result<ServeReport, CliError> {
    let classifier =
        Arc::new(Classifier::from_params(crate::shipped_params()).map_err(|e| CliError::Other(e.to_string()))?);
    let mnist = dl_data::Mnist::load(data.unwrap_or_else(crate::default_data_dir))?;
    // 50 test digits drawn as the page draws them: light on black, 280x280
    let bodies: Vec<(Vec<u8>, usize)> = mnist
        .test
        .images
        .chunks_exact(784)
        .take(50)
        .map(|img| {
            let big = page_drawing(img);
            let mut png = std::io::Cursor::new(Vec::new());
            big.write_to(&mut png, image::ImageFormat::Png).expect("PNG in memory");
            let expected = classifier.classify_image(png.get_ref()).expect("a test digit").digit;
            (png.into_inner(), expected)
        })
        .collect();
    let bodies = Arc::new(bodies);
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_classifier = classifier.clone();
    let server = std::thread::spawn(move || {
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            tx.send(listener.local_addr()?).ok();
            let app = dl_serve::router(server_classifier, dl_serve::RequestLog::Off);
            dl_serve::serve(listener, app, async {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    let addr = rx
        .recv()
        .map_err(|_| CliError::Other("the server did not start".into()))?;
    let barrier = Arc::new(std::sync::Barrier::new(clients));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let bodies = bodies.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<Vec<f64>, String> {
                let agent = ureq::AgentBuilder::new().build();
                let url = format!("http://{addr}/api/predict");
                let mut times = Vec::with_capacity(per_client);
                barrier.wait();
                let pace = std::time::Duration::from_millis(interval_ms);
                // clients start spread over one interval, as people do
                std::thread::sleep(pace.mul_f64(c as f64 / clients as f64));
                for k in 0..per_client {
                    let (body, expected) = &bodies[(c * per_client + k) % bodies.len()];
                    let t = Instant::now();
                    let text = agent
                        .post(&url)
                        .set("Content-Type", "image/png")
                        .send_bytes(body)
                        .map_err(|e| e.to_string())?
                        .into_string()
                        .map_err(|e| e.to_string())?;
                    times.push(crate::bench::millis_each(t.elapsed(), 1));
                    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                    if v["digit"].as_u64() != Some(*expected as u64) {
                        return Err(format!("wrong answer: {text}"));
                    }
                    std::thread::sleep(pace.saturating_sub(t.elapsed()));
                }
                Ok(times)
            })
        })
        .collect();
    let mut times = Vec::with_capacity(clients * per_client);
    for h in handles {
        times.extend(
            h.join()
                .map_err(|_| CliError::Other("a client panicked".into()))?
                .map_err(CliError::Other)?,
        );
    }
    let wall = start.elapsed();
    stop_tx.send(()).ok();
    server
        .join()
        .map_err(|_| CliError::Other("the server panicked".into()))?
        .map_err(|e| CliError::Other(format!("the server failed: {e}")))?;
    times.sort_by(f64::total_cmp);
    Ok(ServeReport {
        cpu: crate::bench::cpu_model(),
        model: classifier.description().to_string(),
        clients,
        interval_ms,
        requests: times.len(),
        body: "280x280 PNG drawing (image/png)".into(),
        p50_ms: percentile(&times, 0.5),
        p90_ms: percentile(&times, 0.9),
        p99_ms: percentile(&times, 0.99),
        max_ms: times.last().copied().unwrap_or(f64::NAN),
        requests_per_sec: crate::bench::per_second(times.len(), wall),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digit_is_drawn_ten_times_larger() {
        let digit: Vec<u8> = (0..784).map(|i| (i % 251) as u8).collect();
        let big = page_drawing(&digit);
        assert_eq!(big.dimensions(), (280, 280));
        // (x, y) and the digit's pixel, row-major
        for ((x, y), i) in [
            ((0, 0), 0),
            ((9, 9), 0),
            ((10, 0), 1),
            ((279, 0), 27),
            ((0, 279), 756),
            ((279, 279), 783),
            ((15, 25), 57),
            ((139, 140), 405),
        ] {
            assert_eq!(big.get_pixel(x, y).0[0], digit[i], "({x}, {y})");
        }
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 101.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn predict_reads_files_and_names_the_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mnist = dl_data::Mnist::load(crate::default_data_dir()).unwrap();
        let good = dir.path().join("seven.png");
        let img = image::GrayImage::from_raw(28, 28, mnist.test.images[..784].to_vec()).unwrap();
        img.save(&good).unwrap();
        let classifier = ModelArgs {
            params: None,
            ensemble: None,
        }
        .classifier()
        .unwrap();
        let p = classifier.classify_image(&std::fs::read(&good).unwrap()).unwrap();
        assert_eq!(p.digit, usize::from(mnist.test.labels[0]));
        let line = describe(&p);
        assert!(
            line.starts_with(&format!("{} (", p.digit)) && line.contains(" 9:"),
            "{line}"
        );
        predict(PredictArgs {
            images: vec![good.clone()],
            model: ModelArgs {
                params: None,
                ensemble: None,
            },
        })
        .unwrap();
        let bad = dir.path().join("notes.txt");
        std::fs::write(&bad, "not a picture").unwrap();
        let e = predict(PredictArgs {
            images: vec![good, bad, dir.path().join("missing.png")],
            model: ModelArgs {
                params: None,
                ensemble: None,
            },
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "2 of 3 images could not be read");
    }

    #[test]
    fn the_load_benchmark_checks_every_answer() {
        let r = bench(4, 5, 0, None).unwrap();
        assert_eq!(r.requests, 20);
        assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms, "{r:?}");
    }
}
