//! `DLFS_SIMD` as a person sets it: a level the CPU has is taken, anything else stops
//! `cargo xtask` at once with exit code 2 and says why.

use std::process::Command;

fn xtask_with(simd: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("DLFS_SIMD", simd)
        .output()
        .unwrap()
}

#[test]
fn a_bad_dlfs_simd_is_refused_before_any_work() {
    let out = xtask_with("sse", &["plot", "nothing.json", "--out", "never.png"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DLFS_SIMD") && err.contains("unknown instruction set \"sse\""),
        "{err}"
    );
    assert!(!std::path::Path::new("never.png").exists());
    let missing = dl_tensor::Isa::ALL.into_iter().find(|i| !i.supported());
    if let Some(isa) = missing {
        let out = xtask_with(isa.name(), &["plot", "nothing.json", "--out", "never.png"]);
        assert_eq!(out.status.code(), Some(2), "{isa}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("cannot run {isa}")), "{err}");
    }
}

#[test]
fn a_level_the_cpu_has_and_an_empty_value_are_taken() {
    for simd in ["scalar", "", dl_tensor::Isa::best().name()] {
        // the command then fails for its own reason (no such file), not for DLFS_SIMD
        let out = xtask_with(simd, &["plot", "no-such-history.json", "--out", "never.png"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{simd:?}: {err}");
        assert!(!err.contains("DLFS_SIMD"), "{simd:?}: {err}");
    }
}
