//! The HTTP API on loopback, as a script would use it: good pictures, every kind of bad
//! request, and 200 requests at once, each answered as the classifier answers alone.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use dl_data::Mnist;
use dl_serve::{digit_from_gray, Classifier};
use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn classifier() -> Arc<Classifier> {
    static C: OnceLock<Arc<Classifier>> = OnceLock::new();
    C.get_or_init(|| {
        Arc::new(
            Classifier::from_params(workspace().join("crates/dl-models/weights/deep_convnet.safetensors"))
                .expect("the shipped weights load"),
        )
    })
    .clone()
}

fn mnist() -> &'static Mnist {
    static M: OnceLock<Mnist> = OnceLock::new();
    M.get_or_init(|| Mnist::load(workspace().join("datasets/mnist")).expect("the shipped MNIST loads"))
}

/// Test image `i` as 8-bit grey levels and its label.
fn test_image(i: usize) -> (Vec<u8>, usize) {
    let set = &mnist().test;
    (set.images[i * 784..(i + 1) * 784].to_vec(), usize::from(set.labels[i]))
}

/// A server on a free loopback port, for the rest of the test process.
fn start(log: dl_serve::RequestLog) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let c = classifier();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            dl_serve::serve(listener, dl_serve::router(c, log), std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The server most tests share (no request log).
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| start(dl_serve::RequestLog::Off))
}

fn url(path: &str) -> String {
    format!("http://{}{path}", server())
}

