//! Embeds an rpath to libtorch so binaries and tests run without
//! LD_LIBRARY_PATH, and forces libtorch_cuda to be linked when present
//! (otherwise the linker drops it and tch never sees CUDA).
//!
//! The libtorch folder comes from torch-sys (`DEP_TCH_LIBTORCH_LIB`); it is
//! passed on to dependents as `DEP_ENCORE_MODELS_TORCH_LIB` so that every
//! package with binaries can call the same link arguments from its build.rs.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch folder; no rpath embedded");
        return;
    };
    println!("cargo:torch_lib={lib}");
    for arg in link_args(Path::new(&lib)) {
        println!("cargo:rustc-link-arg={arg}");
    }
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
