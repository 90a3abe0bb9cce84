//! Which int8 kernels ONNX Runtime's CPU provider picks on this machine, read from the same CPU
//! features it reads.
//!
//! ONNX Runtime chooses its quantized GEMM kernels by CPUID (x86-64) or by the hardware capabilities
//! (aarch64), once per process. The families differ in arithmetic, not only in speed:
//!
//! | family | instructions | uint8 × int8 products |
//! |---|---|---|
//! | `avx512-vnni`, `avx-vnni` | `vpdpbusd(s)` | summed in int32: exact |
//! | `avx512-core`, `avx2` | `vpmaddubsw` | pairs summed in int16 first: **saturate** unless weights fit 7 bits |
//! | `sse` | widened to int16, `pmaddwd` | exact |
//! | `neon-i8mm`, `neon-dotprod`, `neon` | `smmla`/`usmmla`, `sdot`/`udot`, widening multiplies | exact |
//!
//! The shipped int8 models are quantized with 7-bit weights (`models/README.md`, "int8 across
//! CPUs"), so every family computes the same integer sums and the differences left are the float
//! rounding of each kernel's requantization. The family is still worth knowing: it is what an
//! operator needs to tell why two machines score a model differently, so the service logs it at
//! start and exports it ([`Int8Kernels::as_str`] is the label value).

use std::fmt;

/// The family of int8 GEMM kernels ONNX Runtime's CPU provider selects on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernels {
    /// x86-64 with AVX-512 VNNI.
    Avx512Vnni,
    /// x86-64 with AVX-VNNI (VEX-encoded, e.g. Alder Lake) but not AVX-512 VNNI.
    AvxVnni,
    /// x86-64 with AVX-512 BW/DQ/VL and no VNNI: `vpmaddubsw` on 512-bit registers.
    Avx512Core,
    /// x86-64 with AVX2 and no VNNI: `vpmaddubsw`.
    Avx2,
    /// x86-64 without AVX2.
    Sse,
    /// aarch64 with the int8 matrix-multiply extension.
    NeonI8mm,
    /// aarch64 with the dot-product extension.
    NeonDotprod,
    /// aarch64 without either.
    Neon,
    /// Any other architecture (ONNX Runtime's portable kernels).
    Portable,
}

impl Int8Kernels {
    /// Stable lower-case name, used as a log field and a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::AvxVnni => "avx-vnni",
            Self::Avx512Core => "avx512-core",
            Self::Avx2 => "avx2",
            Self::Sse => "sse",
            Self::NeonI8mm => "neon-i8mm",
            Self::NeonDotprod => "neon-dotprod",
            Self::Neon => "neon",
            Self::Portable => "portable",
        }
    }

    /// Whether uint8 × int8 products are summed in pairs in int16 (and so saturate for 8-bit
    /// weights).
    pub fn pairs_in_int16(self) -> bool {
        matches!(self, Self::Avx512Core | Self::Avx2)
    }
}

impl fmt::Display for Int8Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What this CPU offers that matters to ONNX Runtime's kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// `std::env::consts::ARCH`.
    pub arch: &'static str,
    /// The relevant features present, in a fixed order (e.g. `["avx2", "fma", "avx512f", ...]`).
    pub features: Vec<&'static str>,
    /// The int8 kernel family ONNX Runtime selects from them.
    pub int8_kernels: Int8Kernels,
}

impl CpuInfo {
    /// The features as one comma-separated string (for logs and `GetModelInfo`).
    pub fn features_string(&self) -> String {
        self.features.join(",")
    }
}

/// Reads the CPU features of this machine (cheap; cached by the standard library).
pub fn detect() -> CpuInfo {
    let (features, int8_kernels) = detect_arch();
    CpuInfo {
        arch: std::env::consts::ARCH,
        features,
        int8_kernels,
    }
}

