//! `cargo xtask download`: fetches MNIST-format data sets from the mirrors the common
//! frameworks use, verifies every file, and writes it atomically.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use md5::{Digest, Md5};

use crate::CliError;

/// How a downloaded `.gz` file is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// SHA-256 of the decompressed bytes (any mirror's recompression passes).
    Sha256Uncompressed(&'static str),
    /// MD5 of the `.gz` bytes as the mirror serves them (the hashes torchvision pins).
    Md5Gz(&'static str),
}

/// A data set in MNIST's four-file layout.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: &'static str,
    pub mirrors: Vec<String>,
    /// `(file name without .gz, check)`.
    pub files: Vec<(&'static str, Check)>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DatasetName {
    Mnist,
    FashionMnist,
    Kmnist,
}

impl DatasetName {
    fn spec(self) -> Spec {
        let [a, b, c, d] = dl_data::MNIST_FILES;
        match self {
            DatasetName::Mnist => Spec {
                name: "mnist",
                mirrors: vec![
                    "https://ossci-datasets.s3.amazonaws.com/mnist/".into(),
                    "https://storage.googleapis.com/cvdf-datasets/mnist/".into(),
                    "http://yann.lecun.com/exdb/mnist/".into(),
                ],
                files: vec![
                    (
                        a,
                        Check::Sha256Uncompressed("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                    ),
                    (
                        b,
                        Check::Sha256Uncompressed("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                    ),
                    (
                        c,
                        Check::Sha256Uncompressed("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                    ),
                    (
                        d,
                        Check::Sha256Uncompressed("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
                    ),
                ],
            },
            DatasetName::FashionMnist => Spec {
                name: "fashion-mnist",
                mirrors: vec!["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/".into()],
                files: vec![
                    (a, Check::Md5Gz("8d4fb7e6c68d591d4c3dfef9ec88bf0d")),
                    (b, Check::Md5Gz("25c81989df183df01b3e8a0aad5dffbe")),
                    (c, Check::Md5Gz("bef4ecab320f06d8554ea6380940ec79")),
                    (d, Check::Md5Gz("bb300cfdad3c16e7a12a480ee83cd310")),
                ],
            },
            DatasetName::Kmnist => Spec {
                name: "kmnist",
                mirrors: vec!["http://codh.rois.ac.jp/kmnist/dataset/kmnist/".into()],
                files: vec![
                    (a, Check::Md5Gz("bdb82020997e1d708af4cf47b453dcf7")),
                    (b, Check::Md5Gz("e144d726b3acfaa3e44228e80efcd344")),
                    (c, Check::Md5Gz("5c965bf0a639b31b8f53240b1b52f4d7")),
                    (d, Check::Md5Gz("7320c461ea6c1c855c0b718fb2a4b134")),
                ],
            },
        }
    }
}

#[derive(Args)]
pub struct DownloadArgs {
    /// Which data set.
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetName,
    /// Destination folder (default: `datasets/NAME` in the workspace).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use this base URL instead of the built-in mirrors (a local copy, a proxy).
    #[arg(long)]
    mirror: Option<String>,
}

pub fn run(a: DownloadArgs) -> Result<(), CliError> {
    let mut spec = a.dataset.spec();
    if let Some(m) = a.mirror {
        spec.mirrors = vec![if m.ends_with('/') { m } else { format!("{m}/") }];
    }
    let dir = a.dir.unwrap_or_else(|| crate::root().join("datasets").join(spec.name));
    for line in download(&spec, &dir)? {
        println!("{line}");
    }
    println!("{} is ready in {}", spec.name, dir.display());
    Ok(())
}

/// Why one file could not be taken from one mirror.
#[derive(Debug)]
enum Fetch {
    /// Could not connect or the transfer broke off: a network problem.
    Network(String),
    /// The bytes arrived but are not the right file.
    Bad(String),
}

/// The MD5 of `bytes` in lowercase hex.
fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn verify(bytes: &[u8], check: Check, name: &str) -> Result<Vec<u8>, String> {
    if let Check::Md5Gz(want) = check {
        let got = md5_hex(bytes);
        if got != want {
            return Err(format!("{name}: MD5 {got}, expected {want}"));
        }
    }
    let mut raw = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .map_err(|e| format!("{name}: corrupt gzip: {e}"))?;
    } else {
        raw = bytes.to_vec();
    }
    if let Check::Sha256Uncompressed(want) = check {
        let got = dl_data::sha256_hex(&raw);
        if got != want {
            return Err(format!("{name}: SHA-256 of the content {got}, expected {want}"));
        }
    }
    dl_data::parse_idx(&raw, name).map_err(|e| e.to_string())?;
    Ok(raw)
}

fn fetch(url: &str) -> Result<Vec<u8>, Fetch> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .build();
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => Fetch::Bad(format!("{url}: HTTP {code}")),
        ureq::Error::Transport(t) => Fetch::Network(format!("{url}: {t}")),
    })?;
    let expected: Option<usize> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(512 << 20)
        .read_to_end(&mut bytes)
        .map_err(|e| Fetch::Network(format!("{url}: transfer broke off after {} bytes: {e}", bytes.len())))?;
    if let Some(n) = expected {
        if bytes.len() != n {
            return Err(Fetch::Network(format!(
                "{url}: transfer broke off: {} of {n} bytes",
                bytes.len()
            )));
        }
    }
    Ok(bytes)
}

/// The file already in `dir` (raw or `.gz`) verifies against `check`.
fn present(dir: &Path, name: &str, check: Check) -> Option<String> {
    let gz = dir.join(format!("{name}.gz"));
    let raw = dir.join(name);
    for p in [gz, raw] {
        if let Ok(bytes) = std::fs::read(&p) {
            // A raw file cannot be checked against the MD5 of a .gz: accept it when it is
            // a valid IDX file and an earlier download recorded its SHA-256.
            if let Ok(content) = verify(&bytes, check, name) {
                return Some(dl_data::sha256_hex(&content));
            }
        }
    }
    None
}

/// Downloads every file of `spec` missing from `dir`, trying each mirror in turn.
/// Files are verified before they are written, written atomically, and a
/// `SHA256SUMS.uncompressed` manifest is written beside them so that every later load
/// checks them.
pub fn download(spec: &Spec, dir: &Path) -> Result<Vec<String>, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::Other(format!("{}: {e}", dir.display())))?;
    let mut log = Vec::new();
    let mut manifest = String::new();
    for &(name, check) in &spec.files {
        if let Some(sha) = present(dir, name, check) {
            log.push(format!("{name}: already present and verified"));
            manifest.push_str(&format!("{sha}  {name}\n"));
            continue;
        }
        let mut problems = Vec::new();
        let mut offline = true;
        let mut done = None;
        for mirror in &spec.mirrors {
            let url = format!("{mirror}{name}.gz");
            match fetch(&url).and_then(|b| verify(&b, check, name).map(|raw| (b, raw)).map_err(Fetch::Bad)) {
                Ok((gz, raw)) => {
                    let dest = dir.join(format!("{name}.gz"));
                    dl_tensor::fs::atomic_write(&dest, &gz)
                        .map_err(|e| CliError::Other(format!("{}: {e}", dest.display())))?;
                    done = Some((url, dl_data::sha256_hex(&raw), gz.len()));
                    break;
                }
                Err(Fetch::Network(m)) => problems.push(m),
                Err(Fetch::Bad(m)) => {
                    offline = false;
                    problems.push(m)
                }
            }
        }
        match done {
            Some((url, sha, len)) => {
                log.push(format!("{name}: {len} bytes from {url}, verified"));
                manifest.push_str(&format!("{sha}  {name}\n"));
            }
            None if offline => {
                return Err(CliError::Other(format!(
                    "could not reach any mirror for {name} (offline?):\n  {}\nDownload the four files \
                     ({}) by hand into {} (raw or .gz), then run this again to verify them.",
                    problems.join("\n  "),
                    spec.files
                        .iter()
                        .map(|f| format!("{}.gz", f.0))
                        .collect::<Vec<_>>()
                        .join(", "),
                    dir.display()
                )))
            }
            None => {
                return Err(CliError::Other(format!(
                    "no mirror served a valid {name}; nothing was written:\n  {}",
                    problems.join("\n  ")
                )))
            }
        }
    }
    let mpath = dir.join(dl_data::MANIFEST);
    dl_tensor::fs::atomic_write(&mpath, manifest.as_bytes())
        .map_err(|e| CliError::Other(format!("{}: {e}", mpath.display())))?;
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    fn idx(dims: &[u32], fill: u8) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        let n: u32 = dims.iter().product();
        v.extend((0..n).map(|i| (i as u8).wrapping_mul(fill) % 10));
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Serves `files` on 127.0.0.1; a path in `break_off` gets its full Content-Length
    /// but only half of its bytes before the connection closes.
    fn serve(files: HashMap<String, Vec<u8>>, break_off: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(64) {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_string();
                seen.lock().unwrap().push(path.clone());
                match files.get(&path) {
                    Some(body) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(head.as_bytes());
                        let n = if break_off.contains(&path) {
                            body.len() / 2
                        } else {
                            body.len()
                        };
                        let _ = stream.write_all(&body[..n]);
                    }
                    None => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            }
        });
        (base, hits)
    }

    fn tiny_files() -> Vec<(&'static str, Vec<u8>)> {
        let [a, b, c, d] = dl_data::MNIST_FILES;
        vec![
            (a, idx(&[3, 2, 2], 3)),
            (b, idx(&[3], 1)),
            (c, idx(&[2, 2, 2], 7)),
            (d, idx(&[2], 1)),
        ]
    }

    fn spec_for(base: &str, files: &[(&'static str, Vec<u8>)]) -> Spec {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        Spec {
            name: "tiny",
            mirrors: vec![base.to_string()],
            files: files
                .iter()
                .map(|(n, raw)| (*n, Check::Sha256Uncompressed(leak(dl_data::sha256_hex(raw)))))
                .collect(),
        }
    }

    #[test]
    fn downloads_verifies_writes_manifest_and_skips_what_is_present() {
        let files = tiny_files();
        let served = files.iter().map(|(n, raw)| (format!("{n}.gz"), gz(raw))).collect();
        let (base, hits) = serve(served, vec![]);
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_for(&base, &files);
        let log = download(&spec, dir.path()).unwrap();
        assert!(log.iter().all(|l| l.contains("verified")), "{log:?}");
        let m = dl_data::Mnist::load(dir.path()).unwrap();
        assert_eq!(m.train.len(), 3);
        assert!(dir.path().join(dl_data::MANIFEST).is_file());
        let n = hits.lock().unwrap().len();
        assert_eq!(n, 4);
        // a second run fetches nothing
        let log = download(&spec, dir.path()).unwrap();
        assert!(log.iter().all(|l| l.contains("already present")), "{log:?}");
        assert_eq!(hits.lock().unwrap().len(), 4);
    }

    #[test]
    fn a_corrupted_file_is_a_checksum_error_and_nothing_is_left_behind() {
        let files = tiny_files();
        let mut served: HashMap<String, Vec<u8>> = files.iter().map(|(n, raw)| (format!("{n}.gz"), gz(raw))).collect();
        let mut bad = files[2].1.clone();
        *bad.last_mut().unwrap() ^= 1; // valid IDX, wrong content
        served.insert(format!("{}.gz", files[2].0), gz(&bad));
        let (base, _) = serve(served, vec![]);
        let dir = tempfile::tempdir().unwrap();
        let e = download(&spec_for(&base, &files), dir.path()).unwrap_err().to_string();
        assert!(e.contains("SHA-256") && e.contains("nothing was written"), "{e}");
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!left.iter().any(|f| f.starts_with(files[2].0)), "{left:?}");
        assert!(!left.iter().any(|f| f.contains("tmp")), "{left:?}");
    }

    #[test]
    fn a_transfer_that_breaks_off_is_reported_and_leaves_nothing() {
        let files = tiny_files();
        let served = files.iter().map(|(n, raw)| (format!("{n}.gz"), gz(raw))).collect();
        let broken = format!("{}.gz", files[0].0);
        let (base, _) = serve(served, vec![broken]);
        let dir = tempfile::tempdir().unwrap();
        let e = download(&spec_for(&base, &files), dir.path()).unwrap_err().to_string();
        assert!(e.contains("broke off") && e.contains("by hand"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn offline_says_where_to_put_the_files() {
        // a port nothing listens on
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let files = tiny_files();
        let dir = tempfile::tempdir().unwrap();
        let e = download(&spec_for(&format!("http://127.0.0.1:{port}/"), &files), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("offline") && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
    }

    /// The Fashion-MNIST and KMNIST files are checked by the MD5 of their `.gz`.
    #[test]
    fn a_gz_is_checked_against_its_md5() {
        let files = tiny_files();
        let served: HashMap<String, Vec<u8>> = files.iter().map(|(n, raw)| (format!("{n}.gz"), gz(raw))).collect();
        let (base, _) = serve(served.clone(), vec![]);
        // RFC 1321's test suite
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        let md5 = |bytes: &[u8]| -> &'static str { Box::leak(md5_hex(bytes).into_boxed_str()) };
        let spec = |wrong: bool| Spec {
            name: "tiny",
            mirrors: vec![base.clone()],
            files: files
                .iter()
                .map(|(n, _)| {
                    let sum = md5(&served[&format!("{n}.gz")]);
                    (*n, Check::Md5Gz(if wrong { md5(b"other") } else { sum }))
                })
                .collect(),
        };
        let bad = tempfile::tempdir().unwrap();
        let e = download(&spec(true), bad.path()).unwrap_err().to_string();
        assert!(e.contains("MD5") && e.contains("nothing was written"), "{e}");
        let good = tempfile::tempdir().unwrap();
        download(&spec(false), good.path()).unwrap();
        assert_eq!(dl_data::Mnist::load(good.path()).unwrap().train.len(), 3);
    }

    /// `cargo xtask download --mirror URL` as a person runs it: a base URL without its
    /// last slash, the built-in checksums, the files where `--dir` says.
    #[test]
    fn the_command_fetches_mnist_from_the_mirror_it_is_given() {
        let shipped = crate::default_data_dir();
        let served = dl_data::MNIST_FILES
            .iter()
            .map(|n| {
                (
                    format!("{n}.gz"),
                    std::fs::read(shipped.join(format!("{n}.gz"))).unwrap(),
                )
            })
            .collect();
        let (base, hits) = serve(served, vec![]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mnist");
        run(DownloadArgs {
            dataset: DatasetName::Mnist,
            dir: Some(out.clone()),
            mirror: Some(base.trim_end_matches('/').to_string()),
        })
        .unwrap();
        let mut asked = hits.lock().unwrap().clone();
        asked.sort();
        let mut want: Vec<String> = dl_data::MNIST_FILES.iter().map(|n| format!("{n}.gz")).collect();
        want.sort();
        assert_eq!(asked, want);
        let m = dl_data::Mnist::load(&out).unwrap();
        assert_eq!((m.train.len(), m.test.len()), (60_000, 10_000));
    }

    #[test]
    fn the_shipped_mnist_verifies_against_the_built_in_hashes() {
        let dir = crate::default_data_dir();
        for (name, check) in DatasetName::Mnist.spec().files {
            assert!(present(&dir, name, check).is_some(), "{name}");
        }
    }
}
