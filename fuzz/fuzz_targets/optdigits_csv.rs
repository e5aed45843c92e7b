//! scikit-learn's digits.csv (the optical digits' source), and each grid it yields made
//! into a 28x28 digit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((counts, _labels)) = dl_data::optdigits::parse_csv(text) {
        for grid in counts.chunks_exact(64).take(4) {
            let _ = dl_data::optdigits::to_mnist(grid);
        }
    }
});
