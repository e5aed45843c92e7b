//! What a run prints: the book's per-epoch line when `verbose`, nothing otherwise. The
//! test runs a copy of this test binary as a child, whose output it reads.

use std::path::Path;
use std::process::Command;

use dl_data::Mnist;
use dl_models::{SimpleConvNet, SimpleConvNetConfig};
use dl_train::{Trainer, TrainerConfig};

/// Set in the child: `1` for a verbose run, `0` for a quiet one.
const CHILD: &str = "DL_TRAIN_VERBOSE_CHILD";

/// The child's run, started by the test below (ignored in a plain `cargo test`).
#[test]
#[ignore = "the verbose test's child"]
fn child_run() {
    let verbose = std::env::var(CHILD).expect("run as the verbose test's child");
    let mnist = Mnist::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")).unwrap();
    let (train, test) = (mnist.train.take(100), mnist.test.take(50));
    let mut net = SimpleConvNet::new(SimpleConvNetConfig::default(), 1).into_network();
    let cfg = TrainerConfig {
        epochs: 2,
        mini_batch_size: 50,
        verbose: verbose == "1",
        ..TrainerConfig::default()
    };
    Trainer::new(&mut net, &train, &test, cfg).unwrap().train().unwrap();
    println!("child done");
}

fn child_output(verbose: bool) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_run",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, if verbose { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_verbose_run_prints_the_books_epoch_lines_and_a_quiet_one_nothing() {
    let loud = child_output(true);
    let quiet = child_output(false);
    assert!(
        loud.contains("child done") && quiet.contains("child done"),
        "{loud}\n{quiet}"
    );
    for epoch in 1..=2 {
        assert!(loud.contains(&format!("=== epoch:{epoch}, train acc:")), "{loud}");
    }
    assert!(
        loud.contains(" Final Test Accuracy ") && loud.contains("===\ntest acc:"),
        "{loud}"
    );
    for word in ["epoch", "acc", "Accuracy"] {
        assert!(!quiet.contains(word), "{quiet}");
    }
}
