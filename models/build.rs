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
    let args = link_args(Path::new(&lib));
    for arg in &args {
        println!("cargo:rustc-link-arg={arg}");
    }
    // Dependents with binaries re-emit these (DEP_ENCORE_MODELS_LINK_ARGS),
    // separated by the ASCII unit separator since paths may hold spaces.
    println!("cargo:link_args={}", args.join("\x1f"));
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
