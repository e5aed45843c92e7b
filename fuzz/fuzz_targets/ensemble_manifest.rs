//! An ensemble's manifest (ensemble.json).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dl_train::Ensemble::parse_manifest(data, std::path::Path::new("fuzz"));
});
