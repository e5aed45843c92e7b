//! The page in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol (chromiumoxide, its downloader off). For each digit 0-9 the first MNIST test
//! image of that digit is traced into pen strokes (thinned to its skeleton, the skeleton
//! followed into polylines), the strokes are drawn on the page's canvas with real mouse
//! events, and the page's answer is read back: at least 9 of 10 must be right. Then a
//! scanned digit (dark on white, JPEG) is uploaded through the page's file input.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium` package; `.ci/run` installs it), so it
//! is ignored by a plain `cargo test`:
//!
//! ```sh
//! cargo test -p dl-serve --test browser -- --ignored
//! ```
//!
//! The screenshot of the page after the last digit goes to `$DLFS_SCREENSHOT` (or to
//! `dlfs-page.png` in the temporary folder).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::dom::SetFileInputFilesParams;
use chromiumoxide::cdp::browser_protocol::input::{DispatchMouseEventParams, DispatchMouseEventType, MouseButton};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use dl_data::Mnist;
use dl_serve::Classifier;
use futures::StreamExt;
use serde::Deserialize;

const CHROMIUM: &str = "/usr/bin/chromium";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

type Pixel = (i32, i32);

/// Zhang and Suen's thinning (1984) of a binary 28x28 image: the one-pixel skeleton.
/// The conditions are written as in the paper (P2 P4 P6 = 0 and P4 P6 P8 = 0, ...).
#[allow(clippy::nonminimal_bool)]
fn thin(on: &mut [bool; 784]) {
    let at =
        |img: &[bool; 784], x: i32, y: i32| (0..28).contains(&x) && (0..28).contains(&y) && img[(y * 28 + x) as usize];
    loop {
        let mut changed = false;
        for step in 0..2 {
            let mut remove = Vec::new();
            for y in 0..28 {
                for x in 0..28 {
                    if !at(on, x, y) {
                        continue;
                    }
                    // P2..P9 clockwise from north
                    let p = [
                        at(on, x, y - 1),
                        at(on, x + 1, y - 1),
                        at(on, x + 1, y),
                        at(on, x + 1, y + 1),
                        at(on, x, y + 1),
                        at(on, x - 1, y + 1),
                        at(on, x - 1, y),
                        at(on, x - 1, y - 1),
                    ];
                    let b = p.iter().filter(|&&v| v).count();
                    let a = (0..8).filter(|&i| !p[i] && p[(i + 1) % 8]).count();
                    let (p2, p4, p6, p8) = (p[0], p[2], p[4], p[6]);
                    let ok = if step == 0 {
                        !(p2 && p4 && p6) && !(p4 && p6 && p8)
                    } else {
                        !(p2 && p4 && p8) && !(p2 && p6 && p8)
                    };
                    if (2..=6).contains(&b) && a == 1 && ok {
                        remove.push((y * 28 + x) as usize);
                    }
                }
            }
            changed |= !remove.is_empty();
            for i in remove {
                on[i] = false;
            }
        }
        if !changed {
            return;
        }
    }
}

/// The skeleton of a test digit as pen strokes (polylines in 28x28 pixel units).
fn trace(gray: &[u8]) -> Vec<Vec<Pixel>> {
    let mut on = [false; 784];
    for (o, &g) in on.iter_mut().zip(gray) {
        *o = g > 100;
    }
    thin(&mut on);
    let mut left: HashSet<Pixel> = (0..784)
        .filter(|&i| on[i])
        .map(|i| ((i % 28) as i32, (i / 28) as i32))
        .collect();
    let neighbours = |p: Pixel, left: &HashSet<Pixel>| -> Vec<Pixel> {
        // 4-neighbours first, so a walk does not cut corners
        [(0, -1), (1, 0), (0, 1), (-1, 0), (1, -1), (1, 1), (-1, 1), (-1, -1)]
            .iter()
            .map(|(dx, dy)| (p.0 + dx, p.1 + dy))
            .filter(|q| left.contains(q))
            .collect()
    };
    let mut strokes = Vec::new();
    while !left.is_empty() {
        // start at an end of a line where there is one
        let mut pixels: Vec<Pixel> = left.iter().copied().collect();
        pixels.sort();
        let start = pixels
            .iter()
            .copied()
            .find(|&p| neighbours(p, &left).len() == 1)
            .unwrap_or(pixels[0]);
        left.remove(&start);
        let mut stroke = vec![start];
        while let Some(&next) = neighbours(*stroke.last().unwrap(), &left).first() {
            left.remove(&next);
            stroke.push(next);
        }
        strokes.push(stroke);
    }
    strokes
}

async fn mouse(page: &Page, kind: DispatchMouseEventType, (x, y): (f64, f64), pressed: bool) {
    let mut b = DispatchMouseEventParams::builder().r#type(kind.clone()).x(x).y(y);
    if pressed || kind != DispatchMouseEventType::MouseMoved {
        b = b.button(MouseButton::Left).buttons(1).click_count(1);
    }
    page.execute(b.build().unwrap()).await.unwrap();
}

