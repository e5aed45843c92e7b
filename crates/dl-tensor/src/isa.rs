//! The instruction sets the convolution kernels ([`DirectConv`](crate::DirectConv),
//! [`WinogradConv`](crate::WinogradConv)) are written for, which one this CPU runs, and
//! the `DLFS_SIMD` switch that forces one.
//!
//! ```
//! use dl_tensor::Isa;
//!
//! let best = Isa::best();                  // the widest level this CPU has
//! assert!(best.supported());
//! assert!(Isa::Scalar.supported());        // plain Rust runs everywhere
//! assert_eq!("avx2".parse::<Isa>(), Ok(Isa::Avx2));
//! assert!(Isa::supported_levels().contains(&Isa::Scalar));
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that forces the kernels' instruction set:
/// `scalar`, `neon`, `avx2` or `avx512` (see [`Isa::active`]).
pub const SIMD_ENV: &str = "DLFS_SIMD";

/// An instruction-set level of the convolution kernels. Every level computes the same
/// numbers up to rounding (the tests run each one the CPU has against the plain
/// reference); they differ in speed.
///
/// The levels order from narrowest to widest: `Scalar < Neon < Avx2 < Avx512`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// Plain loops without intrinsics: the algorithm itself, on any CPU, and the
    /// reference the vector levels are tested against.
    Scalar,
    /// 128-bit vectors (four lanes) in portable Rust, which the compiler maps onto NEON
    /// registers on aarch64, where every CPU has NEON.
    Neon,
    /// 256-bit AVX2 with FMA: x86-64 since Intel Haswell (2013) and AMD Zen.
    Avx2,
    /// 512-bit AVX-512F: Intel Xeon since Skylake-SP, Ice Lake, AMD Zen 4 and later
    /// (with AVX2 and FMA, which every such CPU has and its kernels also use).
    Avx512,
}

impl Isa {
    /// Every level, narrowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512];

    /// The name `DLFS_SIMD` and the benchmark reports use: `"scalar"`, `"neon"`,
    /// `"avx2"`, `"avx512"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU has the instructions of this level.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Neon => neon(),
            Isa::Avx2 => avx2(),
            Isa::Avx512 => avx512(),
        }
    }

    /// The widest level this CPU supports.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|isa| isa.supported())
            .unwrap_or(Isa::Scalar)
    }

    /// Every level this CPU supports, narrowest first (`Scalar` always).
    pub fn supported_levels() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.supported()).collect()
    }

    /// The level `DLFS_SIMD` asks for: `Ok(None)` when it is unset or empty, an error
    /// when it names no level or one this CPU lacks.
    pub fn from_env() -> Result<Option<Isa>, IsaError> {
        Isa::from_value(std::env::var_os(SIMD_ENV).as_deref())
    }

    /// [`Isa::from_env`] for the variable's value (`None`: unset).
    fn from_value(value: Option<&std::ffi::OsStr>) -> Result<Option<Isa>, IsaError> {
        let Some(value) = value else { return Ok(None) };
        match value.to_str().map(str::trim) {
            Some("") => Ok(None),
            Some(v) => Isa::forced(v).map(Some),
            None => Err(IsaError::Unknown(value.to_string_lossy().into_owned())),
        }
    }

    /// `name` parsed, and checked against this CPU.
    pub fn forced(name: &str) -> Result<Isa, IsaError> {
        let isa: Isa = name.parse()?;
        if isa.supported() {
            Ok(isa)
        } else {
            Err(IsaError::Unsupported {
                asked: isa,
                best: Isa::best(),
            })
        }
    }

    /// The level the kernels run at when none is given: the one `DLFS_SIMD` names, else
    /// [`Isa::best`]. Read once per process. A value that names no level, or one this
    /// CPU lacks, is reported once on stderr and ignored (a program that wants it as an
    /// error calls [`Isa::from_env`] first, as `cargo xtask` does).
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| match Isa::from_env() {
            Ok(isa) => isa.unwrap_or_else(Isa::best),
            Err(e) => {
                eprintln!("dl-tensor: {SIMD_ENV} ignored: {e}");
                Isa::best()
            }
        })
    }

    /// Whether a kernel can be built at this level here: a level the CPU supports, or one
    /// written in portable Rust (`Scalar` and `Neon`, whose four-lane code runs, without
    /// NEON's speed, on any CPU: that is how an x86 machine tests it).
    pub(crate) fn runs_here(self) -> bool {
        matches!(self, Isa::Scalar | Isa::Neon) || self.supported()
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| IsaError::Unknown(s.to_owned()))
    }
}

