//! Data-parallel training on real MPI processes: `mpirun -np 2` and `-np 3` on this
//! machine (loopback), running the ranks in `src/bin/dl-mpi-check.rs`. Needs the `mpi`
//! feature and OpenMPI's `mpirun` (`.ci/run` installs it).
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dl_data::Mnist;
use dl_models::{DeepConvNet, DeepConvNetConfig};
use dl_train::{Trainer, TrainerConfig};

const RANKS: &str = env!("CARGO_BIN_EXE_dl-mpi-check");

/// `mpirun -np N dl-mpi-check ARGS`, killed (and the test failed) after `limit`.
fn mpirun(np: usize, args: &[&str], limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string(), RANKS])
        .args(args)
        // one thread per rank: the ranks share this machine's cores
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (OpenMPI) on the PATH");
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("mpirun -np {np} {args:?} still running after {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().expect("output"), start.elapsed())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn broadcast_sum_and_gather_on_2_and_3_processes() {
    for np in [2, 3] {
        let (out, _) = mpirun(np, &["collectives"], Duration::from_secs(60));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let gathered: Vec<String> = (0..np).map(|r| (100 + r).to_string()).collect();
        // every rank runs on this machine: MPI's processor name is its host name
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        for r in 0..np {
            let want = format!("rank {r} host {}", host.trim());
            assert!(stdout.contains(&want), "missing {want:?} in\n{stdout}");
        }
        // ranks 0..np hold 1e8, 1, -1e8: in rank order (1e8 + 1) - 1e8 = 0 in f32
        let sum = if np == 2 { "[100000000.0, 1.0]" } else { "[0.0, 3.0]" };
        for r in 0..np {
            for red in ["Ordered", "Native"] {
                let want = format!(
                    "rank {r} {red} b=[{last}.0, {last}.0, {last}.0] d=[0.5] g=[{}] s={sum}",
                    gathered.join(", "),
                    last = np - 1
                );
                assert!(stdout.contains(&want), "missing {want:?} in\n{stdout}");
                let shown = format!("Mpi {{ rank: {r}, size: {np}, reduction: {red} }}");
                assert!(stdout.contains(&shown), "missing {shown:?} in\n{stdout}");
            }
        }
    }
}

fn single_process(images: usize, micro_batches: usize) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist");
    let mnist = Mnist::load(dir).unwrap();
    let (train, test) = (mnist.train.take(images), mnist.test.take(100));
    // the ranks' settings (src/bin/dl-mpi-check.rs)
    let cfg = TrainerConfig {
        epochs: 1,
        mini_batch_size: 50,
        seed: 7,
        evaluate_sample_num_per_epoch: Some(50),
        augment: Some(dl_data::Pipeline::mnist(false, 7)),
        micro_batches,
        ..TrainerConfig::default()
    };
    let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 0).into_network();
    Trainer::new(&mut net, &train, &test, cfg).unwrap().train().unwrap();
    let mut bytes = Vec::new();
    net.visit_state_mut(|t| t.iter().for_each(|v| bytes.extend(v.to_le_bytes())));
    bytes
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// 2,501 images in batches of 50: 51 steps, the last a batch of 1 (empty slices on
/// all ranks but one). N processes give, bit for bit, the parameters of one process
/// that sums the gradients of the same N slices.
#[test]
fn n_processes_train_bit_for_bit_what_one_process_summing_n_slices_trains() {
    let dir = tempfile::tempdir().unwrap();
    for (np, reduction) in [(2, "ordered"), (3, "ordered"), (2, "native")] {
        let out_file = dir.path().join(format!("{np}-{reduction}.bin"));
        let (out, _) = mpirun(
            np,
            &["train", out_file.to_str().unwrap(), reduction, "2501"],
            Duration::from_secs(300),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("steps 51 ranks {np} ")),
            "{}",
            text(&out.stdout)
        );
        let got = std::fs::read(&out_file).unwrap();
        let want = single_process(2501, np);
        assert!(
            got == want,
            "{np} ranks ({reduction}) differ from one process summing {np} slices"
        );
        // against one process computing each batch whole, only the rounding of the
        // sums differs at first; over 51 steps it grows (docs/PERFORMANCE.md)
        let (a, b) = (floats(&got), floats(&single_process(2501, 1)));
        let d: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let n: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        eprintln!(
            "{np} ranks ({reduction}) against whole batches: relative {:e}",
            (d / n).sqrt()
        );
    }
}

#[test]
fn a_rank_that_cannot_read_its_file_ends_the_job_with_its_message() {
    let (out, took) = mpirun(2, &["bad-file"], Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("rank 1: error:") && stderr.contains("/nonexistent/params.safetensors"),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("finished"));
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_diverging_loss_stops_every_rank_together() {
    let (out, _) = mpirun(3, &["nan"], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for r in 0..3 {
        assert!(
            stdout.contains(&format!("rank {r} stopped: the training loss diverged")),
            "{stdout}"
        );
    }
}

#[test]
fn a_killed_rank_ends_the_job_within_seconds() {
    let (out, took) = mpirun(2, &["kill"], Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("finished"), "{}", text(&out.stdout));
    assert!(took < Duration::from_secs(30), "{took:?}");
}
