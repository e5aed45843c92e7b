//! A packed 1-bit network (`cargo xtask quantize --bits 1`): reading and checking it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dl_infer::binary::BinaryNetwork::from_bytes(data);
});