/// Why a requested instruction set cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    /// The name is not one of the levels.
    #[error("unknown instruction set {0:?}: expected scalar, neon, avx2 or avx512")]
    Unknown(String),
    /// This CPU lacks the level.
    #[error("this CPU cannot run {asked} (its widest level is {best})")]
    Unsupported {
        /// The level asked for.
        asked: Isa,
        /// The widest level this CPU has.
        best: Isa,
    },
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn neon() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// The CPU's SIMD features that matter to dlfs, as `/proc/cpuinfo` names them
/// (`sse4_2 avx avx2 fma avx512f avx512_vnni ...` on x86-64, `neon`/`asimd` on aarch64):
/// what the benchmarks record beside their figures.
pub fn cpu_simd_flags() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut flags = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($f) { flags.push($f); })*
            };
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avx512vpopcntdq",
            "popcnt",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $(if std::arch::is_aarch64_feature_detected!($f) { flags.push($f); })*
            };
        }
        probe!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve");
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_errors() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
            assert_eq!(isa.to_string(), isa.name());
            assert_eq!(isa.name().to_uppercase().parse::<Isa>(), Ok(isa));
        }
        assert_eq!("sse".parse::<Isa>(), Err(IsaError::Unknown("sse".into())));
        assert!("".parse::<Isa>().is_err());
    }

    #[test]
    fn best_is_the_widest_supported_level() {
        let levels = Isa::supported_levels();
        assert_eq!(levels.first(), Some(&Isa::Scalar));
        assert_eq!(levels.last(), Some(&Isa::best()));
        assert!(Isa::ALL
            .into_iter()
            .filter(|&i| i > Isa::best())
            .all(|i| !i.supported()));
        assert_eq!(Isa::forced("scalar"), Ok(Isa::Scalar));
        assert_eq!(Isa::forced(Isa::best().name()), Ok(Isa::best()));
        #[cfg(target_arch = "x86_64")]
        {
            assert!(!Isa::Neon.supported());
            assert_eq!(
                Isa::forced("neon"),
                Err(IsaError::Unsupported {
                    asked: Isa::Neon,
                    best: Isa::best()
                })
            );
            // every AVX-512F CPU has AVX2 and FMA
            if Isa::Avx512.supported() {
                assert!(Isa::Avx2.supported());
            }
        }
    }

    #[test]
    fn the_variable_names_a_level_or_nothing() {
        use std::ffi::OsStr;
        let v = |s: &str| Isa::from_value(Some(OsStr::new(s)));
        assert_eq!(Isa::from_value(None), Ok(None));
        assert_eq!(v(""), Ok(None));
        assert_eq!(v("  "), Ok(None));
        assert_eq!(v(" scalar "), Ok(Some(Isa::Scalar)));
        assert_eq!(v("AVX512"), Isa::forced("avx512").map(Some));
        assert_eq!(v("sse2"), Err(IsaError::Unknown("sse2".into())));
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let bad = Isa::from_value(Some(OsStr::from_bytes(b"avx\xff")));
            assert!(matches!(bad, Err(IsaError::Unknown(_))), "{bad:?}");
        }
        assert_eq!(Isa::from_env(), Isa::from_value(std::env::var_os(SIMD_ENV).as_deref()));
    }

    /// What the CPU reports of itself, where Linux says it (not under QEMU's user-mode
    /// emulation, whose `/proc/cpuinfo` is the host's: no line of this architecture's).
    #[test]
    fn detection_agrees_with_proc_cpuinfo() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let key = if cfg!(target_arch = "aarch64") {
            "Features"
        } else {
            "flags"
        };
        let Some(line) = info.lines().find(|l| l.starts_with(key)) else {
            return;
        };
        let flags: Vec<&str> = line.split_whitespace().collect();
        let has = |f: &str| flags.contains(&f);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Isa::Avx512.supported(), has("avx512f"));
            assert_eq!(Isa::Avx2.supported(), has("avx2") && has("fma"));
            for f in ["avx2", "fma", "avx512f"] {
                assert_eq!(cpu_simd_flags().contains(&f), has(f), "{f}");
            }
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(Isa::Neon.supported(), has("asimd"));
        }
    }

    #[test]
    fn portable_levels_run_everywhere_and_the_others_where_supported() {
        for isa in Isa::ALL {
            assert_eq!(
                isa.runs_here(),
                matches!(isa, Isa::Scalar | Isa::Neon) || isa.supported()
            );
        }
        assert!(Isa::active().supported());
        assert!(cpu_simd_flags().iter().all(|f| !f.is_empty()));
    }
}
