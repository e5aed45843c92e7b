//! The book's pickled parameters, read by dlfs's own restricted unpickler.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dl_models::book::parse_pickled_arrays(data, std::path::Path::new("fuzz"));
});
