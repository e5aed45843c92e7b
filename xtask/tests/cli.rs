//! The global flags as a person types them: `--threads 0` stops `cargo xtask` at once
//! with exit code 2 and says why; a valid count goes on to the command.

use std::process::Command;

fn xtask(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
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
