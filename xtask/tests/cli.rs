//! The command line as a person types it: `--threads 0` stops `cargo xtask` at once
//! with exit code 2 and says why; a valid count goes on to the command; and what
//! commands print.

use std::process::Command;

fn xtask(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The stdout of `cargo xtask ARGS`, which must succeed.
fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn a_thread_count_of_zero_is_refused_and_others_are_taken() {
    let plot = ["plot", "no-such-history.json", "--out", "never.png"];
    let (code, err) = xtask(&[&["--threads", "0"][..], &plot].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--threads must be at least 1"), "{err}");
    for n in ["1", "3"] {
        // the command then fails for its own reason (no such file)
        let (code, err) = xtask(&[&["--threads", n][..], &plot].concat());
        assert_eq!(code, Some(1), "{n}: {err}");
        assert!(
            err.contains("no-such-history.json") && !err.contains("--threads"),
            "{n}: {err}"
        );
    }
    assert!(!std::path::Path::new("never.png").exists());
}

/// The figure of `eval`'s last line, `validation accuracy: 0.9950 (...)`.
fn validation_accuracy(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("validation accuracy: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no accuracy line: {stdout}"))
        .parse()
        .unwrap()
}

/// `eval` of a network at a precision, and of the shipped ensemble, prints the accuracy
/// on the images it scored (here 200 held out of the training images).
#[test]
fn eval_prints_its_accuracy() {
    for args in [
        &["--precision", "f16"][..],
        &["--ensemble"],
        &["--ensemble", "--precision", "bf16"],
    ] {
        let text = stdout_of(&[&["eval", "--validation", "200"][..], args].concat());
        let accuracy = validation_accuracy(&text);
        assert!(accuracy > 0.95 && accuracy <= 1.0, "{args:?}: {accuracy}");
    }
}

/// `eval --tta` names the views it scored with; without it, no views are named.
#[test]
fn eval_names_its_test_time_views() {
    let plain = stdout_of(&["eval", "--validation", "100", "--ensemble"]);
    assert!(!plain.contains("test-time views"), "{plain}");
    let viewed = stdout_of(&["eval", "--validation", "100", "--ensemble", "--tta", "shifts,rotate:5"]);
    let line = "test-time views: shift:-1:0, shift:1:0, shift:0:-1, shift:0:1, rotate:5";
    assert!(viewed.lines().any(|l| l == line), "{viewed}");
    let accuracy = validation_accuracy(&viewed);
    assert!(accuracy > 0.95 && accuracy <= 1.0, "{accuracy}");
}

/// `misclassified` of several files prints, for each error, how many members make it
/// on their own, and how many digits any member misreads; of one file, neither.
#[test]
fn misclassified_counts_the_members_behind_each_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.png");
    let member = |k: usize| {
        format!(
            "{}/../crates/dl-models/weights/ensemble/member-{k}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let (m0, m1) = (member(0), member(1));
    let base = [
        "misclassified",
        "--validation",
        "1000",
        "--out",
        out.to_str().unwrap(),
        // the second run replaces the first's grid
        "--overwrite",
        "--params",
    ];
    let two = stdout_of(&[&base[..], &[m0.as_str(), m1.as_str()]].concat());
    let errors: Vec<&str> = two.lines().filter(|l| l.starts_with("validation image")).collect();
    assert!(!errors.is_empty(), "{two}");
    for l in &errors {
        assert!(
            l.ends_with(", 1 of 2 members wrong") || l.ends_with(", 2 of 2 members wrong"),
            "{l}"
        );
    }
    let any: usize = two
        .lines()
        .find_map(|l| l.strip_suffix(" of 1000 validation digits misread by at least one of the 2 members"))
        .unwrap_or_else(|| panic!("no count of the members' misses in {two}"))
        .parse()
        .unwrap();
    assert!(any >= errors.len(), "{two}");
    let one = stdout_of(&[&base[..], &[m0.as_str()]].concat());
    assert!(one.lines().any(|l| l.starts_with("validation image")), "{one}");
    assert!(!one.contains("members"), "{one}");
}

/// `eval` of an int8 file scores it by its own kernels and prints the accuracy.
#[test]
fn eval_of_a_quantized_file_prints_its_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("int8.safetensors");
    let q = q.to_str().unwrap();
    stdout_of(&["quantize", "--calibrate", "100", "--out", q]);
    let text = stdout_of(&["eval", "--validation", "200", "--params", q]);
    assert!(text.contains("int8 network"), "{text}");
    let accuracy = validation_accuracy(&text);
    assert!(accuracy > 0.95 && accuracy <= 1.0, "{accuracy}");
}

/// `train` prints a line for each epoch and where it wrote the run.
#[test]
fn train_prints_a_line_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let text = stdout_of(&[
        "train",
        "--model",
        "simple",
        "--epochs",
        "2",
        "--train-limit",
        "200",
        "--eval-samples",
        "50",
        "--out",
        run.to_str().unwrap(),
    ]);
    let epochs: Vec<&str> = text.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(epochs.len(), 2, "{text}");
    for (i, line) in epochs.iter().enumerate() {
        assert!(line.starts_with(&format!("epoch {:>3}  loss ", i + 1)), "{line}");
        assert!(line.contains("test acc") && line.contains("img/s)"), "{line}");
    }
    assert!(!text.contains("products in bf16"), "an f32 run: {text}");
    assert!(run.join("params.safetensors").is_file());
}

/// A bad training flag stops `train` before it writes anything: no folder for a new
/// run, and the run it would replace (`--overwrite`) left as it was.
#[test]
fn a_bad_training_flag_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    let checkpoint = old.join("checkpoints").join("checkpoint-0001.safetensors");
    std::fs::create_dir_all(old.join("checkpoints")).unwrap();
    std::fs::write(old.join("run.json"), "the user's run").unwrap();
    std::fs::write(&checkpoint, "its checkpoint").unwrap();
    let new = dir.path().join("new");
    let (old_dir, new_dir) = (old.to_str().unwrap(), new.to_str().unwrap());
    let base = ["train", "--model", "simple", "--epochs", "1"];
    let few = ["--train-limit", "100"];
    for (flags, says) in [
        (&["--train-limit", "0"][..], "no training images are left"),
        (&["--batch-size", "0"], "mini-batch size must be at least 1"),
        (&["--lr", "0"], "invalid learning rate 0"),
        (&["--weight-decay", "NaN"], "invalid weight decay NaN"),
        (&["--optimizer", "adamw"], "unknown optimizer \"adamw\""),
        (&["--early-stop", "0"], "early-stop patience must be at least 1"),
        (
            &["--lr-decay", "step", "--step-size", "0"],
            "--step-size must be at least 1",
        ),
        (
            &["--lr-factor", "W1=0.5", "--lr-factor", "conv9=0.1"],
            "lies under \"conv9\"",
        ),
    ] {
        for out in [&["--out", new_dir][..], &["--out", old_dir, "--overwrite"]] {
            let limit = if flags.contains(&"--train-limit") {
                &[][..]
            } else {
                &few
            };
            let (code, err) = xtask(&[&base[..], limit, flags, out].concat());
            assert_eq!(code, Some(1), "{flags:?} {out:?}: {err}");
            assert!(err.contains(says), "{flags:?} {out:?}: {err}");
        }
        assert!(!new.exists(), "{flags:?}");
        assert_eq!(std::fs::read_to_string(old.join("run.json")).unwrap(), "the user's run");
        assert_eq!(std::fs::read_to_string(&checkpoint).unwrap(), "its checkpoint");
    }
}
