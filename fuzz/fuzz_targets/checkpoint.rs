//! A training checkpoint (safetensors: parameters, optimizer and trainer state).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dl_train::checkpoint::from_bytes(data.to_vec(), std::path::Path::new("fuzz"));
});
