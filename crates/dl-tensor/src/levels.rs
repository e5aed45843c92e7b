//! Plain loops compiled once per x86 instruction-set level: a module writes each loop
//! once, as an `#[inline(always)]` function, names it in [`builds!`], which compiles a
//! copy with AVX2 and one with AVX-512F enabled (the compiler vectorizes each to its
//! width), and calls it through [`at_level!`], which runs the copy of the level
//! [`level`] gives. `norm`, `relu` and `pool` are written this way.

use crate::Isa;

/// The level the loops run at for `isa`: `isa` itself where this CPU has it and the
/// loops have a build for it ([`Isa::Avx2`], [`Isa::Avx512`] on x86-64), else
/// [`Isa::Scalar`] (the plain build, which the compiler vectorizes to the target's
/// baseline: SSE2 on x86-64, NEON on aarch64).
pub(crate) fn level(isa: Isa) -> Isa {
    match isa {
        Isa::Avx2 | Isa::Avx512 if cfg!(target_arch = "x86_64") && isa.supported() => isa,
        _ => Isa::Scalar,
    }
}

/// Runs the loop `$name` (a plain `#[inline(always)]` function of the calling module,
/// named in its [`builds!`]) at the level [`level`] gives for `$isa`.
macro_rules! at_level {
    ($isa:expr, $name:ident($($arg:expr),*)) => {{
        match $crate::levels::level($isa) {
            // SAFETY: `level` returns these only where the CPU has them.
            #[cfg(target_arch = "x86_64")]
            $crate::Isa::Avx512 => unsafe { x86::avx512::$name($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            $crate::Isa::Avx2 => unsafe { x86::avx2::$name($($arg),*) },
            _ => $name($($arg),*),
        }
    }};
}

/// Builds of the calling module's loops with the instruction sets enabled, one module
/// per level (`x86::avx2`, `x86::avx512`). Argument types are written as the copies'
/// modules see them: in full where the calling module imported them.
macro_rules! builds {
    ($($name:ident($($a:ident: $t:ty),*) $(-> $r:ty)?;)*) => {
        #[cfg(target_arch = "x86_64")]
        mod x86 {
            pub(super) mod avx512 {
                $(
                    /// # Safety
                    /// The CPU has AVX-512F.
                    #[target_feature(enable = "avx512f")]
                    pub(in super::super) unsafe fn $name($($a: $t),*) $(-> $r)? {
                        super::super::$name($($a),*)
                    }
                )*
            }
            pub(super) mod avx2 {
                $(
                    /// # Safety
                    /// The CPU has AVX2.
                    #[target_feature(enable = "avx2")]
                    pub(in super::super) unsafe fn $name($($a: $t),*) $(-> $r)? {
                        super::super::$name($($a),*)
                    }
                )*
            }
        }
    };
}
