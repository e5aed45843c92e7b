//! A saved network (safetensors with the model's kind and configuration in its
//! metadata): rebuilding the model and loading its parameters.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dl_models::registry::load_from_bytes(data, std::path::Path::new("fuzz"));
});
