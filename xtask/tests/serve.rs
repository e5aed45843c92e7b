//! `cargo xtask serve` as a person runs it: it says where it listens, answers the page
//! and the API, logs one line per request, refuses a port already taken, and stops
//! cleanly on Ctrl-C (SIGINT), letting the request in flight finish.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

fn xtask(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

#[test]
fn serve_answers_logs_and_stops_on_ctrl_c() {
    let mut child = xtask(&["serve", "--addr", "127.0.0.1:0"]).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    // "serving DeepConvNet from ... at http://127.0.0.1:PORT/  (Ctrl-C stops)"
    assert!(first.starts_with("serving DeepConvNet from "), "{first}");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "loopback: {url}");

    let page = ureq::get(&url).call().unwrap().into_string().unwrap();
    assert!(page.contains("Draw a digit"));
    let body = serde_json::json!({ "width": 3, "height": 3, "pixels": [0, 255, 0, 0, 255, 0, 0, 255, 0] });
    let answer = ureq::post(&format!("{url}api/predict"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .unwrap()
        .into_string()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["digit"], 1, "a vertical bar is a one: {answer}");

    // a second server on the same port is refused with a clear message
    let port = url.trim_end_matches('/').rsplit(':').next().unwrap();
    let taken = xtask(&["serve", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!taken.status.success());
    let err = String::from_utf8_lossy(&taken.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");

    // Ctrl-C
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let code = child.wait().unwrap();
    assert!(code.success(), "exit {code:?}; stderr: {log}");
    assert_eq!(rest.trim(), "stopped");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "one line per request: {log}");
    assert!(lines[0].starts_with("GET / 200 ") && lines[0].ends_with(" ms"), "{log}");
    assert!(lines[1].starts_with("POST /api/predict 200 "), "{log}");
    // and the port is free again
    std::thread::sleep(Duration::from_millis(100));
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
}

#[test]
fn predict_prints_each_file_and_fails_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let bar = dir.path().join("bar.png");
    let mut img = image::GrayImage::from_pixel(40, 40, image::Luma([255]));
    for y in 5..35 {
        img.put_pixel(20, y, image::Luma([0]));
    }
    img.save(&bar).unwrap();
    let ok = xtask(&["predict", bar.to_str().unwrap()]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.starts_with(&format!("{}: 1 (", bar.display())), "{text}");

    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG but not really").unwrap();
    let bad = xtask(&["predict", bar.to_str().unwrap(), junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains(&format!("{}: error: cannot read the image", junk.display())),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1 of 2 images could not be read"));
}
