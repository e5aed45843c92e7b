//! A training process killed (SIGKILL) at random moments, over and over, and resumed each
//! time from what is on disk: every checkpoint file found is whole and loads, and the run
//! ends with the parameters of a run that was never killed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `cargo xtask ARGS` in `cwd`; a new run reads the shipped MNIST (a resumed one takes
/// the folder from its run.json).
fn xtask(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(["--threads", "1"]).args(args);
    if !args.contains(&"--resume") {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/mnist");
        c.args(["--data", data.to_str().unwrap()]);
    }
    c.current_dir(cwd).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// Many short epochs of a small network, one checkpoint after each.
const RUN: [&str; 15] = [
    "train",
    "--model",
    "simple",
    "--epochs",
    "40",
    "--train-limit",
    "300",
    "--batch-size",
    "50",
    "--eval-samples",
    "50",
    "--augment",
    "--keep-checkpoints",
    "3",
    "--overwrite",
];

/// The epoch of the newest checkpoint in `dir` (0 when there is none).
fn newest(dir: &Path) -> usize {
    dl_train::checkpoint::list(dir)
        .ok()
        .and_then(|l| l.last().map(|(e, _)| *e))
        .unwrap_or(0)
}

/// Every checkpoint in `dir` reads as a checkpoint and loads as a network.
fn all_whole(dir: &Path) -> usize {
    let Ok(list) = dl_train::checkpoint::list(dir) else {
        return 0;
    };
    for (epoch, path) in &list {
        let c = dl_train::checkpoint::read(path).unwrap_or_else(|e| panic!("torn checkpoint {epoch}: {e}"));
        assert_eq!(c.trainer.epoch, *epoch);
        dl_models::load(path).unwrap_or_else(|e| panic!("checkpoint {epoch} does not load: {e}"));
    }
    list.len()
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_unbroken_result() {
    let dir = tempfile::tempdir().unwrap();
    let status = xtask(&[&RUN[..], &["--out", "whole"]].concat(), dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let want = std::fs::read(dir.path().join("whole/params.safetensors")).unwrap();

    let run = dir.path().join("killed");
    let checkpoints = run.join("checkpoints");
    // a fixed sequence of delays (a small LCG), so a failure can be replayed
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut kills = 0;
    let mut seen = 0;
    for _ in 0..12 {
        let resumable = run.join("run.json").is_file() && all_whole(&checkpoints) > 0;
        let mut child = if resumable {
            xtask(&["train", "--resume", "killed"], dir.path()).spawn().unwrap()
        } else {
            xtask(&[&RUN[..], &["--out", "killed"]].concat(), dir.path())
                .spawn()
                .unwrap()
        };
        // let it get past its next checkpoint, then kill it somewhere in the epoch after
        let before = newest(&checkpoints);
        while child.try_wait().unwrap().is_none() && newest(&checkpoints) <= before {
            std::thread::sleep(Duration::from_millis(5));
        }
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis((x >> 33) % 700));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        seen = seen.max(all_whole(&checkpoints));
        if run.join("params.safetensors").is_file() {
            break;
        }
    }
    eprintln!("{kills} kills, up to {seen} checkpoints on disk between them");
    assert!(
        kills >= 3,
        "only {kills} kills landed: the run is too short for this test"
    );
    assert!(seen > 0, "no checkpoint was ever written between kills");
    if !run.join("params.safetensors").is_file() {
        let status = xtask(&["train", "--resume", "killed"], dir.path()).status().unwrap();
        assert!(status.success());
    }
    assert!(
        std::fs::read(run.join("params.safetensors")).unwrap() == want,
        "after {kills} kills the run ends elsewhere than the unbroken run"
    );
    // nothing half-written is left lying around
    let stray: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(stray.len() <= 1, "{stray:?}");
}
