//! IDX files (MNIST's format), raw or gzip: decompression and parsing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bytes) = dl_data::decompress_maybe_gzip(data, "fuzz") {
        let _ = dl_data::parse_idx(&bytes, "fuzz");
    }
});