/// Status and JSON body of a POST, whatever the status.
fn post(path: &str, content_type: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut req = ureq::post(&url(path));
    if let Some(t) = content_type {
        req = req.set("Content-Type", t);
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let mut text = String::new();
    resp.into_reader().read_to_string(&mut text).unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}

fn png(width: u32, height: u32, gray: &[u8]) -> Vec<u8> {
    let img = image::GrayImage::from_raw(width, height, gray.to_vec()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A test digit as a scan would give it: 10x larger, dark ink on white paper.
fn scanned(gray: &[u8]) -> (u32, u32, Vec<u8>) {
    let side = 280;
    let mut out = vec![0u8; side * side];
    for (i, o) in out.iter_mut().enumerate() {
        let (y, x) = (i / side / 10, (i % side) / 10);
        *o = 255 - gray[y * 28 + x];
    }
    (side as u32, side as u32, out)
}

fn digit_of(v: &Value) -> usize {
    v["digit"].as_u64().unwrap_or_else(|| panic!("no digit in {v}")) as usize
}

fn probabilities(v: &Value) -> Vec<f32> {
    v["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn the_page_and_the_model_are_served() {
    let page = ureq::get(&url("/")).call().unwrap();
    assert_eq!(page.content_type(), "text/html");
    let html = page.into_string().unwrap();
    assert!(html.contains("<canvas id=\"pad\"") && html.contains("/api/predict"));
    let info: Value =
        serde_json::from_str(&ureq::get(&url("/api/model")).call().unwrap().into_string().unwrap()).unwrap();
    assert_eq!(info["members"], 1);
    assert!(
        info["model"].as_str().unwrap().starts_with("DeepConvNet from "),
        "{info}"
    );
}

#[test]
fn a_png_a_jpeg_and_json_pixels_get_the_same_answer_as_the_classifier() {
    let (gray, label) = test_image(0);
    let expected = classifier().classify(digit_from_gray(28, 28, &gray).unwrap()).unwrap();
    assert_eq!(expected.digit, label, "the shipped network reads test image 0");

    let (status, by_png) = post("/api/predict", Some("image/png"), &png(28, 28, &gray));
    assert_eq!(status, 200, "{by_png}");
    assert_eq!(digit_of(&by_png), label);
    assert_eq!(probabilities(&by_png), expected.probabilities);
    let input: Vec<f32> = by_png["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(input, expected.input);
    let total: f32 = expected.probabilities.iter().sum();
    assert!((total - 1.0).abs() < 1e-5);

    let body = serde_json::json!({ "width": 28, "height": 28, "pixels": gray }).to_string();
    let (status, by_json) = post("/api/predict", Some("application/json; charset=utf-8"), body.as_bytes());
    assert_eq!(status, 200, "{by_json}");
    assert_eq!(probabilities(&by_json), expected.probabilities);

    // a scan: 10x larger, inverted, as JPEG (lossy) and as PNG
    let (w, h, big) = scanned(&gray);
    let img = image::GrayImage::from_raw(w, h, big.clone()).unwrap();
    let mut jpeg = std::io::Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let (status, by_jpeg) = post("/api/predict", Some("image/jpeg"), jpeg.get_ref());
    assert_eq!((status, digit_of(&by_jpeg)), (200, label), "{by_jpeg}");
    let (status, by_octets) = post("/api/predict", Some("application/octet-stream"), &png(w, h, &big));
    assert_eq!((status, digit_of(&by_octets)), (200, label), "{by_octets}");
}

#[test]
fn mnist_digits_through_the_preprocessing_are_read_as_well_as_the_originals() {
    // The shipped network on the first 1000 test images, as they are and as scans
    // (10x larger, dark on white) made back into MNIST's form by the server's code.
    let c = classifier();
    let n = 1000;
    let (mut as_is, mut as_scans) = (0, 0);
    for i in 0..n {
        let (gray, label) = test_image(i);
        let original: Vec<f32> = gray.iter().map(|&g| f32::from(g) / 255.0).collect();
        as_is += usize::from(c.classify(original).unwrap().digit == label);
        let (w, h, big) = scanned(&gray);
        let input = digit_from_gray(w as usize, h as usize, &big).unwrap();
        as_scans += usize::from(c.classify(input).unwrap().digit == label);
    }
    eprintln!("{as_is}/{n} as they are, {as_scans}/{n} as scans");
    assert!(as_is >= 990, "{as_is}/{n} as they are");
    assert!(
        as_scans + 3 >= as_is,
        "{as_scans}/{n} as scans against {as_is}/{n} as they are"
    );
}

#[test]
fn every_kind_of_bad_request_gets_a_4xx_with_a_json_error() {
    let (gray, _) = test_image(0);
    let json = |v: Value| v.to_string().into_bytes();
    // path, content type, body, expected status, words the error must contain
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/api/predict",
            Some("application/json"),
            b"{\"width\": 28,".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "/api/predict",
            Some("application/json"),
            b"[1, 2, 3]".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "/api/predict",
            Some("application/json"),
            json(serde_json::json!({"width": 28, "height": 28, "pixels": [300]})),
            400,
            "malformed JSON",
        ),
        (
            "/api/predict",
            Some("application/json"),
            json(serde_json::json!({"width": 28, "height": 28, "pixels": gray, "extra": 1})),
            400,
            "unknown field",
        ),
        (
            "/api/predict",
            Some("application/json"),
            json(serde_json::json!({"width": 28, "height": 27, "pixels": gray})),
            422,
            "784 pixel values for a 28x27 image",
        ),
        (
            "/api/predict",
            Some("application/json"),
            json(serde_json::json!({"width": 0, "height": 0, "pixels": []})),
            422,
            "no pixels",
        ),
        (
            "/api/predict",
            Some("application/json"),
            json(serde_json::json!({"width": 5000, "height": 1, "pixels": vec![0u8; 5000]})),
            422,
            "largest accepted side",
        ),
        (
            "/api/predict",
            Some("application/json"),
            json(serde_json::json!({"width": 2, "height": 2, "pixels": [0, 0, 0, 0]})),
            422,
            "no ink",
        ),
        (
            "/api/predict",
            Some("image/png"),
            b"GIF89a not a png".to_vec(),
            422,
            "not a PNG or JPEG",
        ),
        (
            "/api/predict",
            Some("image/png"),
            png(28, 28, &gray)[..60].to_vec(),
            422,
            "cannot read the image",
        ),
        (
            "/api/predict",
            Some("image/png"),
            png(28, 28, &[255; 784]),
            422,
            "no ink",
        ),
        (
            "/api/predict",
            Some("text/plain"),
            b"7".to_vec(),
            415,
            "content type text/plain",
        ),
        ("/api/predict", None, b"7".to_vec(), 415, "content type missing"),
        ("/nowhere", Some("image/png"), b"x".to_vec(), 404, "no such page"),
    ];
    for (path, ctype, body, want_status, want_text) in cases {
        let (status, v) = post(path, ctype, &body);
        assert_eq!(status, want_status, "{path} {ctype:?}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(msg.contains(want_text), "{ctype:?}: {msg:?} lacks {want_text:?}");
    }
    // a body one byte over the limit. (The server answers as soon as the limit is
    // passed; a larger body would still be on its way when the connection closes, and
    // the client would see a reset rather than the answer.)
    let (status, v) = post(
        "/api/predict",
        Some("image/png"),
        &vec![0u8; dl_serve::MAX_BODY_BYTES + 1],
    );
    assert_eq!(status, 413, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("larger than 2097152 bytes"),
        "{v}"
    );
    // a PNG that claims to be 100000 pixels wide is refused before it is decoded
    let bomb = claiming(&png(28, 28, &gray), 100_000, 28);
    let (status, v) = post("/api/predict", Some("image/png"), &bomb);
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
    // and the server still answers
    let (status, _) = post("/api/predict", Some("image/png"), &png(28, 28, &gray));
    assert_eq!(status, 200);
}

#[test]
fn large_pictures_are_read_up_to_the_decoding_limit_and_refused_beyond_it() {
    // a 1200x1200 scan (1.4 MB of grey levels decoded) is read
    let (gray, label) = test_image(0);
    let side = 1200u32;
    let scan = image::GrayImage::from_fn(side, side, |x, y| {
        let (sx, sy) = (x as usize * 28 / side as usize, y as usize * 28 / side as usize);
        image::Luma([255 - gray[sy * 28 + sx]])
    });
    let mut body = std::io::Cursor::new(Vec::new());
    scan.write_to(&mut body, image::ImageFormat::Png).unwrap();
    let (status, v) = post("/api/predict", Some("image/png"), body.get_ref());
    assert_eq!((status, digit_of(&v)), (200, label), "{v}");
    // a PNG whose (valid) header claims 4096x4096 RGBA of 16-bit channels, 128 MiB
    // decoded, is refused before anything is allocated
    let small = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(8, 8, image::Rgba([0, 0, 0, 65535]));
    let mut body = std::io::Cursor::new(Vec::new());
    small.write_to(&mut body, image::ImageFormat::Png).unwrap();
    let (status, v) = post("/api/predict", Some("image/png"), &claiming(body.get_ref(), 4096, 4096));
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
}

/// `png` with its header rewritten to claim `width x height` (the header's CRC fixed,
/// so the decoder believes it).
fn claiming(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    assert_eq!(&out[12..16], b"IHDR");
    out[16..20].copy_from_slice(&width.to_be_bytes());
    out[20..24].copy_from_slice(&height.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&out[12..29]);
    out[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    out
}

#[test]
fn an_ensemble_is_served_as_the_mean_of_its_members() {
    let dir = workspace().join("crates/dl-models/weights/ensemble");
    let ensemble = Arc::new(Classifier::from_ensemble_dir(&dir).unwrap());
    assert_eq!(ensemble.members(), 5);
    assert!(
        ensemble.description().starts_with("ensemble of 5 from "),
        "{}",
        ensemble.description()
    );
    let (gray, label) = test_image(1);
    let input = digit_from_gray(28, 28, &gray).unwrap();
    let p = ensemble.classify(input.clone()).unwrap();
    assert_eq!(p.digit, label);
    // the mean of the members' probabilities
    let (members, _) = dl_train::Ensemble::load(&dir).unwrap();
    let mut mean = vec![0.0f32; 10];
    for net in members.into_members() {
        let one = Classifier::new(dl_train::Ensemble::new(vec![net]).unwrap(), "one");
        assert_eq!(one.members(), 1);
        for (m, q) in mean.iter_mut().zip(one.classify(input.clone()).unwrap().probabilities) {
            *m += q / 5.0;
        }
    }
    for (a, b) in p.probabilities.iter().zip(&mean) {
        assert!((a - b).abs() < 1e-6, "{:?} against {mean:?}", p.probabilities);
    }
    // a wrong input length is an error, not a panic
    assert!(ensemble.classify(vec![0.0; 10]).is_err());
}

#[test]
fn the_request_log_passes_every_answer_through() {
    // the same router with one line per request on stderr answers exactly as without
    let addr = start(dl_serve::RequestLog::Stderr);
    let (gray, label) = test_image(2);
    let text = ureq::post(&format!("http://{addr}/api/predict"))
        .set("Content-Type", "image/png")
        .send_bytes(&png(28, 28, &gray))
        .unwrap()
        .into_string()
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(digit_of(&v), label);
    let missing = ureq::get(&format!("http://{addr}/nowhere")).call().unwrap_err();
    assert!(matches!(missing, ureq::Error::Status(404, _)));
}

#[test]
fn two_hundred_requests_at_once_are_each_answered_correctly() {
    let c = classifier();
    let n = 200;
    let expected: Vec<(Vec<u8>, Vec<f32>)> = (0..n)
        .map(|i| {
            let (gray, _) = test_image(i);
            let p = c.classify(digit_from_gray(28, 28, &gray).unwrap()).unwrap();
            (png(28, 28, &gray), p.probabilities)
        })
        .collect();
    let addr = server();
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = expected
        .into_iter()
        .map(|(body, probs)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let text = ureq::post(&format!("http://{addr}/api/predict"))
                    .set("Content-Type", "image/png")
                    .send_bytes(&body)
                    .unwrap()
                    .into_string()
                    .unwrap();
                let resp: Value = serde_json::from_str(&text).unwrap();
                probabilities(&resp) == probs
            })
        })
        .collect();
    let right = handles.into_iter().map(|h| h.join().unwrap()).filter(|&ok| ok).count();
    assert_eq!(right, n);
    // the requests ran side by side, on copies of the model
    assert!(c.pooled() > 1, "{} copies", c.pooled());
}
