//! Compiles the .proto files with a vendored protoc (no system protoc needed).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let root = PathBuf::from("proto");
    let files = [
        "encore/v1/jobs.proto",
        "encore/v1/scoring.proto",
        "inference/grpc_service.proto",
    ]
    .map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
