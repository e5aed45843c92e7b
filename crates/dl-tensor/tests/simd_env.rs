//! `DLFS_SIMD` read from the environment. This file holds one test, so setting the
//! variable races with no other thread of its process.

use dl_tensor::{Isa, IsaError, SIMD_ENV};

#[test]
fn the_variable_forces_the_level_and_is_read_once() {
    std::env::set_var(SIMD_ENV, "sse");
    assert_eq!(Isa::from_env(), Err(IsaError::Unknown("sse".into())));
    std::env::set_var(SIMD_ENV, " Scalar ");
    assert_eq!(Isa::from_env(), Ok(Some(Isa::Scalar)));
    // the first call reads the variable; later changes are not seen
    assert_eq!(Isa::active(), Isa::Scalar);
    std::env::set_var(SIMD_ENV, Isa::best().name());
    assert_eq!(Isa::from_env(), Ok(Some(Isa::best())));
    assert_eq!(Isa::active(), Isa::Scalar);
    std::env::set_var(SIMD_ENV, "");
    assert_eq!(Isa::from_env(), Ok(None));
    std::env::remove_var(SIMD_ENV);
    assert_eq!(Isa::from_env(), Ok(None));
}
