//! Links libtorch by rpath (no LD_LIBRARY_PATH needed), checks its version, and records where
//! the ONNX Runtime library of the project's `.venv` is, and (for export) compiles the ONNX
//! schema of the PyPI `onnx` package into Rust types.

use std::path::PathBuf;

/// tch 0.24 is built for this libtorch.
const TORCH_VERSION: &str = "2.11.";

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_some() {
        if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            torch_ext(&PathBuf::from(lib));
        }
        if let Ok(libtorch) = std::env::var("LIBTORCH") {
            let version_py = PathBuf::from(&libtorch).join("version.py");
            println!("cargo:rerun-if-changed={}", version_py.display());
            if let Ok(text) = std::fs::read_to_string(&version_py) {
                let version = text
                    .lines()
                    .find_map(|l| l.strip_prefix("__version__ = "))
                    .map(|v| v.trim().trim_matches(['\'', '"']).to_string())
                    .unwrap_or_default();
                if !version.starts_with(TORCH_VERSION) {
                    panic!("libtorch at {libtorch} is {version:?}; tch 0.24 needs torch {TORCH_VERSION}x (run scripts/bootstrap)");
                }
                println!("cargo:rustc-env=TAFT_LIBTORCH_VERSION={version}");
            }
        }
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // The linker drops libtorch_cuda unless forced, and CUDA then stays unavailable.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    #[cfg(feature = "train")]
    onnx_types();
    if std::env::var_os("CARGO_FEATURE_SERVE").is_some() {
        let ort = std::env::var("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|_| {
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(".venv/libonnxruntime.so")
        });
        println!("cargo:rerun-if-changed={}", ort.display());
        if let Ok(resolved) = ort.canonicalize() {
            println!("cargo:rustc-env=TAFT_ORT_DYLIB={}", resolved.display());
        }
    }
}

/// Compiles `src/train/torch_ext.cpp` against the headers of the libtorch in `lib`'s parent.
#[cfg(feature = "train")]
fn torch_ext(lib: &std::path::Path) {
    let src = "src/train/torch_ext.cpp";
    println!("cargo:rerun-if-changed={src}");
    let include = lib.parent().expect("libtorch's lib folder has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .file(src)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .warnings(false)
        .compile("taft_torch_ext");
}

#[cfg(not(feature = "train"))]
fn torch_ext(_: &std::path::Path) {}

/// Compiles `onnx.proto` (`ONNX_PROTO`, else the `.venv` link scripts/bootstrap makes) into
/// prost types with protox: no `protoc` needed.
#[cfg(feature = "train")]
fn onnx_types() {
    println!("cargo:rerun-if-env-changed=ONNX_PROTO");
    let proto = std::env::var("ONNX_PROTO")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(".venv/onnx.proto"));
    println!("cargo:rerun-if-changed={}", proto.display());
    let proto = proto.canonicalize().unwrap_or_else(|e| {
        panic!("{}: {e} (run scripts/bootstrap, which installs the pinned `onnx` package)", proto.display())
    });
    let dir = proto.parent().expect("a file has a folder");
    let files = protox::compile([&proto], [dir]).unwrap_or_else(|e| panic!("{}: {e}", proto.display()));
    prost_build::Config::new().compile_fds(files).unwrap_or_else(|e| panic!("{}: {e}", proto.display()));
}
