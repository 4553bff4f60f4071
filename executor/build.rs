//! Links libtorch with the arguments encore-models' build script worked out
//! (rpath, and libtorch_cuda kept when present), so this crate's binaries and
//! tests run without LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_ENCORE_MODELS_LINK_ARGS");
    if let Ok(args) = std::env::var("DEP_ENCORE_MODELS_LINK_ARGS") {
        for arg in args.split('\x1f').filter(|a| !a.is_empty()) {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
