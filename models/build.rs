//! Embeds an rpath to libtorch so binaries and tests run without
//! LD_LIBRARY_PATH, and forces libtorch_cuda to be linked when present
//! (otherwise the linker drops it and tch never sees CUDA).
//!
//! The libtorch folder comes from torch-sys (`DEP_TCH_LIBTORCH_LIB`); the
//! link arguments are passed on to dependents as `DEP_ENCORE_MODELS_LINK_ARGS`
//! so that every package with binaries links libtorch the same way.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch folder; no rpath embedded");
        return;
    };
    println!("cargo:torch_lib={lib}");
    compile_script_shim(Path::new(&lib));
    let args = link_args(Path::new(&lib));
    for arg in &args {
        println!("cargo:rustc-link-arg={arg}");
    }
    // Dependents with binaries re-emit these (DEP_ENCORE_MODELS_LINK_ARGS),
    // separated by the ASCII unit separator since paths may hold spaces.
    println!("cargo:link_args={}", args.join("\x1f"));
}

/// Compiles the C++ shims — `cpp/script_module.cpp` (TorchScript from
/// source, see `src/script.rs`), `cpp/fused_adamw.cpp` (the fused AdamW
/// step, `src/optim.rs`) and `cpp/dropout.cpp` (the parallel dropout mask,
/// `src/dropout.rs`) and `cpp/frozen_graph.cpp` (a module's frozen graph,
/// `src/graph.rs`) — against the headers next to libtorch's lib folder.
fn compile_script_shim(lib: &Path) {
    println!("cargo:rerun-if-changed=cpp/script_module.cpp");
    println!("cargo:rerun-if-changed=cpp/fused_adamw.cpp");
    println!("cargo:rerun-if-changed=cpp/dropout.cpp");
    println!("cargo:rerun-if-changed=cpp/frozen_graph.cpp");
    println!("cargo:rerun-if-changed=cpp/shim.h");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    // PyTorch wheels since 2.7 use the new C++ ABI; LIBTORCH_CXX11_ABI=0
    // is for an old pre-built libtorch.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("cpp/script_module.cpp")
        .file("cpp/fused_adamw.cpp")
        .file("cpp/dropout.cpp")
        .file("cpp/frozen_graph.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .warnings(false)
        .compile("encore_script_module");
}

/// The linker arguments every binary that links libtorch needs.
fn link_args(lib: &Path) -> Vec<String> {
    let mut args = vec![format!("-Wl,-rpath,{}", lib.display())];
    if lib.join("libtorch_cuda.so").exists() {
        args.push("-Wl,--no-as-needed".into());
        args.push(format!("-L{}", lib.display()));
        args.push("-ltorch_cuda".into());
        args.push("-Wl,--as-needed".into());
    }
    args
}
