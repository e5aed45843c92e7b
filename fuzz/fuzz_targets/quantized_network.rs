//! An 8-bit network (`cargo xtask quantize --bits 8`): reading and checking it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dl_infer::int8::QuantizedNetwork::from_bytes(data);
});