#[cfg(target_arch = "x86_64")]
fn detect_arch() -> (Vec<&'static str>, Int8Kernels) {
    let mut f = Vec::new();
    macro_rules! probe {
        ($($name:tt),*) => {
            $(if std::arch::is_x86_feature_detected!($name) { f.push($name); })*
        };
    }
    probe!(
        "sse4.1",
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni",
        "avxvnni"
    );
    let has = |n: &str| f.contains(&n);
    // ONNX Runtime (MLAS platform init) needs AVX2 + FMA for any AVX kernel, AVX-512 F/BW/DQ/VL for
    // the AVX-512 ones, and prefers VNNI where present.
    let avx2 = has("avx2") && has("fma");
    let avx512_core = avx2 && has("avx512f") && has("avx512bw") && has("avx512dq") && has("avx512vl");
    let kernels = if avx512_core && has("avx512vnni") {
        Int8Kernels::Avx512Vnni
    } else if avx2 && has("avxvnni") {
        Int8Kernels::AvxVnni
    } else if avx512_core {
        Int8Kernels::Avx512Core
    } else if avx2 {
        Int8Kernels::Avx2
    } else {
        Int8Kernels::Sse
    };
    (f, kernels)
}

#[cfg(target_arch = "aarch64")]
fn detect_arch() -> (Vec<&'static str>, Int8Kernels) {
    let mut f = vec!["neon"];
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        f.push("dotprod");
    }
    if std::arch::is_aarch64_feature_detected!("i8mm") {
        f.push("i8mm");
    }
    let kernels = if f.contains(&"i8mm") {
        Int8Kernels::NeonI8mm
    } else if f.contains(&"dotprod") {
        Int8Kernels::NeonDotprod
    } else {
        Int8Kernels::Neon
    };
    (f, kernels)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect_arch() -> (Vec<&'static str>, Int8Kernels) {
    (Vec::new(), Int8Kernels::Portable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_a_family_consistent_with_the_features() {
        let info = detect();
        assert_eq!(info.arch, std::env::consts::ARCH);
        let has = |n: &str| info.features.contains(&n);
        match info.int8_kernels {
            Int8Kernels::Avx512Vnni => assert!(has("avx512vnni") && has("avx2")),
            Int8Kernels::AvxVnni => assert!(has("avxvnni") && !has("avx512vnni")),
            Int8Kernels::Avx512Core => assert!(has("avx512bw") && !has("avx512vnni")),
            Int8Kernels::Avx2 => assert!(has("avx2") && !has("avx512vnni") && !has("avxvnni")),
            Int8Kernels::Sse => assert!(!has("avx2") || !has("fma")),
            Int8Kernels::NeonI8mm => assert!(has("i8mm")),
            Int8Kernels::NeonDotprod => assert!(has("dotprod") && !has("i8mm")),
            Int8Kernels::Neon => assert!(!has("dotprod") && !has("i8mm")),
            Int8Kernels::Portable => assert!(info.features.is_empty()),
        }
        assert_eq!(
            info.features_string()
                .split(',')
                .filter(|s| !s.is_empty())
                .count(),
            info.features.len()
        );
    }

    #[test]
    fn only_the_vpmaddubsw_families_pair_in_int16() {
        let all = [
            Int8Kernels::Avx512Vnni,
            Int8Kernels::AvxVnni,
            Int8Kernels::Avx512Core,
            Int8Kernels::Avx2,
            Int8Kernels::Sse,
            Int8Kernels::NeonI8mm,
            Int8Kernels::NeonDotprod,
            Int8Kernels::Neon,
            Int8Kernels::Portable,
        ];
        let pairing: Vec<_> = all
            .iter()
            .filter(|k| k.pairs_in_int16())
            .map(|k| k.as_str())
            .collect();
        assert_eq!(pairing, ["avx512-core", "avx2"]);
        let names: std::collections::HashSet<_> = all.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), all.len(), "names are distinct");
    }
}
