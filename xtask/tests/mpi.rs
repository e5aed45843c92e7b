//! `train --distributed` and `bench --distributed` under `mpirun` (a build with
//! `--features mpi`; `.ci/run` installs OpenMPI), and the message a build without MPI
//! gives.

use std::path::Path;
use std::process::Command;

fn data() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/mnist")
        .to_string_lossy()
        .into_owned()
}

/// A short run of the book's network, with dropout and augmentation.
const RUN: [&str; 11] = [
    "train",
    "--epochs",
    "1",
    "--train-limit",
    "401",
    "--batch-size",
    "50",
    "--eval-samples",
    "50",
    "--augment",
    "--overwrite",
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(RUN)
        .args(["--distributed", "--data", &data(), "--out"])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--features mpi") && err.contains("libopenmpi-dev"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists(), "nothing written");
}

#[cfg(feature = "mpi")]
fn mpirun(np: usize, args: &[&str], out: &Path) -> std::process::Output {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()])
        .args(["-x", "RAYON_NUM_THREADS=1"])
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .args(["--data", &data(), "--out"])
        .arg(out)
        .output()
        .expect("mpirun (OpenMPI) on the PATH")
}

/// 401 images in batches of 50: the last batch holds 1 image, so one rank's slice is
/// empty.
#[cfg(feature = "mpi")]
#[test]
fn two_ranks_train_what_one_process_with_two_micro_batches_trains() {
    let dir = tempfile::tempdir().unwrap();
    let (dist, single) = (dir.path().join("dist"), dir.path().join("single"));
    // --overwrite: the checkpoints of the run it replaces go, removed by rank 0
    let stale = dist.join("checkpoints/checkpoint-0009.safetensors");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"an older run's").unwrap();
    let out = mpirun(2, &[&RUN[..], &["--distributed"]].concat(), &dist);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stale.exists());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("2 ranks x 1 thread"), "{stdout}");
    for line in ["test accuracy:", "epoch   1 ", "checkpoints in "] {
        assert_eq!(stdout.matches(line).count(), 1, "rank 0 alone prints: {stdout}");
    }
    assert!(stdout.contains("in the gradients' all-reduce on rank 0"), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["--threads", "1"])
        .args(RUN)
        .args(["--micro-batches", "2", "--data", &data(), "--out"])
        .arg(&single)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let params = |d: &Path| std::fs::read(d.join("params.safetensors")).unwrap();
    assert!(params(&dist) == params(&single), "the same parameters, bit for bit");
    let losses = |d: &Path| {
        let h: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("history.json")).unwrap()).unwrap();
        (h["train_loss_list"].clone(), h["ranks"].clone())
    };
    let ((a, ranks_a), (b, ranks_b)) = (losses(&dist), losses(&single));
    assert_eq!(a, b);
    assert_eq!((ranks_a, ranks_b), (2.into(), 1.into()));
    // rank 1 wrote nothing: the one folder is rank 0's
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 2);
}

#[cfg(feature = "mpi")]
#[test]
fn a_rank_that_fails_ends_the_job_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let args = [
        &RUN[..],
        &["--distributed", "--from", "/nonexistent/params.safetensors"],
    ]
    .concat();
    let out = mpirun(2, &args, &dir.path().join("run"));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("of 2: error:") && err.contains("/nonexistent/params.safetensors"),
        "{err}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    // a job of one rank returns its error as a plain run does, without MPI_Abort
    let out = mpirun(1, &args, &dir.path().join("one"));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/params.safetensors") && !err.contains("rank 0 of 1"),
        "{err}"
    );
}

#[cfg(feature = "mpi")]
#[test]
fn bench_distributed_measures_one_process_and_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("dist.json");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "--threads",
            "2",
            "bench",
            "--distributed",
            "--windows",
            "1",
            "--iters",
            "3",
        ])
        .args(["--warmup", "1", "--batch", "20", "--data", &data(), "--json"])
        .arg(&json)
        // one rank is the one-process run, measured once
        .args(["--ranks", "1,2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let medians = r["medians"].as_array().unwrap();
    assert_eq!(medians.len(), 2);
    assert_eq!(medians[0][0], "1x2");
    assert_eq!(medians[1][0], "2x1");
    assert_eq!(medians[0][2], 1.0);
    assert!(medians[1][1].as_f64().unwrap() > 0.0);
    let (one, two) = (&r["runs"][0][1][0], &r["runs"][1][1][0]);
    assert_eq!((one["ranks"].as_u64(), one["threads"].as_u64()), (Some(1), Some(2)));
    assert_eq!((two["ranks"].as_u64(), two["threads"].as_u64()), (Some(2), Some(1)));
    assert_eq!(two["rank"], 0, "rank 0 reports");
    assert_eq!(two["buffer_floats"], 123_553);
    assert!(two["allreduce_alone_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(one["allreduce_ms"], 0.0);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    for f in [one, two] {
        let get = |k: &str| f[k].as_f64().unwrap();
        // 3 steps timed after 1 of warm-up, each of 20 images
        assert_eq!(f["steps"], 3, "{f}");
        let (train, warmup) = (get("train_seconds"), get("warmup_seconds"));
        assert!(warmup > 0.0 && warmup < train, "{f}");
        let timed = train - warmup;
        assert!(close(get("images_per_sec"), 3.0 * 20.0 / timed), "{f}");
        assert!(close(get("step_ms"), timed / 3.0 * 1e3), "{f}");
        // the all-reduce over every step of the epoch, the warm-up's included
        assert!(
            close(get("allreduce_ms"), get("communication_seconds") / 4.0 * 1e3),
            "{f}"
        );
    }
    assert!(two["communication_seconds"].as_f64().unwrap() > 0.0);
}

#[cfg(feature = "mpi")]
#[test]
fn bench_distributed_refuses_zero_windows_steps_or_batch_and_too_few_images() {
    for flag in ["--windows", "--iters", "--batch"] {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["bench", "--distributed", flag, "0", "--data", &data()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} 0");
        let err = text(&out.stderr);
        assert!(
            err.contains("--windows, --iters and --batch must be at least 1"),
            "{flag}: {err}"
        );
    }
    // more steps than the training set holds batches
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "bench",
            "--distributed",
            "--warmup",
            "5",
            "--iters",
            "1000",
            "--data",
            &data(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("the bench trains on 100500 images (5 + 1000 steps of 100), and this set has 60000"),
        "{err}"
    );
}
