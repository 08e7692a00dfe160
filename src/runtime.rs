//! The compute back ends this build carries: libtorch through `tch` (training) and ONNX
//! Runtime through `ort` (inference), and where each was found.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

/// Set once SIGTERM or Ctrl-C has come: long computations stop at their next safe point.
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks long computations (training loops) to stop at their next safe point.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether SIGTERM or Ctrl-C asked this process to stop.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Resolves when SIGTERM or Ctrl-C comes (never, where no handler can be installed).
pub async fn terminated() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The libtorch version this binary was built against (checked by build.rs).
pub const LIBTORCH_VERSION: Option<&str> = option_env!("TAFT_LIBTORCH_VERSION");

/// The CPUs this process may use: its affinity mask and cgroup CPU quota (a container's
/// share, not the node's cores), at least 1. The default thread count of every step, alone
/// or inside `taft run`, so that both give the same results on the same machine.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A description of the back ends, for `taft info`.
pub fn describe() -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "train": train(),
        "serve": serve(),
    })
}

#[cfg(feature = "train")]
fn train() -> Value {
    // A small computation proves the library is linked and runs, not only that it loads.
    let a = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
    let check = a.matmul(&a).sum(tch::Kind::Float).double_value(&[]);
    json!({
        "libtorch": LIBTORCH_VERSION,
        "cuda": tch::Cuda::is_available(),
        "cuda_devices": tch::Cuda::device_count(),
        "threads": tch::get_num_threads(),
        "cpus": cpus(),
        "matmul_check": check,
    })
}

#[cfg(not(feature = "train"))]
fn train() -> Value {
    Value::Null
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else the one found at build time.
#[cfg(feature = "serve")]
pub fn ort_dylib() -> Option<std::path::PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(std::path::PathBuf::from)
        .or_else(|| option_env!("TAFT_ORT_DYLIB").map(std::path::PathBuf::from))
}

/// Loads ONNX Runtime once per process and makes its environment; returns the environment.
#[cfg(feature = "serve")]
pub fn ort_environment() -> crate::Result<&'static ort::environment::Environment> {
    use std::sync::OnceLock;
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = ort_dylib().ok_or("no ONNX Runtime library: set ORT_DYLIB_PATH")?;
        let builder = ort::init_from(&path).map_err(|e| format!("ONNX Runtime {}: {e}", path.display()))?;
        builder.with_name("taft").build().map_err(|e| format!("ONNX Runtime {}: {e}", path.display()))
    })
    .as_ref()
    .map_err(|e| crate::Error::Other(e.clone()))
}

/// Loads ONNX Runtime once per process; returns its build description.
#[cfg(feature = "serve")]
pub fn init_ort() -> crate::Result<&'static str> {
    ort_environment().map(|_| ort::info())
}

#[cfg(feature = "serve")]
fn serve() -> Value {
    match init_ort() {
        Ok(info) => json!({"onnxruntime": ort_dylib(), "build": info}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

#[cfg(not(feature = "serve"))]
fn serve() -> Value {
    Value::Null
}