#[derive(Deserialize)]
struct Rect {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

async fn rect_of(page: &Page, id: &str) -> Rect {
    page.evaluate(format!(
        "(() => {{ const r = document.getElementById('{id}').getBoundingClientRect(); return {{left: r.left, top: r.top, width: r.width, height: r.height}}; }})()"
    ))
    .await
    .unwrap()
    .into_value()
    .unwrap()
}

/// Waits until the page shows the answer for its newest drawing, and returns it.
async fn answer(page: &Page) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    tokio::time::sleep(Duration::from_millis(100)).await;
    while Instant::now() < deadline {
        let v: Option<String> = page
            .evaluate(
                "(() => { const d = document.body.dataset; \
                 return d.idle === '1' && d.answered === d.sent ? d.digit : null; })()",
            )
            .await
            .unwrap()
            .into_value()
            .unwrap_or(None);
        if let Some(s) = v {
            return s.parse().ok();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium: cargo test -p dl-serve --test browser -- --ignored"]
async fn ten_digits_drawn_on_the_page_are_read_back() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
    );
    let classifier = Arc::new(
        Classifier::from_params(workspace().join("crates/dl-models/weights/deep_convnet.safetensors")).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(dl_serve::serve(
        listener,
        dl_serve::router(classifier, dl_serve::RequestLog::Off),
        std::future::pending(),
    ));

    let profile = std::env::temp_dir().join(format!("dlfs-chromium-{}", std::process::id()));
    let config = BrowserConfig::builder()
        .chrome_executable(CHROMIUM)
        .no_sandbox()
        .user_data_dir(&profile)
        .window_size(1000, 520)
        .viewport(None)
        .args([
            "--disable-gpu",
            "--disable-quic",
            "--disable-component-update",
            "--disable-background-networking",
        ])
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config).await.expect("Chromium starts");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page(format!("http://{addr}/")).await.unwrap();
    page.wait_for_navigation().await.unwrap();

    let mnist = Mnist::load(workspace().join("datasets/mnist")).unwrap();
    let pad = rect_of(&page, "pad").await;
    let clear = rect_of(&page, "clear").await;
    let scale = pad.width / 28.0;
    let to_page = |(x, y): Pixel| {
        (
            pad.left + (f64::from(x) + 0.5) * scale,
            pad.top + (f64::from(y) + 0.5) * pad.height / 28.0,
        )
    };
    let mut right = 0;
    for digit in 0..10usize {
        let index = mnist.test.labels.iter().position(|&l| usize::from(l) == digit).unwrap();
        let strokes = trace(&mnist.test.images[index * 784..(index + 1) * 784]);
        assert!(!strokes.is_empty());
        // clear the pad with a real click
        let c = (clear.left + clear.width / 2.0, clear.top + clear.height / 2.0);
        mouse(&page, DispatchMouseEventType::MousePressed, c, true).await;
        mouse(&page, DispatchMouseEventType::MouseReleased, c, true).await;
        for stroke in &strokes {
            mouse(&page, DispatchMouseEventType::MousePressed, to_page(stroke[0]), true).await;
            for &p in &stroke[1..] {
                mouse(&page, DispatchMouseEventType::MouseMoved, to_page(p), true).await;
            }
            mouse(
                &page,
                DispatchMouseEventType::MouseReleased,
                to_page(*stroke.last().unwrap()),
                true,
            )
            .await;
        }
        let seen = answer(&page).await;
        println!(
            "test image {index} (a {digit}), {} strokes: the page says {seen:?}",
            strokes.len()
        );
        right += usize::from(seen == Some(digit));
    }
    let shot = page
        .screenshot(ScreenshotParams::builder().full_page(true).build())
        .await
        .unwrap();
    let path = std::env::var_os("DLFS_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("dlfs-page.png"));
    std::fs::write(&path, shot).unwrap();
    println!("{right}/10 right; screenshot in {}", path.display());

    // the upload: a test 3 as a scan would give it (10x larger, dark on white, JPEG)
    let three = mnist.test.labels.iter().position(|&l| l == 3).unwrap();
    let img = &mnist.test.images[three * 784..(three + 1) * 784];
    let scan = image::GrayImage::from_fn(280, 280, |x, y| {
        image::Luma([255 - img[(y / 10 * 28 + x / 10) as usize]])
    });
    let file = std::env::temp_dir().join(format!("dlfs-upload-{}.jpg", std::process::id()));
    scan.save(&file).unwrap();
    let before: f64 = page
        .evaluate("Number(document.body.dataset.answered || 0)")
        .await
        .unwrap()
        .into_value()
        .unwrap();
    let input = page.find_element("#upload").await.unwrap();
    page.execute(
        SetFileInputFilesParams::builder()
            .files(vec![file.to_string_lossy().into_owned()])
            .backend_node_id(input.backend_node_id)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let mut uploaded = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while uploaded.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        uploaded = page
            .evaluate(format!(
                "(() => {{ const d = document.body.dataset; return Number(d.answered) > {before} ? d.digit : null; }})()"
            ))
            .await
            .unwrap()
            .into_value::<Option<String>>()
            .unwrap_or(None);
    }
    std::fs::remove_file(&file).ok();
    println!("uploaded a scan of test image {three} (a 3): the page says {uploaded:?}");
    browser.close().await.ok();
    browser.wait().await.ok();
    events.abort();
    std::fs::remove_dir_all(&profile).ok();
    assert!(right >= 9, "{right}/10 digits read back");
    assert_eq!(uploaded.as_deref(), Some("3"), "the uploaded picture");
}

#[test]
fn tracing_gives_one_pixel_wide_strokes_that_cover_the_skeleton() {
    // a filled 3-pixel-wide vertical bar thins to one line, traced as one stroke
    let mut gray = [0u8; 784];
    for y in 5..20 {
        for x in 10..13 {
            gray[y * 28 + x] = 255;
        }
    }
    let strokes = trace(&gray);
    assert_eq!(strokes.len(), 1, "{strokes:?}");
    let s = &strokes[0];
    assert!(s.len() >= 10, "{s:?}");
    assert!(s.iter().all(|p| p.0 == 11), "the middle column: {s:?}");
    assert!(
        s.windows(2).all(|w| (w[0].1 - w[1].1).abs() == 1),
        "steps of one pixel: {s:?}"
    );
    // two separate bars are two strokes
    for y in 5..20 {
        gray[y * 28 + 20] = 255;
    }
    assert_eq!(trace(&gray).len(), 2);
}
