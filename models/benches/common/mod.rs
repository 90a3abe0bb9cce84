//! What the benches (and `examples/verifier_cost.rs`) share: where the ONNX Runtime library is.

use std::path::PathBuf;

/// `$KWS_ORT_LIB`, else the checkout's `.ort/<arch>/libonnxruntime.so` (`deploy/fetch-onnxruntime.sh`).
pub fn ort_lib() -> PathBuf {
    std::env::var_os("KWS_ORT_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.ort")
                .join(std::env::consts::ARCH)
                .join("libonnxruntime.so")
        })
}
